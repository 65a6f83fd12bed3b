//! Published ports: `-p [IP:][HOST:]CTR[/tcp|udp]` (ports or equal-length ranges), `-P` (every
//! `EXPOSE`d port on a random host port), and the checks that keep two containers, or a
//! container and a host process, off the same host port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn parse(s: &str) -> Result<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(Error::Invalid(format!(
                "unsupported protocol {other:?} in a port: tcp or udp"
            ))),
        }
    }

    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port: host address and port forwarded to a container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address it listens on; `None`: every address, loopback included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// The host port; 0 until a free one is chosen at start (`-P`, `-p CTR`).
    pub host_port: u16,
    /// The port in the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl PortMapping {
    /// Whether both want the same host port (same protocol, overlapping addresses).
    pub fn clashes(&self, other: &PortMapping) -> bool {
        self.host_port != 0
            && self.host_port == other.host_port
            && self.protocol == other.protocol
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
                _ => true,
            }
    }

    /// The host side as docker prints it: `0.0.0.0:8080`, `127.0.0.1:5201`, `[::1]:80`.
    pub fn host(&self) -> String {
        match self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) {
            IpAddr::V4(a) => format!("{a}:{}", self.host_port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.host_port),
        }
    }

    /// The address to bind on the host for this mapping.
    fn bind_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(
            self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port,
        )
    }
}

impl std::fmt::Display for PortMapping {
    /// `0.0.0.0:8080->80/tcp`, the form of docker's `ps`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}->{}/{}",
            self.host(),
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// A port or an inclusive range `A-B`.
fn parse_range(s: &str, what: &str, spec: &str) -> Result<(u16, u16)> {
    let bad = || Error::Invalid(format!("invalid {what} {s:?} in port spec {spec:?}"));
    let num = |t: &str| -> Result<u16> {
        match t.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad()),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(bad());
            }
            Ok((a, b))
        }
        None => {
            let n = num(s)?;
            Ok((n, n))
        }
    }
}

/// Parse one `-p` value into its mappings (a range gives one per port).
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>> {
    let (addr, proto) = match spec.rsplit_once('/') {
        Some((a, p)) => (a, Protocol::parse(p)?),
        None => (spec, Protocol::Tcp),
    };
    // `[IPv6]:HOST:CTR`, else split on colons: CTR, HOST:CTR, IP:HOST:CTR (HOST may be empty).
    let (ip, rest): (Option<&str>, &str) = if let Some(r) = addr.strip_prefix('[') {
        let (ip, rest) = r
            .split_once(']')
            .ok_or_else(|| Error::Invalid(format!("invalid port spec {spec:?}: unclosed '['")))?;
        let rest = rest.strip_prefix(':').ok_or_else(|| {
            Error::Invalid(format!(
                "invalid port spec {spec:?}: expected ':' after ']'"
            ))
        })?;
        (Some(ip), rest)
    } else {
        (None, addr)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, ctr) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, "", *c),
        (None, [h, c]) => (None, *h, *c),
        (None, [i, h, c]) => (Some(*i), *h, *c),
        (Some(i), [h, c]) => (Some(i), *h, *c),
        _ => {
            return Err(Error::Invalid(format!(
                "invalid port spec {spec:?}: expected [IP:][HOST:]CTR[/tcp|udp] \
                 (an IPv6 address goes in brackets)"
            )))
        }
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(i) => Some(i.parse::<IpAddr>().map_err(|_| {
            Error::Invalid(format!("invalid host address {i:?} in port spec {spec:?}"))
        })?),
    };
    let (c0, c1) = parse_range(ctr, "container port", spec)?;
    let hosts: Vec<u16> = if host.is_empty() {
        vec![0; usize::from(c1 - c0) + 1]
    } else {
        let (h0, h1) = parse_range(host, "host port", spec)?;
        if h1 - h0 != c1 - c0 {
            return Err(Error::Invalid(format!(
                "invalid port spec {spec:?}: the host range and the container range differ in length"
            )));
        }
        (h0..=h1).collect()
    };
    Ok((c0..=c1)
        .zip(hosts)
        .map(|(container_port, host_port)| PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol: proto,
        })
        .collect())
}

