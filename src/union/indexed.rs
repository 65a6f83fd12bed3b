//! A lower layer that is not a directory: an eStargz blob served from its checked TOC.
//! Names, attributes, whiteouts and opaque directories come from the TOC at once; a file's
//! bytes come chunk by chunk through a [`BlobSource`] (a local file here, the registry client
//! later: the union knows nothing of HTTP), each chunk verified against its digest and kept in
//! the shared [`ChunkCache`] before any byte is returned.
//!
//! It answers as the directory layer does (a [`LayerDir`] per directory, an `rfs::Stat` per
//! inode, `Errno` on failure), so merging, whiteouts and opacity are the same code for both
//! kinds. A chunk that cannot be fetched or fails its digest is `EIO`, with the reason logged:
//! never wrong bytes.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::sync::Arc;

use rustix::fs::{self as rfs, FileType};
use rustix::io::Errno;

use super::dir::LayerDir;
use crate::estargz::cache::ChunkCache;
use crate::estargz::index::{Chunk, ROOT};
use crate::estargz::{self, reader, BlobSource, NodeKind, Reader, Sha256Digest};
use crate::overlay::format::{self, EntryKind, WhiteoutForm};

/// Largest span of the blob one request of [`IndexedLayer::file_chunks`] fetches.
pub const PART: u64 = 4 << 20;
/// How many requests for one file run at once.
pub const PARALLEL: usize = 4;

/// An eStargz layer read through its TOC.
pub struct IndexedLayer {
    reader: Reader<Box<dyn BlobSource>>,
    cache: Arc<ChunkCache>,
    /// Device number reported for its inodes.
    dev: u64,
}

impl std::fmt::Debug for IndexedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedLayer")
            .field("source", &self.reader.source().describe())
            .field("toc", self.reader.toc_digest())
            .finish()
    }
}

/// Inode number reported for TOC inode `ino` (never 0).
fn st_ino(ino: u32) -> u64 {
    ino as u64 + 1
}

impl IndexedLayer {
    /// Open the blob in `source`, whose TOC must have digest `toc` (the layer descriptor's
    /// annotation: the only thing trusted); chunks are kept in `cache`; its inodes report
    /// device `dev`.
    pub fn open(
        source: Box<dyn BlobSource>,
        toc: &Sha256Digest,
        cache: Arc<ChunkCache>,
        dev: u64,
    ) -> Result<IndexedLayer, estargz::Error> {
        Ok(IndexedLayer {
            reader: Reader::open(source, Some(toc))?,
            cache,
            dev,
        })
    }

    /// The root directory's inode.
    pub fn root(&self) -> u32 {
        ROOT
    }

    /// The checked TOC.
    pub fn index(&self) -> &estargz::Index {
        self.reader.index()
    }

    /// Entry `name` of directory `dir` (a whiteout too: it stats as a 0/0 character device,
    /// as in an extracted layer).
    pub fn lookup(&self, dir: u32, name: &OsStr) -> Result<u32, Errno> {
        let ix = self.index();
        if !matches!(ix.node(dir).kind, NodeKind::Dir { .. }) {
            return Err(Errno::NOTDIR);
        }
        ix.lookup(dir, name).ok_or(Errno::NOENT)
    }

    /// The entries of directory `dir` as the union's merge takes them.
    pub fn read_dir(&self, dir: u32) -> Result<LayerDir, Errno> {
        let ix = self.index();
        let NodeKind::Dir { opaque, .. } = ix.node(dir).kind else {
            return Err(Errno::NOTDIR);
        };
        let entries = ix
            .children(dir)
            .map(|(name, ino)| {
                let kind = match &ix.node(ino).kind {
                    NodeKind::Whiteout => EntryKind::Whiteout(WhiteoutForm::Device),
                    k => EntryKind::Visible(file_type(k)),
                };
                (Arc::from(name), kind, st_ino(ino))
            })
            .collect();
        Ok(LayerDir { entries, opaque })
    }

    /// Whether directory `dir` hides the layers below (an OCI marker or an overlay xattr).
    pub fn is_opaque(&self, dir: u32) -> bool {
        matches!(
            self.index().node(dir).kind,
            NodeKind::Dir { opaque: true, .. }
        )
    }

