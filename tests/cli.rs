//! The `stratafs` command line: help and version, clear refusals of bad setups, read-only
//! mounts, and the daemon's life cycle (returns once serving, exits on unmount, unmounts on
//! SIGTERM/SIGINT).

mod common;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_stratafs");

/// Unmounts `mnt` and kills any stratafs daemon serving it, on drop; for tests where a
/// daemon may have gone to the background.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = unmount(&self.0);
        for pid in stratafs_pids_for(&self.0) {
            kill_pid(pid, Signal::KILL);
        }
    }
}

/// Runs stratafs with `args` (in the background mode unless `-f` is given), killing it after
/// `secs`.
fn stratafs(args: &[&str], secs: u64) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stratafs");
    let pid = child.id();
    match run_with_deadline(secs, move || child.wait_with_output()) {
        Some(out) => out.unwrap(),
        None => {
            kill_pid(pid, Signal::KILL);
            panic!("TIMEOUT: stratafs {args:?} did not return within {secs}s");
        }
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_exits_zero_and_describes_the_options() {
    let o = stratafs(&["--help"], 10);
    let (out, _) = text(&o);
    assert!(o.status.success(), "--help failed: {o:?}");
    for word in ["lowerdir", "upperdir", "workdir", "-f"] {
        assert!(out.contains(word), "--help does not mention {word}:\n{out}");
    }
}

#[test]
fn version_exits_zero_and_prints_the_version() {
    let o = stratafs(&["--version"], 10);
    let (out, _) = text(&o);
    assert!(o.status.success(), "--version failed: {o:?}");
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {out:?}"
    );
}

#[test]
fn no_arguments_is_refused() {
    let o = stratafs(&[], 10);
    assert!(!o.status.success());
    assert!(!text(&o).1.trim().is_empty(), "no message on stderr");
}

/// Asserts stratafs refuses the setup: non-zero exit, a message on stderr naming each of
/// `mentions` (case-insensitive), and nothing mounted.
#[track_caller]
fn refused(_fx: &Fixture, opts: &str, mnt: &Path, mentions: &[&str]) {
    let _c = Cleanup(mnt.to_path_buf());
    let o = stratafs(&["-o", opts, s(mnt)], 20);
    let (_, err) = text(&o);
    let mounted = mounted_type(mnt).is_some();
    assert!(!mounted, "stratafs mounted despite a bad setup ({opts})");
    assert!(
        !o.status.success(),
        "stratafs exited 0 for a bad setup ({opts})"
    );
    assert!(!err.trim().is_empty(), "no message on stderr for {opts}");
    let lower = err.to_lowercase();
    for m in mentions {
        assert!(
            lower.contains(&m.to_lowercase()),
            "message for {opts} does not name {m:?}:\n{err}"
        );
    }
}

fn opts(lower: &str, upper: Option<&Path>, work: Option<&Path>) -> String {
    let mut o = format!("lowerdir={lower}");
    if let Some(u) = upper {
        o += &format!(",upperdir={}", u.display());
    }
    if let Some(w) = work {
        o += &format!(",workdir={}", w.display());
    }
    o
}

#[test]
fn missing_or_non_directory_lowerdir_is_refused() {
    let fx = Fixture::new(2);
    let missing = fx.root().join("no-such-lower");
    let file = fx.root().join("a-file");
    fs::write(&file, b"x").unwrap();
    let l0 = s(&fx.lowers[0]).to_string();
    for bad in [&missing, &file] {
        refused(&fx, &opts(s(bad), None, None), &fx.mnt, &[s(bad)]);
        // A bad layer anywhere in the list, also with an upper.
        let list = format!("{l0}:{}", s(bad));
        refused(
            &fx,
            &opts(&list, Some(&fx.upper), Some(&fx.work)),
            &fx.mnt,
            &[s(bad)],
        );
    }
}

#[test]
fn missing_lowerdir_option_is_refused() {
    let fx = Fixture::new(1);
    let o = format!("upperdir={},workdir={}", s(&fx.upper), s(&fx.work));
    refused(&fx, &o, &fx.mnt, &["lowerdir"]);
}

