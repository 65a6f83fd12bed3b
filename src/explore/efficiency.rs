//! Image efficiency exactly as dive (v0.13, `filetree/efficiency.go` and `image/analysis.go`)
//! computes it, so the figures match on the same image:
//!
//! - each layer is seen as its tar: the leaves of that layer's own tree (files, links, empty
//!   directories, whiteouts), in dive's visiting order (children by tar name, deepest first);
//!   a leaf's size is its tar header size (regular files; a hard link's second name is 0);
//! - a whiteout's size is, when the path it deletes was a directory in dive's stack of the
//!   layers below, the sum of the sizes beneath it there; otherwise 0. A whiteout of a path
//!   dive's stack does not have stops dive's walk of that layer (it logs an error): the rest
//!   of the layer is not counted, here too;
//! - every path gets the sum of all its sizes and the smallest; efficiency = sum of smallest
//!   / sum of all (1 when both are 0), over every path;
//! - a path seen in two or more layers is an inefficiency; wasted bytes are the sum of the
//!   inefficient paths' total sizes; the user wasted percent is that over the size of all
//!   layers but the first.
//!
//! dive's stack of layers differs from the union's: it ignores opaque directories and keeps a
//! directory's entries when a later layer replaces the directory by a file. Those rules are
//! followed here for the whiteout sizes (and only there).

use std::collections::{HashMap, HashSet};

use super::stack::Stack;
use super::tree::{Kind, NodeId, Tree, ROOT};

/// One path found in two or more layers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Inefficiency {
    /// The path.
    pub path: String,
    /// How many layers have it.
    pub count: u32,
    /// The sum of its sizes in those layers (what dive calls wasted space).
    pub wasted: u64,
}

/// The figures of an image, as dive's CI mode reports them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Analysis {
    /// Sum of smallest sizes over sum of all sizes, 0..=1.
    pub efficiency: f64,
    /// Bytes of all layers.
    pub size_bytes: u64,
    /// Bytes of all layers but the first.
    pub user_size_bytes: u64,
    /// Sum of the inefficient paths' sizes.
    pub wasted_bytes: u64,
    /// Wasted bytes over user bytes (infinite when there are no user bytes but waste).
    pub user_wasted_percent: f64,
    /// The inefficient paths, the largest first.
    pub inefficiencies: Vec<Inefficiency>,
}

#[derive(Clone, Copy)]
struct PathData {
    count: u32,
    cumulative: u64,
    min: u64,
}

/// The analysis of `stack`.
pub fn analyze(stack: &Stack) -> Analysis {
    let tree = &stack.tree;
    let tar_size = TarSizes::new(tree);
    let mut data: HashMap<NodeId, PathData> = HashMap::new();
    // Paths in the order they became inefficient (their second occurrence), as dive lists them.
    let mut order: Vec<NodeId> = Vec::new();
    for layer in 0..tree.layers {
        for (node, kind, size) in tar_size.leaves(tree, layer) {
            let size = if kind == Kind::Whiteout {
                match whiteout_size(tree, &tar_size, node, layer) {
                    Some(s) => s,
                    // dive's walk of this layer ends here.
                    None => break,
                }
            } else {
                size
            };
            let d = data.entry(node).or_insert(PathData {
                count: 0,
                cumulative: 0,
                min: u64::MAX,
            });
            d.count += 1;
            if d.count == 2 {
                order.push(node);
            }
            d.cumulative += size;
            d.min = d.min.min(size);
        }
    }
    let (mut min_sum, mut all_sum) = (0u128, 0u128);
    for d in data.values() {
        min_sum += d.min as u128;
        all_sum += d.cumulative as u128;
    }
    let efficiency = if all_sum == 0 {
        1.0
    } else {
        min_sum as f64 / all_sum as f64
    };
    // dive sorts them by size, ascending (stably, for lists as short as most are), and
    // reports them from the end: the largest first, of equal ones the last to become
    // inefficient first.
    let mut inefficiencies: Vec<Inefficiency> = order
        .iter()
        .rev()
        .map(|n| Inefficiency {
            path: tree.path(*n),
            count: data[n].count,
            wasted: data[n].cumulative,
        })
        .collect();
    inefficiencies.sort_by_key(|i| std::cmp::Reverse(i.wasted));
    let sizes = stack.layer_sizes();
    let size_bytes: u64 = sizes.iter().sum();
    let user_size_bytes: u64 = sizes.iter().skip(1).sum();
    let wasted_bytes: u64 = inefficiencies.iter().map(|i| i.wasted).sum();
    let user_wasted_percent = if user_size_bytes > 0 {
        wasted_bytes as f64 / user_size_bytes as f64
    } else if wasted_bytes == 0 {
        0.0
    } else {
        f64::INFINITY
    };
    Analysis {
        efficiency,
        size_bytes,
        user_size_bytes,
        wasted_bytes,
        user_wasted_percent,
        inefficiencies,
    }
}

/// Which hard-linked names carry their data in each layer's tar (the first in path order;
/// the others are link entries of size 0).
struct TarSizes {
    /// (node, layer) of names that are links to an earlier name.
    links: HashSet<(NodeId, u16)>,
}

