//! Merged directories: the listing of one union directory, computed once from its layers
//! (top-down, stopping at an opaque one, dropping whiteouts) and then kept up to date by the
//! operations made through the mount, so lookups and readdir are hash-map hits.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, RawDir};
use rustix::io::Errno;

use super::dir_entries::DirEntries;
use crate::overlay::format::{self, EntryKind, WhiteoutForm};

/// Index of a layer in the mount: 0 is the upper layer when the mount has one.
pub type LayerIndex = u16;

/// One name of a merged directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The type of the topmost object under this name.
    pub kind: FileType,
    /// Layers that hold this name, top first: for a directory every layer whose directory of
    /// this name merges into it (before opacity is checked); for anything else only the top.
    pub layers: Vec<LayerIndex>,
    /// Whether some lower layer has this name, so that removing it needs a whiteout.
    pub covers_lower: bool,
    /// The layer and inode number the entry was first seen with, for readdir's `d_ino`.
    pub ino: (LayerIndex, u64),
    /// When the name joined the listing (see [`DirEntries::put`]): readdir offsets are these,
    /// so they stay valid while the directory changes.
    pub seq: u64,
}

impl Entry {
    /// The layer holding the visible object.
    pub fn top(&self) -> LayerIndex {
        self.layers[0]
    }
}

/// The merged content of one directory.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Visible names in a stable order (upper layer first, then what lower layers add, then
    /// names added through the mount), each with its readdir sequence number.
    pub entries: DirEntries,
    /// Whiteouts present in the upper layer's copy of this directory, and their form.
    pub upper_whiteouts: HashMap<OsString, WhiteoutForm, RandomState>,
}

/// One raw directory read from one layer.
pub struct LayerDir {
    /// Entries that are shown, hidden or mark opacity, with their inode numbers.
    pub entries: Vec<(Arc<OsStr>, EntryKind, u64)>,
    /// Whether the directory holds the `.wh..wh..opq` marker.
    pub opaque: bool,
}

/// Size of the per-thread buffer directories are read with.
const READ_BUF_SIZE: usize = 64 * 1024;

thread_local! {
    /// One directory-reading buffer per worker thread, so reading a directory allocates none.
    static DIR_BUF: std::cell::RefCell<Vec<MaybeUninit<u8>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Read the directory open as `dir` (readable fd, at its start) and classify each entry.
///
/// `opaque` in the result reflects only a `.wh..wh..opq` entry: the opaque xattrs are the
/// business of whoever chose the directory's layers (a node's layers are already cut at the
/// first opaque one, so the listing never needs them).
pub fn read_layer_dir(dir: BorrowedFd<'_>) -> Result<LayerDir, Errno> {
    DIR_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < READ_BUF_SIZE {
            buf.resize(READ_BUF_SIZE, MaybeUninit::uninit());
        }
        read_layer_dir_with(dir, &mut buf)
    })
}

fn read_layer_dir_with(
    dir: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
) -> Result<LayerDir, Errno> {
    let mut raw = RawDir::new(dir, buf);
    let mut entries = Vec::new();
    let mut opaque = false;
    while let Some(entry) = raw.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let ino = entry.ino();
        let mut ftype = entry.file_type();
        if ftype == FileType::Unknown || ftype == FileType::CharacterDevice {
            let st = rfs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)?;
            if format::is_device_whiteout(&st) {
                entries.push((
                    Arc::from(OsStr::from_bytes(name)),
                    EntryKind::Whiteout(WhiteoutForm::Device),
                    ino,
                ));
                continue;
            }
            ftype = FileType::from_raw_mode(st.st_mode);
        }
        if name == format::OPAQUE_MARKER {
            opaque = true;
            entries.push((
                Arc::from(OsStr::from_bytes(name)),
                EntryKind::OpaqueMarker,
                ino,
            ));
        } else if let Some(target) = format::oci_whiteout_target(name) {
            entries.push((
                Arc::from(OsStr::from_bytes(target)),
                EntryKind::Whiteout(WhiteoutForm::OciFile),
                ino,
            ));
        } else {
            entries.push((
                Arc::from(OsStr::from_bytes(name)),
                EntryKind::Visible(ftype),
                ino,
            ));
        }
    }
    Ok(LayerDir { entries, opaque })
}

/// Builds a [`Listing`] from the layers of a directory, top layer first.
pub struct ListingBuilder {
    listing: Listing,
    /// Names whited out by a layer above: nothing below shows or counts.
    whited_out: HashSet<Arc<OsStr>, RandomState>,
    /// Directories whose merge has stopped (a non-directory below them): lower directories
    /// still exist under these names, but do not merge. A non-directory entry never merges,
    /// so it needs no mark here.
    stopped: HashSet<Arc<OsStr>, RandomState>,
    has_upper: bool,
}

impl ListingBuilder {
    /// Start an empty listing; `has_upper` says whether layer 0 is the writable one.
    pub fn new(has_upper: bool) -> Self {
        ListingBuilder {
            listing: Listing::default(),
            whited_out: HashSet::default(),
            stopped: HashSet::default(),
            has_upper,
        }
    }