/// `-P`: every port the image exposes (`80/tcp`, `53/udp`, `8080`) on a random host port.
pub fn exposed(ports: &[String]) -> Result<Vec<PortMapping>> {
    let mut out = Vec::new();
    for p in ports {
        let (port, proto) = match p.split_once('/') {
            Some((n, pr)) => (n, Protocol::parse(pr)?),
            None => (p.as_str(), Protocol::Tcp),
        };
        let (a, b) = parse_range(port, "exposed port", p)?;
        out.extend((a..=b).map(|container_port| PortMapping {
            host_ip: None,
            host_port: 0,
            container_port,
            protocol: proto,
        }));
    }
    Ok(out)
}

/// Refuse two mappings of one container on the same host port.
pub fn check_distinct(ports: &[PortMapping]) -> Result<()> {
    for (i, a) in ports.iter().enumerate() {
        if let Some(b) = ports[i + 1..].iter().find(|b| a.clashes(b)) {
            return Err(Error::Invalid(format!(
                "host port {}/{} is published twice ({a} and {b})",
                a.host_port,
                a.protocol.as_str()
            )));
        }
    }
    Ok(())
}

/// Try to bind `addr` for `proto`: whether no host process holds it. The probe socket is
/// closed at once.
fn bindable(proto: Protocol, addr: SocketAddr) -> std::io::Result<u16> {
    match proto {
        Protocol::Tcp => TcpListener::bind(addr)?.local_addr().map(|a| a.port()),
        Protocol::Udp => UdpSocket::bind(addr)?.local_addr().map(|a| a.port()),
    }
}

/// Give every mapping with host port 0 a free port (one the kernel hands out, not held by
/// another mapping in `taken` or `ports`).
pub fn assign_random(ports: &mut [PortMapping], taken: &[PortMapping]) -> Result<()> {
    for i in 0..ports.len() {
        if ports[i].host_port != 0 {
            continue;
        }
        let mut chosen = None;
        for _ in 0..64 {
            let port = bindable(ports[i].protocol, ports[i].bind_addr(0)).map_err(|e| {
                Error::Invalid(format!(
                    "cannot find a free host port for {}/{}: {e}",
                    ports[i].container_port,
                    ports[i].protocol.as_str()
                ))
            })?;
            let cand = PortMapping {
                host_port: port,
                ..ports[i]
            };
            if !taken.iter().chain(ports.iter()).any(|t| t.clashes(&cand)) {
                chosen = Some(port);
                break;
            }
        }
        ports[i].host_port = chosen.ok_or_else(|| {
            Error::Invalid("cannot find a free host port: all tried are taken".into())
        })?;
    }
    Ok(())
}

