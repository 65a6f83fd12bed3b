//! Namespace operations on a mounted union: mkdir, mknod, unlink, rmdir, symlink, link and
//! rename (with RENAME_NOREPLACE and RENAME_EXCHANGE), the whiteouts they leave (never
//! visible), and names: 255 bytes, 256 bytes, non-UTF-8, and trees deeper than PATH_MAX.

mod common;

use std::fs::{self, DirBuilder};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, CWD};

use common::*;

both_backends!(
    link_counts_survive_the_kernel_forgetting_the_inode,
    a_covered_hard_link_counts_after_its_last_known_name_is_replaced,
    rename_exchange_keeps_a_long_listing_whole,
    mkdir_applies_mode_exactly,
    mkdir_0555_then_create_inside_as_root,
    mkdir_existing_is_eexist,
    mkdir_in_lower_dir_and_nlink,
    mknod_fifo_socket_devices_with_exact_mode,
    mknod_existing_is_eexist,
    mknod_of_a_whiteout_device_is_eperm,
    unlink_lower_and_upper_files,
    unlink_errors,
    unlink_then_recreate_shows_new_content,
    rmdir_merged_nonempty_is_enotempty,
    rmdir_after_emptying_merged_dir,
    rmdir_dir_with_only_whited_out_children,
    rmdir_errors,
    rm_rf_then_mkdir_does_not_resurrect_lower_children,
    symlink_create_and_read,
    link_lower_file_shares_inode_and_data,
    link_errors,
    rename_file_to_new_name_and_over_existing,
    rename_noreplace,
    rename_exchange_lower_and_upper_files,
    rename_exchange_missing_target_is_enoent,
    rename_upper_only_dir_moves_children,
    rename_lower_dir_is_exdev_or_moves_whole_subtree,
    rename_type_mismatch_errors,
    rename_over_nonempty_merged_dir_is_enotempty,
    whiteouts_are_never_visible_even_after_remount,
    names_of_252_to_255_bytes_work,
    names_of_256_bytes_are_enametoolong,
    non_utf8_names_are_bytes,
    deep_tree_beyond_path_max_via_openat,
    rename_over_lower_file_then_unlink_does_not_uncover_it,
    rename_away_from_lower_name_then_recreate,
    rename_onto_own_hard_link_is_a_no_op,
    rename_into_opaque_and_whited_out_places,
    unlinking_one_lower_hard_link_keeps_the_others,
    truncate_through_one_lower_hard_link_is_seen_by_all,
    new_entries_in_setgid_dir_inherit_its_group,
);

fn mkdir_applies_mode_exactly(b: Backend) {
    let fx = Fixture::new(1);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        // Requested modes avoid the bits a 022 umask would clear.
        for (name, req, want) in [
            ("a", 0o750, 0o750),
            ("b", 0o700, 0o700),
            ("c", 0o555, 0o555),
            ("d", 0o1755, 0o1755),
            ("e", 0o2755, 0o755), // mkdir ignores S_ISGID in the mode (it is inherited only)
            ("f", 0o000, 0o000),
        ] {
            DirBuilder::new().mode(req).create(r.join(name)).unwrap();
            let md = lstat(&r.join(name));
            assert!(md.is_dir());
            assert_eq!(md.mode() & 0o7777, want, "mkdir {name} mode {req:o}");
        }
    });
}

fn mkdir_0555_then_create_inside_as_root(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).dir("base");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        DirBuilder::new()
            .mode(0o555)
            .create(r.join("base/ro"))
            .unwrap();
        assert_eq!(lstat(&r.join("base/ro")).mode() & 0o7777, 0o555);
        fs::write(r.join("base/ro/f"), b"root may").unwrap();
        DirBuilder::new()
            .mode(0o555)
            .create(r.join("base/ro/sub"))
            .unwrap();
        assert_eq!(list(&r.join("base/ro")), ["f", "sub"]);
        assert_eq!(lstat(&r.join("base/ro")).mode() & 0o7777, 0o555);
    });
}

fn mkdir_existing_is_eexist(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).dir("d").file("f", b"x").symlink("l", "nowhere");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        for name in ["d", "f", "l"] {
            assert_errno(name, fs::create_dir(r.join(name)), libc::EEXIST);
        }
        assert_errno(
            "mkdir in missing",
            fs::create_dir(r.join("no/x")),
            libc::ENOENT,
        );
        assert_errno(
            "mkdir under file",
            fs::create_dir(r.join("f/x")),
            libc::ENOTDIR,
        );
    });
}

fn mkdir_in_lower_dir_and_nlink(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).dir_mode("p", 0o751).chown("p", 7, 8);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::create_dir(r.join("p/new")).unwrap();
        let md = lstat(&r.join("p/new"));
        assert_eq!(md.nlink(), 2);
        let p = lstat(&r.join("p"));
        assert_eq!(p.mode() & 0o7777, 0o751);
        assert_eq!((p.uid(), p.gid()), (7, 8));
    });
    drop(m);
    let up = lstat(&fx.upper.join("p"));
    assert_eq!(up.mode() & 0o7777, 0o751, "copied-up parent keeps its mode");
    assert_eq!(
        (up.uid(), up.gid()),
        (7, 8),
        "copied-up parent keeps its owner"
    );
}

