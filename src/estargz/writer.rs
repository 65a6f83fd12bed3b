//! Converting a layer tar to eStargz: the same tar entries (headers kept as they were, long
//! names and PAX records re-emitted), each regular file's data (and each [`CHUNK_SIZE`] piece
//! of a large one) starting its own gzip member, a landmark entry, then the TOC as the last
//! entry, then the footer. The output is one valid gzip tar.
//!
//! The uncompressed tar gains the landmark and TOC entries, so its digest (the layer's diff
//! ID) is not the input's: converters give it to the image config (as stargz-snapshotter's
//! do), and extraction hides the eStargz entries ([`is_format_entry`]).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::time::{Duration, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::index::components;
use super::toc::{Toc, TocEntry};
use super::{
    footer, Error, Result, Sha256Digest, CHUNK_SIZE, LANDMARK_CONTENTS, NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK, TOC_NAME,
};

/// How to convert.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest chunk of a regular file in one gzip member.
    pub chunk_size: u64,
    /// Root-relative paths of regular files to put first, before the prefetch landmark
    /// (fetched at mount time). Empty: a no-prefetch landmark.
    pub prefetch: Vec<String>,
    /// gzip level.
    pub level: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_size: CHUNK_SIZE,
            prefetch: Vec::new(),
            level: 6,
        }
    }
}

/// What a conversion made.
#[derive(Debug, Clone)]
pub struct Written {
    /// Digest of the TOC JSON (the descriptor's `toc.digest` annotation).
    pub toc_digest: Sha256Digest,
    /// Digest of the uncompressed tar (the new diff ID).
    pub diff_id: Sha256Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Size of the blob.
    pub size: u64,
}

/// Whether a root entry named `name` (root-relative, as in a tar) is eStargz bookkeeping
/// rather than layer content: the TOC and the landmarks.
pub fn is_format_entry(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    matches!(
        components(name).as_deref(),
        Ok([n]) if *n == TOC_NAME || *n == PREFETCH_LANDMARK || *n == NO_PREFETCH_LANDMARK
    )
}

/// Counts what passes through to the blob.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blob being written: a sequence of gzip members, and the hash of what they hold.
struct Members<W: Write> {
    closed: Option<Counting<W>>,
    open: Option<GzEncoder<Counting<W>>>,
    level: Compression,
    diff: Sha256,
    uncompressed: u64,
}

impl<W: Write> Members<W> {
    fn io(e: io::Error) -> Error {
        Error::Io {
            what: "write the eStargz blob".into(),
            source: e,
        }
    }

    /// End the open member, if any.
    fn close(&mut self) -> Result<()> {
        if let Some(enc) = self.open.take() {
            self.closed = Some(enc.finish().map_err(Self::io)?);
        }
        Ok(())
    }

    /// Start a new member at the current offset (closing the open one); returns the offset.
    fn start(&mut self) -> Result<u64> {
        self.close()?;
        let out = self.closed.take().expect("a closed member after close");
        let at = out.n;
        self.open = Some(GzEncoder::new(out, self.level));
        Ok(at)
    }

    /// Write uncompressed tar bytes into the open member (opening one if none is).
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.open.is_none() {
            self.start()?;
        }
        let enc = self.open.as_mut().expect("an open member");
        enc.write_all(bytes).map_err(Self::io)?;
        self.diff.update(bytes);
        self.uncompressed += bytes.len() as u64;
        Ok(())
    }

    /// Write the padding that ends an entry of `size` data bytes.
    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.write(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// Write raw (already compressed) bytes after closing the open member.
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.close()?;
        let out = self.closed.as_mut().expect("a closed member after close");
        out.write_all(bytes).map_err(Self::io)
    }
}

/// One PAX record, `"<len> key=value\n"` where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// An extension entry (`L`, `K`, `x`) carrying `data`.
fn extension(kind: EntryType, data: &[u8]) -> Vec<u8> {
    let mut h = if kind == EntryType::XHeader {
        tar::Header::new_ustar()
    } else {
        tar::Header::new_gnu()
    };
    let name: &[u8] = if kind == EntryType::XHeader {
        b"PaxHeader"
    } else {
        b"././@LongLink"
    };
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(kind);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A header plus the data of a small entry the writer adds itself (landmark, TOC).
fn own_entry(name: &str, data_len: usize) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_size(data_len as u64);
    h.set_entry_type(EntryType::Regular);
    h.set_mtime(0);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// Converts tar streams into one eStargz blob.
struct Converter<'o, W: Write> {
    out: Members<W>,
    toc: Toc,
    opts: &'o Options,
    seen_names: HashSet<String>,
}

