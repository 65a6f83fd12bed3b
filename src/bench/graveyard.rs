//! Trees the benchmark is done with, kept until it ends.
//!
//! Removing a tree of many files right before the next timed run would put a cost on that
//! run that belongs to no backend: on ext4 without a journal, allocating an inode skips every
//! free inode of its group that was freed in the last minute (six if its inode table block is
//! still dirty), looking each one up in the buffer cache (`recently_deleted` in
//! fs/ext4/ialloc.c). Measured on the development VM, a plain `tar x` of 10,000 small files
//! took 1.8-2.9 s within minutes of removing such trees against 0.25 s without, and 70% of its
//! time was that scan. Which backend pays depended on where the allocator put its directories,
//! so the untar row spread by 3x. A finished upper or native tree is therefore renamed into a
//! graveyard on the same filesystem, its large files are truncated (so the disk does not fill
//! with copied-up big files) and the graveyard is removed once the benchmark is over.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::{io_err, Result};
use super::fixture::mkdirs;

/// Files at least this large have their blocks freed when buried; smaller ones keep them
/// (freeing blocks needs no new inode, but truncating 10,000 small files is needless work).
const TRUNCATE_FROM: u64 = 1 << 20;

/// A directory where finished trees wait for the end of the benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graveyard {
    dir: PathBuf,
}

impl Graveyard {
    /// The graveyard at `dir` (made on the first burial).
    pub fn at(dir: PathBuf) -> Graveyard {
        Graveyard { dir }
    }

    /// The graveyard of the scratch or fixture directory `parent`: its `graveyard/`.
    pub fn within(parent: &Path) -> Graveyard {
        Graveyard::at(parent.join("graveyard"))
    }

    /// Moves the tree at `path` into the graveyard (nothing if it does not exist) and frees
    /// the blocks of its large files. A tree on another filesystem is removed instead.
    pub fn bury(&self, path: &Path) -> Result<()> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        mkdirs(&self.dir)?;
        let name = path
            .file_name()
            .map_or_else(|| "tree".into(), |n| n.to_string_lossy().into_owned());
        let grave = self.dir.join(format!(
            "{name}.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(path, &grave) {
            Ok(()) => truncate_large(&grave),
            Err(e) if e.kind() == ErrorKind::CrossesDevices => {
                fs::remove_dir_all(path).map_err(io_err("remove", path))
            }
            Err(e) => Err(io_err("move into the graveyard", path)(e)),
        }
    }

    /// Removes everything buried (and what an interrupted earlier benchmark left).
    pub fn clear(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove", &self.dir)(e)),
            _ => Ok(()),
        }
    }
}

/// Truncates the regular files of at least [`TRUNCATE_FROM`] bytes under `root`.
fn truncate_large(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.size() >= TRUNCATE_FROM {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(0))
                    .map_err(io_err("truncate", &path))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buried_tree_leaves_its_place_keeps_its_small_files_and_goes_at_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("upper");
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::write(tree.join("d/small"), b"kept").unwrap();
        fs::write(tree.join("big"), vec![7u8; TRUNCATE_FROM as usize]).unwrap();
        let yard = Graveyard::at(tmp.path().join("graveyard"));
        yard.bury(&tree).unwrap();
        assert!(!tree.exists());
        let graves: Vec<PathBuf> = fs::read_dir(tmp.path().join("graveyard"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(graves.len(), 1);
        // The small file keeps its inode and bytes; the big one keeps its inode only.
        assert_eq!(fs::read(graves[0].join("d/small")).unwrap(), b"kept");
        assert_eq!(fs::metadata(graves[0].join("big")).unwrap().len(), 0);
        yard.bury(&tree).unwrap(); // gone already: nothing to do
        yard.clear().unwrap();
        assert!(!tmp.path().join("graveyard").exists());
        yard.clear().unwrap();
    }
}
