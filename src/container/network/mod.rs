//! A container's network: `--network bridge` (the default), `none` or `host`, and its
//! published ports.
//!
//! On the bridge network the container gets a network namespace of its own, kept as a file
//! (`netns`), with an address, a default route with outbound access, an `/etc/resolv.conf`
//! derived from the host's (`resolv`) and its published ports. Rootful, netavark connects it to
//! strata's bridge (`netavark`); rootless (in the store's user namespace, see `userns`),
//! slirp4netns gives it user-mode networking (`slirp`) and strata's forwarder carries its
//! published TCP ports (`forward`). Which addresses and host ports are held
//! is kept in a registry (`leases`), so two containers never publish one host port.
//!
//! What is set up is recorded in the container's state ([`Attachment`]) *before* it is set up,
//! so whoever finds the container ended (its monitor, `rm`, `ps` after a crash) tears it down.

pub mod forward;
pub mod leases;
pub mod mode;
pub mod netavark;
pub mod netns;
pub mod ports;
pub mod resolv;
pub mod slirp;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mode::Mode;
pub use ports::{PortMapping, Protocol};

use super::state::Keeper;
use leases::{Lease, Registry};

/// Errors of the network module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's request is invalid (bad port spec, ports without a network, ...).
    #[error("{0}")]
    Invalid(String),
    /// A component the network needs is not installed or not usable here.
    #[error("{0}")]
    Missing(String),
    /// The host port is taken (by a container, named, or by a host process).
    #[error("{0}")]
    PortInUse(String),
    /// Setting up or tearing down the network failed.
    #[error("network: {0}")]
    Setup(String),
}

/// Result type of the network module.
pub type Result<T> = std::result::Result<T, Error>;

/// What a container asked for, kept in its state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `--network`.
    #[serde(default)]
    pub mode: Mode,
    /// `-p`/`-P`; host port 0 until a free one is chosen at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// The container's hostname (for its /etc/hosts).
    #[serde(default)]
    pub hostname: String,
}

impl Settings {
    /// The settings of `--network MODE -p SPEC... [-P]` for an image exposing `exposed`.
    pub fn new(
        mode: Mode,
        publish: &[String],
        publish_all: bool,
        exposed: &[String],
        hostname: &str,
    ) -> Result<Settings> {
        let mut ports = Vec::new();
        for p in publish {
            ports.extend(ports::parse_publish(p)?);
        }
        if publish_all {
            for e in ports::exposed(exposed)? {
                // `-p` for the same container port wins over `-P`'s random one.
                if !ports
                    .iter()
                    .any(|p| p.container_port == e.container_port && p.protocol == e.protocol)
                {
                    ports.push(e);
                }
            }
        }
        if !ports.is_empty() && mode != Mode::Bridge {
            return Err(Error::Invalid(format!(
                "published ports need --network bridge (not {mode})"
            )));
        }
        ports::check_distinct(&ports)?;
        Ok(Settings {
            mode,
            ports,
            hostname: hostname.to_string(),
        })
    }
}

/// The component that connects a container to the bridge network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Rootful: netavark, a bridge with veth pairs and NAT.
    Netavark,
    /// Rootless: slirp4netns, user-mode networking.
    Slirp4netns,
}

/// What is set up for a running container, recorded before it is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Who set it up.
    pub backend: Backend,
    /// The kept namespace.
    pub netns: PathBuf,
    /// The container's address.
    pub address: Ipv4Addr,
    /// Published ports, host ports assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// The helper process (slirp4netns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper: Option<Keeper>,
    /// strata's port forwarder (rootless TCP ports, see `forward`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<Keeper>,
}

/// The backend this process can use for the bridge network: rootful netavark, or slirp4netns
/// in the store's user namespace; `None` rootless without subordinate ids.
pub fn backend() -> Option<Backend> {
    if super::userns::joined() {
        Some(Backend::Slirp4netns)
    } else if rustix::process::geteuid().is_root() {
        Some(Backend::Netavark)
    } else {
        None
    }
}

