//! Dockerfile builds: parse the Dockerfile, run each instruction on a union mount of the layers
//! so far, and store every filesystem change as one layer of a new image.

pub mod builder;
pub mod cache;
pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod dockerignore;
pub mod expand;
pub mod instruction;

pub use builder::{build, BuildOptions, PullPolicy, Puller};

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Dockerfile does not parse.
    #[error("{file}:{}: {}", .error.line, .error.message)]
    Dockerfile {
        /// Its path.
        file: String,
        /// Where and why.
        error: dockerfile::ParseError,
    },
    /// A step failed for a reason tied to its instruction.
    #[error("{file}:{line}: {message}")]
    Step {
        /// The Dockerfile.
        file: String,
        /// The instruction's line.
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// A `RUN` exited with a non-zero code.
    #[error("{file}:{line}: RUN exited with code {code}")]
    RunFailed {
        /// The Dockerfile.
        file: String,
        /// The instruction's line.
        line: usize,
        /// The process's exit code.
        code: i32,
    },
    /// SIGINT/SIGTERM/SIGHUP arrived: the build stopped and cleaned up.
    #[error("build interrupted: no image was made")]
    Interrupted,
    /// A source in the build context is missing, excluded, or leads outside it.
    #[error("build context: {0}")]
    Context(String),
    /// Copying files into the image failed.
    #[error("copy: {0}")]
    Copy(String),
    /// A file-system operation failed.
    #[error("{0}")]
    Io(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    /// Mounting or running a container failed.
    #[error(transparent)]
    Container(#[from] crate::container::Error),
}

/// Result type of builds.
pub type Result<T> = std::result::Result<T, Error>;
