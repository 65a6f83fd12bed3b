//! Lazy layers whose blob is in a real registry (Debian's `docker-registry`): stratafs reads
//! the blob by HTTP Range requests itself (the `lazy=` spec names the registry, repository
//! and blob; credentials come from the auth files), verifies every chunk, and gives `EIO`,
//! never wrong bytes, when the registry is gone or serves a corrupt chunk; reads resume when
//! it is back.
//!
//! Runs as root (trusted xattrs of the lazy layer); skipped otherwise. Every mount is
//! unmounted and every registry killed on drop.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::registry::{Fault, FaultProxy, Registry};
use common::{entries, Backend, Fixture, MountSpec};
use strata::estargz::writer::{convert, Options};
use strata::estargz::{FileSource, LazySpec, RemoteBlob, Sha256Digest};
use strata::image::extract::{unpack, UnpackOptions};

const REPO: &str = "lazy/test";

fn skip() -> bool {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

/// Some small files and one of several chunks.
fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut big = Vec::new();
    for i in 0..300_000u32 {
        big.extend_from_slice(&i.to_le_bytes());
    }
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("d/f{i}"),
                format!("file {i}\n").repeat(100 + i).into_bytes(),
            )
        })
        .chain([("big".to_string(), big)])
        .collect();
    let header = || {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    };
    let mut h = header();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "d", &[][..]).unwrap();
    for (p, data) in &files {
        let mut h = header();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, p, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Put `blob` into `repo` of the registry at `host` (a monolithic upload).
fn upload(host: &str, blob: &[u8]) -> String {
    let digest = format!("sha256:{}", Sha256Digest::of(blob).hex());
    let agent = ureq::Agent::new_with_defaults();
    let resp = agent
        .post(&format!("http://{host}/v2/{REPO}/blobs/uploads/"))
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{host}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = agent
        .put(&format!("{loc}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .send(blob)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "upload of {digest}");
    digest
}

/// Each regular file's bytes under `root`.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// A lazy layer directory for `blob` (in the registry at `api_host`), its spec and cache.
struct Lazy {
    fx: Fixture,
    reference: BTreeMap<PathBuf, Vec<u8>>,
    spec: PathBuf,
    cache: PathBuf,
}

impl Lazy {
    fn new(registry: &Registry, api_host: &str) -> (Lazy, String) {
        let fx = Fixture::new(1);
        let tar = layer_tar();
        let mut blob = Vec::new();
        let opts = Options {
            chunk_size: 256 << 10,
            ..Options::default()
        };
        let w = convert(|| Ok(&tar[..]), &mut blob, &opts).unwrap();
        let digest = upload(&registry.host(), &blob);
        let local = fx.root().join("blob");
        std::fs::write(&local, &blob).unwrap();
        strata::image::lazy::build_dir(
            &FileSource::open(&local).unwrap(),
            &w.toc_digest,
            &fx.lowers[0],
            UnpackOptions::for_current_user(),
        )
        .unwrap();
        // Only the registry has the blob from here on.
        std::fs::remove_file(&local).unwrap();
        let full = fx.root().join("full");
        std::fs::create_dir(&full).unwrap();
        unpack(
            flate2::read::MultiGzDecoder::new(&blob[..]),
            &full,
            "reference",
            UnpackOptions {
                estargz: true,
                ..UnpackOptions::for_current_user()
            },
        )
        .unwrap();
        let reference = contents(&full);
        let cache = fx.root().join("chunks");
        strata::image::private::create(&cache).unwrap();
        let spec = fx.root().join("spec.json");
        let s = LazySpec {
            dir: fx.lowers[0].clone(),
            blob: PathBuf::new(),
            toc: w.toc_digest.to_string(),
            cache: cache.clone(),
            remote: Some(RemoteBlob {
                registry: api_host.to_string(),
                api_host: api_host.to_string(),
                repository: REPO.to_string(),
                digest: digest.clone(),
                size: blob.len() as u64,
                tls_verify: None,
                cert_dir: None,
                auth_file: None,
            }),
        };
        std::fs::write(&spec, serde_json::to_vec(&s).unwrap()).unwrap();
        (
            Lazy {
                fx,
                reference,
                spec,
                cache,
            },
            digest,
        )
    }

    /// Files are filled on first open only: what a test reads is what gets fetched.
    fn mount_spec(&self) -> MountSpec {
        MountSpec::lazy(&self.spec, false)
    }

    /// Files are filled on first open and by the background fetch.
    fn mount_fetching(&self) -> MountSpec {
        MountSpec::lazy(&self.spec, true)
    }

    /// How many files of the lazy directory still wait for their bytes.
    fn marked(&self) -> usize {
        let mut n = 0;
        let mut stack = vec![self.fx.lowers[0].clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file()
                    && ["trusted.overlay.strata.lazy", "user.overlay.strata.lazy"]
                        .iter()
                        .any(|x| rustix::fs::lgetxattr(&p, *x, &mut [0u8; 0][..]).is_ok())
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// Wait (up to 60 s) until no file waits for its bytes.
    fn wait_whole(&self, log: impl Fn() -> String) {
        let t = std::time::Instant::now();
        while self.marked() > 0 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "the background fetch did not finish: {}",
                log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn cached(&self) -> usize {
        std::fs::read_dir(&self.cache).unwrap().count()
    }
}

#[test]
fn a_lazy_layer_reads_its_blob_from_the_registry_by_ranges() {
    if skip() {
        return;
    }
    let dir = common::tempdir();
    let reg = Registry::start(dir.path());
    let proxy = FaultProxy::start(reg.port, Fault::None);
    let (lazy, _) = Lazy::new(&reg, &proxy.host());
    let m = lazy.fx.mount_with(Backend::Stratafs, &lazy.mount_spec());
    let ranges_at_mount = proxy.ranges.lock().unwrap().len();
    assert!(ranges_at_mount > 0, "the TOC is read by range");
    assert_eq!(lazy.cached(), 0, "nothing fetched before a read");
    assert_eq!(contents(&m.path("")), lazy.reference);
    let ranges = proxy.ranges.lock().unwrap().clone();
    // Read in order, the files after the first few come with their neighbours (readahead):
    // fewer requests than files (7), none fetching a byte twice.
    assert!(ranges.len() > ranges_at_mount + 1, "{ranges:?}");
    assert!(ranges.len() < ranges_at_mount + 7, "{ranges:?}");
    let mut s = spans(&ranges);
    s.sort();
    for w in s.windows(2) {
        assert!(w[0].1 <= w[1].0, "{:?} fetched twice: {ranges:?}", w[1]);
    }
    assert!(
        ranges
            .iter()
            .all(|r| r.starts_with("bytes=") && r.contains('-')),
        "{ranges:?}"
    );
    assert!(lazy.cached() >= 7, "chunks kept in the cache");
}

#[test]
fn registry_gone_is_eio_and_reads_resume_when_it_is_back() {
    if skip() {
        return;
    }
    let dir = common::tempdir();
    let mut reg = Registry::start(dir.path());
    let host = reg.host();
    let (lazy, _) = Lazy::new(&reg, &host);
    let m = lazy.fx.mount_with(Backend::Stratafs, &lazy.mount_spec());
    let f0 = PathBuf::from("d/f0");
    assert_eq!(std::fs::read(m.path(&f0)).unwrap(), lazy.reference[&f0]);
    reg.stop();
    let cached = lazy.cached();
    for f in ["d/f1", "big"] {
        let err = std::fs::read(m.path(f)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{f}: {err}");
    }
    assert_eq!(
        lazy.cached(),
        cached,
        "nothing cached while the registry is gone"
    );
    assert!(
        m.daemon_log().contains(&host),
        "the reason is logged: {}",
        m.daemon_log()
    );
    // What was read before still reads.
    assert_eq!(std::fs::read(m.path(&f0)).unwrap(), lazy.reference[&f0]);
    reg.restart();
    assert_eq!(contents(&m.path("")), lazy.reference);
}

#[test]
fn a_corrupt_chunk_from_the_registry_is_eio_and_nothing_is_cached() {
    if skip() {
        return;
    }
    let dir = common::tempdir();
    let reg = Registry::start(dir.path());
    let proxy = FaultProxy::start(reg.port, Fault::None);
    let (lazy, digest) = Lazy::new(&reg, &proxy.host());
    let m = lazy.fx.mount_with(Backend::Stratafs, &lazy.mount_spec());
    proxy.set_fault(Fault::CorruptBlob(digest));
    for f in ["d/f2", "big"] {
        let err = std::fs::read(m.path(f)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{f}: {err}");
    }
    assert_eq!(lazy.cached(), 0, "no corrupt chunk cached");
    assert!(
        m.daemon_log().contains("digest mismatch"),
        "{}",
        m.daemon_log()
    );
    proxy.set_fault(Fault::None);
    assert_eq!(contents(&m.path("")), lazy.reference);
}

/// `strata` in another store of the same test.
fn in_store(env: &common::cli::StrataEnv, store: &str, args: &[&str]) -> String {
    let o = env.run_in(&env.path(store), None, args, &[], None);
    assert!(
        o.status.success(),
        "strata {args:?} in {store} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn push_estargz_pull_lazy_run_and_every_file_matches_a_full_pull() {
    if skip() {
        return;
    }
    let env = common::cli::StrataEnv::new("strata-lazyreg-");
    let mut reg = Registry::start(env.dir.path());
    let ctx = env.busybox_context("ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN echo hello > /greeting && mkdir -p /data && head -c 3000000 /bin/busybox > /data/blob \
         && mkdir -p /etc && echo root:x:0:0::/:/bin/sh > /etc/passwd \
         && echo app:x:1234:4321::/:/bin/sh >> /etc/passwd\n\
         USER app\nCMD [\"/bin/sh\", \"-c\", \"cat /greeting; id -u; id -g\"]\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "app:1", ctx.to_str().unwrap()]);
    let name = format!("{}/app:1", reg.host());
    env.ok(&["push", "-q", "--estargz", "app:1", &name]);

    // Lazily: the manifest, config and TOCs only; no layer blob, no extracted layer.
    let err = {
        let o = env.run_in(
            &env.path("lazy"),
            None,
            &["pull", "--lazy", &name],
            &[],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(err.contains("lazy (TOC only)"), "{err}");
    let lazy_store = env.path("lazy");
    assert_eq!(
        entries(&lazy_store.join("layers/sha256")),
        Vec::<String>::new()
    );
    let listed = in_store(&env, "lazy", &["images"]);
    assert!(listed.contains("(lazy: "), "{listed}");

    // It runs (USER app resolved from the lazy layer's /etc/passwd), the mount fetching
    // what the container reads.
    assert_eq!(
        in_store(&env, "lazy", &["run", "--rm", &name]),
        "hello\n1234\n4321\n"
    );

    // Every file's bytes, through a lazy container and a fully pulled one.
    in_store(&env, "full", &["pull", "-q", &name]);
    // (Not the files strata writes per container: /etc/hosts names the container.)
    let sums = "find / -xdev -type f ! -path /etc/hosts ! -path /etc/hostname \
                ! -path /etc/resolv.conf | sort | xargs md5sum";
    let full = in_store(
        &env,
        "full",
        &["run", "--rm", "-u", "0", &name, "sh", "-c", sums],
    );
    let lazy = in_store(
        &env,
        "lazy",
        &["run", "--rm", "-u", "0", &name, "sh", "-c", sums],
    );
    assert!(full.contains("/data/blob"), "{full}");
    assert_eq!(lazy, full);
    let listed = in_store(&env, "lazy", &["images"]);
    assert!(listed.contains("100%)"), "all read, all local: {listed}");
    // Complete: an ordinary layer now, which runs without the registry.
    reg.stop();
    assert_eq!(
        in_store(&env, "lazy", &["run", "--rm", &name]),
        "hello\n1234\n4321\n"
    );
    drop(reg);
    env.assert_no_leaks();
}

/// The byte ranges of `Range: bytes=A-B` headers, as `(A, B + 1)`.
fn spans(ranges: &[String]) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .map(|r| {
            let (a, b) = r.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
            (a.parse().unwrap(), b.parse::<u64>().unwrap() + 1)
        })
        .collect()
}

#[test]
fn the_background_fetch_streams_the_blob_and_resumes_where_it_was_cut() {
    if skip() {
        return;
    }
    let dir = common::tempdir();
    let reg = Registry::start(dir.path());
    let proxy = FaultProxy::start(reg.port, Fault::None);
    let (lazy, digest) = Lazy::new(&reg, &proxy.host());
    // The first long read (the background stream) is cut half way.
    proxy.set_fault(Fault::DropLongRead(digest, 64 << 10, 1));
    assert!(lazy.marked() >= 7);
    let m = lazy
        .fx
        .mount_with(Backend::Stratafs, &lazy.mount_fetching());
    lazy.wait_whole(|| m.daemon_log());
    assert!(
        m.daemon_log().contains("trying again"),
        "{}",
        m.daemon_log()
    );
    let ranges = proxy.ranges.lock().unwrap().clone();
    let s = spans(&ranges);
    // The footer and the TOC at mount, then the file data streamed in order (in small
    // requests during the first second after the mount, when the stream yields to openers),
    // one request cut, and one more from the first file the cut one did not finish, to the
    // same end. Nothing before the cut was fetched twice.
    assert!(s.len() >= 4, "{ranges:?}");
    let data = &s[2..];
    let (cut, rest) = (data[data.len() - 2], data[data.len() - 1]);
    assert_eq!(rest.1, cut.1, "{ranges:?}");
    assert!(
        rest.0 >= cut.0,
        "resumed at or past where it was cut: {ranges:?}"
    );
    assert!(
        data[..data.len() - 1].windows(2).all(|w| w[0].1 <= w[1].0),
        "in blob order, no byte twice: {ranges:?}"
    );
    let fetched = ranges.len();
    assert_eq!(contents(&m.path("")), lazy.reference);
    assert_eq!(
        proxy.ranges.lock().unwrap().len(),
        fetched,
        "the files were whole: nothing more fetched"
    );
}

#[test]
fn openers_racing_the_background_fetch_get_the_right_bytes_and_no_byte_is_fetched_twice() {
    if skip() {
        return;
    }
    let dir = common::tempdir();
    let reg = Registry::start(dir.path());
    let proxy = FaultProxy::start(reg.port, Fault::None);
    let (lazy, _) = Lazy::new(&reg, &proxy.host());
    for round in 0..3 {
        let m = lazy
            .fx
            .mount_with(Backend::Stratafs, &lazy.mount_fetching());
        // Every file opened at once, from its own thread, while the stream runs.
        std::thread::scope(|sc| {
            let hs: Vec<_> = lazy
                .reference
                .iter()
                .map(|(p, want)| {
                    let path = m.path(p);
                    sc.spawn(move || {
                        assert_eq!(&std::fs::read(&path).unwrap(), want, "{p:?}");
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
        lazy.wait_whole(|| m.daemon_log());
        let ranges = std::mem::take(&mut *proxy.ranges.lock().unwrap());
        let mut s = spans(&ranges);
        s.sort();
        if round == 0 {
            for w in s.windows(2) {
                assert!(w[0].1 <= w[1].0, "{:?} fetched twice: {ranges:?}", w[1]);
            }
        } else {
            // Whole before the mount: only the footer and the TOC are read.
            assert_eq!(s.len(), 2, "{ranges:?}");
        }
        assert_eq!(contents(&m.path("")), lazy.reference);
        drop(m);
    }
}
