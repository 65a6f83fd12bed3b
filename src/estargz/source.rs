//! Where the bytes of a blob come from: the one narrow interface between the format (and the
//! union that serves it) and the transport. A local file implements it here; the registry
//! client implements it with HTTP Range requests. Nothing a source returns is trusted: the
//! reader checks it against the TOC digest or the chunk digests.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Random access to the bytes of one blob.
pub trait BlobSource: Send + Sync {
    /// The blob's size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Exactly the `len` bytes at `offset` (an error if the blob is shorter).
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    /// A name for messages (a path, a registry URL).
    fn describe(&self) -> String;
}

/// A blob in a local file (a store blob, a file being converted, a test fixture).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
}

impl FileSource {
    /// Open the blob at `path`.
    pub fn open(path: &Path) -> io::Result<FileSource> {
        Ok(FileSource {
            file: File::open(path)?,
            path: path.to_path_buf(),
        })
    }
}

impl BlobSource for FileSource {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl<S: BlobSource + ?Sized> BlobSource for Box<S> {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        (**self).read_range(offset, len)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
