//! Two stacks compared as their merged top views: what the second adds (A), changes (C) and
//! deletes (D) relative to the first, with sizes, and which layers they share.

use std::io::Read;

use super::content;
use super::stack::Stack;
use super::tree::{Entry, Kind, NodeId, View, ROOT};
use super::Result;

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// `A`, `C` or `D`.
    pub kind: char,
    /// The path.
    pub path: String,
    /// Its size in the first stack (regular files), if there.
    pub old_size: Option<u64>,
    /// Its size in the second stack (regular files), if there.
    pub new_size: Option<u64>,
}

/// The result of [`compare`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    /// How many bottom layers the two share (same content digest, or same directory).
    pub shared_layers: usize,
    /// The differences, in path order.
    pub differences: Vec<Difference>,
}

/// Compare the top views of `a` and `b`.
pub fn compare(a: &Stack, b: &Stack) -> Result<Comparison> {
    let shared_layers = a
        .layers
        .iter()
        .zip(&b.layers)
        .take_while(|(x, y)| match (&x.diff_id, &y.diff_id) {
            (Some(p), Some(q)) => p == q,
            _ => x.dir == y.dir,
        })
        .count();
    let (va, vb) = (a.tree.view(a.top()), b.tree.view(b.top()));
    let mut out = Vec::new();
    // Pairs of directories visible in both, walked in name order.
    let mut stack: Vec<(NodeId, NodeId)> = vec![(ROOT, ROOT)];
    while let Some((na, nb)) = stack.pop() {
        let ka: Vec<NodeId> = a.tree.visible_children(&va, na).collect();
        let kb: Vec<NodeId> = b.tree.visible_children(&vb, nb).collect();
        let (mut i, mut j) = (0, 0);
        let mut sub = Vec::new();
        while i < ka.len() || j < kb.len() {
            let ord = match (ka.get(i), kb.get(j)) {
                (Some(x), Some(y)) => a.tree.node(*x).name.cmp(&b.tree.node(*y).name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    subtree(a, &va, ka[i], 'D', &mut out);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    subtree(b, &vb, kb[j], 'A', &mut out);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (ka[i], kb[j]);
                    let ex = *a.tree.visible(&va, x).expect("visible");
                    let ey = *b.tree.visible(&vb, y).expect("visible");
                    if ex.kind == Kind::Dir && ey.kind == Kind::Dir {
                        if meta_differs(&ex, &ey) {
                            out.push(diff('C', a.tree.path(x), &ex, &ey));
                        }
                        sub.push((x, y));
                    } else if ex.kind == Kind::Dir || ey.kind == Kind::Dir {
                        subtree(a, &va, x, 'D', &mut out);
                        subtree(b, &vb, y, 'A', &mut out);
                    } else if differs(a, x, &ex, b, y, &ey)? {
                        out.push(diff('C', a.tree.path(x), &ex, &ey));
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        stack.extend(sub.into_iter().rev());
    }
    out.sort_by(|p, q| p.path.cmp(&q.path).then(q.kind.cmp(&p.kind)));
    Ok(Comparison {
        shared_layers,
        differences: out,
    })
}

fn size_of(e: &Entry) -> Option<u64> {
    (e.kind == Kind::File).then_some(e.size)
}

fn diff(kind: char, path: String, old: &Entry, new: &Entry) -> Difference {
    Difference {
        kind,
        path,
        old_size: size_of(old),
        new_size: size_of(new),
    }
}

/// Every visible path at and beneath `node` as added or deleted.
fn subtree(s: &Stack, v: &View, node: NodeId, kind: char, out: &mut Vec<Difference>) {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        let Some(e) = s.tree.visible(v, n) else {
            continue;
        };
        let size = size_of(e);
        out.push(Difference {
            kind,
            path: s.tree.path(n),
            old_size: if kind == 'D' { size } else { None },
            new_size: if kind == 'A' { size } else { None },
        });
        stack.extend(s.tree.visible_children(v, n));
    }
}

fn meta_differs(x: &Entry, y: &Entry) -> bool {
    x.kind != y.kind || x.mode != y.mode || x.uid != y.uid || x.gid != y.gid
}

/// Whether two non-directories differ: type, metadata, link target or content (the same
/// layer directory holds the same file).
fn differs(a: &Stack, x: NodeId, ex: &Entry, b: &Stack, y: NodeId, ey: &Entry) -> Result<bool> {
    if meta_differs(ex, ey) || ex.size != ey.size {
        return Ok(true);
    }
    let (la, lb) = (&a.layers[ex.layer as usize], &b.layers[ey.layer as usize]);
    if la.dir == lb.dir || (la.diff_id.is_some() && la.diff_id == lb.diff_id) {
        return Ok(false);
    }
    match ex.kind {
        Kind::Symlink => Ok(content::link_target(a, ex.layer as usize, x)?
            != content::link_target(b, ey.layer as usize, y)?),
        Kind::File => {
            let mut fa = content::open(a, ex.layer as usize, x)?;
            let mut fb = content::open(b, ey.layer as usize, y)?;
            let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            loop {
                let n = read_full(&mut fa, &mut ba)?;
                let m = read_full(&mut fb, &mut bb)?;
                if n != m || ba[..n] != bb[..m] {
                    return Ok(true);
                }
                if n == 0 {
                    return Ok(false);
                }
            }
        }
        _ => Ok(false),
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..]).map_err(super::io_err("read"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::super::stack::Layer;
    use super::*;
    use std::fs;

    #[test]
    fn adds_changes_deletes_and_shared_layers() {
        let d = tempfile::tempdir().unwrap();
        let p = |s: &str| d.path().join(s);
        fs::create_dir_all(p("base/etc")).unwrap();
        fs::write(p("base/etc/a"), "1").unwrap();
        fs::write(p("base/etc/same"), "s").unwrap();
        fs::create_dir_all(p("x/etc")).unwrap();
        fs::write(p("x/etc/a"), "2").unwrap();
        fs::write(p("x/old"), "old").unwrap();
        fs::create_dir_all(p("y/etc/new")).unwrap();
        fs::write(p("y/etc/new/f"), "four").unwrap();
        let open = |names: &[&str]| {
            let layers = names.iter().map(|n| Layer::open(&p(n)).unwrap()).collect();
            Stack::read("t".into(), layers).unwrap()
        };
        let c = compare(&open(&["base", "x"]), &open(&["base", "y"])).unwrap();
        assert_eq!(c.shared_layers, 1);
        let lines: Vec<String> = c
            .differences
            .iter()
            .map(|d| format!("{} {} {:?} {:?}", d.kind, d.path, d.old_size, d.new_size))
            .collect();
        assert_eq!(
            lines,
            [
                "C /etc/a Some(1) Some(1)",
                "A /etc/new None None",
                "A /etc/new/f None Some(4)",
                "D /old Some(3) None",
            ]
        );
    }
}
