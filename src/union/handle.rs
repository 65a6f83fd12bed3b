//! Open files and directories. A file handle is an fd of the real file in its layer (the lower
//! one until something writes); a directory handle is a snapshot of the merged listing, so
//! readdir offsets stay stable while entries change.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustix::fs::{self as rfs, FallocateFlags, FileType, OFlags, SeekFrom};
use rustix::io::Errno;

use super::dir::Listing;
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
}

/// One open directory.
#[derive(Debug)]
pub struct DirHandle {
    /// The directory node.
    pub node: Arc<Node>,
    /// The listing as of opendir (or the last rewind).
    snapshot: Mutex<Arc<Listing>>,
}

/// One entry returned by readdir.
#[derive(Debug, Clone)]
pub struct DirEntryOut {
    /// Offset of the next entry (what a later readdir passes back).
    pub next_offset: u64,
    /// Name of the entry.
    pub name: OsString,
    /// Its type.
    pub kind: FileType,
    /// Its inode number (the node id a lookup would give).
    pub ino: u64,
    /// Index into the snapshot, or `None` for `.` and `..`.
    pub index: Option<usize>,
}

/// All open files and directories, by handle number.
#[derive(Debug, Default)]
pub struct HandleTable {
    next: AtomicU64,
    files: RwLock<HashMap<u64, Arc<FileHandle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
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

    /// The open directory `fh`.
    pub fn dir(&self, fh: u64) -> Result<Arc<DirHandle>, Errno> {
        self.dirs.read().get(&fh).cloned().ok_or(Errno::BADF)
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
        let fd = self.with_name(node, Some(top), |dir, name| {
            rfs::openat(dir, name, oflags, rfs::Mode::empty())
        })?;
        Ok(FileHandle {
            fd,
            node: node.clone(),
            lower: !self.is_upper(top),
            copied: std::sync::OnceLock::new(),
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

    /// Open directory `id` for reading.
    pub fn opendir(&self, id: u64) -> Result<u64, Errno> {
        let node = self.dir_node(id)?;
        let listing = self.listing(&node)?;
        self.prefetch_subdirs(&node, &listing);
        let fh = self.handles.next();
        self.handles.dirs.write().insert(
            fh,
            Arc::new(DirHandle {
                node,
                snapshot: Mutex::new(listing),
            }),
        );
        Ok(fh)
    }

    /// Entries of open directory `fh` from `offset` on (`.` and `..` first), at most `max`.
    pub fn readdir(&self, fh: u64, offset: u64, max: usize) -> Result<Vec<DirEntryOut>, Errno> {
        let h = self.handles.dir(fh)?;
        if offset == 0 {
            // A rewind shows the directory as it is now.
            *h.snapshot.lock() = self.listing(&h.node)?;
        }
        let snapshot = h.snapshot.lock().clone();
        let mut out = Vec::new();
        let mut pos = offset;
        while out.len() < max {
            match pos {
                0 | 1 => out.push(DirEntryOut {
                    next_offset: pos + 1,
                    name: OsString::from(if pos == 0 { "." } else { ".." }),
                    kind: FileType::Directory,
                    ino: if pos == 0 {
                        h.node.id
                    } else {
                        h.node.location().parent.map_or(h.node.id, |p| p.id)
                    },
                    index: None,
                }),
                _ => {
                    let i = (pos - 2) as usize;
                    let Some((name, entry)) = snapshot.entries.get_index(i) else {
                        break;
                    };
                    let layer = self.layer(entry.ino.0);
                    out.push(DirEntryOut {
                        next_offset: pos + 1,
                        name: name.clone(),
                        kind: entry.kind,
                        ino: self.nodes.id_for((layer.dev, entry.ino.1), layer.fs_index),
                        index: Some(i),
                    });
                }
            }
            pos += 1;
        }
        Ok(out)
    }

    /// Whether readdirplus of open directory `fh` should carry the attributes of every entry
    /// (a walk that stats files: the kernel looked up files here or in the parent), or only
    /// those of the leading subdirectories (a walk for names, like `find`, which would pay a
    /// stat of every file for nothing). Answering in full passes the mode down the tree, as
    /// the lookups that would have set it no longer come.
    pub fn readdirplus_in_full(&self, fh: u64) -> Result<bool, Errno> {
        use std::sync::atomic::Ordering::Relaxed;
        let h = self.handles.dir(fh)?;
        let node = &h.node;
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

    /// Look up an entry of an open directory's snapshot (for readdirplus), counting a reference.
    pub fn lookup_in_snapshot(
        &self,
        fh: u64,
        index: usize,
    ) -> Result<(Arc<Node>, rfs::Stat), Errno> {
        let h = self.handles.dir(fh)?;
        let snapshot = h.snapshot.lock().clone();
        let (name, _) = snapshot.entries.get_index(index).ok_or(Errno::NOENT)?;
        // Answer from the current state: the entry may have changed since the snapshot.
        self.lookup(h.node.id, name)
    }

    /// Close directory `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.handles.dirs.write().remove(&fh);
    }

    /// Flush directory `fh` to disk (its upper copy, if any).
    pub fn fsyncdir(&self, fh: u64) -> Result<(), Errno> {
        let h = self.handles.dir(fh)?;
        if self.has_upper && h.node.state.read().top() == 0 {
            let fd = self.dir_fd(&h.node, 0)?;
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
