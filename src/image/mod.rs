//! The image store: content-addressed blobs in an OCI image layout, tags, extracted layers, and
//! the ways images come in and go out (import, save, load, OCI layout directories).
//!
//! Nothing here knows of FUSE or containers: callers get layer directories and configs.

pub mod archive;
pub mod blobs;
pub mod config;
pub mod digest;
pub mod estargz;
pub mod extract;
pub mod import;
pub mod layout;
pub mod lazy;
pub mod lazy_adopt;
pub mod lazy_toc;
pub mod lock;
pub mod pack;
pub mod pins;
pub mod private;
pub mod reference;
pub mod store;

pub use digest::Digest;
pub use store::{Image, LayerDesc, Store};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tar could not be read (truncated, corrupt, or its blob failed verification).
    #[error("{what}: {source}")]
    Tar {
        /// Which tar.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tar entry that would leave its layer or cannot be represented.
    #[error("{layer}: refusing entry {entry:?}: {why}")]
    UnsafeEntry {
        /// The layer or archive.
        layer: String,
        /// The entry's path as written in the tar.
        entry: String,
        /// Why.
        why: String,
    },
    /// Content does not match the digest it is stored or referenced under.
    #[error("{what}: digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        found: Digest,
    },
    /// A blob the image needs is not in the store.
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    /// Not a valid `sha256:` digest.
    #[error("invalid digest {0:?}")]
    BadDigest(String),
    /// Not a valid image reference.
    #[error("invalid image reference {0}")]
    BadReference(String),
    /// No image has this name or ID.
    #[error("no such image: {0}")]
    NoSuchImage(String),
    /// An ID prefix matches several images.
    #[error("ambiguous image ID: {0}")]
    Ambiguous(String),
    /// JSON that could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// An eStargz layer could not be written or read.
    #[error("{what}: {source}")]
    Estargz {
        /// Which layer.
        what: String,
        /// The underlying error.
        source: crate::estargz::Error,
    },
    /// A layer pulled lazily, whose blob is still in the registry, where its bytes are needed.
    #[error("layer {0} was pulled lazily: its blob is in the registry, not in the store (`strata pull` the image without --lazy to fetch it)")]
    PulledLazily(Digest),
    /// Anything else the user asked that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

/// Result type of the image store.
pub type Result<T> = std::result::Result<T, Error>;

/// Wrap an io error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
