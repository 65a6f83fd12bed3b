//! A stack of layer directories (bottom first) with what is known of each (digest, the
//! instruction that made it) and their union tree.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, OFlags};

use super::tree::{Kind, Tree};
use super::{errno, scan, Error, Result};

/// One layer of a stack.
#[derive(Debug)]
pub struct Layer {
    /// Its directory on the host.
    pub dir: PathBuf,
    /// The directory, open: every path in it is resolved beneath this.
    pub root: OwnedFd,
    /// The blob digest (images), if known.
    pub digest: Option<String>,
    /// The uncompressed digest (diff ID), if known.
    pub diff_id: Option<String>,
    /// The instruction that made it (image history), if known.
    pub created_by: Option<String>,
    /// The size of its blob (compressed), if known.
    pub blob_size: Option<u64>,
    /// The writable layer of a container or mount (changes as it runs).
    pub upper: bool,
}

impl Layer {
    /// A layer from its directory, with nothing else known yet.
    pub fn open(dir: &Path) -> Result<Layer> {
        let root = rfs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rfs::Mode::empty(),
        )
        .map_err(errno(format!("open layer {}", dir.display())))?;
        Ok(Layer {
            dir: dir.to_path_buf(),
            root,
            digest: None,
            diff_id: None,
            created_by: None,
            blob_size: None,
            upper: false,
        })
    }

    /// A short name: the digest's first 12 hex digits, or the directory.
    pub fn short_name(&self) -> String {
        match self.digest.as_deref().or(self.diff_id.as_deref()) {
            Some(d) => d
                .split_once(':')
                .map(|(_, h)| h)
                .unwrap_or(d)
                .chars()
                .take(12)
                .collect(),
            None => self.dir.display().to_string(),
        }
    }
}

/// Layers bottom first and their union tree.
#[derive(Debug)]
pub struct Stack {
    /// What the stack is (the image's name, the container, the paths).
    pub name: String,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// The union of all of them.
    pub tree: Tree,
}

impl Stack {
    /// Read every layer of `layers` (bottom first) into a union tree.
    pub fn read(name: String, layers: Vec<Layer>) -> Result<Stack> {
        if layers.is_empty() {
            return Err(Error::Invalid(format!("{name}: no layers")));
        }
        if layers.len() > u16::MAX as usize {
            return Err(Error::Invalid(format!(
                "{name}: {} layers; at most {} are supported",
                layers.len(),
                u16::MAX
            )));
        }
        let mut tree = Tree::new(layers.len());
        for (i, l) in layers.iter().enumerate() {
            scan::scan_layer(
                &mut tree,
                i as u16,
                l.root.as_fd(),
                &l.dir.display().to_string(),
            )?;
        }
        Ok(Stack { name, layers, tree })
    }

    /// The index of the top layer.
    pub fn top(&self) -> usize {
        self.layers.len() - 1
    }

    /// The bytes of regular files a layer holds, hard links counted once (what its tar's
    /// headers add up to, as dive measures a layer).
    pub fn layer_size(&self, layer: usize) -> u64 {
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        for n in &self.tree.nodes {
            for e in n.versions.iter().filter(|e| e.layer as usize == layer) {
                if e.kind == Kind::File && (e.nlink < 2 || seen.insert(e.ino)) {
                    total += e.size;
                }
            }
        }
        total
    }

    /// The sizes of all layers (see [`Stack::layer_size`]), in one pass.
    pub fn layer_sizes(&self) -> Vec<u64> {
        let mut seen = std::collections::HashSet::new();
        let mut total = vec![0u64; self.layers.len()];
        for n in &self.tree.nodes {
            for e in &n.versions {
                if e.kind == Kind::File && (e.nlink < 2 || seen.insert((e.layer, e.ino))) {
                    total[e.layer as usize] += e.size;
                }
            }
        }
        total
    }

    /// The number of entries each layer holds (whiteouts included, its root not).
    pub fn layer_counts(&self) -> Vec<u64> {
        let mut count = vec![0u64; self.layers.len()];
        for n in &self.tree.nodes[1..] {
            for e in &n.versions {
                count[e.layer as usize] += 1;
            }
        }
        count
    }
}
