//! Lazy lower layers: a layer directory made from an eStargz TOC (names, attributes,
//! whiteouts, opaque directories and hard links, every regular file the right size but
//! without its bytes) whose files are filled from the blob on first open.
//!
//! A file still to be filled carries the private xattr `XattrNamespace::lazy` (naming its
//! TOC path); the
//! daemon fills it from verified chunks (through the [`IndexedLayer`] and its chunk cache),
//! syncs it, and only then drops the mark, so a file without the mark is whole, across
//! crashes and restarts, and a file with it is never served unless this daemon wrote it.
//! Syncs come in batches (one `syncfs` for up to [`SYNC_FILES`] files, at most
//! [`SYNC_EVERY`] after the first): a file is served as soon as it is written, and a daemon
//! that dies before the sync leaves it marked, to be fetched again. A directory layer has no
//! lazy part: the only cost on its path is the check that it has none.
//!
//! The layer reaches the daemon as `lazy=SPEC` (see [`LazySpec`]); `union` reads the blob
//! through a [`BlobSource`] only, which the daemon makes (see [`OpenSource`]): a local file,
//! or the registry client's range requests. `union` knows nothing of HTTP.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::indexed::IndexedLayer;
use crate::estargz::cache::ChunkCache;
use crate::estargz::{reader, BlobSource, Chunk, FileSource, LazySpec, NodeKind, Sha256Digest};
use crate::overlay::beneath::open_beneath;
use crate::overlay::format::{self, XattrNamespace};

/// The mark of a file whose bytes are not here yet, in both namespaces (root's, rootless).
const MARKS: [&str; 2] = [XattrNamespace::Trusted.lazy(), XattrNamespace::User.lazy()];

/// How the daemon turns a spec into the source of its blob's bytes.
pub type OpenSource<'a> = &'a (dyn Fn(&LazySpec) -> Result<Box<dyn BlobSource>, String> + Sync);

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

/// Largest span of the blob one request of the background fetch streams.
const SEGMENT: u64 = 8 << 20;
/// Largest run of bytes of no use (entries without data) a segment reads rather than end.
const GAP: u64 = 64 << 10;
/// The background fetch syncs the files it wrote (and drops their marks) once this many
/// wait, or this long after its last sync.
const SYNC_FILES: usize = 1024;
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Requests the background fetch of a layer keeps under way at once (each its own segment):
/// files filled by openers cut the stream into shorter requests, whose round trips then
/// overlap.
const STREAMS: usize = 2;
/// Attempts at one place of the blob before the background fetch goes past it.
const TRIES: u32 = 6;
/// While openers fetch (and this long after the last one, or after the mount), the background
/// fetch keeps one request of at most [`YIELD_SEGMENT`] under way: on a slow link the files a
/// program waits for must not queue behind megabytes it has not asked for.
const QUIET: std::time::Duration = std::time::Duration::from_millis(1000);
const YIELD_SEGMENT: u64 = 256 << 10;

/// Who fills what, now.
#[derive(Debug, Default)]
struct Fills {
    /// TOC inodes being filled (by an opener or the background fetch): an opener of one
    /// waits for it.
    busy: HashSet<u32>,
    /// TOC inodes whose bytes are all written (their mark goes once they are synced).
    written: HashSet<u32>,
}

/// The lazy part of a lower layer.
#[derive(Debug)]
pub struct LazyLayer {
    layer: IndexedLayer,
    /// `O_PATH` fd of the layer directory as the spec names it, for filling files: the
    /// union reaches its lowers through read-only detached mounts.
    root: OwnedFd,
    fills: Mutex<Fills>,
    /// Signalled when a file's bytes are written or its filler gives up.
    changed: Condvar,
    /// The regular files with data in blob order, and each one's place in it.
    order: std::sync::OnceLock<Order>,
    /// The place in [`LazyLayer::order`] of the last file an opener fetched, the readahead
    /// it fetched with it, and its directory.
    sequence: Mutex<(usize, u64, String)>,
    /// Openers fetching now, and when the last one finished (or the layer was opened): the
    /// background fetch yields to them (see [`QUIET`]).
    openers: Mutex<(usize, std::time::Instant)>,
    /// Written files (by openers or the background fetch) whose marks wait for the next
    /// batched sync (see [`LazyLayer::sync_deferred`]).
    deferred: Mutex<Deferred>,
    /// Signalled when a file is deferred.
    deferred_added: Condvar,
}

