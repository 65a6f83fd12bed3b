//! Shared harness for the integration tests: layer fixtures, real mounts with a deadline, and
//! snapshots of a mounted tree for comparing stratafs with kernel overlayfs.
//!
//! Every fixture lives in its own temp dir under `$STRATA_TEST_TMP` (default: the system temp
//! dir), every mount is unmounted on drop and a stratafs daemon is killed by its PID, so tests
//! can run in parallel and a hung daemon fails one test, not the suite.
//!
//! Run as root (the tests mount FUSE and kernel overlayfs; some use `setpriv`, `setfacl`,
//! `unshare` and tmpfs). Tests written with [`both_backends!`] are named `NAME::kernel` and
//! `NAME::stratafs`, so `cargo test --test ops_read -- ::kernel` checks the expectations
//! against the reference alone, and `-- ::stratafs` checks our daemon.
#![allow(dead_code)]

pub mod cli;
pub mod modes;
pub mod registry;
pub mod unprivileged;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::Timespec;
use rustix::fs::{FileType, Mode, Timestamps, XattrFlags, CWD};

/// Default deadline, in seconds, for the filesystem work of one test.
pub const DEADLINE: u64 = 30;

/// Which filesystem serves a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Kernel overlayfs: the reference semantics.
    Kernel,
    /// Our FUSE daemon, `target/debug/stratafs`.
    Stratafs,
}

impl Backend {
    /// Both backends, the reference first.
    pub const ALL: [Backend; 2] = [Backend::Kernel, Backend::Stratafs];
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skip a test (pass with a note) when not root: it mounts, chowns or runs rootful containers.
#[macro_export]
macro_rules! need_root {
    () => {
        if !$crate::common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// Generates, for each named `fn NAME(b: Backend)`, a module `NAME` with the tests `kernel`
/// and `stratafs`, so each backend passes or fails on its own and can be filtered by name.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn kernel() {
                    super::$name($crate::common::Backend::Kernel)
                }
                #[test]
                fn stratafs() {
                    super::$name($crate::common::Backend::Stratafs)
                }
            }
        )*
    };
}

/// Whether the tests run inside a user namespace (as an unprivileged user): then kernel
/// overlayfs is mounted with `userxattr` and opaque markers use `user.overlay.opaque`.
pub fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().take(3).collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// The base directory for temp dirs: `$STRATA_TEST_TMP` or the system temp dir.
pub fn scratch_base() -> PathBuf {
    let base = std::env::var_os("STRATA_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&base).expect("create scratch base");
    base
}

/// A fresh temp dir under [`scratch_base`].
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-test-")
        .tempdir_in(scratch_base())
        .expect("create temp dir")
}

/// Lower layers, an upper, a work dir and a mount point, all in one temp dir.
pub struct Fixture {
    dir: tempfile::TempDir,
    /// Lower layers, index 0 is the top one (as in `lowerdir=`).
    pub lowers: Vec<PathBuf>,
    /// The upper (writable) layer.
    pub upper: PathBuf,
    /// The work dir, on the upper's filesystem.
    pub work: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
}

impl Fixture {
    /// A fixture with `layers` empty lower layers and an empty upper.
    pub fn new(layers: usize) -> Fixture {
        let dir = tempdir();
        let root = dir.path().to_path_buf();
        let lowers: Vec<PathBuf> = (0..layers).map(|i| root.join(format!("l{i}"))).collect();
        for l in &lowers {
            fs::create_dir(l).unwrap();
        }
        let upper = root.join("upper");
        let work = root.join("work");
        let mnt = root.join("mnt");
        for d in [&upper, &work, &mnt] {
            fs::create_dir(d).unwrap();
        }
        Fixture {
            dir,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    /// The temp dir holding everything of this fixture.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A builder for lower layer `i` (0 = top).
    pub fn lower(&self, i: usize) -> Layer {
        Layer::at(&self.lowers[i])
    }

    /// A builder for the upper layer (to prepare an upper as a previous mount would have).
    pub fn upper_layer(&self) -> Layer {
        Layer::at(&self.upper)
    }

    /// Mounts the union read-write with `backend`.
    pub fn mount(&self, backend: Backend) -> Mount<'_> {
        Mount::new(self, backend, &MountSpec::default())
    }

    /// Mounts the union with explicit options.
    pub fn mount_with(&self, backend: Backend, spec: &MountSpec) -> Mount<'_> {
        Mount::new(self, backend, spec)
    }

