//! The layer explorer: what every layer of an image (or a container, an archive, a raw
//! overlay stack) holds, what each one changed, which layer provides a path and what it
//! shadows, and how much space the stack wastes (dive's efficiency).
//!
//! The model ([`tree`], [`stack`], [`efficiency`], [`content`], [`compare`]) knows nothing of
//! terminals; the UI ([`ui`]) and the `strata` verbs are thin users of it. Every path is read
//! beneath its layer's root ([`crate::overlay::beneath`]); the on-disk markers (whiteouts in
//! both forms, opaque directories) are read with [`crate::overlay::format`].

pub mod ci;
pub mod compare;
pub mod content;
pub mod efficiency;
pub mod scan;
pub mod source;
pub mod stack;
pub mod tree;
pub mod ui;

pub use stack::{Layer, Stack};
pub use tree::{Kind, NodeId, Tree, View};

/// Errors of the explorer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on a layer failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The image store could not give the image or its layers.
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    /// The container could not be read.
    #[error(transparent)]
    Container(#[from] crate::container::Error),
    /// A path that no layer of the stack holds (or not at that layer).
    #[error("{0}: no such file in {1}")]
    NotFound(String, String),
    /// Anything else the user asked that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

/// Result type of the explorer.
pub type Result<T> = std::result::Result<T, Error>;

/// Wrap an io error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Wrap an errno with what was being done.
pub(crate) fn errno(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> Error {
    let what = what.into();
    move |e| Error::Io {
        what,
        source: e.into(),
    }
}
