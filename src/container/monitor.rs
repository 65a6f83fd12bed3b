//! The monitor of a detached container: a small process (`strata __monitor ID`, strata run
//! again) that starts the container's process and outlives the strata command that asked.
//!
//! It makes itself a child subreaper and runs `runc run --detach`, so when runc exits the
//! container's init process becomes the monitor's child. It then waits for that process,
//! records the exit code in `state.json` (under the state lock, written to a temp file and
//! renamed), unmounts the rootfs (which ends the stratafs daemon) and honours `--rm`. If the
//! monitor is killed, `ps` still tells running from exited through the runtime, and shows the
//! exit code as unknown.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::lifecycle::Container;
use super::runtime::last_error_line;
use super::state::{Keeper, Paths};
use super::{io_err, Error, Result};

/// The hidden `strata` subcommand that runs [`run`].
pub const SUBCOMMAND: &str = "__monitor";

/// The executable that understands [`SUBCOMMAND`]: `$STRATA_EXE`, else the running one.
pub(crate) fn strata_exe() -> Result<PathBuf> {
    match std::env::var_os("STRATA_EXE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().map_err(io_err("find the strata executable")),
    }
}

/// Start container `id` (its rootfs already mounted) under a new monitor. Returns once the
/// runtime has started the process, or with the runtime's error.
pub(crate) fn spawn(store_root: &Path, paths: &Paths, id: &str) -> Result<()> {
    let err_log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(runtime_err(paths))
        .map_err(io_err("open runtime.err"))?;
    let exe = strata_exe()?;
    let mut child = Command::new(&exe)
        .arg("--root")
        .arg(store_root)
        .arg(SUBCOMMAND)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err_log)
        .spawn()
        .map_err(|e| Error::Runtime(format!("cannot run {}: {e}", exe.display())))?;
    // The monitor answers one line on its stdout ("ok" or the error) and then closes it.
    let mut answer = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut answer);
    }
    let answer = answer.trim();
    if answer == "ok" {
        // The monitor lives on; it is reparented to init when this process exits.
        return Ok(());
    }
    let _ = child.wait();
    if answer.is_empty() {
        return Err(Error::Runtime(format!(
            "the monitor exited without starting the container (see {})",
            runtime_err(paths).display()
        )));
    }
    Err(Error::Runtime(answer.to_string()))
}

fn runtime_err(paths: &Paths) -> PathBuf {
    paths.dir.join("runtime.err")
}

/// The monitor's body, run as `strata __monitor ID` with its stdout a pipe to the strata
/// command that started it. Returns when the container's process has exited and been
/// recorded.
pub fn run(store_root: &Path, id: &str) -> Result<()> {
    // Out of the caller's session: closing its terminal must not end the container.
    let _ = rustix::process::setsid();
    let started = start(store_root, id);
    let mut stdout = std::io::stdout();
    let (mut c, pid, terminal) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(stdout, "{e}");
            let _ = stdout.flush();
            return Err(e);
        }
    };
    let _ = writeln!(stdout, "ok");
    let _ = stdout.flush();
    // Close the pipe (the caller reads to its end) and let go of the caller's terminal.
    let _ = crate::sys::detach_stdio();
    let copier = terminal.map(|(master, log)| copy_terminal(master, log));

    let code = wait_for(pid);
    if let Some(done) = copier {
        // The terminal's output ends (EIO) once no process holds its slave side.
        let _ = done.recv_timeout(Duration::from_secs(5));
    }
    let me = Keeper::me();
    c.finish(code, me, true)
}

/// What `start` hands back: the container, its init pid, and for `-t` the terminal's master
/// side with the log its output goes to.
type Started = (Container, i32, Option<(OwnedFd, File)>);

