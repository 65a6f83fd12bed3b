//! Read-side operations on a mounted union: lookup, getattr, readdir, readlink, statfs, xattr
//! reads, and the hiding done by whiteouts and opaque directories, in every on-disk form.
//!
//! Each `fn name(b: Backend)` runs as `name::kernel` and `name::stratafs`; the kernel run proves
//! the expectation, the stratafs run checks our daemon against it.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::*;

both_backends!(
    top_layer_wins,
    dirs_merge_across_layers,
    readdir_lists_each_name_once_with_types,
    getattr_reports_lower_attributes,
    upper_file_shadows_lower,
    non_dir_above_dir_hides_its_children,
    readlink_returns_exact_targets,
    reads_large_file_at_offsets,
    hard_links_in_lower_share_inode,
    inode_numbers_are_stable,
    statfs_reports_sane_values,
    user_xattrs_are_readable,
    private_overlay_xattrs_are_hidden,
    chardev_whiteout_in_lower_hides_below,
    chardev_whiteout_in_upper_hides_lower,
    whiteout_hides_whole_directory,
    trusted_opaque_dir_hides_lower_children,
    opaque_dir_in_middle_layer_still_shows_layers_above,
    missing_names_give_enoent,
    lookup_through_file_gives_enotdir,
    special_files_in_lower_keep_type_and_rdev,
    statfs_reports_the_upper_filesystem,
    readdir_offsets_stay_stable_while_entries_change,
    deleting_each_entry_as_it_is_read_empties_the_directory,
    dot_and_dotdot_resolve,
    private_overlay_xattrs_cannot_be_set_through_the_mount,
    user_xattrs_on_symlinks_are_eperm,
    block_counts_match_the_lower_file,
    permissions_are_checked_for_unprivileged_callers,
    large_merged_directory_lists_every_name_once,
    posix_acls_are_visible_and_enforced,
    access_checks_follow_the_mode,
    readdir_resumes_at_a_saved_offset,
);

fn top_layer_wins(b: Backend) {
    let fx = Fixture::new(3);
    fx.lower(0).file("a", b"top");
    fx.lower(1).file("a", b"middle").file("b", b"middle-b");
    fx.lower(2)
        .file("a", b"bottom")
        .file("b", b"bottom-b")
        .file("c", b"bottom-c");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(read(&r.join("a")), b"top");
        assert_eq!(read(&r.join("b")), b"middle-b");
        assert_eq!(read(&r.join("c")), b"bottom-c");
    });
}

fn dirs_merge_across_layers(b: Backend) {
    let fx = Fixture::new(3);
    fx.lower(0).file("d/x", b"x").file("d/sub/one", b"1");
    fx.lower(1).file("d/y", b"y").file("d/sub/two", b"2");
    fx.lower(2).file("d/z", b"z").file("d/x", b"old x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("d")), ["sub", "x", "y", "z"]);
        assert_eq!(list(&r.join("d/sub")), ["one", "two"]);
        assert_eq!(read(&r.join("d/x")), b"x");
        assert_eq!(read(&r.join("d/z")), b"z");
    });
}

fn readdir_lists_each_name_once_with_types(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0)
        .file("same", b"0")
        .dir("dir")
        .symlink("link", "same")
        .fifo("fifo", 0o644);
    fx.lower(1).file("same", b"1").dir("dir").file("only1", b"");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let mut seen = Vec::new();
        for e in fs::read_dir(&r).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let kind = if t.is_dir() {
                'd'
            } else if t.is_symlink() {
                'l'
            } else if t.is_fifo() {
                'p'
            } else if t.is_file() {
                'f'
            } else {
                '?'
            };
            seen.push((e.file_name().into_string().unwrap(), kind));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                ("dir".to_string(), 'd'),
                ("fifo".to_string(), 'p'),
                ("link".to_string(), 'l'),
                ("only1".to_string(), 'f'),
                ("same".to_string(), 'f'),
            ]
        );
    });
}

fn getattr_reports_lower_attributes(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(1)
        .file_mode("f", b"hello world", 0o640)
        .chown("f", 1234, 5678)
        .chmod("f", 0o4750)
        .times("f", (1_000_000_000, 5), (1_100_000_000, 123_456_789))
        .dir_mode("d", 0o711)
        .chown("d", 42, 43);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let md = lstat(&r.join("f"));
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o7777, 0o4750);
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        assert_eq!(md.size(), 11);
        assert_eq!(md.nlink(), 1);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_100_000_000, 123_456_789));
        assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 5));
        let d = lstat(&r.join("d"));
        assert!(d.is_dir());
        assert_eq!(d.mode() & 0o7777, 0o711);
        assert_eq!((d.uid(), d.gid()), (42, 43));
    });
}

