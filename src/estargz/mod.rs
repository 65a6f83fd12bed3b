//! eStargz: a gzip layer tar in which every file (or 4 MiB chunk of one) is its own gzip
//! member, with a table of contents (`stargz.index.json`, the last tar entry) and a 51-byte
//! footer that points at it, so one file of a layer can be read by range without the rest.
//!
//! The blob is still one valid gzip tar (every other client pulls and extracts it as usual).
//! Trust is anchored in the layer descriptor's [`TOC_DIGEST_ANNOTATION`]: the TOC is checked
//! against it, and every chunk against the `chunkDigest` the TOC records, before any byte is
//! used. This module is a leaf (like `overlay`): it knows the format, not images or FUSE.
//! Format reference: stargz-snapshotter's `docs/estargz.md`.

pub mod cache;
pub mod digest;
pub mod footer;
pub mod index;
pub mod reader;
pub mod source;
pub mod spec;
pub mod toc;
pub mod writer;

pub use digest::Sha256Digest;
pub use index::{Chunk, Index, Node, NodeKind};
pub use reader::Reader;
pub use source::{BlobSource, FileSource};
pub use spec::{LazySpec, RemoteBlob};

/// Name of the TOC's tar entry.
pub const TOC_NAME: &str = "stargz.index.json";
/// Root entry marking the end of the files to fetch first (at mount time).
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Root entry saying that no file is to be fetched first.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Contents of a landmark file.
pub const LANDMARK_CONTENTS: u8 = 0xf;
/// Layer descriptor annotation holding the digest of the (uncompressed) TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer descriptor annotation holding the size of the uncompressed layer tar.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// Default size of a chunk of a regular file.
pub const CHUNK_SIZE: u64 = 4 << 20;

/// Errors of eStargz reading, writing and caching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or blob-source operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The blob has no eStargz footer (an ordinary gzip layer, or truncated).
    #[error("not an eStargz blob: {0}")]
    NotEstargz(String),
    /// The TOC is malformed or hostile.
    #[error("invalid eStargz TOC: {0}")]
    BadToc(String),
    /// Content does not match the digest that vouches for it.
    #[error("{what}: digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: Sha256Digest,
        /// The digest it has.
        found: Sha256Digest,
    },
    /// The input of the writer is not a tar it can convert.
    #[error("converting to eStargz: {0}")]
    BadInput(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Wrap an io error with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
