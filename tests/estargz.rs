//! eStargz images end to end, as root, through the `strata` command line: `convert
//! --estargz` keeps every file (as GNU tar, strata's own extraction and the TOC reader see
//! them), annotates each layer with its TOC digest, updates the diff IDs, and the result runs.
//!
//! Each test has its own store in a temp dir and runs every command with a deadline. Needs
//! busybox-static, tar and runc (scripts/test.sh installs the Debian packages).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::cli::StrataEnv;
use serde_json::Value;
use strata::estargz::{self, FileSource, NodeKind, Reader, Sha256Digest};

/// What a tree holds at one path: type and mode, owner, size, mtime, link target or file
/// digest, user xattrs.
type Tree = BTreeMap<PathBuf, String>;

fn xattrs(p: &Path) -> Vec<(OsString, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, std::ffi::OsStr::from_bytes(name), &mut v[..]).unwrap();
        v.truncate(len);
        out.push((std::ffi::OsStr::from_bytes(name).to_owned(), v));
    }
    out.sort();
    out
}

/// Everything under `root`, except the root itself and the root-level names in `skip`.
fn tree(root: &Path, skip: &[&str]) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if dir == root && skip.iter().any(|s| rel == Path::new(s)) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() {
                Sha256Digest::of(&std::fs::read(&p).unwrap()).to_string()
            } else {
                String::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            // Directory mtimes change as entries are made; compare the rest.
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            out.insert(
                rel,
                format!(
                    "{:o} {}:{} {} {mtime} {what} {:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if m.is_dir() { 0 } else { m.size() },
                    xattrs(&p)
                ),
            );
        }
    }
    out
}

/// A read-only stratafs mount of one lazy layer, unmounted (and its daemon killed) on drop.
struct LazyMount {
    mnt: PathBuf,
    child: std::process::Child,
}

