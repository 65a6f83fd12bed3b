//! The union tree of a layer stack: one node per path that any layer holds, each with the
//! versions of that path layer by layer (bottom first), and the merged view of the stack up to
//! a layer: which version of each path is visible, and what each layer changed.
//!
//! Node IDs are given parent first (a directory's node exists before its entries are read),
//! so every child's ID is greater than its parent's: a view is computed in one pass up the IDs
//! and directory sizes in one pass down, with no recursion however deep the tree.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Index of a node in [`Tree::nodes`].
pub type NodeId = u32;

/// The root directory's node.
pub const ROOT: NodeId = 0;

/// What a layer holds under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device (not a whiteout).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A whiteout: the name is deleted from the layers below.
    Whiteout,
}

impl Kind {
    /// One letter as `ls -l` shows the type (`-` file, `d` dir, `l` link; `w` whiteout).
    pub fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::CharDevice => 'c',
            Kind::BlockDevice => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
            Kind::Whiteout => 'w',
        }
    }
}

/// `ls -l`'s mode column for a type and permission bits (`drwxr-xr-x`, `-rwsr-xr-x`).
pub fn mode_string(kind: Kind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind.letter());
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        let mut ch = if mode & (0o400 >> i) != 0 { c } else { '-' };
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        if special {
            let (lower, upper) = if i == 8 { ('t', 'T') } else { ('s', 'S') };
            ch = if ch == 'x' { lower } else { upper };
        }
        s.push(ch);
    }
    s
}

/// One layer's entry for a path: its metadata as the layer stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The layer (0 is the bottom).
    pub layer: u16,
    /// Its type.
    pub kind: Kind,
    /// A directory marked opaque in this layer (nothing below shows through).
    pub opaque: bool,
    /// A directory with entries of its own in this layer (whiteouts count, the opaque marker
    /// does not): what makes it a non-leaf in dive's per-layer tree.
    pub has_children: bool,
    /// Size in bytes (regular files; 0 for the others).
    pub size: u64,
    /// Permission and set-id bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds).
    pub mtime: i64,
    /// Inode number in the layer directory (hard links share it).
    pub ino: u64,
    /// Link count.
    pub nlink: u32,
}

/// A path of the union: its name, parent, children (sorted by name) and versions.
#[derive(Debug, Clone)]
pub struct Node {
    /// The name in its parent (empty for the root).
    pub name: Box<[u8]>,
    /// The parent (the root is its own parent).
    pub parent: NodeId,
    /// Children, sorted by name.
    pub children: Vec<NodeId>,
    /// This path in each layer that holds it, bottom first.
    pub versions: Vec<Entry>,
}

/// The union tree of a stack of layers.
#[derive(Debug, Clone)]
pub struct Tree {
    /// All nodes; [`ROOT`] first.
    pub nodes: Vec<Node>,
    /// Number of layers.
    pub layers: usize,
}

/// What a layer did to a path, relative to the stack below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The path was not visible below.
    Added,
    /// The path was visible below and this layer replaced it (or, for a directory, wrote
    /// its entry again).
    Modified,
    /// This layer deletes the path with a whiteout.
    Removed,
}

impl Change {
    /// One letter: `A`, `C` or `D`, as `docker diff` writes them.
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Modified => 'C',
            Change::Removed => 'D',
        }
    }
}

/// The merged view of the stack up to a layer.
#[derive(Debug, Clone)]
pub struct View {
    /// The topmost layer included.
    pub upto: usize,
    /// For each node, the index in its `versions` of the visible one ([`HIDDEN`] if none).
    pub top: Vec<u32>,
    /// For each node, the lowest layer whose entries beneath it show through.
    pub child_floor: Vec<u16>,
    /// For each visible node, the bytes of visible regular files at and beneath it.
    pub size: Vec<u64>,
}

/// No version of the node is visible.
pub const HIDDEN: u32 = u32::MAX;

/// Why the versions of a path below some layer do not show through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The directory (an ancestor, or the path itself for its children) that cuts.
    pub at: NodeId,
    /// The layer that cuts.
    pub layer: u16,
    /// What cuts: an opaque directory, a whiteout, or a non-directory replacing it.
    pub why: CutReason,
}