fn mknod_fifo_socket_devices_with_exact_mode(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).dir("d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let cases = [
            ("d/fifo", FileType::Fifo, 0o640, 0),
            ("d/fifo2", FileType::Fifo, 0o604, 0),
            ("d/sock", FileType::Socket, 0o751, 0),
            (
                "d/chr",
                FileType::CharacterDevice,
                0o600,
                rustix::fs::makedev(1, 3),
            ),
            (
                "d/blk",
                FileType::BlockDevice,
                0o640,
                rustix::fs::makedev(7, 0),
            ),
        ];
        for (name, ft, mode, dev) in cases {
            rustix::fs::mknodat(CWD, r.join(name), ft, Mode::from_raw_mode(mode), dev)
                .unwrap_or_else(|e| panic!("mknod {name}: {e}"));
            let md = lstat(&r.join(name));
            assert_eq!(md.mode() & 0o7777, mode, "{name} mode");
            let t = md.file_type();
            let ok = match ft {
                FileType::Fifo => t.is_fifo(),
                FileType::Socket => t.is_socket(),
                FileType::CharacterDevice => t.is_char_device(),
                _ => t.is_block_device(),
            };
            assert!(ok, "{name} has type {t:?}");
            if dev != 0 {
                assert_eq!(md.rdev(), dev, "{name} rdev");
            }
            assert_eq!(md.nlink(), 1);
        }
        assert_eq!(list(&r.join("d")), ["blk", "chr", "fifo", "fifo2", "sock"]);
    });
}

fn mknod_existing_is_eexist(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_rerrno(
            "mkfifo over file",
            rustix::fs::mknodat(
                CWD,
                r.join("f"),
                FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            ),
            libc::EEXIST,
        );
    });
}

/// A 0/0 character device is a whiteout on disk: making one through the mount would hide the
/// name (and a lower file of that name) at the next mount, so the kernel refuses it.
fn mknod_of_a_whiteout_device_is_eperm(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("gone", b"lower").dir("d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let whiteout = |p: &Path| {
            rustix::fs::mknodat(
                CWD,
                p,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o644),
                0,
            )
        };
        assert_rerrno("mknod d/new c 0 0", whiteout(&r.join("d/new")), libc::EPERM);
        assert!(fs::symlink_metadata(r.join("d/new")).is_err());
        fs::remove_file(r.join("gone")).unwrap();
        assert_rerrno("mknod gone c 0 0", whiteout(&r.join("gone")), libc::EPERM);
        assert!(fs::symlink_metadata(r.join("gone")).is_err());
        // Other device numbers, and a 0/0 block device, are ordinary nodes.
        rustix::fs::mknodat(
            CWD,
            r.join("d/blk"),
            FileType::BlockDevice,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(lstat(&r.join("d/blk")).file_type().is_block_device());
        assert_eq!(list(&r.join("d")), ["blk"]);
    });
}

fn unlink_lower_and_upper_files(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("d/top", b"t");
    fx.lower(1).file("d/bottom", b"b").file("d/both", b"1");
    fx.lower(0).file("d/both", b"0");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::write(r.join("d/mine"), b"m").unwrap();
        for name in ["top", "bottom", "both", "mine"] {
            fs::remove_file(r.join("d").join(name)).unwrap();
            assert_errno(
                name,
                fs::symlink_metadata(r.join("d").join(name)),
                libc::ENOENT,
            );
        }
        assert!(list(&r.join("d")).is_empty());
    });
    drop(m);
    assert_eq!(read(&fx.lowers[1].join("d/bottom")), b"b");
    assert_eq!(read(&fx.lowers[0].join("d/top")), b"t");
}

fn unlink_errors(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).dir("d").whiteout("hidden");
    fx.lower(1).file("hidden", b"h");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno(
            "unlink missing",
            fs::remove_file(r.join("nope")),
            libc::ENOENT,
        );
        assert_errno(
            "unlink whited out",
            fs::remove_file(r.join("hidden")),
            libc::ENOENT,
        );
        assert_errno("unlink dir", fs::remove_file(r.join("d")), libc::EISDIR);
    });
}

fn unlink_then_recreate_shows_new_content(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file_mode("f", b"old content", 0o600)
        .xattr("f", "user.old", b"1");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::remove_file(r.join("f")).unwrap();
        fs::write(r.join("f"), b"new").unwrap();
        assert_eq!(read(&r.join("f")), b"new");
        assert_eq!(get_xattr(&r.join("f"), "user.old"), Err(libc::ENODATA));
        assert_eq!(lstat(&r.join("f")).mode() & 0o7777, 0o644);
    });
}

fn rmdir_merged_nonempty_is_enotempty(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).dir("d");
    fx.lower(1).file("d/child", b"c").dir("e/sub");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno("rmdir d", fs::remove_dir(r.join("d")), libc::ENOTEMPTY);
        assert_errno("rmdir e", fs::remove_dir(r.join("e")), libc::ENOTEMPTY);
        assert_eq!(list(&r.join("d")), ["child"]);
    });
}

