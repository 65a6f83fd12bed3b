//! Concurrent namespace changes on one mount: no deadlock (the deadline catches one), no
//! unexpected errno, and the tree seen through the mount equals the tree after a remount.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use common::*;

both_backends!(
    concurrent_mixed_operations_stay_consistent,
    create_racing_with_unlink_fails_only_as_overlayfs_does,
);

/// One random operation on names shared by all threads; only the errnos that races between
/// threads explain are tolerated.
fn random_op(r: &Path, rng: &mut fastrand::Rng) {
    let dir = |rng: &mut fastrand::Rng| ["a", "b", "a/sub", "c"][rng.usize(..4)];
    let name = |rng: &mut fastrand::Rng| format!("n{}", rng.usize(..12));
    let p = r.join(dir(rng)).join(name(rng));
    let q = r.join(dir(rng)).join(name(rng));
    let (op, res) = match rng.usize(..9) {
        0 | 1 => ("write", fs::write(&p, b"data")),
        2 => ("unlink", fs::remove_file(&p)),
        3 => ("rename", fs::rename(&p, &q)),
        4 => ("mkdir", fs::create_dir(&p)),
        5 => ("rmdir", fs::remove_dir(&p)),
        6 => ("link", fs::hard_link(&p, &q)),
        7 => ("lstat", fs::symlink_metadata(&p).map(|_| ())),
        _ => (
            "readdir",
            fs::read_dir(p.parent().unwrap()).map(|d| d.for_each(drop)),
        ),
    };
    if let Err(e) = res {
        let ok = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists)
            || matches!(
                e.raw_os_error(),
                Some(libc::ENOTEMPTY)
                    | Some(libc::EISDIR)
                    | Some(libc::ENOTDIR)
                    | Some(libc::EPERM)
                    | Some(libc::EXDEV)
                    | Some(libc::EINVAL)
            );
        assert!(ok, "{op}: unexpected error: {e} ({p:?}, {q:?})");
    }
}

fn concurrent_mixed_operations_stay_consistent(b: Backend) {
    let fx = Fixture::new(2);
    for i in 0..12 {
        fx.lower(i % 2).file(format!("a/n{i}"), b"lower");
        fx.lower(1).file(format!("b/n{i}"), b"lower b");
    }
    fx.lower(0).dir("a/sub").dir("c");
    let m = fx.mount(b);
    let seen = m.with_timeout(60, |r| {
        let handles: Vec<_> = (0..6u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(1000 + t);
                    for _ in 0..300 {
                        random_op(&r, &mut rng);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        snapshot(&r)
    });
    drop(m);
    let m = fx.mount(b);
    let again = m.with_timeout(DEADLINE, |r| snapshot(&r));
    assert_same_tree("live view vs after remount", &seen, &again);
}

fn create_racing_with_unlink_fails_only_as_overlayfs_does(b: Backend) {
    // open(O_CREAT|O_TRUNC) racing unlink: kernel overlayfs itself sometimes answers ENOENT
    // or EEXIST here (its create over a fresh whiteout is not atomic), never anything else.
    let fx = Fixture::new(1);
    for i in 0..4 {
        fx.lower(0).file(format!("d/n{i}"), b"lower");
    }
    let m = fx.mount(b);
    m.with_timeout(60, |r| {
        let handles: Vec<_> = (0..6u64)
            .map(|t| {
                let d = r.join("d");
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t);
                    for _ in 0..300 {
                        let p = d.join(format!("n{}", rng.usize(..4)));
                        if t % 2 == 0 {
                            if let Err(e) = fs::write(&p, b"data") {
                                assert!(
                                    matches!(
                                        e.kind(),
                                        ErrorKind::NotFound | ErrorKind::AlreadyExists
                                    ),
                                    "create {p:?} racing unlink: {e}"
                                );
                            }
                        } else if let Err(e) = fs::remove_file(&p) {
                            assert_eq!(e.kind(), ErrorKind::NotFound, "unlink {p:?}: {e}");
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}