/// See [`Cut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// The directory is opaque in that layer.
    Opaque,
    /// A whiteout deletes it in that layer.
    Whiteout,
    /// That layer replaced it by something that is not a directory.
    Replaced,
}

impl Tree {
    /// An empty tree over `layers` layers (the root has no versions yet).
    pub fn new(layers: usize) -> Tree {
        Tree {
            nodes: vec![Node {
                name: Box::new([]),
                parent: ROOT,
                children: Vec::new(),
                versions: Vec::new(),
            }],
            layers,
        }
    }

    /// The node's name.
    pub fn name(&self, id: NodeId) -> &OsStr {
        OsStr::from_bytes(&self.nodes[id as usize].name)
    }

    /// The node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// The node's path components from the root.
    pub fn components(&self, mut id: NodeId) -> Vec<&OsStr> {
        let mut out = Vec::new();
        while id != ROOT {
            out.push(self.name(id));
            id = self.nodes[id as usize].parent;
        }
        out.reverse();
        out
    }

    /// The node's absolute path (`/` for the root), names as bytes (lossy for display).
    pub fn path(&self, id: NodeId) -> String {
        if id == ROOT {
            return "/".into();
        }
        let mut s = String::new();
        for c in self.components(id) {
            s.push('/');
            s.push_str(&c.to_string_lossy());
        }
        s
    }

    /// The node's depth (the root is 0).
    pub fn depth(&self, mut id: NodeId) -> usize {
        let mut d = 0;
        while id != ROOT {
            d += 1;
            id = self.nodes[id as usize].parent;
        }
        d
    }

    /// The child of `parent` named `name`.
    pub fn child(&self, parent: NodeId, name: &[u8]) -> Option<NodeId> {
        let ch = &self.nodes[parent as usize].children;
        ch.binary_search_by(|c| (*self.nodes[*c as usize].name).cmp(name))
            .ok()
            .map(|i| ch[i])
    }

