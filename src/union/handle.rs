//! Open files, and reading directories. A file handle is an fd of the real file in its layer
//! (the lower one until something writes). Directories need no handle: readdir reads the
//! node's current listing from an offset that is an entry's sequence number, which stays valid
//! while entries come and go (so the kernel need not send OPENDIR and RELEASEDIR at all).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rustix::fs::{self as rfs, FallocateFlags, FileType, OFlags, SeekFrom};
use rustix::io::Errno;

use super::inode::Node;
use super::Union;

/// One open file.
#[derive(Debug)]
pub struct FileHandle {
    /// The real file.
    pub fd: OwnedFd,
    /// The union node it was opened through.
    pub node: Arc<Node>,
    /// Whether `fd` is a lower-layer file (immutable: its page cache can be kept).
    pub lower: bool,
    /// For a lower file copied up while open: the upper copy, which reads then come from
    /// (overlayfs shows copy-ups to files opened before them).
    pub copied: std::sync::OnceLock<OwnedFd>,
    /// Opened to execute the file (`__FMODE_EXEC`): counted on the node while open.
    pub exec: bool,
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        if self.exec {
            self.node.count_exec_open(false);
        }
    }
}

/// The kernel's `__FMODE_EXEC` open flag, which FUSE passes on for an `execve` of the file.
const FMODE_EXEC: i32 = 0x20;

/// One entry returned by readdir.
#[derive(Debug, Clone)]
pub struct DirEntryOut {
    /// Offset of the next entry (what a later readdir passes back).
    pub next_offset: u64,
    /// Name of the entry (shared with the listing).
    pub name: Arc<OsStr>,
    /// Its type.
    pub kind: FileType,
    /// Its inode number (the node id a lookup would give).
    pub ino: u64,
    /// Whether this is `.` or `..`.
    pub dot: bool,
}

/// All open files, by handle number.
#[derive(Debug, Default)]
pub struct HandleTable {
    next: AtomicU64,
    files: RwLock<HashMap<u64, Arc<FileHandle>>>,
}

impl HandleTable {
    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Register an open file.
    pub fn add_file(&self, handle: FileHandle) -> (u64, Arc<FileHandle>) {
        let fh = self.next();
        let h = Arc::new(handle);
        self.files.write().insert(fh, h.clone());
        (fh, h)
    }

    /// The open file `fh`.
    pub fn file(&self, fh: u64) -> Result<Arc<FileHandle>, Errno> {
        self.files.read().get(&fh).cloned().ok_or(Errno::BADF)
    }

    /// Close file `fh`.
    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.write().remove(&fh)
    }

    /// Some open file of node `node` (a linear scan: only for files whose names are gone).
    pub fn any_file_of(&self, node: u64) -> Option<Arc<FileHandle>> {
        self.files
            .read()
            .values()
            .find(|h| h.node.id == node)
            .cloned()
    }
}

