//! The names of one merged directory, in a stable order that survives changes. Every name gets
//! a sequence number when it joins; the order is the order of those numbers, and readdir
//! resumes from one. Lookups by name are a hash-map hit and so are removals: a removed name
//! leaves a hole that iteration skips, and the holes are squeezed out once they are half the
//! slots, so emptying a directory of a million names costs linear time (an ordered map that
//! shifts every later name on each removal makes it quadratic).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::dir::Entry;

/// Below this many slots, holes are not worth squeezing out.
const MIN_COMPACT: usize = 64;

/// One name, in sequence order; `entry` is `None` once the name is gone.
#[derive(Debug, Clone)]
struct Slot {
    seq: u64,
    name: Arc<OsStr>,
    entry: Option<Entry>,
}

/// Names to entries, ordered by when each name joined.
#[derive(Debug, Clone, Default)]
pub struct DirEntries {
    /// Every name that joined, in sequence order, with holes where names went.
    slots: Vec<Slot>,
    /// Listed names to their slot.
    by_name: HashMap<Arc<OsStr>, usize, RandomState>,
    /// The sequence number the next new name gets.
    next_seq: u64,
}

impl DirEntries {
    /// Add `name`, or replace what it names, keeping its place: a new name goes at the end
    /// with the next sequence number, a replaced one keeps its own. A reader part-way through
    /// the directory therefore sees every name that stays exactly once, whatever else comes
    /// and goes (as POSIX asks of readdir).
    pub fn put(&mut self, name: impl Into<Arc<OsStr>>, mut entry: Entry) {
        let name: Arc<OsStr> = name.into();
        if let Some(&i) = self.by_name.get(&*name) {
            let slot = &mut self.slots[i];
            entry.seq = slot.seq;
            slot.entry = Some(entry);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        entry.seq = seq;
        self.by_name.insert(name.clone(), self.slots.len());
        self.slots.push(Slot {
            seq,
            name,
            entry: Some(entry),
        });
    }

    /// Remove `name`, returning what it named.
    pub fn remove(&mut self, name: &OsStr) -> Option<Entry> {
        let i = self.by_name.remove(name)?;
        let entry = self.slots[i].entry.take();
        while self.slots.last().is_some_and(|s| s.entry.is_none()) {
            self.slots.pop();
        }
        if self.slots.len() >= MIN_COMPACT && self.by_name.len() * 2 < self.slots.len() {
            self.compact();
        }
        entry
    }

    /// Squeeze out the holes (sequence numbers stay, so readdir offsets do too).
    fn compact(&mut self) {
        self.slots.retain(|s| s.entry.is_some());
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(at) = self.by_name.get_mut(&slot.name) {
                *at = i;
            }
        }
    }

    /// The entry of `name`.
    pub fn get(&self, name: &OsStr) -> Option<&Entry> {
        let &i = self.by_name.get(name)?;
        self.slots[i].entry.as_ref()
    }

    /// The entry of `name`, to change in place (its sequence number must stay).
    pub fn get_mut(&mut self, name: &OsStr) -> Option<&mut Entry> {
        let &i = self.by_name.get(name)?;
        self.slots[i].entry.as_mut()
    }

    /// Whether `name` is listed.
    pub fn contains_key(&self, name: &OsStr) -> bool {
        self.by_name.contains_key(name)
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Room for `n` more names.
    pub fn reserve(&mut self, n: usize) {
        self.slots.reserve(n);
        self.by_name.reserve(n);
    }

    /// Every name and entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, &Entry)> {
        self.from_seq(0).map(|(name, entry)| (&**name, entry))
    }

    /// Every name, in order.
    pub fn keys(&self) -> impl Iterator<Item = &OsStr> {
        self.iter().map(|(name, _)| name)
    }

    /// The names whose sequence number is `seq` or more, in order (shared, not copied).
    pub fn from_seq(&self, seq: u64) -> impl Iterator<Item = (&Arc<OsStr>, &Entry)> {
        let start = self.slots.partition_point(|s| s.seq < seq);
        self.slots[start..]
            .iter()
            .filter_map(|s| s.entry.as_ref().map(|e| (&s.name, e)))
    }
}

impl std::ops::Index<&OsStr> for DirEntries {
    type Output = Entry;

    fn index(&self, name: &OsStr) -> &Entry {
        self.get(name).expect("name is listed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::FileType;

    fn entry() -> Entry {
        Entry {
            kind: FileType::RegularFile,
            layers: vec![0],
            covers_lower: false,
            ino: (0, 1),
            seq: 0,
        }
    }

    #[test]
    fn sequence_numbers_rise_and_replacements_keep_theirs() {
        let mut l = DirEntries::default();
        for n in ["a", "b", "c"] {
            l.put(OsStr::new(n), entry());
        }
        assert!(l.remove(OsStr::new("b")).is_some());
        assert!(l.remove(OsStr::new("b")).is_none());
        l.put(OsStr::new("d"), entry());
        let mut replaced = entry();
        replaced.kind = FileType::Directory;
        l.put(OsStr::new("a"), replaced);
        let seqs: Vec<(&str, u64)> = l
            .iter()
            .map(|(n, e)| (n.to_str().unwrap(), e.seq))
            .collect();
        assert_eq!(seqs, [("a", 0), ("c", 2), ("d", 3)]);
        assert_eq!(l[OsStr::new("a")].kind, FileType::Directory);
        // Resuming after "a" (seq 0) starts at the first seq >= 1: "c", although "b" is gone.
        let from =
            |seq| -> Vec<&str> { l.from_seq(seq).map(|(n, _)| n.to_str().unwrap()).collect() };
        assert_eq!(from(1), ["c", "d"]);
        assert_eq!(from(3), ["d"]);
        assert!(from(4).is_empty());
        assert_eq!(l.keys().collect::<Vec<_>>(), ["a", "c", "d"]);
        assert_eq!((l.len(), l.is_empty()), (3, false));
    }

    #[test]
    fn holes_are_squeezed_out_and_offsets_survive() {
        let mut l = DirEntries::default();
        for i in 0..1000 {
            l.put(OsStr::new(&format!("f{i:04}")), entry());
        }
        // Remove from the front, as rm -rf does, reading on as it goes.
        for i in 0..990 {
            let name = format!("f{i:04}");
            assert!(l.remove(OsStr::new(&name)).is_some(), "{name}");
            let next: Vec<&OsStr> = l.from_seq(i + 1).map(|(n, _)| &**n).take(1).collect();
            assert_eq!(next, [OsStr::new(&format!("f{:04}", i + 1))]);
        }
        assert!(
            l.slots.len() < 64,
            "holes were squeezed out: {}",
            l.slots.len()
        );
        assert_eq!(l.len(), 10);
        assert_eq!(l[OsStr::new("f0995")].seq, 995);
        assert_eq!(l.from_seq(995).count(), 5);
        l.put(OsStr::new("new"), entry());
        assert_eq!(l[OsStr::new("new")].seq, 1000);
        assert_eq!(l.keys().last(), Some(OsStr::new("new")));
    }

    #[test]
    fn a_removed_name_that_comes_back_goes_to_the_end() {
        let mut l = DirEntries::default();
        for n in ["a", "b", "c"] {
            l.put(OsStr::new(n), entry());
        }
        l.remove(OsStr::new("a"));
        l.put(OsStr::new("a"), entry());
        assert_eq!(l.keys().collect::<Vec<_>>(), ["b", "c", "a"]);
        assert_eq!(l[OsStr::new("a")].seq, 3);
    }
}
