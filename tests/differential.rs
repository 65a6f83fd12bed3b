//! Differential test: random sequences of filesystem operations applied to kernel overlayfs
//! and to stratafs over identical generated layers. Every result (value or errno) must be the
//! same, then the whole trees; then kernel overlayfs mounts the upper layer stratafs wrote
//! and that tree must be the same as well.
//!
//! `STRATA_DIFF_SEEDS` (default 20) and `STRATA_DIFF_OPS` (default 500) set the size; a
//! failure names the seed and the operation, and `STRATA_DIFF_SEED=N` replays one seed.
//! `STRATA_DIFF_DROP_CACHES=1` drops the kernel's inode caches before every operation (the
//! second test always does, with its own seeds);
//! `STRATA_DIFF_CHECK_EACH=1` compares the whole trees after every operation (slow) to name
//! the operation that made a difference; `STRATA_DIFF_VERBOSE=1` prints each operation.

mod common;

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    symlink, DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

use common::*;
use fastrand::Rng;
use rustix::fs::{RenameFlags, XattrFlags, CWD};

const DIRS: &[&str] = &["", "a", "b", "a/x", "b/y", "c", "opq", "gone"];
const NAMES: &[&str] = &["f0", "f1", "f2", "l0", "h0", "p0", "x", "y", "sub", "new"];
const XATTRS: &[&str] = &["user.one", "user.two"];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fill the fixture's three lower layers deterministically from `seed`. With `oci_forms`,
/// whiteouts and opaque markers the generator draws as OCI files (`.wh.NAME`, `.wh..wh..opq`)
/// are written that way; otherwise every marker has the kernel's form (the kernel reads only
/// those), so the two fixtures mean the same tree.
fn build_layers(fx: &Fixture, seed: u64, oci_forms: bool) {
    let mut rng = Rng::with_seed(seed);
    // Bottom layer first, so a whiteout is only written over something below it and never
    // inside an opaque directory (both are corrupt input to the kernel).
    for (i, root) in fx.lowers.iter().enumerate().rev() {
        let l = Layer::at(root);
        let below = &fx.lowers[i + 1..];
        let opq_opaque = i + 1 < fx.lowers.len() && rng.u8(0..3) != 2;
        for dir in DIRS.iter().filter(|d| !d.is_empty()) {
            if rng.u8(0..4) != 0 || i == fx.lowers.len() - 1 {
                l.dir(dir);
            }
        }
        for dir in DIRS {
            let d = root.join(dir);
            if !d.is_dir() {
                continue;
            }
            for name in NAMES {
                let rel = Path::new(dir).join(name);
                let p = root.join(&rel);
                if p.symlink_metadata().is_ok() || rng.u8(0..3) == 0 {
                    continue;
                }
                match rng.u8(0..10) {
                    0..=4 => {
                        let len = rng.usize(0..200);
                        let content: Vec<u8> = (0..len).map(|_| rng.u8(b'a'..=b'z')).collect();
                        l.file(&rel, &content);
                        l.chmod(&rel, [0o644, 0o600, 0o755, 0o640][rng.usize(0..4)]);
                        if rng.bool() {
                            l.chown(
                                &rel,
                                [0, 1000, 65534][rng.usize(0..3)],
                                rng.u32(0..2) * 1000,
                            );
                        }
                        if rng.u8(0..3) == 0 {
                            l.xattr(&rel, XATTRS[rng.usize(0..2)], b"lower");
                        }
                    }
                    5 => {
                        l.symlink(
                            &rel,
                            ["f0", "../f1", "/etc/hostname", "missing"][rng.usize(0..4)],
                        );
                    }
                    6 => {
                        l.fifo(&rel, 0o644);
                    }
                    7 if below
                        .iter()
                        .any(|b| b.join(&rel).symlink_metadata().is_ok())
                        && merges_below(below, dir)
                        && !(*dir == "opq" && opq_opaque) =>
                    {
                        if rng.bool() && oci_forms {
                            l.wh_file(&rel);
                        } else {
                            l.whiteout(&rel);
                        }
                    }
                    _ => {
                        // A hard link to a file already in this layer. (Not in a user
                        // namespace: unprivileged overlayfs has no index, so it breaks lower
                        // hard links at copy-up where stratafs, like index=on, keeps them.)
                        let target = Path::new(dir).join("f0");
                        if root.join(&target).is_file() && rel != target && !in_user_namespace() {
                            l.hardlink(&target, &rel);
                        }
                    }
                }
            }
        }
        let oci_opaque = rng.bool();
        if opq_opaque && root.join("opq").is_dir() {
            if oci_forms && oci_opaque {
                l.opaque_wh("opq");
            } else {
                l.opaque_trusted("opq");
            }
        }
        if i == 0 && root.join("gone").is_dir() {
            // Hide a whole lower directory.
            fs::remove_dir_all(root.join("gone")).unwrap();
            l.whiteout("gone");
        }
    }
}

