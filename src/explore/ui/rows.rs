//! The file tree pane's rows: the tree of the selected layer (its own changes, or everything
//! merged up to it) flattened in display order, with collapsed directories, the sort order
//! and the path filter applied.

use std::collections::HashSet;

use regex::Regex;

use crate::explore::tree::{Change, Kind, NodeId, Tree, View, HIDDEN, ROOT};

/// One row of the tree pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The path.
    pub node: NodeId,
    /// Its depth (the root's children are 0).
    pub depth: u16,
    /// What the selected layer did to it.
    pub mark: Option<Change>,
    /// Whether it is a directory with rows beneath it.
    pub dir: bool,
}

/// How siblings are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By name.
    Name,
    /// Largest first.
    Size,
}

/// What the rows show.
pub struct RowOptions<'a> {
    /// Only the selected layer's own entries (else everything merged up to it).
    pub changes_only: bool,
    /// Collapsed directories.
    pub collapsed: &'a HashSet<NodeId>,
    /// Sibling order.
    pub sort: Sort,
    /// Only paths matching this (and the directories above them).
    pub filter: Option<&'a Regex>,
}

/// Whether `node` has a row at all in layer `view.upto` (before collapsing and filtering).
fn shown(tree: &Tree, view: &View, below: Option<&View>, changes_only: bool, n: NodeId) -> bool {
    if changes_only {
        tree.at_layer(n, view.upto).is_some()
    } else if view.top[n as usize] != HIDDEN {
        true
    } else {
        // Deleted by this layer: shown, marked.
        tree.change(view, below, n) == Some(Change::Removed)
    }
}

/// The set of nodes whose path matches `re`, with all their ancestors.
pub fn filter_matches(
    tree: &Tree,
    view: &View,
    below: Option<&View>,
    changes_only: bool,
    re: &Regex,
) -> HashSet<NodeId> {
    let mut keep = HashSet::new();
    let mut stack = vec![(ROOT, String::new())];
    while let Some((n, path)) = stack.pop() {
        for &c in &tree.node(n).children {
            if !shown(tree, view, below, changes_only, c) {
                continue;
            }
            let p = format!("{path}/{}", tree.name(c).to_string_lossy());
            if re.is_match(&p) {
                let mut a = c;
                while a != ROOT && keep.insert(a) {
                    a = tree.node(a).parent;
                }
            }
            stack.push((c, p));
        }
    }
    keep
}

/// The rows in display order. In name order no list is made per directory (children are
/// kept sorted by name), so a tree of 200,000 paths takes a few milliseconds.
pub fn rows(
    tree: &Tree,
    view: &View,
    below: Option<&View>,
    opts: &RowOptions<'_>,
    matches: Option<&HashSet<NodeId>>,
) -> Vec<Row> {
    let keep = |c: NodeId| {
        shown(tree, view, below, opts.changes_only, c) && matches.is_none_or(|m| m.contains(&c))
    };
    let push_children = |stack: &mut Vec<(NodeId, u16)>, n: NodeId, depth: u16| {
        let children = &tree.node(n).children;
        match opts.sort {
            Sort::Name => stack.extend(
                children
                    .iter()
                    .rev()
                    .copied()
                    .filter(|c| keep(*c))
                    .map(|c| (c, depth)),
            ),
            Sort::Size => {
                let mut kids: Vec<NodeId> = children.iter().copied().filter(|c| keep(*c)).collect();
                // The stack pops the last pushed first: ascending sizes, equal ones in reverse
                // name order, pop as largest first, equal ones by name.
                kids.reverse();
                kids.sort_by_key(|c| size_of(tree, view, *c));
                stack.extend(kids.into_iter().map(|c| (c, depth)));
            }
        }
    };
    let mut out = Vec::new();
    let mut stack: Vec<(NodeId, u16)> = Vec::new();
    push_children(&mut stack, ROOT, 0);
    while let Some((n, depth)) = stack.pop() {
        let is_dir = tree
            .visible(view, n)
            .or_else(|| tree.at_layer(n, view.upto))
            .is_some_and(|e| e.kind == Kind::Dir);
        let has_rows = is_dir && tree.node(n).children.iter().any(|c| keep(*c));
        out.push(Row {
            node: n,
            depth,
            mark: tree.change(view, below, n),
            dir: has_rows,
        });
        if has_rows && !opts.collapsed.contains(&n) {
            push_children(&mut stack, n, depth + 1);
        }
    }
    out
}

/// The size shown for a node: visible bytes beneath it, or the deleted version's size.
pub fn size_of(tree: &Tree, view: &View, n: NodeId) -> u64 {
    if view.top[n as usize] != HIDDEN {
        view.size[n as usize]
    } else {
        tree.node(n)
            .versions
            .iter()
            .rev()
            .find(|e| e.kind != Kind::Whiteout)
            .map(|e| e.size)
            .unwrap_or(0)
    }
}
