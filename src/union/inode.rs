//! The node table: one node per union object the kernel knows, indexed by node id and by the
//! (device, inode) of the objects behind it, so hard links share a node and copy-up keeps it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustix::io::Errno;

use super::dir::{LayerIndex, Listing};

/// The FUSE node id of the root directory.
pub const ROOT_ID: u64 = 1;

/// Inode numbers of one filesystem occupy the low bits; the filesystem's index the high bits
/// (the kernel's `xino` idea), so layers on different filesystems never collide.
const XINO_SHIFT: u32 = 48;
/// Ids handed out when the natural one is taken by a node that is gone from the tree.
const ALLOCATED_BASE: u64 = 1 << 62;

/// Where a node sits in the union: its parent directory and its name there.
#[derive(Debug, Clone)]
pub struct Location {
    /// The parent directory (`None` only for the root).
    pub parent: Option<Arc<Node>>,
    /// The name in the parent.
    pub name: OsString,
}

impl Location {
    /// Whether this is `name` in the directory with id `parent`.
    pub fn is(&self, parent: u64, name: &OsStr) -> bool {
        self.name == name && self.parent.as_ref().is_some_and(|p| p.id == parent)
    }
}

/// The mutable part of a node.
#[derive(Debug, Default)]
pub struct NodeState {
    /// Layers holding the object, top first. A non-directory has exactly one; a directory has
    /// every layer that merges into it (opacity already applied).
    pub layers: Vec<LayerIndex>,
    /// The merged listing of a directory, once read.
    pub listing: Option<Arc<Listing>>,
    /// For an upper file whose data is still in a lower layer (metacopy): that layer.
    pub metacopy: Option<LayerIndex>,
}

impl NodeState {
    /// The layer holding the visible object.
    pub fn top(&self) -> LayerIndex {
        self.layers[0]
    }
}

/// One object of the union that the kernel holds a reference to.
#[derive(Debug)]
pub struct Node {
    /// The FUSE node id, also reported as the inode number.
    pub id: u64,
    /// Whether this is a directory (a node never changes type).
    pub is_dir: bool,
    /// Parent and name; changed by rename.
    pub loc: RwLock<Location>,
    /// Further names of a hard-linked non-directory that the union has seen, so the node
    /// keeps a valid name when `loc`'s is removed.
    aliases: Mutex<Vec<Location>>,
    /// Layers, listing and liveness; namespace changes in a directory hold its write lock.
    pub state: RwLock<NodeState>,
    /// Cached fds of this directory in each of its layers (`O_PATH`, or readable when opened
    /// to read it; only the listing reads them, under the state write lock).
    dir_fds: Mutex<Vec<(LayerIndex, Arc<OwnedFd>)>>,
    /// How many lookups the kernel holds (FUSE `forget` takes them back).
    lookups: AtomicU64,
    /// Correction of a hard link's link count, as the kernel's index keeps it: names of a
    /// lower inode removed through the mount count down; at copy-up the union count carries
    /// over, including names the union cannot show (covered by whiteouts or opaque
    /// directories) that the upper copy is not linked to.
    pub nlink_adjust: std::sync::atomic::AtomicI64,
    /// The node's last name was removed; it lives on only through open files. Atomic so the
    /// node table can read it without taking the state lock (which would invert lock order).
    unlinked: AtomicBool,
    /// Unlinked here but not gone: the name removed was the last the union knew of this hard
    /// link, yet the object still has links (names the kernel has not looked up since it last
    /// forgot the node). Its identity (id, link-count correction) stays, and the next lookup
    /// of one of those names brings the node back with that name.
    nameless: AtomicBool,
    /// The subdirectories of this directory were handed to the read-ahead once.
    pub prefetched: AtomicBool,
    /// Clients stat the files of this directory (the kernel looked one up), or it was listed
    /// with attributes because its parent's were: readdirplus answers it in full.
    pub stat_walk: AtomicBool,
    /// Clients stat files in a directory below this one: its other subdirectories, the
    /// siblings and cousins of that one, are likely walked the same way.
    pub stat_walk_below: AtomicBool,
    /// Open files of this node opened to execute it (`__FMODE_EXEC`): while there are any, the
    /// kernel denies writes to the inode, but an `O_RDONLY|O_TRUNC` open reaches us (with
    /// `FUSE_ATOMIC_O_TRUNC`) before the kernel checks, so the union must refuse it itself.
    executing: AtomicU64,
}

