//! The layouts kernel overlayfs refuses to mount: layers that are one another or lie inside
//! one another, and upper and work directories that are not separate subtrees of one mount.
//!
//! The kernel (`fs/overlayfs/super.c`) puts a "trap" on the root of the upper, the work
//! directory, its `work/` subdirectory and every lower layer, in that order. A lower layer
//! whose root already holds a trap is refused with ELOOP ("conflicting lowerdir path"), and
//! so is one with a trap among its ancestors ("overlapping lowerdir path"). The upper and
//! work directories must sit on one mount (EINVAL) and neither may contain the other
//! (EINVAL, "workdir and upperdir must be separate subtrees"). An upper or work directory
//! inside a lower layer mounts, and the kernel answers ELOOP only when a lookup reaches it.
//!
//! Identities are (device, inode) pairs of the opened directories, and ancestors are walked
//! with `..` from those fds, so symlinks in the given paths cannot fool the checks.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

/// A directory's identity: (device, inode).
pub type DirId = (u64, u64);

/// Ancestor walks stop after this many steps (a loop guard; real trees are far shallower).
const MAX_DEPTH: usize = 4096;

/// What was wrong with a layout, with the errno kernel overlayfs gives for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// Layer `layer` is the same directory as layer `other` (ELOOP).
    Same {
        /// Index of the refused layer among the roles passed in.
        layer: usize,
        /// Index of the layer it coincides with.
        other: usize,
    },
    /// Layer `layer` lies inside layer `other` (ELOOP).
    Inside {
        /// Index of the refused layer.
        layer: usize,
        /// Index of the layer it lies in.
        other: usize,
    },
    /// The upper and work directories are one, or one contains the other (EINVAL).
    NotSeparate,
    /// The upper and work directories are on different mounts (EINVAL).
    DifferentMounts,
}

impl Overlap {
    /// The errno kernel overlayfs refuses this layout with.
    pub fn errno(&self) -> Errno {
        match self {
            Overlap::Same { .. } | Overlap::Inside { .. } => Errno::LOOP,
            Overlap::NotSeparate | Overlap::DifferentMounts => Errno::INVAL,
        }
    }

    /// The kernel's own words for it, for messages.
    pub fn kernel_words(&self) -> &'static str {
        match self {
            Overlap::Same { .. } => "conflicting lowerdir path",
            Overlap::Inside { .. } => "overlapping lowerdir path",
            Overlap::NotSeparate => "workdir and upperdir must be separate subtrees",
            Overlap::DifferentMounts => "workdir and upperdir must reside under the same mount",
        }
    }
}