fn rmdir_after_emptying_merged_dir(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("d/a", b"a");
    fx.lower(1).file("d/b", b"b");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::remove_file(r.join("d/a")).unwrap();
        fs::remove_file(r.join("d/b")).unwrap();
        fs::remove_dir(r.join("d")).unwrap();
        assert_errno("stat d", fs::symlink_metadata(r.join("d")), libc::ENOENT);
        assert!(list(&r).is_empty());
    });
}

fn rmdir_dir_with_only_whited_out_children(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).dir("d").whiteout("d/x").whiteout("d/y");
    fx.lower(1).file("d/x", b"x").dir("d/y");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert!(list(&r.join("d")).is_empty());
        fs::remove_dir(r.join("d")).unwrap();
        assert!(list(&r).is_empty());
    });
}

fn rmdir_errors(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno("rmdir file", fs::remove_dir(r.join("f")), libc::ENOTDIR);
        assert_errno(
            "rmdir missing",
            fs::remove_dir(r.join("nope")),
            libc::ENOENT,
        );
    });
}

fn rm_rf_then_mkdir_does_not_resurrect_lower_children(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("D/top", b"t").file("D/sub/deep", b"d");
    fx.lower(1)
        .file("D/bottom", b"b")
        .file("D/sub/deeper/x", b"x")
        .symlink("D/link", "bottom");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        // Warm the caches first: a stale lookup cache is exactly the bug this guards.
        for p in [
            "D/top",
            "D/bottom",
            "D/sub/deep",
            "D/sub/deeper/x",
            "D/link",
        ] {
            lstat(&r.join(p));
        }
        let _ = list(&r.join("D"));
        fs::remove_dir_all(r.join("D")).unwrap();
        fs::create_dir(r.join("D")).unwrap();
        assert!(
            list(&r.join("D")).is_empty(),
            "readdir of new D: {:?}",
            list(&r.join("D"))
        );
        for p in ["D/top", "D/bottom", "D/sub", "D/sub/deep", "D/link"] {
            assert_errno(p, fs::symlink_metadata(r.join(p)), libc::ENOENT);
        }
        fs::create_dir(r.join("D/sub")).unwrap();
        assert!(list(&r.join("D/sub")).is_empty());
        assert_errno(
            "D/sub/deep",
            fs::symlink_metadata(r.join("D/sub/deep")),
            libc::ENOENT,
        );
        fs::write(r.join("D/new"), b"n").unwrap();
        assert_eq!(list(&r.join("D")), ["new", "sub"]);
    });
    drop(m);
    // A fresh mount of the same layers shows the same thing.
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("D")), ["new", "sub"]);
        assert!(list(&r.join("D/sub")).is_empty());
    });
}

fn symlink_create_and_read(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("d/target", b"T");
    let long = long_name('s', 300);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        std::os::unix::fs::symlink("target", r.join("d/rel")).unwrap();
        std::os::unix::fs::symlink(&long, r.join("d/long")).unwrap();
        std::os::unix::fs::symlink("/abs/path", r.join("abs")).unwrap();
        assert_eq!(fs::read_link(r.join("d/rel")).unwrap(), Path::new("target"));
        assert_eq!(fs::read_link(r.join("d/long")).unwrap(), Path::new(&long));
        assert_eq!(
            fs::read_link(r.join("abs")).unwrap(),
            Path::new("/abs/path")
        );
        let md = lstat(&r.join("d/rel"));
        assert!(md.file_type().is_symlink());
        assert_eq!(md.size(), 6);
        assert_eq!(md.mode() & 0o777, 0o777);
        assert_eq!(read(&r.join("d/rel")), b"T");
        assert_errno(
            "symlink over existing",
            std::os::unix::fs::symlink("x", r.join("d/target")),
            libc::EEXIST,
        );
    });
}

fn link_lower_file_shares_inode_and_data(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("d/f", b"shared");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let ino = lstat(&r.join("d/f")).ino();
        fs::hard_link(r.join("d/f"), r.join("g")).unwrap();
        let (f, g) = (lstat(&r.join("d/f")), lstat(&r.join("g")));
        assert_eq!(f.ino(), g.ino());
        assert_eq!(f.ino(), ino, "link must not change the inode number");
        assert_eq!((f.nlink(), g.nlink()), (2, 2));
        fs::write(r.join("g"), b"changed via g").unwrap();
        assert_eq!(read(&r.join("d/f")), b"changed via g");
        fs::write(r.join("own"), b"o").unwrap();
        fs::hard_link(r.join("own"), r.join("d/own2")).unwrap();
        assert_eq!(lstat(&r.join("own")).nlink(), 2);
        fs::remove_file(r.join("own")).unwrap();
        assert_eq!(lstat(&r.join("d/own2")).nlink(), 1);
        fs::remove_file(r.join("g")).unwrap();
        assert_eq!(lstat(&r.join("d/f")).nlink(), 1);
    });
    drop(m);
    assert_eq!(read(&fx.lowers[0].join("d/f")), b"shared");
}