/// The TOC paths of files written but not yet synced, and when the first came.
#[derive(Debug, Default)]
struct Deferred {
    paths: Vec<String>,
    since: Option<std::time::Instant>,
}

/// An opener's fetch under way (see [`LazyLayer::openers`]).
struct OpenerFetch<'a>(&'a LazyLayer);

impl Drop for OpenerFetch<'_> {
    fn drop(&mut self) {
        let mut o = self.0.openers.lock();
        o.0 -= 1;
        o.1 = std::time::Instant::now();
    }
}

/// The regular files with data (TOC inode, path) in blob order, and each inode's place.
type Order = (Vec<(u32, String)>, HashMap<u32, usize>);

/// Largest readahead of an opener reading the files in blob order.
const READAHEAD: u64 = 4 << 20;
/// The first readahead once an opener is seen reading the files in blob order.
const READAHEAD_START: u64 = 256 << 10;

/// A file claimed for filling (busy): released, and its waiters woken, on drop.
struct Claim<'a> {
    lazy: &'a LazyLayer,
    ino: u32,
    /// Its TOC path.
    path: String,
    file: File,
    /// Its file capabilities, put back once written (a write drops them).
    caps: Option<Vec<u8>>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.lazy.fills.lock().busy.remove(&self.ino);
        self.lazy.changed.notify_all();
    }
}

