//! Errors of the runner library; the binary prints them once as `qat: …`.

use thiserror::Error;

/// Result alias of the runner.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the runner.
#[derive(Debug, Error)]
pub enum Error {
    /// The experiment file or a flag is invalid (exit code 2, nothing ran).
    #[error("{0}")]
    Config(String),
    /// A dataset file is missing or corrupt.
    #[error("{0}")]
    Data(String),
    /// A dataset could not be downloaded (nothing ran).
    #[error("{0}")]
    Fetch(String),
    /// A plugin failed while running.
    #[error("plugin error: {0}")]
    Plugin(String),
    /// Stopped by Ctrl-C; the run directory is left resumable.
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
    /// The loss became NaN or infinite.
    #[error("diverged: {0}")]
    Diverged(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}
