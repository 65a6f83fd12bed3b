//! Mounts inside the layers, above all the union's own mount: a mount point inside a lower
//! layer, upper and work directories below the mount point, and the union's mount bound
//! into its own lower layer. Kernel overlayfs resolves layer paths on the underlying
//! filesystems and shows a mount point inside a layer as the directory underneath; stratafs
//! must do the same, and must never serve a request by entering its own mount (that
//! deadlocked the daemon). Every step runs under a deadline.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::unprivileged::{as_user, text, user_dir, Unmounter};
use common::*;

/// A fixture whose mount point is `L/mnt`, inside its only lower layer.
fn mount_point_in_lower() -> Fixture {
    let mut fx = Fixture::new(1);
    fx.lower(0)
        .file("a", b"a")
        .file("sub/deep/f", b"f")
        .dir("mnt")
        .dir("sub/deep/er");
    fx.mnt = fx.lowers[0].join("mnt");
    fx
}

/// The tree under `root` without modification times (each backend's fixture is made anew).
fn tree(root: &Path) -> Snapshot {
    let mut s = snapshot(root);
    for e in s.values_mut() {
        e.mtime = None;
    }
    s
}

/// The tree under the mount, walked to the bottom (`find MNT`), with a deadline.
fn walk(m: &Mount<'_>) -> Snapshot {
    m.with_timeout(DEADLINE, |root| tree(&root))
}

#[test]
fn mount_point_inside_the_lower_layer_shows_as_the_kernel_shows_it() {
    need_root!();
    let mut trees = Vec::new();
    for b in Backend::ALL {
        let fx = mount_point_in_lower();
        let m = fx.mount(b);
        let empty = m.with_timeout(DEADLINE, |root| names(&root.join("mnt")).is_empty());
        assert!(
            empty,
            "{b:?}: the mount point inside the layer is not shown empty"
        );
        let before = walk(&m);
        // Writes through the mount point's directory copy it up like any other.
        m.with_timeout(DEADLINE, |root| {
            fs::write(root.join("mnt/new"), b"n").unwrap();
            fs::write(root.join("a"), b"changed").unwrap();
        });
        let after = walk(&m);
        let status = m.unmount();
        if b == Backend::Stratafs {
            assert!(
                status.is_some_and(|s| s.success()),
                "daemon did not exit cleanly after unmount: {status:?}"
            );
        }
        trees.push((before, after));
    }
    assert_same_tree("mount point in lower, fresh", &trees[0].0, &trees[1].0);
    assert_same_tree(
        "mount point in lower, after writes",
        &trees[0].1,
        &trees[1].1,
    );
}

#[test]
fn mount_point_above_the_upper_and_work_directories() {
    need_root!();
    let mut trees = Vec::new();
    for b in Backend::ALL {
        let mut fx = Fixture::new(1);
        let top = fx.root().join("m");
        for (field, name) in [("lower", "l0"), ("upper", "upper"), ("work", "work")] {
            let p = top.join(name);
            fs::create_dir_all(&p).unwrap();
            match field {
                "lower" => fx.lowers[0] = p,
                "upper" => fx.upper = p,
                _ => fx.work = p,
            }
        }
        fx.lower(0).file("a", b"a").file("d/f", b"f");
        fx.mnt = top;
        let m = fx.mount(b);
        let tree = m.with_timeout(DEADLINE, |root| {
            fs::write(root.join("new"), b"n").unwrap();
            fs::remove_file(root.join("a")).unwrap();
            fs::write(root.join("d/f"), b"g").unwrap();
            tree(&root)
        });
        let status = m.unmount();
        if b == Backend::Stratafs {
            assert!(
                status.is_some_and(|s| s.success()),
                "daemon did not exit cleanly after unmount: {status:?}"
            );
        }
        trees.push(tree);
    }
    assert_same_tree("layers below the mount point", &trees[0], &trees[1]);
}

/// Our own mount bound into the lower layer after mounting: as root the daemon's layers are
/// private clones that do not see it (as the kernel's), so the lower's own directory shows.
#[test]
fn own_mount_bound_into_the_lower_layer_is_not_entered() {
    need_root!();
    let mut seen = Vec::new();
    for b in Backend::ALL {
        let fx = Fixture::new(1);
        fx.lower(0).file("a", b"a").file("sub/s", b"s");
        let m = fx.mount(b);
        let sub = fx.lowers[0].join("sub");
        let (ok, out) = run(Command::new("mount").arg("--bind").arg(&fx.mnt).arg(&sub));
        assert!(ok, "bind mount: {out}");
        let bound = Unmounter(sub);
        let listing = m.with_timeout(DEADLINE, |root| {
            let l = list(&root.join("sub"));
            (l, tree(&root))
        });
        drop(bound);
        drop(m);
        seen.push(listing);
    }
    assert_eq!(seen[1].0, vec!["s".to_string()]);
    assert_eq!(seen[0].0, seen[1].0);
    assert_same_tree("own mount bound into the lower", &seen[0].1, &seen[1].1);
}

