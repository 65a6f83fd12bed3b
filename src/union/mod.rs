//! The union filesystem: an ordered stack of read-only lower layers plus one writable upper
//! layer, merged into one tree with kernel overlayfs's semantics and on-disk format.
//!
//! Every operation here answers with `Result<_, Errno>` and knows nothing of FUSE; [`fs`] is
//! the one adapter that turns kernel requests into these calls.

pub mod attr;
pub mod copyup;
pub mod detach;
pub mod dir;
pub mod dir_entries;
pub mod discard;
pub mod fs;
pub mod handle;
pub mod hardlink;
pub mod idmap;
pub mod idmapped;
pub mod indexed;
pub mod inode;
pub mod layer;
pub mod lazy;
pub mod namespace;
pub mod options;
pub mod overlap;
pub mod prefetch;
pub mod setup;
pub mod stats;
mod whiteout;
pub mod xattr;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, OFlags};
use rustix::io::Errno;

use crate::overlay::format::{self, XattrNamespace};
use dir::{LayerIndex, Listing, ListingBuilder};
use idmap::IdMapper;
use inode::{Location, Node, NodeTable, ROOT_ID};
use layer::Layer;
use options::MountOptions;

/// Readable fds of one directory in some of its layers.
type LayerFds = Vec<(LayerIndex, OwnedFd)>;

/// Longest name a directory entry may have (the upper filesystem's limit).
pub const NAME_MAX: usize = 255;

/// Who is asking: the credentials of the process behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Effective user id, as the client sees ids.
    pub uid: u32,
    /// Effective group id, as the client sees ids.
    pub gid: u32,
    /// The process's umask for a create (applied by us unless a default ACL takes over, as
    /// the VFS does; the kernel leaves it to us with `FUSE_DONT_MASK`).
    pub umask: u32,
}

/// A mounted union: the layers, the node table and the open files.
pub struct Union {
    /// All layers; index 0 is the upper layer when `has_upper`.
    pub layers: Vec<Layer>,
    /// Whether layer 0 is writable.
    pub has_upper: bool,
    /// `O_PATH` fd of the work directory's `work/` scratch subdirectory (with an upper only).
    pub work: Option<OwnedFd>,
    /// Namespace of the private xattrs written to the upper layer.
    pub xattr_ns: XattrNamespace,
    /// The node table.
    pub nodes: NodeTable,
    /// Open files and directories.
    pub handles: handle::HandleTable,
    /// Translation between client-visible and stored ids.
    pub ids: IdMapper,
    /// The mount's options.
    pub options: MountOptions,
    /// Counter for unique temporary names in the work directory.
    temp_counter: AtomicU64,
    /// Owner (uid, gid) of what this process makes in the work directory.
    work_owner: (u32, u32),
    /// This process's effective (uid, gid): the owner of what it makes.
    creator: (u32, u32),
    /// Set when a shared whiteout inode cannot be made or linked here: each whiteout is then
    /// made on its own.
    no_shared_whiteout: std::sync::atomic::AtomicBool,
    /// This process's id, for temporary names.
    temp_pid: std::sync::OnceLock<u32>,
    /// Removes, in the background, directories moved out of sight into the work directory.
    pub discards: discard::Discarder,
    /// Read-ahead of the subdirectories of listed directories (cold tree walks).
    /// Directory read-ahead, started on first use: its threads must not exist before the
    /// daemon forks (the child would have none, and a fork must be single-threaded).
    prefetch: std::sync::OnceLock<Option<prefetch::Prefetcher>>,
    /// Multiply-linked files of each lower layer, indexed on the first copy-up of one.
    link_indexes:
        parking_lot::Mutex<std::collections::HashMap<LayerIndex, Arc<hardlink::LinkIndex>>>,
    /// The upper and work directories where they lie inside a lower layer: a lookup that
    /// reaches one answers ELOOP, as kernel overlayfs's traps do. Usually empty.
    traps: Vec<overlap::DirId>,
}

