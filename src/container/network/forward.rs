//! strata's rootless TCP port forwarder: one small process per container (`strata __forward`,
//! started in the store's user namespace like slirp4netns) that listens on the host for each
//! published TCP port and, for each connection, connects to the container's address from a
//! thread that has joined the container's network namespace, then relays both ways with
//! `splice` through a pipe (the bytes never enter user space).
//!
//! This is the idea of podman's `rootlessport`: a host socket connected straight into the
//! namespace instead of through slirp4netns's user-mode TCP stack. A thread may join a network
//! namespace on its own (sockets belong to the namespace of the thread that makes them), so
//! no helper process in the namespace has to hand sockets back. UDP stays on slirp4netns's
//! forwarding. `STRATA_PORT_FORWARDER=slirp4netns` forwards TCP through slirp4netns instead.
//!
//! The process is recorded in the container's state ([`super::Attachment::forwarder`]) and
//! ended with the rest of the network; its listening sockets close with it.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustix::pipe::SpliceFlags;

use super::ports::{PortMapping, Protocol};
use super::{Endpoint, Error, Result};
use crate::container::state::Keeper;

/// The hidden `strata` subcommand that runs [`serve`].
pub const SUBCOMMAND: &str = "__forward";
/// The forwarder's log in the container directory.
const LOG: &str = "forward.log";
/// What one `splice` moves at most: a pipe's default capacity. Larger pipes (256 KiB, 1 MiB)
/// were no faster through loopback (about 8 Gbit/s each on the 2-core test VM) and count
/// against the user's pipe quota (`pipe-user-pages-soft`) once per direction and connection.
const CHUNK: usize = 64 * 1024;
/// A relay thread's stack: it only loops over two syscalls.
const STACK: usize = 64 * 1024;

/// Whether published TCP ports go through this forwarder (the default) rather than
/// slirp4netns (`STRATA_PORT_FORWARDER=slirp4netns`).
pub fn enabled() -> bool {
    std::env::var("STRATA_PORT_FORWARDER").as_deref() != Ok("slirp4netns")
}

/// Whether this forwarder carries mapping `p` (when [`enabled`]).
pub fn carries(p: &PortMapping) -> bool {
    p.protocol == Protocol::Tcp
}

/// One forwarded port: where it listens on the host, and the container port it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The host address and port.
    pub listen: SocketAddr,
    /// The port on the container's address.
    pub container_port: u16,
}

impl Route {
    /// The route of a published port.
    pub fn of(p: &PortMapping) -> Route {
        Route {
            listen: SocketAddr::new(
                p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                p.host_port,
            ),
            container_port: p.container_port,
        }
    }

    /// `HOST_ADDR:PORT=CTR_PORT` (`[::1]:80=80` for IPv6), its form on the command line.
    pub fn parse(s: &str) -> Result<Route> {
        let bad = || Error::Invalid(format!("invalid forward {s:?}: expected ADDR:PORT=PORT"));
        let (l, c) = s.rsplit_once('=').ok_or_else(bad)?;
        Ok(Route {
            listen: l.parse().map_err(|_| bad())?,
            container_port: c.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.listen, self.container_port)
    }
}

/// Start the forwarder of container `ep` (namespace `netns`, address `to`) for `ports`;
/// `None` if there is nothing to forward. Returns once every host port is bound; on error
/// nothing is left running.
pub fn start(
    ep: &Endpoint<'_>,
    netns: &Path,
    to: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<Option<Keeper>> {
    let dir = ep.dir;
    if ports.is_empty() {
        return Ok(None);
    }
    let exe = crate::container::monitor::strata_exe()
        .map_err(|e| Error::Setup(format!("port forwarder: {e}")))?;
    let log = std::fs::File::create(dir.join(LOG))
        .map_err(|e| Error::Setup(format!("create {LOG}: {e}")))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--root")
        .arg(ep.store_root)
        .arg(SUBCOMMAND)
        .arg("--netns")
        .arg(netns)
        .arg("--to")
        .arg(to.to_string());
    for p in ports {
        cmd.arg("--port").arg(Route::of(p).to_string());
    }
    // Its own process group: a terminal's ^C for `strata run` must not end the network.
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Setup(format!("cannot run {}: {e}", exe.display())))?;
    // One line: "ok" once every port is bound, or why not.
    let mut answer = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut answer);
    }
    let answer = answer.trim();
    let keeper = Keeper::of(child.id() as i32);
    if answer == "ok" {
        if let Some(k) = keeper {
            return Ok(Some(k));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(match answer {
        "ok" => Error::Setup("the port forwarder vanished at start".into()),
        "" => Error::Setup(format!(
            "the port forwarder exited at start (see {})",
            dir.join(LOG).display()
        )),
        why => Error::PortInUse(why.to_string()),
    })
}

/// The forwarder's body (`strata __forward`): bind every route's host port, say "ok" on
/// stdout, then relay connections into namespace `netns` at address `to` until killed.
/// Errors before "ok" are printed on stdout for [`start`]; later ones go to stderr (the log).
pub fn serve(netns: &Path, to: Ipv4Addr, routes: &[Route]) -> Result<()> {
    let ready = bind(netns, routes);
    let mut out = std::io::stdout();
    let (ns, listeners) = match ready {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(out, "{e}");
            return Err(e);
        }
    };
    // Every port accepts before the parent hears "ok": the forwarder is whole when `run`
    // returns (its threads included, which tests count).
    let mut accepting = Vec::new();
    for (l, r) in listeners {
        let ns = ns.clone();
        accepting.push(std::thread::spawn(move || accept_loop(l, ns, to, r)));
    }
    let _ = writeln!(out, "ok");
    let _ = out.flush();
    for t in accepting {
        let _ = t.join();
    }
    Ok(())
}

