//! Checkpoint files: `model.safetensors`, or shards listed in `model.safetensors.index.json`,
//! memory-mapped and converted from f32 / bf16 / f16 on load; and the same formats back.

use memmap2::Mmap;
use safetensors::tensor::{TensorInfo, TensorView};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result, io_at};

/// The memory-mapped safetensors files of a checkpoint, with every header parsed once.
pub struct Checkpoint {
    /// Each file with the offset where its tensor data begins.
    files: Vec<(PathBuf, Mmap, usize)>,
    /// Tensor name → (index into `files`, dtype, shape and byte range within the data).
    location: HashMap<String, (usize, TensorInfo)>,
}

/// Largest shard written by [`save_safetensors`] (as transformers' default, 5 GB).
pub const MAX_SHARD_BYTES: usize = 5 * 1000 * 1000 * 1000;

fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(io_at(path))?;
    // SAFETY: checkpoint files are read-only inputs; flow never writes them while mapped.
    unsafe { Mmap::map(&file) }.map_err(io_at(path))
}

/// Validates a safetensors file and returns where its data begins and every tensor's info.
fn header(path: &Path, bytes: &[u8]) -> Result<(usize, Vec<(String, TensorInfo)>)> {
    let invalid = |e: safetensors::SafeTensorError| ModelError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a safetensors file: {e}"),
    };
    SafeTensors::deserialize(bytes).map_err(invalid)?;
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let infos = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.clone()))
        .collect();
    Ok((8 + header_len, infos))
}

impl Checkpoint {
    /// Opens the checkpoint in a model directory (single file or sharded).
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let shards: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(dir, &index)?
        } else {
            return Err(ModelError::MissingFile {
                path: single,
                what: "model weights (model.safetensors or model.safetensors.index.json)".into(),
            });
        };
        for path in &shards {
            if !path.is_file() {
                return Err(ModelError::MissingFile {
                    path: path.clone(),
                    what: "a shard listed in model.safetensors.index.json".into(),
                });
            }
        }
        Checkpoint::open_files(shards)
    }

    /// Opens one safetensors file (an adapter, a training checkpoint).
    pub fn open_file(path: &Path) -> Result<Checkpoint> {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                what: "a safetensors file".into(),
            });
        }
        Checkpoint::open_files(vec![path.to_path_buf()])
    }

    fn open_files(paths: Vec<PathBuf>) -> Result<Checkpoint> {
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for path in paths {
            let map = map_file(&path)?;
            let (data_start, infos) = header(&path, &map)?;
            for (name, info) in infos {
                location.insert(name, (files.len(), info));
            }
            files.push((path, map, data_start));
        }
        Ok(Checkpoint { files, location })
    }

    /// Reads tensor `name` as f32, checking its shape.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let Some((file, info)) = self.location.get(name) else {
            let path = self.files.first().map(|f| f.0.clone()).unwrap_or_default();
            return Err(ModelError::MissingTensor {
                path,
                name: name.into(),
                expected: expected.to_vec(),
            });
        };
        let (path, map, data_start) = &self.files[*file];
        if info.shape != expected {
            return Err(ModelError::Shape {
                path: path.clone(),
                name: name.into(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        let bytes = &map[data_start + start..data_start + end];
        to_f32(info.dtype, bytes).ok_or_else(|| ModelError::Invalid {
            path: path.clone(),
            message: format!(
                "tensor `{name}` has dtype {:?}; expected F32, BF16 or F16",
                info.dtype
            ),
        })
    }
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(io_at(index))?;
    let invalid = |message: String| ModelError::Invalid {
        path: index.to_path_buf(),
        message,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| invalid("missing `weight_map` object".into()))?;
    let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let words = |size: usize| bytes.chunks_exact(size);
    Some(match dtype {
        Dtype::F32 => words(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => words(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => words(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// On-disk dtype for saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    BF16,
    /// float16.
    F16,
}

impl SaveDtype {
    /// From a config name (`float32`, `bfloat16`, `float16`).
    pub fn parse(name: &str) -> Option<SaveDtype> {
        match name {
            "float32" | "f32" => Some(SaveDtype::F32),
            "bfloat16" | "bf16" => Some(SaveDtype::BF16),
            "float16" | "f16" => Some(SaveDtype::F16),
            _ => None,
        }
    }

    /// The config name.
    pub fn config_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::BF16 => "bfloat16",
            SaveDtype::F16 => "float16",
        }
    }

    fn encode(self, values: &[f32]) -> (Dtype, Vec<u8>) {
        match self {
            SaveDtype::F32 => (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            SaveDtype::BF16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            SaveDtype::F16 => (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        }
    }
}

/// A tensor to save: name, shape, values.
pub struct NamedTensor {
    /// Checkpoint name.
    pub name: String,
    /// Shape in the file.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

impl NamedTensor {
    /// Copies a model tensor (any float dtype) to the host as f32.
    pub fn from_tensor<const D: usize>(
        name: String,
        tensor: burn::prelude::Tensor<D>,
    ) -> NamedTensor {
        NamedTensor {
            name,
            shape: tensor.dims().to_vec(),
            values: crate::device::to_f32(tensor),
        }
    }
}

/// Writes tensors into one safetensors file.
pub fn save_safetensors_file(path: &Path, tensors: &[NamedTensor], dtype: SaveDtype) -> Result<()> {
    let encoded: Vec<(Dtype, Vec<u8>)> = tensors.iter().map(|t| dtype.encode(&t.values)).collect();
    let views = tensors.iter().zip(&encoded).map(|(t, (dt, bytes))| {
        (
            t.name.clone(),
            TensorView::new(*dt, t.shape.clone(), bytes).expect("sizes match"),
        )
    });
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| ModelError::Invalid {
        path: path.to_path_buf(),
        message: format!("cannot write safetensors: {e}"),
    })
}

/// Writes tensors as transformers does: `model.safetensors`, or shards of at most
/// `max_shard_bytes` plus `model.safetensors.index.json`.
pub fn save_safetensors(
    dir: &Path,
    tensors: &[NamedTensor],
    dtype: SaveDtype,
    max_shard_bytes: usize,
) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let (dt, bytes) = dtype.encode(&t.values);
            (t.name.clone(), t.shape.clone(), dt, bytes)
        })
        .collect();
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0;
    for (i, t) in encoded.iter().enumerate() {
        if size + t.3.len() > max_shard_bytes && !shards.last().expect("one shard").is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += t.3.len();
        shards.last_mut().expect("one shard").push(i);
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let total = shards.len();
    let mut weight_map = BTreeMap::new();
    for (n, shard) in shards.iter().enumerate() {
        let file = if total == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{total:05}.safetensors", n + 1)
        };
        let views: Vec<(String, TensorView)> = shard
            .iter()
            .map(|&i| {
                let (name, shape, dt, bytes) = &encoded[i];
                weight_map.insert(name.clone(), file.clone());
                (
                    name.clone(),
                    TensorView::new(*dt, shape.clone(), bytes).expect("sizes match"),
                )
            })
            .collect();
        let path = dir.join(&file);
        safetensors::serialize_to_file(views, metadata.clone(), &path).map_err(|e| {
            ModelError::Invalid {
                path,
                message: format!("cannot write safetensors: {e}"),
            }
        })?;
    }
    if total > 1 {
        let total_size: usize = encoded.iter().map(|t| t.3.len()).sum();
        let index = serde_json::json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_string_pretty(&index).expect("JSON"))
            .map_err(io_at(&path))?;
    }
    Ok(())
}
