//! Lazy lower layers: a layer directory made from an eStargz TOC (names, attributes,
//! whiteouts, opaque directories and hard links, every regular file the right size but
//! without its bytes) whose files are filled from the blob on first open.
//!
//! A file still to be filled carries the private xattr `XattrNamespace::lazy` (naming its
//! TOC path); the
//! daemon fills it from verified chunks (through the [`IndexedLayer`] and its chunk cache),
//! syncs it, and only then drops the mark, so a file without the mark is whole, across
//! crashes and restarts, and a file with it is never served. A directory layer has no lazy
//! part: the only cost on its path is the check that it has none.
//!
//! The layer reaches the daemon as `lazy=SPEC` (see [`LazySpec`]); `union` reads the blob
//! through a [`BlobSource`] only, which the daemon makes (see [`OpenSource`]): a local file,
//! or the registry client's range requests. `union` knows nothing of HTTP.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::indexed::IndexedLayer;
use crate::estargz::cache::ChunkCache;
use crate::estargz::{BlobSource, FileSource, LazySpec, Sha256Digest};
use crate::overlay::beneath::open_beneath;
use crate::overlay::format::{self, XattrNamespace};

/// The mark of a file whose bytes are not here yet, in both namespaces (root's, rootless).
const MARKS: [&str; 2] = [XattrNamespace::Trusted.lazy(), XattrNamespace::User.lazy()];

/// How the daemon turns a spec into the source of its blob's bytes.
pub type OpenSource<'a> = &'a dyn Fn(&LazySpec) -> Result<Box<dyn BlobSource>, String>;

/// The source of a spec whose blob is a local file (a spec naming a registry needs a daemon
/// that can reach one: see `stratafs`).
pub fn local_source(spec: &LazySpec) -> Result<Box<dyn BlobSource>, String> {
    if spec.remote.is_some() {
        return Err("its blob is in a registry, which this program cannot reach".into());
    }
    Ok(Box::new(
        FileSource::open(&spec.blob).map_err(|e| format!("{}: {e}", spec.blob.display()))?,
    ))
}

/// The lazy part of a lower layer.
#[derive(Debug)]
pub struct LazyLayer {
    layer: IndexedLayer,
    /// `O_PATH` fd of the layer directory as the spec names it, for filling files: the
    /// union reaches its lowers through read-only detached mounts.
    root: OwnedFd,
    /// One fill at a time per layer (a second opener of the same file waits, then finds it
    /// whole).
    filling: parking_lot::Mutex<()>,
}

