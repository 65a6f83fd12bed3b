//! Where the bytes of a blob come from: the one narrow interface between the format (and the
//! union that serves it) and the transport. A local file implements it here; the registry
//! client implements it with HTTP Range requests. Nothing a source returns is trusted: the
//! reader checks it against the TOC digest or the chunk digests.

use std::fs::File;
use std::io::{self, Read};
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
    /// The `len` bytes at `offset` as a stream, for one long sequential read (the registry
    /// sends them as one answer, read as they arrive). A stream that ends early is an error.
    /// By default, one [`BlobSource::read_range`].
    fn open_range(&self, offset: u64, len: u64) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(io::Cursor::new(self.read_range(offset, len)?)))
    }
}

/// A reader of exactly `left` bytes of `inner`: ending sooner is an `UnexpectedEof` error.
pub struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Exact<R> {
    /// The next `len` bytes of `inner`.
    pub fn new(inner: R, len: u64) -> Exact<R> {
        Exact { inner, left: len }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended {} bytes short", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A file read from an offset by `pread`, so readers of one file do not share a position.
struct At<'a> {
    file: &'a File,
    at: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
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

    fn open_range(&self, offset: u64, len: u64) -> io::Result<Box<dyn Read + Send + '_>> {
        let at = At {
            file: &self.file,
            at: offset,
        };
        Ok(Box::new(Exact::new(at, len)))
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
    fn open_range(&self, offset: u64, len: u64) -> io::Result<Box<dyn Read + Send + '_>> {
        (**self).open_range(offset, len)
    }
}
