//! Copy-up: what a lower file looks like after the first change through the mount, in the
//! merged view and in the upper layer; the lower file itself must never change.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

use common::*;

both_backends!(
    open_for_write_copies_up_with_all_metadata,
    write_leaves_lower_untouched,
    copy_up_of_large_file_is_exact,
    parents_are_copied_up_with_their_metadata,
    hard_links_stay_linked_after_copy_up,
    hard_links_across_dirs_stay_linked_after_rename_of_one,
    inode_number_unchanged_by_copy_up,
    open_unlinked_file_reports_nlink_zero,
    open_unlinked_file_still_reads_and_writes,
    chmod_on_lower_file,
    chown_on_lower_file_and_symlink,
    utimens_on_lower_file,
    setxattr_and_removexattr_on_lower_file,
    read_only_open_does_not_copy_up,
    copy_up_of_special_files_by_metadata_change,
    metadata_change_on_lower_dir_keeps_it_merged,
    reopen_after_metadata_copy_up_while_an_fd_is_open,
    concurrent_copy_up_of_one_file,
    readers_never_see_a_partial_copy_up,
    file_capabilities_survive_copy_up,
    setuid_and_setgid_bits_survive_copy_up,
);

const MTIME: (i64, i64) = (1_200_000_000, 987_654_321);
const ATIME: (i64, i64) = (1_100_000_000, 123);

fn rich_lower(fx: &Fixture) {
    fx.lower(0)
        .file_mode("f", b"lower data", 0o640)
        .chown("f", 1234, 5678)
        .chmod("f", 0o2640)
        .xattr("f", "user.a", b"alpha")
        .xattr("f", "user.b", &[0, 255])
        .xattr("f", "trusted.t", b"trusted value")
        .times("f", ATIME, MTIME);
}

fn open_for_write_copies_up_with_all_metadata(b: Backend) {
    let fx = Fixture::new(1);
    rich_lower(&fx);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        // Open for writing without writing: the file is copied up, nothing else changes.
        drop(OpenOptions::new().write(true).open(r.join("f")).unwrap());
        let md = lstat(&r.join("f"));
        assert_eq!(md.mode() & 0o7777, 0o2640);
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        assert_eq!((md.mtime(), md.mtime_nsec()), MTIME);
        assert_eq!(md.size(), 10);
        assert_eq!(read(&r.join("f")), b"lower data");
        assert_eq!(get_xattr(&r.join("f"), "user.a"), Ok(b"alpha".to_vec()));
        assert_eq!(get_xattr(&r.join("f"), "user.b"), Ok(vec![0, 255]));
        assert_eq!(
            get_xattr(&r.join("f"), "trusted.t"),
            Ok(b"trusted value".to_vec())
        );
    });
    drop(m);
    let up = fx.upper.join("f");
    let md = lstat(&up);
    assert!(md.is_file(), "upper copy missing");
    assert_eq!(md.mode() & 0o7777, 0o2640);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!((md.mtime(), md.mtime_nsec()), MTIME);
    assert_eq!(read(&up), b"lower data");
    assert_eq!(get_xattr(&up, "user.a"), Ok(b"alpha".to_vec()));
    assert_eq!(get_xattr(&up, "user.b"), Ok(vec![0, 255]));
    assert_eq!(get_xattr(&up, "trusted.t"), Ok(b"trusted value".to_vec()));
    assert!(
        names(&fx.work)
            .iter()
            .all(|n| n == b"work" || n == b"index"),
        "work dir not clean: {:?}",
        list(&fx.work)
    );
}

fn write_leaves_lower_untouched(b: Backend) {
    let fx = Fixture::new(1);
    rich_lower(&fx);
    let lower = fx.lowers[0].join("f");
    let before = lstat(&lower);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let mut f = OpenOptions::new().append(true).open(r.join("f")).unwrap();
        f.write_all(b" + upper").unwrap();
        drop(f);
        fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&r.join("f")), b"lower data + upper");
    });
    drop(m);
    let after = lstat(&lower);
    assert_eq!(read(&lower), b"lower data");
    assert_eq!(after.mode(), before.mode());
    assert_eq!(after.mtime(), before.mtime());
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(after.ctime(), before.ctime());
    assert_eq!(after.ino(), before.ino());
    assert_eq!(list_xattrs(&lower), ["trusted.t", "user.a", "user.b"]);
}

