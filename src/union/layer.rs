//! A layer: one directory tree, reached only through an `O_PATH` fd of its root. Every access is
//! `*at()` relative to that fd and resolved beneath it, never through a joined path string.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use crate::overlay::beneath::open_beneath;

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
    /// Whether `root` is a detached clone of the layer's mount, which shows no submounts
    /// (see [`super::detach`]).
    pub detached: bool,
    /// For a lazy layer, what fills its files on first open (see [`super::lazy`]).
    pub lazy: Option<std::sync::Arc<super::lazy::LazyLayer>>,
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
            detached: false,
            lazy: None,
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
