//! Reading what a layer holds at a path: files opened beneath the layer root (never by a
//! host path), read a page at a time (never whole), shown as text or hex, compared line by
//! line with the version they replace, and copied out to the host.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};

use super::stack::Stack;
use super::tree::{Kind, NodeId, View};
use super::{errno, io_err, Error, Result};
use crate::overlay::beneath;

/// Open `node` as layer `layer` holds it, beneath the layer's root, for reading.
pub fn open(stack: &Stack, layer: usize, node: NodeId) -> Result<File> {
    let comps = stack.tree.components(node);
    let fd = beneath::open_beneath(
        stack.layers[layer].root.as_fd(),
        &comps,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK,
    )
    .map_err(errno(format!(
        "open {} in layer {layer}",
        stack.tree.path(node)
    )))?;
    Ok(File::from(fd))
}

/// The target of the symlink `node` in layer `layer`.
pub fn link_target(stack: &Stack, layer: usize, node: NodeId) -> Result<Vec<u8>> {
    let comps = stack.tree.components(node);
    let (name, dirs) = comps
        .split_last()
        .ok_or_else(|| Error::Invalid("the root is not a link".into()))?;
    let dir = beneath::open_beneath(
        stack.layers[layer].root.as_fd(),
        dirs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
    )
    .map_err(errno(format!("open {}", stack.tree.path(node))))?;
    let t = rfs::readlinkat(&dir, *name, Vec::new())
        .map_err(errno(format!("readlink {}", stack.tree.path(node))))?;
    Ok(t.into_bytes())
}

/// Up to `len` bytes of `file` from `offset`.
pub fn read_page(file: &File, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = file
            .read_at(&mut buf[got..], offset + got as u64)
            .map_err(io_err("read"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Whether `bytes` (the start of a file) look like text: no NUL, valid UTF-8 (a character cut
/// at the end of the page is fine).
pub fn is_text(bytes: &[u8]) -> bool {
    if bytes.contains(&0) {
        return false;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// `bytes` as hex dump lines (`offset  hex  |ascii|`), 16 bytes a line, offsets from `base`.
pub fn hex_lines(bytes: &[u8], base: u64) -> Vec<String> {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let mut s = format!("{:08x}  ", base + (i * 16) as u64);
            for j in 0..16 {
                match c.get(j) {
                    Some(b) => s.push_str(&format!("{b:02x} ")),
                    None => s.push_str("   "),
                }
                if j == 7 {
                    s.push(' ');
                }
            }
            s.push('|');
            s.extend(c.iter().map(|b| {
                if b.is_ascii_graphic() || *b == b' ' {
                    *b as char
                } else {
                    '.'
                }
            }));
            s.push('|');
            s
        })
        .collect()
}

/// One line of a line diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffLine {
    /// In both.
    Same(String),
    /// Only in the old version.
    Old(String),
    /// Only in the new version.
    New(String),
}

/// Longest lines compared: beyond this many lines of either side the diff is of the first
/// lines only (the UI says so).
pub const DIFF_MAX_LINES: usize = 2000;

/// A line diff of `old` and `new` (longest common subsequence).
pub fn diff_lines(old: &str, new: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = old.lines().take(DIFF_MAX_LINES).collect();
    let b: Vec<&str> = new.lines().take(DIFF_MAX_LINES).collect();
    // Common prefix and suffix first: most edits are small.
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let (n, m) = (ma.len(), mb.len());
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if ma[i] == mb[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let mut out: Vec<DiffLine> = a[..pre]
        .iter()
        .map(|l| DiffLine::Same(l.to_string()))
        .collect();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && ma[i] == mb[j] {
            out.push(DiffLine::Same(ma[i].to_string()));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            out.push(DiffLine::Old(ma[i].to_string()));
            i += 1;
        } else {
            out.push(DiffLine::New(mb[j].to_string()));
            j += 1;
        }
    }
    out.extend(
        a[a.len() - suf..]
            .iter()
            .map(|l| DiffLine::Same(l.to_string())),
    );
    out
}

/// Copy `node` as `view` shows it (a file, or a directory with everything visible beneath
/// it) to `dest` on the host, which must not exist yet. Everything is written beneath
/// `dest`'s parent by file descriptor: no symlink in the image (nor one raced in under
/// `dest`) leads a write elsewhere. Devices, pipes and sockets are skipped; the count of
/// skipped entries is returned.
pub fn extract(stack: &Stack, view: &View, node: NodeId, dest: &Path) -> Result<u64> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file name", dest.display())))?;
    let pdir = rfs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(format!("open {}", parent.display())))?;
    let mut skipped = 0;
    copy_node(stack, view, node, pdir.as_fd(), name, &mut skipped)?;
    Ok(skipped)
}

fn copy_node(
    stack: &Stack,
    view: &View,
    node: NodeId,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    skipped: &mut u64,
) -> Result<()> {
    let tree = &stack.tree;
    let Some(e) = tree.visible(view, node) else {
        return Err(Error::NotFound(tree.path(node), stack.name.clone()));
    };
    let layer = e.layer as usize;
    let shown = tree.path(node);
    match e.kind {
        Kind::Dir => {
            rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                .map_err(errno(format!("create {}", name.to_string_lossy())))?;
            let sub = rfs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .map_err(errno(format!("open {}", name.to_string_lossy())))?;
            let children: Vec<NodeId> = tree.visible_children(view, node).collect();
            for c in children {
                copy_node(stack, view, c, sub.as_fd(), tree.name(c), skipped)?;
            }
            rfs::fchmod(&sub, Mode::from_raw_mode(e.mode & 0o7777))
                .map_err(errno(format!("chmod {shown}")))?;
        }
        Kind::File => {
            let mut src = open(stack, layer, node)?;
            let out: OwnedFd = rfs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .map_err(errno(format!("create {}", name.to_string_lossy())))?;
            let mut out = File::from(out);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = src
                    .read(&mut buf)
                    .map_err(io_err(format!("read {shown}")))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .map_err(io_err(format!("write {}", name.to_string_lossy())))?;
            }
            rfs::fchmod(&out, Mode::from_raw_mode(e.mode & 0o777))
                .map_err(errno(format!("chmod {shown}")))?;
        }
        Kind::Symlink => {
            let target = link_target(stack, layer, node)?;
            rfs::symlinkat(OsStr::from_bytes(&target), dir, name)
                .map_err(errno(format!("symlink {}", name.to_string_lossy())))?;
        }
        _ => *skipped += 1,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_hex() {
        assert!(is_text(b"hello\n"));
        assert!(!is_text(b"a\0b"));
        // A multi-byte character cut at the page end is still text.
        assert!(is_text(&"é".as_bytes()[..1]));
        assert!(!is_text(&[0xff, b'a']));
        let h = hex_lines(b"ABC\n", 16);
        assert_eq!(h.len(), 1);
        assert!(h[0].starts_with("00000010  41 42 43 0a "));
        assert!(h[0].ends_with("|ABC.|"));
    }

    #[test]
    fn line_diff() {
        let d = diff_lines("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(
            d,
            [
                DiffLine::Same("a".into()),
                DiffLine::Old("b".into()),
                DiffLine::New("B".into()),
                DiffLine::Same("c".into()),
                DiffLine::New("d".into()),
            ]
        );
        assert!(diff_lines("x\n", "x\n")
            .iter()
            .all(|l| matches!(l, DiffLine::Same(_))));
    }
}