/// A daemon of a plain user cannot clone mounts: it refuses a mount point inside a layer,
/// and when its own mount appears inside a layer later, it answers its own requests with
/// EDEADLK at once instead of waiting on itself, and stays responsive.
#[test]
fn unprivileged_daemon_never_waits_on_its_own_mount() {
    need_root!();
    let dir = user_dir();
    let d = dir.path();
    let q = |p: &Path| p.display().to_string();
    let (l, u, w, mnt) = (d.join("L"), d.join("U"), d.join("W"), d.join("M"));
    let script = format!(
        "mkdir -p {l}/sub {l}/mnt {u} {w} {mnt}; echo a > {l}/a; echo s > {l}/sub/s\n\
         if \"$STRATAFS\" -o lowerdir={l},upperdir={u},workdir={w} {l}/mnt 2>inside.err; then\n\
           echo MOUNTED-INSIDE; fusermount3 -u {l}/mnt; fi\n\
         \"$STRATAFS\" -o lowerdir={l},upperdir={u},workdir={w} {mnt}\n\
         echo mounted",
        l = q(&l),
        u = q(&u),
        w = q(&w),
        mnt = q(&mnt),
    );
    let _mounted = Unmounter(mnt.clone());
    let o = as_user(&script, d);
    let (out, err) = text(&o);
    assert!(o.status.success(), "setup failed:\n{out}\n{err}");
    assert!(
        !out.contains("MOUNTED-INSIDE"),
        "a mount point inside the lower layer was accepted without detached layers"
    );
    let why = fs::read_to_string(d.join("inside.err")).unwrap();
    assert!(
        why.contains("inside lowerdir") && why.contains("CAP_SYS_ADMIN"),
        "unclear refusal: {why}"
    );
    let sub = l.join("sub");
    let (ok, out) = run(Command::new("mount").arg("--bind").arg(&mnt).arg(&sub));
    assert!(ok, "bind mount: {out}");
    let bound = LazyUnmounter(sub);
    let o = as_user(
        &format!(
            "timeout 20 ls {m}/sub 2>&1 || echo rc=$?; timeout 20 cat {m}/a",
            m = q(&mnt)
        ),
        d,
    );
    let (out, err) = text(&o);
    assert!(
        out.contains("Resource deadlock avoided") && !out.contains("rc=124"),
        "own mount reached through a layer was not refused at once:\n{out}\n{err}"
    );
    assert!(
        out.trim_end().ends_with('a'),
        "daemon unresponsive after refusing its own request:\n{out}\n{err}"
    );
    drop(bound);
    // The daemon holds the bound mount's root open (it went through it): end it by signal.
    for pid in stratafs_pids_for(&mnt) {
        kill_pid(pid, rustix::process::Signal::TERM);
    }
}

/// Lazily unmounts on drop (a bind mount the daemon may hold busy).
struct LazyUnmounter(PathBuf);

impl Drop for LazyUnmounter {
    fn drop(&mut self) {
        if mounted_type(&self.0).is_some() {
            run(Command::new("umount").arg("-l").arg(&self.0));
        }
    }
}

/// Inside `unshare -Urm` the user's daemon has CAP_SYS_ADMIN over its mount namespace: its
/// layers are detached clones too, and a mount point inside the lower layer shows as kernel
/// overlayfs in the same namespace shows it.
#[test]
fn in_a_user_namespace_a_mount_point_inside_the_lower_layer_works() {
    need_root!();
    let dir = user_dir();
    let _reaper = common::unprivileged::DaemonReaper(dir.path().to_path_buf());
    let script = r#"
for t in s k; do mkdir -p $t/L/sub/deep $t/L/mnt $t/U $t/W; echo a > $t/L/a; done
unshare -Urm sh -eu -c '
  "$STRATAFS" -o lowerdir=$PWD/s/L,upperdir=$PWD/s/U,workdir=$PWD/s/W $PWD/s/L/mnt
  mount -t overlay overlay -o lowerdir=$PWD/k/L,upperdir=$PWD/k/U,workdir=$PWD/k/W,userxattr $PWD/k/L/mnt
  for t in s k; do (cd $t/L/mnt && timeout 20 find . -maxdepth 4 | sort) > $t.txt; done
  fusermount3 -u $PWD/s/L/mnt || umount $PWD/s/L/mnt
  umount $PWD/k/L/mnt
'
cat s.txt
diff k.txt s.txt && echo SAME
"#;
    let o = as_user(script, dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{}\n{out}\n{err}", o.status);
    assert!(
        out.contains("./mnt\n") && out.contains("SAME"),
        "{out}\n{err}"
    );
}

/// What a layer's clone is: same device and inode numbers as the layer (inode numbers stay
/// stable), no submounts, and for a lower layer read-only, so the daemon cannot change it.
#[test]
fn a_lower_layer_clone_keeps_inode_numbers_hides_submounts_and_is_read_only() {
    use rustix::fs::{statat, AtFlags, Mode, OFlags};
    need_root!();
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x").dir("m");
    let m = fx.lowers[0].join("m");
    let (ok, out) = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "inner"])
        .arg(&m));
    assert!(ok, "mount tmpfs: {out}");
    let _inner = Unmounter(m.clone());
    let layer = rustix::fs::open(
        &fx.lowers[0],
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let clone = strata::union::detach::clone_dir(std::os::fd::AsFd::as_fd(&layer), true).unwrap();
    let (a, b) = (
        rustix::fs::fstat(&layer).unwrap(),
        rustix::fs::fstat(&clone).unwrap(),
    );
    assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
    let through_layer = statat(&layer, "m", AtFlags::SYMLINK_NOFOLLOW).unwrap();
    let through_clone = statat(&clone, "m", AtFlags::SYMLINK_NOFOLLOW).unwrap();
    assert_ne!(through_layer.st_dev, a.st_dev, "the tmpfs is mounted on m");
    assert_eq!(
        through_clone.st_dev, a.st_dev,
        "the clone shows m underneath"
    );
    let write = rustix::fs::openat(&clone, "f", OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty());
    assert_rerrno("open a lower file for writing", write, libc::EROFS);
}
