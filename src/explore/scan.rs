//! Reading one layer directory into the union tree: every entry with its metadata, whiteouts
//! in both forms (a 0/0 character device, a `.wh.NAME` file) as deletions of NAME, opaque
//! directories in both forms (the overlay xattr, a `.wh..wh..opq` file).
//!
//! Directories are opened one at a time beneath the layer root (no symlink is followed, no
//! `..` leaves it) and closed before the next, so a tree of any depth needs no recursion and
//! holds one descriptor at a time.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, FileType, OFlags};

use super::tree::{Entry, Kind, NodeId, Tree, ROOT};
use super::{errno, Result};
use crate::overlay::{beneath, format};

/// Read the layer `layer` whose root is open as `root` into `tree`.
pub fn scan_layer(tree: &mut Tree, layer: u16, root: BorrowedFd<'_>, what: &str) -> Result<()> {
    let st = rfs::fstat(root).map_err(errno(format!("stat {what}")))?;
    let mut pending: Vec<NodeId> = Vec::new();
    let root_entry = entry(layer, &st, Kind::Dir);
    tree.nodes[ROOT as usize].versions.push(root_entry);
    pending.push(ROOT);
    while let Some(dir_id) = pending.pop() {
        let comps = tree.components(dir_id);
        // Error messages are made only when there is an error.
        let shown = |t: &Tree| t.path(dir_id);
        let dir = beneath::open_beneath(
            root,
            &comps,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        )
        .map_err(|e| errno(format!("{what}: open {}", shown(tree)))(e))?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut opaque = format::has_opaque_xattr(dir.as_fd());
        let dir_entries = rfs::Dir::read_from(&dir)
            .map_err(|e| errno(format!("{what}: read {}", shown(tree)))(e))?;
        for e in dir_entries {
            let e = e.map_err(|e| errno(format!("{what}: read {}", shown(tree)))(e))?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            if n == format::OPAQUE_MARKER {
                opaque = true;
                continue;
            }
            names.push(n.to_vec());
        }
        // A `.wh.NAME` sorts by NAME, so entries are merged into the tree in name order.
        let mut items: Vec<(Vec<u8>, bool)> = names
            .into_iter()
            .map(|n| match format::oci_whiteout_target(&n) {
                Some(t) => (t.to_vec(), true),
                None => (n, false),
            })
            .collect();
        items.sort();
        items.dedup_by(|a, b| a.0 == b.0);
        {
            let v = tree.nodes[dir_id as usize]
                .versions
                .last_mut()
                .expect("the directory's own version was pushed first");
            v.opaque = opaque;
            v.has_children = !items.is_empty();
        }
        let mut hint = 0;
        for (name, oci_whiteout) in items {
            let on_disk: Vec<u8> = if oci_whiteout {
                [format::WHITEOUT_PREFIX, &name].concat()
            } else {
                name.clone()
            };
            let st = rfs::statat(&dir, OsStr::from_bytes(&on_disk), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| {
                    errno(format!(
                        "{what}: stat {}/{}",
                        shown(tree).trim_end_matches('/'),
                        String::from_utf8_lossy(&on_disk)
                    ))(e)
                })?;
            let kind = if oci_whiteout || format::is_device_whiteout(&st) {
                Kind::Whiteout
            } else {
                kind_of(&st)
            };
            let id = tree.child_or_insert(dir_id, &name, &mut hint);
            tree.nodes[id as usize]
                .versions
                .push(entry(layer, &st, kind));
            if kind == Kind::Dir {
                pending.push(id);
            }
        }
    }
    Ok(())
}

fn kind_of(st: &rfs::Stat) -> Kind {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::CharacterDevice => Kind::CharDevice,
        FileType::BlockDevice => Kind::BlockDevice,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => Kind::File,
    }
}

fn entry(layer: u16, st: &rfs::Stat, kind: Kind) -> Entry {
    Entry {
        layer,
        kind,
        opaque: false,
        has_children: false,
        size: if kind == Kind::File {
            st.st_size as u64
        } else {
            0
        },
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        ino: st.st_ino,
        nlink: st.st_nlink as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::{Change, HIDDEN};
    use super::*;
    use std::fs;
    use std::os::fd::OwnedFd;

    fn open(p: &std::path::Path) -> OwnedFd {
        rfs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, rfs::Mode::empty()).unwrap()
    }

    #[test]
    fn reads_both_whiteout_forms_and_opaque_markers() {
        let d = tempfile::tempdir().unwrap();
        let (l0, l1) = (d.path().join("l0"), d.path().join("l1"));
        fs::create_dir_all(l0.join("etc/sub")).unwrap();
        fs::write(l0.join("etc/a"), "aaaa").unwrap();
        fs::write(l0.join("etc/sub/s"), "s").unwrap();
        fs::write(l0.join("gone"), "gg").unwrap();
        fs::write(l0.join("devgone"), "d").unwrap();
        fs::create_dir_all(l1.join("etc/sub")).unwrap();
        fs::write(l1.join("etc/sub/.wh..wh..opq"), "").unwrap();
        fs::write(l1.join("etc/sub/t"), "tt").unwrap();
        fs::write(l1.join(".wh.gone"), "").unwrap();
        fs::hard_link(l1.join("etc/sub/t"), l1.join("etc/t2")).unwrap();
        let dev = rfs::mknodat(
            rfs::CWD,
            l1.join("devgone"),
            FileType::CharacterDevice,
            rfs::Mode::empty(),
            0,
        );
        let mut t = Tree::new(2);
        scan_layer(&mut t, 0, open(&l0).as_fd(), "l0").unwrap();
        scan_layer(&mut t, 1, open(&l1).as_fd(), "l1").unwrap();
        let v0 = t.view(0);
        let v1 = t.view(1);
        let gone = t.lookup("/gone").unwrap();
        assert_eq!(t.at_layer(gone, 1).unwrap().kind, Kind::Whiteout);
        assert_eq!(t.change(&v1, Some(&v0), gone), Some(Change::Removed));
        assert!(t.lookup("/.wh.gone").is_none());
        if dev.is_ok() {
            let g = t.lookup("/devgone").unwrap();
            assert_eq!(v1.top[g as usize], HIDDEN);
        }
        let sub = t.lookup("/etc/sub").unwrap();
        assert!(t.at_layer(sub, 1).unwrap().opaque);
        assert!(t.lookup("/etc/sub/.wh..wh..opq").is_none());
        assert_eq!(v1.top[t.lookup("/etc/sub/s").unwrap() as usize], HIDDEN);
        assert_ne!(v0.top[t.lookup("/etc/sub/s").unwrap() as usize], HIDDEN);
        let t2 = t.at_layer(t.lookup("/etc/t2").unwrap(), 1).unwrap();
        assert_eq!(t2.nlink, 2);
        assert_eq!(t2.size, 2);
        // Children are kept sorted whichever layer added them.
        let etc = t.lookup("/etc").unwrap();
        let names: Vec<String> = t.nodes[etc as usize]
            .children
            .iter()
            .map(|c| t.name(*c).to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "sub", "t2"]);
    }

    #[test]
    fn a_symlinked_directory_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let l0 = d.path().join("l0");
        fs::create_dir_all(&l0).unwrap();
        std::os::unix::fs::symlink("/etc", l0.join("evil")).unwrap();
        let mut t = Tree::new(1);
        scan_layer(&mut t, 0, open(&l0).as_fd(), "l0").unwrap();
        let evil = t.lookup("/evil").unwrap();
        assert_eq!(t.at_layer(evil, 0).unwrap().kind, Kind::Symlink);
        assert!(t.nodes[evil as usize].children.is_empty());
    }
}
