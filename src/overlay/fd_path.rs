//! Paths through procfs for objects held as fds, so the path-only syscalls (the `l*xattr`
//! family) reach exactly the object an fd names, never a re-resolved path.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// A procfs path for `dir` (and `name` in it), so path-only calls work on fds.
pub fn proc_path(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> OsString {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    OsString::from_vec(p)
}
