//! The checked form of a TOC: an inode tree (names, attributes, whiteouts, opaque
//! directories, hard links) and, for each regular file, the chunks that hold its bytes.
//!
//! A TOC comes from the network; only its digest is vouched for by the manifest, and a signed
//! TOC can still be hostile. So every entry is checked before the index exists: names never
//! leave the root (`..` is refused, `/` and `./` prefixes are ignored as tar does), chunks lie
//! before the TOC, cover their file exactly and never overlap, sizes are bounded by what their
//! compressed bytes can hold, hard links point at an earlier non-directory (so links cannot
//! loop), and every chunk has a digest, so no byte is ever served unchecked.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::UNIX_EPOCH;

use super::toc::{Toc, TocEntry};
use super::{Error, Result, Sha256Digest, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};

/// Inode number of the root directory in an [`Index`].
pub const ROOT: u32 = 0;
/// Most entries a TOC may have.
pub const MAX_ENTRIES: usize = 4 << 20;
/// Largest chunk (uncompressed) accepted.
pub const MAX_CHUNK: u64 = 256 << 20;
/// Largest regular file accepted.
pub const MAX_FILE: u64 = 1 << 44;
/// Deflate cannot expand more than about 1032:1; a chunk claiming more than this many bytes
/// per compressed byte is a lie (and a decompression bomb).
const MAX_RATIO: u64 = 1100;
/// Longest symlink target.
const MAX_LINK: usize = 4096;
/// Longest xattr value (the Linux limit).
const MAX_XATTR: usize = 64 << 10;

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory; `opaque` when it hides the same directory in lower layers.
    Dir {
        /// Entries by name.
        children: BTreeMap<OsString, u32>,
        /// Whether lower layers' contents of this directory are hidden.
        opaque: bool,
    },
    /// A regular file.
    Reg,
    /// A symbolic link and its target.
    Symlink(OsString),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
    /// A whiteout: the name is deleted from the layers below.
    Whiteout,
}

/// One piece of a regular file's data in the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Blob offset of the gzip member holding it.
    pub member: u64,
    /// Blob offset where that member ends (the next member's start).
    pub member_end: u64,
    /// Offset of the data in the uncompressed member.
    pub inner: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Length.
    pub size: u64,
    /// Digest of the uncompressed bytes.
    pub digest: Sha256Digest,
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Type and type-specific data.
    pub kind: NodeKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Size in bytes (regular files; the target length for symlinks).
    pub size: u64,
    /// Number of names.
    pub nlink: u32,
    /// Extended attributes.
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Data chunks in file order (regular files).
    pub chunks: Vec<Chunk>,
}

impl Node {
    fn dir() -> Node {
        Node {
            kind: NodeKind::Dir {
                children: BTreeMap::new(),
                opaque: false,
            },
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            nlink: 1,
            xattrs: BTreeMap::new(),
            chunks: Vec::new(),
        }
    }

    /// The chunk holding file offset `off`, if any.
    pub fn chunk_at(&self, off: u64) -> Option<&Chunk> {
        let i = self
            .chunks
            .partition_point(|c| c.file_offset + c.size <= off);
        self.chunks.get(i).filter(|c| c.file_offset <= off)
    }
}

/// A checked TOC.
#[derive(Debug, Clone)]
pub struct Index {
    nodes: Vec<Node>,
    /// Blob offset of the TOC's gzip member (everything before it is file data).
    pub toc_offset: u64,
    /// Blob offset where the files to fetch first end (the prefetch landmark's member).
    pub prefetch_end: Option<u64>,
}

