//! The indexed (eStargz) lower layer against the extracted one: for the same layer blob, the
//! union's merge gets the same entries, whiteouts and opacity, and every inode the same
//! attributes, link targets, xattrs and bytes, whether the layer is read through its TOC or
//! from the directory `strata` extracts. Then the faults: a source that fails or serves a
//! corrupt chunk gives EIO and caches nothing, and reads resume when the source is back;
//! prefetch fetches the files before the landmark in one request.
//!
//! Runs as root (device nodes, owners, trusted xattrs in the extracted layer); skipped
//! otherwise.

mod common;

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use strata::estargz::cache::ChunkCache;
use strata::estargz::writer::{convert, Options};
use strata::estargz::{BlobSource, Sha256Digest};
use strata::image::extract::{unpack, UnpackOptions};
use strata::overlay::format::{self, EntryKind};
use strata::union::dir::{read_layer_dir, LayerDir, ListingBuilder};
use strata::union::indexed::IndexedLayer;

/// A blob in memory that can be made to fail, counting what is read from it.
struct TestSource {
    blob: Vec<u8>,
    down: AtomicBool,
    reads: AtomicU64,
    bytes: AtomicU64,
}

/// The test's handle on a source the layer owns too.
#[derive(Clone)]
struct Shared(Arc<TestSource>);

impl std::ops::Deref for Shared {
    type Target = TestSource;
    fn deref(&self) -> &TestSource {
        &self.0
    }
}

impl BlobSource for Shared {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.blob.len() as u64)
    }
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if self.0.down.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "source down",
            ));
        }
        self.0.reads.fetch_add(1, Ordering::SeqCst);
        self.0.bytes.fetch_add(len, Ordering::SeqCst);
        Ok(self.0.blob[offset as usize..(offset + len) as usize].to_vec())
    }
    fn describe(&self) -> String {
        "test source".into()
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid + 1);
    h.set_mtime(1_700_000_000 + uid);
    h.set_size(0);
    h
}

/// A layer tar with every kind of entry, OCI whiteouts, an opaque directory and chunked files.
fn layer_tar() -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for (d, mode) in [
        ("bin/", 0o755),
        ("etc/", 0o750),
        ("opq/", 0o700),
        ("opq/sub/", 0o755),
    ] {
        b.append_data(&mut header(T::Directory, mode, 0), d, &[][..])
            .unwrap();
    }
    let mut x = 7u32;
    let big: Vec<u8> = (0..(5 << 20) + 12345)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let files: Vec<(&str, Vec<u8>, u32)> = vec![
        ("bin/tool", big.clone(), 0o4755),
        ("etc/conf", b"key=value\n".to_vec(), 0o640),
        ("etc/empty", Vec::new(), 0o600),
        ("opq/sub/f", b"in an opaque dir".to_vec(), 0o644),
        ("opq/.wh..wh..opq", Vec::new(), 0o644),
        (".wh.gone", Vec::new(), 0o644),
        ("etc/.wh.old", Vec::new(), 0o644),
    ];
    for (i, (p, data, mode)) in files.iter().enumerate() {
        let mut h = header(T::Regular, *mode, i as u64 * 10);
        h.set_size(data.len() as u64);
        if *p == "etc/conf" {
            b.append_pax_extensions([("SCHILY.xattr.user.origin", &b"toc"[..])])
                .unwrap();
        }
        b.append_data(&mut h, p, &data[..]).unwrap();
    }
    b.append_link(&mut header(T::Symlink, 0o777, 0), "bin/link", "tool")
        .unwrap();
    b.append_link(&mut header(T::Link, 0o644, 0), "etc/hard", "bin/tool")
        .unwrap();
    b.append_data(&mut header(T::Fifo, 0o620, 3), "etc/fifo", &[][..])
        .unwrap();
    let mut dev = header(T::Char, 0o666, 0);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    b.append_data(&mut dev, "etc/null", &[][..]).unwrap();
    b.into_inner().unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    extracted: std::path::PathBuf,
    source: Shared,
    layer: IndexedLayer,
    cache: Arc<ChunkCache>,
}