/// Whether directory `dir` of a layer merges with the layers `below` (the kernel reads
/// whiteouts only inside merged directories): walking down, the first layer that has the
/// path has a directory there, and no layer before it has a non-directory at an ancestor.
fn merges_below(below: &[PathBuf], dir: &str) -> bool {
    let ancestors: Vec<PathBuf> = Path::new(dir)
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    for layer in below {
        for a in ancestors.iter().rev() {
            match layer.join(a).symlink_metadata() {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return false,
                Err(_) => break,
            }
        }
        match layer.join(dir).symlink_metadata() {
            Ok(m) => return m.is_dir(),
            Err(_) => continue,
        }
    }
    dir.is_empty()
}

/// What one operation returned, in a form both backends must agree on.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(String),
    Err(i32),
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn out<T>(r: io::Result<T>, f: impl FnOnce(T) -> String) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(f(v)),
        Err(e) => Outcome::Err(errno_of(&e)),
    }
}

fn rout<T>(r: rustix::io::Result<T>, f: impl FnOnce(T) -> String) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(f(v)),
        Err(e) => Outcome::Err(e.raw_os_error()),
    }
}

fn describe(md: &fs::Metadata) -> String {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else {
        'o'
    };
    // Sizes and link counts of directories are filesystem details, except that merged
    // directories report nlink 1 under both.
    let (size, nlink) = if ft.is_dir() {
        (0, u64::from(md.nlink() == 1))
    } else {
        (md.size(), md.nlink())
    };
    format!(
        "{kind} {:o} {}:{} size={size} nlink={nlink}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid()
    )
}

/// Runs one operation on a mount root.
type Action = Box<dyn Fn(&Path) -> Outcome>;

/// One random operation on `root`; the same `rng` state gives the same operation.
struct Op {
    text: String,
    run: Action,
}