#[test]
fn missing_or_non_directory_upperdir_is_refused() {
    let fx = Fixture::new(1);
    let missing = fx.root().join("no-such-upper");
    let file = fx.root().join("upper-file");
    fs::write(&file, b"x").unwrap();
    let l = s(&fx.lowers[0]).to_string();
    for bad in [&missing, &file] {
        refused(
            &fx,
            &opts(&l, Some(bad), Some(&fx.work)),
            &fx.mnt,
            &[s(bad)],
        );
    }
}

#[test]
fn missing_or_non_directory_workdir_is_refused() {
    let fx = Fixture::new(1);
    let missing = fx.root().join("no-such-work");
    let file = fx.root().join("work-file");
    fs::write(&file, b"x").unwrap();
    let l = s(&fx.lowers[0]).to_string();
    for bad in [&missing, &file] {
        refused(
            &fx,
            &opts(&l, Some(&fx.upper), Some(bad)),
            &fx.mnt,
            &[s(bad)],
        );
    }
}

#[test]
fn upperdir_without_workdir_is_refused() {
    let fx = Fixture::new(1);
    let l = s(&fx.lowers[0]).to_string();
    refused(&fx, &opts(&l, Some(&fx.upper), None), &fx.mnt, &["workdir"]);
}

#[test]
fn upper_and_work_on_different_filesystems_is_refused() {
    let fx = Fixture::new(1);
    let t = fx.root().join("tmpfs");
    fs::create_dir(&t).unwrap();
    let (ok, out) = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&t));
    assert!(ok, "mount tmpfs: {out}");
    let _t = Cleanup(t.clone());
    let work = t.join("work");
    fs::create_dir(&work).unwrap();
    let l = s(&fx.lowers[0]).to_string();
    refused(
        &fx,
        &opts(&l, Some(&fx.upper), Some(&work)),
        &fx.mnt,
        &["workdir"],
    );
}

#[test]
fn workdir_inside_upperdir_is_refused() {
    let fx = Fixture::new(1);
    let work = fx.upper.join("work");
    fs::create_dir(&work).unwrap();
    let l = s(&fx.lowers[0]).to_string();
    refused(
        &fx,
        &opts(&l, Some(&fx.upper), Some(&work)),
        &fx.mnt,
        &["workdir"],
    );
}

/// Mounts kernel overlayfs with `opts` on `mnt`: `Err(errno)` if it refuses, else what a
/// stat of `MNT/in` gave (`None` if it succeeded); the mount is undone at once.
fn kernel_mount(opts: &str, mnt: &Path) -> Result<Option<i32>, i32> {
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    let data = std::ffi::CString::new(opts).unwrap();
    mount(
        "overlay",
        mnt,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| e.raw_os_error())?;
    let stat = fs::metadata(mnt.join("in"))
        .err()
        .and_then(|e| e.raw_os_error());
    let _ = unmount(mnt, UnmountFlags::empty());
    Ok(stat)
}

fn errno_symbol(e: i32) -> &'static str {
    match e {
        libc::ELOOP => "ELOOP",
        libc::EINVAL => "EINVAL",
        _ => "an errno this test does not name",
    }
}