fn fixture(opts: &Options) -> Fixture {
    let dir = common::tempdir();
    let tar = layer_tar();
    let mut blob = Vec::new();
    let w = convert(|| Ok(&tar[..]), &mut blob, opts).unwrap();
    let extracted = dir.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let mut gz = flate2::read::MultiGzDecoder::new(&blob[..]);
    unpack(
        &mut gz,
        &extracted,
        "test layer",
        UnpackOptions {
            estargz: true,
            ..UnpackOptions::for_current_user()
        },
    )
    .unwrap();
    let cache_dir = dir.path().join("chunks");
    strata::image::private::create(&cache_dir).unwrap();
    let cache = Arc::new(ChunkCache::open(&cache_dir).unwrap());
    let source = Shared(Arc::new(TestSource {
        blob,
        down: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    }));
    let layer =
        IndexedLayer::open(Box::new(source.clone()), &w.toc_digest, cache.clone(), 77).unwrap();
    Fixture {
        _dir: dir,
        extracted,
        source,
        layer,
        cache,
    }
}

/// (name, kind) of a layer directory, sorted.
fn entries(d: LayerDir) -> Vec<(Vec<u8>, String)> {
    let mut v: Vec<_> = d
        .entries
        .into_iter()
        .filter(|(_, k, _)| *k != EntryKind::OpaqueMarker)
        .map(|(n, k, _)| {
            let k = match k {
                EntryKind::Whiteout(_) => "whiteout".to_string(),
                k => format!("{k:?}"),
            };
            (n.as_bytes().to_vec(), k)
        })
        .collect();
    v.sort();
    v
}

fn open_dir(p: &Path) -> std::os::fd::OwnedFd {
    rfs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
}

/// Walk the extracted layer and the index together, comparing everything.
fn compare(f: &Fixture, path: &Path, ino: u32, seen: &mut usize) {
    let fd = open_dir(path);
    let want = read_layer_dir(fd.as_fd()).unwrap();
    let want_opaque = want.opaque || format::has_opaque_xattr(fd.as_fd());
    let got = f.layer.read_dir(ino).unwrap();
    assert_eq!(got.opaque, want_opaque, "{path:?} opacity");
    assert_eq!(f.layer.is_opaque(ino), want_opaque);
    assert_eq!(entries(got), entries(want), "{path:?}");
    for e in std::fs::read_dir(path).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let child = f.layer.lookup(ino, &name).unwrap();
        let st = f.layer.stat(child).unwrap();
        *seen += 1;
        assert_eq!(st.st_mode, m.mode(), "{p:?} mode");
        assert_eq!((st.st_uid, st.st_gid), (m.uid(), m.gid()), "{p:?} owner");
        assert_eq!(st.st_rdev, m.rdev(), "{p:?} rdev");
        assert_eq!(st.st_nlink, m.nlink(), "{p:?} nlink");
        if !m.is_dir() {
            assert_eq!(st.st_size as u64, m.size(), "{p:?} size");
        }
        // Whiteouts are made at extraction time; directories' times change as they fill.
        if !m.is_dir() && !format::is_device_whiteout(&st) {
            assert_eq!(st.st_mtime, m.mtime(), "{p:?} mtime");
        }
        let user_xattrs: Vec<_> = f
            .layer
            .listxattr(child)
            .into_iter()
            .filter(|n| n.as_bytes().starts_with(b"user."))
            .collect();
        for n in &user_xattrs {
            let mut v = vec![0u8; 1024];
            let len = rfs::lgetxattr(&p, n.as_os_str(), &mut v[..]).unwrap();
            assert_eq!(
                f.layer.getxattr(child, n).unwrap(),
                &v[..len],
                "{p:?} {n:?}"
            );
        }
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            assert_eq!(f.layer.readlink(child).unwrap(), t.as_os_str().as_bytes());
        } else if m.is_file() {
            let want = std::fs::read(&p).unwrap();
            // Odd-sized reads that straddle chunk boundaries.
            let mut got = Vec::new();
            loop {
                let piece = f.layer.read(child, got.len() as u64, 999_983).unwrap();
                if piece.is_empty() {
                    break;
                }
                got.extend(piece);
            }
            assert!(got == want, "{p:?} bytes");
            let mut copy = Vec::new();
            assert_eq!(
                f.layer.copy_to(child, &mut copy).unwrap(),
                want.len() as u64
            );
            assert!(copy == want, "{p:?} copy-up bytes");
        } else if m.is_dir() {
            compare(f, &p, child, seen);
        }
    }
}

