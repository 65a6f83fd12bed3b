//! Container networking end to end, rootful (netavark, a bridge with NAT) and rootless
//! (slirp4netns in the store's user namespace): published TCP and UDP ports fetched from the
//! host, `-P`, `strata port` and `ps`, the clash error, outbound access to a server on this
//! machine, container to container, the DNS files, and clean-up after each way a container
//! ends. Traffic goes only to this machine; host ports come from 5220-5279.
//!
//! Each test has its own store; on drop its containers are removed with `rm -f` (which tears
//! their network down) before the store's own clean-up.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Output;
use std::time::{Duration, Instant};

use common::cli::StrataEnv;

/// A store holding `web`: busybox with a page in /www, exposing 80/tcp and 9999/udp, with
/// /lib and /lib64 pointing into /usr so the host's /usr mounted there runs (Debian's busybox
/// `nc` has no UDP: the UDP server is the host's python3).
struct Net {
    cli: StrataEnv,
    rootless: bool,
    _guard: Guard,
}

/// A hold on [`ROOTLESS_ALONE`].
enum Guard {
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
}

impl std::ops::Deref for Net {
    type Target = StrataEnv;
    fn deref(&self) -> &StrataEnv {
        &self.cli
    }
}

/// Rootless tests run alone: the pause process of a rootless store makes a mount namespace
/// that copies every mount of the host at that moment, a rootful test's container root
/// included, whose stratafs then outlives its unmount until the pause process exits.
static ROOTLESS_ALONE: std::sync::RwLock<()> = std::sync::RwLock::new(());