    /// The node of an absolute or relative path (`.` and empty components are skipped; `..`
    /// is refused: paths name entries of the image, they are not resolved).
    pub fn lookup(&self, path: &str) -> Option<NodeId> {
        let mut id = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if c == ".." {
                return None;
            }
            id = self.child(id, c.as_bytes())?;
        }
        Some(id)
    }

    /// Add (or find) the child `name` of `parent` while a layer is read. `hint` is where to
    /// start looking in the sorted children (entries come in name order, so the next one is
    /// at or after the last).
    pub(crate) fn child_or_insert(
        &mut self,
        parent: NodeId,
        name: &[u8],
        hint: &mut usize,
    ) -> NodeId {
        let len = self.nodes[parent as usize].children.len();
        let mut i = (*hint).min(len);
        // Entries arrive sorted: scan forward from the hint (a merge of two sorted lists).
        while i < len {
            let c = self.nodes[parent as usize].children[i];
            match (*self.nodes[c as usize].name).cmp(name) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => {
                    *hint = i + 1;
                    return c;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(Node {
            name: name.into(),
            parent,
            children: Vec::new(),
            versions: Vec::new(),
        });
        self.nodes[parent as usize].children.insert(i, id);
        *hint = i + 1;
        id
    }

    /// The visible version at `node` given the floor its parent sets, and the floor it sets
    /// for its own children, in a stack up to `upto`.
    fn step(&self, node: NodeId, floor: u16, upto: usize) -> (u32, u16, Option<(u16, CutReason)>) {
        let versions = &self.nodes[node as usize].versions;
        let in_range = |e: &Entry| e.layer >= floor && (e.layer as usize) <= upto;
        let Some(top) = versions.iter().rposition(in_range) else {
            return (HIDDEN, floor, None);
        };
        let t = &versions[top];
        if t.kind == Kind::Whiteout {
            return (HIDDEN, t.layer + 1, Some((t.layer, CutReason::Whiteout)));
        }
        if t.kind != Kind::Dir {
            return (
                top as u32,
                t.layer + 1,
                Some((t.layer, CutReason::Replaced)),
            );
        }
        for e in versions[..=top].iter().rev().filter(|e| e.layer >= floor) {
            match e.kind {
                Kind::Dir if e.opaque => {
                    return (top as u32, e.layer, Some((e.layer, CutReason::Opaque)))
                }
                Kind::Dir => {}
                Kind::Whiteout => {
                    return (
                        top as u32,
                        e.layer + 1,
                        Some((e.layer, CutReason::Whiteout)),
                    )
                }
                _ => {
                    return (
                        top as u32,
                        e.layer + 1,
                        Some((e.layer, CutReason::Replaced)),
                    )
                }
            }
        }
        (top as u32, floor, None)
    }

    /// The merged view of layers `0..=upto`.
    pub fn view(&self, upto: usize) -> View {
        let n = self.nodes.len();
        let mut top = vec![HIDDEN; n];
        let mut child_floor = vec![0u16; n];
        let mut size = vec![0u64; n];
        for id in 0..n {
            let parent = self.nodes[id].parent as usize;
            if id != ROOT as usize && top[parent] == HIDDEN {
                continue;
            }
            let floor = if id == ROOT as usize {
                0
            } else {
                child_floor[parent]
            };
            let (t, f, _) = self.step(id as NodeId, floor, upto);
            top[id] = t;
            child_floor[id] = f;
            if t != HIDDEN {
                let e = &self.nodes[id].versions[t as usize];
                if e.kind == Kind::File {
                    size[id] = e.size;
                }
            }
        }
        for id in (1..n).rev() {
            if top[id] != HIDDEN {
                let p = self.nodes[id].parent as usize;
                size[p] += size[id];
            }
        }
        View {
            upto,
            top,
            child_floor,
            size,
        }
    }

    /// The visible entry of `node` in `view`.
    pub fn visible<'a>(&'a self, view: &View, node: NodeId) -> Option<&'a Entry> {
        let t = view.top[node as usize];
        (t != HIDDEN).then(|| &self.nodes[node as usize].versions[t as usize])
    }

    /// This layer's entry of `node`, if the layer holds the path.
    pub fn at_layer(&self, node: NodeId, layer: usize) -> Option<&Entry> {
        self.nodes[node as usize]
            .versions
            .iter()
            .find(|e| e.layer as usize == layer)
    }

    /// What layer `view.upto` did to `node`, given the view below it (`below` is the view up
    /// to `view.upto - 1`, or `None` for the bottom layer). `None` if the layer does not hold
    /// the path, or holds a whiteout of something that was not visible.
    pub fn change(&self, view: &View, below: Option<&View>, node: NodeId) -> Option<Change> {
        let e = self.at_layer(node, view.upto)?;
        let was = below.is_some_and(|b| b.top[node as usize] != HIDDEN);
        match e.kind {
            Kind::Whiteout if was => Some(Change::Removed),
            Kind::Whiteout => None,
            _ if view.top[node as usize] == HIDDEN => None,
            _ if was => Some(Change::Modified),
            _ => Some(Change::Added),
        }
    }

    /// How `node` resolves in the stack up to `upto`: the visible version (its index), and
    /// for each of its versions at or below `upto` whether an ancestor's (or its own
    /// directory's) cut hides it.
    pub fn provenance(&self, node: NodeId, upto: usize) -> Provenance {
        // Walk down from the root, keeping the floor and what set it.
        let mut chain = self.components_ids(node);
        chain.insert(0, ROOT);
        let mut floor = 0u16;
        let mut cut: Option<Cut> = None;
        let mut top = HIDDEN;
        for (i, &id) in chain.iter().enumerate() {
            let (t, f, why) = self.step(id, floor, upto);
            if i == chain.len() - 1 {
                top = t;
                break;
            }
            if t == HIDDEN {
                // An ancestor is hidden: the path cannot be visible. Say which one.
                let last = self.nodes[id as usize]
                    .versions
                    .iter()
                    .rev()
                    .find(|e| (e.layer as usize) <= upto && e.kind == Kind::Whiteout);
                if let Some(w) = last {
                    cut = Some(Cut {
                        at: id,
                        layer: w.layer,
                        why: CutReason::Whiteout,
                    });
                } else if let Some(e) = self.nodes[id as usize]
                    .versions
                    .iter()
                    .rev()
                    .find(|e| (e.layer as usize) <= upto)
                {
                    cut = Some(Cut {
                        at: id,
                        layer: e.layer,
                        why: CutReason::Replaced,
                    });
                }
                floor = u16::MAX;
                break;
            }
            if f > floor {
                if let Some((layer, why)) = why {
                    cut = Some(Cut { at: id, layer, why });
                }
            }
            floor = f;
        }
        Provenance {
            node,
            top,
            floor,
            cut,
        }
    }

    /// The node IDs from the root's child down to `node` (empty for the root).
    fn components_ids(&self, mut id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        while id != ROOT {
            out.push(id);
            id = self.nodes[id as usize].parent;
        }
        out.reverse();
        out
    }

    /// Children of `node` that are visible in `view`.
    pub fn visible_children<'a>(
        &'a self,
        view: &'a View,
        node: NodeId,
    ) -> impl Iterator<Item = NodeId> + 'a {
        self.nodes[node as usize]
            .children
            .iter()
            .copied()
            .filter(move |c| view.top[*c as usize] != HIDDEN)
    }
}