impl Node {
    /// A node with no kernel references yet.
    pub fn new(
        id: u64,
        is_dir: bool,
        parent: Option<Arc<Node>>,
        name: &OsStr,
        layers: Vec<LayerIndex>,
    ) -> Node {
        Node {
            id,
            is_dir,
            loc: RwLock::new(Location {
                parent,
                name: name.to_owned(),
            }),
            state: RwLock::new(NodeState {
                layers,
                listing: None,
                metacopy: None,
            }),
            aliases: Mutex::new(Vec::new()),
            dir_fds: Mutex::new(Vec::new()),
            lookups: AtomicU64::new(0),
            unlinked: AtomicBool::new(false),
            nameless: AtomicBool::new(false),
            prefetched: AtomicBool::new(false),
            stat_walk: AtomicBool::new(false),
            stat_walk_below: AtomicBool::new(false),
            nlink_adjust: std::sync::atomic::AtomicI64::new(0),
            executing: AtomicU64::new(0),
        }
    }

    /// Count an open of this node for execution (`exec` true) or end one (false).
    pub fn count_exec_open(&self, exec: bool) {
        if exec {
            self.executing.fetch_add(1, Ordering::Relaxed);
        } else {
            self.executing.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a process executes this file through the mount (an exec open is not released).
    pub fn is_executing(&self) -> bool {
        self.executing.load(Ordering::Relaxed) > 0
    }

    /// Every name of this node the union knows, the main one first.
    pub fn names(&self) -> Vec<Location> {
        let mut out = vec![self.loc.read().clone()];
        out.extend(self.aliases.lock().iter().cloned());
        out
    }

    /// Whether `name` in directory `parent` is one of this node's names.
    pub fn has_name(&self, parent: u64, name: &OsStr) -> bool {
        self.loc.read().is(parent, name) || self.aliases.lock().iter().any(|a| a.is(parent, name))
    }

    /// Remember that `name` in `parent` is another name of this node.
    pub fn add_alias(&self, parent: &Arc<Node>, name: &OsStr) {
        if self.loc.read().is(parent.id, name) {
            return;
        }
        let mut aliases = self.aliases.lock();
        if !aliases.iter().any(|a| a.is(parent.id, name)) {
            aliases.push(Location {
                parent: Some(parent.clone()),
                name: name.to_owned(),
            });
        }
    }

    /// Forget the name `name` in directory `parent` (it was removed); if it was the main
    /// one, another known name takes its place. Whether one did (false: the node has no
    /// known name left).
    pub fn remove_name(&self, parent: u64, name: &OsStr) -> bool {
        let mut aliases = self.aliases.lock();
        let mut loc = self.loc.write();
        if loc.is(parent, name) {
            match aliases.pop() {
                Some(next) => *loc = next,
                None => return false,
            }
        } else {
            aliases.retain(|a| !a.is(parent, name));
        }
        true
    }

    /// The name `name` in directory `parent` is now `to`.
    pub fn rename_name(&self, parent: u64, name: &OsStr, to: Location) {
        let mut aliases = self.aliases.lock();
        let mut loc = self.loc.write();
        if loc.is(parent, name) {
            *loc = to;
        } else if let Some(a) = aliases.iter_mut().find(|a| a.is(parent, name)) {
            *a = to;
        } else {
            *loc = to;
        }
    }

    /// Whether the node's last name is gone.
    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Acquire)
    }

    /// Undo [`Node::set_unlinked`] (the removal it announced failed).
    pub fn set_linked(&self) {
        self.unlinked.store(false, Ordering::Release);
    }

    /// Record that the node's last name is gone.
    pub fn set_unlinked(&self) {
        self.nameless.store(false, Ordering::Release);
        self.unlinked.store(true, Ordering::Release);
    }

    /// Record that the last name the union knew of this hard link is gone while the object
    /// has other links: path operations stop (as for an unlinked node; open files go on), and
    /// a lookup of another name revives the node (see [`NodeTable::lookup_or_insert`]).
    pub fn set_nameless(&self) {
        self.nameless.store(true, Ordering::Release);
        self.unlinked.store(true, Ordering::Release);
    }

    fn is_nameless(&self) -> bool {
        self.nameless.load(Ordering::Acquire)
    }