impl std::fmt::Debug for Union {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Union")
            .field("layers", &self.layers.len())
            .field("has_upper", &self.has_upper)
            .finish()
    }
}

impl Union {
    /// The layer at `index`.
    pub fn layer(&self, index: LayerIndex) -> &Layer {
        &self.layers[index as usize]
    }

    /// Whether `index` is the writable layer.
    pub fn is_upper(&self, index: LayerIndex) -> bool {
        self.has_upper && index == 0
    }

    /// Fail with EROFS unless the mount is writable.
    pub fn check_writable(&self) -> Result<(), Errno> {
        if self.has_upper {
            Ok(())
        } else {
            Err(Errno::ROFS)
        }
    }

    /// A unique name for a temporary object in the work directory.
    pub fn temp_name(&self) -> OsString {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        // The pid, read once (a syscall per copy-up otherwise) and only once serving, after
        // any daemonizing fork.
        let pid = self.temp_pid.get_or_init(std::process::id);
        OsString::from(format!("#strata-{pid}-{n}"))
    }

    /// Make sure the bytes of file `name` in directory `dir` of `layer` are here: a no-op but
    /// for lazy layers, whose files are filled on first use.
    pub fn ensure_data_at(
        &self,
        layer: LayerIndex,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), Errno> {
        match &self.layer(layer).lazy {
            None => Ok(()),
            Some(lazy) => lazy.ensure_at(dir, name),
        }
    }

