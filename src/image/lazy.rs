//! Lazy layers in the store: the directory stratafs mounts for an eStargz layer before its
//! bytes are here, made from the layer's TOC alone (names, modes, owners, times, xattrs, links,
//! whiteouts, opaque directories; each regular file its full size, without its bytes, and
//! marked to be filled from the blob on first open), plus the spec (`lazy=SPEC`) that tells
//! stratafs where the blob, the TOC digest and the chunk cache are.
//!
//! The layer is made by the ordinary extraction (beneath its root, whatever the TOC says)
//! from a tar of empty files the TOC describes, then each file is sized and marked.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::estargz::index::{self, NodeKind};
use crate::estargz::toc::TocEntry;
use crate::estargz::{reader, writer, BlobSource, FileSource, Index, Sha256Digest};
use crate::overlay::beneath::open_beneath;
use crate::overlay::format;

use super::extract::{self, UnpackOptions};
use super::{io_err, private, Error, LayerDesc, Result, Store};

fn esgz(what: &str) -> impl FnOnce(crate::estargz::Error) -> Error + '_ {
    move |source| Error::Estargz {
        what: what.to_string(),
        source,
    }
}

/// The tar of the layer with every regular file empty.
fn metadata_tar(entries: &[TocEntry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let bad = |e: std::io::Error| Error::Invalid(format!("lazy layer metadata: {e}"));
    for e in entries {
        if e.kind == "chunk" || writer::is_format_entry(e.name.as_bytes()) {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode as u32 & 0o7777);
        h.set_uid(e.uid as u64);
        h.set_gid(e.gid as u64);
        let mtime = humantime::parse_rfc3339_weak(&e.mod_time)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        h.set_mtime(mtime);
        h.set_size(0);
        h.set_entry_type(match e.kind.as_str() {
            "dir" => tar::EntryType::Directory,
            "reg" => tar::EntryType::Regular,
            "symlink" => tar::EntryType::Symlink,
            "hardlink" => tar::EntryType::Link,
            "char" => tar::EntryType::Char,
            "block" => tar::EntryType::Block,
            "fifo" => tar::EntryType::Fifo,
            k => return Err(Error::Invalid(format!("TOC entry type {k:?}"))),
        });
        if matches!(e.kind.as_str(), "char" | "block") {
            h.set_device_major(e.dev_major).map_err(bad)?;
            h.set_device_minor(e.dev_minor).map_err(bad)?;
        }
        if !e.xattrs.is_empty() {
            let recs: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), &v[..]))
                .collect();
            b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(bad)?;
        }
        if matches!(e.kind.as_str(), "symlink" | "hardlink") {
            b.append_link(&mut h, &e.name, &e.link_name).map_err(bad)?;
        } else {
            b.append_data(&mut h, &e.name, std::io::empty())
                .map_err(bad)?;
        }
    }
    b.into_inner().map_err(bad)
}

/// Make the lazy layer directory of the eStargz blob in `source` (whose TOC must have digest
/// `toc`) in the existing empty directory `dest`. Returns the checked TOC.
pub fn build_dir(
    source: &dyn BlobSource,
    toc: &Sha256Digest,
    dest: &Path,
    opts: UnpackOptions,
) -> Result<Index> {
    let what = format!("lazy layer {}", source.describe());
    let (doc, _, offset) = reader::read_toc(source, Some(toc)).map_err(esgz(&what))?;
    // Checked first: nothing is made from a TOC the index refuses.
    let ix = Index::from_toc(&doc, offset).map_err(esgz(&what))?;
    let tar = metadata_tar(&doc.entries)?;
    extract::unpack(
        &tar[..],
        dest,
        &what,
        UnpackOptions {
            estargz: true,
            whiteouts: true,
            ..opts
        },
    )?;
    let root = rfs::open(dest, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| io_err(format!("open {}", dest.display()))(e.into()))?;
    let mut done = std::collections::HashSet::new();
    for (path, ino) in ix.walk_all() {
        let node = ix.node(ino);
        if node.kind != NodeKind::Reg || node.size == 0 || !done.insert(ino) {
            continue;
        }
        let path = path.to_string_lossy().into_owned();
        let comps: Vec<&OsStr> = index::components(&path)
            .map_err(esgz(&what))?
            .into_iter()
            .map(OsStr::new)
            .collect();
        let io = |e: rustix::io::Errno| io_err(format!("{what}: {path}"))(e.into());
        let fd = open_beneath(
            root.as_fd(),
            &comps,
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        )
        .map_err(io)?;
        format::keeping_caps(fd.as_fd(), || rfs::ftruncate(&fd, node.size)).map_err(io)?;
        rfs::fsetxattr(
            &fd,
            opts.xattrs.lazy(),
            path.as_bytes(),
            rfs::XattrFlags::empty(),
        )
        .map_err(io)?;
        let t = rfs::Timespec {
            tv_sec: node.mtime,
            tv_nsec: 0,
        };
        rfs::futimens(
            &fd,
            &rfs::Timestamps {
                last_access: t,
                last_modification: t,
            },
        )
        .map_err(io)?;
    }
    Ok(ix)
}

/// What stratafs needs to mount `layer` lazily: the `lazy=` spec file (whose `dir` is the
/// lowerdir to give), made on first use under `lazy/` in the store.
pub fn prepare(store: &Store, layer: &LayerDesc) -> Result<PathBuf> {
    let toc = layer
        .toc_digest()
        .ok_or_else(|| Error::Invalid(format!("layer {} is not eStargz", layer.digest)))?;
    let toc = Sha256Digest::parse(toc).map_err(esgz("TOC digest annotation"))?;
    let base = store.root().join("lazy");
    private::create(&base).map_err(io_err("create the lazy layer directory"))?;
    let home = base.join(toc.hex());
    let spec_path = home.join("spec.json");
    if spec_path.is_file() {
        return Ok(spec_path);
    }
    store.chunk_cache()?; // the cache directory, made private
    let tmp = store.temp_dir("lazy")?;
    let dir = tmp.path().join("root");
    std::fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let blob = store.blobs().path(&layer.digest);
    let source = FileSource::open(&blob).map_err(io_err(format!("open {}", blob.display())))?;
    build_dir(&source, &toc, &dir, UnpackOptions::for_current_user())?;
    let spec = crate::estargz::LazySpec {
        dir: home.join("root"),
        blob,
        toc: toc.to_string(),
        cache: store.root().join("chunks/sha256"),
        remote: None,
    };
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| Error::Json {
        what: "lazy spec".into(),
        source: e,
    })?;
    super::layout::write_atomic(&tmp.path().join("spec.json"), &json)?;
    match std::fs::rename(tmp.path(), &home) {
        Ok(()) => std::mem::forget(tmp),
        // Made by another process meanwhile.
        Err(_) if spec_path.is_file() => {}
        Err(e) => return Err(io_err(format!("rename to {}", home.display()))(e)),
    }
    Ok(spec_path)
}