    /// Attributes of inode `ino`, as `lstat` of the extracted layer reports them.
    pub fn stat(&self, ino: u32) -> Result<rfs::Stat, Errno> {
        let ix = self.index();
        if ino as usize >= ix.len() {
            return Err(Errno::NOENT);
        }
        let n = ix.node(ino);
        let mut st = crate::sys::zeroed_stat();
        st.st_dev = self.dev;
        st.st_ino = st_ino(ino);
        let (ftype, perm) = match &n.kind {
            NodeKind::Whiteout => (FileType::CharacterDevice, 0),
            k => (file_type(k), n.mode),
        };
        st.st_mode = ftype.as_raw_mode() | perm;
        st.st_nlink = match &n.kind {
            NodeKind::Dir { children, .. } => {
                2 + children
                    .values()
                    .filter(|&&c| matches!(ix.node(c).kind, NodeKind::Dir { .. }))
                    .count() as u64
            }
            _ => n.nlink as u64,
        };
        // A whiteout is the union's marker, not the entry's file: root's, as extraction
        // and the union make them.
        if n.kind != NodeKind::Whiteout {
            st.st_uid = n.uid;
            st.st_gid = n.gid;
        }
        st.st_rdev = match n.kind {
            NodeKind::Char(ma, mi) | NodeKind::Block(ma, mi) => rfs::makedev(ma, mi),
            _ => 0,
        };
        st.st_size = match n.kind {
            NodeKind::Dir { .. } => 4096,
            _ => n.size as i64,
        };
        st.st_blksize = 4096;
        st.st_blocks = (st.st_size + 4095) / 4096 * 8;
        st.st_mtime = n.mtime;
        st.st_atime = n.mtime;
        st.st_ctime = n.mtime;
        Ok(st)
    }

    /// Target of symlink `ino`.
    pub fn readlink(&self, ino: u32) -> Result<Vec<u8>, Errno> {
        match &self.index().node(ino).kind {
            NodeKind::Symlink(t) => Ok(t.as_encoded_bytes().to_vec()),
            _ => Err(Errno::INVAL),
        }
    }

    /// Names of the xattrs of `ino` a client may see (overlay bookkeeping hidden).
    pub fn listxattr(&self, ino: u32) -> Vec<OsString> {
        self.index()
            .node(ino)
            .xattrs
            .keys()
            .filter(|k| !format::is_private_xattr(k.as_encoded_bytes()))
            .cloned()
            .collect()
    }

