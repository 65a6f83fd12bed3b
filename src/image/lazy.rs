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
        let mark = |ns: format::XattrNamespace| {
            rfs::fsetxattr(&fd, ns.lazy(), path.as_bytes(), rfs::XattrFlags::empty())
        };
        match mark(opts.xattrs) {
            // Root of a user namespace (a rootless store with subordinate ids) may not write
            // trusted xattrs: the user namespace's mark, which stratafs reads as well.
            Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP)
                if matches!(opts.xattrs, format::XattrNamespace::Trusted) =>
            {
                mark(format::XattrNamespace::User)
            }
            r => r,
        }
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

/// What stratafs needs to mount `layer` lazily from its blob in the store: the `lazy=` spec
/// file (whose `dir` is the lowerdir to give), made on first use under `lazy/` in the store.
pub fn prepare(store: &Store, layer: &LayerDesc) -> Result<PathBuf> {
    let blob = store.blobs().path(&layer.digest);
    let source = FileSource::open(&blob).map_err(io_err(format!("open {}", blob.display())))?;
    prepare_from(store, layer, &source, blob.clone(), None)
}

/// Where the lazy layer of TOC `toc` lives in the store: `lazy/HEX/` holding `spec.json` and
/// the layer directory `root/`.
fn home_of(store: &Store, toc: &Sha256Digest) -> PathBuf {
    store.root().join("lazy").join(toc.hex())
}

fn toc_of(layer: &LayerDesc) -> Result<Sha256Digest> {
    let toc = layer
        .toc_digest()
        .ok_or_else(|| Error::Invalid(format!("layer {} is not eStargz", layer.digest)))?;
    Sha256Digest::parse(toc).map_err(esgz("TOC digest annotation"))
}

/// The spec file of `layer`'s lazy directory, if it has one.
pub fn existing(store: &Store, layer: &LayerDesc) -> Option<PathBuf> {
    let spec = home_of(store, &toc_of(layer).ok()?).join("spec.json");
    (spec.is_file() && spec.with_file_name("root").is_dir()).then_some(spec)
}

/// [`existing`], pinned for this process (garbage collection keeps it while it lives).
pub fn pin_existing(store: &Store, layer: &LayerDesc) -> Result<Option<PathBuf>> {
    let Ok(toc) = toc_of(layer) else {
        return Ok(None);
    };
    store.pins().locked(|p| {
        let Some(spec) = existing(store, layer) else {
            return Ok(None);
        };
        p.lazy(toc.hex())?;
        Ok(Some(spec))
    })
}

/// The hex digests of the chunks the lazy layer in `home` (`lazy/HEX/`) may cache, from its
/// TOC as the store has it (the kept tail or the local blob), checked against its digest;
/// `None` when the store cannot tell (no kept TOC, or a bad one).
pub fn chunk_digests(home: &Path) -> Option<std::collections::HashSet<String>> {
    let spec = crate::estargz::LazySpec::read(&home.join("spec.json")).ok()?;
    let toc = Sha256Digest::parse(&spec.toc).ok()?;
    let source = super::lazy_toc::local_source(&spec).ok()?;
    let r = reader::Reader::open(source, Some(&toc)).ok()?;
    Some(
        r.index()
            .all_chunks()
            .into_iter()
            .map(|c| c.digest.hex().to_string())
            .collect(),
    )
}

/// [`prepare`] with the blob read from `source` (a local file at `blob`, or the registry
/// `remote` names, which stratafs then reads itself).
pub fn prepare_from(
    store: &Store,
    layer: &LayerDesc,
    source: &dyn BlobSource,
    blob: PathBuf,
    remote: Option<crate::estargz::RemoteBlob>,
) -> Result<PathBuf> {
    let toc = toc_of(layer)?;
    let base = store.root().join("lazy");
    private::create(&base).map_err(io_err("create the lazy layer directory"))?;
    let home = home_of(store, &toc);
    let spec_path = home.join("spec.json");
    if let Some(spec) = pin_existing(store, layer)? {
        return Ok(spec);
    }
    store.chunk_cache()?; // the cache directory, made private
    let tmp = store.temp_dir("lazy")?;
    let dir = tmp.path().join("root");
    std::fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    // The footer and TOC read to make the directory are kept (see [`super::lazy_toc`]), so
    // later opens of the layer need not read them from the registry again.
    let recording = super::lazy_toc::Recording::new(source);
    build_dir(&recording, &toc, &dir, UnpackOptions::for_current_user())?;
    if remote.is_some() {
        if let Some(tail) = recording.tail() {
            super::lazy_toc::keep(tmp.path(), &tail)?;
        }
    }
    let spec = crate::estargz::LazySpec {
        dir: home.join("root"),
        blob,
        toc: toc.to_string(),
        cache: store.root().join("chunks/sha256"),
        remote,
    };
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| Error::Json {
        what: "lazy spec".into(),
        source: e,
    })?;
    super::layout::write_atomic(&tmp.path().join("spec.json"), &json)?;
    store.pins().locked(|p| {
        match std::fs::rename(tmp.path(), &home) {
            Ok(()) => {}
            // Made by another process meanwhile.
            Err(_) if spec_path.is_file() => {}
            Err(e) => return Err(io_err(format!("rename to {}", home.display()))(e)),
        }
        p.lazy(toc.hex())
    })?;
    if !tmp.path().exists() {
        std::mem::forget(tmp);
    }
    Ok(spec_path)
}