#[test]
fn indexed_layer_answers_as_the_extracted_layer() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let f = fixture(&Options {
        chunk_size: 1 << 20,
        ..Options::default()
    });
    let mut seen = 0;
    compare(&f, &f.extracted.clone(), f.layer.root(), &mut seen);
    assert!(seen >= 14, "{seen} entries compared");
    // Whiteouts and the opaque directory really are there.
    let gone = f.layer.lookup(f.layer.root(), OsStr::new("gone")).unwrap();
    assert!(format::is_device_whiteout(&f.layer.stat(gone).unwrap()));
    let opq = f.layer.lookup(f.layer.root(), OsStr::new("opq")).unwrap();
    assert!(f.layer.is_opaque(opq));
    assert_eq!(
        f.layer.lookup(f.layer.root(), OsStr::new("nothing")),
        Err(Errno::NOENT)
    );
    let conf = f.layer.index().lookup_path("etc/conf").unwrap();
    assert_eq!(f.layer.lookup(conf, OsStr::new("x")), Err(Errno::NOTDIR));
    assert_eq!(f.layer.read(opq, 0, 10), Err(Errno::ISDIR));
}

#[test]
fn merging_an_indexed_layer_equals_merging_the_extracted_one() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let f = fixture(&Options::default());
    // A directory layer below it, with names the eStargz layer deletes or hides.
    let below = f._dir.path().join("below");
    for d in ["etc", "opq/hidden", "bin"] {
        std::fs::create_dir_all(below.join(d)).unwrap();
    }
    for p in ["gone", "etc/old", "etc/kept", "opq/x", "bin/other"] {
        std::fs::write(below.join(p), p).unwrap();
    }
    for dir in ["", "etc", "opq", "bin"] {
        let merge = |top: LayerDir| {
            let mut b = ListingBuilder::new(false);
            let lower = open_dir(&below.join(dir));
            if b.add_layer(0, top) {
                b.add_layer(1, read_layer_dir(lower.as_fd()).unwrap());
            }
            let mut names: Vec<(Vec<u8>, Vec<u16>)> = b
                .finish()
                .entries
                .iter()
                .map(|(n, e)| (n.as_bytes().to_vec(), e.layers.clone()))
                .collect();
            names.sort();
            names
        };
        let ino = if dir.is_empty() {
            f.layer.root()
        } else {
            f.layer.index().lookup_path(dir).unwrap()
        };
        let extracted = open_dir(&f.extracted.join(dir));
        let mut ext = read_layer_dir(extracted.as_fd()).unwrap();
        // The union cuts the layers at an opaque xattr before merging; the listing builder
        // sees only the marker: give it the same answer the node's layers would.
        ext.opaque |= format::has_opaque_xattr(extracted.as_fd());
        let want = merge(ext);
        assert_eq!(merge(f.layer.read_dir(ino).unwrap()), want, "{dir:?}");
        let names: Vec<&[u8]> = want.iter().map(|(n, _)| &n[..]).collect();
        match dir {
            "" => assert!(!names.contains(&&b"gone"[..])),
            "etc" => assert!(!names.contains(&&b"old"[..]) && names.contains(&&b"kept"[..])),
            "opq" => assert!(!names.contains(&&b"x"[..]) && !names.contains(&&b"hidden"[..])),
            _ => assert!(names.contains(&&b"other"[..])),
        }
    }
}