    /// Bring a nameless node back under the name `loc` (found by a lookup).
    fn revive(&self, loc: Location) {
        let mut aliases = self.aliases.lock();
        let mut l = self.loc.write();
        aliases.clear();
        *l = loc;
        self.nameless.store(false, Ordering::Release);
        self.unlinked.store(false, Ordering::Release);
    }

    /// Names from the root down to this node.
    pub fn path_components(&self) -> Vec<OsString> {
        let mut out = Vec::new();
        let mut loc = self.loc.read().clone();
        while let Some(parent) = loc.parent {
            out.push(loc.name);
            loc = parent.loc.read().clone();
        }
        out.reverse();
        out
    }

    /// The parent directory and the name in it.
    pub fn location(&self) -> Location {
        self.loc.read().clone()
    }

    /// The parent directory (`None` for the root), without copying the name.
    pub fn parent(&self) -> Option<Arc<Node>> {
        self.loc.read().parent.clone()
    }

    /// Record that the client stats files in this directory (the kernel looked one up):
    /// readdirplus then answers it, and directories near it, in full. Once per directory, so
    /// the lookups of a stat walk pay one atomic swap each.
    pub fn mark_stat_walk(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.stat_walk.swap(true, Relaxed) {
            return;
        }
        let mut up = self.parent();
        for _ in 0..2 {
            let Some(a) = up else { break };
            a.stat_walk_below.store(true, Relaxed);
            up = a.parent();
        }
    }

    /// A cached fd of this directory in `layer`.
    pub fn cached_fd(&self, layer: LayerIndex) -> Option<Arc<OwnedFd>> {
        self.dir_fds
            .lock()
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, fd)| fd.clone())
    }

    /// Remember an fd of this directory in `layer`, if the fd budget allows.
    pub fn cache_fd(&self, layer: LayerIndex, fd: Arc<OwnedFd>) {
        if FD_BUDGET.take() {
            let mut fds = self.dir_fds.lock();
            if fds.iter().any(|(l, _)| *l == layer) {
                FD_BUDGET.give_back(1);
            } else {
                fds.push((layer, fd));
            }
        }
    }

    /// Drop the cached fds (the directory is gone).
    pub fn clear_fds(&self) {
        let mut fds = self.dir_fds.lock();
        FD_BUDGET.give_back(fds.len());
        fds.clear();
    }
}

/// A cap on cached directory fds, so the daemon stays far below RLIMIT_NOFILE. Shared by all
/// nodes of the process: a node gives its share back when it is dropped.
#[derive(Debug)]
pub struct FdBudget {
    left: AtomicUsize,
}

/// The process-wide budget of cached directory fds.
pub static FD_BUDGET: FdBudget = FdBudget {
    left: AtomicUsize::new(0),
};

impl FdBudget {
    /// Set the number of fds that may be cached.
    pub fn set(&self, n: usize) {
        self.left.store(n, Ordering::Release);
    }

    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        FD_BUDGET.give_back(self.dir_fds.get_mut().len());
    }
}

/// Identity of an object in a layer.
pub type ObjectKey = (u64, u64);

/// Object identities to node ids, both ways.
#[derive(Debug, Default)]
struct IdMaps {
    by_key: HashMap<ObjectKey, u64, foldhash::fast::RandomState>,
    by_id: HashMap<u64, Vec<ObjectKey>, foldhash::fast::RandomState>,
}

impl IdMaps {
    fn insert(&mut self, key: ObjectKey, id: u64) {
        if let Some(old) = self.by_key.insert(key, id) {
            if let Some(keys) = self.by_id.get_mut(&old) {
                keys.retain(|k| *k != key);
            }
        }
        self.by_id.entry(id).or_default().push(key);
    }
}

/// All nodes the kernel knows, and the identities behind them.
#[derive(Debug)]
pub struct NodeTable {
    nodes: RwLock<HashMap<u64, Arc<Node>, foldhash::fast::RandomState>>,
    /// (device, inode) of layer objects to node id: hard links share an id, and a copied-up
    /// file's upper object maps to its origin's id, so inode numbers survive copy-up.
    ids: Mutex<IdMaps>,
    next_allocated: AtomicU64,
    /// Link-count corrections (`Node::nlink_adjust`) of hard links the kernel has forgotten,
    /// by node id: the next node made for that id (the same object, looked up again after
    /// memory pressure) must report the same count. Retired with the id.
    nlink_corrections: Mutex<HashMap<u64, i64>>,
}