/// The network a container gets without `--network`: bridge wherever strata can give one
/// (root, or rootless with subordinate ids), else none.
pub fn default_mode() -> Mode {
    if backend().is_some() {
        Mode::Bridge
    } else {
        Mode::None
    }
}

/// Which container, where.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// Its ID.
    pub id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its directory (`containers/ID`).
    pub dir: &'a Path,
    /// The store.
    pub store_root: &'a Path,
}

/// The kept namespace of the container in `dir`.
pub fn netns_path(dir: &Path) -> PathBuf {
    dir.join("netns")
}

/// The container's `/etc/resolv.conf` on the host.
pub fn resolv_path(dir: &Path) -> PathBuf {
    dir.join("resolv.conf")
}

/// The container's `/etc/hosts` on the host.
pub fn hosts_path(dir: &Path) -> PathBuf {
    dir.join("hosts")
}

/// Where the registry lives: host-wide for the shared bridge, per store rootless.
fn registry_dir(backend: Backend, store_root: &Path) -> PathBuf {
    match backend {
        Backend::Netavark => std::env::var_os("STRATA_NETWORK_RUN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/strata/network")),
        Backend::Slirp4netns => store_root.join("network"),
    }
}

/// A network reserved (address, host ports, namespace) under the registry's lock, not yet
/// connected: record [`Plan::attachment`] in the container's state, then [`Plan::activate`].
#[derive(Debug)]
pub struct Plan {
    /// What will be set up.
    pub attachment: Attachment,
    registry: Registry,
    registry_dir: PathBuf,
}

/// Reserve the network of a container about to start; `None` unless its mode is bridge.
pub fn plan(ep: &Endpoint<'_>, settings: &Settings) -> Result<Option<Plan>> {
    if settings.mode != Mode::Bridge {
        return Ok(None);
    }
    let backend = backend().ok_or_else(|| {
        Error::Missing(
            "rootless --network bridge needs subordinate ids (/etc/subuid and /etc/subgid \
             entries and newuidmap/newgidmap, package uidmap), so that strata keeps a user \
             namespace for the store; use --network none or host"
                .into(),
        )
    })?;
    match backend {
        Backend::Netavark => netavark::binary().map(drop)?,
        Backend::Slirp4netns => slirp::binary().map(drop)?,
    }
    let dir = registry_dir(backend, ep.store_root);
    let registry = Registry::lock(&dir)?;
    let held = registry.leases()?;
    let taken: Vec<PortMapping> = held
        .iter()
        .filter(|l| l.container_id != ep.id)
        .flat_map(|l| l.ports.iter().copied())
        .collect();
    let mut ports = settings.ports.clone();
    ports::assign_random(&mut ports, &taken)?;
    if let Some((h, p)) = leases::holder(&held, ep.id, &ports) {
        return Err(Error::PortInUse(format!(
            "host port {}/{} is already published by container {} ({})",
            p.host(),
            p.protocol.as_str(),
            h.container_name,
            &h.container_id[..h.container_id.len().min(12)]
        )));
    }
    for p in &ports {
        ports::check_host_free(p)?;
    }
    let address = match backend {
        Backend::Netavark => leases::free_address(&held, netavark::SUBNET.0, netavark::SUBNET.1)
            .ok_or_else(|| Error::Setup("no free address left on the strata network".into()))?,
        Backend::Slirp4netns => slirp::ADDRESS,
    };
    let netns = netns_path(ep.dir);
    netns::create(&netns)?;
    let attachment = Attachment {
        backend,
        netns: netns.clone(),
        address,
        ports,
        helper: None,
        forwarder: None,
    };
    let lease = Lease {
        container_id: ep.id.to_string(),
        container_name: ep.name.to_string(),
        netns: netns.clone(),
        address: (backend == Backend::Netavark).then_some(address),
        ports: attachment.ports.clone(),
    };
    if let Err(e) = registry.add(lease) {
        let _ = netns::remove(&netns);
        return Err(e);
    }
    Ok(Some(Plan {
        attachment,
        registry,
        registry_dir: dir,
    }))
}