fn link_errors(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x").file("g", b"y").dir("d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno(
            "link to existing",
            fs::hard_link(r.join("f"), r.join("g")),
            libc::EEXIST,
        );
        assert_errno(
            "link dir",
            fs::hard_link(r.join("d"), r.join("d2")),
            libc::EPERM,
        );
        assert_errno(
            "link missing",
            fs::hard_link(r.join("nope"), r.join("n2")),
            libc::ENOENT,
        );
    });
}

fn rename_file_to_new_name_and_over_existing(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("a", b"A").dir("d");
    fx.lower(1).file("b", b"B").file("c", b"C");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let ino_a = lstat(&r.join("a")).ino();
        fs::rename(r.join("a"), r.join("d/a2")).unwrap();
        assert_errno("old name", fs::symlink_metadata(r.join("a")), libc::ENOENT);
        assert_eq!(read(&r.join("d/a2")), b"A");
        assert_eq!(
            lstat(&r.join("d/a2")).ino(),
            ino_a,
            "rename keeps the inode number"
        );
        fs::rename(r.join("b"), r.join("c")).unwrap();
        assert_eq!(read(&r.join("c")), b"B");
        assert_eq!(list(&r), ["c", "d"]);
        // Renaming onto itself (or another link to it) is a no-op.
        fs::rename(r.join("c"), r.join("c")).unwrap();
        assert_eq!(read(&r.join("c")), b"B");
        // Back onto the freed name.
        fs::rename(r.join("d/a2"), r.join("a")).unwrap();
        assert_eq!(list(&r), ["a", "c", "d"]);
        assert!(list(&r.join("d")).is_empty());
    });
}

fn rename_noreplace(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", b"A").file("b", b"B");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_rerrno(
            "NOREPLACE onto existing",
            rustix::fs::renameat_with(CWD, r.join("a"), CWD, r.join("b"), RenameFlags::NOREPLACE),
            libc::EEXIST,
        );
        assert_eq!(read(&r.join("a")), b"A");
        assert_eq!(read(&r.join("b")), b"B");
        rustix::fs::renameat_with(CWD, r.join("a"), CWD, r.join("c"), RenameFlags::NOREPLACE)
            .unwrap();
        assert_eq!(list(&r), ["b", "c"]);
        // A whited-out name is free for NOREPLACE.
        fs::remove_file(r.join("b")).unwrap();
        rustix::fs::renameat_with(CWD, r.join("c"), CWD, r.join("b"), RenameFlags::NOREPLACE)
            .unwrap();
        assert_eq!(read(&r.join("b")), b"A");
        assert_eq!(list(&r), ["b"]);
    });
}

fn rename_exchange_lower_and_upper_files(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("low", b"lower")
        .file("low2", b"lower2")
        .dir("d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::write(r.join("d/up"), b"upper").unwrap();
        let (il, iu) = (lstat(&r.join("low")).ino(), lstat(&r.join("d/up")).ino());
        rustix::fs::renameat_with(
            CWD,
            r.join("low"),
            CWD,
            r.join("d/up"),
            RenameFlags::EXCHANGE,
        )
        .unwrap();
        assert_eq!(read(&r.join("low")), b"upper");
        assert_eq!(read(&r.join("d/up")), b"lower");
        assert_eq!(lstat(&r.join("low")).ino(), iu);
        assert_eq!(lstat(&r.join("d/up")).ino(), il);
        // Two lower files.
        rustix::fs::renameat_with(
            CWD,
            r.join("low"),
            CWD,
            r.join("low2"),
            RenameFlags::EXCHANGE,
        )
        .unwrap();
        assert_eq!(read(&r.join("low")), b"lower2");
        assert_eq!(read(&r.join("low2")), b"upper");
        assert_eq!(list(&r), ["d", "low", "low2"]);
        assert_eq!(list(&r.join("d")), ["up"]);
    });
}

fn rename_exchange_missing_target_is_enoent(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", b"A");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_rerrno(
            "EXCHANGE with missing",
            rustix::fs::renameat_with(CWD, r.join("a"), CWD, r.join("z"), RenameFlags::EXCHANGE),
            libc::ENOENT,
        );
        assert_rerrno(
            "NOREPLACE|EXCHANGE",
            rustix::fs::renameat_with(
                CWD,
                r.join("a"),
                CWD,
                r.join("a"),
                RenameFlags::EXCHANGE | RenameFlags::NOREPLACE,
            ),
            libc::EINVAL,
        );
        assert_eq!(list(&r), ["a"]);
    });
}

fn rename_upper_only_dir_moves_children(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).dir("dest");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::create_dir_all(r.join("src/sub")).unwrap();
        fs::write(r.join("src/sub/f"), b"f").unwrap();
        fs::rename(r.join("src"), r.join("dest/moved")).unwrap();
        assert_eq!(read(&r.join("dest/moved/sub/f")), b"f");
        assert_errno("old", fs::symlink_metadata(r.join("src")), libc::ENOENT);
        assert_eq!(list(&r), ["dest"]);
    });
}