    /// Start the lazy layers' threads: for each, one that syncs the files filled (see
    /// [`lazy::LazyLayer::sync_deferred`]); and unless `lazyfetch=off`, one thread filling
    /// their files in the background, streaming one layer at a time, the lowest first (the
    /// base image's programs and libraries are what a container reads first), so that the
    /// container's own reads share the link with one stream only. Call once serving: threads
    /// must not exist before the daemon forks.
    pub fn start_lazy_threads(&self) {
        let lazy: Vec<_> = self
            .layers
            .iter()
            .rev()
            .filter_map(|l| Some((l.lazy.clone()?, l.path.clone())))
            .collect();
        for (layer, _) in &lazy {
            let layer = layer.clone();
            let spawned = std::thread::Builder::new()
                .name("lazy-sync".into())
                .spawn(move || layer.sync_deferred());
            if let Err(e) = spawned {
                // Unsynced files keep their marks: they are fetched again by the next daemon.
                tracing::warn!("lazy layers: no thread to sync filled files: {e}");
            }
        }
        if !self.options.lazy_fetch || lazy.is_empty() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("lazy-fetch".into())
            .spawn(move || {
                for (lazy, path) in lazy {
                    let left = lazy.fill_all();
                    if left == 0 {
                        tracing::info!("lazy layer {}: complete", path.display());
                    } else {
                        tracing::warn!(
                            "lazy layer {}: {left} files not fetched (they are on first open)",
                            path.display()
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("lazy layers: no background fetch: {e}");
        }
    }

    /// Sync the lazy layers' filled files that still wait for it, and drop their marks (at
    /// unmount).
    pub fn flush_lazy(&self) {
        for layer in &self.layers {
            if let Some(lazy) = &layer.lazy {
                lazy.flush_deferred();
            }
        }
    }

    /// The work directory fd (only for writable mounts).
    pub fn work_fd(&self) -> Result<&OwnedFd, Errno> {
        self.work.as_ref().ok_or(Errno::ROFS)
    }

    /// An fd of directory `node` in `layer` (cached on the node): `O_PATH`, or readable when
    /// it was opened to read the directory. Use it with `*at()` calls and `fstat` only.
    pub fn dir_fd(&self, node: &Node, layer: LayerIndex) -> Result<Arc<OwnedFd>, Errno> {
        if let Some(fd) = node.cached_fd(layer) {
            return Ok(fd);
        }
        let fd = Arc::new(self.open_dir_in(node, layer, OFlags::PATH)?);
        node.cache_fd(layer, fd.clone());
        Ok(fd)
    }

    /// Open directory `node` in `layer` with `flags`: one step from its parent's cached fd in
    /// that layer when there is one, else a walk from the layer's root.
    fn open_dir_in(&self, node: &Node, layer: LayerIndex, flags: OFlags) -> Result<OwnedFd, Errno> {
        let loc = node.location();
        if let Some(pfd) = loc.parent.as_ref().and_then(|p| p.cached_fd(layer)) {
            // One valid name (never `..`), no symlink followed: this cannot leave the layer.
            return rfs::openat(
                pfd.as_fd(),
                &loc.name,
                flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rfs::Mode::empty(),
            );
        }
        let comps = node.path_components();
        let refs: Vec<&OsStr> = comps.iter().map(|c| c.as_os_str()).collect();
        self.layer(layer).open_dir(&refs, flags)
    }

    /// Run `f` on the name of non-directory `node` in its parent's copy in `layer` (or in its
    /// top layer), with the parent's listing held still, so a concurrent unlink or rename
    /// cannot swap the name for a whiteout or another file under `f`.
    pub fn with_name<T>(
        &self,
        node: &Node,
        layer: Option<LayerIndex>,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let parent = node.location().parent.ok_or(Errno::NOENT)?;
        let _still = parent.state.read();
        let loc = node.location();
        // Gone or moved since the kernel resolved the name: as a concurrent unlink does.
        if node.is_unlinked() || loc.parent.as_ref().is_none_or(|p| p.id != parent.id) {
            return Err(Errno::NOENT);
        }
        let layer = layer.unwrap_or_else(|| node.state.read().top());
        let pfd = self.dir_fd(&parent, layer)?;
        f(pfd.as_fd(), &loc.name)
    }

    /// With `STRATAFS_CHECK` set, compare the listing of `dir` with its upper copy after a
    /// change and log any disagreement (a debugging aid; costs a directory read).
    pub fn check_dir(&self, what: &str, dir: &Node) {
        static CHECKING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let checking = *CHECKING.get_or_init(|| std::env::var_os("STRATAFS_CHECK").is_some());
        if !checking || !self.has_upper {
            return;
        }
        let state = dir.state.read();
        if state.top() != 0 {
            return;
        }
        let Some(listing) = state.listing.clone() else {
            return;
        };
        if let Ok(fd) = self.dir_fd(dir, 0) {
            let bad = dir::upper_mismatches(&listing, fd.as_fd());
            if !bad.is_empty() {
                tracing::error!("after {what} in node {}: {bad:?}", dir.id);
            }
        }
    }

    /// The node `id`.
    pub fn node(&self, id: u64) -> Result<Arc<Node>, Errno> {
        self.nodes.get(id)
    }

    /// The directory node `id`, or ENOTDIR.
    pub fn dir_node(&self, id: u64) -> Result<Arc<Node>, Errno> {
        let node = self.nodes.get(id)?;
        if node.is_dir {
            Ok(node)
        } else {
            Err(Errno::NOTDIR)
        }
    }

    /// The merged listing of directory `node`, read from its layers on first use.
    pub fn listing(&self, node: &Node) -> Result<Arc<Listing>, Errno> {
        if let Some(l) = node.state.read().listing.clone() {
            return Ok(l);
        }
        let mut state = node.state.write();
        if let Some(l) = state.listing.clone() {
            return Ok(l);
        }
        let listing = Arc::new(self.build_listing(node, &state.layers)?);
        state.listing = Some(listing.clone());
        Ok(listing)
    }

    /// A client is reading directory `node` (whose listing is read): on the first time, have
    /// the read-ahead threads fetch the inodes and entries of its subdirectories, the next
    /// stops of a tree walk.
    pub fn prefetch_subdirs(&self, node: &Node, listing: &Listing) {
        let Some(prefetch) = self.prefetch.get_or_init(prefetch::Prefetcher::start) else {
            return;
        };
        if node
            .prefetched
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let mut fds: Vec<(LayerIndex, Option<Arc<OwnedFd>>)> = Vec::new();
        let mut jobs = Vec::new();
        for (name, entry) in listing.entries.iter() {
            if entry.kind != FileType::Directory {
                continue;
            }
            for &layer in &entry.layers {
                let fd = match fds.iter().find(|(l, _)| *l == layer) {
                    Some((_, fd)) => fd.clone(),
                    None => {
                        let fd = node.cached_fd(layer);
                        fds.push((layer, fd.clone()));
                        fd
                    }
                };
                if let Some(fd) = fd {
                    jobs.push(prefetch::Job::new(&fd, name));
                }
            }
        }
        prefetch.push(jobs);
    }

    /// Read and merge the layers of directory `node` (`layers` are already cut at the first
    /// opaque one).
    fn build_listing(&self, node: &Node, layers: &[LayerIndex]) -> Result<Listing, Errno> {
        let mut builder = ListingBuilder::new(self.has_upper);
        for &layer in layers {
            let raw = match node.cached_fd(layer) {
                // A readable cached fd is read here only, under the node's write lock: rewind
                // and read it. An `O_PATH` one refuses the seek: read through a fresh open.
                Some(fd) => match rfs::seek(&*fd, rfs::SeekFrom::Start(0)) {
                    Ok(_) => dir::read_layer_dir(fd.as_fd())?,
                    Err(_) => dir::read_dir_at(fd.as_fd())?,
                },
                None => {
                    // Open it readable once, read it, and keep it as the node's fd.
                    let fd = self.open_dir_in(node, layer, OFlags::RDONLY)?;
                    let raw = dir::read_layer_dir(fd.as_fd())?;
                    node.cache_fd(layer, Arc::new(fd));
                    raw
                }
            };
            if !builder.add_layer(layer, raw) {
                break;
            }
        }
        Ok(builder.finish())
    }

    /// The layers a directory named `name` in `parent` really merges: the listing's candidates,
    /// cut after the first opaque one. Also returns the fds opened to find out, for the node.
    fn effective_dir_layers(
        &self,
        parent: &Node,
        name: &OsStr,
        candidates: &[LayerIndex],
    ) -> Result<(Vec<LayerIndex>, LayerFds), Errno> {
        let mut out = Vec::with_capacity(candidates.len());
        let mut fds = Vec::new();
        for (i, &layer) in candidates.iter().enumerate() {
            out.push(layer);
            if i + 1 == candidates.len() {
                break;
            }
            let pfd = self.dir_fd(parent, layer)?;
            let fd = rfs::openat(
                pfd.as_fd(),
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rfs::Mode::empty(),
            )?;
            let opaque = format::has_opaque_xattr(fd.as_fd())
                || rfs::statat(
                    fd.as_fd(),
                    OsStr::new(".wh..wh..opq"),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .is_ok();
            fds.push((layer, fd));
            if opaque {
                break;
            }
        }
        Ok((out, fds))
    }

    /// Look up `name` in directory `parent_id`, counting a kernel reference on success.
    pub fn lookup(&self, parent_id: u64, name: &OsStr) -> Result<(Arc<Node>, rfs::Stat), Errno> {
        if name.len() > NAME_MAX {
            return Err(Errno::NAMETOOLONG);
        }
        let parent = self.dir_node(parent_id)?;
        self.listing(&parent)?;
        // Hold the directory still while the entry becomes a node: a concurrent unlink must
        // not turn the name into a whiteout between reading the listing and the stat.
        let pstate = parent.state.read();
        let listing = pstate.listing.clone().ok_or(Errno::NOENT)?;
        let entry = listing.entries.get(name).ok_or(Errno::NOENT)?;
        self.instantiate(&parent, &pstate.layers, name, entry)
            .map_err(|e| {
                tracing::debug!("lookup {name:?} in {}: listed but {e}", parent.id);
                // Listed but not resolvable: never let the kernel cache this as absent.
                if e == Errno::NOENT {
                    Errno::STALE
                } else {
                    e
                }
            })
    }

    /// Build (or find) the node for listing entry `entry` named `name` in `parent`.
    fn instantiate(
        &self,
        parent: &Arc<Node>,
        parent_layers: &[LayerIndex],
        name: &OsStr,
        entry: &dir::Entry,
    ) -> Result<(Arc<Node>, rfs::Stat), Errno> {
        let top = entry.top();
        let pfd = self.dir_fd(parent, top)?;
        let st = rfs::statat(pfd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
        if format::is_device_whiteout(&st) || FileType::from_raw_mode(st.st_mode) != entry.kind {
            // The listing and the layer disagree: never hand the kernel a whiteout.
            return Err(Errno::NOENT);
        }
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && !self.traps.is_empty() {
            self.check_traps(parent, name, &entry.layers)?;
        }
        let (layers, layer_fds) = if is_dir && entry.layers.len() > 1 {
            self.effective_dir_layers(parent, name, &entry.layers)?
        } else {
            (vec![top], Vec::new())
        };
        let metacopy = if self.is_upper(top)
            && entry.covers_lower
            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && format::has_metacopy(pfd.as_fd(), name)
        {
            self.find_data_layer(parent, parent_layers, name)?
        } else {
            None
        };
        let layer = self.layer(top);
        let node = self.nodes.lookup_or_insert(
            (layer.dev, st.st_ino),
            layer.fs_index,
            || Location {
                parent: Some(parent.clone()),
                name: name.to_owned(),
            },
            |id| {
                let mut n = Node::new(id, is_dir, Some(parent.clone()), name, layers.clone());
                n.state.get_mut().metacopy = metacopy;
                n
            },
        );
        if !is_dir {
            node.add_alias(parent, name);
        }
        for (layer, fd) in layer_fds {
            // Opened anyway to check opacity: the listing will read them (a known node keeps
            // the fds it has).
            if node.cached_fd(layer).is_none() {
                node.cache_fd(layer, Arc::new(fd));
            }
        }
        let restat = {
            let s = node.state.read();
            s.top() != top || s.metacopy.is_some()
        };
        let st = if restat {
            // A hard-link alias of a node that has been copied up answers from the copy; a
            // metacopy file reports its data's blocks.
            self.stat_node_with(&node, false)?
        } else {
            st
        };
        let st = self.client_stat(&node, st);
        Ok((node, st))
    }

    /// ELOOP if directory `name` of `parent` is, in any of `layers`, the upper or work
    /// directory (which then lies inside a lower layer).
    fn check_traps(&self, parent: &Node, name: &OsStr, layers: &[LayerIndex]) -> Result<(), Errno> {
        for &l in layers {
            let fd = self.dir_fd(parent, l)?;
            if let Ok(st) = rfs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                if self.traps.contains(&(st.st_dev, st.st_ino)) {
                    tracing::warn!("lookup of {name:?} reached the upper or work directory");
                    return Err(Errno::LOOP);
                }
            }
        }
        Ok(())
    }

    /// The topmost lower layer of `parent` holding a regular file `name`: where the data of
    /// a metacopy upper file is.
    fn find_data_layer(
        &self,
        parent: &Node,
        layers: &[LayerIndex],
        name: &OsStr,
    ) -> Result<Option<LayerIndex>, Errno> {
        for &l in layers.iter().filter(|l| !self.is_upper(**l)) {
            let fd = self.dir_fd(parent, l)?;
            if let Ok(st) = rfs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                    return Ok(Some(l));
                }
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Stat the visible object of `node` (layer values, before id mapping).
    pub fn stat_node(&self, node: &Node) -> Result<rfs::Stat, Errno> {
        self.stat_node_with(node, true)
    }

    /// [`Union::stat_node`]; `lock_parent` false when the caller already holds a directory
    /// lock (taking a second one here could invert the order renames take them in).
    fn stat_node_with(&self, node: &Node, lock_parent: bool) -> Result<rfs::Stat, Errno> {
        let (top, metacopy) = {
            let s = node.state.read();
            (s.top(), s.metacopy)
        };
        if node.is_dir {
            let fd = self.dir_fd(node, top)?;
            rfs::fstat(fd.as_fd())
        } else {
            let loc = node.location();
            let parent = loc.parent.ok_or(Errno::STALE)?;
            // Names in the parent change only under its write lock.
            let _pstate = lock_parent.then(|| parent.state.read());
            let loc = node.location();
            if node.is_unlinked() || loc.parent.as_ref().is_none_or(|p| p.id != parent.id) {
                return Err(Errno::NOENT);
            }
            let pfd = self.dir_fd(&parent, top)?;
            let mut st = rfs::statat(pfd.as_fd(), &loc.name, AtFlags::SYMLINK_NOFOLLOW)?;
            if format::is_device_whiteout(&st) {
                return Err(Errno::NOENT);
            }
            if let Some(data) = metacopy {
                // The blocks in use are the lower file's (as the kernel reports them).
                let dfd = self.dir_fd(&parent, data)?;
                if let Ok(d) = rfs::statat(dfd.as_fd(), &loc.name, AtFlags::SYMLINK_NOFOLLOW) {
                    st.st_blocks = d.st_blocks;
                }
            }
            Ok(st)
        }
    }

    /// Turn a layer's stat of `node` into what the client sees: the node id as inode number,
    /// mapped owners, and nlink 1 for merged directories (as the kernel reports them).
    pub fn client_stat(&self, node: &Node, mut st: rfs::Stat) -> rfs::Stat {
        st.st_ino = node.id;
        if !node.is_dir && st.st_nlink > 0 {
            let adjust = node.nlink_adjust.load(std::sync::atomic::Ordering::Relaxed);
            st.st_nlink = (st.st_nlink as i64 + adjust).max(1) as u64;
        }
        if node.is_dir && (self.options.static_nlink || node.state.read().layers.len() > 1) {
            st.st_nlink = 1;
        }
        st.st_uid = self.ids.uid_to_client(st.st_uid);
        st.st_gid = self.ids.gid_to_client(st.st_gid);
        st
    }

    /// Attributes of node `id` as the client sees them.
    pub fn getattr(&self, id: u64) -> Result<rfs::Stat, Errno> {
        let node = self.node(id)?;
        if node.is_unlinked() {
            // A file whose last name is gone lives on through its open handles (the kernel
            // asks without the handle for fstat); its old name may hold a whiteout now.
            let h = self.handles.any_file_of(node.id).ok_or(Errno::NOENT)?;
            return Ok(self.client_stat(&node, rfs::fstat(&h.fd)?));
        }
        let st = self.stat_node(&node)?;
        Ok(self.client_stat(&node, st))
    }

    /// Take back `n` kernel references to node `id`.
    pub fn forget(&self, id: u64, n: u64) {
        self.nodes.forget(id, n);
    }

    /// Contents of symlink `id`.
    pub fn readlink(&self, id: u64) -> Result<Vec<u8>, Errno> {
        let node = self.node(id)?;
        if node.is_dir {
            return Err(Errno::INVAL);
        }
        let target = self.with_name(&node, None, |dir, name| {
            rfs::readlinkat(dir, name, Vec::new())
        })?;
        Ok(target.into_bytes())
    }

    /// Filesystem statistics of the upper layer (or the top lower layer when read-only).
    pub fn statfs(&self) -> Result<rfs::StatVfs, Errno> {
        let fd = rfs::openat(
            self.layers[0].root.as_fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rfs::Mode::empty(),
        )?;
        rfs::fstatvfs(fd.as_fd())
    }

    /// The root node id.
    pub fn root_id(&self) -> u64 {
        ROOT_ID
    }
}

/// Map an I/O error from std into an errno.
pub fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_io_error(e).unwrap_or(Errno::IO)
}
