//! What the model tests share: the fixtures (made with transformers and TRL) and readers for them.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};

/// `tests/fixtures` of the repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
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
