//! Lazy lower layers through real stratafs mounts: a union of a lazy eStargz layer (its
//! directory made from the TOC alone, `lazy=SPEC`), a directory layer below and an upper
//! shows exactly what the same union over the extracted layer shows, fetching each file's
//! chunks on first open (verified, cached); copy-up of a lazy file; whiteouts and opaque
//! directories from the TOC; a corrupt chunk gives EIO and nothing cached, and reads resume
//! once the blob is good again; filled files stay filled across a remount.
//!
//! Runs as root (device nodes, owners, trusted xattrs); skipped otherwise. Every mount is
//! unmounted on drop (see `common::Mount`).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{Backend, Fixture, Layer, MountSpec};
use strata::estargz::writer::{convert, Options};
use strata::estargz::{FileSource, LazySpec, Sha256Digest};
use strata::image::extract::{unpack, UnpackOptions};

const MARK: &str = "trusted.overlay.strata.lazy";

fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_650_000_000 + uid);
    h.set_size(0);
    h
}

/// The eStargz layer: chunked files, links, a fifo, xattrs, OCI whiteouts, an opaque dir.
fn layer_tar() -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "opq/"] {
        b.append_data(&mut header(T::Directory, 0o755, 0), d, &[][..])
            .unwrap();
    }
    let mut x = 99u32;
    let big: Vec<u8> = (0..(9 << 20) + 77)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    let files: Vec<(&str, Vec<u8>, u32, u64)> = vec![
        ("bin/tool", big, 0o755, 0),
        ("etc/conf", b"key=value\n".to_vec(), 0o640, 7),
        ("etc/empty", Vec::new(), 0o644, 0),
        ("opq/new", b"only in the lazy layer".to_vec(), 0o644, 0),
        ("opq/.wh..wh..opq", Vec::new(), 0o644, 0),
        (".wh.gone", Vec::new(), 0o644, 0),
        ("etc/.wh.old", Vec::new(), 0o644, 0),
    ];
    for (p, data, mode, uid) in files {
        let mut h = header(T::Regular, mode, uid);
        h.set_size(data.len() as u64);
        if p == "etc/conf" {
            b.append_pax_extensions([("SCHILY.xattr.user.origin", &b"toc"[..])])
                .unwrap();
        }
        b.append_data(&mut h, p, &data[..]).unwrap();
    }
    b.append_link(&mut header(T::Symlink, 0o777, 0), "bin/link", "tool")
        .unwrap();
    b.append_link(&mut header(T::Link, 0o755, 0), "etc/hard", "bin/tool")
        .unwrap();
    b.append_data(&mut header(T::Fifo, 0o620, 0), "etc/fifo", &[][..])
        .unwrap();
    b.into_inner().unwrap()
}

/// The directory layer below: names the lazy layer deletes or hides, and one it keeps.
fn fill_below(l: &Layer) {
    l.dir("etc").dir("opq/hidden").dir("bin");
    l.file("gone", b"deleted above")
        .file("etc/old", b"deleted above")
        .file("etc/kept", b"kept")
        .file("opq/x", b"hidden by the opaque dir")
        .file("bin/other", b"other");
    // Both fixtures' copies must compare equal whenever they were written (a second may
    // pass between the two).
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for f in ["gone", "etc/old", "etc/kept", "opq/x", "bin/other"] {
        std::fs::File::options()
            .write(true)
            .open(l.path(f))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
}

/// What a tree shows at each path.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
                Sha256Digest::of(&bytes).to_string()
            } else {
                String::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            let x = common::get_xattr(&p, "user.origin").ok();
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                format!(
                    "{:o} {}:{} {} {} {what} {x:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if m.is_dir() { 0 } else { m.size() },
                    if m.is_dir() { 0 } else { m.mtime() },
                ),
            );
        }
    }
    out
}

