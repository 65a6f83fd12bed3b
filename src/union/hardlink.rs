//! Hard links of lower files across copy-up. When one name of a lower inode with several
//! names is copied up, every other name of that inode that the union still shows is linked to
//! the copy in the upper layer, so all names keep one inode, one content and the right link
//! count, and kernel overlayfs reading the upper layer later sees the same links.

use std::collections::HashMap;
use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::dir::LayerIndex;
use super::inode::{Node, ROOT_ID};
use super::Union;

/// Paths of the non-directories of one layer that share an inode with another path there.
#[derive(Debug, Default)]
pub struct LinkIndex {
    by_ino: HashMap<u64, Vec<Vec<OsString>>>,
}

impl LinkIndex {
    /// Walk the layer whose root is `root` once and index its multiply-linked files.
    pub fn scan(root: BorrowedFd<'_>) -> Result<LinkIndex, Errno> {
        let mut all: HashMap<u64, Vec<Vec<OsString>>> = HashMap::new();
        let top = rfs::openat(
            root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut path = Vec::new();
        walk(top.as_fd(), &mut path, &mut all)?;
        all.retain(|_, paths| paths.len() > 1);
        Ok(LinkIndex { by_ino: all })
    }

    /// The paths of inode `ino`.
    pub fn paths(&self, ino: u64) -> &[Vec<OsString>] {
        self.by_ino.get(&ino).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn walk(
    dir: BorrowedFd<'_>,
    path: &mut Vec<OsString>,
    all: &mut HashMap<u64, Vec<Vec<OsString>>>,
) -> Result<(), Errno> {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut raw = RawDir::new(dir, &mut buf);
    let mut subdirs = Vec::new();
    while let Some(e) = raw.next() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = std::ffi::OsStr::from_bytes(name).to_owned();
        // Any non-directory can have several names (symlinks and fifos too).
        let ftype = match e.file_type() {
            FileType::Unknown => {
                FileType::from_raw_mode(rfs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode)
            }
            t => t,
        };
        if ftype == FileType::Directory {
            subdirs.push(name);
        } else {
            let mut p = path.clone();
            p.push(name);
            all.entry(e.ino()).or_default().push(p);
        }
    }
    for name in subdirs {
        let sub = rfs::openat(
            dir,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        path.push(name);
        walk(sub.as_fd(), path, all)?;
        path.pop();
    }
    Ok(())
}

impl Union {
    /// The link index of lower layer `layer`, built on first use.
    pub(crate) fn link_index(&self, layer: LayerIndex) -> Result<Arc<LinkIndex>, Errno> {
        let mut indexes = self.link_indexes.lock();
        if let Some(ix) = indexes.get(&layer) {
            return Ok(ix.clone());
        }
        let ix = Arc::new(LinkIndex::scan(self.layer(layer).root.as_fd())?);
        indexes.insert(layer, ix.clone());
        Ok(ix)
    }

    /// After `node` (lower inode `ino` of `layer`) was copied up, link every other name of
    /// that inode that the union still shows from `layer` to the upper copy.
    pub fn link_aliases(&self, node: &Arc<Node>, layer: LayerIndex, ino: u64) -> Result<(), Errno> {
        let index = self.link_index(layer)?;
        for path in index.paths(ino) {
            let (dirs, name) = path.split_at(path.len() - 1);
            let name = &name[0];
            let mut held = Vec::new();
            let result = self.link_alias(node, layer, ino, dirs, name, &mut held);
            for id in held {
                self.nodes.unref(id);
            }
            match result {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn link_alias(
        &self,
        node: &Arc<Node>,
        layer: LayerIndex,
        ino: u64,
        dirs: &[OsString],
        name: &OsString,
        held: &mut Vec<u64>,
    ) -> Result<(), Errno> {
        let mut dir = self.nodes.get(ROOT_ID)?;
        for comp in dirs {
            let (next, _) = self.lookup(dir.id, comp)?;
            held.push(next.id);
            dir = next;
        }
        let visible_here = self
            .listing(&dir)?
            .entries
            .get(name)
            .is_some_and(|e| e.top() == layer && e.ino == (layer, ino));
        if !visible_here {
            return Ok(());
        }
        self.copy_up(&dir)?;
        let loc = node.location();
        let src_parent = loc.parent.ok_or(Errno::STALE)?;
        let src_dir = self.dir_fd(&src_parent, 0)?;
        let mut state = dir.state.write();
        let Some(listing) = state.listing.as_mut() else {
            return Ok(());
        };
        let listing = Arc::make_mut(listing);
        let Some(entry) = listing.entries.get_mut(name) else {
            return Ok(());
        };
        if entry.top() != layer {
            return Ok(());
        }
        let upper = self.dir_fd(&dir, 0)?;
        rfs::linkat(
            src_dir.as_fd(),
            &loc.name,
            upper.as_fd(),
            name,
            AtFlags::empty(),
        )?;
        entry.layers = vec![0];
        entry.covers_lower = true;
        Ok(())
    }
}