    /// Merge the next layer down. Returns false when that layer is opaque, so nothing below it
    /// may be added.
    pub fn add_layer(&mut self, layer: LayerIndex, dir: LayerDir) -> bool {
        let is_lower = !(self.has_upper && layer == 0);
        // A whiteout hides the layers below its own, never an entry beside it.
        let mut new_whiteouts = Vec::new();
        self.listing.entries.reserve(dir.entries.len());
        for (name, kind, ino) in dir.entries {
            if !self.whited_out.is_empty() && self.whited_out.contains(&name) {
                continue;
            }
            match kind {
                EntryKind::OpaqueMarker => {}
                EntryKind::Whiteout(form) => {
                    if !is_lower {
                        self.listing
                            .upper_whiteouts
                            .insert(name.to_os_string(), form);
                    }
                    new_whiteouts.push(name);
                }
                EntryKind::Visible(ftype) => {
                    if let Some(existing) = self.listing.entries.get_mut(&name) {
                        existing.covers_lower |= is_lower;
                        if existing.kind != FileType::Directory {
                            continue;
                        }
                        if ftype == FileType::Directory && !self.stopped.contains(&name) {
                            existing.layers.push(layer);
                        } else {
                            self.stopped.insert(name);
                        }
                    } else {
                        self.listing.entries.put(
                            name,
                            Entry {
                                kind: ftype,
                                layers: vec![layer],
                                covers_lower: is_lower,
                                ino: (layer, ino),
                                seq: 0,
                            },
                        );
                    }
                }
            }
        }
        self.whited_out.extend(new_whiteouts);
        !dir.opaque
    }

    /// The finished listing.
    pub fn finish(self) -> Listing {
        self.listing
    }
}

/// Read `dir` (an `O_PATH` or readable fd of a directory) as a readable fd and classify it.
pub fn read_dir_at(dir: BorrowedFd<'_>) -> Result<LayerDir, Errno> {
    let fd = rfs::openat(
        dir.as_fd(),
        ".",
        rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::CLOEXEC,
        rfs::Mode::empty(),
    )?;
    read_layer_dir(fd.as_fd())
}

/// Compare a directory's cached listing with what its upper copy holds now; returns the
/// names that disagree. A debugging aid for the bookkeeping of namespace changes.
pub fn upper_mismatches(listing: &Listing, upper: BorrowedFd<'_>) -> Vec<String> {
    let mut bad = Vec::new();
    let Ok(raw) = read_dir_at(upper) else {
        return bad;
    };
    let mut on_disk = std::collections::HashMap::new();
    for (name, kind, _) in raw.entries {
        on_disk.insert(name, kind);
    }
    for (name, entry) in listing.entries.iter() {
        if entry.top() != 0 {
            continue;
        }
        match on_disk.get(name) {
            Some(EntryKind::Visible(k)) if *k == entry.kind => {}
            other => bad.push(format!(
                "{name:?}: listing {:?}, upper {other:?}",
                entry.kind
            )),
        }
    }
    for (name, kind) in &on_disk {
        match kind {
            EntryKind::Visible(_) if !listing.entries.contains_key(name) => {
                bad.push(format!("{name:?}: in upper, not in listing"))
            }
            EntryKind::Visible(_) if listing.entries[&**name].top() != 0 => bad.push(format!(
                "{name:?}: in upper, listing says layer {:?}",
                listing.entries[&**name].layers
            )),
            _ => {}
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(entries: &[(&str, EntryKind)], opaque: bool) -> LayerDir {
        LayerDir {
            entries: entries
                .iter()
                .map(|(n, k)| (Arc::from(OsStr::new(n)), *k, 0))
                .collect(),
            opaque,
        }
    }

    const F: EntryKind = EntryKind::Visible(FileType::RegularFile);
    const D: EntryKind = EntryKind::Visible(FileType::Directory);
    const W: EntryKind = EntryKind::Whiteout(WhiteoutForm::Device);

    #[test]
    fn upper_shadows_and_whiteouts_hide() {
        let mut b = ListingBuilder::new(true);
        assert!(b.add_layer(0, dir(&[("a", F), ("gone", W)], false)));
        assert!(b.add_layer(1, dir(&[("a", F), ("gone", F), ("b", D)], false)));
        assert!(b.add_layer(2, dir(&[("b", D), ("c", F)], false)));
        let l = b.finish();
        let names: Vec<_> = l.entries.keys().collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        assert_eq!(l.entries[OsStr::new("a")].layers, vec![0]);
        assert!(l.entries[OsStr::new("a")].covers_lower);
        assert_eq!(l.entries[OsStr::new("b")].layers, vec![1, 2]);
        assert!(l.upper_whiteouts.contains_key(OsStr::new("gone")));
    }

    #[test]
    fn opaque_layer_stops_merge() {
        let mut b = ListingBuilder::new(true);
        assert!(!b.add_layer(0, dir(&[("x", F)], true)));
        let l = b.finish();
        assert_eq!(l.entries.len(), 1);
        assert!(!l.entries[OsStr::new("x")].covers_lower);
    }

    #[test]
    fn file_over_dir_stops_dir_merge() {
        let mut b = ListingBuilder::new(false);
        b.add_layer(0, dir(&[("d", F)], false));
        b.add_layer(1, dir(&[("d", D)], false));
        b.add_layer(2, dir(&[("d", D)], false));
        let l = b.finish();
        assert_eq!(l.entries[OsStr::new("d")].kind, FileType::RegularFile);
        assert_eq!(l.entries[OsStr::new("d")].layers, vec![0]);
    }

    #[test]
    fn whiteout_in_middle_layer_hides_only_below() {
        let mut b = ListingBuilder::new(false);
        b.add_layer(0, dir(&[("d", D)], false));
        b.add_layer(1, dir(&[("d", W)], false));
        b.add_layer(2, dir(&[("d", D), ("e", F)], false));
        let l = b.finish();
        assert_eq!(l.entries[OsStr::new("d")].layers, vec![0]);
        assert!(l.upper_whiteouts.is_empty());
    }
}