impl<W: Write> Converter<'_, W> {
    /// Copy the entries of `input` for which `pick(name, is_regular)` holds.
    fn pass(&mut self, input: impl Read, pick: &dyn Fn(&str, bool) -> bool) -> Result<()> {
        let bad = |e: io::Error| Error::BadInput(format!("reading the layer tar: {e}"));
        let mut ar = tar::Archive::new(input);
        for entry in ar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let kind = entry.header().entry_type();
            let path = entry.path_bytes().into_owned();
            let name = String::from_utf8(path.clone()).map_err(|_| {
                Error::BadInput(format!(
                    "entry {:?} is not UTF-8",
                    String::from_utf8_lossy(&path)
                ))
            })?;
            if is_format_entry(&path) {
                // An older conversion's TOC or landmark: ours replace them.
                continue;
            }
            let regular = matches!(kind, EntryType::Regular | EntryType::Continuous);
            if !pick(&name, regular) {
                continue;
            }
            self.entry(&mut entry, kind, name)?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        name: String,
    ) -> Result<()> {
        let bad = |e: io::Error| Error::BadInput(format!("{name:?}: {e}"));
        let header = entry.header().clone();
        let mut toc = TocEntry {
            name: name.clone(),
            mode: header.mode().map_err(bad)? as i64,
            uid: header.uid().map_err(bad)? as u32,
            gid: header.gid().map_err(bad)? as u32,
            ..TocEntry::default()
        };
        let mut mtime = header.mtime().map_err(bad)?;
        toc.user_name = String::from_utf8_lossy(header.username_bytes().unwrap_or_default()).into();
        toc.group_name =
            String::from_utf8_lossy(header.groupname_bytes().unwrap_or_default()).into();

        // Extension headers first, then the entry's own header, into the open member.
        let mut pax = Vec::new();
        let mut pax_path = false;
        let mut pax_link = false;
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                let (k, v) = (ext.key_bytes(), ext.value_bytes());
                pax_record(&mut pax, k, v);
                let num = || {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.split('.').next()?.parse().ok())
                };
                match k {
                    b"path" => pax_path = true,
                    b"linkpath" => pax_link = true,
                    b"uid" => toc.uid = num().unwrap_or(toc.uid as u64) as u32,
                    b"gid" => toc.gid = num().unwrap_or(toc.gid as u64) as u32,
                    b"mtime" => mtime = num().unwrap_or(mtime),
                    b"uname" => toc.user_name = String::from_utf8_lossy(v).into(),
                    b"gname" => toc.group_name = String::from_utf8_lossy(v).into(),
                    _ => {}
                }
                if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                    toc.xattrs
                        .insert(String::from_utf8_lossy(x).into_owned(), v.to_vec());
                }
            }
        }
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        if !pax_path && &*header.path_bytes() != name.as_bytes() {
            let mut data = name.as_bytes().to_vec();
            data.push(0);
            self.out.write(&extension(EntryType::GNULongName, &data))?;
        }
        if let Some(l) = &link {
            if !pax_link && header.link_name_bytes().as_deref() != Some(&l[..]) {
                let mut data = l.clone();
                data.push(0);
                self.out.write(&extension(EntryType::GNULongLink, &data))?;
            }
        }
        if !pax.is_empty() {
            self.out.write(&extension(EntryType::XHeader, &pax))?;
        }
        self.out.write(header.as_bytes())?;
        toc.mod_time =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(mtime)).to_string();
        let link = || {
            link.as_ref()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .unwrap_or_default()
        };
        toc.kind = match kind {
            EntryType::Regular | EntryType::Continuous => "reg",
            EntryType::Directory => "dir",
            EntryType::Symlink => {
                toc.link_name = link();
                "symlink"
            }
            EntryType::Link => {
                toc.link_name = link();
                "hardlink"
            }
            EntryType::Char | EntryType::Block => {
                toc.dev_major = header.device_major().map_err(bad)?.unwrap_or(0);
                toc.dev_minor = header.device_minor().map_err(bad)?.unwrap_or(0);
                if kind == EntryType::Char {
                    "char"
                } else {
                    "block"
                }
            }
            EntryType::Fifo => "fifo",
            EntryType::XGlobalHeader => {
                // Archive-wide PAX records: kept in the tar, not a file.
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(bad)?;
                self.out.write(&data)?;
                self.out.pad(data.len() as u64)?;
                return Ok(());
            }
            other => {
                return Err(Error::BadInput(format!(
                    "{name:?}: unsupported tar entry type {other:?}"
                )))
            }
        }
        .to_string();
        if !self.seen_names.insert(name.clone()) && toc.kind != "dir" {
            tracing::debug!("{name:?} appears twice in the layer tar");
        }
        if toc.kind == "reg" {
            let size = entry.size();
            toc.size = size as i64;
            self.data(entry, toc, size)?;
        } else {
            self.toc.entries.push(toc);
        }
        Ok(())
    }

    /// The data of a regular file: each chunk its own member, with its digest.
    fn data(&mut self, mut input: impl Read, first: TocEntry, size: u64) -> Result<()> {
        let name = first.name.clone();
        let mut whole = Sha256::new();
        let mut at = 0u64;
        let mut ent = first;
        let mut buf = Vec::new();
        let reg_index = self.toc.entries.len();
        while at < size {
            let len = self.opts.chunk_size.min(size - at);
            buf.clear();
            (&mut input)
                .take(len)
                .read_to_end(&mut buf)
                .map_err(|e| Error::BadInput(format!("{name:?}: {e}")))?;
            if buf.len() as u64 != len {
                return Err(Error::BadInput(format!("{name:?}: truncated")));
            }
            ent.offset = self.out.start()? as i64;
            ent.chunk_offset = at as i64;
            // Zero marks the last chunk (readers take the rest of the file).
            ent.chunk_size = if at + len < size { len as i64 } else { 0 };
            ent.chunk_digest = Sha256Digest::of(&buf).to_string();
            whole.update(&buf);
            self.out.write(&buf)?;
            self.toc.entries.push(ent);
            at += len;
            ent = TocEntry {
                name: name.clone(),
                kind: "chunk".into(),
                ..TocEntry::default()
            };
        }
        self.out.pad(size)?;
        if size == 0 {
            self.toc.entries.push(ent);
        } else {
            self.toc.entries[reg_index].digest = Sha256Digest::from_hasher(whole).to_string();
        }
        Ok(())
    }

    /// A landmark entry named `name`.
    fn landmark(&mut self, name: &str) -> Result<()> {
        self.out.write(&own_entry(name, 1))?;
        let offset = self.out.start()?;
        self.out.write(&[LANDMARK_CONTENTS])?;
        self.out.pad(1)?;
        let d = Sha256Digest::of(&[LANDMARK_CONTENTS]).to_string();
        self.toc.entries.push(TocEntry {
            name: name.into(),
            kind: "reg".into(),
            size: 1,
            mode: 0o644,
            offset: offset as i64,
            digest: d.clone(),
            chunk_digest: d,
            ..TocEntry::default()
        });
        Ok(())
    }
}