fn pick_path(rng: &mut Rng) -> String {
    let dir = DIRS[rng.usize(0..DIRS.len())];
    let name = NAMES[rng.usize(0..NAMES.len())];
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn gen_op(rng: &mut Rng, i: usize) -> Op {
    let p = pick_path(rng);
    let q = pick_path(rng);
    let data: Vec<u8> = format!("w{i}-").into_bytes();
    let off = rng.u64(0..64);
    let mode = [0o600, 0o644, 0o755, 0o700, 0o4755][rng.usize(0..5)];
    let owner = [0u32, 1000, 65534][rng.usize(0..3)];
    let xname = XATTRS[rng.usize(0..XATTRS.len())];
    let t = (
        1_500_000_000 + rng.i64(0..100_000_000),
        rng.u32(0..1_000_000_000),
    );
    let which = rng.u8(0..26);
    let (text, run): (String, Action) = match which {
        0 => (
            format!("create_excl {p}"),
            Box::new(move |r: &Path| {
                out(
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(r.join(&p)),
                    |_| String::new(),
                )
            }),
        ),
        1 => (
            format!("create_trunc {p}"),
            Box::new(move |r: &Path| {
                out(
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(r.join(&p))
                        .and_then(|mut f| f.write_all(b"trunc")),
                    |_| String::new(),
                )
            }),
        ),
        2 => (
            format!("write_at {p} {off}"),
            Box::new(move |r: &Path| {
                out(
                    OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(r.join(&p))
                        .and_then(|f| f.write_all_at(&data, off)),
                    |_| String::new(),
                )
            }),
        ),
        3 => (
            format!("append {p}"),
            Box::new(move |r: &Path| {
                out(
                    OpenOptions::new()
                        .append(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(r.join(&p))
                        .and_then(|mut f| f.write_all(b"+app")),
                    |_| String::new(),
                )
            }),
        ),
        4 => (
            format!("truncate {p} {off}"),
            Box::new(move |r: &Path| {
                out(
                    OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(r.join(&p))
                        .and_then(|f| f.set_len(off)),
                    |_| String::new(),
                )
            }),
        ),
        5 | 6 => (
            format!("read {p}"),
            Box::new(move |r: &Path| {
                out(
                    OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(r.join(&p))
                        .and_then(|mut f| {
                            let mut v = Vec::new();
                            f.read_to_end(&mut v).map(|_| v)
                        }),
                    |v| String::from_utf8_lossy(&v).into_owned(),
                )
            }),
        ),
        7 | 8 => (
            format!("lstat {p}"),
            Box::new(move |r: &Path| out(fs::symlink_metadata(r.join(&p)), |m| describe(&m))),
        ),
        9 => (
            format!("chmod {p} {mode:o}"),
            Box::new(move |r: &Path| {
                out(
                    fs::set_permissions(r.join(&p), fs::Permissions::from_mode(mode)),
                    |_| String::new(),
                )
            }),
        ),
        10 => (
            format!("lchown {p} {owner}"),
            Box::new(move |r: &Path| {
                out(
                    std::os::unix::fs::lchown(r.join(&p), Some(owner), Some(owner)),
                    |_| String::new(),
                )
            }),
        ),
        11 => (
            format!("utimens {p} {t:?}"),
            Box::new(move |r: &Path| {
                let ts = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: t.0,
                        tv_nsec: t.1 as _,
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: t.0,
                        tv_nsec: t.1 as _,
                    },
                };
                rout(
                    rustix::fs::utimensat(
                        CWD,
                        r.join(&p),
                        &ts,
                        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .and_then(|()| {
                        rustix::fs::statat(CWD, r.join(&p), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    }),
                    |st| format!("{} {}", st.st_mtime, st.st_mtime_nsec),
                )
            }),
        ),
        12 => (
            format!("readlink {p}"),
            Box::new(move |r: &Path| {
                out(fs::read_link(r.join(&p)), |t| {
                    String::from_utf8_lossy(t.as_os_str().as_bytes()).into_owned()
                })
            }),
        ),
        13 => (
            format!("mkfifo {p}"),
            Box::new(move |r: &Path| {
                rout(
                    rustix::fs::mknodat(
                        CWD,
                        r.join(&p),
                        rustix::fs::FileType::Fifo,
                        rustix::fs::Mode::from_raw_mode(0o640),
                        0,
                    ),
                    |_| String::new(),
                )
            }),
        ),
        14 => (
            format!("mkdir {p} {mode:o}"),
            Box::new(move |r: &Path| {
                out(
                    fs::DirBuilder::new()
                        .mode(mode & 0o777)
                        .create(r.join(&p))
                        .and_then(|()| fs::symlink_metadata(r.join(&p))),
                    |m| describe(&m),
                )
            }),
        ),
        15 => (
            format!("unlink {p}"),
            Box::new(move |r: &Path| out(fs::remove_file(r.join(&p)), |_| String::new())),
        ),
        16 => (
            format!("rmdir {p}"),
            Box::new(move |r: &Path| out(fs::remove_dir(r.join(&p)), |_| String::new())),
        ),
        17 => (
            format!("symlink {p} -> {q}"),
            Box::new(move |r: &Path| out(symlink(&q, r.join(&p)), |_| String::new())),
        ),
        18 => (
            format!("link {p} {q}"),
            Box::new(move |r: &Path| {
                out(
                    fs::hard_link(r.join(&p), r.join(&q))
                        .and_then(|()| fs::symlink_metadata(r.join(&q))),
                    |m| describe(&m),
                )
            }),
        ),
        19 | 20 => (
            format!("rename {p} {q}"),
            Box::new(move |r: &Path| out(fs::rename(r.join(&p), r.join(&q)), |_| String::new())),
        ),
        21 => {
            let flags = if rng.bool() {
                RenameFlags::NOREPLACE
            } else {
                RenameFlags::EXCHANGE
            };
            (
                format!("renameat2 {p} {q} {flags:?}"),
                Box::new(move |r: &Path| {
                    rout(
                        rustix::fs::renameat_with(CWD, r.join(&p), CWD, r.join(&q), flags),
                        |_| String::new(),
                    )
                }),
            )
        }
        22 => (
            format!("setxattr {p} {xname}"),
            Box::new(move |r: &Path| {
                rout(
                    rustix::fs::lsetxattr(r.join(&p), xname, b"set", XattrFlags::empty()),
                    |_| String::new(),
                )
            }),
        ),
        23 => (
            format!("getxattr/listxattr {p}"),
            Box::new(move |r: &Path| {
                let list = list_xattrs_or(r.join(&p));
                let get = get_xattr_raw(&r.join(&p), xname);
                Outcome::Ok(format!("{list:?} {get:?}"))
            }),
        ),
        24 => (
            format!("removexattr {p} {xname}"),
            Box::new(move |r: &Path| {
                rout(rustix::fs::lremovexattr(r.join(&p), xname), |_| {
                    String::new()
                })
            }),
        ),
        _ => (
            format!("readdir {}", Path::new(&p).parent().unwrap().display()),
            Box::new(move |r: &Path| {
                let dir = r.join(Path::new(&p).parent().unwrap());
                out(
                    fs::read_dir(&dir).and_then(|it| {
                        let mut names: Vec<OsString> = it
                            .map(|e| e.map(|e| e.file_name()))
                            .collect::<Result<_, _>>()?;
                        names.sort();
                        Ok(names)
                    }),
                    |n| format!("{n:?}"),
                )
            }),
        ),
    };
    Op { text, run }
}

fn list_xattrs_or(p: PathBuf) -> Result<Vec<String>, i32> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::llistxattr(&p, &mut buf[..]) {
        Ok(n) => {
            let mut v: Vec<String> = buf[..n]
                .split(|b| *b == 0)
                .filter(|s| s.starts_with(b"user."))
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            v.sort();
            Ok(v)
        }
        Err(e) => Err(e.raw_os_error()),
    }
}

fn get_xattr_raw(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; 4096];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .map(|n| buf[..n].to_vec())
        .map_err(|e| e.raw_os_error())
}

