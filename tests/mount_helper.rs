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
