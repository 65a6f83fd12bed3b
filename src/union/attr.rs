//! Changing attributes: chmod, chown, truncate and utimens, each after a copy-up.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
use rustix::io::Errno;

use super::Union;

/// A time to set: a given instant or "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// Seconds and nanoseconds since the epoch.
    At(i64, u32),
    /// The current time.
    Now,
}

/// The changes of one setattr request; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct AttrChanges {
    /// New permission bits (type bits are ignored).
    pub mode: Option<u32>,
    /// New owner, as the client sees ids.
    pub uid: Option<u32>,
    /// New group, as the client sees ids.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// The open file the request came through (ftruncate, futimens).
    pub fh: Option<u64>,
    /// Clear set-id bits as part of the change (`FATTR_KILL_SUIDGID`: a truncate by a caller
    /// without `CAP_FSETID`, or a chown).
    pub kill_suidgid: bool,
}

fn timespec(t: Option<TimeSet>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(TimeSet::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(TimeSet::At(s, ns)) => Timespec {
            tv_sec: s as _,
            tv_nsec: ns as _,
        },
    }
}

impl AttrChanges {
    /// Whether the request only asks to kill set-id bits (no field to set).
    fn is_kill_only(&self) -> bool {
        self.kill_suidgid
            && self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// The permission bits of `mode` once set-id bits are killed as the kernel kills them on a
/// write, truncate or chown: set-uid always, set-gid when group-executable (otherwise it marks
/// mandatory locking). `None` when nothing changes.
pub fn killed_mode(mode: u32) -> Option<u32> {
    let mut m = mode & 0o7777;
    if m & 0o4000 != 0 {
        m &= !0o4000;
    }
    if m & 0o2010 == 0o2010 {
        m &= !0o2000;
    }
    (m != mode & 0o7777).then_some(m)
}

impl Union {
    /// Kill set-id bits of open file `fh` (a write or `O_TRUNC` open by a caller without
    /// `CAP_FSETID`, under `FUSE_HANDLE_KILLPRIV_V2`). File capabilities need nothing from us:
    /// the backing filesystem drops `security.capability` on every write and truncate.
    pub fn kill_suidgid(&self, fh: u64) -> Result<(), Errno> {
        let h = self.handles.file(fh)?;
        if h.lower {
            return Ok(());
        }
        let st = rfs::fstat(&h.fd)?;
        if let Some(mode) = killed_mode(st.st_mode) {
            rfs::fchmod(&h.fd, Mode::from_raw_mode(mode))?;
        }
        Ok(())
    }

    /// Apply `changes` to node `id` and return its new attributes.
    pub fn setattr(&self, id: u64, changes: &AttrChanges) -> Result<rfs::Stat, Errno> {
        self.check_writable()?;
        let node = self.node(id)?;
        if node.is_unlinked() {
            return self.setattr_unlinked(&node, changes);
        }
        if changes.is_kill_only() {
            let st = self.getattr(id)?;
            let regular = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile;
            if !regular || killed_mode(st.st_mode).is_none() {
                // Nothing to kill: no copy-up for a request that changes nothing.
                return Ok(st);
            }
        }
        match changes.size {
            Some(0) => self.copy_up_empty(&node)?,
            Some(_) => self.copy_up(&node)?,
            None => self.copy_up_meta(&node)?,
        }
        // Directories are addressed as "." in their own fd; others by name in the parent.
        if node.is_dir {
            let fd = self.dir_fd(&node, 0)?;
            self.apply_changes(fd.as_fd(), OsStr::new("."), true, changes)?;
        } else {
            self.with_name(&node, Some(0), |dir, name| {
                self.apply_changes(dir, name, false, changes)
            })?;
        }
        self.getattr(id)
    }

    /// `setattr` of a file whose last name is gone but which is still open (ftruncate,
    /// fchmod, fchown, futimens of an unlinked file): the change goes to the open file, as
    /// the kernel's does. An unlinked file is always an upper one (its unlink copied nothing
    /// up only when it was in a lower layer, and then it is gone from the union: `ENOENT`).
    fn setattr_unlinked(
        &self,
        node: &super::inode::Node,
        changes: &AttrChanges,
    ) -> Result<rfs::Stat, Errno> {
        let h = changes
            .fh
            .and_then(|fh| self.handles.file(fh).ok())
            .or_else(|| self.handles.any_file_of(node.id))
            .filter(|h| !h.lower)
            .ok_or(Errno::NOENT)?;
        self.apply(Target::Open(h.fd.as_fd()), changes)?;
        Ok(self.client_stat(node, rfs::fstat(&h.fd)?))
    }

    /// Apply `changes` to `name` in `dir` (an upper-layer directory fd).
    fn apply_changes(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        is_dir: bool,
        changes: &AttrChanges,
    ) -> Result<(), Errno> {
        if changes.size.is_some() && is_dir {
            return Err(Errno::ISDIR);
        }
        let via_handle = changes
            .fh
            .and_then(|fh| self.handles.file(fh).ok())
            .filter(|h| !h.lower);
        match (changes.size, via_handle) {
            (Some(size), Some(h)) => rfs::ftruncate(&h.fd, size)?,
            (Some(size), None) => {
                let fd = rfs::openat(
                    dir,
                    name,
                    OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                rfs::ftruncate(&fd, size)?;
            }
            (None, _) => {}
        }
        let changes = AttrChanges {
            size: None,
            ..changes.clone()
        };
        self.apply(Target::Named { dir, name, is_dir }, &changes)
    }

    /// Apply `changes` (size included) to `target`.
    fn apply(&self, target: Target<'_>, changes: &AttrChanges) -> Result<(), Errno> {
        if let (Some(size), Target::Open(fd)) = (changes.size, &target) {
            rfs::ftruncate(fd, size)?;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            let uid = changes
                .uid
                .map(|u| self.ids.uid_to_host(u))
                .transpose()?
                .map(rfs::Uid::from_raw);
            let gid = changes
                .gid
                .map(|g| self.ids.gid_to_host(g))
                .transpose()?
                .map(rfs::Gid::from_raw);
            target.chown(uid, gid)?;
        }
        if changes.kill_suidgid && !target.is_dir() && changes.mode.is_none() {
            // Our own truncate keeps set-id bits (we have CAP_FSETID); our chown already
            // cleared them, as every chown does.
            let st = target.stat()?;
            let regular = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile;
            if let Some(mode) = killed_mode(st.st_mode).filter(|_| regular) {
                target.chmod(mode)?;
            }
        }
        if let Some(mode) = changes.mode {
            target.chmod(mode & 0o7777)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            target.set_times(&Timestamps {
                last_access: timespec(changes.atime),
                last_modification: timespec(changes.mtime),
            })?;
        }
        Ok(())
    }
}

/// What a change of attributes applies to: a name in an upper directory, or an open file.
enum Target<'a> {
    /// `name` in directory `dir` (never followed if it is a symlink).
    Named {
        dir: BorrowedFd<'a>,
        name: &'a OsStr,
        is_dir: bool,
    },
    /// An open file with no name left.
    Open(BorrowedFd<'a>),
}

impl Target<'_> {
    fn is_dir(&self) -> bool {
        matches!(self, Target::Named { is_dir: true, .. })
    }

    fn chown(&self, uid: Option<rfs::Uid>, gid: Option<rfs::Gid>) -> Result<(), Errno> {
        match self {
            Target::Named { dir, name, .. } => {
                rfs::chownat(dir, *name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            }
            Target::Open(fd) => rfs::fchown(fd, uid, gid),
        }
    }

    fn stat(&self) -> Result<rfs::Stat, Errno> {
        match self {
            Target::Named { dir, name, .. } => rfs::statat(dir, *name, AtFlags::SYMLINK_NOFOLLOW),
            Target::Open(fd) => rfs::fstat(fd),
        }
    }

    fn chmod(&self, mode: u32) -> Result<(), Errno> {
        let mode = Mode::from_raw_mode(mode);
        match self {
            Target::Named { dir, name, .. } => rfs::chmodat(dir, *name, mode, AtFlags::empty()),
            Target::Open(fd) => rfs::fchmod(fd, mode),
        }
    }

    fn set_times(&self, times: &Timestamps) -> Result<(), Errno> {
        match self {
            Target::Named { dir, name, .. } => {
                rfs::utimensat(dir, *name, times, AtFlags::SYMLINK_NOFOLLOW)
            }
            Target::Open(fd) => rfs::futimens(fd, times),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::killed_mode;

    #[test]
    fn kills_setuid_and_group_executable_setgid_only() {
        assert_eq!(killed_mode(0o100755), None);
        assert_eq!(killed_mode(0o104755), Some(0o755));
        assert_eq!(killed_mode(0o102755), Some(0o755));
        assert_eq!(
            killed_mode(0o102745),
            None,
            "set-gid without g+x marks locking"
        );
        assert_eq!(killed_mode(0o106745), Some(0o2745));
        assert_eq!(killed_mode(0o101777), None, "sticky stays");
    }
}