/// Each layout of overlapping layers is refused exactly when kernel overlayfs refuses it,
/// with a message that names the layers and the kernel's errno; the layouts the kernel
/// mounts, stratafs mounts.
#[test]
fn overlapping_layers_are_refused_as_kernel_overlayfs_refuses_them() {
    need_root!();
    // (case, lowerdir, upperdir, workdir): paths relative to a fresh fixture's root, which
    // has l0, l1, upper, work and the subdirectories below.
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        ("upperdir is a lowerdir", "l0", Some("l0"), Some("work")),
        (
            "lowerdir inside upperdir",
            "upper/in",
            Some("upper"),
            Some("work"),
        ),
        ("workdir is a lowerdir", "work", Some("upper"), Some("work")),
        (
            "lowerdir inside workdir",
            "work/in",
            Some("upper"),
            Some("work"),
        ),
        (
            "lowerdir is the workdir's work/",
            "work/work",
            Some("upper"),
            Some("work"),
        ),
        ("a lowerdir twice", "l0:l0", Some("upper"), Some("work")),
        (
            "lowerdir inside a lower lowerdir",
            "l0/in:l0",
            Some("upper"),
            Some("work"),
        ),
        (
            "lowerdir inside a higher lowerdir",
            "l0:l0/in",
            Some("upper"),
            Some("work"),
        ),
        (
            "read-only: lowerdir inside lowerdir",
            "l0:l0/in",
            None,
            None,
        ),
        (
            "workdir is the upperdir",
            "l0",
            Some("upper"),
            Some("upper"),
        ),
        (
            "workdir inside upperdir",
            "l0",
            Some("upper"),
            Some("upper/in"),
        ),
        (
            "upperdir inside workdir",
            "l0",
            Some("work/in"),
            Some("work"),
        ),
        (
            "upperdir inside a lowerdir",
            "l0",
            Some("l0/in"),
            Some("work"),
        ),
        (
            "workdir inside a lowerdir",
            "l0",
            Some("upper"),
            Some("l0/in"),
        ),
        ("separate layers", "l0:l1", Some("upper"), Some("work")),
    ];
    let mut loops = 0;
    for (case, lower, upper, work) in cases {
        let fx = Fixture::new(2);
        for d in ["l0/in", "upper/in", "work/in", "work/work"] {
            fs::create_dir_all(fx.root().join(d)).unwrap();
        }
        fs::write(fx.root().join("work/work/keep"), b"lower data").unwrap();
        let abs = |rel: &str| -> String {
            rel.split(':')
                .map(|r| s(&fx.root().join(r)).to_string())
                .collect::<Vec<_>>()
                .join(":")
        };
        let mut o = format!("lowerdir={}", abs(lower));
        if let (Some(u), Some(w)) = (upper, work) {
            o += &format!(",upperdir={},workdir={}", abs(u), abs(w));
        }
        let kernel = kernel_mount(&o, &fx.mnt);
        // The kernel made work/work afresh when it mounted; put the marker back.
        fs::create_dir_all(fx.root().join("work/work")).unwrap();
        fs::write(fx.root().join("work/work/keep"), b"lower data").unwrap();
        match kernel {
            Err(e) => {
                refused(&fx, &o, &fx.mnt, &[errno_symbol(e), "dir '"]);
                assert_eq!(
                    fs::read(fx.root().join("work/work/keep")).ok().as_deref(),
                    Some(&b"lower data"[..]),
                    "{case}: a refused mount changed a layer"
                );
            }
            Ok(kernel_stat) => {
                // Mounted: a lookup that reaches the upper or work directory through a lower
                // layer fails as the kernel's does (ELOOP).
                let _c = Cleanup(fx.mnt.clone());
                let out = stratafs(&["-o", &o, s(&fx.mnt)], 20);
                assert!(
                    out.status.success(),
                    "{case}: kernel overlayfs mounts it, stratafs refused: {}",
                    text(&out).1
                );
                let p = fx.mnt.join("in");
                let ours = with_timeout(DEADLINE, "stat", move || {
                    fs::metadata(p).err().and_then(|e| e.raw_os_error())
                });
                assert_eq!(ours, kernel_stat, "{case}: stat MNT/in");
                loops += usize::from(ours == Some(libc::ELOOP));
            }
        }
    }
    assert_eq!(
        loops, 2,
        "the upper and the work dir inside a lower layer answer ELOOP"
    );
}

#[test]
fn threaded_zero_is_refused_naming_the_option() {
    let fx = Fixture::new(1);
    let base = opts(s(&fx.lowers[0]), Some(&fx.upper), Some(&fx.work));
    for bad in ["threaded=0", "threaded=100000"] {
        refused(
            &fx,
            &format!("{base},{bad}"),
            &fx.mnt,
            &["threaded", "worker threads"],
        );
    }
    let _c = Cleanup(fx.mnt.clone());
    let o = stratafs(&["-o", &format!("{base},threaded=1"), s(&fx.mnt)], 20);
    assert!(o.status.success(), "threaded=1 refused: {}", text(&o).1);
}

#[test]
fn missing_mountpoint_is_refused() {
    let fx = Fixture::new(1);
    let mnt = fx.root().join("no-such-mountpoint");
    let l = s(&fx.lowers[0]).to_string();
    refused(
        &fx,
        &opts(&l, Some(&fx.upper), Some(&fx.work)),
        &mnt,
        &[s(&mnt)],
    );
}