/// Applies `ops` operations to both roots in lockstep; the first difference is an error.
fn run_ops(
    seed: u64,
    ops: usize,
    drop_caches: bool,
    kernel: &Path,
    strata: &Path,
) -> Result<(), String> {
    let mut rng = Rng::with_seed(seed ^ 0x5eed);
    let check_each = std::env::var_os("STRATA_DIFF_CHECK_EACH").is_some();
    for i in 0..ops {
        let op = gen_op(&mut rng, i);
        if std::env::var_os("STRATA_DIFF_VERBOSE").is_some() {
            eprintln!("seed {seed} op {i}: {}", op.text);
        }
        if drop_caches {
            // Memory pressure: the kernel forgets every unused inode, so the daemon must
            // answer later requests from what it keeps beyond the kernel's references.
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
        }
        let k = (op.run)(kernel);
        let s = (op.run)(strata);
        if std::env::var_os("STRATA_DIFF_VERBOSE").is_some() {
            eprintln!("    -> {k:?}");
        }
        if k != s {
            return Err(format!(
                "seed {seed}, op {i}: `{}`\n  kernel:   {k:?}\n  stratafs: {s:?}\n\
                 replay: STRATA_DIFF_SEED={seed} STRATA_DIFF_OPS={} cargo test --test differential{}",
                op.text,
                i + 1,
                if drop_caches {
                    " random_operations_match_kernel_overlayfs_when_the_kernel_forgets_inodes"
                } else {
                    " random_operations_match_kernel_overlayfs -- --exact"
                }
            ));
        }
        if check_each {
            // Compare the whole trees after each operation, so a difference is reported by
            // the operation that made it rather than the one that first looked at it.
            let (kt, st) = (
                strip_mtimes(&snapshot(kernel)),
                strip_mtimes(&snapshot(strata)),
            );
            if kt != st {
                let first = kt
                    .iter()
                    .find(|(p, e)| st.get(*p) != Some(e))
                    .map(|(p, e)| {
                        format!(
                            "{}: kernel {e:?}, stratafs {:?}",
                            String::from_utf8_lossy(p),
                            st.get(p)
                        )
                    })
                    .or_else(|| {
                        st.keys()
                            .find(|p| !kt.contains_key(*p))
                            .map(|p| format!("{} only in stratafs", String::from_utf8_lossy(p)))
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "seed {seed}, op {i}: `{}` left the trees different\n  {first}",
                    op.text
                ));
            }
        }
    }
    Ok(())
}

fn strip_mtimes(s: &Snapshot) -> Snapshot {
    let userns = in_user_namespace();
    s.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            e.mtime = None;
            if userns {
                // Without an index (unprivileged) the kernel gives a copied-up file its lower
                // inode number and a new link of it the upper one; stratafs keeps one number.
                e.links.clear();
            }
            (k.clone(), e)
        })
        .collect()
}