fn rename_lower_dir_is_exdev_or_moves_whole_subtree(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("ld/top", b"t");
    fx.lower(1)
        .file("ld/bottom", b"b")
        .file("ld/sub/deep", b"d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        let before = snapshot(&r.join("ld"));
        match fs::rename(r.join("ld"), r.join("moved")) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                assert_eq!(
                    snapshot(&r.join("ld")),
                    before,
                    "failed rename changed the tree"
                );
                assert_errno("moved", fs::symlink_metadata(r.join("moved")), libc::ENOENT);
            }
            Err(e) => panic!("rename of a lower dir: expected EXDEV or success, got {e}"),
            Ok(()) => {
                assert!(
                    b != Backend::Kernel,
                    "kernel with redirect_dir=off must say EXDEV"
                );
                assert_errno("old", fs::symlink_metadata(r.join("ld")), libc::ENOENT);
                assert_same_tree("moved subtree", &before, &snapshot(&r.join("moved")));
                // The old lower children must not come back under the old name.
                fs::create_dir(r.join("ld")).unwrap();
                assert!(list(&r.join("ld")).is_empty());
            }
        }
    });
}

fn rename_type_mismatch_errors(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x").dir("d").dir("e");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::create_dir(r.join("mine")).unwrap();
        assert_errno(
            "dir onto file",
            fs::rename(r.join("mine"), r.join("f")),
            libc::ENOTDIR,
        );
        assert_errno(
            "file onto dir",
            fs::rename(r.join("f"), r.join("d")),
            libc::EISDIR,
        );
        assert_errno(
            "missing source",
            fs::rename(r.join("nope"), r.join("x")),
            libc::ENOENT,
        );
        assert_errno(
            "dir into itself",
            fs::rename(r.join("mine"), r.join("mine/sub")),
            libc::EINVAL,
        );
        assert_eq!(list(&r), ["d", "e", "f", "mine"]);
    });
}

fn rename_over_nonempty_merged_dir_is_enotempty(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("full/child", b"c").dir("empty_lower");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::create_dir(r.join("mine")).unwrap();
        fs::write(r.join("mine/x"), b"x").unwrap();
        assert_errno(
            "onto nonempty",
            fs::rename(r.join("mine"), r.join("full")),
            libc::ENOTEMPTY,
        );
        // Onto an empty lower dir works, and the result holds only what was moved.
        fs::rename(r.join("mine"), r.join("empty_lower")).unwrap();
        assert_eq!(list(&r.join("empty_lower")), ["x"]);
        // Onto a merged dir emptied through the mount works too.
        fs::create_dir(r.join("mine2")).unwrap();
        fs::remove_file(r.join("full/child")).unwrap();
        fs::rename(r.join("mine2"), r.join("full")).unwrap();
        assert!(list(&r.join("full")).is_empty());
        assert_errno(
            "child",
            fs::symlink_metadata(r.join("full/child")),
            libc::ENOENT,
        );
    });
}

fn whiteouts_are_never_visible_even_after_remount(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("a", b"a").file("d/x", b"x");
    fx.lower(1)
        .file("b", b"b")
        .file("e/y", b"y")
        .file("keep", b"k");
    let check = |r: std::path::PathBuf| {
        assert_eq!(list(&r), ["keep"]);
        for e in fs::read_dir(&r).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            assert!(!t.is_char_device(), "whiteout listed: {:?}", e.file_name());
            assert!(!e.file_name().as_bytes().starts_with(b".wh."));
        }
        for p in ["a", "b", "d", "e", "d/x"] {
            assert_errno(p, fs::symlink_metadata(r.join(p)), libc::ENOENT);
        }
    };
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        for p in ["a", "b"] {
            fs::remove_file(r.join(p)).unwrap();
        }
        fs::remove_dir_all(r.join("d")).unwrap();
        fs::remove_dir_all(r.join("e")).unwrap();
        check(r);
    });
    drop(m);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, check);
}

fn names_of_252_to_255_bytes_work(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file(long_name('L', 255), b"lower255");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let l255 = long_name('L', 255);
        assert_eq!(read(&r.join(&l255)), b"lower255");
        for n in 252..=255 {
            let f = long_name('f', n);
            let d = long_name('d', n);
            let s = long_name('s', n);
            fs::write(r.join(&f), b"x").unwrap_or_else(|e| panic!("create {n}: {e}"));
            fs::create_dir(r.join(&d)).unwrap_or_else(|e| panic!("mkdir {n}: {e}"));
            std::os::unix::fs::symlink(&f, r.join(&s)).unwrap();
            assert_eq!(read(&r.join(&s)), b"x");
            fs::write(r.join(&d).join(&f), b"nested").unwrap();
            assert_eq!(read(&r.join(&d).join(&f)), b"nested");
        }
        let listed = list(&r);
        assert_eq!(listed.len(), 13);
        assert!(listed.contains(&l255));
        // Whiteout with a 255-byte name, and rename to a 255-byte name.
        fs::remove_file(r.join(&l255)).unwrap();
        assert_errno("removed", fs::symlink_metadata(r.join(&l255)), libc::ENOENT);
        fs::rename(r.join(long_name('f', 252)), r.join(&l255)).unwrap();
        assert_eq!(read(&r.join(&l255)), b"x");
    });
}