#[test]
fn malformed_options_are_refused_naming_the_option() {
    let fx = Fixture::new(1);
    let base = opts(s(&fx.lowers[0]), Some(&fx.upper), Some(&fx.work));
    refused(&fx, "lowerdir=", &fx.mnt, &["lowerdir"]);
    for (bad, name) in [
        ("uidmapping=notanumber", "uidmapping"),
        ("gidmapping=0:1", "gidmapping"),
        ("timeout=soon", "timeout"),
        ("threaded=many", "threaded"),
    ] {
        refused(&fx, &format!("{base},{bad}"), &fx.mnt, &[name]);
    }
}

#[test]
fn fuse_overlayfs_option_noacl_is_accepted() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let spec = MountSpec {
        writable: true,
        extra: vec!["noacl".into()],
    };
    let m = fx.mount_with(Backend::Stratafs, &spec);
    m.with_timeout(DEADLINE, |r| assert_eq!(read(&r.join("f")), b"x"));
}

both_backends!(
    read_only_mount_refuses_writes_with_erofs,
    read_only_mount_is_flagged_read_only,
);

fn read_only_mount_refuses_writes_with_erofs(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("f", b"top").dir("d");
    fx.lower(1).file("g", b"bottom");
    let spec = MountSpec {
        writable: false,
        extra: vec![],
    };
    let m = fx.mount_with(b, &spec);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(read(&r.join("f")), b"top");
        assert_eq!(read(&r.join("g")), b"bottom");
        let rofs = libc::EROFS;
        assert_errno("create", fs::write(r.join("new"), b"x"), rofs);
        assert_errno(
            "open for write",
            fs::OpenOptions::new().write(true).open(r.join("f")),
            rofs,
        );
        assert_errno(
            "O_TRUNC",
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(0)
                .open(r.join("g")),
            rofs,
        );
        assert_errno("mkdir", fs::create_dir(r.join("d/x")), rofs);
        assert_errno("unlink", fs::remove_file(r.join("f")), rofs);
        assert_errno("rmdir", fs::remove_dir(r.join("d")), rofs);
        assert_errno("rename", fs::rename(r.join("f"), r.join("f2")), rofs);
        assert_errno(
            "symlink",
            std::os::unix::fs::symlink("f", r.join("s")),
            rofs,
        );
        assert_errno("link", fs::hard_link(r.join("f"), r.join("h")), rofs);
        use std::os::unix::fs::PermissionsExt;
        assert_errno(
            "chmod",
            fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o600)),
            rofs,
        );
        assert_rerrno(
            "access W_OK",
            rustix::fs::access(r.join("f"), rustix::fs::Access::WRITE_OK),
            rofs,
        );
        rustix::fs::access(r.join("f"), rustix::fs::Access::READ_OK).unwrap();
        assert_rerrno(
            "setxattr",
            rustix::fs::lsetxattr(r.join("f"), "user.x", b"1", rustix::fs::XattrFlags::empty()),
            rofs,
        );
    });
    drop(m);
    assert!(names(&fx.upper).is_empty());
}

fn read_only_mount_is_flagged_read_only(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("f", b"top");
    let spec = MountSpec {
        writable: false,
        extra: vec![],
    };
    let m = fx.mount_with(b, &spec);
    m.with_timeout(DEADLINE, |r| {
        let flags = rustix::fs::statvfs(&r).unwrap().f_flag;
        assert!(
            flags.contains(rustix::fs::StatVfsMountFlags::RDONLY),
            "statvfs f_flag lacks ST_RDONLY: {flags:?}"
        );
    });
}