impl TarSizes {
    fn new(tree: &Tree) -> TarSizes {
        let mut first: HashSet<(u16, u64)> = HashSet::new();
        let mut links = HashSet::new();
        // Depth first in name order: the order tar writers walk a directory.
        let mut stack = vec![ROOT];
        while let Some(n) = stack.pop() {
            for e in &tree.nodes[n as usize].versions {
                if e.kind == Kind::File && e.nlink > 1 && !first.insert((e.layer, e.ino)) {
                    links.insert((n, e.layer));
                }
            }
            stack.extend(tree.nodes[n as usize].children.iter().rev());
        }
        TarSizes { links }
    }

    /// The tar header size of `node`'s version in `layer`.
    fn size(&self, tree: &Tree, node: NodeId, layer: u16) -> u64 {
        match tree.at_layer(node, layer as usize) {
            Some(e) if e.kind == Kind::File && !self.links.contains(&(node, layer)) => e.size,
            _ => 0,
        }
    }

    /// The leaves of `layer`'s own tree in dive's order: children sorted by their tar name
    /// (a whiteout's is `.wh.NAME`), deepest first.
    fn leaves(&self, tree: &Tree, layer: usize) -> Vec<(NodeId, Kind, u64)> {
        let mut out = Vec::new();
        let key = |n: NodeId| -> Vec<u8> {
            let name = &tree.nodes[n as usize].name;
            match tree.at_layer(n, layer) {
                Some(e) if e.kind == Kind::Whiteout => [b".wh.", &name[..]].concat(),
                _ => name.to_vec(),
            }
        };
        let mut stack = vec![ROOT];
        while let Some(n) = stack.pop() {
            let Some(e) = tree.at_layer(n, layer) else {
                continue;
            };
            if n != ROOT && !(e.kind == Kind::Dir && e.has_children) {
                out.push((n, e.kind, self.size(tree, n, layer as u16)));
                continue;
            }
            let mut kids: Vec<NodeId> = tree.nodes[n as usize]
                .children
                .iter()
                .copied()
                .filter(|c| tree.at_layer(*c, layer).is_some())
                .collect();
            kids.sort_by_cached_key(|c| key(*c));
            stack.extend(kids.into_iter().rev());
        }
        out
    }
}

/// The size dive gives a whiteout of `node` in `layer`: the bytes beneath the deleted path
/// when dive's stack below has it as a directory, else 0; `None` when dive's stack below
/// does not have the path at all.
fn whiteout_size(tree: &Tree, sizes: &TarSizes, node: NodeId, layer: usize) -> Option<u64> {
    // The last layer below that deleted the path or an ancestor of it.
    let mut removal: Option<u16> = None;
    let mut a = tree.nodes[node as usize].parent;
    let mut ancestors = Vec::new();
    while a != ROOT {
        ancestors.push(a);
        a = tree.nodes[a as usize].parent;
    }
    for a in ancestors.into_iter().rev() {
        removal = removal_of(tree, a, layer, removal);
    }
    let removal = removal_of(tree, node, layer, removal);
    // The version dive's stack holds: the last added after the last removal.
    let alive = |e: &&super::tree::Entry| {
        (e.layer as usize) < layer
            && e.kind != Kind::Whiteout
            && removal.is_none_or(|r| e.layer > r)
    };
    let info = tree.nodes[node as usize].versions.iter().rfind(alive);
    match info {
        Some(e) if e.kind == Kind::Dir => {}
        Some(_) => return Some(0),
        // Only there if something beneath it was added after the removal (as an entry
        // without metadata, not a directory to dive): 0. Else missing.
        None => {
            return if subtree_alive(tree, node, layer, removal) {
                Some(0)
            } else {
                None
            }
        }
    }
    // Sum the sizes of everything alive beneath it.
    let mut total = 0u64;
    let mut stack: Vec<(NodeId, Option<u16>)> = tree.nodes[node as usize]
        .children
        .iter()
        .map(|c| (*c, removal))
        .collect();
    while let Some((n, inherited)) = stack.pop() {
        let r = removal_of(tree, n, layer, inherited);
        if let Some(e) = tree.nodes[n as usize].versions.iter().rfind(|e| {
            (e.layer as usize) < layer && e.kind != Kind::Whiteout && r.is_none_or(|r| e.layer > r)
        }) {
            total += sizes.size(tree, n, e.layer);
        }
        stack.extend(tree.nodes[n as usize].children.iter().map(|c| (*c, r)));
    }
    Some(total)
}

/// The last layer below `layer` whose whiteout deleted `n`, or what its ancestors inherit.
fn removal_of(tree: &Tree, n: NodeId, layer: usize, inherited: Option<u16>) -> Option<u16> {
    tree.nodes[n as usize]
        .versions
        .iter()
        .filter(|e| (e.layer as usize) < layer && e.kind == Kind::Whiteout)
        .map(|e| e.layer)
        .max()
        .max(inherited)
}

