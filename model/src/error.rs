//! Errors of the model core: each names the file, the tensor or the field, and what was expected.

use std::path::PathBuf;

/// Why a model, tokenizer or dataset could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A required file is absent.
    #[error("{path}: file not found ({what})")]
    MissingFile {
        /// The path looked for.
        path: PathBuf,
        /// What it should have held.
        what: String,
    },
    /// A file exists but its content is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A checkpoint lacks a tensor the architecture needs.
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Training produced a NaN or infinite loss or gradient.
    #[error(
        "non-finite {what} at step {step} (batch ids: {ids}); training stopped, the last good checkpoint is kept"
    )]
    NonFinite {
        /// The optimizer step (1-based).
        step: usize,
        /// `loss` or `gradient`.
        what: &'static str,
        /// Ids of the examples in the step's batch.
        ids: String,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A bad argument (shape params, batch sizes, …).
    #[error("{0}")]
    Argument(String),
    /// A device that cannot be used (no CUDA driver, no such GPU).
    #[error("{0}")]
    Device(String),
}

/// Attaches a path to an I/O error.
pub fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}

/// Shorthand result type.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
