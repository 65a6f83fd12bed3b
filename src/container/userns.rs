//! Rootless containers with subordinate ids, as rootless podman runs them.
//!
//! When an unprivileged user has ranges in /etc/subuid and /etc/subgid and newuidmap and
//! newgidmap exist, strata keeps one user namespace per store with the full mapping
//! (namespace id 0 = the user, 1..=N = the subordinate range) and a mount namespace, both
//! held by a pause process (`strata __pause`). Every strata command joins them first, so the
//! rootfs mounts, runc, the monitors and file removal all run as root of that namespace:
//! stratafs can then chown to any mapped id, and container processes of any mapped uid may
//! use the mount. Containers share the namespace's mapping. Without subordinate ids (or
//! with `STRATA_SUBIDS=0`) nothing here applies and a container gets the single mapping
//! (root = the user) in a user namespace of its own.
//!
//! The pause process exits by itself once no strata process holds the store's
//! `userns/lock` (shared) and nothing is mounted in its mount namespace: no container's root
//! and no view of `strata mount` (which, rootless, only `strata unshare` sees).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::state::Keeper;
use super::{io_err, Error, Result};

/// The hidden `strata` subcommand that runs [`pause`].
pub const PAUSE_SUBCOMMAND: &str = "__pause";

/// Set in the environment of strata's own children (the monitor) once inside the namespace.
const ENV_INSIDE: &str = "STRATA_USERNS";

static JOINED: AtomicBool = AtomicBool::new(false);

/// Whether this process runs in the store's user namespace (containers then share it).
pub fn joined() -> bool {
    JOINED.load(Ordering::Relaxed)
}

/// A subordinate id range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    /// First host id.
    pub start: u32,
    /// Number of ids.
    pub count: u32,
}

/// The first range of `name` (or numeric `id`) in an /etc/subuid-style text.
pub fn parse_subids(text: &str, name: Option<&str>, id: u32) -> Option<SubRange> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() != 3 || !(Some(f[0]) == name || f[0] == id.to_string()) {
            return None;
        }
        let r = SubRange {
            start: f[1].parse().ok()?,
            count: f[2].parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

/// What the namespace needs: the caller's ids, their ranges and the helpers.
#[derive(Debug)]
struct Plan {
    uid: u32,
    gid: u32,
    uids: SubRange,
    gids: SubRange,
    newuidmap: PathBuf,
    newgidmap: PathBuf,
}

fn plan() -> Option<Plan> {
    if std::env::var("STRATA_SUBIDS").as_deref() == Ok("0") {
        return None;
    }
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    if uid == 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    });
    let subuid = std::fs::read_to_string("/etc/subuid").ok()?;
    let subgid = std::fs::read_to_string("/etc/subgid").ok()?;
    Some(Plan {
        uid,
        gid,
        uids: parse_subids(&subuid, name.as_deref(), uid)?,
        gids: parse_subids(&subgid, name.as_deref(), uid)?,
        newuidmap: super::runtime::which("newuidmap")?,
        newgidmap: super::runtime::which("newgidmap")?,
    })
}

/// Held while this process uses the store's namespace: the pause process waits for it.
#[derive(Debug)]
pub struct Session {
    _lock: File,
}

fn lock_file(dir: &Path, name: &str) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
        .map_err(io_err(format!("open {}", dir.join(name).display())))
}

fn flock(f: &File, op: rustix::fs::FlockOperation) -> Result<()> {
    loop {
        match rustix::fs::flock(f, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err("lock the user namespace")(e.into())),
        }
    }
}

/// Join the store's user and mount namespaces (starting the pause process that holds them
/// if needed) when rootless with subordinate ids; else do nothing. Must be called while the
/// process has a single thread (a condition of setns for user namespaces).
pub fn enter(store_root: &Path) -> Result<Option<Session>> {
    use rustix::fs::FlockOperation::LockShared;
    let dir = store_root.join("userns");
    if std::env::var_os(ENV_INSIDE).is_some() && dir.is_dir() {
        // Started by a strata already inside (the monitor): the namespace is inherited.
        let lock = lock_file(&dir, "lock")?;
        flock(&lock, LockShared)?;
        JOINED.store(true, Ordering::Relaxed);
        return Ok(Some(Session { _lock: lock }));
    }
    let Some(plan) = plan() else {
        return Ok(None);
    };
    crate::image::private::secure(store_root).map_err(io_err("open store"))?;
    crate::image::private::create(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let lock = lock_file(&dir, "lock")?;
    flock(&lock, LockShared)?;
    let pause = {
        let create = lock_file(&dir, "create.lock")?;
        flock(&create, rustix::fs::FlockOperation::LockExclusive)?;
        match read_pause(&dir).filter(Keeper::is_alive) {
            Some(k) => k,
            None => start_pause(store_root, &dir, &plan)?,
        }
    };
    join(pause.pid)?;
    JOINED.store(true, Ordering::Relaxed);
    std::env::set_var(ENV_INSIDE, "1");
    Ok(Some(Session { _lock: lock }))
}

fn read_pause(dir: &Path) -> Option<Keeper> {
    serde_json::from_slice(&std::fs::read(dir.join("pause.json")).ok()?).ok()
}

fn join(pid: i32) -> Result<()> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    let open = |ns: &str| {
        File::open(format!("/proc/{pid}/ns/{ns}"))
            .map_err(io_err(format!("open the {ns} namespace of pid {pid}")))
    };
    let (user, mnt) = (open("user")?, open("mnt")?);
    // Entering a mount namespace moves the working directory to its root: come back.
    let cwd = std::env::current_dir().ok();
    let fail = |what: &str, e: rustix::io::Errno| {
        Error::Runtime(format!("cannot join the rootless {what} namespace: {e}"))
    };
    move_into_link_name_space(user.as_fd(), Some(LinkNameSpaceType::User))
        .map_err(|e| fail("user", e))?;
    move_into_link_name_space(mnt.as_fd(), Some(LinkNameSpaceType::Mount))
        .map_err(|e| fail("mount", e))?;
    if let Some(d) = cwd {
        let _ = std::env::set_current_dir(d);
    }
    Ok(())
}

