//! What the model tests share: the fixtures (made with transformers and TRL) and readers for them.
#![allow(dead_code)]

use flow_model::Device;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The device that `FLOW_TEST_DEVICE` names (`wgpu`, `cuda:N`), for the fidelity tests that
/// also run on a GPU (CI sets `wgpu` over Mesa's software Vulkan); `None`, said on stderr, when
/// it is unset. A device this build lacks or the machine cannot run fails the test: whoever set
/// the variable wants that device tested.
pub fn test_device() -> Option<Device> {
    let Ok(name) = std::env::var("FLOW_TEST_DEVICE") else {
        // Straight to stderr, past the test harness's capture, so a skip shows in the output.
        let _ = writeln!(
            std::io::stderr(),
            "skipped on a device: FLOW_TEST_DEVICE is unset (e.g. FLOW_TEST_DEVICE=wgpu)"
        );
        return None;
    };
    Some(device_named(&name).unwrap_or_else(|e| panic!("FLOW_TEST_DEVICE={name}: {e}")))
}

/// The device `name` names, checked by a probe kernel.
fn device_named(name: &str) -> Result<Device, String> {
    match name {
        #[cfg(feature = "wgpu")]
        "wgpu" => flow_model::wgpu().map_err(|e| e.to_string()),
        #[cfg(feature = "cuda")]
        cuda if cuda.starts_with("cuda:") => {
            let index = cuda[5..]
                .parse()
                .map_err(|_| "expected cuda:N".to_string())?;
            flow_model::cuda(index).map_err(|e| e.to_string())
        }
        "cpu" => Ok(flow_model::cpu()),
        other => Err(format!(
            "not a device of this build (`cpu`, `wgpu` with --features wgpu, `cuda:N` with --features cuda): {other}"
        )),
    }
}

/// `tests/fixtures` of the repository, or `FLOW_FIXTURES` (test binaries carried to another
/// machine, as `scripts/gpu-check.sh` does, find the fixtures there).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("FLOW_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
    }
}

/// The fixture folder of every family flow implements (made with transformers and TRL).
pub const FAMILIES: [&str; 5] = [
    "mistral-tiny",
    "llama-tiny",
    "qwen2-tiny",
    "qwen3-tiny",
    "gemma2-tiny",
];

/// `mistral-tiny/golden.json`.
pub fn golden() -> Value {
    golden_of("mistral-tiny")
}

/// `<family>/golden.json`.
pub fn golden_of(family: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(family).join("golden.json")).unwrap(),
    )
    .unwrap()
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of numbers.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `|actual − expected| ≤ tolerance` element-wise, naming the first failure.
pub fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "{what}[{i}]: {a} vs {e} (tolerance {tolerance})"
        );
    }
}

/// `|actual − expected| ≤ tolerance · |expected|`.
pub fn assert_relative(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance * expected.abs(),
        "{what}: {actual} vs {expected} (relative tolerance {tolerance})"
    );
}