impl LazyLayer {
    /// Open the lazy part described by `spec`, fetching the files before the prefetch
    /// landmark into the cache.
    pub fn open(spec: &LazySpec, open_source: OpenSource<'_>) -> Result<LazyLayer, String> {
        let toc = Sha256Digest::parse(&spec.toc).map_err(|e| e.to_string())?;
        let root = rfs::open(
            &spec.dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("{}: {e}", spec.dir.display()))?;
        let source = open_source(spec)?;
        let cache = Arc::new(ChunkCache::open(&spec.cache).map_err(|e| e.to_string())?);
        let layer = IndexedLayer::open(source, &toc, cache, 0).map_err(|e| e.to_string())?;
        match layer.prefetch() {
            Ok(n) if n > 0 => {
                tracing::info!("lazy layer {}: prefetched {n} bytes", spec.dir.display())
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("lazy layer {}: prefetch failed: {e}", spec.dir.display()),
        }
        Ok(LazyLayer {
            layer,
            root,
            filling: parking_lot::Mutex::new(()),
        })
    }

    /// The TOC path of the file open as `fd` if it still waits for its bytes. A mark that
    /// cannot be read is an error, never taken for "whole": that would serve zeros.
    fn marked(fd: BorrowedFd<'_>) -> Result<Option<String>, Errno> {
        let mut buf = vec![0u8; 64 << 10];
        for name in MARKS {
            match rfs::fgetxattr(fd, name, &mut buf[..]) {
                Ok(n) => return Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
                Err(Errno::NODATA) | Err(Errno::NOTSUP) => {}
                Err(e) => {
                    tracing::warn!("lazy layer: reading the mark of a file: {e}");
                    return Err(Errno::IO);
                }
            }
        }
        Ok(None)
    }

    /// Make sure regular file `name` of directory `dir` has its bytes: fill it from the blob
    /// if it is marked. EIO (logged) when the bytes cannot be fetched or verified.
    pub fn ensure_at(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        let fd = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.fill(fd.as_fd(), name)
    }

    /// Fill every file still marked, one at a time (client opens go between them): what the
    /// daemon does in the background, so that a layer left alone ends up whole. Returns how
    /// many files could not be filled (each logged; they stay marked for a later open).
    pub fn fill_all(&self) -> usize {
        let ix = self.layer.index();
        let mut seen = std::collections::HashSet::new();
        let mut failed = 0;
        for (path, ino) in ix.walk_all() {
            let node = ix.node(ino);
            if node.kind != crate::estargz::NodeKind::Reg || node.size == 0 || !seen.insert(ino) {
                continue;
            }
            let Ok(path) = path.into_string() else {
                continue;
            };
            let Ok(comps) = crate::estargz::index::components(&path) else {
                continue;
            };
            let comps: Vec<&OsStr> = comps.into_iter().map(OsStr::new).collect();
            let r = open_beneath(
                self.root.as_fd(),
                &comps,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            )
            .and_then(|fd| self.fill(fd.as_fd(), OsStr::new(&path)));
            if let Err(e) = r {
                tracing::warn!("lazy layer: background fetch of {path:?}: {e}");
                failed += 1;
            }
        }
        failed
    }

    /// Fill the file open as `fd` (named `name`, for messages) if it is marked.
    fn fill(&self, fd: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        if rfs::fstat(fd).map(|st| rfs::FileType::from_raw_mode(st.st_mode))?
            != rfs::FileType::RegularFile
            || Self::marked(fd)?.is_none()
        {
            return Ok(());
        }
        let _one = self.filling.lock();
        let Some(path) = Self::marked(fd)? else {
            return Ok(()); // filled while we waited
        };
        let ino = self.layer.index().lookup_path(&path).ok_or_else(|| {
            tracing::warn!("lazy file {name:?} names {path:?}, which its TOC lacks");
            Errno::IO
        })?;
        let comps: Vec<&OsStr> = crate::estargz::index::components(&path)
            .map_err(|_| Errno::IO)?
            .into_iter()
            .map(OsStr::new)
            .collect();
        let out: OwnedFd = open_beneath(
            self.root.as_fd(),
            &comps,
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        )?;
        let mut file = File::from(out);
        let fd = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| super::errno_of(&e))?;
        format::keeping_caps(fd.as_fd(), || self.layer.copy_to(ino, &mut file))?;
        // The write made the file new: give it back the layer's time.
        let t = rfs::Timespec {
            tv_sec: self.layer.index().node(ino).mtime,
            tv_nsec: 0,
        };
        rfs::futimens(
            &file,
            &rfs::Timestamps {
                last_access: t,
                last_modification: t,
            },
        )?;
        rfs::fdatasync(&file)?;
        for mark in MARKS {
            match rfs::fremovexattr(&file, mark) {
                Ok(()) | Err(Errno::NODATA) | Err(Errno::NOTSUP) => {}
                // Root of a user namespace may not touch trusted xattrs (reading one gives
                // NODATA, removing one PERM): such a daemon's layers use the user mark.
                Err(Errno::PERM) if mark == XattrNamespace::Trusted.lazy() => {}
                Err(e) => return Err(e),
            }
        }
        tracing::debug!("lazy file {path:?} filled");
        Ok(())
    }
}
