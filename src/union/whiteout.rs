//! Whiteouts as hard links of one shared whiteout inode kept in the work directory, as kernel
//! overlayfs makes them: removing a lower file then costs a link, not a new inode (an inode
//! allocation, and on ext4 without a journal a scan past recently freed inodes). A link is
//! still a 0/0 character device, so the upper layer reads the same everywhere. Where the
//! shared inode cannot be made or linked, each whiteout is made on its own as before.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use rustix::io::Errno;

use super::Union;
use crate::overlay::format::{self, WhiteoutForm};

/// Name of the shared whiteout inode in the work directory.
const SHARED: &str = "#strata-whiteout";

impl Union {
    /// Make a whiteout called `name` in `dir` (nothing may be there).
    pub(super) fn make_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<WhiteoutForm, Errno> {
        match self.link_shared_whiteout(dir, name) {
            Ok(()) => Ok(WhiteoutForm::Device),
            Err(Errno::EXIST) => Err(Errno::EXIST),
            Err(_) => format::create_whiteout(dir, name),
        }
    }

    /// Make a 0/0 device whiteout called `name` in `dir`: a link of the shared one, or a new
    /// device if that cannot be.
    pub(super) fn make_device_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), Errno> {
        match self.link_shared_whiteout(dir, name) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(Errno::EXIST),
            Err(_) => rfs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0),
        }
    }

    /// Link the shared whiteout as `name` in `dir`, making (or renewing, when it has all the
    /// links it can have) the shared inode as needed.
    fn link_shared_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        if self.no_shared_whiteout.load(Ordering::Relaxed) {
            return Err(Errno::NOTSUP);
        }
        let work = self.work_fd()?;
        for _ in 0..2 {
            match rfs::linkat(work.as_fd(), SHARED, dir, name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::NOENT) | Err(Errno::MLINK) => {
                    if let Err(e) = self.renew_shared_whiteout() {
                        self.no_shared_whiteout.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Err(Errno::EXIST) => return Err(Errno::EXIST),
                Err(e) => {
                    self.no_shared_whiteout.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Err(Errno::MLINK)
    }

    /// Remove the shared whiteout (when the mount ends: the work directory is left empty; the
    /// links in the upper layer stay whiteouts).
    pub fn drop_shared_whiteout(&self) {
        if let Ok(work) = self.work_fd() {
            let _ = rfs::unlinkat(work, SHARED, AtFlags::empty());
        }
    }

    /// Put a fresh shared whiteout in place (atomically: links made meanwhile keep the old).
    fn renew_shared_whiteout(&self) -> Result<(), Errno> {
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        rfs::mknodat(work, &tmp, FileType::CharacterDevice, Mode::empty(), 0)?;
        rfs::renameat(work, &tmp, work, SHARED).inspect_err(|_| {
            let _ = rfs::unlinkat(work, &tmp, AtFlags::empty());
        })
    }
}
