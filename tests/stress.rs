//! Concurrency: several threads change one stratafs mount at once (creates, writes, renames
//! across directories, unlinks, mkdir/rmdir, listings, copy-ups of shared lower files). The
//! mount must not hang (every batch has a deadline), every result must be one a POSIX
//! filesystem could give, and afterwards the tree stratafs shows must be exactly what kernel
//! overlayfs shows over the upper layer it wrote.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;

use common::*;

const THREADS: usize = 6;
const OPS_PER_THREAD: usize = 400;

fn fixture() -> Fixture {
    let fx = Fixture::new(2);
    for d in 0..4 {
        for f in 0..20 {
            fx.lower(1).file(
                format!("shared{d}/f{f}"),
                format!("bottom {d}/{f}").as_bytes(),
            );
        }
        fx.lower(0).file(format!("shared{d}/f0"), b"top");
        fx.lower(0).whiteout(format!("shared{d}/f1"));
    }
    fx.lower(1)
        .dir("deep/a/b/c")
        .file("deep/a/b/c/leaf", b"leaf");
    fx
}

/// Errors two racing threads can legitimately cause each other.
fn tolerated(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty
    ) || matches!(
        e.raw_os_error(),
        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::EXDEV)
    )
}

fn worker(root: &Path, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..OPS_PER_THREAD {
        let d = rng.usize(0..4);
        let f = rng.usize(0..24);
        let dir = root.join(format!("shared{d}"));
        let path = dir.join(format!("f{f}"));
        let other = root
            .join(format!("shared{}", rng.usize(0..4)))
            .join(format!("f{}", rng.usize(0..24)));
        let op = rng.u8(0..10);
        let r: std::io::Result<()> = match op {
            0 => fs::write(&path, format!("t{seed} op{i}")),
            1 => fs::remove_file(&path),
            2 => fs::rename(&path, &other),
            3 => fs::read(&path).map(|_| ()),
            4 => fs::read_dir(&dir).and_then(|mut it| it.try_for_each(|e| e.map(|_| ()))),
            5 => fs::set_permissions(&path, fs::Permissions::from_mode(0o600 | rng.u32(0..0o77))),
            6 => fs::create_dir(dir.join(format!("sub{}", rng.usize(0..3)))),
            7 => fs::remove_dir(dir.join(format!("sub{}", rng.usize(0..3)))),
            8 => fs::hard_link(&path, &other),
            _ => fs::symlink_metadata(&path).map(|_| ()),
        };
        if let Err(e) = r {
            assert!(
                tolerated(&e)
                    || e.raw_os_error() == Some(libc::EISDIR)
                    || e.raw_os_error() == Some(libc::ENOTDIR),
                "thread {seed} op {i} (kind {op}, {} -> {}): unexpected error {e}",
                path.display(),
                other.display()
            );
        }
    }
}

#[test]
fn concurrent_changes_leave_a_consistent_upper() {
    let fx = fixture();
    let m = fx.mount(Backend::Stratafs);
    let seen = m.with_timeout(120, |r| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let r = r.clone();
                thread::spawn(move || worker(&r, t as u64 + 1))
            })
            .collect();
        for h in handles {
            h.join().expect("worker panicked");
        }
        snapshot(&r)
    });
    drop(m);
    // The same upper read by the kernel: stratafs's bookkeeping matched its disk writes.
    let m = fx.mount(Backend::Kernel);
    let kernel = m.with_timeout(DEADLINE, |r| snapshot(&r));
    drop(m);
    let strip = |s: &Snapshot| -> Snapshot {
        s.iter()
            .map(|(k, e)| {
                let mut e = e.clone();
                e.mtime = None;
                (k.clone(), e)
            })
            .collect()
    };
    assert_same_tree(
        "stratafs after concurrent changes (left) vs kernel over its upper (right)",
        &strip(&seen),
        &strip(&kernel),
    );
}