fn upper_file_shadows_lower(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"lower").file("d/low", b"l");
    fx.upper_layer().file("f", b"upper!").file("d/up", b"u");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(read(&r.join("f")), b"upper!");
        assert_eq!(lstat(&r.join("f")).size(), 6);
        assert_eq!(list(&r.join("d")), ["low", "up"]);
    });
}

fn non_dir_above_dir_hides_its_children(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("x", b"file now");
    fx.lower(1).file("x/child", b"hidden");
    fx.lower(0).dir("y");
    fx.lower(1).file("y", b"file below dir");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert!(lstat(&r.join("x")).is_file());
        assert_eq!(read(&r.join("x")), b"file now");
        assert_errno(
            "stat x/child",
            fs::symlink_metadata(r.join("x/child")),
            libc::ENOTDIR,
        );
        // A directory above a file is not merged with it: it is just a directory.
        assert!(lstat(&r.join("y")).is_dir());
        assert!(list(&r.join("y")).is_empty());
    });
}

fn readlink_returns_exact_targets(b: Backend) {
    let fx = Fixture::new(2);
    let long_target = format!("/{}", long_name('t', 1000));
    fx.lower(1)
        .file("target", b"T")
        .dir("dir")
        .symlink("rel", "target")
        .symlink("abs", "/etc/hostname")
        .symlink("dangling", "no/such/thing")
        .symlink("todir", "dir")
        .symlink("long", &long_target);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        assert_eq!(
            fs::read_link(r.join("rel")).unwrap(),
            std::path::Path::new("target")
        );
        assert_eq!(
            fs::read_link(r.join("abs")).unwrap(),
            std::path::Path::new("/etc/hostname")
        );
        assert_eq!(
            fs::read_link(r.join("dangling")).unwrap(),
            std::path::Path::new("no/such/thing")
        );
        assert_eq!(
            fs::read_link(r.join("long")).unwrap(),
            std::path::Path::new(&long_target)
        );
        let md = lstat(&r.join("rel"));
        assert!(md.file_type().is_symlink());
        assert_eq!(md.size(), 6);
        assert_eq!(md.mode() & 0o777, 0o777);
        assert_eq!(read(&r.join("rel")), b"T");
        assert!(fs::metadata(r.join("todir")).unwrap().is_dir());
        assert_errno(
            "readlink of a file",
            fs::read_link(r.join("target")),
            libc::EINVAL,
        );
    });
}

fn reads_large_file_at_offsets(b: Backend) {
    let fx = Fixture::new(1);
    let mut data = vec![0u8; 3 * 1024 * 1024 + 17];
    let mut rng = fastrand::Rng::with_seed(7);
    rng.fill(&mut data);
    fx.lower(0).file("big", &data);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        assert_eq!(read(&r.join("big")), data);
        let mut f = fs::File::open(r.join("big")).unwrap();
        for off in [0u64, 1, 4095, 4096, 131_071, 1 << 20, data.len() as u64 - 5] {
            let mut buf = [0u8; 64];
            f.seek(SeekFrom::Start(off)).unwrap();
            let n = f.read(&mut buf).unwrap();
            let want = &data[off as usize..(off as usize + 64).min(data.len())];
            assert_eq!(&buf[..n], want, "read at {off}");
        }
        let mut buf = [0u8; 8];
        f.seek(SeekFrom::Start(data.len() as u64 + 100)).unwrap();
        assert_eq!(f.read(&mut buf).unwrap(), 0, "read past EOF");
    });
}

fn hard_links_in_lower_share_inode(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("a", b"shared").hardlink("a", "sub/b");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let a = lstat(&r.join("a"));
        let bb = lstat(&r.join("sub/b"));
        assert_eq!(a.ino(), bb.ino());
        assert_eq!(a.nlink(), 2);
        assert_eq!(bb.nlink(), 2);
    });
}

