//! `mount -t fuse.stratafs SOURCE MNT -o OPTS`: mount(8) hands the request to mount.fuse3,
//! which runs `stratafs SOURCE MNT -o OPTS` from the standard PATH. The test puts the built
//! binary there for the duration (as `make install` would) and removes it afterwards.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// Removes the link it made on drop (and nothing it did not make).
struct Installed(Option<&'static str>);

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(link) = self.0 {
            let _ = fs::remove_file(link);
        }
    }
}

#[test]
fn mount_t_fuse_stratafs_runs_stratafs_as_a_helper() {
    let link = "/usr/local/bin/stratafs";
    let _installed = if Path::new(link).exists() {
        // Someone installed stratafs for real: test that one rather than replace it.
        eprintln!("{link} exists; testing it as installed");
        Installed(None)
    } else {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stratafs"), link).unwrap();
        Installed(Some(link))
    };
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"via mount(8)");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowers[0].display(),
        fx.upper.display(),
        fx.work.display()
    );
    let mnt = fx.mnt.clone();
    let out = with_timeout(DEADLINE, "mount -t fuse.stratafs", move || {
        Command::new("mount")
            .args(["-t", "fuse.stratafs", "image-source"])
            .arg(&mnt)
            .args(["-o", &opts])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "mount failed: {out:?}");
    let mnt = fx.mnt.clone();
    let content = with_timeout(DEADLINE, "read", move || read(&mnt.join("f")));
    let source = fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(fx.mnt.to_str().unwrap()))
        .map(|l| l.split(' ').next().unwrap().to_string());
    assert!(unmount(&fx.mnt), "unmount");
    assert_eq!(content, b"via mount(8)");
    assert_eq!(
        source.as_deref(),
        Some("image-source"),
        "SOURCE becomes the fsname"
    );
}

/// Threads of process `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end().starts_with(prefix))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The stratafs daemon serving mount point `mnt` (found by its command line).
fn daemon_of(mnt: &Path) -> Option<u32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(p.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_stratafs = args.first()?.ends_with(b"stratafs");
        (is_stratafs && args.contains(&want)).then_some(pid)
    })
}

/// A daemonized stratafs (no `-f`: how podman and mount(8) run it) still reads directories
/// ahead: its read-ahead threads start after the fork, in the process that serves.
#[test]
fn a_daemonized_mount_reads_ahead() {
    need_root!();
    let fx = Fixture::new(2);
    fx.lower(0).dir("a").dir("b").file("a/f", b"1");
    fx.lower(1).dir("a").dir("c").file("c/g", b"2");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowerdir_opt(),
        fx.upper.display(),
        fx.work.display()
    );
    let mnt = fx.mnt.clone();
    let out = with_timeout(DEADLINE, "stratafs (daemonizing)", move || {
        Command::new(env!("CARGO_BIN_EXE_stratafs"))
            .args(["-o", &opts])
            .arg(&mnt)
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "stratafs failed: {out:?}");
    let pid = daemon_of(&fx.mnt);
    let mnt = fx.mnt.clone();
    let names = with_timeout(DEADLINE, "list", move || {
        let mut names: Vec<String> = fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    });
    let prefetchers = pid.map(|pid| threads_named(pid, "prefetch-"));
    assert!(unmount(&fx.mnt), "unmount");
    assert_eq!(names, ["a", "b", "c"]);
    let pid = pid.expect("the daemon's process is found by its mount point");
    assert!(
        prefetchers.unwrap_or(0) > 0,
        "daemon {pid} has no read-ahead threads after listing a directory"
    );
}