/// Refuse a host port that a process on the host (not a container) already holds.
pub fn check_host_free(m: &PortMapping) -> Result<()> {
    match bindable(m.protocol, m.bind_addr(m.host_port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::PortInUse(format!(
            "host port {} is already in use by a process on the host",
            m.host()
        ))),
        Err(e) => Err(Error::Invalid(format!(
            "cannot publish on {}: {e}",
            m.host()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ip: Option<&str>, h: u16, c: u16, p: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.map(|i| i.parse().unwrap()),
            host_port: h,
            container_port: c,
            protocol: p,
        }
    }

    #[test]
    fn docker_publish_forms() {
        use Protocol::*;
        assert_eq!(parse_publish("80").unwrap(), [m(None, 0, 80, Tcp)]);
        assert_eq!(parse_publish("8080:80").unwrap(), [m(None, 8080, 80, Tcp)]);
        assert_eq!(
            parse_publish("127.0.0.1:5201:80").unwrap(),
            [m(Some("127.0.0.1"), 5201, 80, Tcp)]
        );
        assert_eq!(
            parse_publish("127.0.0.1::80/udp").unwrap(),
            [m(Some("127.0.0.1"), 0, 80, Udp)]
        );
        assert_eq!(
            parse_publish("[::1]:5202:53/UDP").unwrap(),
            [m(Some("::1"), 5202, 53, Udp)]
        );
        assert_eq!(
            parse_publish("5200-5202:80-82").unwrap(),
            [
                m(None, 5200, 80, Tcp),
                m(None, 5201, 81, Tcp),
                m(None, 5202, 82, Tcp)
            ]
        );
        assert_eq!(
            parse_publish("90-91").unwrap(),
            [m(None, 0, 90, Tcp), m(None, 0, 91, Tcp)]
        );
    }

    #[test]
    fn bad_publish_specs_are_explained() {
        for (spec, what) in [
            ("", "container port"),
            ("0", "container port"),
            ("70000:80", "host port"),
            ("80:x", "container port"),
            ("1-3:80-81", "differ in length"),
            ("9-8:80", "host port"),
            ("80/sctp", "sctp"),
            ("::1:80:80", "brackets"),
            ("[::1:80:80", "unclosed"),
            ("1.2.3:80:80", "host address"),
        ] {
            let e = parse_publish(spec).unwrap_err().to_string();
            assert!(e.contains(what), "{spec:?}: {e}");
        }
    }

    #[test]
    fn exposed_ports_become_random_mappings() {
        let v = exposed(&["80/tcp".into(), "53/udp".into(), "8080".into()]).unwrap();
        assert_eq!(
            v,
            [
                m(None, 0, 80, Protocol::Tcp),
                m(None, 0, 53, Protocol::Udp),
                m(None, 0, 8080, Protocol::Tcp)
            ]
        );
        assert!(exposed(&["x/tcp".into()]).is_err());
    }

    #[test]
    fn clashes_need_same_port_protocol_and_overlapping_address() {
        use Protocol::*;
        let any = m(None, 5200, 80, Tcp);
        assert!(any.clashes(&m(Some("127.0.0.1"), 5200, 81, Tcp)));
        assert!(!any.clashes(&m(None, 5200, 80, Udp)));
        assert!(!any.clashes(&m(None, 5201, 80, Tcp)));
        assert!(!m(Some("127.0.0.1"), 5200, 80, Tcp).clashes(&m(Some("127.0.0.2"), 5200, 80, Tcp)));
        assert!(m(Some("0.0.0.0"), 5200, 80, Tcp).clashes(&m(Some("127.0.0.2"), 5200, 80, Tcp)));
        // Unassigned random ports never clash.
        assert!(!m(None, 0, 80, Tcp).clashes(&m(None, 0, 80, Tcp)));
        assert!(check_distinct(&[any, m(None, 5200, 81, Tcp)]).is_err());
        assert!(check_distinct(&[any, m(None, 5201, 81, Tcp)]).is_ok());
    }

    #[test]
    fn display_is_dockers() {
        assert_eq!(
            m(Some("127.0.0.1"), 5201, 80, Protocol::Tcp).to_string(),
            "127.0.0.1:5201->80/tcp"
        );
        assert_eq!(
            m(None, 5202, 53, Protocol::Udp).to_string(),
            "0.0.0.0:5202->53/udp"
        );
        assert_eq!(m(Some("::1"), 5203, 80, Protocol::Tcp).host(), "[::1]:5203");
    }

    #[test]
    fn random_ports_avoid_taken_ones() {
        let mut v = vec![
            m(Some("127.0.0.1"), 0, 80, Protocol::Tcp),
            m(Some("127.0.0.1"), 0, 81, Protocol::Tcp),
        ];
        assign_random(&mut v, &[]).unwrap();
        assert!(v.iter().all(|p| p.host_port != 0));
        assert_ne!(v[0].host_port, v[1].host_port);
    }
}