impl LazyMount {
    fn new(dir: &Path, spec: &Path, mnt: &Path) -> LazyMount {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_stratafs"))
            .arg("-f")
            .arg("-o")
            .arg(format!(
                "lowerdir={},lazy={},lazyfetch=off",
                dir.display(),
                spec.display()
            ))
            .arg(mnt)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let m = LazyMount {
            mnt: mnt.to_path_buf(),
            child,
        };
        let start = std::time::Instant::now();
        while !common::mounted_type(mnt).is_some_and(|t| t.starts_with("fuse")) {
            assert!(start.elapsed().as_secs() < 30, "stratafs did not mount");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        m
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        common::unmount(&self.mnt);
        common::kill_pid(self.child.id(), rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

/// A test's store with a source tree to import.
struct Env {
    cli: StrataEnv,
}

impl std::ops::Deref for Env {
    type Target = StrataEnv;
    fn deref(&self) -> &StrataEnv {
        &self.cli
    }
}

impl Env {
    fn new() -> Env {
        Env {
            cli: StrataEnv::new("strata-esgz-"),
        }
    }

    /// A busybox root filesystem with a file of several chunks, hard and symbolic links, a
    /// fifo, an empty file, a long name, odd modes and a user xattr.
    fn rootfs(&self) -> PathBuf {
        let r = self.path("rootfs");
        for d in ["bin", "etc", "tmp", "usr/lib/deep/er"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox-static is needed");
        for a in ["sh", "ls", "cat", "sha256sum"] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
        }
        std::fs::write(r.join("etc/greeting"), "hello lazy\n").unwrap();
        std::fs::write(r.join("etc/empty"), "").unwrap();
        let mut x = 0x2545f491u32;
        let big: Vec<u8> = (0..9 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 7) as u8 + b'a'
            })
            .collect();
        std::fs::write(r.join("usr/lib/big.bin"), &big).unwrap();
        std::fs::hard_link(r.join("usr/lib/big.bin"), r.join("usr/lib/big.link")).unwrap();
        std::fs::write(r.join("usr/lib/deep/er").join("n".repeat(200)), "long").unwrap();
        let setuid = r.join("usr/lib/setuid");
        std::fs::write(&setuid, "s").unwrap();
        std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4751)).unwrap();
        std::os::unix::fs::chown(&setuid, Some(1234), Some(5678)).unwrap();
        rustix::fs::setxattr(&setuid, "user.tag", b"v1", rustix::fs::XattrFlags::empty())
            .expect("user xattrs on the test filesystem");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("etc/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        r
    }

    fn inspect(&self, r: &str) -> Value {
        serde_json::from_str(&self.ok(&["inspect", r])).unwrap()
    }

    /// (blob path, descriptor annotations, diff ID) of each layer of `image`.
    fn layers(&self, image: &str) -> Vec<(PathBuf, Value, String)> {
        let v = self.inspect(image);
        let diff_ids = v["Config"]["rootfs"]["diff_ids"].as_array().cloned();
        let diff_ids = diff_ids
            .or_else(|| v["config"]["rootfs"]["diff_ids"].as_array().cloned())
            .unwrap_or_else(|| panic!("no diff_ids in {v}"));
        let manifest = if v["Manifest"].is_object() {
            &v["Manifest"]
        } else {
            &v["manifest"]
        };
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .zip(diff_ids)
            .map(|(l, d)| {
                let digest = l["digest"].as_str().unwrap();
                let blob = self
                    .store()
                    .join("blobs/sha256")
                    .join(digest.strip_prefix("sha256:").unwrap());
                (
                    blob,
                    l["annotations"].clone(),
                    d.as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Extract the gzip tar `blob` with GNU tar into `rel`.
    fn gnu_extract(&self, blob: &Path, rel: &str) -> PathBuf {
        let d = self.path(rel);
        std::fs::create_dir_all(&d).unwrap();
        self.tool(
            "tar",
            &[
                "--xattrs",
                "--xattrs-include=user.*",
                "--numeric-owner",
                "-xzpf",
                blob.to_str().unwrap(),
                "-C",
                d.to_str().unwrap(),
            ],
        );
        d
    }
}

fn gunzip(blob: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(blob).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn convert_keeps_every_file_annotates_the_layer_and_runs() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let e = Env::new();
    let src = e.rootfs();
    e.ok(&["import", src.to_str().unwrap(), "plain:1"]);
    let id = e.ok(&["convert", "--estargz", "plain:1", "lazy:1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");

    let plain = e.layers("plain:1");
    let lazy = e.layers("lazy:1");
    assert_eq!(lazy.len(), 1);
    let (blob, ann, diff_id) = &lazy[0];
    // The descriptor vouches for the TOC; the config's diff ID is the new uncompressed tar's.
    let toc = ann[estargz::TOC_DIGEST_ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("no TOC digest in {ann}"));
    let plain_tar = gunzip(blob);
    assert_eq!(diff_id, Sha256Digest::of(&plain_tar).as_str());
    assert_eq!(
        ann[estargz::UNCOMPRESSED_SIZE_ANNOTATION].as_str().unwrap(),
        plain_tar.len().to_string()
    );
    assert_ne!(diff_id, &plain[0].2, "the TOC is part of the tar");

    // GNU tar sees the same files (plus the TOC and landmark, which it cannot know of).
    let a = e.gnu_extract(&plain[0].0, "gnu-plain");
    let b = e.gnu_extract(blob, "gnu-lazy");
    assert!(b.join(estargz::TOC_NAME).is_file());
    let format = [estargz::TOC_NAME, estargz::NO_PREFETCH_LANDMARK];
    let want = tree(&a, &[]);
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(tree(&b, &format), want);

    // strata's own extraction hides the format entries.
    let store = strata::image::Store::open(&e.store()).unwrap();
    let img = store.resolve("lazy:1").unwrap();
    let layer = img.layers().unwrap().remove(0);
    assert!(layer.toc_digest().is_some());
    let extracted = store.extracted(&layer).unwrap();
    let plain_img = store.resolve("plain:1").unwrap();
    let plain_dir = store
        .extracted(&plain_img.layers().unwrap().remove(0))
        .unwrap();
    assert_eq!(tree(&extracted, &[]), tree(&plain_dir, &[]));

    // The TOC reader, trusting only the annotation, serves every file's bytes.
    let r = Reader::open(
        FileSource::open(blob).unwrap(),
        Some(&Sha256Digest::parse(toc).unwrap()),
    )
    .unwrap();
    let ix = r.index();
    let mut files = 0;
    for (path, ino) in ix.walk_all() {
        let on_disk = plain_dir.join(&path);
        let node = ix.node(ino);
        let m = std::fs::symlink_metadata(&on_disk).unwrap_or_else(|_| panic!("{path:?}"));
        assert_eq!(node.mode, m.mode() & 0o7777, "{path:?}");
        assert_eq!((node.uid, node.gid), (m.uid(), m.gid()), "{path:?}");
        if node.kind == NodeKind::Reg {
            let mut got = Vec::new();
            for c in &node.chunks {
                got.extend(r.read_chunk(c).unwrap());
            }
            assert_eq!(got, std::fs::read(&on_disk).unwrap(), "{path:?}");
            files += 1;
        }
    }
    assert!(files >= 6, "{files}");
    let big = ix.node(ix.lookup_path("usr/lib/big.bin").unwrap());
    assert_eq!(big.chunks.len(), 3, "9 MiB in 4 MiB chunks");
    assert_eq!(
        ix.lookup_path("usr/lib/big.bin"),
        ix.lookup_path("usr/lib/big.link")
    );

    // Through the store's chunk cache (private, shared, verified on every read): every
    // chunk read once is kept; one damaged on disk is dropped and fetched again.
    let cache = store.chunk_cache().unwrap();
    let cache_dir = e.store().join("chunks/sha256");
    for d in [e.store().join("chunks"), cache_dir.clone()] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o777,
            0o700,
            "{d:?}"
        );
    }
    let mut want_chunks = std::collections::BTreeSet::new();
    for c in &big.chunks {
        assert_eq!(
            r.read_chunk_cached(&cache, c).unwrap(),
            r.read_chunk(c).unwrap()
        );
        want_chunks.insert(c.digest.hex().to_string());
    }
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, want_chunks);
    let victim = &big.chunks[1];
    let path = cache_dir.join(victim.digest.hex());
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let reopened = store.chunk_cache().unwrap();
    assert_eq!(reopened.get(&victim.digest).unwrap(), None);
    let good = r.read_chunk_cached(&reopened, victim).unwrap();
    assert_eq!(Sha256Digest::of(&good), victim.digest);
    assert_eq!(std::fs::read(&path).unwrap(), good);

    // The store's lazy layer: made from the TOC alone, mounted by stratafs (lazy=SPEC),
    // it shows the extracted layer's tree, filling files as they are read.
    let spec_path = strata::image::lazy::prepare(&store, &layer).unwrap();
    let spec = estargz::LazySpec::read(&spec_path).unwrap();
    assert!(spec.dir.starts_with(e.store().join("lazy")));
    assert_eq!(spec.toc, toc);
    assert_eq!(
        strata::image::lazy::prepare(&store, &layer).unwrap(),
        spec_path,
        "made once"
    );
    let before = std::fs::read_dir(&cache_dir).unwrap().count();
    assert_eq!(before, 3, "only the chunks read above");
    {
        let mnt = e.path("lazy-mnt");
        std::fs::create_dir(&mnt).unwrap();
        let _m = LazyMount::new(&spec.dir, &spec_path, &mnt);
        assert_eq!(
            std::fs::read(mnt.join("etc/greeting")).unwrap(),
            b"hello lazy\n"
        );
        assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), before + 1);
        assert_eq!(tree(&mnt, &[]), tree(&plain_dir, &[]));
    }
    assert!(common::mounted_type(&e.path("lazy-mnt")).is_none());

    // The converted image runs, and shows no eStargz bookkeeping.
    let out = e.ok(&["run", "--rm", "lazy:1", "cat", "/etc/greeting"]);
    assert_eq!(out, "hello lazy\n");
    let ls = e.ok(&["run", "--rm", "lazy:1", "ls", "-a", "/"]);
    assert!(!ls.contains("stargz") && !ls.contains("landmark"), "{ls}");

    // Converting again keeps eStargz layers as they are.
    e.ok(&["convert", "--estargz", "lazy:1", "lazy:2"]);
    assert_eq!(e.layers("lazy:2")[0].0, *blob);
}

#[test]
fn prefetch_files_come_first_and_bad_requests_are_refused() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let e = Env::new();
    let src = e.rootfs();
    e.ok(&["import", src.to_str().unwrap(), "plain:1"]);
    e.ok(&[
        "convert",
        "--estargz",
        "--prefetch",
        "/etc/greeting",
        "--prefetch",
        "/bin/busybox",
        "--chunk-size",
        "1048576",
        "plain:1",
        "pre:1",
    ]);
    let (blob, ann, _) = e.layers("pre:1").remove(0);
    let toc = Sha256Digest::parse(ann[estargz::TOC_DIGEST_ANNOTATION].as_str().unwrap()).unwrap();
    let r = Reader::open(FileSource::open(&blob).unwrap(), Some(&toc)).unwrap();
    let ix = r.index();
    let end = ix.prefetch_end.expect("a prefetch landmark");
    let node = |p: &str| ix.node(ix.lookup_path(p).unwrap());
    assert!(node("etc/greeting").chunks[0].member_end <= end);
    assert!(node("bin/busybox")
        .chunks
        .iter()
        .all(|c| c.member_end <= end));
    assert!(node("usr/lib/setuid").chunks[0].member > end);
    assert_eq!(node("usr/lib/big.bin").chunks.len(), 9, "1 MiB chunks");

    let err = e.fails(&["convert", "plain:1", "x:1"]);
    assert!(err.contains("--estargz"), "{err}");
    let err = e.fails(&["convert", "--estargz", "nosuch:1", "x:1"]);
    assert!(err.contains("nosuch"), "{err}");
    let err = e.fails(&[
        "convert",
        "--estargz",
        "--chunk-size",
        "0",
        "plain:1",
        "x:1",
    ]);
    assert!(err.contains("chunk-size"), "{err}");
}
