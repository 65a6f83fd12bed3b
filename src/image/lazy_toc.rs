//! The TOC of a lazy layer kept in the store: `pull --lazy` reads the blob's footer and TOC
//! from the registry once and keeps those bytes (the tail of the blob, from the TOC's gzip
//! member to the end) in `lazy/HEX/toc.tail`; whoever opens the layer later (stratafs at each
//! mount, strata to look up a user) reads them from there instead of the registry.
//!
//! Nothing here is trusted more than the registry: the kept bytes go through the same reader,
//! which checks the TOC against the layer descriptor's digest on every load; kept bytes that
//! fail that check are ignored (logged) and the registry is asked again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::estargz::{reader, BlobSource, LazySpec, Sha256Digest};

/// The name of the kept tail in a lazy layer's home (`lazy/HEX/`).
pub const FILE: &str = "toc.tail";

/// Where the kept tail of the lazy layer `spec` describes would be (beside its directory).
pub fn path_for(spec: &LazySpec) -> PathBuf {
    spec.dir.with_file_name(FILE)
}

/// A source that remembers the ranges read through it (to keep the footer and TOC that a
/// first open reads).
pub struct Recording<'a> {
    inner: &'a dyn BlobSource,
    reads: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl<'a> Recording<'a> {
    /// Record what is read from `inner`.
    pub fn new(inner: &'a dyn BlobSource) -> Recording<'a> {
        Recording {
            inner,
            reads: Mutex::new(Vec::new()),
        }
    }

    /// The bytes from the lowest recorded offset to the end of the blob, if the reads
    /// recorded cover that span without a gap (the TOC member and the footer do).
    pub fn tail(&self) -> Option<Vec<u8>> {
        let size = self.inner.size().ok()?;
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reads.sort_by_key(|(o, _)| *o);
        let start = reads.first()?.0;
        let mut out = Vec::new();
        for (o, bytes) in reads {
            let at = start + out.len() as u64;
            if o > at {
                return None;
            }
            let skip = (at - o) as usize;
            if skip < bytes.len() {
                out.extend_from_slice(&bytes[skip..]);
            }
        }
        (start + out.len() as u64 == size).then_some(out)
    }
}

impl BlobSource for Recording<'_> {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let bytes = self.inner.read_range(offset, len)?;
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, bytes.clone()));
        Ok(bytes)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A blob whose tail (the TOC member and the footer) is kept locally: reads that fall inside
/// it are answered from it, every other read goes to the inner source.
pub struct WithTail {
    inner: Box<dyn BlobSource>,
    size: u64,
    start: u64,
    tail: Vec<u8>,
}

impl BlobSource for WithTail {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        match self.kept(offset, len) {
            Some(bytes) => Ok(bytes.to_vec()),
            None => self.inner.read_range(offset, len),
        }
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    /// A range outside the kept tail streams from the inner source as it arrives (the files
    /// a lazy layer fills are all before the tail): never buffered whole first.
    fn open_range(&self, offset: u64, len: u64) -> io::Result<Box<dyn io::Read + Send + '_>> {
        match self.kept(offset, len) {
            Some(bytes) => Ok(Box::new(bytes)),
            None => self.inner.open_range(offset, len),
        }
    }
}

impl WithTail {
    /// The `len` bytes at `offset` if they all lie in the kept tail.
    fn kept(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if offset < self.start || end > self.size {
            return None;
        }
        let at = (offset - self.start) as usize;
        Some(&self.tail[at..at + len as usize])
    }
}

/// `inner`, the blob of the lazy layer `spec` describes, with its kept TOC if the store has
/// one that passes the TOC digest check (else `inner` as it is: the registry is asked).
pub fn source_for(spec: &LazySpec, inner: Box<dyn BlobSource>) -> Box<dyn BlobSource> {
    let path = path_for(spec);
    let tail = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("kept TOC {}: {e}: reading it from the blob", path.display());
            }
            return inner;
        }
    };
    let size = match inner.size() {
        Ok(s) => s,
        Err(_) => return inner,
    };
    let Ok(toc) = Sha256Digest::parse(&spec.toc) else {
        return inner;
    };
    if tail.len() as u64 > size {
        tracing::warn!(
            "kept TOC {} is larger than the blob {}: reading it from the blob",
            path.display(),
            inner.describe()
        );
        return inner;
    }
    let kept = WithTail {
        start: size - tail.len() as u64,
        inner,
        size,
        tail,
    };
    match reader::read_toc(&kept, Some(&toc)) {
        Ok(_) => Box::new(kept),
        Err(e) => {
            tracing::warn!(
                "kept TOC {}: {e}: reading it from the blob instead",
                path.display()
            );
            kept.inner
        }
    }
}

/// The blob of the lazy layer `spec` describes as far as the store has it: its kept tail for
/// a registry blob (reads outside it fail; nothing is sent), or the local blob file.
pub fn local_source(spec: &LazySpec) -> io::Result<Box<dyn BlobSource>> {
    match &spec.remote {
        Some(r) => Ok(source_for(
            spec,
            Box::new(NotHere {
                size: r.size,
                what: format!("{}/{}@{}", r.api_host, r.repository, r.digest),
            }),
        )),
        None => Ok(Box::new(crate::estargz::FileSource::open(&spec.blob)?)),
    }
}

