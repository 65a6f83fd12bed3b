//! The request transports: FUSE over io_uring (`uring=on|auto`) and /dev/fuse (`uring=off`).
//! Each mounts, serves, counts its requests (`stats=`), survives an unmount while clients are
//! busy, and lets its clients go (ENOTCONN, no hang) when the daemon is killed mid-request.
//! The operation suites run over both transports too: `scripts/test.sh` runs them again with
//! `STRATAFS_TEST_OPTIONS=uring=off` (the default, `auto`, is io_uring where the kernel has it).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use strata::union::stats::StatsSnapshot;

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether FUSE over io_uring can be used here: the kernel must have it (the parameter
/// exists); as root, switch it on (scripts/test.sh does too). Prints why not.
fn uring_available() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root");
        return false;
    }
    match fs::read_to_string(ENABLE_URING) {
        Err(_) => {
            eprintln!("skipped: this kernel has no FUSE over io_uring ({ENABLE_URING} missing)");
            false
        }
        Ok(v) if v.trim() == "Y" || v.trim() == "1" => true,
        Ok(_) => fs::write(ENABLE_URING, "1").is_ok(),
    }
}

fn mount_with<'a>(fx: &'a Fixture, extra: &[&str]) -> Mount<'a> {
    fx.mount_with(
        Backend::Stratafs,
        &MountSpec {
            writable: true,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        },
    )
}

fn fixture() -> Fixture {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("a/f", b"lower data")
        .file("a/g", b"g")
        .dir("d");
    fx
}

