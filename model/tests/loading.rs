//! Loading and saving model directories: clear errors for every bad input, and flow's output in
//! the same formats it reads (single file, shards, bf16).

use flow_model::checkpoint::safetensors::{Checkpoint, NamedTensor, SaveDtype, save_safetensors};
use flow_model::device::to_f64;
use flow_model::{Model, ModelError, cpu};
use std::path::{Path, PathBuf};

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mistral-tiny/base")
}

/// A writable copy of the base model directory.
fn copy_of_base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(base()).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// The base checkpoint's tensors, as files hold them.
fn base_tensors() -> Vec<NamedTensor> {
    let checkpoint = Checkpoint::open(&base()).unwrap();
    let model = Model::load(&base(), &cpu()).unwrap();
    flow_model::arch::weight_specs(&model.config)
        .into_iter()
        .map(|s| NamedTensor {
            values: checkpoint.read_f32(&s.name, &s.file_shape).unwrap(),
            name: s.name,
            shape: s.file_shape,
        })
        .collect()
}

fn load_error(dir: &Path) -> String {
    match Model::load(dir, &cpu()) {
        Ok(_) => panic!("expected an error loading {}", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load_error(dir.path()).contains("config.json: file not found"));
    std::fs::copy(base().join("config.json"), dir.path().join("config.json")).unwrap();
    assert!(load_error(dir.path()).contains("model.safetensors: file not found (model weights"));
    let err = flow_model::tokenize::PreferenceTokenizer::load(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json: file not found"), "{err}");
}

#[test]
fn unsupported_model_type_is_rejected() {
    let dir = copy_of_base();
    let config = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("\"mistral\"", "\"gpt2\"");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    assert!(load_error(dir.path()).contains("unsupported model_type `gpt2`"));
}

#[test]
fn missing_and_misshaped_tensors_are_named_with_shapes() {
    let dir = copy_of_base();
    let mut tensors = base_tensors();
    tensors.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight");
    save_safetensors(dir.path(), &tensors, SaveDtype::F32, usize::MAX).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains(
            "tensor `model.layers.1.mlp.up_proj.weight` is missing (expected shape [128, 64])"
        ),
        "{err}"
    );

    let mut tensors = base_tensors();
    let norm = tensors
        .iter_mut()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    norm.shape = vec![32, 2];
    save_safetensors(dir.path(), &tensors, SaveDtype::F32, usize::MAX).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("tensor `model.norm.weight` has shape [32, 2], expected [64]"),
        "{err}"
    );

    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    assert!(load_error(dir.path()).contains("not a safetensors file"));
}

fn weights_f64(model: &Model) -> Vec<(String, Vec<f64>)> {
    model
        .weights()
        .into_iter()
        .map(|(n, t)| (n, to_f64(t.flatten::<1>(0, 1))))
        .collect()
}

#[test]
fn saved_models_load_back_unchanged_single_sharded_and_bf16() {
    let device = cpu();
    let model = Model::load(&base(), &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save(out.path(), SaveDtype::F32).unwrap();
    let again = Model::load(out.path(), &device).unwrap();
    assert_eq!(again.config, model.config);
    assert_eq!(weights_f64(&again), weights_f64(&model));

    let sharded = tempfile::tempdir().unwrap();
    std::fs::copy(
        out.path().join("config.json"),
        sharded.path().join("config.json"),
    )
    .unwrap();
    save_safetensors(sharded.path(), &base_tensors(), SaveDtype::F32, 200_000).unwrap();
    assert!(
        sharded
            .path()
            .join("model.safetensors.index.json")
            .is_file()
    );
    assert!(
        sharded
            .path()
            .join("model-00001-of-00003.safetensors")
            .is_file()
    );
    assert_eq!(
        weights_f64(&Model::load(sharded.path(), &device).unwrap()),
        weights_f64(&model)
    );

    let bf16 = tempfile::tempdir().unwrap();
    model.save(bf16.path(), SaveDtype::BF16).unwrap();
    let halved = Model::load(bf16.path(), &device).unwrap();
    assert_eq!(halved.config.dtype, "bfloat16");
    for ((name, a), (_, b)) in weights_f64(&halved).into_iter().zip(weights_f64(&model)) {
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= y.abs() / 128.0 + 1e-30,
                "{name}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Model::load(dir.path(), &cpu()),
        Err(ModelError::MissingFile { .. })
    ));
}