impl Net {
    fn new(rootless: bool) -> Net {
        let guard = if rootless {
            Guard::Alone(ROOTLESS_ALONE.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Guard::Shared(ROOTLESS_ALONE.read().unwrap_or_else(|e| e.into_inner()))
        };
        let mut cli = StrataEnv::new("strata-net-");
        let ctx = cli.busybox_context("ctx");
        std::fs::create_dir_all(ctx.join("www")).unwrap();
        std::fs::write(ctx.join("www/index.html"), "hello from strata\n").unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             RUN mkdir /usr && ln -s usr/lib /lib && ln -s usr/lib64 /lib64\n\
             COPY www /www\nEXPOSE 80 9999/udp\n",
        )
        .unwrap();
        cli.ok(&["build", "-q", "-t", "web", ctx.to_str().unwrap()]);
        if rootless {
            cli.rootless();
        }
        Net {
            cli,
            rootless,
            _guard: guard,
        }
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "{args:?} should fail");
        text(&o.stderr)
    }

    /// The registry of leases this store's containers use.
    fn leases(&self) -> String {
        let p = if self.rootless {
            self.store().join("network/leases.json")
        } else {
            "/run/strata/network/leases.json".into()
        };
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Container `name`'s ID.
    fn id(&self, name: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// Nothing of container `id`'s network is left: no namespace file mounted in any mount
    /// namespace, no process naming the test's dir (monitor, slirp4netns), no lease, no
    /// firewall rule naming it or its host ports, and the host ports can be bound again.
    fn assert_network_gone(&self, id: &str, ports: &[(u16, &str)]) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        let leftovers = || {
            let mut left = Vec::new();
            left.extend(mounts_anywhere_under(&dir));
            left.extend(self.processes().iter().map(|p| format!("process {p}")));
            if !id.is_empty() && self.leases().contains(id) {
                left.push(format!("lease of {id}"));
            }
            if !self.rootless {
                let rules = iptables_save();
                for l in rules.lines() {
                    let port_rule = ports.iter().any(|(p, _)| {
                        l.contains(&format!("--dport {p} ")) && l.contains("NETAVARK")
                    });
                    if (!id.is_empty() && l.contains(id)) || port_rule {
                        left.push(format!("rule {l}"));
                    }
                }
            }
            for (p, proto) in ports {
                let addr: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
                let free = match *proto {
                    "udp" => UdpSocket::bind(addr).is_ok(),
                    _ => TcpListener::bind(addr).is_ok(),
                };
                if !free {
                    left.push(format!("host port {p}/{proto} held"));
                }
            }
            left
        };
        let mut left = leftovers();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            left = leftovers();
        }
        assert!(left.is_empty(), "left behind by {id}: {left:#?}");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for id in self.containers() {
            if !id.starts_with('.') {
                let _ = self.run(&["rm", "-f", &id]);
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

fn iptables_save() -> String {
    let o = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    text(&o.stdout)
}

/// Mount points under `dir` in any mount namespace (the rootless store's is the pause
/// process's).
fn mounts_anywhere_under(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let info = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        for m in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(dir) && !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        }
    }
    out
}

/// GET / from `addr`, retried until the server answers (at most 30 s: a loaded CI machine
/// can take seconds to start a container); the body.
fn http_get(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match get_once(addr) {
            Ok(body) if !body.is_empty() => return body,
            Ok(_) => last = "empty answer".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("GET http://{addr}/: {last}");
}

fn get_once(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// This machine's address on its first non-loopback interface (a UDP connect sends nothing).
fn host_address() -> IpAddr {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let target = resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() && !a.is_loopback())
        .unwrap_or("192.0.2.1".parse().unwrap());
    s.connect((target, 53)).unwrap();
    s.local_addr().unwrap().ip()
}

/// Poll `strata ps -a` until container `name` is no longer running.
fn wait_exited(n: &Net, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let ps = n.ok(&["ps", "-a"]);
        if ps
            .lines()
            .any(|l| l.ends_with(name) && l.contains("exited"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} did not exit:\n{}", n.ok(&["ps", "-a"]));
}

fn published_tcp_port(rootless: bool, port: u16) {
    let n = Net::new(rootless);
    let p = format!("127.0.0.1:{port}:80");
    n.ok(&[
        "run", "-d", "--name", "web", "-p", &p, "web", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}")),
        "hello from strata\n"
    );
    assert_eq!(
        n.ok(&["port", "web"]),
        format!("80/tcp -> 127.0.0.1:{port}\n")
    );
    assert_eq!(n.ok(&["port", "web", "80"]), format!("127.0.0.1:{port}\n"));
    let ps = n.ok(&["ps"]);
    assert!(ps.contains(&format!("127.0.0.1:{port}->80/tcp")), "{ps}");
    assert!(ps.lines().next().unwrap().contains("PORTS"), "{ps}");

    // The clash names the holder; the failed start leaves nothing of its own behind.
    let err = n.fails(&[
        "run",
        "--rm",
        "--name",
        "other",
        "-p",
        &format!("{port}:80"),
        "web",
        "true",
    ]);
    assert!(err.contains("already published by container web"), "{err}");
    assert!(err.contains(&format!("{port}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!n.ok(&["ps", "-a"]).contains("other"));

    let id = n.id("web");
    n.ok(&["rm", "-f", "web"]);
    n.assert_network_gone(&id, &[(port, "tcp")]);
    // The port is free for the next container.
    n.ok(&[
        "run", "-d", "--name", "again", "-p", &p, "web", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}")),
        "hello from strata\n"
    );
    let id = n.id("again");
    n.ok(&["stop", "-t", "1", "again"]);
    n.assert_network_gone(&id, &[(port, "tcp")]);
    assert_eq!(n.ok(&["port", "again"]), "");
    n.ok(&["rm", "again"]);
}

#[test]
fn published_tcp_port_rootful() {
    need_root!();
    published_tcp_port(false, 5220);
}

#[test]
fn published_tcp_port_rootless() {
    need_root!();
    published_tcp_port(true, 5250);
}

/// `-P` publishes every EXPOSEd port on a random host port; `-p HOST:CTR` on all addresses
/// works through loopback and through the host's own address.
fn publish_all_and_every_address(rootless: bool, port: u16) {
    let n = Net::new(rootless);
    n.ok(&[
        "run", "-d", "--name", "all", "-P", "web", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    let ports = n.ok(&["port", "all"]);
    let mut lines: Vec<&str> = ports.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{ports}");
    assert!(lines[0].starts_with("80/tcp -> 0.0.0.0:"), "{ports}");
    assert!(lines[1].starts_with("9999/udp -> 0.0.0.0:"), "{ports}");
    let random: u16 = lines[0].rsplit(':').next().unwrap().parse().unwrap();
    assert!(random > 0);
    assert_eq!(
        http_get(&format!("127.0.0.1:{random}")),
        "hello from strata\n"
    );

    let p = format!("{port}:80");
    n.ok(&[
        "run", "-d", "--name", "wide", "-p", &p, "web", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}")),
        "hello from strata\n"
    );
    assert_eq!(
        http_get(&SocketAddr::new(host_address(), port).to_string()),
        "hello from strata\n"
    );
    let (a, w) = (n.id("all"), n.id("wide"));
    n.ok(&["rm", "-f", "all", "wide"]);
    n.assert_network_gone(&a, &[(random, "tcp")]);
    n.assert_network_gone(&w, &[(port, "tcp")]);
}

#[test]
fn publish_all_and_every_address_rootful() {
    need_root!();
    publish_all_and_every_address(false, 5221);
}

#[test]
fn publish_all_and_every_address_rootless() {
    need_root!();
    publish_all_and_every_address(true, 5251);
}

/// The UDP echo server (upper-cased) the UDP test runs with the host's /usr.
const UDP_ECHO: &str = "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('', 9999))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d.upper(), a)
";

/// UDP through a published port, both ways.
fn published_udp_port(rootless: bool, port: u16) {
    let n = Net::new(rootless);
    let p = format!("127.0.0.1:{port}:9999/udp");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "udp",
        "-p",
        &p,
        "-v",
        "/usr:/usr:ro",
        "web",
        "python3",
        "-c",
        UDP_ECHO,
    ]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while Instant::now() < deadline && got.is_empty() {
        let _ = s.send_to(b"datagram", ("127.0.0.1", port));
        let mut buf = [0u8; 64];
        if let Ok((len, _)) = s.recv_from(&mut buf) {
            got = buf[..len].to_vec();
        }
    }
    assert_eq!(text(&got), "DATAGRAM", "log: {}", n.ok(&["logs", "udp"]));
    assert_eq!(
        n.ok(&["port", "udp"]),
        format!("9999/udp -> 127.0.0.1:{port}\n")
    );
    let id = n.id("udp");
    n.ok(&["rm", "-f", "udp"]);
    n.assert_network_gone(&id, &[(port, "udp")]);
}

#[test]
fn published_udp_port_rootful() {
    need_root!();
    published_udp_port(false, 5222);
}

#[test]
fn published_udp_port_rootless() {
    need_root!();
    published_udp_port(true, 5252);
}

/// A server the test runs on this machine's own address answers a container (NAT on the
/// bridge rootful, slirp4netns rootless).
fn outbound_to_the_host(rootless: bool, port: u16) {
    let n = Net::new(rootless);
    let addr = SocketAddr::new(host_address(), port);
    let server = TcpListener::bind(addr).unwrap();
    let serve = std::thread::spawn(move || {
        server.set_nonblocking(false).unwrap();
        let (mut c, peer) = server.accept().unwrap();
        c.write_all(b"outbound ok\n").unwrap();
        peer
    });
    let o = n.run(&[
        "run",
        "--rm",
        "web",
        "sh",
        "-c",
        &format!("nc -w 5 {} {port} </dev/null", addr.ip()),
    ]);
    assert_eq!(stdout(&o), "outbound ok\n", "{}", text(&o.stderr));
    let peer = serve.join().unwrap();
    // Rootful the host sees the container's own address (delivered locally, not NATed);
    // rootless, slirp4netns's host-side socket.
    if rootless {
        assert_eq!(peer.ip(), addr.ip(), "{peer}");
    } else {
        assert!(peer.ip().to_string().starts_with("10.89."), "{peer}");
    }
}

#[test]
fn outbound_to_the_host_rootful() {
    need_root!();
    outbound_to_the_host(false, 5223);
}

#[test]
fn outbound_to_the_host_rootless() {
    need_root!();
    outbound_to_the_host(true, 5253);
}

/// Rootful containers share the bridge: one reaches another by its address.
#[test]
fn containers_reach_each_other_by_address() {
    need_root!();
    let n = Net::new(false);
    n.ok(&[
        "run", "-d", "--name", "srv", "web", "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["inspect", "srv"])).unwrap();
    let ip = v["net"]["address"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.89."), "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = String::new();
    while Instant::now() < deadline && !got.contains("hello from strata") {
        let o = n.run(&[
            "run",
            "--rm",
            "web",
            "sh",
            "-c",
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80"),
        ]);
        got = stdout(&o);
    }
    assert!(got.contains("hello from strata"), "{got}");
}

/// /etc/resolv.conf is the host's with loopback resolvers replaced; /etc/hosts names the
/// container at its address; `--network none` and `host` stay as they were.
fn dns_files(rootless: bool) {
    let n = Net::new(rootless);
    let o = n.run(&[
        "run",
        "--rm",
        "--hostname",
        "box",
        "web",
        "sh",
        "-c",
        "cat /etc/resolv.conf; echo ==; cat /etc/hosts; echo ==; ip -o -4 addr show",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = stdout(&o);
    let parts: Vec<&str> = out.split("==\n").collect();
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    let servers = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix("nameserver "))
            .map(|s| s.trim().to_string())
            .collect()
    };
    let mut want: Vec<String> = Vec::new();
    let mut loopback = false;
    for s in servers(&host) {
        match s.parse::<IpAddr>() {
            Ok(ip) if !ip.is_loopback() => want.push(s),
            _ if !loopback => {
                loopback = true;
                if rootless {
                    want.push("10.0.2.3".into());
                } else {
                    want.extend(["8.8.8.8".into(), "8.8.4.4".into()]);
                }
            }
            _ => {}
        }
    }
    assert_eq!(servers(parts[0]), want, "resolv.conf:\n{}", parts[0]);
    let addr = if rootless { "10.0.2.100" } else { "10.89." };
    assert!(
        parts[1]
            .lines()
            .any(|l| l.starts_with(addr) && l.ends_with("\tbox")),
        "hosts:\n{}",
        parts[1]
    );
    assert!(parts[2].contains(addr), "addresses:\n{}", parts[2]);
    // none: only loopback.
    let o = n.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "web",
        "ip",
        "-o",
        "link",
    ]);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    let e = n.fails(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-p",
        "5299:80",
        "web",
        "true",
    ]);
    assert!(e.contains("--network bridge"), "{e}");
    let e = n.fails(&["run", "--rm", "--network", "overlay", "web", "true"]);
    assert!(e.contains("unsupported --network"), "{e}");
    if !rootless {
        // A missing netavark is explained, and the failed start leaves nothing.
        let o = n.run_with(
            &["run", "--rm", "-p", "5229:80", "web", "true"],
            &[("STRATA_NETAVARK", "/nonexistent/netavark")],
            None,
        );
        let e = text(&o.stderr);
        assert!(!o.status.success());
        assert!(
            e.contains("netavark is not installed") && e.contains("apt-get install"),
            "{e}"
        );
        assert!(n.containers().is_empty());
        n.assert_network_gone("", &[(5229, "tcp")]);
    }
}

#[test]
fn dns_files_rootful() {
    need_root!();
    dns_files(false);
}

#[test]
fn dns_files_rootless() {
    need_root!();
    dns_files(true);
}

/// Every way a container ends leaves no namespace, rule, lease, helper or port behind.
fn clean_up_after_every_end(rootless: bool, base: u16) {
    let n = Net::new(rootless);
    let httpd = ["web", "httpd", "-f", "-p", "80", "-h", "/www"];
    let start = |name: &str, port: u16| -> String {
        let p = format!("127.0.0.1:{port}:80");
        let mut a = vec!["run", "-d", "--name", name, "-p", &p];
        a.extend_from_slice(&httpd);
        n.ok(&a);
        assert_eq!(
            http_get(&format!("127.0.0.1:{port}")),
            "hello from strata\n"
        );
        n.id(name)
    };

    // --rm, attached.
    let p = format!("127.0.0.1:{base}:80");
    let o = n.run(&[
        "run",
        "--rm",
        "-p",
        &p,
        "web",
        "sh",
        "-c",
        "cat /proc/net/route; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(n.containers().is_empty());
    n.assert_network_gone("", &[(base, "tcp")]);

    // A failed start.
    let o = n.run(&[
        "run",
        "-d",
        "--name",
        "bad",
        "-p",
        &p,
        "web",
        "/no/such/binary",
    ]);
    assert!(!o.status.success());
    let id = n.id("bad");
    n.assert_network_gone(&id, &[(base, "tcp")]);
    n.ok(&["rm", "bad"]);

    // Killed container: the monitor tears down.
    let id = start("killed", base + 1);
    n.ok(&["kill", "killed"]);
    wait_exited(&n, "killed");
    n.assert_network_gone(&id, &[(base + 1, "tcp")]);
    // It starts again on its network.
    n.ok(&["start", "killed"]);
    assert_eq!(
        http_get(&format!("127.0.0.1:{}", base + 1)),
        "hello from strata\n"
    );
    n.ok(&["rm", "-f", "killed"]);
    n.assert_network_gone(&id, &[(base + 1, "tcp")]);

    // Killed monitor, then the process ends: whoever looks next tears down.
    let id = start("orphan", base + 2);
    for pid in n.processes() {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if text(&cmd).contains("__monitor") && text(&cmd).contains(&id) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
    }
    n.ok(&["kill", "orphan"]);
    wait_exited(&n, "orphan");
    n.assert_network_gone(&id, &[(base + 2, "tcp")]);
    n.ok(&["rm", "orphan"]);

    // Killed strata (an attached run): `ps` after its container ended tears down.
    let mut c = n.command_in(
        &n.store(),
        rootless.then(common::unprivileged::setup_user),
        &[
            "run",
            "--name",
            "att",
            "-p",
            &format!("127.0.0.1:{}:80", base + 3),
            "web",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    assert_eq!(
        http_get(&format!("127.0.0.1:{}", base + 3)),
        "hello from strata\n"
    );
    let id = n.id("att");
    child.kill().unwrap();
    child.wait().unwrap();
    n.ok(&["kill", "att"]);
    wait_exited(&n, "att");
    n.assert_network_gone(&id, &[(base + 3, "tcp")]);
    n.ok(&["rm", "att"]);
    assert!(n.containers().is_empty());
    n.assert_no_leaks();
}

#[test]
fn clean_up_after_every_end_rootful() {
    need_root!();
    clean_up_after_every_end(false, 5230);
}

#[test]
fn clean_up_after_every_end_rootless() {
    need_root!();
    clean_up_after_every_end(true, 5260);
}

/// `strata build --network`: RUN steps keep outbound access (host by default, bridge on
/// request) and `none` leaves them only loopback.
#[test]
fn build_run_steps_get_the_network_asked_for() {
    need_root!();
    let n = Net::new(false);
    let addr = SocketAddr::new(host_address(), 5224);
    let server = TcpListener::bind(addr).unwrap();
    let serve = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut c, _) = server.accept().unwrap();
            c.write_all(b"reached\n").unwrap();
        }
    });
    let ctx = n.path("bctx");
    std::fs::create_dir_all(&ctx).unwrap();
    for (tag, network) in [("b-host", "host"), ("b-bridge", "bridge")] {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM web\nRUN nc -w 5 {} {} </dev/null > /outbound; \
                 ip -o -4 addr show | grep -v ' lo ' | wc -l > /ifaces\n",
                addr.ip(),
                addr.port()
            ),
        )
        .unwrap();
        n.ok(&[
            "build",
            "-q",
            "--no-cache",
            "--network",
            network,
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ]);
        let out = n.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            tag,
            "cat",
            "/outbound",
            "/ifaces",
        ]);
        assert!(out.starts_with("reached\n"), "{network}: {out}");
        assert_ne!(out.lines().nth(1), Some("0"), "{network}: {out}");
    }
    serve.join().unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM web\nRUN ip -o link | wc -l > /links\n",
    )
    .unwrap();
    n.ok(&[
        "build",
        "-q",
        "--no-cache",
        "--network",
        "none",
        "-t",
        "b-none",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(n.ok(&["run", "--rm", "b-none", "cat", "/links"]), "1\n");
    let e = n.fails(&["build", "--network", "overlay", ctx.to_str().unwrap()]);
    assert!(e.contains("unsupported --network"), "{e}");
}

/// A TCP echo server on port 7 (one thread per connection, echoing until the client's end),
/// run with the host's /usr.
const TCP_ECHO: &str = "import socket, threading
def echo(c):
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        c.sendall(d)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('', 7))
s.listen(512)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
";

/// Start `echo` (TCP_ECHO) rootless with `-p` for each of `publish`, under `envs`; waits
/// until `port` echoes.
fn start_echo(n: &Net, name: &str, publish: &[String], envs: &[(&str, &str)], port: u16) {
    let mut a = vec!["run", "-d", "--name", name];
    for p in publish {
        a.extend(["-p", p.as_str()]);
    }
    a.extend(["-v", "/usr:/usr:ro", "web", "python3", "-c", TCP_ECHO]);
    let o = n.run_with(&a, envs, None);
    assert!(o.status.success(), "{a:?}: {}", text(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(got) = echo_once(port, b"ping") {
            if got == b"ping" {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no echo on {port}: {}",
            n.ok(&["logs", name])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Send `data` to 127.0.0.1:`port`, close the sending side, read everything back.
fn echo_once(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = s.try_clone()?;
    let sent = data.to_vec();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&sent)?;
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    writer.join().unwrap()?;
    Ok(got)
}

/// Deterministic bytes that differ for each `seed` (xorshift).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The pids of strata's port forwarders (`strata __forward`) of this test.
fn forwarders(n: &Net) -> Vec<i32> {
    n.processes()
        .into_iter()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            text(&cmd).contains("__forward")
        })
        .collect()
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The thread count of `pid` once it stays the same for half a second (at most 10 s).
fn steady_threads(pid: i32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = threads(pid);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = threads(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Rootless published TCP ports go through strata's forwarder: a bulk transfer arrives
/// intact both ways (half-close passed on), 200 concurrent connections each get their own
/// bytes back, a published port nobody listens on in the container closes the client's
/// connection (no hang, the forwarder serves on), its relay threads end with their
/// connections, and it ends with the container.
#[test]
fn rootless_forwarder_relays_bulk_concurrent_and_refused() {
    need_root!();
    let n = Net::new(true);
    let (port, closed) = (5290, 5291);
    start_echo(
        &n,
        "echo",
        &[
            format!("127.0.0.1:{port}:7"),
            format!("127.0.0.1:{closed}:81"),
        ],
        &[],
        port,
    );
    let fwd = forwarders(&n);
    assert_eq!(fwd.len(), 1, "one forwarder per container: {fwd:?}");
    let fwd = fwd[0];
    // Once the connections that probed the port during start-up have ended.
    let idle = steady_threads(fwd);

    // 64 MiB there and back.
    let data = pattern(1, 64 << 20);
    let got = echo_once(port, &data).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echoed bytes differ");

    // 200 connections open at once.
    let mut conns: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(&pattern(i as u64 + 10, 64 << 10)).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(got == pattern(i as u64 + 10, 64 << 10), "connection {i}");
    }
    drop(conns);

    // Nothing listens on 81 in the container: the connection is closed, every time.
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", closed)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(k) => panic!("{k} bytes from a closed port"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ),
                "{e}"
            ),
        }
    }
    assert_eq!(echo_once(port, b"still here").unwrap(), b"still here");

    // Every relay thread ended with its connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads(fwd) != idle && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(threads(fwd), idle, "relay threads left");

    let id = n.id("echo");
    n.ok(&["kill", "echo"]);
    wait_exited(&n, "echo");
    n.assert_network_gone(&id, &[(port, "tcp"), (closed, "tcp")]);
    assert!(forwarders(&n).is_empty());
    n.ok(&["rm", "echo"]);
    n.assert_no_leaks();
}

/// `STRATA_PORT_FORWARDER=slirp4netns` forwards TCP through slirp4netns as before (no
/// forwarder process); a container with only UDP ports gets no forwarder either.
#[test]
fn rootless_forwarder_can_be_left_to_slirp4netns() {
    need_root!();
    let n = Net::new(true);
    let port = 5292;
    start_echo(
        &n,
        "slirp",
        &[format!("127.0.0.1:{port}:7")],
        &[("STRATA_PORT_FORWARDER", "slirp4netns")],
        port,
    );
    assert!(forwarders(&n).is_empty());
    let data = pattern(2, 4 << 20);
    assert!(echo_once(port, &data).unwrap() == data);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "udp",
        "-p",
        "127.0.0.1:5293:9999/udp",
        "web",
        "sleep",
        "60",
    ]);
    assert!(forwarders(&n).is_empty());
    let (a, b) = (n.id("slirp"), n.id("udp"));
    n.ok(&["rm", "-f", "slirp", "udp"]);
    n.assert_network_gone(&a, &[(port, "tcp")]);
    n.assert_network_gone(&b, &[(5293, "udp")]);
    n.assert_no_leaks();
}