    /// Value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: u32, name: &OsStr) -> Result<Vec<u8>, Errno> {
        if format::is_private_xattr(name.as_encoded_bytes()) {
            return Err(Errno::NODATA);
        }
        self.index()
            .node(ino)
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Errno::NODATA)
    }

    /// The verified bytes of `chunk`: from the cache, else fetched, verified and cached.
    fn chunk(&self, chunk: &Chunk) -> Result<Vec<u8>, Errno> {
        self.reader
            .read_chunk_cached(&self.cache, chunk)
            .map_err(|e| {
                tracing::warn!(
                    "lazy layer {}: chunk {}: {e}",
                    self.reader.source().describe(),
                    chunk.digest
                );
                Errno::IO
            })
    }

    /// Up to `len` bytes of regular file `ino` from `offset` (fewer at the end of the file).
    pub fn read(&self, ino: u32, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let n = self.index().node(ino);
        match n.kind {
            NodeKind::Reg => {}
            NodeKind::Dir { .. } => return Err(Errno::ISDIR),
            _ => return Err(Errno::INVAL),
        }
        let end = n.size.min(offset.saturating_add(len as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let c = n.chunk_at(at).ok_or(Errno::IO)?;
            let bytes = self.chunk(c)?;
            let from = (at - c.file_offset) as usize;
            let to = ((end - c.file_offset) as usize).min(bytes.len());
            out.extend_from_slice(&bytes[from..to]);
            at = c.file_offset + to as u64;
        }
        Ok(out)
    }

    /// Write the whole of regular file `ino` to `out` (a copy-up): see
    /// [`IndexedLayer::file_chunks`].
    pub fn copy_to(&self, ino: u32, out: &mut dyn Write) -> Result<u64, Errno> {
        for c in self.file_chunks(ino)? {
            out.write_all(&c).map_err(|e| super::errno_of(&e))?;
        }
        Ok(self.index().node(ino).size)
    }

    /// The verified bytes of every chunk of regular file `ino`, in file order: the cached
    /// ones from the cache, the others fetched (then cached) with as few requests as their
    /// places in the blob allow: adjacent members in one range, a large file in parts of at
    /// most [`PART`] bytes fetched in parallel, [`PARALLEL`] at a time.
    pub fn file_chunks(&self, ino: u32) -> Result<Vec<Vec<u8>>, Errno> {
        let n = self.index().node(ino);
        if n.kind != NodeKind::Reg {
            return Err(Errno::INVAL);
        }
        let chunks = &n.chunks;
        let mut out: Vec<Option<Vec<u8>>> = chunks
            .iter()
            .map(|c| self.cache.get(&c.digest).ok().flatten())
            .collect();
        // Runs of missing chunks whose members follow each other, cut at PART bytes.
        let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
        for i in (0..chunks.len()).filter(|&i| out[i].is_none()) {
            match parts.last_mut() {
                Some(p)
                    if p.end == i
                        && chunks[i - 1].member_end >= chunks[i].member
                        && chunks[i].member_end - chunks[p.start].member <= PART =>
                {
                    p.end = i + 1
                }
                _ => parts.push(i..i + 1),
            }
        }
        let fetch = |p: &std::ops::Range<usize>| self.fetch_run(&chunks[p.clone()]);
        let mut fetched = Vec::with_capacity(parts.len());
        if parts.len() == 1 {
            fetched.push(fetch(&parts[0]));
        } else {
            for batch in parts.chunks(PARALLEL) {
                std::thread::scope(|s| {
                    let handles: Vec<_> = batch.iter().map(|p| s.spawn(|| fetch(p))).collect();
                    for h in handles {
                        fetched.push(h.join().unwrap_or(Err(Errno::IO)));
                    }
                });
            }
        }
        // Cached once the whole file is here: a failed fill leaves the cache as it was.
        let fetched: Vec<Vec<Vec<u8>>> = fetched.into_iter().collect::<Result<_, _>>()?;
        for (p, got) in parts.iter().zip(fetched) {
            for (i, bytes) in p.clone().zip(got) {
                self.keep(&chunks[i], &bytes);
                out[i] = Some(bytes);
            }
        }
        out.into_iter().map(|c| c.ok_or(Errno::IO)).collect()
    }

    /// Fetch `run` (chunks whose members follow each other in the blob) in one request;
    /// each chunk verified.
    fn fetch_run(&self, run: &[Chunk]) -> Result<Vec<Vec<u8>>, Errno> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(Vec::new());
        };
        let source = self.reader.source();
        let fail = |e: &dyn std::fmt::Display| {
            tracing::warn!("lazy layer {}: {e}", source.describe());
            Errno::IO
        };
        let mut stream = source
            .open_range(first.member, last.member_end - first.member)
            .map_err(|e| fail(&e))?;
        let mut got = Vec::with_capacity(run.len());
        reader::stream_chunks(&mut stream, first.member, run, |_, bytes| {
            got.push(bytes);
            Ok::<(), estargz::Error>(())
        })
        .map_err(|e| fail(&e))?;
        Ok(got)
    }

    /// Keep verified chunk `c` in the cache (a full disk only costs the cache).
    pub fn keep(&self, c: &Chunk, bytes: &[u8]) {
        if let Err(e) = self.cache.put(&c.digest, bytes) {
            tracing::warn!("{e}");
        }
    }

    /// The blob's source.
    pub fn source(&self) -> &dyn BlobSource {
        self.reader.source()
    }

    /// The chunk cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// Fetch the files before the prefetch landmark in one request and cache their chunks;
    /// returns the bytes fetched (0 without a landmark or when all are cached).
    pub fn prefetch(&self) -> Result<u64, Errno> {
        let Some(end) = self.index().prefetch_end else {
            return Ok(0);
        };
        let wanted: Vec<&Chunk> = self
            .index()
            .all_chunks()
            .into_iter()
            .filter(|c| c.member_end <= end && !self.cache.contains(&c.digest))
            .collect();
        let Some(start) = wanted.iter().map(|c| c.member).min() else {
            return Ok(0);
        };
        let stop = wanted.iter().map(|c| c.member_end).max().unwrap_or(start);
        let source = self.reader.source();
        let bytes = source.read_range(start, stop - start).map_err(|e| {
            tracing::warn!("lazy layer {}: prefetch: {e}", source.describe());
            Errno::IO
        })?;
        for c in wanted {
            let member = &bytes[(c.member - start) as usize..(c.member_end - start) as usize];
            let data = reader::decode_chunk(member, c).and_then(|d| {
                self.cache.put(&c.digest, &d)?;
                Ok(d)
            });
            if let Err(e) = data {
                tracing::warn!("lazy layer {}: prefetch: {e}", source.describe());
                return Err(Errno::IO);
            }
        }
        Ok(stop - start)
    }
}

/// The file type of a (non-whiteout) TOC inode.
fn file_type(k: &NodeKind) -> FileType {
    match k {
        NodeKind::Dir { .. } => FileType::Directory,
        NodeKind::Reg => FileType::RegularFile,
        NodeKind::Symlink(_) => FileType::Symlink,
        NodeKind::Char(..) | NodeKind::Whiteout => FileType::CharacterDevice,
        NodeKind::Block(..) => FileType::BlockDevice,
        NodeKind::Fifo => FileType::Fifo,
    }
}