fn copy_up_of_large_file_is_exact(b: Backend) {
    let fx = Fixture::new(2);
    let mut data = vec![0u8; 5 * 1024 * 1024 + 3];
    fastrand::Rng::with_seed(11).fill(&mut data);
    fx.lower(1).file("big", &data);
    let m = fx.mount(b);
    let want = data.clone();
    m.with_timeout(DEADLINE, move |r| {
        let f = OpenOptions::new().write(true).open(r.join("big")).unwrap();
        f.write_all_at(b"!", 0).unwrap();
        drop(f);
        let got = read(&r.join("big"));
        assert_eq!(got.len(), want.len());
        assert_eq!(got[0], b'!');
        assert!(got[1..] == want[1..], "copied-up content differs");
    });
    drop(m);
    assert_eq!(read(&fx.lowers[1].join("big")), data);
}

fn parents_are_copied_up_with_their_metadata(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("a/b/c/f", b"x")
        .chown("a", 11, 12)
        .chmod("a", 0o751)
        .chown("a/b", 13, 14)
        .chmod("a/b", 0o700)
        .xattr("a/b", "user.dir", b"d")
        .times("a/b/c", ATIME, MTIME);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::write(r.join("a/b/c/f"), b"y").unwrap();
        let a = lstat(&r.join("a"));
        assert_eq!((a.mode() & 0o7777, a.uid(), a.gid()), (0o751, 11, 12));
        let bb = lstat(&r.join("a/b"));
        assert_eq!((bb.mode() & 0o7777, bb.uid(), bb.gid()), (0o700, 13, 14));
        assert_eq!(get_xattr(&r.join("a/b"), "user.dir"), Ok(b"d".to_vec()));
    });
    drop(m);
    let a = lstat(&fx.upper.join("a"));
    assert_eq!((a.mode() & 0o7777, a.uid(), a.gid()), (0o751, 11, 12));
    let bb = lstat(&fx.upper.join("a/b"));
    assert_eq!((bb.mode() & 0o7777, bb.uid(), bb.gid()), (0o700, 13, 14));
    assert_eq!(
        get_xattr(&fx.upper.join("a/b"), "user.dir"),
        Ok(b"d".to_vec())
    );
    let c = lstat(&fx.upper.join("a/b/c"));
    assert_eq!(
        (c.mtime(), c.mtime_nsec()),
        MTIME,
        "copied-up parent keeps its mtime"
    );
    assert_eq!(read(&fx.upper.join("a/b/c/f")), b"y");
}

fn hard_links_stay_linked_after_copy_up(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("a", b"same inode")
        .hardlink("a", "d/b")
        .hardlink("a", "d/e/c");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let ino = lstat(&r.join("a")).ino();
        let f = OpenOptions::new().write(true).open(r.join("d/b")).unwrap();
        f.write_all_at(b"SAME", 0).unwrap();
        drop(f);
        for p in ["a", "d/b", "d/e/c"] {
            let md = lstat(&r.join(p));
            assert_eq!(read(&r.join(p)), b"SAME inode", "{p}");
            assert_eq!(md.ino(), ino, "{p} inode");
            assert_eq!(md.nlink(), 3, "{p} nlink");
        }
        // A metadata change through another alias is seen by all.
        fs::set_permissions(r.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lstat(&r.join("d/e/c")).mode() & 0o7777, 0o600);
        // Unlinking one alias drops nlink of the others.
        fs::remove_file(r.join("d/e/c")).unwrap();
        assert_eq!(lstat(&r.join("a")).nlink(), 2);
        assert_eq!(lstat(&r.join("d/b")).nlink(), 2);
    });
}

fn hard_links_across_dirs_stay_linked_after_rename_of_one(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("x/a", b"v1")
        .hardlink("x/a", "y/b")
        .file("z", b"z");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let ino = lstat(&r.join("x/a")).ino();
        // An unrelated rename must not change the link count of the lower hard link.
        fs::rename(r.join("z"), r.join("x/z2")).unwrap();
        assert_eq!(lstat(&r.join("y/b")).nlink(), 2);
        fs::rename(r.join("x/a"), r.join("y/a2")).unwrap();
        assert_eq!(lstat(&r.join("y/a2")).ino(), ino);
        assert_eq!(lstat(&r.join("y/a2")).nlink(), 2);
        fs::write(r.join("y/a2"), b"v2").unwrap();
        assert_eq!(read(&r.join("y/b")), b"v2");
        assert_eq!(lstat(&r.join("y/b")).ino(), ino);
    });
}