/// Files of the lazy layer directory still marked as waiting for their bytes.
fn marked(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && common::get_xattr(&p, MARK).is_ok() {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A union over the lazy layer and one over the extracted layer, same layer below.
struct Pair {
    lazy: Fixture,
    reference: Fixture,
    blob: PathBuf,
    good_blob: Vec<u8>,
    spec: PathBuf,
    cache: PathBuf,
}

impl Pair {
    fn new() -> Pair {
        let lazy = Fixture::new(2);
        let reference = Fixture::new(2);
        let tar = layer_tar();
        let mut blob_bytes = Vec::new();
        let w = convert(|| Ok(&tar[..]), &mut blob_bytes, &Options::default()).unwrap();
        let blob = lazy.root().join("layer.esgz");
        std::fs::write(&blob, &blob_bytes).unwrap();
        strata::image::lazy::build_dir(
            &FileSource::open(&blob).unwrap(),
            &w.toc_digest,
            &lazy.lowers[0],
            UnpackOptions::for_current_user(),
        )
        .unwrap();
        unpack(
            flate2::read::MultiGzDecoder::new(&blob_bytes[..]),
            &reference.lowers[0],
            "reference",
            UnpackOptions {
                estargz: true,
                ..UnpackOptions::for_current_user()
            },
        )
        .unwrap();
        fill_below(&lazy.lower(1));
        fill_below(&reference.lower(1));
        let cache = lazy.root().join("chunks");
        strata::image::private::create(&cache).unwrap();
        let spec = lazy.root().join("spec.json");
        let s = LazySpec {
            dir: lazy.lowers[0].clone(),
            blob: blob.clone(),
            toc: w.toc_digest.to_string(),
            cache: cache.clone(),
            remote: None,
        };
        std::fs::write(&spec, serde_json::to_vec(&s).unwrap()).unwrap();
        Pair {
            lazy,
            reference,
            blob,
            good_blob: blob_bytes,
            spec,
            cache,
        }
    }

    /// Options of the lazy mount; files are filled on first open only, so what a test
    /// reads is what gets fetched.
    fn lazy_spec(&self) -> MountSpec {
        MountSpec::lazy(&self.spec, false)
    }

    fn cached(&self) -> usize {
        std::fs::read_dir(&self.cache).unwrap().count()
    }
}

fn skip() -> bool {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

#[test]
fn lazy_union_shows_what_the_extracted_union_shows() {
    if skip() {
        return;
    }
    let p = Pair::new();
    let ml = p.lazy.mount_with(Backend::Stratafs, &p.lazy_spec());
    let mr = p
        .reference
        .mount_with(Backend::Stratafs, &MountSpec::default());
    let all: Vec<PathBuf> = ["bin/tool", "etc/conf", "etc/hard", "opq/new"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(
        marked(&p.lazy.lowers[0]),
        all,
        "sized and marked, not filled"
    );
    assert_eq!(
        p.cached(),
        0,
        "nothing fetched at mount (no prefetch landmark)"
    );

    // Names and attributes need no fetch.
    let st = std::fs::metadata(ml.path("bin/tool")).unwrap();
    assert_eq!(st.len(), (9 << 20) + 77);
    assert_eq!(p.cached(), 0);
    // One small file read: only its chunk is fetched.
    assert_eq!(std::fs::read(ml.path("etc/conf")).unwrap(), b"key=value\n");
    assert_eq!(p.cached(), 1);
    wait_marked(&p.lazy.lowers[0], 3, 20);

    // Everything else, compared with the extracted union (reads fill the rest).
    assert_eq!(tree(&ml.path("")), tree(&mr.path("")));
    wait_marked(&p.lazy.lowers[0], 0, 20);
    assert_eq!(
        p.cached(),
        1 + 3 + 1,
        "conf, 3 chunks of tool (shared with its hard link), new"
    );

    // Whiteouts and the opaque directory of the TOC act on the layer below.
    assert!(!ml.path("gone").exists() && !ml.path("etc/old").exists());
    assert!(ml.path("etc/kept").exists() && ml.path("bin/other").exists());
    let opq: Vec<_> = std::fs::read_dir(ml.path("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(opq, vec![OsString::from("new")]);
    let hard = std::fs::metadata(ml.path("etc/hard")).unwrap();
    assert_eq!(
        hard.ino(),
        std::fs::metadata(ml.path("bin/tool")).unwrap().ino()
    );
    // The private mark is never shown.
    assert!(common::get_xattr(&ml.path("etc/conf"), MARK).is_err());
}

/// Wait (at most `secs`) until `n` files of the lazy layer directory `dir` are marked: the
/// marks of filled files go after a batched sync.
fn wait_marked(dir: &Path, n: usize, secs: u64) {
    let start = std::time::Instant::now();
    while marked(dir).len() != n {
        assert!(
            start.elapsed().as_secs() < secs,
            "want {n} marked, have {:?}",
            marked(dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_filled_file_is_served_at_once_and_loses_its_mark_after_a_batched_sync_or_at_unmount() {
    if skip() {
        return;
    }
    let p = Pair::new();
    let ml = p.lazy.mount_with(Backend::Stratafs, &p.lazy_spec());
    assert_eq!(marked(&p.lazy.lowers[0]).len(), 4);
    // Served from what was written, before the sync that lets its mark go: the batch is
    // synced a second after its first file, so a check within a second of the read must
    // still find the mark.
    let read_at = std::time::Instant::now();
    assert_eq!(std::fs::read(ml.path("etc/conf")).unwrap(), b"key=value\n");
    let still = marked(&p.lazy.lowers[0]);
    if read_at.elapsed() < std::time::Duration::from_millis(900) {
        assert!(still.contains(&PathBuf::from("etc/conf")), "{still:?}");
    }
    assert_eq!(std::fs::read(ml.path("etc/conf")).unwrap(), b"key=value\n");
    assert_eq!(p.cached(), 1, "fetched once");
    wait_marked(&p.lazy.lowers[0], 3, 20);
    assert!(!marked(&p.lazy.lowers[0]).contains(&PathBuf::from("etc/conf")));

    // A file filled just before unmount: its mark goes as the daemon leaves.
    let tool = std::fs::read(ml.path("bin/tool")).unwrap();
    assert_eq!(tool.len(), (9 << 20) + 77);
    drop(ml);
    let left = marked(&p.lazy.lowers[0]);
    assert!(
        !left.contains(&PathBuf::from("bin/tool")) && !left.contains(&PathBuf::from("etc/hard")),
        "synced and unmarked at unmount: {left:?}"
    );
    // What was synced is whole: a new mount serves it with nothing fetched.
    let before = p.cached();
    let ml = p.lazy.mount_with(Backend::Stratafs, &p.lazy_spec());
    assert_eq!(std::fs::read(ml.path("bin/tool")).unwrap(), tool);
    assert_eq!(p.cached(), before);
}

#[test]
fn left_alone_a_lazy_layer_ends_up_whole() {
    if skip() {
        return;
    }
    let p = Pair::new();
    let spec = MountSpec {
        writable: true,
        extra: vec![format!("lazy={}", p.spec.display())],
    };
    let ml = p.lazy.mount_with(Backend::Stratafs, &spec);
    let mr = p
        .reference
        .mount_with(Backend::Stratafs, &MountSpec::default());
    // Nothing is read through the mount: the daemon fills the files by itself.
    wait_marked(&p.lazy.lowers[0], 0, 60);
    assert_eq!(p.cached(), 5, "every chunk of the layer");
    // Now the blob can go: everything is local.
    std::fs::remove_file(&p.blob).unwrap();
    assert_eq!(tree(&ml.path("")), tree(&mr.path("")));
}

#[test]
fn copy_up_of_a_lazy_file_takes_its_bytes() {
    if skip() {
        return;
    }
    let p = Pair::new();
    let ml = p.lazy.mount_with(Backend::Stratafs, &p.lazy_spec());
    let mr = p
        .reference
        .mount_with(Backend::Stratafs, &MountSpec::default());
    use std::io::Write;
    for m in [&ml, &mr] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.path("bin/tool"))
            .unwrap();
        f.write_all(b"appended").unwrap();
        // A chmod-only copy-up too.
        let mut perm = std::fs::metadata(m.path("opq/new")).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
        std::fs::set_permissions(m.path("opq/new"), perm).unwrap();
    }
    assert_eq!(tree(&ml.path("")), tree(&mr.path("")));
    let up = std::fs::read(p.lazy.upper.join("bin/tool")).unwrap();
    assert_eq!(
        up,
        std::fs::read(p.reference.upper.join("bin/tool")).unwrap()
    );
    assert!(up.ends_with(b"appended") && up.len() == (9 << 20) + 77 + 8);
    assert_eq!(
        std::fs::read(p.lazy.upper.join("opq/new")).unwrap(),
        b"only in the lazy layer"
    );
}

#[test]
fn a_corrupt_chunk_is_eio_and_reads_resume_when_the_blob_is_good() {
    if skip() {
        return;
    }
    let p = Pair::new();
    // Corrupt the member of opq/new: a valid gzip member of other bytes of the same length.
    let toc = strata::estargz::reader::read_toc(&FileSource::open(&p.blob).unwrap(), None).unwrap();
    let ix = strata::estargz::Index::from_toc(&toc.0, toc.2).unwrap();
    let c = ix.node(ix.lookup_path("opq/new").unwrap()).chunks[0].clone();
    let mut evil = Vec::new();
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(&mut evil, flate2::Compression::fast());
        gz.write_all(b"ONLY IN THE LAZY LAYER").unwrap();
        gz.finish().unwrap();
    }
    let span = (c.member_end - c.member) as usize;
    evil.resize(span, 0);
    let mut bad = p.good_blob.clone();
    bad[c.member as usize..c.member as usize + span].copy_from_slice(&evil);
    std::fs::write(&p.blob, &bad).unwrap();
    {
        let ml = p.lazy.mount_with(Backend::Stratafs, &p.lazy_spec());
        let err = std::fs::read(ml.path("opq/new")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(!p.lazy.upper.join("opq/new").exists());
        assert!(
            std::fs::read(ml.path("etc/conf")).is_ok(),
            "other files still read"
        );
        assert!(
            ml.daemon_log().contains("digest mismatch"),
            "{}",
            ml.daemon_log()
        );
        // Copy-up of it fails too, leaving nothing half-made.
        assert!(std::fs::OpenOptions::new()
            .append(true)
            .open(ml.path("opq/new"))
            .is_err());
        assert!(!p.lazy.upper.join("opq/new").exists());
        let still: Vec<PathBuf> = ["bin/tool", "etc/hard", "opq/new"]
            .iter()
            .map(PathBuf::from)
            .collect();
        wait_marked(&p.lazy.lowers[0], still.len(), 20);
        assert_eq!(marked(&p.lazy.lowers[0]), still);
        // The blob is good again (the registry is back): the read resumes in the same mount.
        std::fs::write(&p.blob, &p.good_blob).unwrap();
        assert_eq!(
            std::fs::read(ml.path("opq/new")).unwrap(),
            b"only in the lazy layer"
        );
    }
    // A remount finds the filled file filled (no fetch: the blob is gone now).
    std::fs::write(&p.blob, &bad).unwrap();
    let ml = p.lazy.mount_with(Backend::Stratafs, &p.lazy_spec());
    assert_eq!(
        std::fs::read(ml.path("opq/new")).unwrap(),
        b"only in the lazy layer"
    );
    assert_eq!(std::fs::read(ml.path("etc/conf")).unwrap(), b"key=value\n");
}

#[test]
fn bad_lazy_specs_refuse_the_mount() {
    if skip() {
        return;
    }
    let p = Pair::new();
    let mut s: LazySpec = serde_json::from_slice(&std::fs::read(&p.spec).unwrap()).unwrap();
    s.toc = Sha256Digest::of(b"another TOC").to_string();
    let wrong = p.lazy.root().join("wrong.json");
    std::fs::write(&wrong, serde_json::to_vec(&s).unwrap()).unwrap();
    let not_lower = p.lazy.root().join("notlower.json");
    let mut s2: LazySpec = serde_json::from_slice(&std::fs::read(&p.spec).unwrap()).unwrap();
    s2.dir = p.lazy.upper.clone();
    std::fs::write(&not_lower, serde_json::to_vec(&s2).unwrap()).unwrap();
    for (spec, want) in [
        (&wrong, "digest mismatch"),
        (&not_lower, "not one of the lowerdirs"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stratafs"))
            .arg("-f")
            .arg("-o")
            .arg(format!(
                "lowerdir={}:{},lazy={}",
                p.lazy.lowers[0].display(),
                p.lazy.lowers[1].display(),
                spec.display()
            ))
            .arg(&p.lazy.mnt)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "mounted with {spec:?}");
        assert!(err.contains(want), "{err}");
    }
    assert!(common::mounted_type(&p.lazy.mnt).is_none());
}
