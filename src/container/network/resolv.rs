//! The DNS configuration and hosts file a container on the bridge network gets.
//!
//! `/etc/resolv.conf` is the host's with its loopback resolvers (systemd-resolved's 127.0.0.53,
//! a local dnsmasq) replaced: inside the container's namespace, loopback is the container's
//! own. Rootless, slirp4netns's forwarder (10.0.2.3) answers with the host's resolvers,
//! loopback ones included; rootful, docker's fallback public resolvers take their place.

use std::net::{IpAddr, Ipv4Addr};

/// Docker's fallback resolvers when the host has only loopback ones (rootful).
pub const FALLBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4)),
];

/// The container's resolv.conf from the host's `host` text: `search`, `options` and every
/// reachable `nameserver` kept; loopback resolvers replaced by `replacement` (added once,
/// where the first loopback one was), which is also used when the host names none.
pub fn resolv_conf(host: &str, replacement: &[IpAddr]) -> String {
    let mut out = Vec::new();
    let mut servers = 0;
    let mut replaced = false;
    let push_replacement = |out: &mut Vec<String>, servers: &mut usize| {
        for r in replacement {
            out.push(format!("nameserver {r}"));
            *servers += 1;
        }
    };
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            // A zone suffix (`fe80::1%eth0`) names a host interface: unusable inside too.
            let addr = words.next().unwrap_or("");
            match addr.parse::<IpAddr>() {
                Ok(ip) if !ip.is_loopback() => {
                    out.push(format!("nameserver {ip}"));
                    servers += 1;
                }
                _ => {
                    if !replaced {
                        replaced = true;
                        push_replacement(&mut out, &mut servers);
                    }
                }
            }
        } else {
            out.push(line.to_string());
        }
    }
    if servers == 0 {
        push_replacement(&mut out, &mut servers);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The container's /etc/hosts: loopback names and its own name at its address.
pub fn hosts(hostname: &str, address: Option<IpAddr>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(a) = address {
        s.push_str(&format!("{a}\t{hostname}\n"));
    } else {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_replaced_once() {
        let host = "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver ::1\n\
                    nameserver 10.255.255.53\noptions edns0 trust-ad\n";
        let slirp: [IpAddr; 1] = ["10.0.2.3".parse().unwrap()];
        assert_eq!(
            resolv_conf(host, &slirp),
            "# generated\nsearch example.org\nnameserver 10.0.2.3\n\
             nameserver 10.255.255.53\noptions edns0 trust-ad\n"
        );
    }

    #[test]
    fn reachable_resolvers_are_kept_as_they_are() {
        let host = "nameserver 10.255.255.53\nnameserver fd00::53\n";
        assert_eq!(resolv_conf(host, &FALLBACK), host);
    }

    #[test]
    fn no_usable_resolver_gives_the_fallback() {
        assert_eq!(
            resolv_conf("search x\n", &FALLBACK),
            "search x\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert_eq!(
            resolv_conf("nameserver 127.0.0.1\nnameserver fe80::1%eth0\n", &FALLBACK),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn hosts_names_the_container() {
        let h = hosts("web", Some("10.89.0.2".parse().unwrap()));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.89.0.2\tweb\n"));
    }
}