/// The directory part of TOC path `path` (`""` at the root).
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Why the background fetch stopped at a place of the blob.
type Failure = String;

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
            fills: Mutex::new(Fills::default()),
            changed: Condvar::new(),
            order: std::sync::OnceLock::new(),
            sequence: Mutex::new((usize::MAX, 0, String::new())),
            openers: Mutex::new((0, std::time::Instant::now())),
            deferred: Mutex::new(Deferred::default()),
            deferred_added: Condvar::new(),
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

    /// Open file `path` (a TOC path) of the layer directory for writing, beneath it.
    fn open_file(&self, path: &str) -> Result<File, Errno> {
        let comps: Vec<&OsStr> = crate::estargz::index::components(path)
            .map_err(|_| Errno::IO)?
            .into_iter()
            .map(OsStr::new)
            .collect();
        let fd: OwnedFd = open_beneath(
            self.root.as_fd(),
            &comps,
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        )?;
        Ok(File::from(fd))
    }

    /// Claim `ino` (the file at TOC path `path`, open for writing as `file`) under `fills`.
    fn claim_locked(&self, fills: &mut Fills, ino: u32, path: &str, file: File) -> Claim<'_> {
        let mut buf = vec![0u8; 256];
        let caps = rfs::fgetxattr(&file, format::FILE_CAPS, &mut buf[..])
            .ok()
            .map(|n| buf[..n].to_vec());
        fills.busy.insert(ino);
        Claim {
            lazy: self,
            ino,
            path: path.to_string(),
            file,
            caps,
        }
    }

    /// Write verified `bytes` of chunk `c` into claimed file `claim`.
    fn write_chunk(claim: &Claim<'_>, c: &Chunk, bytes: &[u8]) -> Result<(), Errno> {
        claim
            .file
            .write_all_at(bytes, c.file_offset)
            .map_err(|e| super::errno_of(&e))
    }

    /// Claimed file `claim` has all its bytes: give it back its capabilities and the layer's
    /// time (the writes made it new), and tell its waiters it is here.
    fn written(&self, claim: &Claim<'_>) -> Result<(), Errno> {
        if let Some(caps) = &claim.caps {
            rfs::fsetxattr(
                &claim.file,
                format::FILE_CAPS,
                caps,
                rfs::XattrFlags::empty(),
            )?;
        }
        let t = rfs::Timespec {
            tv_sec: self.layer.index().node(claim.ino).mtime,
            tv_nsec: 0,
        };
        rfs::futimens(
            &claim.file,
            &rfs::Timestamps {
                last_access: t,
                last_modification: t,
            },
        )?;
        self.fills.lock().written.insert(claim.ino);
        self.changed.notify_all();
        Ok(())
    }

    /// Drop the mark of `file` (TOC path `path`), whose bytes are written and synced: a file
    /// without the mark is whole, across crashes and restarts.
    fn unmark_file(file: &File, path: &str) -> Result<(), Errno> {
        for mark in MARKS {
            match rfs::fremovexattr(file, mark) {
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

    /// Fill the file open as `fd` (named `name`, for messages) if it is marked: wait if the
    /// background fetch or another opener is filling it, else fetch its chunks (see
    /// [`IndexedLayer::file_chunks`]) on this thread.
    fn fill(&self, fd: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        if rfs::fstat(fd).map(|st| rfs::FileType::from_raw_mode(st.st_mode))?
            != rfs::FileType::RegularFile
        {
            return Ok(());
        }
        let Some(path) = Self::marked(fd)? else {
            return Ok(());
        };
        let ino = self.layer.index().lookup_path(&path).ok_or_else(|| {
            tracing::warn!("lazy file {name:?} names {path:?}, which its TOC lacks");
            Errno::IO
        })?;
        let mut claims = {
            let mut fills = self.fills.lock();
            loop {
                if fills.written.contains(&ino) {
                    return Ok(()); // written by another (its mark goes once synced)
                }
                if !fills.busy.contains(&ino) {
                    break;
                }
                self.changed.wait(&mut fills);
            }
            if Self::marked(fd)?.is_none() {
                return Ok(()); // filled while we waited
            }
            let file = self.open_file(&path)?;
            let mut claims = vec![self.claim_locked(&mut fills, ino, &path, file)];
            // Reading in blob order: the next files too, in the same request.
            let (files, place) = self.order();
            let at = place.get(&ino).copied().unwrap_or(usize::MAX);
            let window = if at == usize::MAX {
                0
            } else {
                self.readahead(at, &path)
            };
            let (start, mut end) = self.span(ino);
            let mut last = at;
            let cached = |i: u32| {
                let ch = &self.layer.index().node(i).chunks;
                ch.iter().any(|c| self.layer.cache().contains(&c.digest))
            };
            if window > 0 && end - start <= window && !cached(ino) {
                for (j, (next, p)) in files.iter().enumerate().skip(at + 1) {
                    let (s2, e2) = self.span(*next);
                    if s2 > end + GAP || e2 - start > window {
                        break;
                    }
                    if fills.busy.contains(next) || fills.written.contains(next) || cached(*next) {
                        break;
                    }
                    match self.open_file(p) {
                        Ok(f) if matches!(Self::marked(f.as_fd()), Ok(Some(_))) => {
                            claims.push(self.claim_locked(&mut fills, *next, p, f));
                            (end, last) = (e2, j);
                        }
                        _ => break,
                    }
                }
            }
            if at != usize::MAX {
                *self.sequence.lock() = (last, window, parent(&path).to_string());
            }
            claims
        };
        let _fetching = self.opener_fetch();
        if claims.len() > 1 {
            let mut done = vec![false; claims.len()];
            let r = self.stream_segment(&claims, &mut done, false);
            self.defer_done(&claims, &done);
            if let Err(e) = r {
                tracing::warn!("lazy file {path:?}: {e}");
            }
            return if done[0] { Ok(()) } else { Err(Errno::IO) };
        }
        let claim = claims.pop().ok_or(Errno::IO)?;
        let chunks = self.layer.file_chunks(ino)?;
        for (c, bytes) in self.layer.index().node(ino).chunks.iter().zip(&chunks) {
            Self::write_chunk(&claim, c, bytes)?;
        }
        self.written(&claim)?;
        self.defer(std::iter::once(claim.path.clone()));
        Ok(())
    }

    /// Queue the marks of written files (by an opener or the background fetch) for the next
    /// batched sync: they are served at once (a written file is, marked or not), and one
    /// `syncfs` covers many files instead of one `fdatasync` each on the filler's path.
    fn defer(&self, paths: impl Iterator<Item = String>) {
        let mut d = self.deferred.lock();
        let before = d.paths.len();
        d.paths.extend(paths);
        if d.paths.len() > before {
            d.since.get_or_insert_with(std::time::Instant::now);
            self.deferred_added.notify_all();
        }
    }

    /// [`LazyLayer::defer`] the claims of `claims` whose `done` is set.
    fn defer_done(&self, claims: &[Claim<'_>], done: &[bool]) {
        self.defer(
            claims
                .iter()
                .zip(done)
                .filter(|(_, d)| **d)
                .map(|(c, _)| c.path.clone()),
        );
    }

    /// Sync the written files and drop their marks, in batches of [`SYNC_FILES`] or every
    /// [`SYNC_EVERY`]: what the `lazy-sync` thread runs, for ever.
    pub fn sync_deferred(&self) -> ! {
        loop {
            let mut d = self.deferred.lock();
            loop {
                match d.since {
                    None => self.deferred_added.wait(&mut d),
                    Some(t) if d.paths.len() < SYNC_FILES && t.elapsed() < SYNC_EVERY => {
                        let left = SYNC_EVERY.saturating_sub(t.elapsed());
                        self.deferred_added.wait_for(&mut d, left);
                    }
                    Some(_) => break,
                }
            }
            drop(d);
            self.flush_deferred();
        }
    }

    /// Sync the written files that still wait, and drop their marks, now (also at unmount).
    pub fn flush_deferred(&self) {
        let batch = {
            let mut d = self.deferred.lock();
            d.since = None;
            std::mem::take(&mut d.paths)
        };
        if let Err(e) = self.sync_and_unmark(&batch) {
            tracing::warn!("lazy layer: {e} (those files are fetched again on next open)");
        }
    }

    /// Sync the filesystem of the written files at TOC paths `paths` (one sync for them
    /// all), then drop their marks. A mark that cannot be dropped stays (the others still
    /// go); the first such failure is returned.
    fn sync_and_unmark(&self, paths: &[String]) -> Result<(), Failure> {
        let Some(first) = paths.first() else {
            return Ok(());
        };
        let file = self
            .open_file(first)
            .map_err(|e| format!("open {first:?} to sync the lazy layer: {e}"))?;
        rfs::syncfs(&file).map_err(|e| format!("sync the lazy layer: {e}"))?;
        let mut failed = None;
        for path in paths {
            let dropped = self
                .open_file(path)
                .and_then(|file| Self::unmark_file(&file, path));
            if let Err(e) = dropped {
                failed.get_or_insert_with(|| format!("drop the mark of {path:?}: {e}"));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The regular files of the layer that have data (one path per inode), in blob order,
    /// and each one's place in that order.
    fn order(&self) -> &Order {
        self.order.get_or_init(|| {
            let ix = self.layer.index();
            let mut seen = HashSet::new();
            let mut files: Vec<(u32, String)> = ix
                .walk_all()
                .into_iter()
                .filter(|(_, ino)| {
                    let n = ix.node(*ino);
                    n.kind == NodeKind::Reg && !n.chunks.is_empty() && seen.insert(*ino)
                })
                .filter_map(|(p, ino)| Some((ino, p.into_string().ok()?)))
                .collect();
            files.sort_by_key(|(ino, _)| ix.node(*ino).chunks[0].member);
            let place = files
                .iter()
                .enumerate()
                .map(|(i, (ino, _))| (*ino, i))
                .collect();
            (files, place)
        })
    }

    /// The span of the blob holding the chunks of file `ino` (which has some).
    fn span(&self, ino: u32) -> (u64, u64) {
        let c = &self.layer.index().node(ino).chunks;
        (c[0].member, c[c.len() - 1].member_end)
    }

    /// How far past the file at place `at` (TOC path `path`) an opener fetches: nothing for
    /// a file read out of order; for one that follows the last file an opener fetched, or is
    /// in the same directory (a program reading a directory's files, in whatever order, or
    /// all of them), a window that doubles up to [`READAHEAD`].
    fn readahead(&self, at: usize, path: &str) -> u64 {
        let s = self.sequence.lock();
        let (last, window, dir) = (s.0, s.1, &s.2);
        if (at > last && at <= last.saturating_add(16)) || parent(path) == dir {
            (window * 2).clamp(READAHEAD_START, READAHEAD)
        } else {
            0
        }
    }

    /// Count an opener's fetch until the guard drops.
    fn opener_fetch(&self) -> OpenerFetch<'_> {
        self.openers.lock().0 += 1;
        OpenerFetch(self)
    }

    /// Whether openers fetch now or did within [`QUIET`].
    fn openers_active(&self) -> bool {
        let o = self.openers.lock();
        o.0 > 0 || o.1.elapsed() < QUIET
    }

    /// Fill every file still marked, streaming the blob in order: one request per
    /// [`SEGMENT`] of it, [`STREAMS`] at once, each gzip member decoded and verified as it
    /// arrives, each file given to its waiters as soon as it is written (its mark dropped
    /// after the next batched sync); the files an opener fills (or filled) end a segment, so
    /// no byte is fetched twice. What the daemon does in the background, so that a layer left
    /// alone ends up whole. A failed request is tried again from where it stopped after a
    /// pause (the registry may come back), [`TRIES`] times before going past it. Returns how
    /// many files are still not filled (each logged; they are on their next open).
    pub fn fill_all(&self) -> usize {
        let files = &self.order().0;
        let cursor = &Mutex::new(0usize);
        std::thread::scope(|s| {
            for n in 0..STREAMS {
                s.spawn(move || self.stream_worker(files, cursor, n));
            }
        });
        let written = std::mem::take(&mut self.fills.lock().written);
        let left = files
            .iter()
            .filter(|(ino, path)| {
                !written.contains(ino)
                    && self
                        .open_file(path)
                        .and_then(|f| Self::marked(f.as_fd()))
                        .map_or(true, |m| m.is_some())
            })
            .count();
        self.fills.lock().written.extend(written);
        left
    }

    /// One stream of the background fetch: claims the next segment at `cursor`, fetches it,
    /// and so on to the end of `files`.
    fn stream_worker(&self, files: &[(u32, String)], cursor: &Mutex<usize>, n: usize) {
        let mut tries = 0;
        loop {
            let yielding = self.openers_active();
            if yielding && n > 0 {
                // One small request at a time while openers fetch.
                if *cursor.lock() >= files.len() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            let limit = if yielding { YIELD_SEGMENT } else { SEGMENT };
            let (seg, fetch, from) = {
                let mut i = cursor.lock();
                if *i >= files.len() {
                    break;
                }
                let from = *i;
                let (seg, fetch) = self.claim_segment(files, &mut i, limit);
                (seg, fetch, from)
            };
            if seg.is_empty() {
                continue;
            }
            let mut done = vec![false; seg.len()];
            let r = if fetch {
                self.stream_segment(&seg, &mut done, true)
            } else {
                self.fill_from_cache(&seg, &mut done)
            };
            self.defer_done(&seg, &done);
            match r {
                Ok(()) => tries = 0,
                Err(e) => {
                    tries += 1;
                    if tries >= TRIES {
                        tracing::warn!("lazy layer: background fetch: {e}; going on past it");
                        tries = 0;
                    } else {
                        tracing::warn!("lazy layer: background fetch: {e}; trying again");
                        {
                            let mut i = cursor.lock();
                            *i = (*i).min(from);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(125 << tries));
                    }
                }
            }
        }
    }

    /// Claim the next files of `files` from `*i` (moved past them) that one request can
    /// fetch: marked, nobody filling them, following each other in the blob within
    /// `limit` bytes. A file whose chunks are all cached is a segment of its own, filled
    /// from the cache (`false`).
    fn claim_segment<'a>(
        &'a self,
        files: &[(u32, String)],
        i: &mut usize,
        limit: u64,
    ) -> (Vec<Claim<'a>>, bool) {
        let ix = self.layer.index();
        let mut seg: Vec<Claim<'a>> = Vec::new();
        let mut fills = self.fills.lock();
        let span = |ino: u32| self.span(ino);
        while *i < files.len() {
            let (ino, path) = &files[*i];
            let (start, end) = span(*ino);
            if let (Some(first), Some(last)) = (seg.first(), seg.last()) {
                if start > span(last.ino).1 + GAP || end - span(first.ino).0 > limit {
                    break;
                }
            }
            let file = if fills.written.contains(ino) || fills.busy.contains(ino) {
                None
            } else {
                match self.open_file(path) {
                    Ok(f) if matches!(Self::marked(f.as_fd()), Ok(Some(_))) => Some(f),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!("lazy layer: background fetch of {path:?}: {e}");
                        None
                    }
                }
            };
            let Some(file) = file else {
                // Filled, or being filled: its bytes are not fetched again.
                *i += 1;
                if seg.is_empty() {
                    continue;
                }
                break;
            };
            let cached = ix
                .node(*ino)
                .chunks
                .iter()
                .all(|c| self.layer.cache().contains(&c.digest));
            if cached && !seg.is_empty() {
                break;
            }
            seg.push(self.claim_locked(&mut fills, *ino, path, file));
            *i += 1;
            if cached {
                return (seg, false);
            }
        }
        (seg, true)
    }

    /// Fetch the files `seg` claims in one streamed request; `done[k]` says which have all
    /// their bytes written (those before a failure).
    /// With `cache_now` false, the chunks are cached only once all are here (a failed
    /// request caches nothing).
    fn stream_segment(
        &self,
        seg: &[Claim<'_>],
        done: &mut [bool],
        cache_now: bool,
    ) -> Result<(), Failure> {
        let ix = self.layer.index();
        let chunks: Vec<(usize, &Chunk)> = seg
            .iter()
            .enumerate()
            .flat_map(|(k, c)| ix.node(c.ino).chunks.iter().map(move |ch| (k, ch)))
            .collect();
        let (Some((_, first)), Some((_, last))) = (chunks.first(), chunks.last()) else {
            return Ok(());
        };
        let source = self.layer.source();
        let what = |e: &dyn std::fmt::Display| format!("{}: {e}", source.describe());
        let mut stream = source
            .open_range(first.member, last.member_end - first.member)
            .map_err(|e| what(&e))?;
        let mut n = 0;
        let mut later = Vec::new();
        reader::stream_chunks(
            &mut stream,
            first.member,
            chunks.iter().map(|(_, c)| *c),
            |c, bytes| {
                let k = chunks[n].0;
                n += 1;
                let claim = &seg[k];
                let fail = |e: Errno| crate::estargz::Error::Io {
                    what: format!("fill {}", claim.path),
                    source: std::io::Error::from_raw_os_error(e.raw_os_error()),
                };
                Self::write_chunk(claim, c, &bytes).map_err(fail)?;
                if cache_now {
                    self.layer.keep(c, &bytes);
                } else {
                    later.push((c, bytes));
                }
                if chunks.get(n).is_none_or(|(next, _)| *next != k) {
                    self.written(claim).map_err(fail)?;
                    done[k] = true;
                }
                Ok::<(), crate::estargz::Error>(())
            },
        )
        .map_err(|e| what(&e))?;
        for (c, bytes) in later {
            self.layer.keep(c, &bytes);
        }
        Ok(())
    }

    /// Fill the files `seg` claims from the chunk cache.
    fn fill_from_cache(&self, seg: &[Claim<'_>], done: &mut [bool]) -> Result<(), Failure> {
        for (k, claim) in seg.iter().enumerate() {
            let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", claim.path);
            for c in &self.layer.index().node(claim.ino).chunks {
                let bytes = self
                    .layer
                    .cache()
                    .get(&c.digest)
                    .map_err(|e| fail(&e))?
                    .ok_or_else(|| fail(&"a cached chunk went away"))?;
                Self::write_chunk(claim, c, &bytes).map_err(|e| fail(&e))?;
            }
            self.written(claim).map_err(|e| fail(&e))?;
            done[k] = true;
        }
        Ok(())
    }
}