/// The namespace and the bound host ports of a forwarder.
type Bound = (Arc<OwnedFd>, Vec<(TcpListener, Route)>);

fn bind(netns: &Path, routes: &[Route]) -> Result<Bound> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| Error::Setup(format!("open {}: {e}", netns.display())))?;
    let mut listeners = Vec::new();
    for r in routes {
        let l = TcpListener::bind(r.listen).map_err(|e| {
            Error::PortInUse(format!("cannot listen on host port {}: {e}", r.listen))
        })?;
        listeners.push((l, *r));
    }
    Ok((Arc::new(OwnedFd::from(ns)), listeners))
}

fn accept_loop(l: TcpListener, ns: Arc<OwnedFd>, to: Ipv4Addr, r: Route) {
    loop {
        let client = match l.accept() {
            Ok((c, _)) => c,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                eprintln!("forward {r}: accept: {e}");
                // EMFILE and the like: let connections drain rather than spin.
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let ns = ns.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || {
                connection(
                    client,
                    &ns,
                    SocketAddr::new(IpAddr::V4(to), r.container_port),
                )
            });
        if let Err(e) = spawned {
            eprintln!("forward {r}: cannot start a relay: {e}");
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
    )
}

/// One connection: join the namespace (this thread only), connect to the container, relay
/// both ways. A refused connection closes the client's.
fn connection(client: TcpStream, ns: &OwnedFd, target: SocketAddr) {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    if let Err(e) = move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)) {
        eprintln!("forward to {target}: join the container's network namespace: {e}");
        return;
    }
    let server = match TcpStream::connect(target) {
        Ok(s) => s,
        Err(_) => {
            // Nothing listens there: the client sees its connection closed.
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let back = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || relay(&s2, &c2));
    relay(&client, &server);
    if let Ok(t) = back {
        let _ = t.join();
    }
}

/// Move bytes from `from` to `to` until `from` ends, then pass the end on (half-close). On an
/// error both connections are shut down, which also ends the other direction.
fn relay(from: &TcpStream, to: &TcpStream) {
    match splice_all(from, to) {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

fn splice_all(from: &TcpStream, to: &TcpStream) -> rustix::io::Result<()> {
    use rustix::io::Errno;
    use rustix::pipe::{pipe_with, splice, PipeFlags};
    let (r, w) = pipe_with(PipeFlags::CLOEXEC)?;
    loop {
        let n = match splice(from, None, &w, None, CHUNK, SpliceFlags::MOVE) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            match splice(&r, None, to, None, left, SpliceFlags::MOVE) {
                Ok(0) => return Err(Errno::PIPE),
                Ok(m) => left -= m,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn routes_round_trip_on_the_command_line() {
        for s in ["127.0.0.1:5200=80", "0.0.0.0:1=65535", "[::1]:5202=53"] {
            assert_eq!(Route::parse(s).unwrap().to_string(), s);
        }
        for s in ["127.0.0.1:80", "x=1", "127.0.0.1:80=x", "1.2.3.4=80"] {
            assert!(Route::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn relay_moves_both_ways_and_passes_the_end_on() {
        // a <-> (b relay c) <-> d, all on loopback in this namespace.
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l1.local_addr().unwrap()).unwrap();
        let (b, _) = l1.accept().unwrap();
        let c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        let (b2, c2) = (b.try_clone().unwrap(), c.try_clone().unwrap());
        let t1 = std::thread::spawn(move || relay(&b, &c));
        let t2 = std::thread::spawn(move || relay(&c2, &b2));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let w = std::thread::spawn(move || {
            a.write_all(&sent).unwrap();
            a.shutdown(Shutdown::Write).unwrap();
            let mut back = String::new();
            a.read_to_string(&mut back).unwrap();
            back
        });
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert!(got == data, "{} bytes arrived of {}", got.len(), data.len());
        d.write_all(b"done").unwrap();
        drop(d);
        assert_eq!(w.join().unwrap(), "done");
        t1.join().unwrap();
        t2.join().unwrap();
    }
}