impl NodeTable {
    /// A table holding only `root`.
    pub fn new(root: Node) -> Self {
        let root = Arc::new(root);
        root.lookups.store(1, Ordering::Relaxed);
        let mut nodes = HashMap::default();
        nodes.insert(ROOT_ID, root);
        NodeTable {
            nodes: RwLock::new(nodes),
            ids: Mutex::new(IdMaps::default()),
            next_allocated: AtomicU64::new(ALLOCATED_BASE),
            nlink_corrections: Mutex::new(HashMap::new()),
        }
    }

    /// The node with id `id`, if the kernel still holds it.
    pub fn get(&self, id: u64) -> Result<Arc<Node>, Errno> {
        self.nodes.read().get(&id).cloned().ok_or(Errno::STALE)
    }

    /// The root directory.
    pub fn root(&self) -> Arc<Node> {
        self.get(ROOT_ID).expect("root is never forgotten")
    }

    /// The id for the object `key` on the filesystem with index `fs_index`.
    pub fn id_for(&self, key: ObjectKey, fs_index: u64) -> u64 {
        let mut ids = self.ids.lock();
        if let Some(id) = ids.by_key.get(&key) {
            return *id;
        }
        let natural = key.1 | (fs_index << XINO_SHIFT);
        if key.1 >> XINO_SHIFT == 0 && natural != ROOT_ID && natural < ALLOCATED_BASE {
            // A function of the key alone: nothing to remember (readdir asks this for every
            // entry of every directory listed).
            return natural;
        }
        let id = self.next_allocated.fetch_add(1, Ordering::Relaxed);
        ids.insert(key, id);
        id
    }

    /// Make `key` (a new object, e.g. a copy-up's upper file) map to the existing id `id`.
    pub fn alias(&self, key: ObjectKey, id: u64) {
        self.ids.lock().insert(key, id);
    }

    /// Forget every identity of the gone node `id`, so an object that reuses one of its
    /// inode numbers gets a fresh id and is never confused with it.
    pub fn retire(&self, id: u64) {
        self.nlink_corrections.lock().remove(&id);
        let mut ids = self.ids.lock();
        if let Some(keys) = ids.by_id.remove(&id) {
            for key in keys {
                if ids.by_key.get(&key) == Some(&id) {
                    ids.by_key.remove(&key);
                }
            }
        }
    }

    /// Find or add the node for the layer object `key` and count one kernel lookup of it.
    /// `make` builds a new node with the id it is given. A node whose object is gone (unlinked
    /// but still open) is never reused: the new object gets a fresh id. A nameless node
    /// ([`Node::set_nameless`]: the object lives on under names not looked up) is the same
    /// object, so it comes back under the name `at` gives.
    pub fn lookup_or_insert(
        &self,
        key: ObjectKey,
        fs_index: u64,
        at: impl FnOnce() -> Location,
        make: impl FnOnce(u64) -> Node,
    ) -> Arc<Node> {
        let mut id = self.id_for(key, fs_index);
        {
            // The common case, a known node, only needs the read lock: `forget` removes
            // nodes under the write lock, so it sees this count.
            let nodes = self.nodes.read();
            if let Some(node) = nodes.get(&id).filter(|n| !n.is_unlinked()) {
                node.lookups.fetch_add(1, Ordering::Relaxed);
                return node.clone();
            }
        }
        let mut nodes = self.nodes.write();
        if let Some(node) = nodes.get(&id) {
            if node.is_nameless() {
                node.revive(at());
            }
            if !node.is_unlinked() {
                node.lookups.fetch_add(1, Ordering::Relaxed);
                return node.clone();
            }
            id = self.next_allocated.fetch_add(1, Ordering::Relaxed);
            self.ids.lock().insert(key, id);
        }
        let node = Arc::new(make(id));
        node.lookups.store(1, Ordering::Relaxed);
        if let Some(adjust) = self.nlink_corrections.lock().remove(&id) {
            node.nlink_adjust.store(adjust, Ordering::Relaxed);
        }
        nodes.insert(id, node.clone());
        node
    }