#[test]
fn faults_give_eio_never_wrong_bytes_and_reads_resume() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let f = fixture(&Options::default());
    let conf = f.layer.index().lookup_path("etc/conf").unwrap();
    let chunk = f.layer.index().node(conf).chunks[0].clone();
    // Source down: EIO, nothing cached; metadata still served from the TOC.
    f.source.down.store(true, Ordering::SeqCst);
    assert_eq!(f.layer.read(conf, 0, 100), Err(Errno::IO));
    assert!(!f.cache.contains(&chunk.digest));
    assert!(f.layer.stat(conf).is_ok());
    // Back: the read resumes and is cached; later reads need no source.
    f.source.down.store(false, Ordering::SeqCst);
    assert_eq!(f.layer.read(conf, 0, 100).unwrap(), b"key=value\n");
    assert!(f.cache.contains(&chunk.digest));
    f.source.down.store(true, Ordering::SeqCst);
    assert_eq!(f.layer.read(conf, 4, 5).unwrap(), b"value");
    f.source.down.store(false, Ordering::SeqCst);

    // A corrupt chunk (a valid gzip member of other bytes) is EIO and never cached.
    let mut bad = f.source.blob.clone();
    let tool = f.layer.index().lookup_path("bin/tool").unwrap();
    let c = f.layer.index().node(tool).chunks[1].clone();
    let mut evil = Vec::new();
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(&mut evil, flate2::Compression::fast());
        gz.write_all(&vec![0u8; c.size as usize]).unwrap();
        gz.finish().unwrap();
    }
    let span = (c.member_end - c.member) as usize;
    assert!(evil.len() <= span, "zeros compress well");
    evil.resize(span, 0);
    bad[c.member as usize..c.member as usize + span].copy_from_slice(&evil);
    let corrupt = Shared(Arc::new(TestSource {
        blob: bad,
        down: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    }));
    let toc_digest = {
        let (_, d, _) = strata::estargz::reader::read_toc(&f.source.clone(), None).unwrap();
        d
    };
    let evil_layer =
        IndexedLayer::open(Box::new(corrupt), &toc_digest, f.cache.clone(), 77).unwrap();
    // The first chunk is good, the second not: the read fails as a whole.
    assert_eq!(
        evil_layer.read(tool, 0, c.file_offset as usize + 10),
        Err(Errno::IO)
    );
    assert_eq!(evil_layer.read(tool, c.file_offset, 10), Err(Errno::IO));
    assert!(!f.cache.contains(&c.digest));
    let mut sink = Vec::new();
    assert_eq!(evil_layer.copy_to(tool, &mut sink), Err(Errno::IO));
    // A TOC digest that does not match: refused at open.
    let other = Sha256Digest::of(b"x");
    assert!(IndexedLayer::open(Box::new(f.source.clone()), &other, f.cache.clone(), 77).is_err());
}

#[test]
fn prefetch_fetches_the_landmarked_files_in_one_request() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let f = fixture(&Options {
        prefetch: vec!["/etc/conf".into(), "/opq/sub/f".into()],
        ..Options::default()
    });
    let before = f.source.reads.load(Ordering::SeqCst);
    let fetched = f.layer.prefetch().unwrap();
    assert!(fetched > 0);
    assert_eq!(f.source.reads.load(Ordering::SeqCst), before + 1);
    f.source.down.store(true, Ordering::SeqCst);
    let conf = f.layer.index().lookup_path("etc/conf").unwrap();
    let sub = f.layer.index().lookup_path("opq/sub/f").unwrap();
    assert_eq!(f.layer.read(conf, 0, 64).unwrap(), b"key=value\n");
    assert_eq!(f.layer.read(sub, 0, 64).unwrap(), b"in an opaque dir");
    let tool = f.layer.index().lookup_path("bin/tool").unwrap();
    assert_eq!(f.layer.read(tool, 0, 1), Err(Errno::IO), "not prefetched");
    f.source.down.store(false, Ordering::SeqCst);
    assert_eq!(f.layer.prefetch().unwrap(), 0, "all cached");
}
