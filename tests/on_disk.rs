//! What a mount writes into the upper layer: kernel-format whiteouts and opaque markers, no
//! private bookkeeping, and uppers that the other implementation mounts as the identical tree
//! (stratafs's upper under kernel overlayfs, and the kernel's upper under stratafs).

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, CWD};

use common::*;

both_backends!(
    unlink_and_rmdir_leave_chardev_whiteouts,
    mkdir_over_whiteout_is_trusted_opaque_without_whiteouts_inside,
    no_private_bookkeeping_in_upper_or_work,
    delete_of_upper_only_file_leaves_no_whiteout,
    whiteouts_are_links_of_one_inode,
);

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

fn unlink_and_rmdir_leave_chardev_whiteouts(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("f", b"x").file("sub/g", b"g");
    fx.lower(1).file("d/a", b"a").symlink("sl", "f");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::remove_file(r.join("f")).unwrap();
        fs::remove_file(r.join("sub/g")).unwrap();
        fs::remove_file(r.join("sl")).unwrap();
        fs::remove_file(r.join("d/a")).unwrap();
        fs::remove_dir(r.join("d")).unwrap();
    });
    drop(m);
    for p in ["f", "sub/g", "sl", "d"] {
        let up = fx.upper.join(p);
        assert!(
            is_whiteout(&up),
            "{p}: upper has no 0/0 char device whiteout"
        );
        let md = lstat(&up);
        assert_eq!(md.rdev(), 0);
    }
    let wh: Vec<_> = names(&fx.upper)
        .into_iter()
        .filter(|n| n.starts_with(b".wh."))
        .collect();
    assert!(wh.is_empty(), "OCI whiteout files written: {wh:?}");
}

fn mkdir_over_whiteout_is_trusted_opaque_without_whiteouts_inside(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("D/old", b"o").file("D/sub/older", b"o");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::remove_dir_all(r.join("D")).unwrap();
        fs::create_dir(r.join("D")).unwrap();
        fs::write(r.join("D/new"), b"n").unwrap();
        fs::write(r.join("D/tmp"), b"t").unwrap();
        fs::remove_file(r.join("D/tmp")).unwrap();
        fs::create_dir(r.join("D/sub")).unwrap();
    });
    drop(m);
    let d = fx.upper.join("D");
    assert!(lstat(&d).is_dir());
    assert_eq!(get_xattr(&d, "trusted.overlay.opaque"), Ok(b"y".to_vec()));
    assert_eq!(
        list(&d),
        ["new", "sub"],
        "stray entries in the opaque upper dir"
    );
    let sub = snapshot(&d);
    for (p, e) in &sub {
        assert!(
            !(e.kind == 'c' && e.rdev == Some(0)),
            "whiteout inside an opaque dir: D/{}",
            String::from_utf8_lossy(p)
        );
    }
}

fn delete_of_upper_only_file_leaves_no_whiteout(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).dir("d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::write(r.join("d/tmp"), b"t").unwrap();
        fs::remove_file(r.join("d/tmp")).unwrap();
        fs::create_dir(r.join("newdir")).unwrap();
        fs::remove_dir(r.join("newdir")).unwrap();
    });
    drop(m);
    assert!(!fx.upper.join("d/tmp").exists() && !is_whiteout(&fx.upper.join("d/tmp")));
    assert!(fs::symlink_metadata(fx.upper.join("newdir")).is_err());
}

/// Xattr names the kernel itself writes or understands in an upper layer.
const KERNEL_XATTRS: &[&str] = &[
    "opaque",
    "redirect",
    "origin",
    "impure",
    "nlink",
    "upper",
    "metacopy",
    "protattr",
    "uuid",
    "whiteout",
    "whiteouts",
];