fn inode_number_unchanged_by_copy_up(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(1)
        .file("d/f", b"x")
        .symlink("d/l", "f")
        .fifo("d/p", 0o644);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let before: Vec<u64> = ["d", "d/f", "d/l", "d/p"]
            .iter()
            .map(|p| lstat(&r.join(p)).ino())
            .collect();
        fs::write(r.join("d/f"), b"changed").unwrap();
        std::os::unix::fs::lchown(r.join("d/l"), Some(5), Some(5)).unwrap();
        fs::set_permissions(r.join("d/p"), fs::Permissions::from_mode(0o600)).unwrap();
        let after: Vec<u64> = ["d", "d/f", "d/l", "d/p"]
            .iter()
            .map(|p| lstat(&r.join(p)).ino())
            .collect();
        assert_eq!(before, after, "inode numbers of d, d/f, d/l, d/p");
        let f = fs::File::open(r.join("d/f")).unwrap();
        assert_eq!(
            f.metadata().unwrap().ino(),
            before[1],
            "fstat of copied-up file"
        );
    });
}

fn open_unlinked_file_reports_nlink_zero(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("low", b"lower");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("low"))
            .unwrap();
        fs::remove_file(r.join("low")).unwrap();
        assert_eq!(
            f.metadata().unwrap().nlink(),
            0,
            "lower file, open then unlinked"
        );
        fs::write(r.join("up"), b"upper").unwrap();
        let g = fs::File::open(r.join("up")).unwrap();
        fs::remove_file(r.join("up")).unwrap();
        assert_eq!(
            g.metadata().unwrap().nlink(),
            0,
            "upper file, open then unlinked"
        );
    });
}

fn open_unlinked_file_still_reads_and_writes(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("low", b"lower");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("low"))
            .unwrap();
        fs::remove_file(r.join("low")).unwrap();
        f.write_all_at(b"LO", 0).unwrap();
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"LOwer");
        assert_errno("gone", fs::symlink_metadata(r.join("low")), libc::ENOENT);
        fs::write(r.join("low"), b"new").unwrap();
        assert_eq!(read(&r.join("low")), b"new");
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"LOwer", "the open file is not the new one");
    });
}

fn chmod_on_lower_file(b: Backend) {
    let fx = Fixture::new(1);
    rich_lower(&fx);
    fx.lower(0).dir_mode("d", 0o755);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o4711)).unwrap();
        let md = lstat(&r.join("f"));
        assert_eq!(md.mode() & 0o7777, 0o4711);
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        assert_eq!((md.mtime(), md.mtime_nsec()), MTIME, "chmod keeps mtime");
        assert_eq!(read(&r.join("f")), b"lower data");
        fs::set_permissions(r.join("d"), fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(lstat(&r.join("d")).mode() & 0o7777, 0o1777);
    });
    drop(m);
    assert_eq!(lstat(&fx.lowers[0].join("f")).mode() & 0o7777, 0o2640);
}

fn chown_on_lower_file_and_symlink(b: Backend) {
    let fx = Fixture::new(1);
    rich_lower(&fx);
    fx.lower(0).symlink("l", "f").dir("d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        std::os::unix::fs::lchown(r.join("f"), Some(4321), Some(8765)).unwrap();
        let md = lstat(&r.join("f"));
        assert_eq!((md.uid(), md.gid()), (4321, 8765));
        assert_eq!(read(&r.join("f")), b"lower data");
        std::os::unix::fs::lchown(r.join("l"), Some(77), Some(88)).unwrap();
        let l = lstat(&r.join("l"));
        assert_eq!((l.uid(), l.gid()), (77, 88));
        assert_eq!(
            fs::read_link(r.join("l")).unwrap(),
            std::path::Path::new("f")
        );
        std::os::unix::fs::lchown(r.join("d"), None, Some(99)).unwrap();
        let d = lstat(&r.join("d"));
        assert_eq!((d.uid(), d.gid()), (0, 99));
        // Only the group changes when only the group is given.
        std::os::unix::fs::lchown(r.join("f"), None, Some(1)).unwrap();
        assert_eq!(
            (lstat(&r.join("f")).uid(), lstat(&r.join("f")).gid()),
            (4321, 1)
        );
    });
    drop(m);
    let lower = lstat(&fx.lowers[0].join("f"));
    assert_eq!((lower.uid(), lower.gid()), (1234, 5678));
}

