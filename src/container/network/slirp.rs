//! Rootless bridge networking through slirp4netns (Debian's `slirp4netns`), as rootless
//! podman 4 runs it: one slirp4netns per container, attached to the container's namespace
//! (made and kept by strata in the store's user namespace), giving it 10.0.2.100/24, a
//! default route through 10.0.2.2, a DNS forwarder at 10.0.2.3 and, through its API socket,
//! one host port forward per published port.
//!
//! The host's loopback stays reachable from the container at 10.0.2.2 (podman passes
//! `--disable-host-loopback`, but slirp4netns then also drops the replies of a UDP port
//! published on 127.0.0.1, whose clients are on the host's loopback; pasta, podman 5's
//! default, maps the gateway to the host's loopback the same way).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::PortMapping;
use super::{Error, Result};
use crate::container::state::Keeper;

/// The container's address.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// slirp4netns's DNS forwarder.
pub const DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3));
/// The API socket's name in the container directory.
const SOCKET: &str = "slirp4netns.sock";
/// The helper's log in the container directory.
const LOG: &str = "slirp4netns.log";

/// The slirp4netns binary, or why there is none (or why it cannot work here).
pub fn binary() -> Result<PathBuf> {
    let bin = crate::container::runtime::which("slirp4netns").ok_or_else(|| {
        Error::Missing(
            "slirp4netns is not installed (rootless --network bridge needs it: \
             `apt-get install slirp4netns`), or use --network none or host"
                .into(),
        )
    })?;
    use rustix::fs::{access, Access};
    if access("/dev/net/tun", Access::READ_OK | Access::WRITE_OK).is_err() {
        return Err(Error::Missing(
            "/dev/net/tun is not usable by this user (slirp4netns needs it for rootless \
             --network bridge; Debian makes it mode 0666), or use --network none or host"
                .into(),
        ));
    }
    Ok(bin)
}

/// Start slirp4netns on the namespace `netns` and forward `ports`; returns its process.
/// On error nothing is left running.
pub fn start(dir: &Path, netns: &Path, ports: &[PortMapping]) -> Result<Keeper> {
    let bin = binary()?;
    let socket = dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::File::create(dir.join(LOG))
        .map_err(|e| Error::Setup(format!("create {LOG}: {e}")))?;
    let err = log
        .try_clone()
        .map_err(|e| Error::Setup(format!("{LOG}: {e}")))?;
    // Its own process group: a terminal's ^C for `strata run` must not end the network.
    let mut child = Command::new(&bin)
        .args(["--configure", "--mtu=65520"])
        .args(["--netns-type=path", "--api-socket", SOCKET])
        .arg(netns)
        .arg("tap0")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Setup(format!("cannot run {}: {e}", bin.display())))?;
    let pid = child.id() as i32;
    let keeper = Keeper::of(pid);
    let fail = |child: &mut std::process::Child, msg: String| {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.join(LOG)).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Error::Setup(if last.is_empty() {
            msg
        } else {
            format!("{msg}: {last}")
        })
    };
    // Ready once its API answers (it configures the namespace before it serves the API).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(fail(&mut child, format!("slirp4netns exited ({st})")));
        }
        if socket.exists() && request(dir, &serde_json::json!({"execute": "list_hostfwd"})).is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(&mut child, "slirp4netns did not become ready".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in ports {
        let host = p
            .host_ip
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            .to_string();
        let req = serde_json::json!({
            "execute": "add_hostfwd",
            "arguments": {"proto": p.protocol.as_str(), "host_addr": host,
                          "host_port": p.host_port, "guest_port": p.container_port}
        });
        if let Err(e) = request(dir, &req) {
            return Err(fail(&mut child, format!("cannot publish {p}: {e}")));
        }
    }
    keeper.ok_or_else(|| Error::Setup("slirp4netns vanished at start".into()))
}

/// One API request (one per connection); the error of an `{"error": ...}` answer.
fn request(dir: &Path, req: &serde_json::Value) -> std::result::Result<serde_json::Value, String> {
    // Through the directory's fd: store paths can exceed a socket address's 108 bytes.
    let d = std::fs::File::open(dir).map_err(|e| e.to_string())?;
    let path = format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd());
    let mut s = UnixStream::connect(path).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(req.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    if let Some(e) = v.get("error") {
        return Err(e
            .get("desc")
            .and_then(|d| d.as_str())
            .map(String::from)
            .unwrap_or_else(|| e.to_string()));
    }
    Ok(v)
}

/// Stop the helper `keeper` (if it is still that process) and remove its socket.
pub fn stop(dir: &Path, keeper: Option<Keeper>) {
    if let Some(k) = keeper {
        end(k);
    }
    let _ = std::fs::remove_file(dir.join(SOCKET));
}

/// End process `k` if it is still that process: TERM, then KILL after two seconds.
pub(super) fn end(k: Keeper) {
    if !k.is_alive() {
        return;
    }
    let Some(pid) = rustix::process::Pid::from_raw(k.pid) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while k.is_alive() && Instant::now() < deadline {
        // Our own child (an attached run) becomes a zombie: reap it.
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
        std::thread::sleep(Duration::from_millis(5));
    }
    if k.is_alive() {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
}
