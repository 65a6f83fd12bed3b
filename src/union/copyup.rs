//! Copy-up: bringing an object from a lower layer into the upper one before it changes.
//!
//! The copy is made in the work directory (data, owner, mode, xattrs, times; the data is
//! fsynced unless the mount is volatile) and only then renamed into place in the upper layer,
//! so a crash at any point leaves the old view or the new one, never a partial file. Parent
//! directories are copied up first, top-down.

use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RawDir, SeekFrom, Timestamps};
use rustix::io::Errno;

use super::dir::LayerIndex;
use super::inode::Node;
use super::xattr::XattrTarget;
use super::Union;
use crate::overlay::fd_path::proc_path;
use crate::overlay::format::{self, XattrNamespace};

/// The xattr holding file capabilities, which the kernel drops on chown and on writes.
const FILE_CAPS: &str = "security.capability";

/// Size of the bounce buffer when neither reflink nor `copy_file_range` works.
const COPY_CHUNK: usize = 1 << 20;

/// How much of a file a copy-up brings into the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Metadata and data: the file is about to be written.
    Full,
    /// Metadata only; the file is about to be truncated to size 0.
    Empty,
    /// Metadata only; the data stays in the lower file until something writes (the kernel's
    /// `metacopy`). Falls back to `Full` where metacopy does not apply.
    Meta,
}

impl Union {
    /// Make sure `node` lives in the upper layer with its data, copying it (and its parents)
    /// up if needed.
    pub fn copy_up(&self, node: &Arc<Node>) -> Result<(), Errno> {
        self.copy_up_with(node, CopyMode::Full)
    }

    /// Copy `node` up for a truncation to size 0: its data need not be copied.
    pub fn copy_up_empty(&self, node: &Arc<Node>) -> Result<(), Errno> {
        self.copy_up_with(node, CopyMode::Empty)
    }

    /// Copy `node` up for a change of metadata only (chmod, chown, utimes, xattrs).
    pub fn copy_up_meta(&self, node: &Arc<Node>) -> Result<(), Errno> {
        self.copy_up_with(node, CopyMode::Meta)
    }

