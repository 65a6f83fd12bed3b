//! OCI distribution client: `pull`, `push`, `login` against any registry that speaks the OCI
//! distribution spec (docker's registry, distribution, Harbor, quay, ghcr, docker hub).
//!
//! Synchronous, like the rest of the tools: one [`client::Client`] per registry (transport,
//! TLS, authentication and token reuse), manifests kept byte for byte as the registry served
//! them (so every digest strata reports is the registry's), and layer blobs streamed from the
//! network through their digest check straight into the store's extraction.

pub mod blob_source;
pub mod challenge;
pub mod client;
pub mod credentials;
pub mod lazy_pull;
pub mod manifest;
mod parallel;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;

pub use reference::Reference;

use crate::image::Digest;

/// Errors of the registry client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image store refused something (a hostile layer, a full disk, a bad digest).
    #[error(transparent)]
    Store(#[from] crate::image::Error),
    /// Not a valid image reference.
    #[error("invalid reference {0}")]
    BadReference(String),
    /// The registry could not be reached or the connection broke.
    #[error("{what}: {message}")]
    Transport {
        /// What was being done.
        what: String,
        /// The transport's error.
        message: String,
    },
    /// The registry answered with an error (its code and message are in `message`).
    #[error("{what}: {message}")]
    Registry {
        /// What was asked.
        what: String,
        /// HTTP status.
        status: u16,
        /// The registry's error codes and messages, or the status line.
        message: String,
    },
    /// The registry refused our credentials or wants some.
    #[error("{what}: {message}")]
    Unauthorized {
        /// What was asked.
        what: String,
        /// Why.
        message: String,
    },
    /// Content does not match the digest it was asked for or announced with.
    #[error("{what}: digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        found: Digest,
    },
    /// The image has no manifest for the platform asked for.
    #[error("{reference}: no image for platform {wanted} (it has: {available})")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A document from the registry that strata cannot use.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing the credentials file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A credential helper failed.
    #[error("{0}")]
    Credentials(String),
    /// Ctrl-C (or SIGTERM/SIGHUP) stopped a transfer.
    #[error("interrupted (what was downloaded is kept: the next pull resumes it)")]
    Interrupted,
}

/// Result type of the registry client.
pub type Result<T> = std::result::Result<T, Error>;

/// Wrap an io error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