fn inode_numbers_are_stable(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).file("a", b"1").dir("d");
    fx.lower(1).file("b", b"2").file("d/c", b"3");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let first: Vec<u64> = ["a", "b", "d", "d/c"]
            .iter()
            .map(|p| lstat(&r.join(p)).ino())
            .collect();
        let _ = list(&r);
        let _ = list(&r.join("d"));
        let second: Vec<u64> = ["a", "b", "d", "d/c"]
            .iter()
            .map(|p| lstat(&r.join(p)).ino())
            .collect();
        assert_eq!(first, second);
        let mut uniq = first.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(
            uniq.len(),
            4,
            "distinct files must have distinct inode numbers"
        );
        // readdir's d_ino agrees with stat's st_ino.
        for e in fs::read_dir(r.join("d")).unwrap() {
            let e = e.unwrap();
            assert_eq!(
                e.ino(),
                lstat(&e.path()).ino(),
                "d_ino of {:?}",
                e.file_name()
            );
        }
    });
}

use std::os::unix::fs::DirEntryExt;

fn statfs_reports_sane_values(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let v = rustix::fs::statvfs(&r).unwrap();
        assert_eq!(v.f_namemax, 255);
        assert!(v.f_bsize > 0);
        assert!(v.f_blocks > 0);
        assert!(v.f_bfree <= v.f_blocks);
        assert!(v.f_bavail <= v.f_bfree);
        rustix::fs::statfs(r.join("f")).unwrap();
    });
}

fn user_xattrs_are_readable(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(1)
        .file("f", b"x")
        .xattr("f", "user.one", b"1")
        .xattr("f", "user.two", b"")
        .xattr("f", "user.bin", &[0, 1, 2, 255])
        .dir("d")
        .xattr("d", "user.dirattr", b"dir");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let f = r.join("f");
        assert_eq!(get_xattr(&f, "user.one"), Ok(b"1".to_vec()));
        assert_eq!(get_xattr(&f, "user.two"), Ok(Vec::new()));
        assert_eq!(get_xattr(&f, "user.bin"), Ok(vec![0, 1, 2, 255]));
        assert_eq!(get_xattr(&f, "user.missing"), Err(libc::ENODATA));
        let names: Vec<String> = list_xattrs(&f)
            .into_iter()
            .filter(|n| n.starts_with("user."))
            .collect();
        assert_eq!(names, ["user.bin", "user.one", "user.two"]);
        assert_eq!(get_xattr(&r.join("d"), "user.dirattr"), Ok(b"dir".to_vec()));
        // A buffer too small for the value is ERANGE.
        let mut small = [0u8; 1];
        assert_rerrno(
            "getxattr small buffer",
            rustix::fs::lgetxattr(&f, "user.dirattr_none", &mut small[..]),
            libc::ENODATA,
        );
        let mut small = [0u8; 2];
        assert_rerrno(
            "getxattr small buffer",
            rustix::fs::lgetxattr(&f, "user.bin", &mut small[..]),
            libc::ERANGE,
        );
        assert_eq!(rustix::fs::lgetxattr_query(&f, "user.bin").unwrap(), 4);
    });
}

fn private_overlay_xattrs_are_hidden(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).opaque_trusted("d").file("d/new", b"n");
    fx.lower(1).file("d/old", b"o");
    fx.upper_layer()
        .dir("u")
        .xattr("u", "trusted.overlay.opaque", b"y")
        .xattr("u", "user.keep", b"k");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        for p in ["d", "u"] {
            let names = list_xattrs(&r.join(p));
            assert!(
                names.iter().all(|n| !n.starts_with("trusted.overlay.")),
                "{p}: private xattrs listed: {names:?}"
            );
        }
        assert_eq!(list_xattrs(&r.join("u")), ["user.keep"]);
        assert!(get_xattr(&r.join("d"), "trusted.overlay.opaque").is_err());
    });
}

fn chardev_whiteout_in_lower_hides_below(b: Backend) {
    let fx = Fixture::new(3);
    fx.lower(0)
        .whiteout("gone")
        .file("d/keep", b"k")
        .whiteout("d/gone2");
    fx.lower(1)
        .file("gone", b"hidden")
        .file("d/gone2", b"hidden");
    fx.lower(2).file("gone", b"hidden too").file("d/base", b"b");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno(
            "stat gone",
            fs::symlink_metadata(r.join("gone")),
            libc::ENOENT,
        );
        assert_errno("open gone", fs::File::open(r.join("gone")), libc::ENOENT);
        assert_errno(
            "stat d/gone2",
            fs::symlink_metadata(r.join("d/gone2")),
            libc::ENOENT,
        );
        assert_eq!(list(&r), ["d"]);
        assert_eq!(list(&r.join("d")), ["base", "keep"]);
    });
}