/// Some of every kind of request: lookups, reads, creates, writes, renames, unlinks, xattrs.
fn exercise(r: &Path) {
    assert_eq!(fs::read(r.join("a/f")).unwrap(), b"lower data");
    fs::write(r.join("a/f"), b"changed").unwrap();
    assert_eq!(fs::read(r.join("a/f")).unwrap(), b"changed");
    for i in 0..50 {
        fs::write(r.join(format!("d/n{i}")), format!("{i}")).unwrap();
    }
    fs::rename(r.join("d/n0"), r.join("d/renamed")).unwrap();
    fs::remove_file(r.join("a/g")).unwrap();
    xattr::set(&r.join("d/n1"), "user.k", b"v");
    assert_eq!(
        xattr::get(&r.join("d/n1"), "user.k").as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(fs::read_dir(r.join("d")).unwrap().count(), 50);
    assert!(!r.join("a/g").exists());
}

mod xattr {
    use std::path::Path;

    pub fn set(p: &Path, name: &str, value: &[u8]) {
        rustix::fs::setxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
    }

    pub fn get(p: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        let n = rustix::fs::getxattr(p, name, &mut buf[..]).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

/// Signals the daemon and waits for the counts it writes.
fn counts(m: &Mount<'_>, path: &Path) -> StatsSnapshot {
    let before = StatsSnapshot::read(path).map(|s| s.generation).unwrap_or(0);
    kill_pid(m.daemon_pid().unwrap(), rustix::process::Signal::USR1);
    let start = Instant::now();
    loop {
        if let Ok(s) = StatsSnapshot::read(path) {
            if s.generation > before {
                return s;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no counts in {path:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn serves_and_counts(uring: &str, expect: &str) {
    let fx = fixture();
    let stats = fx.root().join("stats.json");
    let opt = format!("stats={}", stats.display());
    let m = mount_with(&fx, &[&format!("uring={uring}"), &opt]);
    m.with_timeout(DEADLINE, |r| exercise(&r));
    let snap = counts(&m, &stats);
    assert!(
        snap.transport.starts_with(expect),
        "transport {:?}, expected {expect}",
        snap.transport
    );
    assert!(snap.requests["CREATE"] >= 50, "{snap:?}");
    assert!(snap.requests["LOOKUP"] >= 1, "{snap:?}");
    assert_eq!(snap.total, snap.requests.values().sum::<u64>());
    let mut m = m;
    assert!(unmount(&fx.mnt));
    let status = m
        .wait_daemon_exit(10)
        .expect("the daemon exits after unmount");
    assert!(status.success(), "{status}: {}", m.daemon_log());
    // The daemon writes its counts once more on the way out.
    let last = StatsSnapshot::read(&stats).unwrap();
    assert!(last.generation > snap.generation);
    drop(m);
    assert_eq!(fs::read(fx.upper.join("a/f")).unwrap(), b"changed");
}

#[test]
fn io_uring_serves_a_mount_and_says_so() {
    if !uring_available() {
        return;
    }
    serves_and_counts("on", "io_uring");
}

#[test]
fn dev_fuse_serves_a_mount_with_uring_off() {
    need_root!();
    serves_and_counts("off", "/dev/fuse");
}

#[test]
fn auto_picks_io_uring_where_the_kernel_offers_it() {
    if !uring_available() {
        return;
    }
    let fx = fixture();
    let stats = fx.root().join("stats.json");
    let m = mount_with(&fx, &[&format!("stats={}", stats.display())]);
    m.with_timeout(DEADLINE, |r| {
        fs::metadata(r.join("a/f")).unwrap();
    });
    assert!(counts(&m, &stats).transport.starts_with("io_uring"));
}

/// Clients hammering the mount from several threads (so both CPUs' queues have requests in
/// flight); returns their stop flag and handles, each ending with the last error it saw. A
/// client stops at ENOTCONN (the connection is gone) or when told to.
fn busy_clients(
    root: PathBuf,
    n: usize,
) -> (Arc<AtomicBool>, Vec<thread::JoinHandle<Option<i32>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..n)
        .map(|i| {
            let (root, stop) = (root.clone(), stop.clone());
            thread::spawn(move || {
                let mut last = None;
                let mut buf = [0u8; 64];
                let f = root.join("a/f");
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let r = match k % 3 {
                        0 => rustix::fs::getxattr(&f, "user.none", &mut buf[..]).map(drop),
                        1 => rustix::fs::stat(root.join(format!("d/c{i}-{k}"))).map(drop),
                        _ => fs::write(root.join(format!("d/w{i}")), b"x")
                            .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap()),
                    };
                    match r {
                        Ok(()) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOENT) => {}
                        Err(e) => {
                            last = Some(e.raw_os_error());
                            // Requests in flight when the connection dies end ECONNABORTED,
                            // later ones ENOTCONN: wait for that.
                            if e == rustix::io::Errno::NOTCONN {
                                return last;
                            }
                        }
                    }
                }
                last
            })
        })
        .collect();
    (stop, handles)
}

fn join_all(handles: Vec<thread::JoinHandle<Option<i32>>>, secs: u64) -> Vec<Option<i32>> {
    run_with_deadline(secs, move || {
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
    .expect("clients hung after the daemon went away")
}

fn unmount_while_busy(uring: &str) {
    let fx = fixture();
    let mut m = mount_with(&fx, &[&format!("uring={uring}")]);
    let (stop, clients) = busy_clients(fx.mnt.clone(), 4);
    thread::sleep(Duration::from_millis(300));
    // Busy: a plain unmount may be refused, a lazy one detaches at once.
    let (ok, out) = run(Command::new("umount").arg("-l").arg(&fx.mnt));
    assert!(ok, "umount -l: {out}");
    stop.store(true, Ordering::Relaxed);
    join_all(clients, 20);
    let status = m.wait_daemon_exit(20);
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon did not exit cleanly after a busy unmount: {status:?}\n{}",
        m.daemon_log()
    );
}

#[test]
fn unmount_while_busy_over_io_uring() {
    if !uring_available() {
        return;
    }
    unmount_while_busy("on");
}

#[test]
fn unmount_while_busy_over_dev_fuse() {
    need_root!();
    unmount_while_busy("off");
}

fn daemon_killed_mid_request(uring: &str) {
    let fx = fixture();
    let mut m = mount_with(&fx, &[&format!("uring={uring}")]);
    let (stop, clients) = busy_clients(fx.mnt.clone(), 4);
    thread::sleep(Duration::from_millis(300));
    kill_pid(m.daemon_pid().unwrap(), rustix::process::Signal::KILL);
    let results = join_all(clients, 20);
    stop.store(true, Ordering::Relaxed);
    for r in &results {
        assert_eq!(
            *r,
            Some(libc::ENOTCONN),
            "every client ends with ENOTCONN once the daemon is gone: {results:?}"
        );
    }
    assert!(m.wait_daemon_exit(10).is_some());
    // The dead mount still answers ENOTCONN, and goes away.
    let err = fs::metadata(fx.mnt.join("a/f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    assert!(unmount(&fx.mnt));
}

#[test]
fn daemon_killed_mid_request_over_io_uring() {
    if !uring_available() {
        return;
    }
    daemon_killed_mid_request("on");
}

#[test]
fn daemon_killed_mid_request_over_dev_fuse() {
    need_root!();
    daemon_killed_mid_request("off");
}

/// The fuser threads of the daemon that read /dev/fuse (the ring threads are `fuser-ring-*`).
fn dev_fuse_threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("fuser-") && !c.starts_with("fuser-ring"))
        .count()
}

/// Over io_uring, /dev/fuse carries only FORGET and INTERRUPT: one thread reads it, and it
/// waits a millisecond after each FORGET so that the kernel hands the next ones over in one
/// batch instead of waking it for every removed file.
#[test]
fn io_uring_reads_forgets_in_batches() {
    if !uring_available() {
        return;
    }
    let fx = fixture();
    let stats = fx.root().join("stats.json");
    let opt = format!("stats={}", stats.display());
    let m = mount_with(&fx, &["uring=on", &opt]);
    const FILES: usize = 2000;
    m.with_timeout(DEADLINE, |r| {
        fs::create_dir(r.join("many")).unwrap();
        for i in 0..FILES {
            fs::write(r.join(format!("many/f{i}")), b"x").unwrap();
        }
    });
    // (Counted once requests were served: the threads start after the mount is visible.)
    assert_eq!(dev_fuse_threads(m.daemon_pid().unwrap()), 1);
    let start = Instant::now();
    let before = counts(&m, &stats);
    m.with_timeout(DEADLINE, |r| fs::remove_dir_all(r.join("many")).unwrap());
    let after = counts(&m, &stats);
    let elapsed = start.elapsed();
    let n = |s: &StatsSnapshot, op: &str| s.requests.get(op).copied().unwrap_or(0);
    let reads = n(&after, "FORGET") + n(&after, "BATCH_FORGET")
        - n(&before, "FORGET")
        - n(&before, "BATCH_FORGET");
    assert!(n(&after, "UNLINK") - n(&before, "UNLINK") >= FILES as u64);
    // At most one read of forgets per millisecond (plus the one the interval may start in).
    let bound = elapsed.as_millis() as u64 + 1;
    assert!(
        reads <= bound,
        "{reads} reads of forgets in {elapsed:?} (at most {bound}): {after:?}"
    );
    assert!(
        reads >= 1,
        "the unlinked files' inodes are forgotten: {after:?}"
    );
}

/// Requests are dispatched from the ring entry's own memory: a large payload (1 MiB writes, a
/// 3,000-byte xattr value) is read where the kernel put it, and a reply that would overwrite a
/// payload still borrowed by its request (an xattr value asked for by name) is held back and
/// written after the dispatch. Without passthrough, reads and writes go through the daemon.
#[test]
fn io_uring_serves_large_payloads_in_place() {
    if !uring_available() {
        return;
    }
    let fx = fixture();
    let stats = fx.root().join("stats.json");
    let opt = format!("stats={}", stats.display());
    let m = mount_with(&fx, &["uring=on", "passthrough=off", &opt]);
    m.with_timeout(DEADLINE, |r| {
        use std::io::Write;
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = fs::File::create(r.join("d/big")).unwrap();
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        assert!(fs::read(r.join("d/big")).unwrap() == data);
        let value: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
        xattr::set(&r.join("d/big"), "user.large", &value);
        assert_eq!(xattr::get(&r.join("d/big"), "user.large"), Some(value));
        // Names in the payload, entries in the reply.
        for i in 0..20 {
            fs::create_dir(r.join(format!("d/dir{i}"))).unwrap();
            assert!(fs::metadata(r.join(format!("d/dir{i}"))).unwrap().is_dir());
        }
    });
    let snap = counts(&m, &stats);
    assert!(snap.transport.starts_with("io_uring"), "{snap:?}");
    assert!(
        snap.requests.get("WRITE").copied().unwrap_or(0) >= 4,
        "{snap:?}"
    );
    drop(m);
    let upper = fs::read(fx.upper.join("d/big")).unwrap();
    assert_eq!(upper.len(), 4 << 20);
}
