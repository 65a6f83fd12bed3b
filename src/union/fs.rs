//! The FUSE adapter: a thin translation of each kernel request into a call on [`Union`] and of
//! its `Result` into a fuser reply. Also the fast-path policy: passthrough, cache flags, TTLs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno as FErrno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, ForgetOne, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use rustix::fs as rfs;
use rustix::io::Errno;

use super::attr::{AttrChanges, TimeSet};
use super::handle::{wants_write, FileHandle as UnionFile};
use super::namespace::NewObject;
use super::stats::{Op, RequestStats};
use super::{Caller, Union};

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1 << 20;
/// Largest readahead we ask the kernel for.
const MAX_READAHEAD: u32 = 1 << 20;
/// We keep no per-open state that close must flush (no locks, no write cache): skip FLUSH.
const NO_FLUSH: FopenFlags = FopenFlags::FOPEN_NOFLUSH;
/// Entries prepared per READDIR request: as many as its reply buffer can hold (the kernel asks
/// for 32 KiB; a dirent takes at least 32 bytes), so a large directory costs as few round
/// trips as the kernel allows, and is not copied whole for every request.
const READDIR_BATCH: usize = 1024;
/// The same for READDIRPLUS, whose entries carry attributes (about 150 bytes each).
const READDIRPLUS_BATCH: usize = 256;
/// How many 2 ms steps an open waits for a just-closed passthrough file's RELEASE.
const RELEASE_GRACE_STEPS: u32 = 50;
/// Stacking depth of backing files (lowers may themselves be on an overlay or FUSE mount).
const MAX_STACK_DEPTH: u32 = 1;

fn ferr(e: Errno) -> FErrno {
    FErrno::from_i32(e.raw_os_error())
}

fn system_time(sec: i64, nsec: u64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec)
    }
}

fn file_type(mode: u32) -> FileType {
    match rfs::FileType::from_raw_mode(mode) {
        rfs::FileType::Directory => FileType::Directory,
        rfs::FileType::Symlink => FileType::Symlink,
        rfs::FileType::CharacterDevice => FileType::CharDevice,
        rfs::FileType::BlockDevice => FileType::BlockDevice,
        rfs::FileType::Fifo => FileType::NamedPipe,
        rfs::FileType::Socket => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn kind_of(t: rfs::FileType) -> FileType {
    file_type(t.as_raw_mode())
}

/// fuser's attribute struct from a (client-view) stat.
pub fn file_attr(st: &rfs::Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSet::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), d.subsec_nanos());
                if ns > 0 {
                    s -= 1;
                    ns = 1_000_000_000 - ns;
                }
                TimeSet::At(s, ns)
            }
        },
    }
}

/// One backing file registered with the kernel, shared by all opens of a node in one layer.
struct Backing {
    id: Weak<BackingId>,
    upper: bool,
}

/// The `fuser::Filesystem` over a [`Union`].
pub struct StrataFs {
    union: Arc<Union>,
    ttl: Duration,
    /// Whether the kernel accepted passthrough and we may register backing files.
    passthrough: AtomicBool,
    /// Backing ids by node, so every open of an inode uses the same one (a kernel rule).
    backing_by_node: Mutex<HashMap<u64, Backing>>,
    /// Strong references per open file handle; dropping the last one closes the backing id.
    backing_by_fh: Mutex<HashMap<u64, Arc<BackingId>>>,
    /// Whether the kernel opens directories without OPENDIR once told (`ENOSYS`) to.
    no_opendir: bool,
    /// Our process id, to recognise requests made by our own threads.
    tgid: u32,
    /// Requests served, by type.
    stats: Arc<RequestStats>,
}