fn names_of_256_bytes_are_enametoolong(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let n = long_name('n', 256);
        let p = r.join(&n);
        assert_errno("stat", fs::symlink_metadata(&p), libc::ENAMETOOLONG);
        assert_errno("create", fs::write(&p, b"x"), libc::ENAMETOOLONG);
        assert_errno("mkdir", fs::create_dir(&p), libc::ENAMETOOLONG);
        assert_errno(
            "symlink",
            std::os::unix::fs::symlink("f", &p),
            libc::ENAMETOOLONG,
        );
        assert_errno("link", fs::hard_link(r.join("f"), &p), libc::ENAMETOOLONG);
        assert_errno("rename", fs::rename(r.join("f"), &p), libc::ENAMETOOLONG);
        assert_errno("unlink", fs::remove_file(&p), libc::ENAMETOOLONG);
        assert_eq!(list(&r), ["f"]);
    });
}

fn non_utf8_names_are_bytes(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file(bpath(b"caf\xe9"), b"latin1")
        .file(bpath(b"\xff\xfe/inner\x80"), b"deep");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(names(&r), [b"caf\xe9".to_vec(), b"\xff\xfe".to_vec()]);
        assert_eq!(read(&r.join(bpath(b"caf\xe9"))), b"latin1");
        assert_eq!(read(&r.join(bpath(b"\xff\xfe/inner\x80"))), b"deep");
        fs::write(r.join(bpath(b"new\x80\x81")), b"n").unwrap();
        fs::rename(r.join(bpath(b"caf\xe9")), r.join(bpath(b"\xc3\x28"))).unwrap();
        fs::remove_file(r.join(bpath(b"\xff\xfe/inner\x80"))).unwrap();
        assert_eq!(
            names(&r),
            [
                b"new\x80\x81".to_vec(),
                b"\xc3\x28".to_vec(),
                b"\xff\xfe".to_vec()
            ]
        );
        assert!(names(&r.join(bpath(b"\xff\xfe"))).is_empty());
    });
}

const DEEP_LEVELS: usize = 24;
// The tree must be deeper than PATH_MAX (4096) for the test to mean anything.
const _: () = assert!(DEEP_LEVELS * 201 > 4096);

fn deep_component(i: usize) -> String {
    format!("{i:03}{}", long_name('z', 197))
}

/// Opens (creating as needed) the chain of directories below `root`, relative at each step.
fn deep_dir(root: &Path, create: bool) -> OwnedFd {
    let mut fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for i in 0..DEEP_LEVELS {
        let name = deep_component(i);
        if create {
            match rustix::fs::mkdirat(&fd, &name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => panic!("mkdirat level {i}: {e}"),
            }
        }
        fd = rustix::fs::openat(
            &fd,
            &name,
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("openat level {i}: {e}"));
    }
    fd
}

fn write_at(dir: &OwnedFd, name: &str, data: &[u8]) {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&fd, data).unwrap();
}

fn read_at(dir: &OwnedFd, name: &str) -> Vec<u8> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY, Mode::empty()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = rustix::io::read(&fd, &mut buf[..]).unwrap();
    buf.truncate(n);
    buf
}

fn deep_tree_beyond_path_max_via_openat(b: Backend) {
    let fx = Fixture::new(1);
    {
        let lower_bottom = deep_dir(&fx.lowers[0], true);
        write_at(&lower_bottom, "lowerfile", b"from lower");
    }
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let bottom = deep_dir(&r, false);
        assert_eq!(read_at(&bottom, "lowerfile"), b"from lower");
        // Writing copies up the whole chain of parents, deeper than PATH_MAX.
        write_at(&bottom, "lowerfile", b"rewritten");
        write_at(&bottom, "newfile", b"new");
        assert_eq!(read_at(&bottom, "lowerfile"), b"rewritten");
        rustix::fs::mkdirat(&bottom, "sub", Mode::from_raw_mode(0o700)).unwrap();
        let st = rustix::fs::statat(&bottom, "sub", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o700);
        rustix::fs::renameat(&bottom, "newfile", &bottom, "sub/renamed").unwrap();
        rustix::fs::unlinkat(&bottom, "lowerfile", AtFlags::empty()).unwrap();
        assert_rerrno(
            "unlinked",
            rustix::fs::statat(&bottom, "lowerfile", AtFlags::SYMLINK_NOFOLLOW),
            libc::ENOENT,
        );
        assert_eq!(read_at(&bottom, "sub/renamed"), b"new");
        // A fresh walk from the root agrees.
        let again = deep_dir(&r, false);
        assert_eq!(read_at(&again, "sub/renamed"), b"new");
    });
    drop(m);
    let lower_bottom = deep_dir(&fx.lowers[0], false);
    assert_eq!(read_at(&lower_bottom, "lowerfile"), b"from lower");
}