fn utimens_on_lower_file(b: Backend) {
    let fx = Fixture::new(1);
    rich_lower(&fx);
    fx.lower(0).symlink("l", "f");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        set_times(&r.join("f"), (1_300_000_000, 1), (1_400_000_000, 2));
        let md = lstat(&r.join("f"));
        assert_eq!((md.atime(), md.atime_nsec()), (1_300_000_000, 1));
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_400_000_000, 2));
        assert_eq!(read(&r.join("f")), b"lower data");
        set_times(&r.join("l"), (1_000, 3), (2_000, 4));
        let l = lstat(&r.join("l"));
        assert_eq!((l.mtime(), l.mtime_nsec()), (2_000, 4));
        // UTIME_NOW for both.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            r.join("f"),
            &ts,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        let md = lstat(&r.join("f"));
        assert!(
            (md.mtime() - now).abs() <= 5,
            "UTIME_NOW gave {}",
            md.mtime()
        );
        // UTIME_OMIT leaves that time alone.
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1_234_567_890,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            r.join("f"),
            &ts,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        let after = lstat(&r.join("f"));
        assert_eq!(after.mtime(), 1_234_567_890);
        assert_eq!(
            (after.atime(), after.atime_nsec()),
            (md.atime(), md.atime_nsec())
        );
    });
    drop(m);
    let lower = lstat(&fx.lowers[0].join("f"));
    assert_eq!((lower.mtime(), lower.mtime_nsec()), MTIME);
}

fn setxattr_and_removexattr_on_lower_file(b: Backend) {
    let fx = Fixture::new(1);
    rich_lower(&fx);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let f = r.join("f");
        rustix::fs::lsetxattr(&f, "user.new", b"n", rustix::fs::XattrFlags::empty()).unwrap();
        rustix::fs::lremovexattr(&f, "user.a").unwrap();
        assert_rerrno(
            "remove missing",
            rustix::fs::lremovexattr(&f, "user.never"),
            libc::ENODATA,
        );
        assert_rerrno(
            "XATTR_CREATE on existing",
            rustix::fs::lsetxattr(&f, "user.b", b"x", rustix::fs::XattrFlags::CREATE),
            libc::EEXIST,
        );
        assert_rerrno(
            "XATTR_REPLACE on missing",
            rustix::fs::lsetxattr(&f, "user.zz", b"x", rustix::fs::XattrFlags::REPLACE),
            libc::ENODATA,
        );
        let user: Vec<String> = list_xattrs(&f)
            .into_iter()
            .filter(|n| n.starts_with("user."))
            .collect();
        assert_eq!(user, ["user.b", "user.new"]);
        assert_eq!(get_xattr(&f, "user.new"), Ok(b"n".to_vec()));
        assert_eq!(read(&f), b"lower data");
        assert_eq!((lstat(&f).mtime(), lstat(&f).mtime_nsec()), MTIME);
    });
    drop(m);
    assert_eq!(
        list_xattrs(&fx.lowers[0].join("f")),
        ["trusted.t", "user.a", "user.b"]
    );
}

fn read_only_open_does_not_copy_up(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("d/f", b"x").dir("e");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(read(&r.join("d/f")), b"x");
        let _ = list(&r.join("d"));
        let _ = list(&r.join("e"));
        let _ = get_xattr(&r.join("d/f"), "user.x");
        let _ = list_xattrs(&r.join("d/f"));
        lstat(&r.join("d/f"));
        rustix::fs::access(r.join("d/f"), rustix::fs::Access::READ_OK).unwrap();
    });
    drop(m);
    assert!(
        names(&fx.upper).is_empty(),
        "reads copied something up: {:?}",
        list(&fx.upper)
    );
}