/// Answer a request made by one of the daemon's own threads with EDEADLK at once: serving
/// it could wait on the very thread that asked (a layer that reached our own mount).
macro_rules! refuse_own {
    ($self:ident, $req:ident, $reply:ident) => {
        if $self.sent_by_us($req) {
            return $reply.error(FErrno::from_i32(libc::EDEADLK));
        }
    };
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl StrataFs {
    /// Serve `union`; `passthrough` says whether to try FUSE passthrough (needs
    /// CAP_SYS_ADMIN in the initial user namespace).
    pub fn new(union: Arc<Union>, passthrough: bool, stats: Arc<RequestStats>) -> Self {
        let ttl = union.options.timeout;
        StrataFs {
            union,
            ttl,
            passthrough: AtomicBool::new(passthrough),
            backing_by_node: Mutex::new(HashMap::new()),
            backing_by_fh: Mutex::new(HashMap::new()),
            no_opendir: false,
            tgid: std::process::id(),
            stats,
        }
    }

    /// Whether `req` was sent by a thread of this process. The request header carries the
    /// sender's thread id (0 when it is outside our pid namespace).
    fn sent_by_us(&self, req: &Request) -> bool {
        let own = crate::sys::is_thread_of(self.tgid, req.pid());
        if own {
            tracing::error!(
                "refused a request from our own thread {} (a layer reaches our mount?)",
                req.pid()
            );
        }
        own
    }

    fn caller(req: &Request, umask: u32) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            umask,
        }
    }

    /// A backing id for `handle`, reusing the node's while one is open. `Ok(None)` when
    /// passthrough is off or unavailable; `Err(ETXTBSY)` when the open cannot be served.
    ///
    /// The kernel binds one backing file to an inode while any file of it is open, and then
    /// refuses (EIO) every open of the inode that is not passthrough with that same backing. So
    /// an open while the inode has a backing must share it:
    /// - bound to the upper copy, a handle that resolved to the lower file (it raced the
    ///   copy-up) reads the copy, as overlayfs shows copy-ups to later opens;
    /// - bound to the lower file, a read-only handle of the copy may share it (no data can have
    ///   changed: writes are refused while it is open, see `lower_busy`); a handle that may
    ///   write cannot (a reader opened the lower file between `lower_busy` and the copy-up):
    ///   ETXTBSY, the documented passthrough difference.
    fn backing_for(
        &self,
        fh: u64,
        handle: &UnionFile,
        writable: bool,
        open: impl FnOnce(&rfs::Stat) -> std::io::Result<BackingId>,
    ) -> Result<Option<Arc<BackingId>>, FErrno> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let node = handle.node.id;
        let upper = !handle.lower;
        let mut by_node = self.backing_by_node.lock();
        if let Some(b) = by_node.get(&node) {
            if let Some(id) = b.id.upgrade() {
                if !b.upper && upper && writable {
                    return Err(FErrno::from_i32(libc::ETXTBSY));
                }
                self.backing_by_fh.lock().insert(fh, id.clone());
                return Ok(Some(id));
            }
        }
        let Ok(st) = rfs::fstat(&handle.fd) else {
            return Ok(None);
        };
        match open(&st) {
            Ok(id) => {
                let id = Arc::new(id);
                by_node.insert(
                    node,
                    Backing {
                        id: Arc::downgrade(&id),
                        upper,
                    },
                );
                self.backing_by_fh.lock().insert(fh, id.clone());
                Ok(Some(id))
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::EPERM) {
                    tracing::info!(
                        "passthrough refused (no CAP_SYS_ADMIN): serving reads ourselves"
                    );
                    self.passthrough.store(false, Ordering::Relaxed);
                } else {
                    tracing::debug!("passthrough unavailable for node {node}: {e}");
                }
                Ok(None)
            }
        }
    }

    /// Whether node `node`'s lower file is open through passthrough: its data may then not
    /// change through the mount (the kernel cannot switch the inode to the upper copy).
    fn lower_busy(&self, node: u64) -> bool {
        let busy = || {
            self.backing_by_node
                .lock()
                .get(&node)
                .is_some_and(|b| !b.upper && b.id.strong_count() > 0)
        };
        // The kernel sends RELEASE after close() returns: give a just-closed file a moment.
        for _ in 0..RELEASE_GRACE_STEPS {
            if !busy() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        busy()
    }

    /// Whether a process executes node `node` through the mount. The kernel denies writes to
    /// such an inode, but checks an `O_RDONLY|O_TRUNC` open only after OPEN has truncated the
    /// file (`FUSE_ATOMIC_O_TRUNC`), so that case is ours to refuse.
    fn executing(&self, node: u64) -> bool {
        let Ok(node) = self.union.node(node) else {
            return false;
        };
        // The kernel sends RELEASE of an exited program's file after it is gone: a moment.
        for _ in 0..RELEASE_GRACE_STEPS {
            if !node.is_executing() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        node.is_executing()
    }

    /// Open flags for a handle served without passthrough.
    fn plain_open_flags(&self, handle: &UnionFile) -> FopenFlags {
        NO_FLUSH | self.cache_flags(handle)
    }

    fn cache_flags(&self, handle: &UnionFile) -> FopenFlags {
        if self.node_has_backing(handle.node.id) {
            // The inode is in passthrough mode through another file: the kernel refuses a
            // cached open of it (EIO), so go around the cache, lower file or not.
            FopenFlags::FOPEN_DIRECT_IO
        } else if handle.lower {
            // Lower files never change: keep their page cache across opens.
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    fn node_has_backing(&self, node: u64) -> bool {
        self.backing_by_node
            .lock()
            .get(&node)
            .is_some_and(|b| b.id.strong_count() > 0)
    }

    fn check(&self, dirs: &[u64], what: &str) {
        for d in dirs {
            if let Ok(node) = self.union.node(*d) {
                self.union.check_dir(what, &node);
            }
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, result: Result<rfs::Stat, Errno>) {
        match result {
            Ok(st) => reply.entry(&self.ttl, &file_attr(&st), Generation(0)),
            Err(e) => reply.error(ferr(e)),
        }
    }
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.union.start_lazy_threads();
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_READAHEAD);
        // With HANDLE_KILLPRIV_V2 the kernel leaves killing set-id bits to us (it says when, by
        // the KILL_SUIDGID flags of write, setattr and open) and stops asking for
        // `security.capability` before every write and the attributes before every chown:
        // three round trips of the ten an extracted file costs.
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.union.options.acl {
            // The kernel enforces POSIX ACLs from the xattrs we serve (as overlayfs does), and
            // leaves the umask to us: a default ACL in the parent replaces it.
            wanted |= InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
        }
        if self.union.options.readdirplus {
            wanted |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        }
        for flag in wanted.iter() {
            let _ = config.add_capabilities(flag);
        }
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        // Without this the kernel strips O_TRUNC from OPEN and truncates with a SETATTR
        // afterwards: an `O_RDONLY|O_TRUNC` open would then bind the lower file for
        // passthrough (nothing said it writes) and the SETATTR would find it busy (ETXTBSY),
        // and an `O_WRONLY|O_TRUNC` one would copy up data only to discard it. With it, OPEN
        // carries O_TRUNC, so the file is copied up empty and opened truncated in one step.
        if config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            tracing::warn!(
                "kernel has no FUSE_ATOMIC_O_TRUNC: O_RDONLY|O_TRUNC of a lower file open \
                 through passthrough fails with ETXTBSY"
            );
        }
        if self.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(MAX_STACK_DEPTH).is_ok();
            if !ok {
                tracing::info!("kernel has no FUSE passthrough: serving reads ourselves");
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Exit here: fuser would otherwise try to unmount the mount point by path on its way
        // out, and a new mount may already be there (a container restarted on the same
        // rootfs directory).
        finish_and_exit(&self.union, &self.stats);
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Lookup);
        let r = self.union.lookup(parent.0, name);
        tracing::debug!(
            "lookup {} {name:?} -> {:?}",
            parent.0,
            r.as_ref().map(|(n, _)| n.id)
        );
        match r {
            Ok((node, st)) => {
                if !node.is_dir {
                    if let Some(p) = node.parent() {
                        p.mark_stat_walk();
                    }
                }
                reply.entry(&self.ttl, &file_attr(&st), Generation(0))
            }
            Err(Errno::NOENT) => {
                // A negative entry the kernel may cache: names change only through us.
                let mut attr = file_attr(&crate::sys::zeroed_stat());
                attr.ino = INodeNo(0);
                reply.entry(&self.ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.stats.count(Op::Forget);
        self.union.forget(ino.0, nlookup);
    }

    fn batch_forget(&self, _req: &Request, nodes: &[ForgetOne]) {
        self.stats.count(Op::BatchForget);
        for n in nodes {
            self.union.forget(n.nodeid().0, n.nlookup());
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Getattr);
        let result = match fh {
            Some(fh) => self
                .union
                .fgetattr(fh.0)
                .or_else(|_| self.union.getattr(ino.0)),
            None => self.union.getattr(ino.0),
        };
        match result {
            Ok(st) => reply.attr(&self.ttl, &file_attr(&st)),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Setattr);
        if size.is_some() && self.lower_busy(ino.0) {
            return reply.error(FErrno::from_i32(libc::ETXTBSY));
        }
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            fh: fh.map(|f| f.0),
            // A SETATTR that changes nothing is the kernel killing privileges before a write
            // (file_remove_privs: the writer lacks CAP_FSETID), its kill bits stripped under
            // KILLPRIV_V2. It reaches us even when the write itself then goes through
            // passthrough, e.g. to a file made set-id after it was opened for writing.
            kill_suidgid: kill_suidgid
                || (mode, uid, gid, size, atime, mtime) == (None, None, None, None, None, None),
        };
        match self.union.setattr(ino.0, &changes) {
            Ok(st) => reply.attr(&self.ttl, &file_attr(&st)),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Readlink);
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Mknod);
        let what = NewObject::Node {
            mode,
            rdev: rdev as u64,
        };
        let r = self
            .union
            .create_object(parent.0, name, what, Self::caller(req, umask));
        self.reply_entry(reply, r.map(|(_, st, _)| st));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Mkdir);
        let r = self.union.create_object(
            parent.0,
            name,
            NewObject::Dir(mode),
            Self::caller(req, umask),
        );
        self.reply_entry(reply, r.map(|(_, st, _)| st));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Unlink);
        let r = self.union.unlink(parent.0, name);
        tracing::debug!("unlink {} {name:?} -> {r:?}", parent.0);
        self.check(&[parent.0], "unlink");
        reply_empty(reply, r);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Rmdir);
        reply_empty(reply, self.union.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Symlink);
        let r = self.union.create_object(
            parent.0,
            link_name,
            NewObject::Symlink(target.as_os_str()),
            Self::caller(req, 0),
        );
        self.reply_entry(reply, r.map(|(_, st, _)| st));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Rename);
        let r = self
            .union
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        tracing::debug!(
            "rename {} {name:?} -> {} {newname:?} ({flags:?}): {r:?}",
            parent.0,
            newparent.0
        );
        self.check(&[parent.0, newparent.0], "rename");
        reply_empty(reply, r);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Link);
        let r = self.union.link(ino.0, newparent.0, newname);
        tracing::debug!(
            "link {} -> {} {newname:?}: {:?}",
            ino.0,
            newparent.0,
            r.as_ref().map(|_| ())
        );
        self.check(&[newparent.0], "link");
        self.reply_entry(reply, r.map(|(_, st)| st));
    }

    fn open(
        &self,
        req: &Request,
        ino: INodeNo,
        flags: OpenFlags,
        kill_suidgid: bool,
        reply: ReplyOpen,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Open);
        if wants_write(flags.0) && self.lower_busy(ino.0) {
            return reply.error(FErrno::from_i32(libc::ETXTBSY));
        }
        if truncates_read_only(flags.0) && self.executing(ino.0) {
            return reply.error(FErrno::from_i32(libc::ETXTBSY));
        }
        let (fh, handle) = match self.union.open(ino.0, flags.0) {
            Ok(x) => x,
            Err(e) => return reply.error(ferr(e)),
        };
        let writable = wants_write(flags.0);
        if kill_suidgid && writable {
            // An O_TRUNC open by a caller without CAP_FSETID.
            if let Err(e) = self.union.kill_suidgid(fh) {
                self.union.release(fh);
                return reply.error(ferr(e));
            }
        }
        let backing = if writable && keeps_setid(&handle) {
            // Passthrough writes reach the backing file with our privileges, which keep set-id
            // bits; served here, each write says whether to kill them.
            Ok(None)
        } else {
            self.backing_for(fh, &handle, writable, |_| {
                reply.open_backing(handle.fd.as_fd())
            })
        };
        match backing {
            Ok(Some(id)) => reply.opened_passthrough(FileHandle(fh), NO_FLUSH, &id),
            Ok(None) => reply.opened(FileHandle(fh), self.plain_open_flags(&handle)),
            Err(e) => {
                self.union.release(fh);
                reply.error(e)
            }
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Read);
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            match self.union.read_into(fh.0, offset, size, &mut buf) {
                Ok(()) => reply.data(&buf),
                Err(e) => reply.error(ferr(e)),
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Write);
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.union.kill_suidgid(fh.0) {
                return reply.error(ferr(e));
            }
        }
        match self.union.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Flush);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Release);
        self.union.release(fh.0);
        self.backing_by_fh.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Fsync);
        reply_empty(reply, self.union.fsync(fh.0, datasync));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Opendir);
        match self.union.opendir(ino.0) {
            // Directories need no handle. Where the kernel allows it, say so once (ENOSYS): it
            // then opens directories without asking, with the flags below, and sends no
            // OPENDIR or RELEASEDIR again (two round trips saved per directory walked).
            Ok(()) if self.no_opendir => reply.error(FErrno::ENOSYS),
            // Every change of a directory goes through us, and the kernel drops its cached
            // listing when it sees one: cache listings across opens.
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Readdir);
        let entries = match self.union.readdir(ino.0, offset, READDIR_BATCH) {
            Ok(e) => e,
            Err(e) => return reply.error(ferr(e)),
        };
        for e in entries {
            if reply.add(INodeNo(e.ino), e.next_offset, kind_of(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Readdirplus);
        let entries = match self.union.readdir(ino.0, offset, READDIRPLUS_BATCH) {
            Ok(e) => e,
            Err(e) => return reply.error(ferr(e)),
        };
        // With READDIRPLUS_AUTO the kernel asks for attributes at offset 0 of every directory,
        // and later only when it saw lookups in it. Unless the walk stats files, answer offset
        // 0 with `.`, `..` and the leading subdirectories only (their lookups are needed
        // anyway) and stop short: the kernel reads the rest with plain readdir.
        let in_full = offset > 0 || self.union.readdirplus_in_full(ino.0).unwrap_or(true);
        for e in entries {
            if !in_full && !e.dot && e.kind != rfs::FileType::Directory {
                break;
            }
            let full = if e.dot {
                let attr = FileAttr {
                    ino: INodeNo(e.ino),
                    kind: FileType::Directory,
                    ..file_attr(&crate::sys::zeroed_stat())
                };
                // The kernel makes no dentry for `.` and `..`: no lookup is counted.
                reply.add(
                    INodeNo(e.ino),
                    e.next_offset,
                    &e.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                )
            } else {
                match self.union.lookup(ino.0, &e.name) {
                    Ok((node, st)) => {
                        let full = reply.add(
                            INodeNo(node.id),
                            e.next_offset,
                            &e.name,
                            &self.ttl,
                            &file_attr(&st),
                            Generation(0),
                        );
                        if full {
                            self.union.forget(node.id, 1);
                        }
                        full
                    }
                    // Gone meanwhile: skip it.
                    Err(_) => false,
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Releasedir);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Fsyncdir);
        reply_empty(reply, self.union.fsyncdir(ino.0));
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Statfs);
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Setxattr);
        reply_empty(reply, self.union.setxattr(ino.0, name, value, flags));
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Getxattr);
        reply_xattr(reply, size, self.union.getxattr(ino.0, name));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Listxattr);
        reply_xattr(reply, size, self.union.listxattr(ino.0));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Removexattr);
        reply_empty(reply, self.union.removexattr(ino.0, name));
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Access);
        // With default_permissions the kernel checks modes itself; this only checks existence.
        match self.union.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Create);
        let what = NewObject::File { mode, flags };
        let created = self
            .union
            .create_object(parent.0, name, what, Self::caller(req, umask));
        tracing::debug!(
            "create {} {name:?} -> {:?}",
            parent.0,
            created.as_ref().map(|(n, _, _)| n.id)
        );
        self.check(&[parent.0], "create");
        let (node, st, fd) = match created {
            Ok(x) => x,
            Err(e) => return reply.error(ferr(e)),
        };
        let Some(fd) = fd else {
            return reply.error(FErrno::EIO);
        };
        let (fh, handle) = self.union.handles.add_file(UnionFile {
            fd,
            node,
            lower: false,
            copied: std::sync::OnceLock::new(),
            exec: false,
        });
        let attr = file_attr(&st);
        let backing = if keeps_setid(&handle) {
            // Created set-id: writes must be able to kill the bits (see `open`).
            Ok(None)
        } else {
            self.backing_for(fh, &handle, true, |_| reply.open_backing(handle.fd.as_fd()))
        };
        match backing {
            Err(e) => {
                self.union.release(fh);
                reply.error(e)
            }
            Ok(Some(id)) => reply.created_passthrough(
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                NO_FLUSH,
                &id,
            ),
            Ok(None) => reply.created(
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                self.plain_open_flags(&handle),
            ),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Ioctl);
        // Terminal and file-attribute ioctls do not apply to union files.
        reply.error(FErrno::ENOTTY);
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Fallocate);
        reply_empty(reply, self.union.fallocate(fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        refuse_own!(self, req, reply);
        self.stats.count(Op::Lseek);
        match self.union.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(ferr(e)),
        }
    }
}

