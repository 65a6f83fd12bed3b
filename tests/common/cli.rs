//! A private `strata` store for one test, driven through the `strata` command line: every
//! command has a deadline, and on drop runtime state is deleted, mounts under the test's dir are
//! unmounted and processes naming it are killed (by PID), so a failing or hung test leaks
//! nothing into the next.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Deadline of one `strata` command (builds run several containers).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// A test's directory with a store in `store/`.
pub struct StrataEnv {
    /// The test's directory.
    pub dir: tempfile::TempDir,
    /// Run strata as this (uid, gid) instead of the caller (see [`StrataEnv::rootless`]).
    user: Option<(u32, u32)>,
}

impl StrataEnv {
    /// A new empty environment, its dir named after `prefix`.
    pub fn new(prefix: &str) -> StrataEnv {
        let base = super::scratch_base();
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(base)
            .unwrap();
        StrataEnv { dir, user: None }
    }

    /// From now on run strata as the unprivileged test user, who gets the test's directory
    /// (and search permission on its parents).
    pub fn rootless(&mut self) -> (u32, u32) {
        let user = self.give_to_user();
        self.user = Some(user);
        user
    }

    /// Give the test's directory to the unprivileged test user (and search permission on its
    /// parents); returns its (uid, gid).
    pub fn give_to_user(&self) -> (u32, u32) {
        use std::os::unix::fs::PermissionsExt;
        let (uid, gid) = super::unprivileged::setup_user();
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let mut p = self.dir.path().parent();
        while let Some(d) = p {
            let m = std::fs::metadata(d).unwrap().permissions().mode();
            if m & 0o001 == 0 {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(m | 0o001)).unwrap();
            }
            p = d.parent();
        }
        (uid, gid)
    }

    /// The store directory (`--root`).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A path inside the test's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Run `strata ARGS` with extra environment `envs` and optional `stdin`, killed at the deadline.
    pub fn run_with(&self, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Output {
        self.run_as(self.user, args, envs, stdin)
    }

    /// Run `strata ARGS` as `user` (uid, gid), or as the caller for `None`.
    pub fn run_as(
        &self,
        user: Option<(u32, u32)>,
        args: &[&str],
        envs: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Output {
        self.run_in(&self.store(), user, args, envs, stdin)
    }

    /// Run `strata ARGS` on the store at `root` (a test may have several).
    pub fn run_in(
        &self,
        root: &Path,
        user: Option<(u32, u32)>,
        args: &[&str],
        envs: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Output {
        let mut c = self.command_in(root, user, args);
        c.envs(envs.iter().copied());
        run_deadline(c, &format!("strata {args:?}"), COMMAND_DEADLINE, stdin)
    }

    /// The command `strata ARGS` on the store at `root` as `user`, for callers that spawn it
    /// themselves (and must then bound its run time).
    pub fn command_in(&self, root: &Path, user: Option<(u32, u32)>, args: &[&str]) -> Command {
        let mut c = match user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--init-groups", "--"])
                    .arg(env!("CARGO_BIN_EXE_strata"))
                    .env("HOME", self.dir.path());
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_strata")),
        };
        c.args(args)
            .current_dir(self.dir.path())
            .env("STRATA_ROOT", root)
            .env("STRATA_STRATAFS", env!("CARGO_BIN_EXE_stratafs"))
            .env_remove("STRATA_MOUNT")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LOG");
        c
    }

    /// An external tool that must succeed, run in the test's directory; its stdout.
    pub fn tool(&self, prog: &str, args: &[&str]) -> String {
        let mut c = Command::new(prog);
        c.args(args).current_dir(self.dir.path());
        let o = run_deadline(c, &format!("{prog} {args:?}"), COMMAND_DEADLINE, None);
        assert!(
            o.status.success(),
            "{prog} {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run `strata ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[], None)
    }

    /// `strata ARGS` that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `strata ARGS` that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "strata {args:?} succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).unwrap()
    }

    /// A build context directory `name` holding a copy of the host's static busybox.
    pub fn busybox_context(&self, name: &str) -> PathBuf {
        let d = self.path(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy("/bin/busybox", d.join("busybox")).expect("busybox-static is needed");
        d
    }

    /// Container IDs in the store.
    pub fn containers(&self) -> Vec<String> {
        match std::fs::read_dir(self.store().join("containers")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Mount points under the test's dir.
    pub fn mounts_under(&self) -> Vec<String> {
        let me = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&me))
            .map(String::from)
            .collect()
    }

    /// PIDs of live processes whose command line names the test's dir.
    pub fn processes(&self) -> Vec<i32> {
        let me = self.dir.path().to_string_lossy().into_owned();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            if !zombie && String::from_utf8_lossy(&cmd).contains(&me) {
                out.push(pid);
            }
        }
        out
    }

    /// Nothing is left running or mounted (waits up to 5 s for daemons to exit).
    pub fn assert_no_leaks(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && !(self.mounts_under().is_empty() && self.processes().is_empty())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.mounts_under(), Vec::<String>::new(), "mounts left");
        assert_eq!(self.processes(), Vec::<i32>::new(), "processes left");
    }
}

/// Container IDs in the store at `root`.
pub fn containers_in(root: &Path) -> Vec<String> {
    match std::fs::read_dir(root.join("containers")) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Run `c` to completion with `stdin`, killed at `deadline`; stdout and stderr captured by
/// threads, so a daemon that inherited the pipes cannot hang the test either.
pub fn run_deadline(mut c: Command, what: &str, deadline: Duration, stdin: Option<&str>) -> Output {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    run_deadline_child(child, what, deadline)
}

/// Wait at most `deadline` for `child` (stdout and stderr piped), killing it then.
pub fn run_deadline_child(
    mut child: std::process::Child,
    what: &str,
    deadline: Duration,
) -> Output {
    let reader = |mut r: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            let _ = tx.send(v);
        });
        rx
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let e = err.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
            panic!("{what} timed out; stderr: {}", String::from_utf8_lossy(&e));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let left = deadline.saturating_sub(start.elapsed()) + Duration::from_secs(1);
    let stdout = out.recv_timeout(left).unwrap_or_default();
    let stderr = err.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Files (not directories) under `dir`, recursively.
pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

impl Drop for StrataEnv {
    fn drop(&mut self) {
        // Every store of the test: `store`, `store2`, ...
        let stores = std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("store"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_else(|_| Vec::new());
        for root in stores {
            for id in containers_in(&root) {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(root.join("runtime/runc"))
                    .args(["delete", "--force", &id])
                    .output();
            }
        }
        let mut m = self.mounts_under();
        m.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for p in m {
            if !Command::new("fusermount3")
                .args(["-u", &p])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                let _ = Command::new("umount").args(["-l", &p]).status();
            }
        }
        for pid in self.processes() {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}
