//! A layer: one directory tree, reached only through an `O_PATH` fd of its root. Every access is
//! `*at()` relative to that fd and resolved beneath it, never through a joined path string.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Longest relative path handed to one `openat2`; longer ones are walked in pieces, so trees
/// deeper than PATH_MAX still work.
const MAX_PATH_CHUNK: usize = 3072;

/// Resolution rules for every path inside a layer: stay beneath the root, follow no symlink.
pub const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// One directory tree of the union.
#[derive(Debug)]
pub struct Layer {
    /// `O_PATH` fd of the layer's root directory.
    pub root: OwnedFd,
    /// Device number of the root, to tell layers on different filesystems apart.
    pub dev: u64,
    /// The path the user gave, for messages only.
    pub path: PathBuf,
    /// Index of this layer's filesystem among the distinct filesystems of the mount, used to
    /// keep inode numbers from different filesystems apart.
    pub fs_index: u64,
}

impl Layer {
    /// Open the layer at `path` (symlinks in `path` itself are followed, as podman's lowerdir
    /// entries are symlinks to the layer directories).
    pub fn open(path: &Path, fs_index: u64) -> Result<Layer, Errno> {
        let root = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rfs::fstat(&root)?;
        Ok(Layer {
            root,
            dev: st.st_dev,
            path: path.to_path_buf(),
            fs_index,
        })
    }

    /// Open the directory at `components` (relative to the root) with `flags`, beneath the root.
    pub fn open_dir(&self, components: &[&OsStr], flags: OFlags) -> Result<OwnedFd, Errno> {
        open_beneath(
            self.root.as_fd(),
            components,
            flags | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        )
    }
}

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