fn copy_up_of_special_files_by_metadata_change(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .fifo("p", 0o644)
        .device("c", false, 1, 5)
        .symlink("s", "target/of/link")
        .times("s", ATIME, MTIME);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::set_permissions(r.join("p"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(r.join("c"), Some(3), Some(4)).unwrap();
        std::os::unix::fs::lchown(r.join("s"), Some(5), Some(6)).unwrap();
        assert_eq!(lstat(&r.join("p")).mode() & 0o7777, 0o600);
        assert_eq!(lstat(&r.join("c")).rdev(), rustix::fs::makedev(1, 5));
        assert_eq!(
            fs::read_link(r.join("s")).unwrap(),
            std::path::Path::new("target/of/link")
        );
    });
    drop(m);
    use std::os::unix::fs::FileTypeExt;
    assert!(lstat(&fx.upper.join("p")).file_type().is_fifo());
    let c = lstat(&fx.upper.join("c"));
    assert!(c.file_type().is_char_device());
    assert_eq!(c.rdev(), rustix::fs::makedev(1, 5));
    assert_eq!((c.uid(), c.gid()), (3, 4));
    let s = lstat(&fx.upper.join("s"));
    assert_eq!(
        fs::read_link(fx.upper.join("s")).unwrap(),
        std::path::Path::new("target/of/link")
    );
    assert_eq!((s.uid(), s.gid()), (5, 6));
    assert_eq!(
        (s.mtime(), s.mtime_nsec()),
        MTIME,
        "symlink copy-up keeps mtime"
    );
}

#[test]
fn copy_up_killed_midway_leaves_old_or_new_content() {
    // kill -9 of the daemon during copy-up (the kernel cannot be killed, so stratafs only):
    // after a remount the file holds the old content or the new, never a partial copy.
    let mut data = vec![0u8; 48 << 20];
    fastrand::Rng::with_seed(5).fill(&mut data);
    let fx = Fixture::new(1);
    fx.lower(0).file("big", &data);
    let mut current = data;
    for delay_ms in [0u64, 10, 40, 80, 120, 160, 220, 400] {
        let mut m = fx.mount(Backend::Stratafs);
        let p = m.path("big");
        let writer = std::thread::spawn(move || {
            let mut f = OpenOptions::new().append(true).open(&p)?;
            f.write_all(b"!")
        });
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        m.abort();
        let res = run_with_deadline(10, move || writer.join());
        eprintln!("kill at {delay_ms}ms: writer got {res:?}");
        drop(m);
        let m = fx.mount(Backend::Stratafs);
        let (got, root) = m.with_timeout(DEADLINE, |r| (read(&r.join("big")), list(&r)));
        drop(m);
        assert_eq!(root, ["big"], "stray entries after kill at {delay_ms}ms");
        let mut appended = current.clone();
        appended.push(b'!');
        assert!(
            got == current || got == appended,
            "partial copy-up visible after kill -9 at {delay_ms}ms: {} bytes (old {}, new {})",
            got.len(),
            current.len(),
            appended.len()
        );
        current = got;
    }
}

fn metadata_change_on_lower_dir_keeps_it_merged(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("d/top", b"t").dir("e");
    fx.lower(1).file("d/bottom", b"b").file("e/below", b"b");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::set_permissions(r.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        rustix::fs::lsetxattr(r.join("e"), "user.x", b"1", rustix::fs::XattrFlags::empty())
            .unwrap();
        set_times(&r.join("e"), ATIME, MTIME);
        assert_eq!(list(&r.join("d")), ["bottom", "top"]);
        assert_eq!(list(&r.join("e")), ["below"]);
        let e = lstat(&r.join("e"));
        assert_eq!((e.mtime(), e.mtime_nsec()), MTIME);
    });
    drop(m);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("d")), ["bottom", "top"]);
        assert_eq!(list(&r.join("e")), ["below"]);
        assert_eq!(lstat(&r.join("d")).mode() & 0o7777, 0o700);
    });
}

fn reopen_after_metadata_copy_up_while_an_fd_is_open(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"lower data");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let old = fs::File::open(r.join("f")).unwrap();
        fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        let new = fs::File::open(r.join("f")).expect("open after chmod while another fd is open");
        let mut buf = [0u8; 5];
        new.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"lower");
        old.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"lower");
        assert_eq!(lstat(&r.join("f")).mode() & 0o7777, 0o600);
    });
}

fn concurrent_copy_up_of_one_file(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("big", &vec![0u8; 4 << 20]);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let p = r.join("big");
                std::thread::spawn(move || {
                    let f = OpenOptions::new().write(true).open(&p).unwrap();
                    f.write_all_at(&[i + 1; 1000], u64::from(i) * 300_000)
                        .unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let data = read(&r.join("big"));
        assert_eq!(data.len(), 4 << 20);
        for i in 0..8u8 {
            let at = usize::from(i) * 300_000;
            assert!(
                data[at..at + 1000].iter().all(|b| *b == i + 1),
                "write {i} lost in concurrent copy-up"
            );
        }
        assert_eq!(lstat(&r.join("big")).nlink(), 1);
    });
}