fn no_private_bookkeeping_in_upper_or_work(b: Backend) {
    let fx = rich_fixture();
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, script);
    drop(m);
    let mut problems = Vec::new();
    walk_all(&fx.upper, &mut |p, md| {
        let rel = p.strip_prefix(&fx.upper).unwrap().display().to_string();
        if p.file_name().unwrap().as_bytes().starts_with(b".wh.") {
            problems.push(format!("OCI whiteout file in upper: {rel}"));
        }
        if md.file_type().is_char_device() && md.rdev() != 0 && !rel.ends_with("chr") {
            problems.push(format!("unexpected device in upper: {rel}"));
        }
        for n in list_xattrs(p) {
            let private = n
                .strip_prefix("trusted.overlay.")
                .or_else(|| n.strip_prefix("user.overlay."));
            let ok = match private {
                Some(suffix) => KERNEL_XATTRS.contains(&suffix),
                None => n.starts_with("user.t") || n == "trusted.t",
            };
            if !ok {
                problems.push(format!("private xattr {n} on {rel}"));
            }
        }
    });
    walk_all(&fx.work, &mut |p, md| {
        let rel = p.strip_prefix(&fx.work).unwrap();
        let in_index = rel.starts_with("index");
        if !md.is_dir() && !in_index {
            problems.push(format!("leftover in work dir: {}", rel.display()));
        }
    });
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn walk_all(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = lstat(&p);
        f(&p, &md);
        if md.is_dir() {
            walk_all(&p, f);
        }
    }
}

/// Three lower layers using every kernel-readable form: whiteouts, opaque dirs, hard links,
/// symlinks, fifos, devices, xattrs, odd modes and owners, long and non-UTF-8 names.
fn rich_fixture() -> Fixture {
    let fx = Fixture::new(3);
    fx.lower(2)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .file("bin/tool", b"#!/bin/sh\necho tool\n")
        .chmod("bin/tool", 0o755)
        .file("gone/a", b"a")
        .file("opq/bottom", b"b")
        .file("hl/one", b"linked")
        .hardlink("hl/one", "hl/two")
        .hardlink("hl/one", "other/three")
        .file("var/log/old.log", b"old")
        .file("data/blob", &vec![7u8; 200_000])
        .xattr("data/blob", "user.tag", b"blob")
        .file("rm_later/x", b"x")
        .file("rm_later/sub/y", b"y");
    fx.lower(1)
        .whiteout("gone")
        .opaque_trusted("opq")
        .file("opq/mid", b"m")
        .file("etc/hosts", b"10.0.0.1 mid\n")
        .symlink("bin/sh", "tool")
        .fifo("run/fifo", 0o640)
        .file_mode("secret", b"s", 0o600)
        .chown("secret", 1000, 1000)
        .file(bpath(b"caf\xe9"), b"latin1")
        .file(long_name('n', 255), b"long");
    fx.lower(0)
        .whiteout("var/log/old.log")
        .file("var/log/new.log", b"new")
        .dir_mode("home/user", 0o750)
        .chown("home/user", 1000, 1000)
        .file("home/user/.profile", b"export A=1\n")
        .chown("home/user/.profile", 1000, 1000)
        .xattr("home/user/.profile", "user.t0", b"v0");
    fx
}