/// Start the process with the runtime; returns the container and its init pid.
fn start(store_root: &Path, id: &str) -> Result<Started> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| io_err("become a child subreaper")(e.into()))?;
    let mut c = Container::open_id(store_root, id)?;
    let paths = c.paths().clone();
    let rt = c.runtime()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log())
        .map_err(io_err("open log"))?;
    let err_log = log.try_clone().map_err(io_err("dup log"))?;
    let pid_file = paths.dir.join("pid");
    let _ = std::fs::remove_file(&pid_file);
    let tty = oci_spec::runtime::Spec::load(paths.config())?
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    // A detached terminal: runc sends the pty master over this socket. Its path is relative
    // (runc runs in the bundle dir) because absolute store paths can exceed sun_path's 108
    // bytes.
    let console = if tty {
        std::env::set_current_dir(&paths.dir).map_err(io_err("enter the container dir"))?;
        let _ = std::fs::remove_file(CONSOLE_SOCKET);
        Some(UnixListener::bind(CONSOLE_SOCKET).map_err(io_err("bind the console socket"))?)
    } else {
        None
    };
    let mut cmd = rt.command();
    cmd.current_dir(&paths.dir)
        .arg("--log")
        .arg(runtime_err(&paths))
        .args(["run", "--detach", "--pid-file"])
        .arg(&pid_file);
    if tty {
        cmd.args(["--console-socket", CONSOLE_SOCKET]);
    }
    cmd.arg("--bundle")
        .arg(&paths.dir)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    let st = cmd
        .status()
        .map_err(|e| Error::Runtime(format!("cannot run {}: {e}", rt.path.display())));
    let master = match (&console, &st) {
        (Some(l), Ok(s)) if s.success() => Some(receive_terminal(l)),
        _ => None,
    };
    if console.is_some() {
        let _ = std::fs::remove_file(paths.dir.join(CONSOLE_SOCKET));
    }
    let st = st?;
    if !st.success() {
        let msg = std::fs::read(runtime_err(&paths))
            .map(|b| last_error_line(&b))
            .unwrap_or_default();
        return Err(Error::Runtime(if msg.is_empty() {
            format!("{} run failed ({st})", rt.name)
        } else {
            msg
        }));
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or_else(|| Error::Runtime(format!("{} wrote no pid file", rt.name)))?;
    let terminal = match master {
        Some(Ok(m)) => {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(paths.log())
                .map_err(io_err("open log"))?;
            Some((m, log))
        }
        Some(Err(e)) => {
            // Without its master the terminal would block the process: do not leave it.
            let _ = rt.kill(id, "KILL", true);
            return Err(e);
        }
        None => None,
    };
    c.mark_running(Keeper::me())?;
    Ok((c, pid, terminal))
}

/// The console socket's name in the container dir.
const CONSOLE_SOCKET: &str = "console.sock";

/// Take the pty master that runc sent over the console socket (SCM_RIGHTS). runc has
/// already exited successfully, so its connection and message are queued.
fn receive_terminal(listener: &UnixListener) -> Result<OwnedFd> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let none = || Error::Runtime("the runtime sent no terminal over the console socket".into());
    listener
        .set_nonblocking(true)
        .map_err(io_err("console socket"))?;
    let (stream, _) = listener.accept().map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            none()
        } else {
            io_err("accept on the console socket")(e)
        }
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err("console socket"))?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // runc sends the terminal's name as the data.
    let mut name = [0u8; 4096];
    loop {
        match recvmsg(
            &stream,
            &mut [std::io::IoSliceMut::new(&mut name)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err("receive the terminal")(e.into())),
        }
    }
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(none())
}

/// Copy the terminal's output into the log until it ends; the receiver hears when done.
fn copy_terminal(master: OwnedFd, mut log: File) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut master = File::from(master);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if log.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: every slave fd is closed, the terminal is done.
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    });
    rx
}

/// Wait for `pid` (our child once runc has exited) and return its exit code, 128+N for a
/// signal; `None` if it could not be waited for (then it is only watched until it is gone).
fn wait_for(pid: i32) -> Option<i32> {
    use rustix::process::{wait, WaitOptions};
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((p, st))) if p.as_raw_nonzero().get() == pid => {
                return st
                    .exit_status()
                    .or_else(|| st.terminating_signal().map(|s| 128 + s));
            }
            // Another orphan of our subtree: reaped, nothing to record.
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::warn!("cannot wait for the container's process {pid}: {e}");
                while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return None;
            }
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Wait up to `timeout` for `f` to hold, polling.
pub(crate) fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