/// A TOC entry's name as root-relative components; an error for names that leave the root.
pub fn components(name: &str) -> Result<Vec<&str>> {
    if name.contains('\0') {
        return Err(Error::BadToc(format!("name {name:?} contains NUL")));
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(Error::BadToc(format!("name {name:?} leaves the root"))),
            c if c.len() > 255 => return Err(Error::BadToc(format!("name {name:?} too long"))),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn nonneg(v: i64, what: &str, name: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::BadToc(format!("{name:?}: negative {what} {v}")))
}

fn mtime(e: &TocEntry) -> Result<i64> {
    if e.mod_time.is_empty() {
        return Ok(0);
    }
    let t = humantime::parse_rfc3339_weak(&e.mod_time)
        .map_err(|err| Error::BadToc(format!("{:?}: modtime {:?}: {err}", e.name, e.mod_time)))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64))
}

/// A chunk before its member's end is known.
struct PendingChunk {
    ino: u32,
    member: u64,
    inner: u64,
    file_offset: u64,
    size: u64,
    digest: Sha256Digest,
}

impl Index {
    /// Check `toc` (whose gzip member starts at `toc_offset`) and build the index.
    pub fn from_toc(toc: &Toc, toc_offset: u64) -> Result<Index> {
        if toc.version != 1 {
            return Err(Error::BadToc(format!(
                "unsupported version {}",
                toc.version
            )));
        }
        if toc.entries.len() > MAX_ENTRIES {
            return Err(Error::BadToc(format!("{} entries", toc.entries.len())));
        }
        let mut ix = Index {
            nodes: vec![Node::dir()],
            toc_offset,
            prefetch_end: None,
        };
        let mut pending: Vec<PendingChunk> = Vec::new();
        let mut entries = toc.entries.iter().peekable();
        while let Some(e) = entries.next() {
            let comps = components(&e.name)?;
            let is_root = comps.is_empty();
            let mode = (nonneg(e.mode, "mode", &e.name)? & 0o7777) as u32;
            let mut node = Node {
                kind: NodeKind::Fifo,
                mode,
                uid: e.uid,
                gid: e.gid,
                mtime: mtime(e)?,
                size: 0,
                nlink: 1,
                xattrs: BTreeMap::new(),
                chunks: Vec::new(),
            };
            for (k, v) in &e.xattrs {
                if k.is_empty() || k.len() > 255 || k.contains('\0') || v.len() > MAX_XATTR {
                    return Err(Error::BadToc(format!("{:?}: bad xattr {k:?}", e.name)));
                }
                node.xattrs.insert(OsString::from(k), v.clone());
            }
            let mut data: Vec<&TocEntry> = Vec::new();
            node.kind = match e.kind.as_str() {
                "dir" => NodeKind::Dir {
                    children: BTreeMap::new(),
                    opaque: false,
                },
                "reg" => {
                    node.size = nonneg(e.size, "size", &e.name)?;
                    if node.size > MAX_FILE {
                        return Err(Error::BadToc(format!("{:?}: size {}", e.name, e.size)));
                    }
                    if node.size > 0 {
                        data.push(e);
                        while let Some(c) = entries.next_if(|n| n.kind == "chunk") {
                            if c.name != e.name {
                                return Err(Error::BadToc(format!(
                                    "chunk of {:?} follows {:?}",
                                    c.name, e.name
                                )));
                            }
                            data.push(c);
                        }
                    }
                    NodeKind::Reg
                }
                "symlink" => {
                    if e.link_name.is_empty()
                        || e.link_name.len() > MAX_LINK
                        || e.link_name.contains('\0')
                    {
                        return Err(Error::BadToc(format!("{:?}: bad link target", e.name)));
                    }
                    node.size = e.link_name.len() as u64;
                    NodeKind::Symlink(OsString::from(&e.link_name))
                }
                // The overlay whiteout form has no place in an OCI layer (whose whiteouts are
                // `.wh.` entries): refused, as extraction refuses it.
                "char" if e.dev_major == 0 && e.dev_minor == 0 => {
                    return Err(Error::BadToc(format!(
                        "{:?}: a 0/0 device (overlay whiteout) in an OCI layer",
                        e.name
                    )))
                }
                "char" => NodeKind::Char(e.dev_major, e.dev_minor),
                "block" => NodeKind::Block(e.dev_major, e.dev_minor),
                "fifo" => NodeKind::Fifo,
                "hardlink" => {
                    if is_root {
                        return Err(Error::BadToc("the root is a hard link".into()));
                    }
                    let target = ix.resolve_link(e)?;
                    ix.nodes[target as usize].nlink += 1;
                    ix.link(&comps, target, &e.name)?;
                    continue;
                }
                "chunk" => {
                    return Err(Error::BadToc(format!(
                        "chunk of {:?} without its file",
                        e.name
                    )))
                }
                k => return Err(Error::BadToc(format!("{:?}: unknown type {k:?}", e.name))),
            };
            if is_root {
                if !matches!(node.kind, NodeKind::Dir { .. }) {
                    return Err(Error::BadToc("the root is not a directory".into()));
                }
                let root = &mut ix.nodes[ROOT as usize];
                (root.mode, root.uid, root.gid, root.mtime) =
                    (node.mode, node.uid, node.gid, node.mtime);
                root.xattrs = node.xattrs;
                continue;
            }
            let Some(ino) = ix.add(&comps, node, &e.name)? else {
                continue;
            };
            if ix.nodes[ino as usize].kind == NodeKind::Reg {
                let size = ix.nodes[ino as usize].size;
                ix.collect_chunks(ino, size, &data, &mut pending)?;
            }
            if comps.len() == 1 && comps[0] == PREFETCH_LANDMARK {
                ix.prefetch_end = Some(data.first().map_or(0, |d| d.offset.max(0) as u64));
            }
        }
        ix.hide_landmarks();
        ix.place_chunks(pending)?;
        ix.apply_overlay_xattrs();
        Ok(ix)
    }

