//! Resolution beneath a root: every path that comes from a layer, a tar or a Dockerfile is
//! opened relative to a directory fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`,
//! so `..`, absolute paths and symlinks can never lead outside it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Longest relative path handed to one `openat2`; longer ones are walked in pieces, so trees
/// deeper than PATH_MAX still work.
const MAX_PATH_CHUNK: usize = 3072;

/// Resolution rules for every path inside a layer: stay beneath the root, follow no symlink.
pub const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Open `components` beneath `dir`, in pieces no longer than [`MAX_PATH_CHUNK`].
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    components: &[&OsStr],
    flags: OFlags,
) -> Result<OwnedFd, Errno> {
    if components.is_empty() {
        return rfs::openat2(dir, ".", flags, Mode::empty(), BENEATH);
    }
    let mut start = 0;
    let mut current: Option<OwnedFd> = None;
    while start < components.len() {
        let mut end = start;
        let mut len = 0;
        while end < components.len()
            && (end == start || len + components[end].len() + 1 < MAX_PATH_CHUNK)
        {
            len += components[end].len() + 1;
            end += 1;
        }
        let path = join(&components[start..end]);
        let last = end == components.len();
        let step_flags = if last {
            flags
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW
        };
        let base = current.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        let fd = rfs::openat2(base, path.as_os_str(), step_flags, Mode::empty(), BENEATH)?;
        current = Some(fd);
        start = end;
    }
    Ok(current.expect("at least one component"))
}

/// Join path components with `/` (names are bytes; nothing is decoded).
pub fn join(components: &[&OsStr]) -> OsString {
    let mut out = Vec::with_capacity(components.iter().map(|c| c.len() + 1).sum());
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(out)
}

/// Whether `name` is a single, valid directory entry name (no `/`, not `.` or `..`, not empty).
pub fn valid_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}