    /// Copy up `node` as `mode` says; completes a metacopy when data is needed.
    pub fn copy_up_with(&self, node: &Arc<Node>, mode: CopyMode) -> Result<(), Errno> {
        self.check_writable()?;
        {
            let state = node.state.read();
            if state.top() == 0 && (state.metacopy.is_none() || mode == CopyMode::Meta) {
                return Ok(());
            }
        }
        let loc = node.location();
        let parent = loc.parent.clone().ok_or(Errno::STALE)?;
        self.copy_up(&parent)?;
        let pstate = parent.state.write();
        let mut state = node.state.write();
        if node.is_unlinked() {
            return Err(Errno::NOENT);
        }
        let name = node.location().name;
        if state.top() == 0 {
            if let (Some(data_layer), false) = (state.metacopy, mode == CopyMode::Meta) {
                self.complete_metacopy(&parent, &name, data_layer, mode == CopyMode::Full)?;
                state.metacopy = None;
            }
            return Ok(());
        }
        let src = state.top();
        let copied = self.copy_object(&parent, src, &name, mode)?;
        let metacopy = copied.metacopy;
        self.nodes.alias(copied.upper_key, node.id);
        state.layers.insert(0, 0);
        if !node.is_dir {
            state.layers.truncate(1);
        }
        state.metacopy = metacopy.then_some(src);
        drop(state);
        let mut pstate = pstate;
        if let Some(listing) = pstate.listing.as_mut() {
            if let Some(entry) = Arc::make_mut(listing).entries.get_mut(&name) {
                entry.layers.insert(0, 0);
                if !node.is_dir {
                    entry.layers.truncate(1);
                }
                entry.covers_lower = true;
            }
        }
        drop(pstate);
        let st = &copied.source;
        if st.st_nlink > 1 && !node.is_dir {
            // Other names of this lower inode must stay linked to the copy.
            self.link_aliases(node, src, st.st_ino)?;
            let linked = self
                .with_name(node, Some(0), |dir, name| {
                    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                })
                .map(|u| u.st_nlink)
                .unwrap_or(st.st_nlink);
            // The union's count before (lower count plus removals) is the count after.
            let adjust = &node.nlink_adjust;
            let before = st.st_nlink as i64 + adjust.load(std::sync::atomic::Ordering::Relaxed);
            adjust.store(before - linked as i64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Bring the data of the metacopy file `name` (in `parent`'s upper directory) up from
    /// `data_layer` (or only drop the marker when `with_data` is false and the caller truncates
    /// to zero). Until the marker goes, reads still come from the lower file, so a crash in
    /// the middle loses nothing.
    fn complete_metacopy(
        &self,
        parent: &Node,
        name: &OsStr,
        data_layer: LayerIndex,
        with_data: bool,
    ) -> Result<(), Errno> {
        let upper_dir = self.dir_fd(parent, 0)?;
        let upper = open_entry(upper_dir.as_fd(), name, OFlags::RDWR)?;
        // Writing the data drops file capabilities; put them back afterwards.
        let mut caps = vec![0u8; 256];
        let caps = rfs::fgetxattr(&upper, FILE_CAPS, &mut caps[..])
            .ok()
            .map(|n| caps[..n].to_vec());
        if with_data {
            let lower_dir = self.dir_fd(parent, data_layer)?;
            self.ensure_data_at(data_layer, lower_dir.as_fd(), name)?;
            let lower = open_entry(lower_dir.as_fd(), name, OFlags::RDONLY)?;
            let size = rfs::fstat(&lower)?.st_size as u64;
            copy_data(lower.as_fd(), upper.as_fd(), size)?;
        } else {
            rfs::ftruncate(&upper, 0)?;
        }
        if let Some(caps) = caps {
            rfs::fsetxattr(&upper, FILE_CAPS, &caps, rfs::XattrFlags::empty())?;
        }
        if !self.options.volatile {
            rfs::fsync(&upper)?;
        }
        for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
            match rfs::fremovexattr(&upper, ns.metacopy()) {
                Ok(()) | Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Copy `name` of directory `parent` from layer `src` into the upper layer, atomically.
    fn copy_object(
        &self,
        parent: &Node,
        src: LayerIndex,
        name: &OsStr,
        mode: CopyMode,
    ) -> Result<Copied, Errno> {
        let src_dir = self.dir_fd(parent, src)?;
        let dst_dir = self.dir_fd(parent, 0)?;
        let work = self.work_fd()?;
        let st = rfs::statat(src_dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
        let tmp = self.temp_name();
        let metacopy = mode == CopyMode::Meta
            && self.options.metacopy
            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_size > 0;
        let data = match mode {
            CopyMode::Full => DataCopy::Bytes,
            CopyMode::Meta if !metacopy => DataCopy::Bytes,
            CopyMode::Meta => DataCopy::Marker,
            CopyMode::Empty => DataCopy::Nothing,
        };
        if data == DataCopy::Bytes && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
            self.ensure_data_at(src, src_dir.as_fd(), name)?;
        }
        let result = self.make_copy(src_dir.as_fd(), name, &st, work.as_fd(), &tmp, data);
        if let Err(e) = result {
            let _ = remove_any(work.as_fd(), &tmp);
            return Err(e);
        }
        let parent_before = rfs::fstat(dst_dir.as_fd())?;
        rfs::renameat(work, &tmp, dst_dir.as_fd(), name).inspect_err(|_| {
            let _ = remove_any(work.as_fd(), &tmp);
        })?;
        // A copy-up is not a change of the parent: keep its times (as the kernel does).
        rfs::utimensat(
            dst_dir.as_fd(),
            ".",
            &times_of(&parent_before),
            AtFlags::empty(),
        )?;
        let up = rfs::statat(dst_dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(Copied {
            upper_key: (up.st_dev, up.st_ino),
            metacopy,
            source: st,
        })
    }

    /// Build a copy of `name` (stat `st`) from `src_dir` as `tmp` in the work directory.
    fn make_copy(
        &self,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &rfs::Stat,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        data: DataCopy,
    ) -> Result<(), Errno> {
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        let ftype = FileType::from_raw_mode(st.st_mode);
        match ftype {
            FileType::RegularFile => {
                let to = rfs::openat(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                match data {
                    DataCopy::Bytes => {
                        let from = rfs::openat(
                            src_dir,
                            name,
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        copy_data(from.as_fd(), to.as_fd(), st.st_size as u64)?
                    }
                    DataCopy::Marker => {
                        // Same size, no blocks: the data stays below until a write.
                        rfs::ftruncate(&to, st.st_size as u64)?;
                        rfs::fsetxattr(
                            &to,
                            self.xattr_ns.metacopy(),
                            b"",
                            rfs::XattrFlags::empty(),
                        )?;
                    }
                    DataCopy::Nothing => {}
                }
                // Owner, then mode, then xattrs: chown and writes drop file capabilities
                // (security.capability), which must survive the copy.
                if (st.st_uid, st.st_gid) != self.work_owner {
                    rfs::fchown(&to, Some(uid(st.st_uid)), Some(gid(st.st_gid)))
                        .map_err(unmappable_owner)?;
                }
                rfs::fchmod(&to, mode)?;
                copy_xattrs(
                    &XattrTarget::Entry(src_dir, name),
                    &XattrTarget::Entry(work, tmp),
                )?;
                rfs::futimens(&to, &times_of(st))?;
                if !self.options.volatile && data == DataCopy::Bytes {
                    rfs::fsync(&to)?;
                }
            }
            FileType::Directory => {
                rfs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
                copy_xattrs(
                    &XattrTarget::Entry(src_dir, name),
                    &XattrTarget::Entry(work, tmp),
                )?;
                let fd = rfs::openat(
                    work,
                    tmp,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if (st.st_uid, st.st_gid) != self.work_owner {
                    rfs::fchown(&fd, Some(uid(st.st_uid)), Some(gid(st.st_gid)))
                        .map_err(unmappable_owner)?;
                }
                rfs::fchmod(&fd, mode)?;
                rfs::futimens(&fd, &times_of(st))?;
            }
            FileType::Symlink => {
                let target = rfs::readlinkat(src_dir, name, Vec::new())?;
                rfs::symlinkat(target.as_c_str(), work, tmp)?;
                finish_entry(src_dir, name, work, tmp, st, None)?;
            }
            _ => {
                rfs::mknodat(work, tmp, ftype, mode, st.st_rdev)?;
                finish_entry(src_dir, name, work, tmp, st, Some(mode))?;
            }
        }
        Ok(())
    }
}

/// The outcome of copying one object up.
struct Copied {
    /// (device, inode) of the upper copy.
    upper_key: (u64, u64),
    /// Whether the copy holds metadata only.
    metacopy: bool,
    /// The lower object as it was.
    source: rfs::Stat,
}

/// What a regular file's copy gets of the original's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataCopy {
    /// All of it.
    Bytes,
    /// None, and a metacopy marker saying where it still is.
    Marker,
    /// None (the file is about to be emptied).
    Nothing,
}

/// Give the copy `tmp` (in `work`) of `name` (in `src_dir`) the original's owner, mode
/// (`None` for a symlink, which has none to set), xattrs and times, in that order.
fn finish_entry(
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    work: BorrowedFd<'_>,
    tmp: &OsStr,
    st: &rfs::Stat,
    mode: Option<Mode>,
) -> Result<(), Errno> {
    rfs::chownat(
        work,
        tmp,
        Some(uid(st.st_uid)),
        Some(gid(st.st_gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(unmappable_owner)?;
    if let Some(mode) = mode {
        rfs::chmodat(work, tmp, mode, AtFlags::empty())?;
    }
    copy_xattrs(
        &XattrTarget::Entry(src_dir, name),
        &XattrTarget::Entry(work, tmp),
    )?;
    rfs::utimensat(work, tmp, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
}

/// A copy cannot be given an owner our user namespace does not map (chown says EINVAL):
/// kernel overlayfs refuses that copy-up with EOVERFLOW, and so do we.
fn unmappable_owner(e: Errno) -> Errno {
    if e == Errno::INVAL {
        Errno::OVERFLOW
    } else {
        e
    }
}

fn uid(raw: u32) -> rfs::Uid {
    rfs::Uid::from_raw(raw)
}

fn gid(raw: u32) -> rfs::Gid {
    rfs::Gid::from_raw(raw)
}

/// Access and modification times of a stat result, for `utimensat`.
pub fn times_of(st: &rfs::Stat) -> Timestamps {
    Timestamps {
        last_access: rfs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rfs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Copy `size` bytes of file data: a reflink where the filesystem shares extents, else
/// `copy_file_range` over the data segments only (holes stay holes), else read and write.
pub fn copy_data(from: BorrowedFd<'_>, to: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    if size == 0 {
        return Ok(());
    }
    if rfs::ioctl_ficlone(to, from).is_ok() {
        return Ok(());
    }
    let mut offset = 0u64;
    while offset < size {
        let data = match rfs::seek(from, SeekFrom::Data(offset)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(_) => offset,
        };
        let hole = rfs::seek(from, SeekFrom::Hole(data)).unwrap_or(size);
        copy_range(from, to, data, hole.min(size))?;
        offset = hole;
    }
    rfs::ftruncate(to, size)
}

fn copy_range(from: BorrowedFd<'_>, to: BorrowedFd<'_>, start: u64, end: u64) -> Result<(), Errno> {
    let mut pos = start;
    while pos < end {
        let (mut off_in, mut off_out) = (pos, pos);
        let want = (end - pos).min(1 << 30) as usize;
        match rfs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(n) => pos += n as u64,
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) | Err(Errno::INVAL) => {
                return bounce_copy(from, to, pos, end);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn bounce_copy(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> Result<(), Errno> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = rustix::io::pread(from, &mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(to, &buf[done..n], pos + done as u64)?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// Copy every xattr except overlay bookkeeping from `from` to `to`.
pub fn copy_xattrs(from: &XattrTarget<'_>, to: &XattrTarget<'_>) -> Result<(), Errno> {
    let names = match from.list() {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if format::is_private_xattr(name) {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let value = match from.get(name) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        match to.set(name, &value, rfs::XattrFlags::empty()) {
            Ok(()) => {}
            // Namespaces the upper filesystem or our privileges do not allow (the kernel
            // skips these too rather than failing the copy-up).
            Err(Errno::NOTSUP) | Err(Errno::PERM) if !name.as_bytes().starts_with(b"user.") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Remove `name` in `dir`, whatever it is (a directory with all its content).
pub fn remove_any(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            let sub = rfs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_contents(sub.as_fd())?;
            rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        other => other,
    }
}

/// Remove everything inside the directory open (readable) as `dir`.
pub fn remove_contents(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    loop {
        let names = list_names(dir)?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            match remove_any(dir, &name) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn list_names(dir: BorrowedFd<'_>) -> Result<Vec<OsString>, Errno> {
    rfs::seek(dir, SeekFrom::Start(0))?;
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut raw = RawDir::new(dir, &mut buf);
    let mut out = Vec::new();
    while let Some(e) = raw.next() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsString::from_vec(n.to_vec()));
        }
    }
    Ok(out)
}

/// Path naming `name` in `dir` through procfs, for calls that only take paths.
pub fn entry_path(dir: BorrowedFd<'_>, name: &OsStr) -> OsString {
    proc_path(dir, Some(name))
}

/// An fd of `name` in `dir` opened for data access with `flags` (never following a symlink).
pub fn open_entry(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Union {
    /// Bring the data of every metacopy file in the upper layer up, so the upper layer reads
    /// the same under kernel overlayfs without `metacopy=on`. Run when the mount ends.
    /// Returns how many files were completed.
    pub fn complete_all_metacopies(&self) -> Result<usize, Errno> {
        if !self.has_upper {
            return Ok(0);
        }
        let root = rfs::openat(
            self.layer(0).root.as_fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut path = Vec::new();
        self.complete_in_dir(root.as_fd(), &mut path)
    }

    fn complete_in_dir(
        &self,
        dir: BorrowedFd<'_>,
        path: &mut Vec<OsString>,
    ) -> Result<usize, Errno> {
        let mut done = 0;
        for name in list_names(dir)? {
            let st = match rfs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(_) => continue,
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let sub = open_entry(dir, &name, OFlags::RDONLY | OFlags::DIRECTORY)?;
                    path.push(name);
                    done += self.complete_in_dir(sub.as_fd(), path)?;
                    path.pop();
                }
                FileType::RegularFile if format::has_metacopy(dir, &name) => {
                    self.complete_one(dir, path, &name)?;
                    done += 1;
                }
                _ => {}
            }
        }
        Ok(done)
    }

    /// Copy the data of the metacopy file `name` (upper directory `dir` at `path`) from the
    /// topmost lower layer that has it, then drop the marker.
    fn complete_one(
        &self,
        dir: BorrowedFd<'_>,
        path: &[OsString],
        name: &OsStr,
    ) -> Result<(), Errno> {
        let comps: Vec<&OsStr> = path.iter().map(|c| c.as_os_str()).collect();
        for layer in self.layers.iter().skip(1) {
            let Ok(ldir) = layer.open_dir(&comps, OFlags::PATH) else {
                continue;
            };
            let Ok(lower) = open_entry(ldir.as_fd(), name, OFlags::RDONLY) else {
                continue;
            };
            let upper = open_entry(dir, name, OFlags::RDWR)?;
            let size = rfs::fstat(&upper)?.st_size as u64;
            copy_data(lower.as_fd(), upper.as_fd(), size)?;
            if !self.options.volatile {
                rfs::fsync(&upper)?;
            }
            for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
                let _ = rfs::fremovexattr(&upper, ns.metacopy());
            }
            return Ok(());
        }
        tracing::warn!("metacopy file {:?}/{:?} has no lower data", path, name);
        Ok(())
    }
}