    /// The `lowerdir=` value: top first, for both backends.
    pub fn lowerdir_opt(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.to_str().expect("utf-8 temp path").to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// How to mount a fixture.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// With an upper and work dir (read-write); without, the mount is read-only.
    pub writable: bool,
    /// Extra `-o` options appended after the layer options.
    pub extra: Vec<String>,
}

impl MountSpec {
    /// A writable mount whose lowers include the lazy layer described by the spec file
    /// `spec`; with `fetch` false its files are filled on first open only (what a test reads is
    /// what gets fetched), with `fetch` also by the daemon's background fetch.
    pub fn lazy(spec: &Path, fetch: bool) -> MountSpec {
        let mut extra = vec![format!("lazy={}", spec.display())];
        if !fetch {
            extra.push("lazyfetch=off".into());
        }
        MountSpec {
            writable: true,
            extra,
        }
    }
}

/// Names in `dir`, unsorted (none if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Default for MountSpec {
    fn default() -> Self {
        MountSpec {
            writable: true,
            extra: Vec::new(),
        }
    }
}

/// A builder that puts entries into one layer directory, creating parents (0755) as needed.
pub struct Layer {
    root: PathBuf,
}

impl Layer {
    /// A builder for the layer at `root`.
    pub fn at(root: &Path) -> Layer {
        Layer {
            root: root.to_path_buf(),
        }
    }