#[test]
fn background_mode_returns_once_serving_and_fusermount_unmount_stops_it() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"served");
    let _c = Cleanup(fx.mnt.clone());
    let o = stratafs(
        &[
            "-o",
            &opts(s(&fx.lowers[0]), Some(&fx.upper), Some(&fx.work)),
            s(&fx.mnt),
        ],
        20,
    );
    assert!(o.status.success(), "stratafs failed: {o:?}");
    // No sleep: the mount must serve as soon as the command has returned.
    assert!(
        mounted_type(&fx.mnt).is_some_and(|t| t.starts_with("fuse")),
        "not mounted when the command returned"
    );
    let pids = stratafs_pids_for(&fx.mnt);
    assert_eq!(pids.len(), 1, "expected one daemon, found {pids:?}");
    let mnt = fx.mnt.clone();
    let got = with_timeout(
        DEADLINE,
        "reading through the background daemon",
        move || read(&mnt.join("f")),
    );
    assert_eq!(got, b"served");
    let (ok, out) = run(Command::new("fusermount3").arg("-u").arg(&fx.mnt));
    assert!(ok, "fusermount3 -u: {out}");
    let start = Instant::now();
    while pid_alive(pids[0]) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "daemon {} still running 5s after fusermount3 -u",
            pids[0]
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Mounts in the foreground, applies `stop` to it, and checks the daemon exits by itself,
/// successfully, with the mount gone.
fn stops_cleanly(what: &str, stop: impl FnOnce(&Path, u32)) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let mut m = fx.mount(Backend::Stratafs);
    m.with_timeout(DEADLINE, |r| assert_eq!(read(&r.join("f")), b"x"));
    let pid = m.daemon_pid().unwrap();
    stop(&fx.mnt, pid);
    let status = m.wait_daemon_exit(5);
    let log = m.daemon_log();
    let status = status.unwrap_or_else(|| panic!("daemon still running 5s after {what}:\n{log}"));
    assert!(
        status.success(),
        "daemon exit after {what}: {status}\n{log}"
    );
    let start = Instant::now();
    while mounted_type(&fx.mnt).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "still mounted after {what} and daemon exit"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fusermount_unmount_makes_foreground_daemon_exit() {
    stops_cleanly("fusermount3 -u", |mnt, _| {
        let (ok, out) = run(Command::new("fusermount3").arg("-u").arg(mnt));
        assert!(ok, "fusermount3 -u: {out}");
    });
}

#[test]
fn umount_makes_foreground_daemon_exit() {
    stops_cleanly("umount", |mnt, _| {
        let (ok, out) = run(Command::new("umount").arg(mnt));
        assert!(ok, "umount: {out}");
    });
}

#[test]
fn sigterm_unmounts_and_exits() {
    stops_cleanly("SIGTERM", |_, pid| kill_pid(pid, Signal::TERM));
}

#[test]
fn sigint_unmounts_and_exits() {
    stops_cleanly("SIGINT", |_, pid| kill_pid(pid, Signal::INT));
}

/// After `umount -l` (a file still open keeps the connection alive, so no DESTROY comes), a
/// SIGTERM must still end the daemon, and must not unmount what was mounted on the path since.
#[test]
fn sigterm_after_lazy_unmount_exits_and_spares_a_newer_mount() {
    need_root!();
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let mut m = fx.mount(Backend::Stratafs);
    let pid = m.daemon_pid().unwrap();
    let f = m.with_timeout(DEADLINE, |r| fs::File::open(r.join("f")).unwrap());
    let (ok, out) = run(Command::new("umount").arg("-l").arg(&fx.mnt));
    assert!(ok, "umount -l: {out}");
    let (ok, out) = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "newer"])
        .arg(&fx.mnt));
    assert!(ok, "mount tmpfs: {out}");
    let _newer = Cleanup(fx.mnt.clone());
    kill_pid(pid, Signal::TERM);
    let status = m.wait_daemon_exit(5);
    let log = m.daemon_log();
    assert!(
        status.is_some(),
        "daemon still running 5s after SIGTERM following umount -l:\n{log}"
    );
    assert_eq!(
        mounted_type(&fx.mnt).as_deref(),
        Some("tmpfs"),
        "the SIGTERM took the newer mount on the same path down"
    );
    drop(f);
}

#[test]
fn colon_in_lowerdir_path_can_be_escaped() {
    let fx = Fixture::new(1);
    let odd = fx.root().join("with:colon");
    fs::create_dir(&odd).unwrap();
    fs::write(odd.join("f"), b"colon layer").unwrap();
    let lower = format!("{}:{}", s(&odd).replace(':', "\\:"), s(&fx.lowers[0]));
    let _c = Cleanup(fx.mnt.clone());
    let o = stratafs(&["-o", &format!("lowerdir={lower}"), s(&fx.mnt)], 20);
    assert!(o.status.success(), "stratafs failed: {o:?}");
    let mnt = fx.mnt.clone();
    let got = with_timeout(DEADLINE, "read", move || read(&mnt.join("f")));
    assert_eq!(got, b"colon layer");
}