fn readers_never_see_a_partial_copy_up(b: Backend) {
    let size = 32usize << 20;
    let mut data = vec![0u8; size];
    fastrand::Rng::with_seed(9).fill(&mut data);
    let tail: Vec<u8> = data[size - 16..].to_vec();
    let fx = Fixture::new(1);
    fx.lower(0).file("big", &data);
    drop(data);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        let p = r.join("big");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (p, done, tail) = (p.clone(), done.clone(), tail.clone());
            std::thread::spawn(move || {
                let mut seen = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || seen == 0 {
                    let f = fs::File::open(&p).unwrap();
                    let len = f.metadata().unwrap().len() as usize;
                    assert!(len == size || len == size + 1, "size {len} during copy-up");
                    let mut buf = [0u8; 16];
                    f.read_exact_at(&mut buf, (size - 16) as u64).unwrap();
                    assert_eq!(buf.to_vec(), tail, "tail changed during copy-up");
                    seen += 1;
                    drop(f);
                    // Let go now and then: with passthrough a lower file open for reading
                    // refuses write-opens (ETXTBSY, README "Known differences").
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                seen
            })
        };
        let start = std::time::Instant::now();
        let mut f = loop {
            match OpenOptions::new().append(true).open(&p) {
                Ok(f) => break f,
                Err(e)
                    if b == Backend::Stratafs
                        && e.raw_os_error() == Some(libc::ETXTBSY)
                        && start.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("open for append: {e}"),
            }
        };
        f.write_all(b"!").unwrap();
        drop(f);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
        assert_eq!(lstat(&p).size() as usize, size + 1);
    });
}

/// A `security.capability` v2 value: effective, permitted CAP_NET_RAW (bit 13).
const CAP_NET_RAW_V2: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn file_capabilities_survive_copy_up(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file_mode("ping", b"\x7fELF", 0o755).xattr(
        "ping",
        "security.capability",
        &CAP_NET_RAW_V2,
    );
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let p = r.join("ping");
        assert_eq!(
            get_xattr(&p, "security.capability"),
            Ok(CAP_NET_RAW_V2.to_vec())
        );
        // Copy-up without a write (a write or chown would rightly drop the capability).
        drop(OpenOptions::new().write(true).open(&p).unwrap());
        rustix::fs::lsetxattr(&p, "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap();
        assert_eq!(
            get_xattr(&p, "security.capability"),
            Ok(CAP_NET_RAW_V2.to_vec())
        );
        // A write drops it, as on any filesystem.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"E", 1).unwrap();
        drop(f);
        assert_eq!(get_xattr(&p, "security.capability"), Err(libc::ENODATA));
    });
    drop(m);
    assert_eq!(
        get_xattr(&fx.lowers[0].join("ping"), "security.capability"),
        Ok(CAP_NET_RAW_V2.to_vec())
    );
}

fn setuid_and_setgid_bits_survive_copy_up(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("suid", b"binary")
        .chown("suid", 0, 0)
        .chmod("suid", 0o4755)
        .file("sgid", b"binary")
        .chown("sgid", 0, 50)
        .chmod("sgid", 0o2755)
        .dir("sgid_dir")
        .chmod("sgid_dir", 0o2775)
        .file("sgid_dir/f", b"x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        for p in ["suid", "sgid"] {
            drop(OpenOptions::new().write(true).open(r.join(p)).unwrap());
        }
        fs::write(r.join("sgid_dir/f"), b"y").unwrap();
        assert_eq!(lstat(&r.join("suid")).mode() & 0o7777, 0o4755);
        assert_eq!(lstat(&r.join("sgid")).mode() & 0o7777, 0o2755);
        assert_eq!(lstat(&r.join("sgid_dir")).mode() & 0o7777, 0o2775);
    });
    drop(m);
    assert_eq!(lstat(&fx.upper.join("suid")).mode() & 0o7777, 0o4755);
    assert_eq!(lstat(&fx.upper.join("sgid_dir")).mode() & 0o7777, 0o2775);
}