fn chardev_whiteout_in_upper_hides_lower(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .file("gone", b"x")
        .file("d/gone", b"x")
        .file("d/stay", b"s");
    fx.upper_layer().whiteout("gone").whiteout("d/gone");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno(
            "stat gone",
            fs::symlink_metadata(r.join("gone")),
            libc::ENOENT,
        );
        assert_eq!(list(&r), ["d"]);
        assert_eq!(list(&r.join("d")), ["stay"]);
    });
}

fn whiteout_hides_whole_directory(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).whiteout("d");
    fx.lower(1).file("d/a", b"a").file("d/sub/b", b"b");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno("stat d", fs::symlink_metadata(r.join("d")), libc::ENOENT);
        assert_errno(
            "stat d/a",
            fs::symlink_metadata(r.join("d/a")),
            libc::ENOENT,
        );
        assert_errno(
            "stat d/sub/b",
            fs::symlink_metadata(r.join("d/sub/b")),
            libc::ENOENT,
        );
        assert!(list(&r).is_empty());
    });
}

fn trusted_opaque_dir_hides_lower_children(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).opaque_trusted("d").file("d/new", b"n");
    fx.lower(1).file("d/old", b"o").file("d/new", b"old new");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("d")), ["new"]);
        assert_eq!(read(&r.join("d/new")), b"n");
        assert_errno(
            "stat d/old",
            fs::symlink_metadata(r.join("d/old")),
            libc::ENOENT,
        );
    });
}

fn opaque_dir_in_middle_layer_still_shows_layers_above(b: Backend) {
    let fx = Fixture::new(3);
    fx.lower(0).file("d/top", b"t");
    fx.lower(1).opaque_trusted("d").file("d/mid", b"m");
    fx.lower(2).file("d/bottom", b"b");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("d")), ["mid", "top"]);
        assert_errno(
            "stat d/bottom",
            fs::symlink_metadata(r.join("d/bottom")),
            libc::ENOENT,
        );
    });
}

fn missing_names_give_enoent(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).dir("d");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno(
            "stat nope",
            fs::symlink_metadata(r.join("nope")),
            libc::ENOENT,
        );
        assert_errno(
            "stat d/nope",
            fs::symlink_metadata(r.join("d/nope")),
            libc::ENOENT,
        );
        assert_errno(
            "stat nope/x",
            fs::symlink_metadata(r.join("nope/x")),
            libc::ENOENT,
        );
        assert_errno("readlink nope", fs::read_link(r.join("nope")), libc::ENOENT);
        // Negative lookups must not become stale once the name exists.
        fs::write(r.join("d/nope"), b"now").unwrap();
        assert_eq!(read(&r.join("d/nope")), b"now");
    });
}

fn lookup_through_file_gives_enotdir(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_errno(
            "stat f/x",
            fs::symlink_metadata(r.join("f/x")),
            libc::ENOTDIR,
        );
        assert_errno("read_dir f", fs::read_dir(r.join("f")), libc::ENOTDIR);
    });
}

fn special_files_in_lower_keep_type_and_rdev(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0)
        .fifo("fifo", 0o620)
        .device("null", false, 1, 3)
        .device("loop", true, 7, 0);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let f = lstat(&r.join("fifo"));
        assert!(f.file_type().is_fifo());
        assert_eq!(f.mode() & 0o7777, 0o620);
        let c = lstat(&r.join("null"));
        assert!(c.file_type().is_char_device());
        assert_eq!(c.rdev(), rustix::fs::makedev(1, 3));
        let l = lstat(&r.join("loop"));
        assert!(l.file_type().is_block_device());
        assert_eq!(l.rdev(), rustix::fs::makedev(7, 0));
    });
}

// The OCI forms and `user.overlay.opaque` are not understood by kernel overlayfs (without the
// `userxattr` option), so these run against stratafs only; the expected view is the one the
// kernel gives for the equivalent overlay forms above.