/// The mount is gone (or going): leave an upper layer that kernel overlayfs reads without
/// metacopy=on, write the request counts, and exit. Called on the kernel's DESTROY and on a
/// signal; the first caller finishes, a second one waits here for the exit.
pub fn finish_and_exit(union: &Union, stats: &RequestStats) -> ! {
    static FINISHING: Mutex<()> = Mutex::new(());
    let _once = FINISHING.lock();
    match union.complete_all_metacopies() {
        Ok(0) => {}
        Ok(n) => tracing::info!("copied the data of {n} metadata-only copies up"),
        Err(e) => tracing::error!("completing metadata-only copies: {e}"),
    }
    union.discards.finish();
    union.flush_lazy();
    union.drop_shared_whiteout();
    write_stats(union, stats);
    std::process::exit(0);
}

/// Write `stats` to the mount's `stats=` file, if it has one.
pub fn write_stats(union: &Union, stats: &RequestStats) {
    if let Some(path) = &union.options.stats {
        if let Err(e) = stats.write_to(path) {
            tracing::warn!("writing request counts to {}: {e}", path.display());
        }
    }
}

/// Whether a write to `handle`'s file would have to clear set-id bits: set-uid, or set-gid
/// with group execute (without it, set-gid marks mandatory locking and stays).
fn keeps_setid(handle: &UnionFile) -> bool {
    rfs::fstat(&handle.fd).is_ok_and(|st| {
        let m = st.st_mode;
        m & libc::S_ISUID != 0
            || m & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
    })
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(ferr(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, Errno>) {
    match result {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(FErrno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(ferr(e)),
    }
}

/// Whether open flags truncate without asking for write access (`O_RDONLY|O_TRUNC`): the
/// kernel has then not checked for a running program before OPEN.
fn truncates_read_only(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC != 0
}