/// Convert the layer tar that `open` yields (called once, or twice with prefetch files)
/// into an eStargz blob written to `out`.
pub fn convert<R: Read, W: Write>(
    mut open: impl FnMut() -> io::Result<R>,
    out: W,
    opts: &Options,
) -> Result<Written> {
    if opts.chunk_size == 0 {
        return Err(Error::BadInput("chunk size 0".into()));
    }
    let reopen = |e: io::Error| Error::BadInput(format!("opening the layer tar: {e}"));
    let mut c = Converter {
        out: Members {
            closed: Some(Counting { inner: out, n: 0 }),
            open: None,
            level: Compression::new(opts.level.min(9)),
            diff: Sha256::new(),
            uncompressed: 0,
        },
        toc: Toc {
            version: 1,
            entries: Vec::new(),
        },
        opts,
        seen_names: HashSet::new(),
    };
    if opts.prefetch.is_empty() {
        c.landmark(NO_PREFETCH_LANDMARK)?;
        c.pass(open().map_err(reopen)?, &|_, _| true)?;
    } else {
        let wanted: HashSet<String> = opts
            .prefetch
            .iter()
            .filter_map(|p| components(p).ok().map(|c| c.join("/")))
            .collect();
        let first = |name: &str, regular: bool| {
            regular && components(name).is_ok_and(|c| wanted.contains(&c.join("/")))
        };
        c.pass(open().map_err(reopen)?, &first)?;
        c.landmark(PREFETCH_LANDMARK)?;
        c.pass(open().map_err(reopen)?, &|n, r| !first(n, r))?;
    }
    // The TOC: its own member holding its tar entry and the end-of-archive blocks.
    let json = serde_json::to_vec_pretty(&c.toc).map_err(|e| Error::BadToc(e.to_string()))?;
    let toc_offset = c.out.start()?;
    c.out.write(&own_entry(TOC_NAME, json.len()))?;
    c.out.write(&json)?;
    c.out.pad(json.len() as u64)?;
    c.out.write(&[0u8; 1024])?;
    c.out.raw(&footer::encode(toc_offset))?;
    let mut blob = c.out.closed.take().expect("closed after raw");
    blob.flush().map_err(Members::<W>::io)?;
    Ok(Written {
        toc_digest: Sha256Digest::of(&json),
        diff_id: Sha256Digest::from_hasher(c.out.diff),
        uncompressed_size: c.out.uncompressed,
        size: blob.n,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::estargz::{FileSource, NodeKind, Reader};
    use std::ffi::OsStr;

    /// A layer tar with most kinds of entries, a long name, xattrs and a large file.
    pub(crate) fn sample_tar() -> Vec<u8> {
        let hdr = |kind: EntryType, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            h.set_size(0);
            h
        };
        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str| {
            let mut h = hdr(EntryType::Directory, 0o750);
            b.append_data(&mut h, p, &[][..]).unwrap();
        };
        dir(&mut b, "etc/");
        dir(&mut b, "usr/");
        dir(&mut b, "usr/lib/");
        let file = |b: &mut tar::Builder<Vec<u8>>, p: &str, data: &[u8], mode: u32| {
            let mut h = hdr(EntryType::Regular, mode);
            h.set_uid(1000);
            h.set_gid(100);
            h.set_mtime(1_600_000_123);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, p, data).unwrap();
        };
        file(&mut b, "etc/hostname", b"strata\n", 0o644);
        file(&mut b, "etc/empty", b"", 0o600);
        let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        file(&mut b, "usr/lib/big.so", &big, 0o755);
        let long = format!("usr/{}", "n".repeat(150));
        file(&mut b, &long, b"long name", 0o644);
        file(&mut b, ".wh.gone", b"", 0o644);
        file(&mut b, "usr/.wh..wh..opq", b"", 0o644);
        // PAX xattrs.
        let mut h = hdr(EntryType::Regular, 0o644);
        h.set_size(3);
        b.append_pax_extensions([("SCHILY.xattr.user.color", &b"blue"[..])])
            .unwrap();
        b.append_data(&mut h, "etc/tagged", &b"xyz"[..]).unwrap();
        let mut h = hdr(EntryType::Symlink, 0o777);
        b.append_link(&mut h, "etc/link", "hostname").unwrap();
        let mut h = hdr(EntryType::Link, 0o644);
        b.append_link(&mut h, "usr/hard", "etc/hostname").unwrap();
        let mut h = hdr(EntryType::Fifo, 0o600);
        b.append_data(&mut h, "etc/fifo", &[][..]).unwrap();
        b.into_inner().unwrap()
    }

    /// (name, type, size, data) of every entry of a tar.
    pub(crate) fn entries(tar: &[u8]) -> Vec<(String, u8, Vec<u8>, Vec<u8>)> {
        let mut ar = tar::Archive::new(tar);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let kind = e.header().entry_type().as_byte();
                let link = e
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, kind, link, data)
            })
            .collect()
    }

    fn convert_bytes(tar: &[u8], opts: &Options) -> (Vec<u8>, Written) {
        let mut out = Vec::new();
        let w = convert(|| Ok(tar), &mut out, opts).unwrap();
        (out, w)
    }

    fn gunzip_all(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn output_is_the_same_tar_plus_format_entries() {
        let tar = sample_tar();
        let opts = Options {
            chunk_size: 7000,
            ..Options::default()
        };
        let (blob, w) = convert_bytes(&tar, &opts);
        let plain = gunzip_all(&blob);
        assert_eq!(w.size, blob.len() as u64);
        assert_eq!(w.uncompressed_size, plain.len() as u64);
        assert_eq!(w.diff_id, Sha256Digest::of(&plain));
        let got: Vec<_> = entries(&plain)
            .into_iter()
            .filter(|e| !is_format_entry(e.0.as_bytes()))
            .collect();
        assert_eq!(got, entries(&tar));
        let all = entries(&plain);
        assert_eq!(all[0].0, NO_PREFETCH_LANDMARK);
        assert_eq!(all.last().unwrap().0, TOC_NAME);
        assert_eq!(
            &blob[blob.len() - 51..],
            &footer::encode(footer::decode(&blob[blob.len() - 51..]).unwrap())[..]
        );
    }

    #[test]
    fn reader_serves_every_file_from_its_chunks() {
        let tar = sample_tar();
        let opts = Options {
            chunk_size: 7000,
            ..Options::default()
        };
        let (blob, w) = convert_bytes(&tar, &opts);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &blob).unwrap();
        let r = Reader::open(FileSource::open(&path).unwrap(), Some(&w.toc_digest)).unwrap();
        let ix = r.index();
        for (name, kind, link, data) in entries(&tar) {
            let comps = components(&name).unwrap();
            let last = *comps.last().unwrap();
            if last == ".wh..wh..opq" {
                let ino = ix.lookup_path(&comps[..comps.len() - 1].join("/")).unwrap();
                assert!(matches!(
                    ix.node(ino).kind,
                    NodeKind::Dir { opaque: true, .. }
                ));
                continue;
            }
            if let Some(hidden) = last.strip_prefix(".wh.") {
                let ino = ix.lookup_path(hidden).unwrap();
                assert_eq!(ix.node(ino).kind, NodeKind::Whiteout);
                continue;
            }
            let ino = ix.lookup_path(&name).unwrap_or_else(|| panic!("{name}"));
            let node = ix.node(ino);
            match kind {
                b'0' | b'1' => {
                    let want = if kind == b'1' {
                        entries(&tar)
                            .into_iter()
                            .find(|e| e.0.as_bytes() == &link[..])
                            .unwrap()
                            .3
                    } else {
                        data
                    };
                    assert_eq!(node.kind, NodeKind::Reg, "{name}");
                    assert_eq!(node.size, want.len() as u64);
                    let mut got = Vec::new();
                    for c in &node.chunks {
                        assert_eq!(c.file_offset, got.len() as u64);
                        got.extend(r.read_chunk(c).unwrap());
                    }
                    assert_eq!(got, want, "{name}");
                }
                b'2' => assert_eq!(node.kind, NodeKind::Symlink("hostname".into())),
                b'5' => assert!(matches!(node.kind, NodeKind::Dir { .. })),
                b'6' => assert_eq!(node.kind, NodeKind::Fifo),
                _ => {}
            }
        }
        let big = ix.node(ix.lookup_path("usr/lib/big.so").unwrap());
        assert_eq!(big.chunks.len(), 6);
        assert_eq!(
            (big.mode, big.uid, big.gid, big.mtime),
            (0o755, 1000, 100, 1_600_000_123)
        );
        let hard = ix.lookup_path("usr/hard").unwrap();
        assert_eq!(Some(hard), ix.lookup_path("etc/hostname"));
        assert_eq!(ix.node(hard).nlink, 2);
        let tagged = ix.node(ix.lookup_path("etc/tagged").unwrap());
        assert_eq!(tagged.xattrs[OsStr::new("user.color")], b"blue");
        assert!(ix
            .lookup(
                crate::estargz::index::ROOT,
                OsStr::new(NO_PREFETCH_LANDMARK)
            )
            .is_none());
        assert_eq!(ix.prefetch_end, None);
    }

    #[test]
    fn prefetch_files_come_first() {
        let tar = sample_tar();
        let opts = Options {
            prefetch: vec!["/etc/tagged".into(), "./usr/lib/big.so".into()],
            ..Options::default()
        };
        let (blob, w) = convert_bytes(&tar, &opts);
        let names: Vec<String> = entries(&gunzip_all(&blob))
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            &names[..3],
            ["usr/lib/big.so", "etc/tagged", PREFETCH_LANDMARK]
        );
        let (toc, d, off) =
            crate::estargz::reader::read_toc(&MemSource(blob.clone()), None).unwrap();
        assert_eq!(d, w.toc_digest);
        let ix = crate::estargz::Index::from_toc(&toc, off).unwrap();
        let end = ix.prefetch_end.unwrap();
        let tagged = ix.node(ix.lookup_path("etc/tagged").unwrap());
        assert!(tagged.chunks[0].member_end <= end);
        let host = ix.node(ix.lookup_path("etc/hostname").unwrap());
        assert!(host.chunks[0].member > end);
    }

    #[test]
    fn converting_twice_replaces_the_old_toc() {
        let tar = sample_tar();
        let (blob, _) = convert_bytes(&tar, &Options::default());
        let (blob2, _) = convert_bytes(&gunzip_all(&blob), &Options::default());
        let e1 = entries(&gunzip_all(&blob));
        let e2 = entries(&gunzip_all(&blob2));
        assert_eq!(e1.len(), e2.len());
    }

    /// A blob in memory.
    pub(crate) struct MemSource(pub Vec<u8>);

    impl crate::estargz::BlobSource for MemSource {
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.0
                .get(offset as usize..(offset + len) as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }
}
