//! Checkpoints: `checkpoint-<step>/` (trained tensors, optimizer moments, trainer state) written
//! through a temporary directory and a rename, a `latest` pointer, and resuming from it.

use std::path::Path;

use super::Trainer;
use super::optim::Param;
use crate::checkpoint::safetensors::{Checkpoint, NamedTensor, SaveDtype, save_safetensors_file};
use crate::error::{ModelError, Result, io_at};

impl Trainer {
    /// Writes `dir/checkpoint-<step>/` (trained tensors, optimizer moments, trainer state)
    /// through a temporary directory and a rename, then points `dir/latest` at it and removes
    /// older checkpoints.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let name = format!("checkpoint-{}", self.step);
        let tmp = dir.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        let values = self
            .params
            .iter()
            .map(|p| NamedTensor {
                name: p.name.clone(),
                shape: p.shape.to_vec(),
                values: p.value.clone(),
            })
            .collect::<Vec<_>>();
        save_safetensors_file(&tmp.join("trainable.safetensors"), &values, SaveDtype::F32)?;
        let moment = |p: &Param, suffix: &str, values: &[f32]| NamedTensor {
            name: format!("{}{suffix}", p.name),
            shape: p.shape.to_vec(),
            values: values.to_vec(),
        };
        let mut moments: Vec<NamedTensor> = self
            .params
            .iter()
            .map(|p| moment(p, ".exp_avg", &p.m))
            .collect();
        moments.extend(self.params.iter().map(|p| moment(p, ".exp_avg_sq", &p.v)));
        save_safetensors_file(&tmp.join("optimizer.safetensors"), &moments, SaveDtype::F32)?;
        let state = serde_json::json!({
            "step": self.step,
            "optimizer_step": self.optimizer.step,
            "num_tokens": self.num_tokens,
            "total_steps": self.total_steps(),
            "seed": self.config.seed,
            "data_position": {
                "epoch": self.step / self.config.steps_per_epoch(self.train.len()),
                "step_in_epoch": self.step % self.config.steps_per_epoch(self.train.len()),
            },
            "rng": "stateless: data order seeded by seed + epoch, dropout by (seed, step, micro-batch)",
        });
        write_synced(
            &tmp.join("trainer_state.json"),
            &serde_json::to_string_pretty(&state).expect("JSON"),
        )?;
        let target = dir.join(&name);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target).map_err(io_at(&target))?;
        let latest_tmp = dir.join("latest.tmp");
        write_synced(&latest_tmp, &name)?;
        std::fs::rename(&latest_tmp, dir.join("latest")).map_err(io_at(dir))?;
        remove_older_checkpoints(dir, &name);
        Ok(())
    }

    /// Continues from the checkpoint `dir/latest` names, if any; returns its step.
    pub fn resume(&mut self, dir: &Path) -> Result<Option<usize>> {
        let Ok(name) = std::fs::read_to_string(dir.join("latest")) else {
            return Ok(None);
        };
        let checkpoint = dir.join(name.trim());
        let path = checkpoint.join("trainer_state.json");
        let text = std::fs::read_to_string(&path).map_err(io_at(&path))?;
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
                path: path.clone(),
                message: format!("not JSON: {e}"),
            })?;
        let field = |key: &str| {
            state[key].as_u64().ok_or_else(|| ModelError::Invalid {
                path: path.clone(),
                message: format!("missing `{key}`"),
            })
        };
        let (step, optimizer_step, num_tokens) = (
            field("step")?,
            field("optimizer_step")?,
            field("num_tokens")?,
        );
        let values = Checkpoint::open_file(&checkpoint.join("trainable.safetensors"))?;
        let moments = Checkpoint::open_file(&checkpoint.join("optimizer.safetensors"))?;
        for p in &mut self.params {
            let shape = p.shape;
            p.value = values.read_f32(&p.name, &shape)?;
            p.m = moments.read_f32(&format!("{}.exp_avg", p.name), &shape)?;
            p.v = moments.read_f32(&format!("{}.exp_avg_sq", p.name), &shape)?;
        }
        self.step = step as usize;
        self.optimizer.step = optimizer_step;
        self.num_tokens = num_tokens as usize;
        Ok(Some(self.step))
    }
}

fn write_synced(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io_at(path))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io_at(path))
}

fn remove_older_checkpoints(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("checkpoint-") && name != keep {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