fn oci_forms_fixture() -> Fixture {
    let fx = Fixture::new(3);
    fx.lower(0)
        .wh_file("gone")
        .wh_file("d/gone2")
        .file("d/keep", b"k")
        .opaque_wh("o")
        .file("o/new", b"n")
        .opaque_user("u")
        .file("u/new", b"n")
        .wh_file("gonedir");
    fx.lower(1)
        .file("gone", b"x")
        .file("d/gone2", b"x")
        .file("d/base", b"b")
        .file("o/old", b"o")
        .file("u/old", b"o")
        .file("gonedir/a", b"a");
    fx.lower(2).file("gone", b"y");
    fx
}

#[test]
fn oci_whiteout_files_hide_and_are_never_shown() {
    let fx = oci_forms_fixture();
    let m = fx.mount(Backend::Stratafs);
    m.with_timeout(DEADLINE, |r| {
        assert_errno(
            "stat gone",
            fs::symlink_metadata(r.join("gone")),
            libc::ENOENT,
        );
        assert_errno(
            "stat gonedir",
            fs::symlink_metadata(r.join("gonedir")),
            libc::ENOENT,
        );
        assert_errno(
            "stat d/gone2",
            fs::symlink_metadata(r.join("d/gone2")),
            libc::ENOENT,
        );
        assert_errno(
            "stat .wh.gone",
            fs::symlink_metadata(r.join(".wh.gone")),
            libc::ENOENT,
        );
        assert_eq!(list(&r), ["d", "o", "u"]);
        assert_eq!(list(&r.join("d")), ["base", "keep"]);
    });
}

#[test]
fn oci_opaque_file_hides_lower_children_and_is_never_shown() {
    let fx = oci_forms_fixture();
    let m = fx.mount(Backend::Stratafs);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("o")), ["new"]);
        assert_errno(
            "stat o/old",
            fs::symlink_metadata(r.join("o/old")),
            libc::ENOENT,
        );
        assert_errno(
            "stat o/.wh..wh..opq",
            fs::symlink_metadata(r.join("o/.wh..wh..opq")),
            libc::ENOENT,
        );
    });
}

#[test]
fn user_overlay_opaque_hides_lower_children_and_is_never_shown() {
    let fx = oci_forms_fixture();
    let m = fx.mount(Backend::Stratafs);
    m.with_timeout(DEADLINE, |r| {
        assert_eq!(list(&r.join("u")), ["new"]);
        assert_errno(
            "stat u/old",
            fs::symlink_metadata(r.join("u/old")),
            libc::ENOENT,
        );
        let names = list_xattrs(&r.join("u"));
        assert!(
            !names.iter().any(|n| n.contains("overlay")),
            "opaque marker listed: {names:?}"
        );
    });
}

#[test]
fn user_overlay_opaque_matches_kernel_userxattr() {
    // With `userxattr` the kernel reads `user.overlay.*`: the reference for this form.
    // stratafs reads every form without being told (and fuse-overlayfs has no such option).
    let fx = Fixture::new(2);
    fx.lower(0).opaque_user("u").file("u/new", b"n");
    fx.lower(1).file("u/old", b"o").file("top", b"t");
    let mut views = Vec::new();
    for b in Backend::ALL {
        let spec = MountSpec {
            writable: false,
            extra: match b {
                Backend::Kernel => vec!["userxattr".into()],
                Backend::Stratafs => vec![],
            },
        };
        let m = fx.mount_with(b, &spec);
        views.push(m.with_timeout(DEADLINE, |r| snapshot(&r)));
    }
    assert_eq!(
        views[0].keys().count(),
        3,
        "kernel view: {:?}",
        views[0].keys()
    );
    assert_same_tree("kernel vs stratafs", &views[0], &views[1]);
}

fn statfs_reports_the_upper_filesystem(b: Backend) {
    let fx = Fixture::new(1);
    let m = fx.mount(b);
    let upper = fx.upper.clone();
    m.with_timeout(DEADLINE, move |r| {
        let v = rustix::fs::statvfs(&r).unwrap();
        let u = rustix::fs::statvfs(&upper).unwrap();
        assert_eq!(
            v.f_blocks * v.f_frsize,
            u.f_blocks * u.f_frsize,
            "total size"
        );
        assert_eq!(v.f_files, u.f_files, "total inodes");
    });
}