/// The lower directories of `image` (bottom first) for a container: each layer extracted
/// (from its blob if it is here), or, for a layer pulled lazily, its lazy directory (which
/// [`spec_of_dir`] finds the spec of).
pub fn lower_dirs(store: &Store, image: &super::Image) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for layer in image.layers()? {
        if let Some(dir) = store.pin_extracted(&layer)? {
            out.push(dir);
            continue;
        }
        if !store.blobs().path(&layer.digest).is_file() {
            if let Some(spec) = pin_existing(store, &layer)? {
                out.push(spec.with_file_name("root"));
                continue;
            }
        }
        out.push(store.extracted(&layer)?);
    }
    Ok(out)
}

/// The `lazy=` spec of a lower directory that is a store's lazy layer (`lazy/HEX/root`),
/// unless its files are all here (then it is an ordinary directory, mounted without the
/// registry).
pub fn spec_of_dir(dir: &Path) -> Option<PathBuf> {
    if dir.file_name()? != "root" {
        return None;
    }
    let home = dir.parent()?;
    if home.parent()?.file_name()? != "lazy" {
        return None;
    }
    let spec = home.join("spec.json");
    if !spec.is_file() || home.join(COMPLETE).exists() {
        return None;
    }
    // Filled by a background fetch since: an ordinary directory now (no registry needed).
    match local_bytes(dir) {
        Ok((have, total)) if have == total => None,
        _ => Some(spec),
    }
}

/// The file that says a lazy layer's files are all here (written once a check finds no mark).
const COMPLETE: &str = "complete";

/// How many bytes of the regular files of lazy directory `dir` are here, of how many; records
/// the layer complete when they all are.
pub fn local_bytes(dir: &Path) -> Result<(u64, u64)> {
    let home = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let (mut have, mut total) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(io_err(format!("read {}", d.display())))?;
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                total += m.len();
                let marked = [
                    format::XattrNamespace::Trusted.lazy(),
                    format::XattrNamespace::User.lazy(),
                ]
                .iter()
                .any(|x| rfs::lgetxattr(&p, *x, &mut [0u8; 0][..]).is_ok());
                if !marked {
                    have += m.len();
                }
            }
        }
    }
    if have == total && !home.as_os_str().is_empty() {
        let _ = super::layout::write_atomic(&home.join(COMPLETE), b"");
    }
    Ok((have, total))
}

/// For an image with layers pulled lazily: how many bytes of those layers' files are here,
/// of how many (`None` when every layer is extracted or its blob is here).
pub fn local_share(store: &Store, image: &super::Image) -> Result<Option<(u64, u64)>> {
    let mut sum: Option<(u64, u64)> = None;
    for layer in image.layers()? {
        let extracted = store
            .root()
            .join("layers/sha256")
            .join(layer.diff_id.hex())
            .is_dir();
        if extracted || store.blobs().path(&layer.digest).is_file() {
            continue;
        }
        let Some(spec) = existing(store, &layer) else {
            continue;
        };
        let (have, total) = local_bytes(&spec.with_file_name("root"))?;
        let s = sum.get_or_insert((0, 0));
        s.0 += have;
        s.1 += total;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estargz::writer::tests::sample_tar;
    use crate::estargz::writer::{convert, Options};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(super::super::pins::TEMP_PREFIX))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn gc_keeps_a_pinned_lazy_layer_and_its_chunks_and_frees_them_after() {
        let t = tempfile::tempdir().unwrap();
        let tar = sample_tar();
        let mut blob = Vec::new();
        let w = convert(|| Ok(&tar[..]), &mut blob, &Options::default()).unwrap();
        // A writer's session: the blob and the lazy layer it makes are pinned.
        let a = Store::open(t.path()).unwrap();
        let digest = a.blobs().put(&blob).unwrap();
        let layer = LayerDesc {
            digest,
            diff_id: super::super::Digest::of(b"not checked here"),
            size: blob.len() as u64,
            media_type: super::super::store::LAYER_TAR.into(),
            annotations: [(
                crate::estargz::TOC_DIGEST_ANNOTATION.to_string(),
                w.toc_digest.to_string(),
            )]
            .into(),
        };
        let spec = prepare(&a, &layer).unwrap();
        let home = spec.parent().unwrap().to_path_buf();
        // Cached chunks: those of its TOC, and one no layer lists.
        let cache = a.chunk_cache().unwrap();
        let chunks = chunk_digests(&home).expect("the TOC is readable");
        assert!(!chunks.is_empty());
        for c in &chunks {
            std::fs::write(t.path().join("chunks/sha256").join(c), b"x").unwrap();
        }
        let stray = "0".repeat(64);
        std::fs::write(t.path().join("chunks/sha256").join(&stray), b"x").unwrap();
        drop(cache);

        // Collection by another process while the writer lives: the lazy layer and its
        // chunks stay, the stray chunk goes.
        let b = Store::open(t.path()).unwrap();
        let stats = b.gc(|| Ok(Vec::new())).unwrap();
        assert_eq!((stats.lazy, stats.chunks), (0, 1));
        assert!(spec.is_file());
        let mut want: Vec<String> = chunks.iter().cloned().collect();
        want.sort();
        assert_eq!(names(&t.path().join("chunks/sha256")), want);
        // A container listing the lazy directory keeps it too.
        drop(a);
        let stats = b.gc(|| Ok(vec![home.join("root")])).unwrap();
        assert_eq!((stats.lazy, stats.chunks), (0, 0));
        // Then nothing needs it: the directory, its chunks and the blob go.
        let stats = b.gc(|| Ok(Vec::new())).unwrap();
        assert_eq!(stats.lazy, 1);
        assert_eq!(stats.chunks as usize, chunks.len());
        assert_eq!(names(&t.path().join("lazy")), Vec::<String>::new());
        assert_eq!(names(&t.path().join("chunks/sha256")), Vec::<String>::new());
        assert_eq!(names(&t.path().join("blobs/sha256")), Vec::<String>::new());
    }
}