impl Plan {
    /// Connect the namespace: DNS and hosts files, then netavark or slirp4netns. On error
    /// everything reserved is released again.
    pub fn activate(self, ep: &Endpoint<'_>, settings: &Settings) -> Result<Attachment> {
        let mut a = self.attachment.clone();
        let done = (|| -> Result<()> {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let replacement: &[IpAddr] = match a.backend {
                Backend::Netavark => &resolv::FALLBACK,
                Backend::Slirp4netns => &[slirp::DNS],
            };
            let write = |p: PathBuf, text: String| {
                std::fs::write(&p, text)
                    .map_err(|e| Error::Setup(format!("write {}: {e}", p.display())))
            };
            write(resolv_path(ep.dir), resolv::resolv_conf(&host, replacement))?;
            write(
                hosts_path(ep.dir),
                resolv::hosts(&settings.hostname, Some(IpAddr::V4(a.address))),
            )?;
            match a.backend {
                Backend::Netavark => netavark::setup(
                    &self.registry_dir.join("netavark"),
                    &a.netns,
                    ep.id,
                    ep.name,
                    a.address,
                    &a.ports,
                ),
                Backend::Slirp4netns => {
                    let (ours, theirs): (Vec<PortMapping>, Vec<PortMapping>) = a
                        .ports
                        .iter()
                        .copied()
                        .partition(|p| forward::enabled() && forward::carries(p));
                    a.helper = Some(slirp::start(ep.dir, &a.netns, &theirs)?);
                    a.forwarder = forward::start(ep, &a.netns, a.address, &ours)?;
                    Ok(())
                }
            }
        })();
        match done {
            Ok(()) => Ok(a),
            Err(e) => {
                let _ = undo(ep, &a, &self.registry, &self.registry_dir);
                Err(e)
            }
        }
    }
}

/// Tear down what `a` records for container `ep` (whatever of it exists): the backend's
/// interfaces, rules and helper, the namespace and the lease. Safe to repeat.
pub fn detach(ep: &Endpoint<'_>, a: &Attachment) -> Result<()> {
    let dir = registry_dir(a.backend, ep.store_root);
    let registry = Registry::lock(&dir)?;
    undo(ep, a, &registry, &dir)
}

fn undo(ep: &Endpoint<'_>, a: &Attachment, registry: &Registry, dir: &Path) -> Result<()> {
    let mut first = None;
    match a.backend {
        Backend::Netavark => {
            if netns::is_kept(&a.netns) {
                if let Err(e) = netavark::teardown(
                    &dir.join("netavark"),
                    &a.netns,
                    ep.id,
                    ep.name,
                    a.address,
                    &a.ports,
                ) {
                    first = Some(e);
                }
            }
        }
        Backend::Slirp4netns => {
            if let Some(k) = a.forwarder {
                slirp::end(k);
            }
            slirp::stop(ep.dir, a.helper)
        }
    }
    if let Err(e) = netns::remove(&a.netns) {
        first.get_or_insert(e);
    }
    if let Err(e) = registry.remove(ep.id) {
        first.get_or_insert(e);
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_combine_publish_and_publish_all() {
        let s = Settings::new(
            Mode::Bridge,
            &["5200:80".into()],
            true,
            &["80/tcp".into(), "53/udp".into()],
            "h",
        )
        .unwrap();
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[0].host_port, 5200);
        assert_eq!((s.ports[1].container_port, s.ports[1].host_port), (53, 0));
        let e = Settings::new(Mode::None, &["80".into()], false, &[], "h").unwrap_err();
        assert!(e.to_string().contains("--network bridge"), "{e}");
        assert!(Settings::new(
            Mode::Bridge,
            &["1:80".into(), "1:81".into()],
            false,
            &[],
            "h"
        )
        .is_err());
    }

    #[test]
    fn old_states_have_no_network() {
        let s: Settings = serde_json::from_str("{}").unwrap();
        assert_eq!(s.mode, Mode::None);
    }
}