fn readdir_offsets_stay_stable_while_entries_change(b: Backend) {
    let fx = Fixture::new(2);
    for i in 0..150 {
        fx.lower(0).file(format!("d/top{i:03}"), b"");
        fx.lower(1).file(format!("d/low{i:03}"), b"");
    }
    fx.lower(1).file("d/top000", b"shadowed");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let d = r.join("d");
        let fd = open_dir(&d);
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 512];
        let mut dir = rustix::fs::RawDir::new(&fd, &mut buf);
        let mut seen: Vec<String> = Vec::new();
        while seen.len() < 40 {
            let e = dir.next().expect("early end").unwrap();
            seen.push(e.file_name().to_string_lossy().into_owned());
        }
        // Change the directory under the open stream: remove and add entries.
        let mut removed = Vec::new();
        for i in (100..150).step_by(5) {
            for prefix in ["top", "low"] {
                let n = format!("{prefix}{i:03}");
                if !seen.contains(&n) {
                    fs::remove_file(d.join(&n)).unwrap();
                    removed.push(n);
                }
            }
        }
        for i in 0..20 {
            fs::write(d.join(format!("new{i:02}")), b"").unwrap();
        }
        while let Some(e) = dir.next() {
            seen.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
        let mut sorted = seen.clone();
        sorted.sort();
        let before = sorted.len();
        sorted.dedup();
        assert_eq!(before, sorted.len(), "readdir returned duplicates");
        for prefix in ["top", "low"] {
            for i in 0..150 {
                let n = format!("{prefix}{i:03}");
                if !removed.contains(&n) {
                    assert!(sorted.contains(&n), "{n} was never returned");
                }
            }
        }
        for n in &sorted {
            let known = n == "."
                || n == ".."
                || n.starts_with("new")
                || n.starts_with("top")
                || n.starts_with("low");
            assert!(known, "unexpected entry {n}");
        }
    });
}

fn dot_and_dotdot_resolve(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).dir("a/b");
    fx.lower(1).dir("a/c");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let root = lstat(&r).ino();
        let a = lstat(&r.join("a")).ino();
        assert_eq!(lstat(&r.join("a/..")).ino(), root);
        assert_eq!(lstat(&r.join("a/b/..")).ino(), a);
        assert_eq!(lstat(&r.join("a/c/../.")).ino(), a);
        assert_eq!(lstat(&r.join("a/./b")).ino(), lstat(&r.join("a/b")).ino());
    });
}

fn private_overlay_xattrs_cannot_be_set_through_the_mount(b: Backend) {
    let fx = Fixture::new(2);
    fx.lower(0).dir("d");
    fx.lower(1).file("d/old", b"o");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        // Forging an opaque marker through the mount must not hide d/old (the kernel escapes
        // the name or refuses; either way the union is unchanged).
        let _ = rustix::fs::lsetxattr(
            r.join("d"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        );
        assert_eq!(list(&r.join("d")), ["old"]);
    });
    drop(m);
    assert_ne!(
        get_xattr(&fx.upper.join("d"), "trusted.overlay.opaque"),
        Ok(b"y".to_vec()),
        "a client forged a real opaque marker in the upper"
    );
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| assert_eq!(list(&r.join("d")), ["old"]));
}

fn user_xattrs_on_symlinks_are_eperm(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x").symlink("l", "f");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        assert_rerrno(
            "user xattr on symlink",
            rustix::fs::lsetxattr(r.join("l"), "user.x", b"1", rustix::fs::XattrFlags::empty()),
            libc::EPERM,
        );
        // Following the link sets it on the target.
        rustix::fs::setxattr(r.join("l"), "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap();
        assert_eq!(get_xattr(&r.join("f"), "user.x"), Ok(b"1".to_vec()));
    });
}

fn block_counts_match_the_lower_file(b: Backend) {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", &[1u8; 100_000]).file("empty", b"");
    let want = lstat(&fx.lowers[0].join("f")).blocks();
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, move |r| {
        let md = lstat(&r.join("f"));
        assert_eq!(md.blocks(), want, "st_blocks (du relies on it)");
        assert!(md.blksize() > 0);
        assert_eq!(lstat(&r.join("empty")).blocks(), 0);
    });
}

/// Runs `args` as uid/gid 1000 with no supplementary groups; returns (success, stderr).
fn as_user(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    with_timeout(DEADLINE, "command as uid 1000", move || {
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "--"])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
}