/// Flags of the client's open that are passed on to the real file.
fn passed_flags(flags: i32) -> OFlags {
    let f = OFlags::from_bits_retain(flags as _);
    let keep = OFlags::ACCMODE
        | OFlags::APPEND
        | OFlags::SYNC
        | OFlags::DSYNC
        | OFlags::DIRECT
        | OFlags::NOATIME
        | OFlags::NONBLOCK;
    (f & keep) | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

/// Whether open flags ask for write access.
pub fn wants_write(flags: i32) -> bool {
    let acc = flags & libc::O_ACCMODE;
    acc == libc::O_WRONLY || acc == libc::O_RDWR || flags & libc::O_TRUNC != 0
}

impl Union {
    /// Open the real file of `node` (copied up first if `flags` write) with `flags`.
    pub fn open_real(&self, node: &Arc<Node>, flags: i32) -> Result<FileHandle, Errno> {
        if node.is_dir {
            return Err(Errno::ISDIR);
        }
        if wants_write(flags) {
            self.check_writable()?;
            if flags & libc::O_TRUNC != 0 {
                self.copy_up_empty(node)?;
            } else {
                self.copy_up(node)?;
            }
        }
        let (top, metacopy) = {
            let s = node.state.read();
            (s.top(), s.metacopy)
        };
        // A metacopy file's data is still in the lower file (only reads get here).
        let top = metacopy.unwrap_or(top);
        let mut oflags = passed_flags(flags);
        if flags & libc::O_TRUNC != 0 {
            oflags |= OFlags::TRUNC;
        }
        if self.layer(top).lazy.is_some() {
            // Filling may wait on the network: not under the directory's lock (which every
            // lookup and change in it takes). A lower layer's names never change, so its
            // directory fd and the name stay valid without it.
            let loc = node.location();
            let parent = loc.parent.as_ref().ok_or(Errno::NOENT)?;
            let dir = self.dir_fd(parent, top)?;
            self.ensure_data_at(top, dir.as_fd(), &loc.name)?;
        }
        let fd = self.with_name(node, Some(top), |dir, name| {
            rfs::openat(dir, name, oflags, rfs::Mode::empty())
        })?;
        Ok(FileHandle {
            fd,
            node: node.clone(),
            lower: !self.is_upper(top),
            copied: std::sync::OnceLock::new(),
            exec: {
                let exec = flags & FMODE_EXEC != 0;
                if exec {
                    node.count_exec_open(true);
                }
                exec
            },
        })
    }

    /// Open node `id` with `flags`; returns the handle number and the handle.
    pub fn open(&self, id: u64, flags: i32) -> Result<(u64, Arc<FileHandle>), Errno> {
        let node = self.node(id)?;
        let handle = self.open_real(&node, flags)?;
        Ok(self.handles.add_file(handle))
    }

    /// Read up to `size` bytes at `offset` of open file `fh` into `buf`.
    pub fn read_into(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        let h = self.handles.file(fh)?;
        let fd = self.read_fd(&h)?;
        buf.clear();
        buf.resize(size as usize, 0);
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(fd, &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(())
    }

    /// The fd reads of `h` come from: its own, or the upper copy made since it was opened.
    fn read_fd<'h>(&self, h: &'h FileHandle) -> Result<BorrowedFd<'h>, Errno> {
        if !h.lower {
            return Ok(h.fd.as_fd());
        }
        if let Some(fd) = h.copied.get() {
            return Ok(fd.as_fd());
        }
        let copied_up = {
            let s = h.node.state.read();
            s.top() == 0 && s.metacopy.is_none()
        };
        if !copied_up || !self.has_upper {
            return Ok(h.fd.as_fd());
        }
        let fd = self.with_name(&h.node, Some(0), |dir, name| {
            rfs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rfs::Mode::empty(),
            )
        })?;
        let _ = h.copied.set(fd);
        Ok(h.copied.get().expect("just set").as_fd())
    }

    /// Write `data` at `offset` of open file `fh`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let h = self.handles.file(fh)?;
        rustix::io::pwrite(&h.fd, data, offset)
    }

    /// Flush file `fh`'s data (and metadata unless `datasync`) to disk.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Errno> {
        let h = self.handles.file(fh)?;
        if datasync {
            rfs::fdatasync(&h.fd)
        } else {
            rfs::fsync(&h.fd)
        }
    }

    /// Close file `fh`.
    pub fn release(&self, fh: u64) {
        self.handles.remove_file(fh);
    }

    /// Allocate or punch space in open file `fh`.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let h = self.handles.file(fh)?;
        let flags = FallocateFlags::from_bits(mode as _).ok_or(Errno::OPNOTSUPP)?;
        rfs::fallocate(&h.fd, flags, offset, len)
    }

    /// Find data or holes in open file `fh` (`SEEK_DATA`/`SEEK_HOLE`; others are the kernel's).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let h = self.handles.file(fh)?;
        let pos = match whence {
            libc::SEEK_SET => SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            libc::SEEK_DATA => SeekFrom::Data(u64::try_from(offset).map_err(|_| Errno::NXIO)?),
            libc::SEEK_HOLE => SeekFrom::Hole(u64::try_from(offset).map_err(|_| Errno::NXIO)?),
            _ => return Err(Errno::INVAL),
        };
        rfs::seek(&h.fd, pos).map(|p| p as i64)
    }

    /// Attributes of the open file `fh` (works after its last name is gone).
    pub fn fgetattr(&self, fh: u64) -> Result<rfs::Stat, Errno> {
        let h = self.handles.file(fh)?;
        let st = rfs::fstat(&h.fd)?;
        if h.lower && h.node.state.read().top() == 0 {
            // Opened before a copy-up: the node's attributes are the copy's now.
            return self.getattr(h.node.id);
        }
        Ok(self.client_stat(&h.node, st))
    }

    /// Open directory `id` for reading: checks that it can be listed. Reading needs no handle
    /// (see [`Union::readdir`]).
    pub fn opendir(&self, id: u64) -> Result<(), Errno> {
        let node = self.dir_node(id)?;
        self.listing(&node)?;
        Ok(())
    }

    /// Entries of directory `id` from `offset` on (`.` and `..` first), at most `max`. Offsets
    /// 1 and 2 follow `.` and `..`; an entry's is its sequence number plus 3, so a later call
    /// resumes after it however the directory changed meanwhile. Offset 0 (a new read or a
    /// rewind) also starts the read-ahead of the subdirectories, once per directory.
    pub fn readdir(&self, id: u64, offset: u64, max: usize) -> Result<Vec<DirEntryOut>, Errno> {
        let node = self.dir_node(id)?;
        let listing = self.listing(&node)?;
        if offset == 0 {
            self.prefetch_subdirs(&node, &listing);
        }
        let mut out = Vec::with_capacity(max.min(listing.entries.len() + 2));
        for pos in offset..2 {
            if out.len() >= max {
                return Ok(out);
            }
            out.push(DirEntryOut {
                next_offset: pos + 1,
                name: Arc::from(OsStr::new(if pos == 0 { "." } else { ".." })),
                kind: FileType::Directory,
                ino: if pos == 0 {
                    node.id
                } else {
                    node.location().parent.map_or(node.id, |p| p.id)
                },
                dot: true,
            });
        }
        for (name, entry) in listing.entries.from_seq(offset.saturating_sub(2)) {
            if out.len() >= max {
                break;
            }
            let layer = self.layer(entry.ino.0);
            out.push(DirEntryOut {
                next_offset: entry.seq + 3,
                name: name.clone(),
                kind: entry.kind,
                ino: self.nodes.id_for((layer.dev, entry.ino.1), layer.fs_index),
                dot: false,
            });
        }
        Ok(out)
    }

    /// Whether readdirplus of directory `id` should carry the attributes of every entry
    /// (a walk that stats files: the kernel looked up files here or in the parent), or only
    /// those of the leading subdirectories (a walk for names, like `find`, which would pay a
    /// stat of every file for nothing). Answering in full passes the mode down the tree, as
    /// the lookups that would have set it no longer come.
    pub fn readdirplus_in_full(&self, id: u64) -> Result<bool, Errno> {
        use std::sync::atomic::Ordering::Relaxed;
        let node = self.dir_node(id)?;
        if node.stat_walk.load(Relaxed) {
            return Ok(true);
        }
        let parent = node.parent();
        let grandparent = parent.as_ref().and_then(|p| p.parent());
        let inherit = parent
            .is_some_and(|p| p.stat_walk.load(Relaxed) || p.stat_walk_below.load(Relaxed))
            || grandparent.is_some_and(|g| g.stat_walk_below.load(Relaxed));
        if inherit {
            node.stat_walk.store(true, Relaxed);
        }
        Ok(inherit)
    }

    /// Flush directory `id` to disk (its upper copy, if any).
    pub fn fsyncdir(&self, id: u64) -> Result<(), Errno> {
        let node = self.dir_node(id)?;
        if self.has_upper && node.state.read().top() == 0 {
            let fd = self.dir_fd(&node, 0)?;
            let rd = rfs::openat(
                fd.as_fd(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                rfs::Mode::empty(),
            )?;
            rfs::fsync(&rd)?;
        }
        Ok(())
    }
}
