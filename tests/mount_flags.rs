//! The flags of the mount itself: its type in the mount table (`fuse.stratafs`, as other FUSE
//! filesystems show theirs), set-user-id programs and device nodes. As root stratafs mounts
//! as fuse-overlayfs does (set-id programs work, devices do not unless `dev` is given) and
//! honours `suid`/`nosuid`/`dev`/`nodev`; a daemon that is not root never mounts `suid` or
//! `dev`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::unprivileged::{as_user, setup_user, text, user_dir, Unmounter};
use common::*;

/// The fs type and per-mount options of the topmost mount at `p`, from mountinfo.
fn mount_entry(p: &Path) -> Option<(String, Vec<String>)> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (Path::new(f[4]) == p).then(|| {
            (
                f[sep + 1].to_string(),
                f[5].split(',').map(String::from).collect(),
            )
        })
    })
}

/// A fixture other users can reach, whose lower layer holds a set-user-id-root copy of `id`
/// and a `null` device node.
fn reachable_fixture() -> Fixture {
    let fx = Fixture::new(1);
    fs::set_permissions(fx.root(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.lower(0).device("null", false, 1, 3).chmod("null", 0o666);
    fs::copy("/usr/bin/id", fx.lower(0).path("suidid")).unwrap();
    fx.lower(0).chown("suidid", 0, 0).chmod("suidid", 0o4755);
    fx
}

/// The effective uid `MNT/suidid -u` reports when the unprivileged test user runs it.
fn euid_of_setuid_program(m: &Mount<'_>) -> String {
    let (uid, gid) = setup_user();
    m.with_timeout(DEADLINE, move |root| {
        let (ok, out) = run(Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(root.join("suidid"))
            .arg("-u"));
        assert!(ok, "running the set-uid program: {out}");
        out.trim().to_string()
    })
}

/// Whether the device node `MNT/null` opens for writing (EACCES on a `nodev` mount).
fn device_opens(m: &Mount<'_>) -> Result<(), i32> {
    m.with_timeout(DEADLINE, |root| {
        fs::OpenOptions::new()
            .write(true)
            .open(root.join("null"))
            .map(drop)
            .map_err(|e| e.raw_os_error().unwrap_or(0))
    })
}

#[test]
fn as_root_the_mount_is_fuse_stratafs_and_flagged_as_fuse_overlayfs_flags_it() {
    need_root!();
    let fx = Fixture::new(1);
    let m = fx.mount(Backend::Stratafs);
    let (ty, ours) = mount_entry(&fx.mnt).expect("mounted");
    assert_eq!(ty, "fuse.stratafs");
    drop(m);
    // The reference: fuse-overlayfs as root on the same kind of layers.
    let fx = Fixture::new(1);
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        fx.lowers[0].display(),
        fx.upper.display(),
        fx.work.display()
    );
    let (ok, out) = run(Command::new("fuse-overlayfs")
        .arg("-o")
        .arg(&o)
        .arg(&fx.mnt));
    assert!(ok, "fuse-overlayfs: {out}");
    let _u = Unmounter(fx.mnt.clone());
    let (ty, theirs) = mount_entry(&fx.mnt).expect("fuse-overlayfs mounted");
    assert_eq!(ty, "fuse.fuse-overlayfs");
    for flag in ["nosuid", "nodev"] {
        assert_eq!(
            ours.iter().any(|o| o == flag),
            theirs.iter().any(|o| o == flag),
            "{flag}: stratafs {ours:?}, fuse-overlayfs {theirs:?}"
        );
    }
}

#[test]
fn setuid_root_program_in_a_lower_layer_runs_as_root_unless_nosuid() {
    need_root!();
    let (uid, _) = setup_user();
    for b in Backend::ALL {
        let fx = reachable_fixture();
        let m = fx.mount(b);
        assert_eq!(euid_of_setuid_program(&m), "0", "{b:?}, default flags");
        drop(m);
        let spec = MountSpec {
            writable: true,
            extra: vec!["nosuid".into()],
        };
        let m = fx.mount_with(b, &spec);
        assert_eq!(euid_of_setuid_program(&m), uid.to_string(), "{b:?}, nosuid");
    }
    // The last of `nosuid`/`suid` wins, as with mount(8).
    let fx = reachable_fixture();
    let spec = MountSpec {
        writable: true,
        extra: vec!["nosuid".into(), "suid".into()],
    };
    let m = fx.mount_with(Backend::Stratafs, &spec);
    assert_eq!(euid_of_setuid_program(&m), "0", "nosuid,suid");
}

#[test]
fn device_nodes_open_only_with_dev() {
    need_root!();
    let fx = reachable_fixture();
    let m = fx.mount(Backend::Stratafs);
    assert_eq!(device_opens(&m), Err(libc::EACCES), "default: nodev");
    drop(m);
    for (extra, want) in [
        (vec!["dev"], Ok(())),
        (vec!["dev", "nodev"], Err(libc::EACCES)),
    ] {
        let spec = MountSpec {
            writable: true,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let m = fx.mount_with(Backend::Stratafs, &spec);
        assert_eq!(device_opens(&m), want, "{extra:?}");
    }
    // The kernel's overlay honours its mount's flags the same way.
    let spec = MountSpec {
        writable: true,
        extra: vec!["nodev".into()],
    };
    let m = fx.mount_with(Backend::Kernel, &spec);
    assert!(mount_entry(&fx.mnt).unwrap().1.iter().any(|o| o == "nodev"));
    drop(m);
}

#[test]
fn a_daemon_that_is_not_root_never_mounts_suid_or_dev() {
    need_root!();
    let dir = user_dir();
    let d = dir.path();
    let mnt = d.join("M");
    let _u = Unmounter(mnt.clone());
    let o = as_user(
        &format!(
            "mkdir -p L U W M\n\"$STRATAFS\" -o lowerdir={d}/L,upperdir={d}/U,workdir={d}/W,suid,dev {d}/M",
            d = d.display()
        ),
        d,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "mount as the user:\n{out}\n{err}");
    assert!(
        err.contains("need a daemon running as root"),
        "no warning:\n{err}"
    );
    let (ty, opts) = mount_entry(&mnt).expect("mounted");
    assert_eq!(ty, "fuse.stratafs");
    for flag in ["nosuid", "nodev"] {
        assert!(opts.iter().any(|o| o == flag), "{flag} missing: {opts:?}");
    }
}