fn permissions_are_checked_for_unprivileged_callers(b: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new(1);
    // The temp dir is 0700; let uid 1000 reach the mount point.
    fs::set_permissions(fx.root(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.lower(0)
        .file_mode("secret", b"s", 0o600)
        .file_mode("public", b"p", 0o644)
        .file_mode("mine", b"m", 0o600)
        .chown("mine", 1000, 1000)
        .dir_mode("closed", 0o700)
        .file("closed/inner", b"i")
        .dir_mode("shared", 0o755)
        .dir_mode("userdir", 0o755)
        .chown("userdir", 1000, 1000);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let p = |rel: &str| r.join(rel).to_str().unwrap().to_string();
        assert!(
            !as_user(&["cat", &p("secret")]).0,
            "uid 1000 read a 0600 root file"
        );
        assert!(
            as_user(&["cat", &p("public")]).0,
            "uid 1000 cannot read a 0644 file"
        );
        assert!(
            as_user(&["cat", &p("mine")]).0,
            "uid 1000 cannot read its own 0600 file"
        );
        assert!(
            !as_user(&["cat", &p("closed/inner")]).0,
            "uid 1000 went through a 0700 dir"
        );
        assert!(
            !as_user(&["ls", &p("closed")]).0,
            "uid 1000 listed a 0700 dir"
        );
        assert!(
            !as_user(&["touch", &p("shared/new")]).0,
            "uid 1000 created in a root 0755 dir"
        );
        assert!(
            !as_user(&["sh", "-c", &format!("echo x >> {}", p("public"))]).0,
            "uid 1000 wrote a root 0644 file"
        );
        assert!(
            !as_user(&["rm", "-f", &p("public")]).0,
            "uid 1000 unlinked in a root dir"
        );
        assert!(
            as_user(&["touch", &p("userdir/new")]).0,
            "uid 1000 cannot create in its dir"
        );
        assert!(
            as_user(&["sh", "-c", &format!("echo more >> {}", p("mine"))]).0,
            "uid 1000 cannot write its own file"
        );
        assert!(
            !as_user(&["chmod", "777", &p("public")]).0,
            "uid 1000 chmod-ed a root file"
        );
        let created = lstat(&r.join("userdir/new"));
        assert_eq!(
            (created.uid(), created.gid()),
            (1000, 1000),
            "owner of a file uid 1000 made"
        );
        assert_eq!(read(&r.join("mine")), b"mmore\n");
        assert_eq!(read(&r.join("public")), b"p");
    });
}

fn large_merged_directory_lists_every_name_once(b: Backend) {
    let fx = Fixture::new(3);
    for i in 0..1500 {
        fx.lower(i % 3).file(format!("big/f{i:05}"), b"");
        if i % 2 == 0 {
            fx.lower(2).file(format!("big/f{i:05}"), b"dup");
        }
        if i % 10 == 1 {
            fx.lower(0).whiteout(format!("big/w{i:05}"));
            fx.lower(1).file(format!("big/w{i:05}"), b"hidden");
        }
    }
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let names = list(&r.join("big"));
        assert_eq!(names.len(), 1500);
        assert!(names.iter().all(|n| n.starts_with('f')));
        assert_eq!(read(&r.join("big/f00000")), b"");
        assert_eq!(read(&r.join("big/f00002")), b"dup");
    });
}

fn setfacl(args: &[&str]) {
    let (ok, out) = run(std::process::Command::new("setfacl").args(args));
    assert!(ok, "setfacl {args:?}: {out}");
}

fn posix_acls_are_visible_and_enforced(b: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new(1);
    fs::set_permissions(fx.root(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.lower(0)
        .file_mode("acl_read", b"granted", 0o600)
        .file_mode("later", b"later", 0o600)
        .dir_mode("inherit", 0o755);
    let l = |p: &str| fx.lowers[0].join(p).to_str().unwrap().to_string();
    setfacl(&["-m", "u:1000:r", &l("acl_read")]);
    setfacl(&["-d", "-m", "u:1000:rw", &l("inherit")]);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let p = |rel: &str| r.join(rel).to_str().unwrap().to_string();
        assert!(
            get_xattr(&r.join("acl_read"), "system.posix_acl_access").is_ok(),
            "ACL not visible through the mount"
        );
        assert!(
            as_user(&["cat", &p("acl_read")]).0,
            "ACL granting uid 1000 read is ignored"
        );
        assert!(
            !as_user(&["cat", &p("later")]).0,
            "uid 1000 read a 0600 file without ACL"
        );
        // An ACL set through the mount (copy-up) is enforced too.
        setfacl(&["-m", "u:1000:r", &p("later")]);
        assert!(
            as_user(&["cat", &p("later")]).0,
            "ACL set through the mount is ignored"
        );
        // A default ACL is inherited by files created through the mount.
        fs::write(r.join("inherit/new"), b"n").unwrap();
        assert!(
            get_xattr(&r.join("inherit/new"), "system.posix_acl_access").is_ok(),
            "default ACL not inherited"
        );
        assert!(
            as_user(&["sh", "-c", &format!("echo x >> {}", p("inherit/new"))]).0,
            "inherited ACL granting uid 1000 write is ignored"
        );
    });
}