/// A fixed sequence of changes through the mount, covering every kind of upper-layer write.
fn script(r: PathBuf) {
    let w = |p: &str, d: &[u8]| fs::write(r.join(p), d).unwrap();
    w("new.txt", b"new file");
    fs::create_dir_all(r.join("newdir/a/b")).unwrap();
    w("newdir/a/b/c", b"c");
    // Modify lower files: append, truncate, overwrite.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(r.join("etc/passwd"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"user:x:1000:1000::/home/user:/bin/sh\n").unwrap();
    drop(f);
    fs::OpenOptions::new()
        .write(true)
        .open(r.join("data/blob"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    w("etc/hosts", b"rewritten\n");
    // Metadata-only changes.
    fs::set_permissions(r.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::lchown(r.join("secret"), Some(2000), Some(2001)).unwrap();
    std::os::unix::fs::lchown(r.join("bin/sh"), Some(5), Some(6)).unwrap();
    rustix::fs::lsetxattr(
        r.join("home/user/.profile"),
        "user.t1",
        b"v1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lremovexattr(r.join("home/user/.profile"), "user.t0").unwrap();
    set_times(&r.join("etc/hosts"), (1_500_000_000, 0), (1_500_000_000, 7));
    // Deletions: files, a lower dir tree, then a new dir in its place.
    fs::remove_file(r.join("var/log/new.log")).unwrap();
    fs::remove_file(r.join(bpath(b"caf\xe9"))).unwrap();
    fs::remove_dir_all(r.join("rm_later")).unwrap();
    fs::create_dir(r.join("rm_later")).unwrap();
    w("rm_later/fresh", b"fresh");
    // Links, renames, special files.
    std::os::unix::fs::symlink("../etc/passwd", r.join("newdir/pw")).unwrap();
    fs::hard_link(r.join("etc/passwd"), r.join("newdir/pw_hard")).unwrap();
    fs::rename(r.join("new.txt"), r.join("newdir/moved.txt")).unwrap();
    fs::rename(r.join("secret"), r.join("home/secret")).unwrap();
    fs::rename(r.join("newdir/a"), r.join("newdir/a2")).unwrap();
    w("tmp", b"tmp");
    fs::remove_file(r.join("tmp")).unwrap();
    rustix::fs::mknodat(
        CWD,
        r.join("run/fifo2"),
        FileType::Fifo,
        Mode::from_raw_mode(0o604),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        r.join("run/chr"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    w(&long_name('m', 255), b"long new");
    fs::write(r.join(bpath(b"new\xff")), b"bytes").unwrap();
    fs::create_dir(r.join("opq/new")).unwrap();
}

/// Renames of lower (merged, opaque, nested) directories; where the writer says EXDEV (the
/// kernel with redirect_dir=off) nothing changes and the round trip is trivially equal.
fn script_rename_dirs(r: PathBuf) {
    for (from, to) in [
        ("etc", "etc2"),
        ("opq", "opq2"),
        ("home/user", "user_moved"),
    ] {
        match fs::rename(r.join(from), r.join(to)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
            Err(e) => panic!("rename {from} -> {to}: {e}"),
        }
    }
    if r.join("etc2").exists() {
        fs::write(r.join("etc2/hosts"), b"after move\n").unwrap();
        fs::create_dir(r.join("etc")).unwrap();
    }
}

/// Copy-up of a lower file with three hard links, through one alias (kept apart from
/// [`script`] so a hard-link problem does not hide everything else).
fn script_hard_links(r: PathBuf) {
    fs::write(r.join("hl/two"), b"changed through two").unwrap();
}

fn strip_mtimes(s: &Snapshot) -> Snapshot {
    s.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            e.mtime = None;
            (k.clone(), e)
        })
        .collect()
}

/// Runs the script under `writer`, then remounts the same dirs under `reader`; returns the
/// view through the writer's mount and through the reader's.
fn write_then_read(
    writer: Backend,
    reader: Backend,
    body: fn(PathBuf),
) -> (Fixture, Snapshot, Snapshot) {
    let fx = rich_fixture();
    let m = fx.mount(writer);
    let written = m.with_timeout(DEADLINE, move |r| {
        body(r.clone());
        snapshot(&r)
    });
    drop(m);
    let m = fx.mount(reader);
    let read_back = m.with_timeout(DEADLINE, |r| snapshot(&r));
    drop(m);
    (fx, written, read_back)
}

#[test]
fn rich_fixture_view_is_as_expected_under_kernel() {
    // Guards the fixture: the kernel's view of the untouched layers is what we think it is.
    let fx = rich_fixture();
    let m = fx.mount(Backend::Kernel);
    let s = m.with_timeout(DEADLINE, |r| snapshot(&r));
    let has = |p: &[u8]| s.contains_key(p);
    assert!(!has(b"gone") && !has(b"gone/a") && !has(b"var/log/old.log"));
    assert!(has(b"opq/mid") && !has(b"opq/bottom"));
    assert_eq!(s[&b"hl/one".to_vec()].nlink, Some(3));
    assert_eq!(
        s[&b"etc/hosts".to_vec()].content.as_deref(),
        Some(&b"10.0.0.1 mid\n"[..])
    );
}

fn run_script(b: Backend, body: fn(PathBuf)) -> Snapshot {
    let fx = rich_fixture();
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        body(r.clone());
        snapshot(&r)
    })
}

#[test]
fn script_gives_same_tree_on_kernel_and_stratafs() {
    assert_same_tree(
        "kernel (left) vs stratafs (right), mtimes aside",
        &strip_mtimes(&run_script(Backend::Kernel, script)),
        &strip_mtimes(&run_script(Backend::Stratafs, script)),
    );
}

#[test]
fn hard_link_copy_up_gives_same_tree_on_kernel_and_stratafs() {
    assert_same_tree(
        "kernel (left) vs stratafs (right), mtimes aside",
        &strip_mtimes(&run_script(Backend::Kernel, script_hard_links)),
        &strip_mtimes(&run_script(Backend::Stratafs, script_hard_links)),
    );
}

/// Generates a test that writes with one backend and reads the upper back with another.
macro_rules! round_trip {
    ($($(#[$attr:meta])* $name:ident: $writer:ident -> $reader:ident, $body:ident;)*) => {
        $(
            #[test]
            $(#[$attr])*
            fn $name() {
                let (_fx, written, read_back) =
                    write_then_read(Backend::$writer, Backend::$reader, $body);
                assert_same_tree(
                    concat!(
                        stringify!($writer), " view (left) vs ",
                        stringify!($reader), " over its upper (right)"
                    ),
                    &written,
                    &read_back,
                );
            }
        )*
    };
}

round_trip! {
    stratafs_upper_mounted_by_kernel_shows_same_tree: Stratafs -> Kernel, script;
    kernel_upper_mounted_by_stratafs_shows_same_tree: Kernel -> Stratafs, script;
    // The controls: each implementation round-trips through its own upper.
    kernel_upper_remounted_by_kernel_shows_same_tree: Kernel -> Kernel, script;
    stratafs_upper_remounted_by_stratafs_shows_same_tree: Stratafs -> Stratafs, script;
    hard_links_stratafs_upper_mounted_by_kernel: Stratafs -> Kernel, script_hard_links;
    // Known difference: the kernel records a copied-up hard link only in its index (work dir)
    // and the copy's origin file handle; stratafs does not decode those, so the other, still
    // lower, names of that inode show the old lower file. stratafs itself links all names in
    // the upper at copy-up, which the kernel reads correctly (the test above).
    #[ignore = "stratafs does not read the kernel's index=on hard-link index"]
    hard_links_kernel_upper_mounted_by_stratafs: Kernel -> Stratafs, script_hard_links;
    hard_links_kernel_upper_remounted_by_kernel: Kernel -> Kernel, script_hard_links;
    hard_links_stratafs_upper_remounted_by_stratafs: Stratafs -> Stratafs, script_hard_links;
    renamed_dirs_stratafs_upper_mounted_by_kernel: Stratafs -> Kernel, script_rename_dirs;
    renamed_dirs_stratafs_upper_remounted_by_stratafs: Stratafs -> Stratafs, script_rename_dirs;
}

/// Removing lower files links one shared whiteout inode rather than making one per name (as
/// the kernel does), and nothing of it is left in the work directory after unmount.
fn whiteouts_are_links_of_one_inode(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("a", b"a")
        .file("b", b"b")
        .file("d/c", b"c");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        for p in ["a", "b", "d/c"] {
            fs::remove_file(r.join(p)).unwrap();
        }
    });
    drop(m);
    let inodes: Vec<u64> = ["a", "b", "d/c"]
        .iter()
        .map(|p| {
            let up = fx.upper.join(p);
            assert!(is_whiteout(&up), "{p}: no whiteout");
            lstat(&up).ino()
        })
        .collect();
    assert!(
        inodes.iter().all(|i| *i == inodes[0]),
        "whiteouts are separate inodes: {inodes:?}"
    );
    assert!(lstat(&fx.upper.join("a")).nlink() >= 3);
}