/// Whether anything at or beneath `n` was added below `layer` after its last removal.
fn subtree_alive(tree: &Tree, n: NodeId, layer: usize, removal: Option<u16>) -> bool {
    let mut stack = vec![(n, removal)];
    while let Some((n, inherited)) = stack.pop() {
        let r = removal_of(tree, n, layer, inherited);
        if tree.nodes[n as usize].versions.iter().any(|e| {
            (e.layer as usize) < layer && e.kind != Kind::Whiteout && r.is_none_or(|r| e.layer > r)
        }) {
            return true;
        }
        stack.extend(tree.nodes[n as usize].children.iter().map(|c| (*c, r)));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::stack::{Layer, Stack};
    use super::*;
    use std::fs;
    use std::path::Path;

    fn file(p: &Path, size: usize) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, vec![b'x'; size]).unwrap();
    }

    /// Layer 0: /bin/sh 100, /etc/conf 10, /data/{big 1000, small 50}, /hl1 = /hl2 30.
    /// Layer 1: /etc/conf 20, /big2 500, a whiteout of the directory /data.
    /// Layer 2: a whiteout of the file /big2, /etc/conf 5 (and, if `quirk`, a whiteout of a
    /// path no layer has, which ends dive's walk of the layer before /etc).
    fn stack(d: &Path, quirk: bool) -> Stack {
        let l: Vec<_> = (0..3).map(|i| d.join(format!("l{i}"))).collect();
        file(&l[0].join("bin/sh"), 100);
        file(&l[0].join("etc/conf"), 10);
        file(&l[0].join("data/big"), 1000);
        file(&l[0].join("data/small"), 50);
        file(&l[0].join("hl1"), 30);
        fs::hard_link(l[0].join("hl1"), l[0].join("hl2")).unwrap();
        file(&l[1].join("etc/conf"), 20);
        file(&l[1].join("big2"), 500);
        file(&l[1].join(".wh.data"), 0);
        file(&l[2].join(".wh.big2"), 0);
        file(&l[2].join("etc/conf"), 5);
        if quirk {
            file(&l[2].join(".wh.nothing"), 0);
        }
        let layers = l.iter().map(|p| Layer::open(p).unwrap()).collect();
        Stack::read("test".into(), layers).unwrap()
    }

    #[test]
    fn figures_as_dive_computes_them() {
        let d = tempfile::tempdir().unwrap();
        let a = analyze(&stack(d.path(), false));
        // Smallest per path: sh 100, big 1000, small 50, conf 5, hl1 30, hl2 0 (a link entry),
        // big2 0 (its whiteout), data 1050 (the whiteout of a directory of 1050 bytes).
        // All: the same but conf 10+20+5 and big2 500+0.
        assert_eq!(a.efficiency, 2235.0 / 2765.0);
        assert_eq!(
            a.inefficiencies,
            [
                Inefficiency {
                    path: "/big2".into(),
                    count: 2,
                    wasted: 500
                },
                Inefficiency {
                    path: "/etc/conf".into(),
                    count: 3,
                    wasted: 35
                },
            ]
        );
        assert_eq!(a.wasted_bytes, 535);
        assert_eq!(a.size_bytes, 1190 + 520 + 5);
        assert_eq!(a.user_size_bytes, 525);
        assert_eq!(a.user_wasted_percent, 535.0 / 525.0);
    }

    #[test]
    fn a_whiteout_of_nothing_ends_the_layer_as_in_dive() {
        let d = tempfile::tempdir().unwrap();
        let a = analyze(&stack(d.path(), true));
        // Layer 2 is walked `.wh.big2`, `.wh.nothing` (stop): /etc/conf of layer 2 is not seen.
        assert_eq!(a.efficiency, 2240.0 / 2760.0);
        assert_eq!(a.wasted_bytes, 530);
        assert_eq!(a.inefficiencies[1].count, 2);
    }

    #[test]
    fn an_image_without_repeats_is_fully_efficient() {
        let d = tempfile::tempdir().unwrap();
        file(&d.path().join("l0/a"), 10);
        file(&d.path().join("l1/b"), 10);
        let layers = ["l0", "l1"]
            .iter()
            .map(|p| Layer::open(&d.path().join(p)).unwrap())
            .collect();
        let a = analyze(&Stack::read("t".into(), layers).unwrap());
        assert_eq!(a.efficiency, 1.0);
        assert_eq!(a.wasted_bytes, 0);
        assert_eq!(a.user_wasted_percent, 0.0);
        assert!(a.inefficiencies.is_empty());
    }

    #[test]
    fn equal_sizes_are_listed_as_dive_lists_them() {
        // Both become inefficient in layer 1, /a first: dive reports /b first.
        let d = tempfile::tempdir().unwrap();
        for l in ["l0", "l1"] {
            file(&d.path().join(l).join("a"), 10);
            file(&d.path().join(l).join("b"), 10);
        }
        file(&d.path().join("l1/c"), 1);
        file(&d.path().join("l2/c"), 1);
        let layers = ["l0", "l1", "l2"]
            .iter()
            .map(|p| Layer::open(&d.path().join(p)).unwrap())
            .collect();
        let a = analyze(&Stack::read("t".into(), layers).unwrap());
        let paths: Vec<&str> = a.inefficiencies.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["/b", "/a", "/c"]);
    }
}