fn rename_over_lower_file_then_unlink_does_not_uncover_it(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("t", b"top");
    fx.lower(1).file("t", b"bottom");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::write(r.join("n"), b"new").unwrap();
        fs::rename(r.join("n"), r.join("t")).unwrap();
        assert_eq!(read(&r.join("t")), b"new");
        fs::remove_file(r.join("t")).unwrap();
        assert_errno("t", fs::symlink_metadata(r.join("t")), libc::ENOENT);
        assert!(list(&r).is_empty());
    });
}

fn rename_away_from_lower_name_then_recreate(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", b"lower a").file("d/x", b"x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::rename(r.join("a"), r.join("b")).unwrap();
        assert_errno(
            "a after rename",
            fs::symlink_metadata(r.join("a")),
            libc::ENOENT,
        );
        fs::write(r.join("a"), b"fresh").unwrap();
        assert_eq!(read(&r.join("a")), b"fresh");
        assert_eq!(read(&r.join("b")), b"lower a");
        fs::rename(r.join("d/x"), r.join("x")).unwrap();
        assert!(list(&r.join("d")).is_empty());
        fs::remove_dir(r.join("d")).unwrap();
        assert_eq!(list(&r), ["a", "b", "x"]);
    });
}

fn rename_onto_own_hard_link_is_a_no_op(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", b"linked").hardlink("a", "b");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::rename(r.join("a"), r.join("b")).unwrap();
        assert_eq!(
            list(&r),
            ["a", "b"],
            "rename onto a hard link of itself must do nothing"
        );
        assert_eq!(lstat(&r.join("a")).nlink(), 2);
    });
}

fn rename_into_opaque_and_whited_out_places(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0)
        .opaque_trusted("o")
        .whiteout("gone")
        .file("f", b"f")
        .file("g", b"g");
    fx.lower(1).file("o/hidden", b"h").file("gone", b"old");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::rename(r.join("f"), r.join("o/hidden")).unwrap();
        assert_eq!(list(&r.join("o")), ["hidden"]);
        assert_eq!(read(&r.join("o/hidden")), b"f");
        fs::rename(r.join("g"), r.join("gone")).unwrap();
        assert_eq!(read(&r.join("gone")), b"g");
        fs::remove_file(r.join("o/hidden")).unwrap();
        assert!(list(&r.join("o")).is_empty());
        assert_eq!(list(&r), ["gone", "o"]);
    });
}

fn unlinking_one_lower_hard_link_keeps_the_others(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("hl/a", b"A")
        .hardlink("hl/a", "hl/b")
        .hardlink("hl/a", "other/c");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(lstat(&r.join("hl/a")).nlink(), 3);
        fs::remove_file(r.join("hl/b")).unwrap();
        assert_eq!(
            lstat(&r.join("hl/a")).nlink(),
            2,
            "hl/a after unlinking hl/b"
        );
        assert_eq!(
            lstat(&r.join("other/c")).nlink(),
            2,
            "other/c after unlinking hl/b"
        );
        assert_eq!(read(&r.join("hl/a")), b"A");
        assert_eq!(list(&r.join("hl")), ["a"]);
        fs::remove_file(r.join("other/c")).unwrap();
        assert_eq!(lstat(&r.join("hl/a")).nlink(), 1);
    });
    drop(m);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("hl")), ["a"]);
        assert!(list(&r.join("other")).is_empty());
        assert_eq!(read(&r.join("hl/a")), b"A");
    });
}

fn truncate_through_one_lower_hard_link_is_seen_by_all(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("hl/a", b"0123456789")
        .hardlink("hl/a", "other/c");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(lstat(&r.join("hl/a")).size(), 10);
        truncate_path(&r.join("other/c"), 3).unwrap();
        assert_eq!(read(&r.join("hl/a")), b"012");
        let (a, c) = (lstat(&r.join("hl/a")), lstat(&r.join("other/c")));
        assert_eq!((a.size(), a.nlink(), a.ino()), (3, 2, c.ino()));
    });
}

fn new_entries_in_setgid_dir_inherit_its_group(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .dir("shared")
        .chown("shared", 0, 50)
        .chmod("shared", 0o2775);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        fs::write(r.join("shared/f"), b"x").unwrap();
        fs::create_dir(r.join("shared/d")).unwrap();
        rustix::fs::mknodat(
            CWD,
            r.join("shared/p"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        std::os::unix::fs::symlink("f", r.join("shared/l")).unwrap();
        for p in ["f", "d", "p", "l"] {
            assert_eq!(
                lstat(&r.join("shared").join(p)).gid(),
                50,
                "group of shared/{p}"
            );
        }
        assert_eq!(
            lstat(&r.join("shared/d")).mode() & 0o7777,
            0o2755,
            "a new dir inherits S_ISGID"
        );
    });
}