fn one_seed(seed: u64, ops: usize, drop_caches: bool) {
    eprintln!("differential: seed {seed}, {ops} operations");
    let kfx = Fixture::new(3);
    let sfx = Fixture::new(3);
    build_layers(&kfx, seed, false);
    build_layers(&sfx, seed, true);
    if std::env::var_os("STRATA_DIFF_DUMP").is_some() {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && ls -laR l0 l1 l2 | head -400; getfattr -R -d -m - l0 l1 l2 2>/dev/null",
                sfx.root().display()
            ))
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    }
    let km = kfx.mount(Backend::Kernel);
    let sm = sfx.mount(Backend::Stratafs);
    let (kroot, sroot) = (km.root.clone(), sm.root.clone());
    let initial = with_timeout(60, "initial snapshots", {
        let (k, s) = (kroot.clone(), sroot.clone());
        move || (snapshot(&k), snapshot(&s))
    });
    assert_same_tree(
        &format!("seed {seed}: initial view, kernel (left) vs stratafs (right)"),
        &strip_mtimes(&initial.0),
        &strip_mtimes(&initial.1),
    );
    let (k, s) = (kroot.clone(), sroot.clone());
    let result = with_timeout(300, &format!("seed {seed}: {ops} operations"), move || {
        run_ops(seed, ops, drop_caches, &k, &s)
    });
    if let Err(msg) = result {
        panic!("{msg}");
    }
    let (k, s) = (kroot.clone(), sroot.clone());
    let (kt, st) = with_timeout(60, "final snapshots", move || (snapshot(&k), snapshot(&s)));
    assert_same_tree(
        &format!("seed {seed}: after the operations, kernel (left) vs stratafs (right)"),
        &strip_mtimes(&kt),
        &strip_mtimes(&st),
    );
    drop(km);
    drop(sm);
    // The kernel over stratafs's upper layer shows the same tree: mounted on the kernel
    // fixture's lowers (same content, kernel-form markers) with a fresh work dir.
    fs::remove_dir_all(&kfx.upper).unwrap();
    fs::remove_dir_all(&kfx.work).unwrap();
    fs::create_dir(&kfx.work).unwrap();
    copy_tree(&sfx.upper, &kfx.upper);
    let km2 = kfx.mount(Backend::Kernel);
    let r = km2.root.clone();
    let again = with_timeout(60, "kernel over stratafs upper", move || snapshot(&r));
    drop(km2);
    // One known difference: the kernel keeps the link count of a copied-up hard link whose
    // other names are hidden in its index (work dir), which a fresh mount does not have.
    // (Names whose inode has links the tree does not show, on either side.)
    let hidden_links: Vec<Vec<u8>> = kt
        .iter()
        .chain(again.iter())
        .filter(|(_, e)| e.nlink.is_some_and(|n| n > e.links.len() as u64 + 1))
        .map(|(k, _)| k.clone())
        .collect();
    let without_hidden = |s: &Snapshot| -> Snapshot {
        let mut s = strip_mtimes(s);
        for k in &hidden_links {
            if let Some(e) = s.get_mut(k) {
                e.nlink = None;
            }
        }
        s
    };
    assert_same_tree(
        &format!("seed {seed}: kernel's own tree (left) vs kernel over stratafs's upper (right)"),
        &without_hidden(&kt),
        &without_hidden(&again),
    );
}

/// Copy a layer with everything that matters to overlayfs (cp -a keeps xattrs and devices).
fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// The seeds to run: `STRATA_DIFF_SEED`, or `base + 1..=base + STRATA_DIFF_SEEDS` (default
/// `default`).
fn seeds(base: u64, default: u64) -> Vec<u64> {
    match std::env::var("STRATA_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("STRATA_DIFF_SEED is a number")],
        Err(_) => (base + 1..=base + env_num("STRATA_DIFF_SEEDS", default)).collect(),
    }
}

/// The two tests take turns: dropping caches is machine-wide, and the test without memory
/// pressure must run without it (kernel overlayfs's own answers can change when it forgets
/// inodes at arbitrary points of an operation sequence).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn random_operations_match_kernel_overlayfs() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ops = env_num("STRATA_DIFF_OPS", 500) as usize;
    let drop_caches = std::env::var_os("STRATA_DIFF_DROP_CACHES").is_some();
    for seed in seeds(0, 20) {
        one_seed(seed, ops, drop_caches);
    }
}

/// The same under memory pressure: the kernel forgets every unused inode before each
/// operation, so what the daemon keeps about a node beyond the kernel's references (hard
/// links' counts, names) is tested; seeds from 1000 so they differ from the test above.
#[test]
fn random_operations_match_kernel_overlayfs_when_the_kernel_forgets_inodes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ops = env_num("STRATA_DIFF_OPS", 500) as usize;
    for seed in seeds(1000, 8) {
        one_seed(seed, ops, true);
    }
}
