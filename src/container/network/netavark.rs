//! Rootful bridge networking through netavark, the network backend podman 4 drives (Debian's
//! `netavark` package): strata does the address management (see `leases`) and hands
//! netavark the network, the container's address and its port mappings as JSON on stdin;
//! netavark makes the bridge, the veth pair, the routes and the NAT and port-forwarding
//! firewall rules (`setup`), and removes them (`teardown`, which also removes the bridge with
//! its last container).
//!
//! strata's network is its own (`strata`, bridge `strata0`, 10.89.0.0/16), never podman's.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ports::PortMapping;
use super::{Error, Result};

/// The network's name.
pub const NETWORK: &str = "strata";
/// The bridge interface.
pub const BRIDGE: &str = "strata0";
/// The subnet's first address and prefix.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 89, 0, 0), 16);
/// The gateway: the bridge's address on the host.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// The network's ID (netavark names firewall chains after a hash of it).
const NETWORK_ID: &str = "5374726174612062726964676520313089000000000000000000000000000016";

/// Where Debian and other distributions install netavark (it is not on PATH).
const PLACES: &[&str] = &[
    "/usr/lib/podman/netavark",
    "/usr/libexec/podman/netavark",
    "/usr/local/libexec/podman/netavark",
    "/usr/local/lib/podman/netavark",
];

/// The netavark binary: `$STRATA_NETAVARK` (if set, only it), the usual places, else PATH.
pub fn binary() -> Result<PathBuf> {
    let found = match std::env::var_os("STRATA_NETAVARK") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => PLACES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| crate::container::runtime::which("netavark")),
    };
    found.ok_or_else(|| {
        Error::Missing(
            "netavark is not installed (rootful --network bridge needs it: \
                 `apt-get install netavark iptables`), or use --network none or host"
                .into(),
        )
    })
}

/// The firewall tool netavark 1.x drives; it fails obscurely without it.
fn check_firewall() -> Result<()> {
    if crate::container::runtime::which("iptables").is_none() {
        return Err(Error::Missing(
            "iptables is not installed (netavark sets up NAT and published ports with it: \
             `apt-get install iptables`)"
                .into(),
        ));
    }
    Ok(())
}

/// netavark's input: the container, the network and its ports.
fn options(id: &str, name: &str, address: Ipv4Addr, ports: &[PortMapping]) -> serde_json::Value {
    let ports: Vec<_> = ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "host_ip": p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                "host_port": p.host_port,
                "container_port": p.container_port,
                "protocol": p.protocol.as_str(),
                "range": 1,
            })
        })
        .collect();
    serde_json::json!({
        "container_id": id,
        "container_name": name,
        "networks": {
            NETWORK: {"interface_name": "eth0", "static_ips": [address.to_string()]}
        },
        "network_info": {
            NETWORK: {
                "name": NETWORK,
                "id": NETWORK_ID,
                "driver": "bridge",
                "network_interface": BRIDGE,
                "subnets": [{"subnet": format!("{}/{}", SUBNET.0, SUBNET.1), "gateway": GATEWAY.to_string()}],
                "ipv6_enabled": false,
                "internal": false,
                "dns_enabled": false,
                "ipam_options": {"driver": "host-local"}
            }
        },
        "port_mappings": ports,
    })
}

/// Run `netavark --config CONFIG VERB NETNS` with the options on stdin.
fn call(verb: &str, config: &Path, netns: &Path, input: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let bin = binary()?;
    check_firewall()?;
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(config)
        .arg(verb)
        .arg(netns)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Setup(format!("cannot run {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Setup(format!("netavark {verb}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // netavark answers errors as JSON `{"error": "..."}`.
        let msg = serde_json::from_str::<serde_json::Value>(err.trim())
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| err.trim().to_string());
        return Err(Error::Setup(format!("netavark {verb} failed: {msg}")));
    }
    Ok(())
}

/// Connect the namespace `netns` to the bridge at `address` with `ports` forwarded.
pub fn setup(
    config: &Path,
    netns: &Path,
    id: &str,
    name: &str,
    address: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<()> {
    call("setup", config, netns, &options(id, name, address, ports))
}

/// Undo [`setup`]: the veth pair, the port forwards and, after the last container, the bridge.
pub fn teardown(
    config: &Path,
    netns: &Path,
    id: &str,
    name: &str,
    address: Ipv4Addr,
    ports: &[PortMapping],
) -> Result<()> {
    call(
        "teardown",
        config,
        netns,
        &options(id, name, address, ports),
    )
}

#[cfg(test)]
mod tests {
    use super::super::ports::Protocol;
    use super::*;

    #[test]
    fn options_name_our_network_and_ports() {
        let p = PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: 5201,
            container_port: 80,
            protocol: Protocol::Udp,
        };
        let v = options("abc", "web", Ipv4Addr::new(10, 89, 0, 7), &[p]);
        assert_eq!(v["networks"]["strata"]["static_ips"][0], "10.89.0.7");
        assert_eq!(v["network_info"]["strata"]["network_interface"], "strata0");
        assert_eq!(
            v["network_info"]["strata"]["subnets"][0]["subnet"],
            "10.89.0.0/16"
        );
        assert_eq!(v["port_mappings"][0]["host_ip"], "127.0.0.1");
        assert_eq!(v["port_mappings"][0]["protocol"], "udp");
        assert_eq!(NETWORK_ID.len(), 64);
    }
}