/// The identity of directory `fd`.
pub fn dir_id(fd: BorrowedFd<'_>) -> Result<DirId, Errno> {
    let st = rfs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The identities of the strict ancestors of directory `fd`, nearest first, up to the root
/// of this process's file system tree.
pub fn ancestors(fd: BorrowedFd<'_>) -> Result<Vec<DirId>, Errno> {
    let mut out = Vec::new();
    let mut here = dir_id(fd)?;
    let mut current: Option<OwnedFd> = None;
    for _ in 0..MAX_DEPTH {
        let base = current.as_ref().map(|f| f.as_fd()).unwrap_or(fd);
        let parent = rfs::openat(
            base,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let id = dir_id(parent.as_fd())?;
        if id == here {
            break;
        }
        out.push(id);
        here = id;
        current = Some(parent);
    }
    Ok(out)
}

fn mount_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let stx = rfs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    Ok(stx.stx_mnt_id)
}

/// Check an upper directory `upper` and work directory `work` (opened fds) as the kernel
/// does before it uses them.
pub fn check_upper_and_work(upper: BorrowedFd<'_>, work: BorrowedFd<'_>) -> Result<(), Overlap> {
    let (u, w) = match (dir_id(upper), dir_id(work)) {
        (Ok(u), Ok(w)) => (u, w),
        // Unreadable identities: leave the refusal to the first real use.
        _ => return Ok(()),
    };
    if let (Ok(um), Ok(wm)) = (mount_id(upper), mount_id(work)) {
        if um != wm {
            return Err(Overlap::DifferentMounts);
        }
    }
    if u == w
        || ancestors(work).is_ok_and(|a| a.contains(&u))
        || ancestors(upper).is_ok_and(|a| a.contains(&w))
    {
        return Err(Overlap::NotSeparate);
    }
    Ok(())
}

/// Check lower layers against the kernel's traps. `trapped` are the directories that hold a
/// trap before the lowers are added (upper, work dir, its `work/`), each with the index it
/// is reported as; `lowers` are the lower layers' fds in order, reported as the indices that
/// follow. Errors name the first offending lower layer.
pub fn check_lowers(
    trapped: &[(usize, BorrowedFd<'_>)],
    lowers: &[(usize, BorrowedFd<'_>)],
) -> Result<(), Overlap> {
    let mut traps: HashMap<DirId, usize> = HashMap::new();
    for (index, fd) in trapped {
        if let Ok(id) = dir_id(*fd) {
            traps.entry(id).or_insert(*index);
        }
    }
    for (index, fd) in lowers {
        let Ok(id) = dir_id(*fd) else { continue };
        if let Some(&other) = traps.get(&id) {
            return Err(Overlap::Same {
                layer: *index,
                other,
            });
        }
        traps.insert(id, *index);
    }
    for (index, fd) in lowers {
        let Ok(up) = ancestors(*fd) else { continue };
        if let Some(&other) = up.iter().find_map(|a| traps.get(a)) {
            return Err(Overlap::Inside {
                layer: *index,
                other,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &std::path::Path) -> OwnedFd {
        rfs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn ancestors_reach_the_root() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        std::fs::create_dir_all(&d).unwrap();
        let a = ancestors(open(&d).as_fd()).unwrap();
        assert_eq!(a[0], dir_id(open(&t.path().join("a")).as_fd()).unwrap());
        assert_eq!(
            *a.last().unwrap(),
            dir_id(open(std::path::Path::new("/")).as_fd()).unwrap()
        );
    }

    #[test]
    fn lowers_that_are_or_lie_in_other_layers_are_refused() {
        let t = tempfile::tempdir().unwrap();
        for d in ["u", "w/work", "l1/inner", "l2"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let fd = |p: &str| open(&t.path().join(p));
        let (u, w, ww, l1, inner, l2) = (
            fd("u"),
            fd("w"),
            fd("w/work"),
            fd("l1"),
            fd("l1/inner"),
            fd("l2"),
        );
        let trapped = [(0, u.as_fd()), (1, w.as_fd()), (1, ww.as_fd())];
        assert_eq!(
            check_lowers(&trapped, &[(2, l1.as_fd()), (3, l2.as_fd())]),
            Ok(())
        );
        let same = check_lowers(&trapped, &[(2, l1.as_fd()), (3, u.as_fd())]).unwrap_err();
        assert_eq!(same, Overlap::Same { layer: 3, other: 0 });
        assert_eq!(same.errno(), Errno::LOOP);
        assert_eq!(
            check_lowers(&trapped, &[(2, l1.as_fd()), (3, l1.as_fd())]),
            Err(Overlap::Same { layer: 3, other: 2 })
        );
        assert_eq!(
            check_lowers(&trapped, &[(2, inner.as_fd()), (3, l1.as_fd())]),
            Err(Overlap::Inside { layer: 2, other: 3 })
        );
        assert_eq!(
            check_lowers(&trapped, &[(2, ww.as_fd())]),
            Err(Overlap::Same { layer: 2, other: 1 })
        );
    }

    #[test]
    fn upper_and_work_must_be_separate() {
        let t = tempfile::tempdir().unwrap();
        for d in ["u/w", "w"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let fd = |p: &str| open(&t.path().join(p));
        assert_eq!(
            check_upper_and_work(fd("u").as_fd(), fd("w").as_fd()),
            Ok(())
        );
        for (u, w) in [("u", "u"), ("u", "u/w"), ("u/w", "u")] {
            let e = check_upper_and_work(fd(u).as_fd(), fd(w).as_fd()).unwrap_err();
            assert_eq!(e, Overlap::NotSeparate, "{u} {w}");
            assert_eq!(e.errno(), Errno::INVAL);
        }
    }
}