    /// The inode a hard link entry names (which must exist already and not be a directory).
    fn resolve_link(&self, e: &TocEntry) -> Result<u32> {
        let comps = components(&e.link_name)?;
        let bad = |why: &str| Error::BadToc(format!("hard link {:?}: {why}", e.name));
        let ino = self
            .walk(&comps)
            .ok_or_else(|| bad("target not (yet) in the layer"))?;
        match self.nodes[ino as usize].kind {
            NodeKind::Dir { .. } => Err(bad("target is a directory")),
            NodeKind::Whiteout => Err(bad("target is a whiteout")),
            _ => Ok(ino),
        }
    }

    /// The inode at `comps`, following no links.
    fn walk(&self, comps: &[&str]) -> Option<u32> {
        let mut cur = ROOT;
        for c in comps {
            match &self.nodes[cur as usize].kind {
                NodeKind::Dir { children, .. } => cur = *children.get(OsStr::new(c))?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// The directory holding `comps`' last component, made (0755, root) where implicit.
    fn parent_of(&mut self, comps: &[&str], name: &str) -> Result<u32> {
        let mut cur = ROOT;
        for c in &comps[..comps.len() - 1] {
            let next = match &self.nodes[cur as usize].kind {
                NodeKind::Dir { children, .. } => children.get(OsStr::new(c)).copied(),
                _ => {
                    return Err(Error::BadToc(format!(
                        "{name:?}: parent is not a directory"
                    )))
                }
            };
            cur = match next {
                Some(n) => n,
                None => {
                    let n = self.nodes.len() as u32;
                    self.nodes.push(Node::dir());
                    self.children_mut(cur).insert(OsString::from(c), n);
                    n
                }
            };
            if !matches!(self.nodes[cur as usize].kind, NodeKind::Dir { .. }) {
                return Err(Error::BadToc(format!(
                    "{name:?}: parent is not a directory"
                )));
            }
        }
        Ok(cur)
    }

    fn children_mut(&mut self, dir: u32) -> &mut BTreeMap<OsString, u32> {
        match &mut self.nodes[dir as usize].kind {
            NodeKind::Dir { children, .. } => children,
            _ => unreachable!("parent_of only returns directories"),
        }
    }

    /// Add `node` at `comps`, translating the OCI whiteout names: `.wh..wh..opq` makes its
    /// directory opaque and `.wh.NAME` a whiteout of NAME. Returns the new inode, if one was
    /// made.
    fn add(&mut self, comps: &[&str], mut node: Node, name: &str) -> Result<Option<u32>> {
        let parent = self.parent_of(comps, name)?;
        let last = comps[comps.len() - 1];
        if last == ".wh..wh..opq" {
            if let NodeKind::Dir { opaque, .. } = &mut self.nodes[parent as usize].kind {
                *opaque = true;
            }
            return Ok(None);
        }
        let (last, whiteout) = match last.strip_prefix(".wh.") {
            Some(hidden) if !hidden.is_empty() && hidden != "." && hidden != ".." => (hidden, true),
            Some(_) => return Err(Error::BadToc(format!("{name:?}: bad whiteout name"))),
            None => (last, false),
        };
        if whiteout {
            node = Node {
                kind: NodeKind::Whiteout,
                size: 0,
                ..node
            };
        }
        let existing = self.children_mut(parent).get(OsStr::new(last)).copied();
        if let Some(old) = existing {
            let old_kind = &self.nodes[old as usize].kind;
            match (old_kind, &node.kind) {
                // A directory named again (tar writers do this for parents): new attributes.
                (NodeKind::Dir { .. }, NodeKind::Dir { .. }) => {
                    let o = &mut self.nodes[old as usize];
                    (o.mode, o.uid, o.gid, o.mtime) = (node.mode, node.uid, node.gid, node.mtime);
                    o.xattrs = node.xattrs;
                    return Ok(None);
                }
                // A whiteout next to a real entry of the same name: the entry wins.
                (_, NodeKind::Whiteout) => return Ok(None),
                (NodeKind::Whiteout, _) => {}
                _ => return Err(Error::BadToc(format!("{name:?} appears twice"))),
            }
        }
        let ino = self.nodes.len() as u32;
        self.nodes.push(node);
        self.children_mut(parent).insert(OsString::from(last), ino);
        Ok(Some(ino))
    }

    /// Add a second name for inode `target`.
    fn link(&mut self, comps: &[&str], target: u32, name: &str) -> Result<()> {
        let parent = self.parent_of(comps, name)?;
        let last = comps[comps.len() - 1];
        if last.starts_with(".wh.") {
            return Err(Error::BadToc(format!("{name:?}: hard link as a whiteout")));
        }
        let children = self.children_mut(parent);
        if children.contains_key(OsStr::new(last)) {
            return Err(Error::BadToc(format!("{name:?} appears twice")));
        }
        children.insert(OsString::from(last), target);
        Ok(())
    }

    /// Check the data entries of regular file `ino` (`size` bytes) and queue its chunks.
    fn collect_chunks(
        &self,
        ino: u32,
        size: u64,
        data: &[&TocEntry],
        pending: &mut Vec<PendingChunk>,
    ) -> Result<()> {
        let mut at = 0u64;
        for (i, c) in data.iter().enumerate() {
            let bad = |why: String| Error::BadToc(format!("{:?} chunk {i}: {why}", c.name));
            let member = nonneg(c.offset, "offset", &c.name)?;
            let inner = nonneg(c.inner_offset, "innerOffset", &c.name)?;
            let file_offset = nonneg(c.chunk_offset, "chunkOffset", &c.name)?;
            if file_offset != at {
                return Err(bad(format!("starts at {file_offset}, expected {at}")));
            }
            let last = i + 1 == data.len();
            let len = match nonneg(c.chunk_size, "chunkSize", &c.name)? {
                0 if last => size - at,
                0 => return Err(bad("zero size before the last chunk".into())),
                n => n,
            };
            if len == 0 || len > MAX_CHUNK || len > size - at {
                return Err(bad(format!("size {len} (file {size}, at {at})")));
            }
            if member >= self.toc_offset {
                return Err(bad(format!("offset {member} is past the data")));
            }
            if c.chunk_digest.is_empty() {
                return Err(bad("no chunkDigest".into()));
            }
            pending.push(PendingChunk {
                ino,
                member,
                inner,
                file_offset,
                size: len,
                digest: Sha256Digest::parse(&c.chunk_digest)?,
            });
            at += len;
        }
        if at != size {
            return Err(Error::BadToc(format!(
                "{:?}: chunks cover {at} of {size} bytes",
                data.first().map_or("", |d| &d.name)
            )));
        }
        Ok(())
    }

    /// Give every chunk its member's end (the next member start, or the TOC), refusing
    /// chunks that overlap or claim more bytes than their member can hold.
    fn place_chunks(&mut self, mut pending: Vec<PendingChunk>) -> Result<()> {
        let mut starts: Vec<u64> = pending.iter().map(|c| c.member).collect();
        starts.sort_unstable();
        starts.dedup();
        pending.sort_by_key(|c| (c.member, c.inner));
        for w in pending.windows(2) {
            if w[0].member == w[1].member && w[0].inner + w[0].size > w[1].inner {
                return Err(Error::BadToc(format!(
                    "chunks overlap in the member at offset {}",
                    w[0].member
                )));
            }
        }
        for c in pending {
            let i = starts.partition_point(|&s| s <= c.member);
            let end = starts.get(i).copied().unwrap_or(self.toc_offset);
            let room = (end - c.member).saturating_mul(MAX_RATIO);
            if c.inner.saturating_add(c.size) > room {
                return Err(Error::BadToc(format!(
                    "chunk of {} bytes at {} cannot fit in {} compressed bytes",
                    c.size,
                    c.member,
                    end - c.member
                )));
            }
            self.nodes[c.ino as usize].chunks.push(Chunk {
                member: c.member,
                member_end: end,
                inner: c.inner,
                file_offset: c.file_offset,
                size: c.size,
                digest: c.digest,
            });
        }
        for n in &mut self.nodes {
            n.chunks.sort_by_key(|c| c.file_offset);
        }
        Ok(())
    }

    /// The landmarks are format, not content: not shown (as stargz-snapshotter hides them).
    fn hide_landmarks(&mut self) {
        let root = self.children_mut(ROOT);
        root.remove(OsStr::new(PREFETCH_LANDMARK));
        root.remove(OsStr::new(NO_PREFETCH_LANDMARK));
    }

    /// Directories marked opaque by an overlay xattr rather than a `.wh..wh..opq` entry.
    fn apply_overlay_xattrs(&mut self) {
        for n in &mut self.nodes {
            let marked = ["trusted.overlay.opaque", "user.overlay.opaque"]
                .iter()
                .any(|k| n.xattrs.get(OsStr::new(k)).is_some_and(|v| v == b"y"));
            if let NodeKind::Dir { opaque, .. } = &mut n.kind {
                *opaque |= marked;
            }
        }
    }

    /// Inode `ino` (panics on a number this index did not give out).
    pub fn node(&self, ino: u32) -> &Node {
        &self.nodes[ino as usize]
    }

    /// How many inodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the layer is empty (only a root).
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Entry `name` of directory `dir`.
    pub fn lookup(&self, dir: u32, name: &OsStr) -> Option<u32> {
        match &self.nodes.get(dir as usize)?.kind {
            NodeKind::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    /// The inode at root-relative `path`.
    pub fn lookup_path(&self, path: &str) -> Option<u32> {
        self.walk(&components(path).ok()?)
    }

    /// Entries of directory `dir` (empty for a non-directory), by name.
    pub fn children(&self, dir: u32) -> impl Iterator<Item = (&OsStr, u32)> {
        let map = match self.nodes.get(dir as usize).map(|n| &n.kind) {
            Some(NodeKind::Dir { children, .. }) => Some(children),
            _ => None,
        };
        map.into_iter()
            .flat_map(|m| m.iter().map(|(k, &v)| (k.as_os_str(), v)))
    }

    /// Every path of the layer with its inode, parents first (whiteouts included).
    pub fn walk_all(&self) -> Vec<(OsString, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![(OsString::new(), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            for (name, child) in self.children(ino) {
                let mut p = path.clone().into_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name.as_bytes());
                let p = OsString::from_vec(p);
                out.push((p.clone(), child));
                if matches!(self.nodes[child as usize].kind, NodeKind::Dir { .. }) {
                    stack.push((p, child));
                }
            }
        }
        out
    }

    /// Every chunk of the layer, in blob order.
    pub fn all_chunks(&self) -> Vec<&Chunk> {
        let mut v: Vec<&Chunk> = self.nodes.iter().flat_map(|n| n.chunks.iter()).collect();
        v.sort_by_key(|c| (c.member, c.inner));
        v.dedup_by_key(|c| (c.member, c.inner));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        Sha256Digest::of(&[n]).to_string()
    }

    fn reg(name: &str, size: i64, offset: i64) -> TocEntry {
        TocEntry {
            name: name.into(),
            kind: "reg".into(),
            size,
            offset,
            mode: 0o644,
            chunk_digest: d(size as u8),
            ..TocEntry::default()
        }
    }

    fn entry(name: &str, kind: &str) -> TocEntry {
        TocEntry {
            name: name.into(),
            kind: kind.into(),
            mode: 0o755,
            ..TocEntry::default()
        }
    }

    fn index(entries: Vec<TocEntry>) -> Result<Index> {
        Index::from_toc(
            &Toc {
                version: 1,
                entries,
            },
            10_000,
        )
    }

    fn refused(entries: Vec<TocEntry>, needle: &str) {
        match index(entries) {
            Err(Error::BadToc(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
            other => panic!("expected a refusal ({needle}), got {other:?}"),
        }
    }

    #[test]
    fn builds_a_tree_with_implicit_parents() {
        let ix = index(vec![
            reg("./a/b/c", 10, 100),
            entry("/a/", "dir"),
            TocEntry {
                link_name: "a/b/c".into(),
                ..entry("a/hl", "hardlink")
            },
        ])
        .unwrap();
        let c = ix.lookup_path("a/b/c").unwrap();
        assert_eq!(ix.lookup_path("a/hl"), Some(c));
        assert_eq!(ix.node(c).nlink, 2);
        assert_eq!(ix.node(c).chunks[0].member_end, 10_000);
        assert_eq!(ix.node(ix.lookup_path("a").unwrap()).mode, 0o755);
        assert_eq!(ix.node(ix.lookup_path("a/b").unwrap()).mode, 0o755);
        assert_eq!(ix.node(c).chunk_at(9).unwrap().size, 10);
        assert!(ix.node(c).chunk_at(10).is_none());
    }

    #[test]
    fn refuses_names_that_leave_the_root() {
        refused(vec![reg("../etc/passwd", 1, 0)], "leaves the root");
        refused(vec![reg("a/../../b", 1, 0)], "leaves the root");
        refused(
            vec![TocEntry {
                link_name: "../x".into(),
                ..entry("hl", "hardlink")
            }],
            "leaves the root",
        );
        refused(vec![reg("a\0b", 1, 0)], "NUL");
        refused(vec![reg(&"x".repeat(256), 1, 0)], "too long");
        refused(vec![entry("a/.wh..", "reg")], "whiteout");
    }

    #[test]
    fn refuses_data_past_the_blob_or_overlapping() {
        refused(vec![reg("a", 1, 10_000)], "past the data");
        refused(vec![reg("a", 1, 1 << 40)], "past the data");
        refused(vec![reg("a", 1, -5)], "negative");
        // Two chunks claiming the same bytes of one member.
        let mut b = reg("b", 8, 100);
        b.inner_offset = 4;
        refused(vec![reg("a", 8, 100), b], "overlap");
        // Chunks of one file that leave a hole or run past the file.
        let mut big = reg("big", 100, 100);
        big.chunk_size = 40;
        let mut next = entry("big", "chunk");
        next.offset = 200;
        next.chunk_offset = 50;
        next.chunk_digest = d(1);
        refused(vec![big.clone(), next.clone()], "expected 40");
        next.chunk_offset = 40;
        next.chunk_size = 70;
        refused(vec![big.clone(), next.clone()], "size 70");
        next.chunk_size = 0;
        assert!(index(vec![big.clone(), next.clone()]).is_ok());
        // A chunk of another file.
        next.name = "other".into();
        refused(vec![big, next], "follows");
        refused(vec![entry("x", "chunk")], "without its file");
    }

    #[test]
    fn refuses_absurd_sizes() {
        refused(vec![reg("a", 1 << 50, 100)], "size");
        refused(vec![reg("a", -1, 100)], "negative");
        // 1 MiB said to come out of 10 compressed bytes.
        refused(vec![reg("a", 1 << 20, 9_990)], "cannot fit");
        let mut huge = reg("a", 1 << 30, 0);
        huge.chunk_size = 1 << 30;
        refused(vec![huge], "size");
        let too_many = Toc {
            version: 1,
            entries: vec![entry("d", "dir"); MAX_ENTRIES + 1],
        };
        assert!(Index::from_toc(&too_many, 0).is_err());
    }

    #[test]
    fn refuses_links_that_could_loop_or_dangle() {
        // A link to a later entry (or to itself) has no target yet: no cycle can form.
        let hl = |name: &str, target: &str| TocEntry {
            link_name: target.into(),
            ..entry(name, "hardlink")
        };
        refused(vec![hl("a", "a")], "not (yet)");
        refused(vec![hl("a", "b"), hl("b", "a")], "not (yet)");
        refused(vec![entry("d", "dir"), hl("a", "d")], "directory");
        refused(vec![reg("f", 0, 0), reg("f/x", 0, 0)], "not a directory");
        refused(vec![reg("f", 0, 0), reg("f", 0, 0)], "twice");
        refused(vec![entry("s", "symlink")], "link target");
    }

    #[test]
    fn refuses_unverifiable_chunks() {
        let mut a = reg("a", 5, 100);
        a.chunk_digest.clear();
        refused(vec![a.clone()], "no chunkDigest");
        a.chunk_digest = "md5:abc".into();
        refused(vec![a.clone()], "unsupported digest");
        a.chunk_digest = "sha256:../../x".into();
        refused(vec![a], "malformed digest");
        refused(vec![entry("x", "socket")], "unknown type");
        refused(vec![entry("x", "char")], "overlay whiteout");
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let ix = index(vec![
            entry("d", "dir"),
            reg("d/.wh..wh..opq", 0, 0),
            reg(".wh.gone", 0, 0),
            reg("kept", 3, 100),
            reg(".wh.kept", 0, 0),
            TocEntry {
                xattrs: [("trusted.overlay.opaque".to_string(), b"y".to_vec())].into(),
                ..entry("x", "dir")
            },
            reg(PREFETCH_LANDMARK, 1, 50),
        ])
        .unwrap();
        let opaque = |p: &str| match &ix.node(ix.lookup_path(p).unwrap()).kind {
            NodeKind::Dir { opaque, children } => {
                assert!(children.is_empty());
                *opaque
            }
            k => panic!("{k:?}"),
        };
        assert!(opaque("d") && opaque("x"));
        let kind = |p: &str| ix.node(ix.lookup_path(p).unwrap()).kind.clone();
        assert_eq!(kind("gone"), NodeKind::Whiteout);
        assert_eq!(kind("kept"), NodeKind::Reg);
        assert!(ix.lookup_path(PREFETCH_LANDMARK).is_none());
        assert_eq!(ix.prefetch_end, Some(50));
    }
}