/// A registry blob that is not to be reached (its reads fail).
struct NotHere {
    size: u64,
    what: String,
}

impl BlobSource for NotHere {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        Err(io::Error::other(format!(
            "{}: bytes {offset}+{len} are not in the store",
            self.what
        )))
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// Keep `tail` (read while the layer's directory was made) in the lazy layer home `home`.
pub fn keep(home: &Path, tail: &[u8]) -> super::Result<()> {
    super::layout::write_atomic(&home.join(FILE), tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estargz::writer::tests::{sample_tar, MemSource};
    use crate::estargz::writer::{convert, Options};
    use std::io::Read;

    /// A source that counts its reads and can be made to fail.
    struct Counted(MemSource, std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl BlobSource for Counted {
        fn size(&self) -> io::Result<u64> {
            self.0.size()
        }
        fn read_range(&self, o: u64, l: u64) -> io::Result<Vec<u8>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.read_range(o, l)
        }
        fn describe(&self) -> String {
            "counted".into()
        }
    }

    /// A source that streams ranges and refuses to read one whole.
    struct StreamOnly(MemSource, std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl BlobSource for StreamOnly {
        fn size(&self) -> io::Result<u64> {
            self.0.size()
        }
        fn read_range(&self, _: u64, _: u64) -> io::Result<Vec<u8>> {
            Err(io::Error::other("read whole"))
        }
        fn describe(&self) -> String {
            "stream only".into()
        }
        fn open_range(&self, o: u64, l: u64) -> io::Result<Box<dyn io::Read + Send + '_>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Box::new(io::Cursor::new(self.0.read_range(o, l)?)))
        }
    }

    /// An eStargz blob of the sample tar, its tail as a first open records it (footer and
    /// TOC member), and its TOC digest.
    fn blob_and_tail() -> (Vec<u8>, Vec<u8>, Sha256Digest) {
        let tar = sample_tar();
        let mut blob = Vec::new();
        let w = convert(|| Ok(&tar[..]), &mut blob, &Options::default()).unwrap();
        let src = MemSource(blob.clone());
        let rec = Recording::new(&src);
        reader::read_toc(&rec, Some(&w.toc_digest)).unwrap();
        let tail = rec.tail().expect("footer and TOC are contiguous");
        (blob, tail, w.toc_digest)
    }

    #[test]
    fn a_range_outside_the_kept_tail_is_streamed_from_the_blob_and_one_inside_is_not() {
        let (blob, tail, _) = blob_and_tail();
        let streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kept = WithTail {
            inner: Box::new(StreamOnly(MemSource(blob.clone()), streams.clone())),
            size: blob.len() as u64,
            start: (blob.len() - tail.len()) as u64,
            tail: tail.clone(),
        };
        let read = |o: usize, l: usize| {
            let mut out = Vec::new();
            kept.open_range(o as u64, l as u64)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let before = blob.len() - tail.len();
        assert_eq!(read(0, before), blob[..before]);
        assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(read(before, tail.len()), tail);
        assert_eq!(
            streams.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the tail is answered from what is kept"
        );
    }

    #[test]
    fn a_kept_tail_answers_the_toc_reads_and_a_bad_one_is_ignored() {
        let (blob, tail, toc_digest) = blob_and_tail();
        assert!(tail.len() < blob.len() && blob.ends_with(&tail));

        let dir = tempfile::tempdir().unwrap();
        let spec = LazySpec {
            dir: dir.path().join("root"),
            blob: PathBuf::new(),
            toc: toc_digest.to_string(),
            cache: dir.path().join("cache"),
            remote: None,
        };
        keep(dir.path(), &tail).unwrap();
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Box::new(Counted(MemSource(blob.clone()), reads.clone()));
        let s = source_for(&spec, counted);
        reader::read_toc(&*s, Some(&toc_digest)).unwrap();
        assert_eq!(
            reads.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "all from the tail"
        );
        // A range outside the tail still reaches the blob.
        assert_eq!(s.read_range(0, 10).unwrap(), blob[..10]);

        // A kept tail whose TOC has another digest is not used.
        let mut bad = tail.clone();
        let mid = bad.len() / 3;
        bad[mid] ^= 0xff;
        keep(dir.path(), &bad).unwrap();
        let counted = Box::new(Counted(MemSource(blob.clone()), reads.clone()));
        let s = source_for(&spec, counted);
        reader::read_toc(&*s, Some(&toc_digest)).unwrap();
        assert!(
            reads.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "from the blob"
        );
        // Longer than the blob: ignored too.
        let mut long = blob.clone();
        long.extend_from_slice(&tail);
        keep(dir.path(), &long).unwrap();
        let s = source_for(&spec, Box::new(MemSource(blob.clone())));
        reader::read_toc(&*s, Some(&toc_digest)).unwrap();
    }
}