fn access_checks_follow_the_mode(b: Backend) {
    use rustix::fs::Access;
    let fx = Fixture::new(1);
    fx.lower(0)
        .file_mode("plain", b"", 0o644)
        .file_mode("exec", b"", 0o744)
        .file_mode("none", b"", 0o000)
        .dir_mode("d", 0o700);
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let a = |p: &str, mode| rustix::fs::access(r.join(p), mode);
        assert_rerrno("F_OK missing", a("missing", Access::EXISTS), libc::ENOENT);
        a("plain", Access::READ_OK | Access::WRITE_OK).unwrap();
        // Even root needs one execute bit for X_OK on a file.
        assert_rerrno("X_OK on 0644", a("plain", Access::EXEC_OK), libc::EACCES);
        a("exec", Access::EXEC_OK).unwrap();
        a("none", Access::READ_OK | Access::WRITE_OK).unwrap();
        assert_rerrno("X_OK on 0000", a("none", Access::EXEC_OK), libc::EACCES);
        a("d", Access::EXEC_OK | Access::WRITE_OK).unwrap();
    });
}

/// Reads all entries of `fd` from its current position: (name, cookie of the next entry).
fn read_entries(fd: &std::os::fd::OwnedFd) -> Vec<(String, u64)> {
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 1024];
    let mut dir = rustix::fs::RawDir::new(fd, &mut buf);
    let mut out = Vec::new();
    while let Some(e) = dir.next() {
        let e = e.unwrap();
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            e.next_entry_cookie(),
        ));
    }
    out
}

fn readdir_resumes_at_a_saved_offset(b: Backend) {
    let fx = Fixture::new(2);
    for i in 0..120 {
        fx.lower(i % 2).file(format!("d/f{i:03}"), b"");
    }
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let fd = open_dir(&r.join("d"));
        let all = read_entries(&fd);
        assert_eq!(all.len(), 122, "120 names plus . and ..");
        for at in [0usize, 1, 2, 50, 121] {
            let cookie = all[at].1;
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(cookie)).unwrap();
            let rest: Vec<String> = read_entries(&fd).into_iter().map(|e| e.0).collect();
            let want: Vec<String> = all[at + 1..].iter().map(|e| e.0.clone()).collect();
            assert_eq!(rest, want, "resuming after entry {at} (cookie {cookie})");
        }
        // Rewinding gives the same listing again.
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).unwrap();
        assert_eq!(read_entries(&fd), all);
    });
}

/// `shutil.rmtree`'s pattern: remove each name right after reading it, through a stream that
/// fetches a few entries at a time. Every name must come up once, none be skipped because the
/// ones before it went away.
fn deleting_each_entry_as_it_is_read_empties_the_directory(b: Backend) {
    let fx = Fixture::new(2);
    for i in 0..300 {
        fx.lower(i % 2).file(format!("d/f{i:03}"), b"x");
    }
    fx.upper_layer().file("d/upper", b"u");
    let m = fx.mount(b);
    m.with_timeout(DEADLINE, |r| {
        let d = r.join("d");
        fs::write(d.join("made-here"), b"m").unwrap();
        let fd = open_dir(&d);
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 512];
        let mut dir = rustix::fs::RawDir::new(&fd, &mut buf);
        let mut removed = 0;
        while let Some(e) = dir.next() {
            let e = e.unwrap();
            let name = e.file_name().to_str().unwrap().to_owned();
            if name == "." || name == ".." {
                continue;
            }
            fs::remove_file(d.join(&name)).unwrap_or_else(|err| panic!("{name}: {err}"));
            removed += 1;
        }
        assert_eq!(removed, 302, "every name read once and removed");
        assert_eq!(list(&d), Vec::<String>::new());
        fs::remove_dir(&d).unwrap();
    });
}

/// An fd to read directory `p` with.
fn open_dir(p: &std::path::Path) -> std::os::fd::OwnedFd {
    rustix::fs::open(
        p,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}