/// A directory longer than one READDIR reply (1,024 entries), listed after names swapped
/// places: every name once, none lost where the listing resumes.
fn rename_exchange_keeps_a_long_listing_whole(b: Backend) {
    let fx = Fixture::new(1);
    for i in 0..1500 {
        fx.lower(0).file(format!("d/f{i:04}"), b"");
    }
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let d = r.join("d");
        for (a, z) in [("f0000", "f1499"), ("f0001", "f1200"), ("f0700", "f0002")] {
            rustix::fs::renameat_with(CWD, d.join(a), CWD, d.join(z), RenameFlags::EXCHANGE)
                .unwrap();
        }
        fs::write(d.join("new"), b"").unwrap();
        let names = list(&d);
        let mut want: Vec<String> = (0..1500).map(|i| format!("f{i:04}")).collect();
        want.push("new".into());
        want.sort();
        assert_eq!(names.len(), want.len(), "every name once");
        assert_eq!(names, want);
    });
}

/// A lower hard link's count as the union shows it (names removed through the mount, names
/// linked at copy-up) is kept by the daemon, not on disk: it must not change when memory
/// pressure makes the kernel forget the inode and look it up again.
fn link_counts_survive_the_kernel_forgetting_the_inode(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("d/a", b"data");
    fx.lower(0).hardlink("d/a", "d/b");
    fx.lower(0).hardlink("d/a", "d/c");
    fx.lower(0).file("e/x", b"x");
    fx.lower(0).hardlink("e/x", "e/y");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let nlink = |p: &str| fs::symlink_metadata(r.join(p)).unwrap().nlink();
        // A lower name removed: 3 names left of 3... then 2.
        fs::remove_file(r.join("d/c")).unwrap();
        assert_eq!(nlink("d/a"), 2);
        // A copy-up of a lower link whose other name is gone.
        fs::remove_file(r.join("e/y")).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(r.join("e/x"))
            .unwrap()
            .write_all_at(b"!", 4)
            .unwrap();
        assert_eq!(nlink("e/x"), 1);
        for _ in 0..3 {
            fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
            assert_eq!(nlink("d/a"), 2, "d/a after the kernel forgot it");
            assert_eq!(nlink("d/b"), 2, "d/b after the kernel forgot it");
            assert_eq!(nlink("e/x"), 1, "e/x after the kernel forgot it");
        }
    });
}

/// A lower hard link with a name covered by a higher layer is copied up: the union count (the
/// lower one, covered name included) carries over. Then, with the kernel forgetting inodes
/// between steps, the one name the daemon knew is replaced by a rename: the object lives on
/// under its other name, which must still count the covered name (found by the differential
/// test under memory pressure, seed 15).
fn a_covered_hard_link_counts_after_its_last_known_name_is_replaced(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(1).file("d/x", b"data");
    fx.lower(1).hardlink("d/x", "d/y");
    fx.lower(1).hardlink("d/x", "d/z");
    fx.lower(0).file("d/z", b"covers z");
    fx.lower(0).file("other", b"other");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let nlink = |p: &str| fs::symlink_metadata(r.join(p)).unwrap().nlink();
        let forget = || fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(r.join("d/x"))
            .unwrap()
            .write_all_at(b"!", 4)
            .unwrap();
        assert_eq!(nlink("d/x"), 3, "copied up: the covered name still counts");
        forget();
        assert_eq!(nlink("d/y"), 3);
        forget();
        fs::rename(r.join("other"), r.join("d/x")).unwrap();
        forget();
        assert_eq!(nlink("d/y"), 2, "d/y after its link d/x was replaced");
        assert_eq!(fs::read(r.join("d/y")).unwrap(), b"data!");
        forget();
        fs::remove_file(r.join("d/y")).unwrap();
        forget();
        assert_eq!(fs::read(r.join("d/x")).unwrap(), b"other");
        assert_eq!(nlink("d/x"), 1);
    });
}

/// `rm -rf` of a lower tree: every directory it removes is copied up, filled with whiteouts,
/// then swapped for a whiteout and left in the work directory for a background thread to
/// empty. The tree is gone at once, the upper layer holds one whiteout for it, and the work
/// directory is empty again: while mounted, and after the daemon ended (it waits for the
/// queue on its way out).
#[test]
fn rm_rf_of_a_lower_tree_empties_the_work_dir() {
    need_root!();
    let fx = Fixture::new(1);
    let l = fx.lower(0);
    for d in 0..8 {
        for f in 0..60 {
            l.file(format!("t/d{d}/f{f}"), b"x");
        }
    }
    let scratch = fx.work.join("work");
    let m = fx.mount(Backend::Stratafs);
    m.with_timeout(DEADLINE, |r| {
        fs::remove_dir_all(r.join("t")).unwrap();
        assert!(list(&r).is_empty());
    });
    let leftovers = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "#strata-whiteout")
            .collect()
    };
    let start = std::time::Instant::now();
    while !leftovers(&scratch).is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "left in the work dir: {:?}",
            leftovers(&scratch)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = m.unmount().expect("the daemon exits");
    assert!(status.success(), "{status}");
    assert!(
        fs::read_dir(&scratch).unwrap().next().is_none(),
        "the work dir is empty after unmount"
    );
    let t = fs::symlink_metadata(fx.upper.join("t")).unwrap();
    assert!(t.file_type().is_char_device() && t.rdev() == 0, "{t:?}");
}