#[test]
fn missing_dev_fuse_is_refused_with_a_clear_message() {
    // In a private mount namespace, hide /dev behind an empty tmpfs.
    let fx = Fixture::new(1);
    let o = opts(s(&fx.lowers[0]), Some(&fx.upper), Some(&fx.work));
    let script = format!(
        "mount -t tmpfs tmpfs /dev && exec {BIN} -o {o} {}",
        s(&fx.mnt)
    );
    let out = with_timeout(DEADLINE, "stratafs without /dev/fuse", move || {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let (_, err) = text(&out);
    assert!(
        !out.status.success(),
        "stratafs succeeded without /dev/fuse"
    );
    assert!(
        // stratafs's own message (not only a library's log line) must name the cause.
        err.lines()
            .any(|l| l.starts_with("stratafs") && l.contains("/dev/fuse")),
        "no stratafs message naming /dev/fuse:\n{err}"
    );
    assert!(mounted_type(&fx.mnt).is_none());
}

#[test]
fn debug_flag_stays_in_foreground_and_logs_requests() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let log = fx.root().join("debug.log");
    let logf = fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "-d",
            "-o",
            &format!("lowerdir={}", s(&fx.lowers[0])),
            s(&fx.mnt),
        ])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let _c = Cleanup(fx.mnt.clone());
    let start = Instant::now();
    while !mounted_type(&fx.mnt).is_some_and(|t| t.starts_with("fuse")) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "stratafs -d exited early ({st}): {}",
                fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not mounted within 10s"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let mnt = fx.mnt.clone();
    with_timeout(DEADLINE, "read under -d", move || read(&mnt.join("f")));
    assert!(
        child.try_wait().unwrap().is_none(),
        "-d must stay in the foreground"
    );
    let _ = unmount(&fx.mnt);
    let pid = child.id();
    let status = run_with_deadline(5, move || child.wait());
    if status.is_none() {
        kill_pid(pid, Signal::KILL);
        panic!("stratafs -d did not exit after unmount");
    }
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() >= 3,
        "-d logged almost nothing:\n{text}"
    );
}

#[test]
fn uid_and_gid_mapping_translate_owners_both_ways() {
    // uidmapping=STORED:CLIENT:LEN as containers-storage writes it (podman --uidmap
    // 0:10000:65536): an id stored in the layers shows as the client id, and back. (No kernel
    // reference: overlayfs has no such option.)
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fx = Fixture::new(1);
    fs::set_permissions(fx.root(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.lower(0)
        .file_mode("root_file", b"r", 0o600)
        .file("user_file", b"u")
        .chown("user_file", 5, 7)
        .file("unmapped", b"x")
        .chown("unmapped", 70000, 70000)
        .dir("d");
    let spec = MountSpec {
        writable: true,
        extra: vec![
            "uidmapping=0:10000:65536".into(),
            "gidmapping=0:20000:65536".into(),
        ],
    };
    let m = fx.mount_with(Backend::Stratafs, &spec);
    m.with_timeout(DEADLINE, |r| {
        let own = |p: &str| {
            let md = lstat(&r.join(p));
            (md.uid(), md.gid())
        };
        assert_eq!(own("root_file"), (10000, 20000));
        assert_eq!(own("user_file"), (10005, 20007));
        assert_eq!(
            own("unmapped"),
            (65534, 65534),
            "unmapped ids show as overflow"
        );
        assert_eq!(own("d"), (10000, 20000));
        assert_eq!(
            read(&r.join("root_file")),
            b"r",
            "lower files must stay readable"
        );
        // The container's root (client 10000) creates a file: stored as 0.
        let target = r.join("d/new").to_str().unwrap().to_string();
        let o = std::process::Command::new("setpriv")
            .args([
                "--reuid=10000",
                "--regid=20000",
                "--clear-groups",
                "touch",
                &target,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "create as client 10000: {o:?}");
        assert_eq!(own("d/new"), (10000, 20000));
        std::os::unix::fs::lchown(r.join("user_file"), Some(10042), Some(20043)).unwrap();
        assert_eq!(own("user_file"), (10042, 20043));
    });
    drop(m);
    let on_disk = |p: &str| {
        let md = lstat(&fx.upper.join(p));
        (md.uid(), md.gid())
    };
    assert_eq!(
        on_disk("d/new"),
        (0, 0),
        "new file stored with the stored ids"
    );
    assert_eq!(on_disk("d"), (0, 0), "copied-up dir keeps its stored ids");
    assert_eq!(
        on_disk("user_file"),
        (42, 43),
        "chown stored with the stored ids"
    );
}