    /// Count one more kernel lookup of a node already in the table.
    pub fn add_lookup(&self, node: &Node) {
        node.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// Take back `n` kernel lookups of `id`; the node goes when none are left.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut nodes = self.nodes.write();
        if let Some(node) = nodes.get(&id) {
            let before = node.lookups.load(Ordering::Relaxed);
            node.lookups
                .store(before.saturating_sub(n), Ordering::Relaxed);
            if before <= n {
                let adjust = node.nlink_adjust.load(Ordering::Relaxed);
                if adjust != 0 && (!node.is_unlinked() || node.is_nameless()) {
                    self.nlink_corrections.lock().insert(id, adjust);
                }
                nodes.remove(&id);
            }
        }
    }

    /// Undo one lookup that was counted but not handed to the kernel.
    pub fn unref(&self, id: u64) {
        self.forget(id, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> NodeTable {
        NodeTable::new(Node::new(ROOT_ID, true, None, OsStr::new(""), vec![0]))
    }

    fn here() -> Location {
        Location {
            parent: None,
            name: "f".into(),
        }
    }

    #[test]
    fn natural_ids_are_computed_not_remembered() {
        let t = table();
        let key = (7, 1234);
        let id = t.id_for(key, 2);
        assert_eq!(id, 1234 | (2 << XINO_SHIFT));
        assert_eq!(t.id_for(key, 2), id);
        // Listing a directory asks for every entry's id: nothing is kept for that.
        assert!(t.ids.lock().by_key.is_empty());
        // An inode number too wide for the natural form gets an allocated id, kept.
        let wide = (7, 1 << XINO_SHIFT);
        let allocated = t.id_for(wide, 2);
        assert!(allocated >= ALLOCATED_BASE);
        assert_eq!(t.id_for(wide, 2), allocated);
    }

    #[test]
    fn aliases_win_and_a_reused_inode_of_an_open_unlinked_node_gets_a_fresh_id() {
        let t = table();
        let lower = (7, 10);
        let node = t.lookup_or_insert(lower, 1, here, |id| {
            Node::new(id, false, None, OsStr::new("f"), vec![1])
        });
        // Copied up: the upper object keeps the lower one's id.
        let upper = (8, 99);
        t.alias(upper, node.id);
        assert_eq!(t.id_for(upper, 0), node.id);
        // Unlinked while open; a new file reuses the lower inode number.
        node.set_unlinked();
        let again = t.lookup_or_insert(lower, 1, here, |id| {
            Node::new(id, false, None, OsStr::new("f"), vec![1])
        });
        assert_ne!(again.id, node.id);
        assert_eq!(t.id_for(lower, 1), again.id);
    }

    #[test]
    fn a_nameless_node_comes_back_with_its_id_and_link_count_correction() {
        let t = table();
        let root = t.root();
        let at = |name: &str| Location {
            parent: Some(root.clone()),
            name: name.into(),
        };
        let upper = (8, 40);
        let node = t.lookup_or_insert(
            upper,
            0,
            || at("p0"),
            |id| Node::new(id, false, Some(root.clone()), OsStr::new("p0"), vec![0]),
        );
        node.nlink_adjust.store(1, Ordering::Relaxed);
        assert!(
            !node.remove_name(ROOT_ID, OsStr::new("p0")),
            "no other name known"
        );
        node.set_nameless();
        assert!(node.is_unlinked());
        // The kernel forgets it; the correction is kept for the object's other names.
        t.forget(node.id, 1);
        let again = t.lookup_or_insert(
            upper,
            0,
            || at("y"),
            |id| Node::new(id, false, Some(root.clone()), OsStr::new("y"), vec![0]),
        );
        assert_eq!(again.id, node.id);
        assert_eq!(again.nlink_adjust.load(Ordering::Relaxed), 1);
        // Still held by the kernel (an open file): the same node comes back, named again.
        let held = t.lookup_or_insert(
            upper,
            0,
            || at("y"),
            |id| Node::new(id, false, Some(root.clone()), OsStr::new("y"), vec![0]),
        );
        assert!(!held.remove_name(ROOT_ID, OsStr::new("y")));
        held.set_nameless();
        let revived = t.lookup_or_insert(
            upper,
            0,
            || at("f"),
            |id| Node::new(id, false, Some(root.clone()), OsStr::new("f"), vec![0]),
        );
        assert!(Arc::ptr_eq(&held, &revived));
        assert!(!revived.is_unlinked());
        assert!(revived.loc.read().is(ROOT_ID, OsStr::new("f")));
    }
}