    /// The absolute path of `rel` inside the layer.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn parent(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        p
    }

    /// A regular file with mode 0644.
    pub fn file(&self, rel: impl AsRef<Path>, content: &[u8]) -> &Self {
        self.file_mode(rel, content, 0o644)
    }

    /// A regular file with an exact mode.
    pub fn file_mode(&self, rel: impl AsRef<Path>, content: &[u8], mode: u32) -> &Self {
        let p = self.parent(&rel);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// A directory (and its parents), mode 0755.
    pub fn dir(&self, rel: impl AsRef<Path>) -> &Self {
        fs::create_dir_all(self.path(rel)).unwrap();
        self
    }

    /// A directory with an exact mode.
    pub fn dir_mode(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        let p = self.path(&rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// A symlink at `rel` pointing to `target` (not resolved).
    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<OsStr>) -> &Self {
        let p = self.parent(rel);
        symlink(Path::new(target.as_ref()), p).unwrap();
        self
    }

    /// A hard link `new` to the existing `existing`.
    pub fn hardlink(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> &Self {
        let p = self.parent(new);
        fs::hard_link(self.path(existing), p).unwrap();
        self
    }

    /// A fifo with an exact mode.
    pub fn fifo(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        let p = self.parent(&rel);
        rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(mode), 0).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// A character or block device node.
    pub fn device(&self, rel: impl AsRef<Path>, block: bool, major: u32, minor: u32) -> &Self {
        let p = self.parent(&rel);
        let ft = if block {
            FileType::BlockDevice
        } else {
            FileType::CharacterDevice
        };
        let dev = rustix::fs::makedev(major, minor);
        rustix::fs::mknodat(CWD, &p, ft, Mode::from_raw_mode(0o600), dev).unwrap();
        self
    }

    /// Sets owner and group without following symlinks.
    pub fn chown(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> &Self {
        std::os::unix::fs::lchown(self.path(rel), Some(uid), Some(gid)).unwrap();
        self
    }

    /// Sets the exact mode (after chown, which may clear set-id bits).
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// Sets an xattr without following symlinks.
    pub fn xattr(&self, rel: impl AsRef<Path>, name: &str, value: &[u8]) -> &Self {
        rustix::fs::lsetxattr(self.path(rel), name, value, XattrFlags::empty()).unwrap();
        self
    }

    /// Sets atime and mtime (seconds, nanoseconds) without following symlinks.
    pub fn times(&self, rel: impl AsRef<Path>, atime: (i64, i64), mtime: (i64, i64)) -> &Self {
        set_times(&self.path(rel), atime, mtime);
        self
    }

    /// An overlayfs whiteout: a 0/0 character device named `rel`.
    pub fn whiteout(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.parent(&rel);
        rustix::fs::mknodat(
            CWD,
            &p,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
        self
    }

    /// An OCI/AUFS whiteout: an empty file `.wh.NAME` next to where `rel` would be.
    pub fn wh_file(&self, rel: impl AsRef<Path>) -> &Self {
        let rel = rel.as_ref();
        let name = rel.file_name().expect("whiteout needs a name");
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let p = self.parent(rel.with_file_name(wh));
        fs::write(p, b"").unwrap();
        self
    }

    /// Marks dir `rel` opaque with `trusted.overlay.opaque=y` (creating it if missing); in a
    /// user namespace, where trusted.* is out of reach, with the kernel's `userxattr` form.
    pub fn opaque_trusted(&self, rel: impl AsRef<Path>) -> &Self {
        let name = if in_user_namespace() {
            "user.overlay.opaque"
        } else {
            "trusted.overlay.opaque"
        };
        self.dir(&rel).xattr(rel, name, b"y")
    }

    /// Marks dir `rel` opaque with `user.overlay.opaque=y` (creating it if missing).
    pub fn opaque_user(&self, rel: impl AsRef<Path>) -> &Self {
        self.dir(&rel).xattr(rel, "user.overlay.opaque", b"y")
    }

    /// Marks dir `rel` opaque with an OCI `.wh..wh..opq` file (creating it if missing).
    pub fn opaque_wh(&self, rel: impl AsRef<Path>) -> &Self {
        self.dir(&rel);
        fs::write(self.path(rel).join(".wh..wh..opq"), b"").unwrap();
        self
    }
}

/// Sets atime and mtime of `p` without following symlinks.
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1 as _,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        },
    };
    rustix::fs::utimensat(CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// A mounted union; unmounts (and kills a stratafs daemon by PID) on drop.
pub struct Mount<'a> {
    fx: &'a Fixture,
    /// Which filesystem serves it.
    pub backend: Backend,
    /// The mount point (the merged view's root).
    pub root: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
}

/// The mount points listed in `/proc/self/mountinfo` (unescaped), with their fs type.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let point = unescape_mountinfo(fields.get(4)?);
            Some((point, fields.get(sep + 1)?.to_string()))
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The fs type mounted at `p`, if `p` is a mount point (the topmost mount wins).
pub fn mounted_type(p: &Path) -> Option<String> {
    mounts()
        .into_iter()
        .rev()
        .find(|(m, _)| m == p)
        .map(|(_, t)| t)
}

/// Runs a command and returns (success, stdout+stderr) without panicking.
pub fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Unmounts `p`: politely first (fusermount3 -u for FUSE, umount otherwise), then lazily.
/// Returns false if a lazy unmount was needed (something kept the mount busy).
pub fn unmount(p: &Path) -> bool {
    let mut clean = true;
    for _ in 0..8 {
        let Some(ty) = mounted_type(p) else {
            return clean;
        };
        let ok = if ty.starts_with("fuse") {
            run(Command::new("fusermount3").arg("-u").arg(p)).0
                || run(Command::new("umount").arg(p)).0
        } else {
            run(Command::new("umount").arg(p)).0
        };
        if !ok {
            clean = false;
            run(Command::new("umount").arg("-l").arg(p));
        }
    }
    clean
}

impl<'a> Mount<'a> {
    fn new(fx: &'a Fixture, backend: Backend, spec: &MountSpec) -> Mount<'a> {
        let mut opts = vec![format!("lowerdir={}", fx.lowerdir_opt())];
        if spec.writable {
            opts.push(format!("upperdir={}", fx.upper.display()));
            opts.push(format!("workdir={}", fx.work.display()));
        }
        let log = fx.root().join(format!("mount-{:?}.log", backend));
        let mut m = Mount {
            fx,
            backend,
            root: fx.mnt.clone(),
            daemon: None,
            log,
        };
        match backend {
            Backend::Kernel => {
                if in_user_namespace() {
                    // Unprivileged overlayfs: user.overlay.* xattrs, no index.
                    opts.push("userxattr".into());
                } else if spec.writable {
                    opts.push("index=on".into());
                    opts.push("redirect_dir=off".into());
                    opts.push("metacopy=off".into());
                }
                opts.extend(spec.extra.iter().cloned());
                // With index=on the kernel refuses an upper dir still in use by a previous
                // mount's superblock. A mount namespace created meanwhile by a concurrent test
                // (a container, the rootless pause process) holds a copy of that mount and keeps
                // the superblock alive until it goes, so a remount waits for it.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let (ok, out) = run(Command::new("mount")
                        .args(["-t", "overlay", "overlay", "-o"])
                        .arg(opts.join(","))
                        .arg(&fx.mnt));
                    if ok {
                        break;
                    }
                    // EBUSY, in mount(8)'s words: "already mounted or mount point busy", or
                    // "overlay already mounted on X" when another overlay is mounted anywhere.
                    let busy = out.contains("already mounted");
                    assert!(
                        busy && Instant::now() < deadline,
                        "kernel overlay mount failed: {out}"
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
            Backend::Stratafs => {
                // `STRATAFS_TEST_OPTIONS=uring=off` (say) runs a suite over another transport
                // or mode; the test's own options come after and win.
                if let Ok(extra) = std::env::var("STRATAFS_TEST_OPTIONS") {
                    opts.extend(extra.split(',').filter(|o| !o.is_empty()).map(String::from));
                }
                opts.extend(spec.extra.iter().cloned());
                let logf = fs::File::create(&m.log).unwrap();
                let child = Command::new(env!("CARGO_BIN_EXE_stratafs"))
                    .arg("-f")
                    .arg("-o")
                    .arg(opts.join(","))
                    .arg(&fx.mnt)
                    .stdin(Stdio::null())
                    .stdout(logf.try_clone().unwrap())
                    .stderr(logf)
                    .spawn()
                    .expect("spawn stratafs");
                m.daemon = Some(child);
                m.wait_mounted();
            }
        }
        m
    }

    fn wait_mounted(&mut self) {
        let start = Instant::now();
        loop {
            if mounted_type(&self.root).is_some_and(|t| t.starts_with("fuse")) {
                return;
            }
            let child = self.daemon.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.daemon = None;
                panic!(
                    "stratafs exited ({status}) before mounting {}:\n{}",
                    self.root.display(),
                    self.daemon_log()
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!(
                    "stratafs did not mount {} within 10s:\n{}",
                    self.root.display(),
                    self.daemon_log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the daemon wrote to stdout/stderr so far.
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's PID (stratafs only).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// The merged path of `rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// The fixture this mount serves.
    pub fn fixture(&self) -> &Fixture {
        self.fx
    }

    /// Tears the mount down hard: lazy unmount and SIGKILL to the daemon, for a hung daemon.
    pub fn abort(&mut self) {
        run(Command::new("umount").arg("-l").arg(&self.root));
        if let Some(mut c) = self.daemon.take() {
            kill_pid(c.id(), rustix::process::Signal::KILL);
            let _ = c.wait();
        }
    }

    /// Runs `f(mount root)` on a thread; if it does not finish in `secs`, aborts the mount
    /// (lazy unmount, kill the daemon) and panics, so a hung daemon fails only this test.
    pub fn with_timeout<T, F>(&self, secs: u64, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(PathBuf) -> T + Send + 'static,
    {
        let root = self.root.clone();
        let res = run_with_deadline(secs, move || f(root));
        match res {
            Some(v) => v,
            None => {
                run(Command::new("umount").arg("-l").arg(&self.root));
                if let Some(pid) = self.daemon_pid() {
                    kill_pid(pid, rustix::process::Signal::KILL);
                }
                panic!(
                    "TIMEOUT: filesystem operations on the {:?} mount at {} did not finish within \
                     {secs}s (hung daemon?); lazily unmounted.\ndaemon log:\n{}",
                    self.backend,
                    self.root.display(),
                    self.daemon_log()
                );
            }
        }
    }

    /// Waits up to `secs` for the daemon to exit by itself (after a signal or an external
    /// unmount); `None` if it is still running.
    pub fn wait_daemon_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let child = self.daemon.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.daemon = None;
                return Some(s);
            }
            if start.elapsed() > Duration::from_secs(secs) {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts now (what drop does), returning the daemon's exit status if it had one.
    pub fn unmount(mut self) -> Option<std::process::ExitStatus> {
        self.teardown()
    }

    fn teardown(&mut self) -> Option<std::process::ExitStatus> {
        // After a lazy unmount a daemon serves open files until they close: do not wait long.
        let grace = if unmount(&self.root) { 5000 } else { 300 };
        let mut status = None;
        if let Some(mut c) = self.daemon.take() {
            let start = Instant::now();
            loop {
                if let Ok(Some(s)) = c.try_wait() {
                    status = Some(s);
                    break;
                }
                if start.elapsed() > Duration::from_millis(grace) {
                    kill_pid(c.id(), rustix::process::Signal::KILL);
                    let _ = c.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        status
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Sends `sig` to one process we started.
pub fn kill_pid(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Runs `f` on a thread and waits at most `secs` for it; `None` on timeout. A panic in `f`
/// is re-raised here so assertion messages stay intact.
pub fn run_with_deadline<T, F>(secs: u64, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    struct Done(mpsc::Sender<()>);
    impl Drop for Done {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let _done = Done(tx);
        f()
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => match handle.join() {
            Ok(v) => Some(v),
            Err(payload) => std::panic::resume_unwind(payload),
        },
        Err(_) => None,
    }
}

/// Runs `f` with a deadline and panics with a clear message if it does not finish in time.
pub fn with_timeout<T, F>(secs: u64, what: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_with_deadline(secs, f)
        .unwrap_or_else(|| panic!("TIMEOUT: {what} did not finish within {secs}s"))
}

/// The errno of a failed std call; panics (with `what`) if it succeeded.
pub fn errno<T: std::fmt::Debug>(what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

/// The errno of a failed rustix call; panics (with `what`) if it succeeded.
pub fn rerrno<T: std::fmt::Debug>(what: &str, r: rustix::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error(),
    }
}

/// Asserts that `r` failed with `expected` (a libc errno constant).
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(what: &str, r: io::Result<T>, expected: i32) {
    let got = errno(what, r);
    assert_eq!(
        got,
        expected,
        "{what}: expected {}, got {}",
        errno_name(expected),
        errno_name(got)
    );
}

/// Asserts that a rustix call failed with `expected`.
#[track_caller]
pub fn assert_rerrno<T: std::fmt::Debug>(what: &str, r: rustix::io::Result<T>, expected: i32) {
    let got = rerrno(what, r);
    assert_eq!(
        got,
        expected,
        "{what}: expected {}, got {}",
        errno_name(expected),
        errno_name(got)
    );
}

/// A readable errno for messages.
pub fn errno_name(e: i32) -> String {
    format!("{} ({e})", io::Error::from_raw_os_error(e))
}

/// The names in directory `p`, sorted, as raw bytes (without `.` and `..`).
pub fn names(p: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().into_vec())
        .collect();
    v.sort();
    v
}

/// The names in directory `p`, sorted, as strings (lossy).
pub fn list(p: &Path) -> Vec<String> {
    names(p)
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect()
}

/// Reads a whole file.
pub fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The value of xattr `name` of `p` (not following symlinks), or the errno.
pub fn get_xattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; 65536];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(e) => Err(e.raw_os_error()),
    }
}

/// The xattr names of `p` (not following symlinks), sorted.
pub fn list_xattrs(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..])
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()));
    let mut v: Vec<String> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

/// One entry of a [`snapshot`]: everything the kernel promises to keep equal across backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 'f' file, 'd' dir, 'l' symlink, 'p' fifo, 's' socket, 'c'/'b' devices.
    pub kind: char,
    /// Permission and set-id bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size for files and symlinks (directory sizes are fs-specific).
    pub size: Option<u64>,
    /// Contents of regular files.
    pub content: Option<Vec<u8>>,
    /// Target of symlinks.
    pub target: Option<Vec<u8>>,
    /// Device number of device nodes.
    pub rdev: Option<u64>,
    /// Link count of non-directories.
    pub nlink: Option<u64>,
    /// Modification time of non-directories.
    pub mtime: Option<(i64, i64)>,
    /// `user.*` xattrs, sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Other paths in the tree with the same inode number (hard links), sorted.
    pub links: Vec<Vec<u8>>,
}

/// A whole tree: relative path bytes to entry.
pub type Snapshot = BTreeMap<Vec<u8>, Entry>;

/// Walks `root` (not following symlinks) and records every entry by relative path bytes.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut inos: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut ino_of: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    walk(root, root, &mut out, &mut inos, &mut ino_of);
    for (path, e) in out.iter_mut() {
        if e.kind != 'd' {
            let ino = ino_of[path];
            e.links = inos[&ino].iter().filter(|p| *p != path).cloned().collect();
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<Vec<u8>, Entry>,
    inos: &mut BTreeMap<u64, Vec<Vec<u8>>>,
    ino_of: &mut BTreeMap<Vec<u8>, u64>,
) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_socket() {
            's'
        } else if ft.is_char_device() {
            'c'
        } else {
            'b'
        };
        let mut content = None;
        if kind == 'f' {
            let mut f = fs::File::open(&p).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            content = Some(buf);
        }
        let xattrs = list_xattrs(&p)
            .into_iter()
            .filter(|n| n.starts_with("user."))
            .map(|n| {
                let v = get_xattr(&p, &n).unwrap_or_default();
                (n, v)
            })
            .collect();
        let entry = Entry {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: matches!(kind, 'f' | 'l').then(|| md.size()),
            content,
            target: (kind == 'l').then(|| fs::read_link(&p).unwrap().into_os_string().into_vec()),
            rdev: matches!(kind, 'c' | 'b').then(|| md.rdev()),
            nlink: (kind != 'd').then(|| md.nlink()),
            mtime: (kind != 'd').then(|| (md.mtime(), md.mtime_nsec())),
            xattrs,
            links: Vec::new(),
        };
        if kind != 'd' {
            inos.entry(md.ino()).or_default().push(rel.clone());
            ino_of.insert(rel.clone(), md.ino());
        }
        out.insert(rel, entry);
        if kind == 'd' {
            walk(root, &p, out, inos, ino_of);
        }
    }
}

/// Asserts two snapshots are equal, naming the first differing paths.
#[track_caller]
pub fn assert_same_tree(what: &str, a: &BTreeMap<Vec<u8>, Entry>, b: &BTreeMap<Vec<u8>, Entry>) {
    let mut diffs = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => diffs.push(format!("only in left: {}", String::from_utf8_lossy(k))),
            Some(vb) if va != vb => diffs.push(format!(
                "differs: {}\n   left:  {va:?}\n   right: {vb:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("only in right: {}", String::from_utf8_lossy(k)));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: trees differ ({} entries):\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A path from raw bytes.
pub fn bpath(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// A name of `n` bytes built from `c`.
pub fn long_name(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// Stat without following symlinks (panics with the path on error).
pub fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

/// `truncate(2)` by path (no open descriptor, so FUSE gets a setattr without a file handle);
/// rustix has only `ftruncate`, hence libc.
pub fn truncate_path(p: &Path, len: u64) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// PIDs of stratafs processes (our binary) whose command line names `mnt`: the daemons a
/// test started, found after they went to the background.
pub fn stratafs_pids_for(mnt: &Path) -> Vec<u32> {
    let exe = fs::canonicalize(env!("CARGO_BIN_EXE_stratafs")).unwrap();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(target) = fs::read_link(e.path().join("exe")) else {
            continue;
        };
        if target != exe {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == mnt.as_os_str().as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
