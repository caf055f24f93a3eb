//! One error type for reading, checking and running models.
//!
//! Readers and the decoder fail for the same reasons (a file, a key, a tensor, a shape), and a
//! user needs the same thing from each failure: the name of what was wrong. So io and models
//! share this enum instead of converting between near-identical ones; every variant carries the
//! file, key or tensor it is about.

use std::path::PathBuf;

/// Result alias used throughout microllm's library crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read or write.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its bytes are not what its format promises (bad magic, truncation,
    /// malformed header, not UTF-8, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A configuration key is missing or has an unusable value.
    #[error("{}: key `{key}`: {msg}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        msg: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` not found in {origin}")]
    MissingTensor { name: String, origin: String },
    /// A tensor exists but its shape does not fit the configuration.
    #[error("tensor `{name}` in {origin}: expected shape {expected:?}, found {actual:?}")]
    Shape {
        name: String,
        origin: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A tensor could not be decoded (unsupported storage type, bad data).
    #[error("tensor `{name}` in {origin}: {msg}")]
    TensorData {
        name: String,
        origin: String,
        msg: String,
    },
    /// A tensor the configuration does not call for (an extra block, an unknown name).
    #[error("tensor `{name}` in {origin}: {msg}")]
    UnexpectedTensor {
        name: String,
        origin: String,
        msg: String,
    },
    /// A tensor holds NaN or infinite values, or values its output type cannot represent.
    #[error("tensor `{name}` in {origin}: {msg}")]
    NonFinite {
        name: String,
        origin: String,
        msg: String,
    },
    /// The checkpoint's architecture is not one microllm implements.
    #[error("unsupported architecture `{name}` in {origin} (supported: {supported})")]
    UnsupportedArchitecture {
        name: String,
        origin: String,
        supported: String,
    },
    /// A model could not be found or fetched (hub id, path).
    #[error("cannot open model `{spec}`: {msg}")]
    Source { spec: String, msg: String },
    /// Tokenizer construction or use failed.
    #[error("tokenizer ({origin}): {msg}")]
    Tokenizer { origin: String, msg: String },
    /// Training stopped because its loss or gradient stopped being finite; the message says
    /// at which step and where the last good state is checkpointed.
    #[error("{0}")]
    Diverged(String),
    /// An argument was out of range or inconsistent with the model.
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed-file error.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A configuration-key error.
    pub fn config(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            key: key.into(),
            msg: msg.into(),
        }
    }
}
