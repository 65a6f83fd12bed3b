//! Containers: an image's layers as lowerdirs plus a fresh upper, mounted by `stratafs`, run by
//! an OCI runtime (runc or crun) from a runtime-spec bundle strata writes.
//!
//! The seam to the image store is [`ImageSpec`]: whoever owns images hands over the extracted
//! layer directories (bottom to top) and the image config; nothing here knows how they were made.

pub mod commit;
pub mod diff;
pub mod lifecycle;
pub mod monitor;
pub mod mount;
pub mod network;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod userns;
pub mod view;
pub mod volume;

use std::path::PathBuf;

pub use lifecycle::{Container, RunOptions};
pub use state::{ContainerState, Status};

/// Directories an OCI runtime creates as mount points in a rootfs that lacks them: empty ones in
/// a writable layer are not the container's changes (`diff`, `commit` leave them out).
pub const RUNTIME_MOUNT_POINTS: &[&str] = &["dev", "proc", "sys"];

/// What a container needs of an image: its layer directories and its config.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Image identity recorded in the container's state (a digest or a name).
    pub id: String,
    /// The name the user gave for it (shown by `ps`).
    pub name: String,
    /// Extracted layer directories in overlay format, bottom layer first.
    pub lower_dirs: Vec<PathBuf>,
    /// The OCI image configuration (command, env, working dir, user).
    pub config: oci_spec::image::ImageConfiguration,
}

/// Errors of the container module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on the store failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No usable OCI runtime was found or the chosen one is unusable.
    #[error("runtime: {0}")]
    Runtime(String),
    /// Mounting or unmounting the container root file system failed.
    #[error("mount: {0}")]
    Mount(String),
    /// No container has this ID or name.
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    /// The operation is not allowed in the container's current state.
    #[error("{0}")]
    State(String),
    /// The user's request is invalid (bad volume syntax, unknown user, ...).
    #[error("{0}")]
    Invalid(String),
    /// A named volume was not found or is in use.
    #[error("volume: {0}")]
    Volume(String),
    /// Reading or writing JSON state failed.
    #[error("json {what}: {source}")]
    Json {
        /// Which file.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The container's network.
    #[error(transparent)]
    Network(#[from] network::Error),
    /// Building the runtime spec failed.
    #[error("spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// Result type of the container module.
pub type Result<T> = std::result::Result<T, Error>;

/// Wrap an io error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