fn start_pause(store_root: &Path, dir: &Path, plan: &Plan) -> Result<Keeper> {
    let exe = super::monitor::strata_exe()?;
    let mut child = Command::new(&exe)
        .arg("--root")
        .arg(store_root)
        .arg(PAUSE_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Runtime(format!("cannot run {}: {e}", exe.display())))?;
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut input = child.stdin.take().expect("piped stdin");
    let mut line = String::new();
    let mut expect = |want: &str, line: &mut String| -> Result<()> {
        line.clear();
        let _ = out.read_line(line);
        if line.trim() == want {
            return Ok(());
        }
        Err(Error::Runtime(format!(
            "the rootless pause process failed: {}",
            line.trim()
        )))
    };
    let result = (|| {
        expect("unshared", &mut line)?;
        for (tool, id, r) in [
            (&plan.newuidmap, plan.uid, plan.uids),
            (&plan.newgidmap, plan.gid, plan.gids),
        ] {
            let o = Command::new(tool)
                .arg(pid.to_string())
                .args(["0", &id.to_string(), "1", "1"])
                .args([r.start.to_string(), r.count.to_string()])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::Runtime(format!("cannot run {}: {e}", tool.display())))?;
            if !o.status.success() {
                return Err(Error::Runtime(format!(
                    "{} failed: {}",
                    tool.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )));
            }
        }
        writeln!(input, "mapped").map_err(io_err("talk to the pause process"))?;
        expect("ok", &mut line)
    })();
    if let Err(e) = result {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let keeper = Keeper::of(pid as i32)
        .ok_or_else(|| Error::Runtime("the rootless pause process died".into()))?;
    let tmp = dir.join(format!("pause.json.tmp.{}", std::process::id()));
    let data = serde_json::to_vec(&keeper).map_err(|source| Error::Json {
        what: "pause.json".into(),
        source,
    })?;
    std::fs::write(&tmp, data).map_err(io_err("write pause.json"))?;
    std::fs::rename(&tmp, dir.join("pause.json")).map_err(io_err("rename pause.json"))?;
    Ok(keeper)
}

/// The pause process's body (`strata __pause`): create the namespaces, wait for the caller
/// to write the id maps, then hold them until the store's namespace is unused.
pub fn pause(store_root: &Path) -> Result<()> {
    let _ = rustix::process::setsid();
    let mut stdout = std::io::stdout();
    if let Err(e) = crate::sys::unshare_user_and_mount() {
        let _ = writeln!(stdout, "unshare: {e}");
        return Err(io_err("unshare")(e));
    }
    let _ = writeln!(stdout, "unshared");
    let _ = stdout.flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if line.trim() != "mapped" {
        return Err(Error::Runtime("no id maps were written".into()));
    }
    let _ = writeln!(stdout, "ok");
    let _ = stdout.flush();
    let _ = crate::sys::detach_stdio();
    let dir = store_root.join("userns");
    let lock = lock_file(&dir, "lock")?;
    let containers = store_root.join("containers");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let idle =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
        if !idle {
            continue;
        }
        let views = super::view::mounted(store_root).map_or(true, |v| !v.is_empty());
        if !super::mount::mounted_under(&containers) && !views {
            // Still holding the lock: nobody can join while the pid file goes.
            let _ = std::fs::remove_file(dir.join("pause.json"));
            return Ok(());
        }
        let _ = rustix::fs::flock(&lock, rustix::fs::FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        let r = |start, count| Some(SubRange { start, count });
        assert_eq!(parse_subids(text, Some("alice"), 1000), r(100000, 65536));
        assert_eq!(parse_subids(text, Some("carol"), 1001), r(200000, 1000));
        assert_eq!(parse_subids(text, Some("bob"), 1002), None, "empty range");
        assert_eq!(parse_subids("garbage\n", Some("alice"), 1000), None);
    }
}
