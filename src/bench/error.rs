//! The errors of the benchmark harness.

use std::path::PathBuf;

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file operation on the fixture, a mount or the output failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An external program (mount, tar, fio, a FUSE daemon, ...) failed.
    #[error("{program}: {message}")]
    Command {
        /// The program that failed.
        program: String,
        /// Its exit status and stderr, or why it could not be started.
        message: String,
    },
    /// A mount or a workload did not finish before its deadline.
    #[error("deadline of {seconds} s passed: {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The deadline.
        seconds: u64,
    },
    /// The command line or configuration asked for something that does not exist.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// SIGINT or SIGTERM arrived; the mounts were cleaned up.
    #[error("interrupted")]
    Interrupted,
    /// Writing the JSON report failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Shorthand for results of this module.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Adds the operation and path to an I/O error, for `map_err`.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |source| BenchError::Io { what, path, source }
}