/// Where a path's visible version comes from: see [`Tree::provenance`].
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The path.
    pub node: NodeId,
    /// Index in its versions of the visible one, or [`HIDDEN`].
    pub top: u32,
    /// Versions in layers below this do not show (an ancestor cut them off).
    pub floor: u16,
    /// The ancestor cut that set the floor, if any.
    pub cut: Option<Cut>,
}

/// What one layer's version of a path is, in the stack seen from a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It is the visible version.
    Provides,
    /// A version above it replaces it.
    Shadowed,
    /// A whiteout that deletes the versions below it.
    Removes,
    /// An ancestor directory above it was made opaque, deleted or replaced.
    CutOff,
    /// Above the layer the stack is seen from.
    Above,
}

impl Provenance {
    /// Each version of the path, top first, with its role.
    pub fn roles<'a>(&self, tree: &'a Tree, upto: usize) -> Vec<(&'a Entry, Role)> {
        let versions = &tree.nodes[self.node as usize].versions;
        let mut out = Vec::new();
        let mut seen_top = false;
        for (i, e) in versions.iter().enumerate().rev() {
            let role = if e.layer as usize > upto {
                Role::Above
            } else if e.layer < self.floor {
                Role::CutOff
            } else if i as u32 == self.top {
                seen_top = true;
                Role::Provides
            } else if e.kind == Kind::Whiteout && !seen_top {
                Role::Removes
            } else {
                Role::Shadowed
            };
            out.push((e, role));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(layer: u16, kind: Kind, size: u64) -> Entry {
        Entry {
            layer,
            kind,
            opaque: false,
            has_children: false,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            ino: 0,
            nlink: 1,
        }
    }

    /// Build a tree from `(layer, path, kind, size)` in layer order (each layer's paths in
    /// name order; directories before their entries).
    pub(crate) fn build(layers: usize, items: &[(u16, &str, Kind, u64)]) -> Tree {
        let mut t = Tree::new(layers);
        for l in 0..layers as u16 {
            t.nodes[0].versions.push(e(l, Kind::Dir, 0));
        }
        for (l, path, kind, size) in items {
            let mut id = ROOT;
            let comps: Vec<&str> = path
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            for c in &comps {
                let mut hint = 0;
                id = t.child_or_insert(id, c.as_bytes(), &mut hint);
            }
            let mut entry = e(*l, *kind, *size);
            if *kind == Kind::Dir && path.ends_with("/.") {
                entry.opaque = true;
            }
            t.nodes[id as usize].versions.push(entry);
        }
        t
    }

    fn visible_paths(t: &Tree, v: &View) -> Vec<String> {
        let mut out: Vec<String> = (1..t.nodes.len() as NodeId)
            .filter(|i| v.top[*i as usize] != HIDDEN)
            .map(|i| t.path(i))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn whiteout_opaque_and_replacement() {
        let t = build(
            3,
            &[
                (0, "a", Kind::Dir, 0),
                (0, "a/x", Kind::File, 10),
                (0, "a/y", Kind::File, 20),
                (0, "b", Kind::Dir, 0),
                (0, "b/z", Kind::File, 5),
                (0, "c", Kind::File, 7),
                (0, "d", Kind::Dir, 0),
                (0, "d/k", Kind::File, 1),
                // layer 1: delete a/x, make b opaque with a new file, replace c by a dir,
                // replace the directory d by a file.
                (1, "a", Kind::Dir, 0),
                (1, "a/x", Kind::Whiteout, 0),
                (1, "b/.", Kind::Dir, 0),
                (1, "b/n", Kind::File, 3),
                (1, "c", Kind::Dir, 0),
                (1, "c/in", Kind::File, 2),
                (1, "d", Kind::File, 4),
            ],
        );
        let v0 = t.view(0);
        assert_eq!(
            visible_paths(&t, &v0),
            ["/a", "/a/x", "/a/y", "/b", "/b/z", "/c", "/d", "/d/k"]
        );
        let v1 = t.view(1);
        assert_eq!(
            visible_paths(&t, &v1),
            ["/a", "/a/y", "/b", "/b/n", "/c", "/c/in", "/d"]
        );
        assert_eq!(v1.size[ROOT as usize], 20 + 3 + 2 + 4);
        let ax = t.lookup("/a/x").unwrap();
        let bz = t.lookup("/b/z").unwrap();
        let c = t.lookup("/c").unwrap();
        let cin = t.lookup("/c/in").unwrap();
        let bn = t.lookup("/b/n").unwrap();
        assert_eq!(t.change(&v1, Some(&v0), ax), Some(Change::Removed));
        assert_eq!(t.change(&v1, Some(&v0), c), Some(Change::Modified));
        assert_eq!(t.change(&v1, Some(&v0), cin), Some(Change::Added));
        assert_eq!(t.change(&v1, Some(&v0), bn), Some(Change::Added));
        assert_eq!(t.change(&v1, Some(&v0), bz), None);
        assert_eq!(t.change(&v0, None, bz), Some(Change::Added));
        // /b/z is cut off by the opaque /b of layer 1.
        let p = t.provenance(bz, 1);
        assert_eq!(p.top, HIDDEN);
        assert_eq!(
            p.cut,
            Some(Cut {
                at: t.lookup("/b").unwrap(),
                layer: 1,
                why: CutReason::Opaque
            })
        );
        let roles: Vec<Role> = p.roles(&t, 1).iter().map(|r| r.1).collect();
        assert_eq!(roles, [Role::CutOff]);
        // /a/x: the whiteout removes the file.
        let roles: Vec<(u16, Role)> = t
            .provenance(ax, 1)
            .roles(&t, 1)
            .iter()
            .map(|r| (r.0.layer, r.1))
            .collect();
        assert_eq!(roles, [(1, Role::Removes), (0, Role::Shadowed)]);
        // /d/k: the file /d of layer 1 replaced its directory.
        let p = t.provenance(t.lookup("/d/k").unwrap(), 1);
        assert_eq!(p.top, HIDDEN);
        assert_eq!(p.cut.unwrap().why, CutReason::Replaced);
        // Seen from layer 0 everything is as it was.
        assert_eq!(t.provenance(bz, 0).top, 0);
        assert_eq!(t.provenance(bz, 0).roles(&t, 0)[0].1, Role::Provides);
    }

    #[test]
    fn readded_after_whiteout() {
        let t = build(
            3,
            &[
                (0, "d", Kind::Dir, 0),
                (0, "d/old", Kind::File, 1),
                (1, "d", Kind::Whiteout, 0),
                (2, "d", Kind::Dir, 0),
                (2, "d/new", Kind::File, 2),
            ],
        );
        assert_eq!(visible_paths(&t, &t.view(1)), Vec::<String>::new());
        // A directory added again over a whiteout does not show what was below it.
        assert_eq!(visible_paths(&t, &t.view(2)), ["/d", "/d/new"]);
        let (v1, v2) = (t.view(1), t.view(2));
        let d = t.lookup("/d").unwrap();
        assert_eq!(t.change(&v2, Some(&v1), d), Some(Change::Added));
        let p = t.provenance(t.lookup("/d/old").unwrap(), 2);
        assert_eq!(p.cut.unwrap().why, CutReason::Whiteout);
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(Kind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o2640), "-rw-r-S---");
        assert_eq!(mode_string(Kind::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn lookup_refuses_dotdot() {
        let t = build(1, &[(0, "a", Kind::Dir, 0), (0, "a/b", Kind::File, 1)]);
        assert!(t.lookup("/a/../a/b").is_none());
        assert_eq!(t.lookup("a/./b"), t.lookup("/a/b"));
        assert_eq!(t.path(t.lookup("/a/b").unwrap()), "/a/b");
    }
}
