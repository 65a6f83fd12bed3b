//! Layer roots that show no submounts. Kernel overlayfs resolves layer paths on private
//! clones of the layers' mounts, so a mount point inside a layer shows the directory
//! underneath (usually empty), and the overlay never enters another mount through a layer,
//! least of all its own. We do the same: each layer is reached through a detached,
//! non-recursive clone of its mount (`open_tree(OPEN_TREE_CLONE)` without `AT_RECURSIVE`),
//! made private so that no mount made later (ours, above all) propagates into it. Every
//! `*at()` beneath such a root, on any thread, then stays on the layer's own filesystem.
//!
//! A clone shares the superblock, so device and inode numbers stay what they were. Cloning
//! needs `CAP_SYS_ADMIN` over the mount namespace (root, or inside `unshare -Urm`); where it
//! is refused the layers stay as opened and [`super::setup`] refuses the layouts in which the
//! daemon could reach its own mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{open_tree, OpenTreeFlags};

use super::overlap::dir_id;

/// `MOUNT_ATTR_RDONLY`, `MOUNT_ATTR_NOATIME` and the atime field mask (`linux/mount.h`).
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;

/// A detached clone of the mount of directory `dir`, rooted at `dir`, without the mounts
/// below it. Lower layers (`read_only`) are made read-only and noatime, as the kernel makes
/// its lower clones, so the daemon can never change one.
pub fn clone_dir(dir: BorrowedFd<'_>, read_only: bool) -> Result<OwnedFd, Errno> {
    let clone = open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    // Private: a mount made later on the original (our own, on a mount point inside the
    // layer) must not propagate into the clone. Without that (no mount_setattr before Linux
    // 5.12) the clone is of no use: the caller keeps the layers as opened.
    crate::sys::mount_setattr_detached(clone.as_fd(), 0, 0, libc::MS_PRIVATE)
        .map_err(|e| super::errno_of(&e))?;
    if read_only {
        // Each on its own: a mount whose atime flags are locked (in a user namespace) still
        // becomes read-only.
        for (set, clear) in [
            (MOUNT_ATTR_RDONLY, 0),
            (MOUNT_ATTR_NOATIME, MOUNT_ATTR_ATIME_MASK),
        ] {
            if let Err(e) = crate::sys::mount_setattr_detached(clone.as_fd(), set, clear, 0) {
                tracing::debug!("mount_setattr on a lower layer's clone: {e}");
            }
        }
    }
    Ok(clone)
}

/// The upper and work directories beneath one shared clone of their mount (renames and
/// links between them must stay on one mount), as `(upper, work)`. `upper_path` and
/// `work_path` locate them; the result is checked against the opened `upper` and `work`.
pub fn clone_upper_and_work(
    upper_path: &Path,
    upper: BorrowedFd<'_>,
    work_path: &Path,
    work: BorrowedFd<'_>,
) -> Result<(OwnedFd, OwnedFd), Errno> {
    let u = std::fs::canonicalize(upper_path).map_err(|e| super::errno_of(&e))?;
    let w = std::fs::canonicalize(work_path).map_err(|e| super::errno_of(&e))?;
    let base = common_ancestor(&u, &w);
    let base_fd = rustix::fs::open(
        &base,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let clone = clone_dir(base_fd.as_fd(), false)?;
    let reopen = |full: &Path, want: BorrowedFd<'_>| -> Result<OwnedFd, Errno> {
        let rel = full.strip_prefix(&base).map_err(|_| Errno::XDEV)?;
        let fd = if rel.as_os_str().is_empty() {
            rustix::fs::openat(
                clone.as_fd(),
                ".",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?
        } else {
            rustix::fs::openat2(
                clone.as_fd(),
                rel.as_os_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
            )?
        };
        // The paths were resolved by name: make sure they still name what was opened.
        if dir_id(fd.as_fd())? != dir_id(want)? {
            return Err(Errno::XDEV);
        }
        Ok(fd)
    };
    Ok((reopen(&u, upper)?, reopen(&w, work)?))
}

/// The deepest directory that contains both absolute, canonical paths.
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for (x, y) in a.components().zip(b.components()) {
        if x != y {
            break;
        }
        out.push(x.as_os_str());
    }
    if out.as_os_str().is_empty() {
        out.push(Component::RootDir.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_ancestor_of_paths() {
        assert_eq!(
            common_ancestor(Path::new("/a/b/u"), Path::new("/a/b/w")),
            Path::new("/a/b")
        );
        assert_eq!(
            common_ancestor(Path::new("/a/u"), Path::new("/b/w")),
            Path::new("/")
        );
        assert_eq!(
            common_ancestor(Path::new("/a/ub"), Path::new("/a/u")),
            Path::new("/a")
        );
    }
}
