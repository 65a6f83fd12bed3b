//! Extended attributes of union objects. Overlay bookkeeping (`trusted.overlay.*`,
//! `user.overlay.*`) is never listed, read or written by clients.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, XattrFlags};
use rustix::io::Errno;

use super::Union;
use crate::overlay::fd_path::proc_path;
use crate::overlay::format;

/// Largest xattr value or name list the kernel passes (XATTR_SIZE_MAX).
const XATTR_MAX: usize = 65536;
/// First buffer tried: most values and lists fit, and the kernel zeroes a buffer of the size
/// asked for on every call (16 pages for XATTR_MAX, a visible share of a GETXATTR's cost).
const XATTR_FIRST: usize = 512;

/// Call `read` with a small buffer, then, if the value is larger (ERANGE), with the largest.
fn read_sized(mut read: impl FnMut(&mut [u8]) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; XATTR_FIRST];
    let n = match read(&mut buf) {
        Err(Errno::RANGE) => {
            buf.resize(XATTR_MAX, 0);
            read(&mut buf)?
        }
        r => r?,
    };
    buf.truncate(n);
    Ok(buf)
}

/// Where the xattrs of one layer object are: a directory fd, or a name in a directory.
pub enum XattrTarget<'a> {
    /// The directory itself (an `O_PATH` fd is fine).
    Dir(BorrowedFd<'a>),
    /// The entry `name` in the directory fd, never following a symlink.
    Entry(BorrowedFd<'a>, &'a OsStr),
}

impl XattrTarget<'_> {
    /// The raw, NUL-separated list of names.
    pub fn list(&self) -> Result<Vec<u8>, Errno> {
        read_sized(|buf| match self {
            XattrTarget::Dir(fd) => rfs::listxattr(proc_path(*fd, None), buf),
            XattrTarget::Entry(fd, name) => rfs::llistxattr(proc_path(*fd, Some(name)), buf),
        })
    }

    /// The value of `name`.
    pub fn get(&self, name: &OsStr) -> Result<Vec<u8>, Errno> {
        read_sized(|buf| match self {
            XattrTarget::Dir(fd) => rfs::getxattr(proc_path(*fd, None), name, buf),
            XattrTarget::Entry(fd, entry) => rfs::lgetxattr(proc_path(*fd, Some(entry)), name, buf),
        })
    }

    /// Set `name` to `value`.
    pub fn set(&self, name: &OsStr, value: &[u8], flags: XattrFlags) -> Result<(), Errno> {
        match self {
            XattrTarget::Dir(fd) => rfs::setxattr(proc_path(*fd, None), name, value, flags),
            XattrTarget::Entry(fd, entry) => {
                rfs::lsetxattr(proc_path(*fd, Some(entry)), name, value, flags)
            }
        }
    }

    /// Remove `name`.
    pub fn remove(&self, name: &OsStr) -> Result<(), Errno> {
        match self {
            XattrTarget::Dir(fd) => rfs::removexattr(proc_path(*fd, None), name),
            XattrTarget::Entry(fd, entry) => rfs::lremovexattr(proc_path(*fd, Some(entry)), name),
        }
    }
}

fn refuse_private(name: &OsStr) -> Result<(), Errno> {
    if format::is_private_xattr(name.as_bytes()) {
        Err(Errno::OPNOTSUPP)
    } else {
        Ok(())
    }
}

impl Union {
    /// Run `f` on the xattr target of node `id`'s visible object.
    fn with_xattr_target<T>(
        &self,
        id: u64,
        f: impl FnOnce(&XattrTarget<'_>) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let node = self.node(id)?;
        let top = node.state.read().top();
        if node.is_dir {
            let fd = self.dir_fd(&node, top)?;
            f(&XattrTarget::Dir(std::os::fd::AsFd::as_fd(&*fd)))
        } else {
            self.with_name(&node, Some(top), |dir, name| {
                f(&XattrTarget::Entry(dir, name))
            })
        }
    }

    /// Value of xattr `name` of node `id`.
    pub fn getxattr(&self, id: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        refuse_private(name)?;
        self.with_xattr_target(id, |t| t.get(name))
    }

    /// NUL-separated xattr names of node `id`, bookkeeping removed.
    pub fn listxattr(&self, id: u64) -> Result<Vec<u8>, Errno> {
        let raw = self.with_xattr_target(id, |t| t.list())?;
        let mut out = Vec::with_capacity(raw.len());
        for name in raw.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if !format::is_private_xattr(name) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Set xattr `name` of node `id`, copying it up first.
    pub fn setxattr(&self, id: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
        refuse_private(name)?;
        let node = self.node(id)?;
        self.copy_up_meta(&node)?;
        let flags = XattrFlags::from_bits(flags as _).ok_or(Errno::INVAL)?;
        self.with_xattr_target(id, |t| t.set(name, value, flags))
    }

    /// Remove xattr `name` of node `id`, copying it up first.
    pub fn removexattr(&self, id: u64, name: &OsStr) -> Result<(), Errno> {
        refuse_private(name)?;
        let node = self.node(id)?;
        // Removing what is not there must not copy anything up.
        self.with_xattr_target(id, |t| t.get(name))?;
        self.copy_up_meta(&node)?;
        self.with_xattr_target(id, |t| t.remove(name))
    }
}
