//! Who holds which address and host port: a small registry shared by every strata process
//! that uses one network (rootful: the whole host, in `/run/strata/network`, since all stores
//! share the bridge; rootless: the store). Changes happen under an exclusive `flock`, the file
//! is replaced atomically, and a lease whose namespace file is gone (its container's network
//! was torn down, or the host rebooted) is stale and dropped when read.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ports::PortMapping;
use super::{netns, Error, Result};

/// One container's hold on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The container's ID.
    pub container_id: String,
    /// Its name (for the clash error).
    pub container_name: String,
    /// Its kept network namespace: the lease lives as long as it does.
    pub netns: PathBuf,
    /// Its address on the bridge (rootful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Its published ports, host ports assigned.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// The registry, locked for as long as this value lives.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    _lock: File,
}

impl Registry {
    /// Lock the registry in `dir` (created private if missing), waiting for other holders.
    pub fn lock(dir: &Path) -> Result<Registry> {
        let fail = |e: std::io::Error| Error::Setup(format!("{}: {e}", dir.display()));
        crate::image::private::create(dir).map_err(fail)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(fail)?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(fail(e.into())),
            }
        }
        Ok(Registry {
            dir: dir.to_path_buf(),
            _lock: file,
        })
    }

    fn file(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    /// The live leases (stale ones left out).
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let all: Vec<Lease> = match std::fs::read(self.file()) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Setup(format!("{}: {e}", self.file().display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::Setup(format!("{}: {e}", self.file().display()))),
        };
        Ok(all
            .into_iter()
            .filter(|l| netns::is_kept(&l.netns))
            .collect())
    }

    fn save(&self, leases: &[Lease]) -> Result<()> {
        let tmp = self
            .dir
            .join(format!("leases.json.tmp.{}", std::process::id()));
        let fail = |e: std::io::Error| Error::Setup(format!("{}: {e}", self.file().display()));
        let data =
            serde_json::to_vec_pretty(leases).map_err(|e| Error::Setup(format!("leases: {e}")))?;
        std::fs::write(&tmp, data).map_err(fail)?;
        std::fs::rename(&tmp, self.file()).map_err(fail)
    }

    /// Record `lease`, replacing any earlier one of the same container.
    pub fn add(&self, lease: Lease) -> Result<()> {
        let mut all = self.leases()?;
        all.retain(|l| l.container_id != lease.container_id);
        all.push(lease);
        self.save(&all)
    }

    /// Drop the lease of container `id`.
    pub fn remove(&self, id: &str) -> Result<()> {
        let mut all = self.leases()?;
        let before = all.len();
        all.retain(|l| l.container_id != id);
        if all.len() != before || self.file().exists() {
            self.save(&all)?;
        }
        Ok(())
    }
}

/// The first lease (other than container `me`'s) holding a host port that one of `ports`
/// wants, with the port in question.
pub fn holder<'a>(
    leases: &'a [Lease],
    me: &str,
    ports: &[PortMapping],
) -> Option<(&'a Lease, PortMapping)> {
    leases
        .iter()
        .filter(|l| l.container_id != me)
        .find_map(|l| {
            ports
                .iter()
                .find(|p| l.ports.iter().any(|q| q.clashes(p)))
                .map(|p| (l, *p))
        })
}

/// The lowest address of `subnet` (a /16 or smaller IPv4 net given by its first address and
/// prefix length) that is neither the network, the gateway (first host), the broadcast nor
/// leased.
pub fn free_address(leases: &[Lease], net: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    let base = u32::from(net);
    let size = 1u32.checked_shl(32 - u32::from(prefix))?;
    (2..size.saturating_sub(1))
        .map(|i| Ipv4Addr::from(base + i))
        .find(|a| !leases.iter().any(|l| l.address == Some(*a)))
}

#[cfg(test)]
mod tests {
    use super::super::ports::Protocol;
    use super::*;

    fn lease(id: &str, addr: Option<&str>, ports: &[u16]) -> Lease {
        Lease {
            container_id: id.into(),
            container_name: format!("n-{id}"),
            netns: PathBuf::from("/nonexistent"),
            address: addr.map(|a| a.parse().unwrap()),
            ports: ports
                .iter()
                .map(|&p| PortMapping {
                    host_ip: None,
                    host_port: p,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                })
                .collect(),
        }
    }

    #[test]
    fn addresses_skip_gateway_and_leased_ones() {
        let net = Ipv4Addr::new(10, 89, 0, 0);
        assert_eq!(
            free_address(&[], net, 16),
            Some(Ipv4Addr::new(10, 89, 0, 2))
        );
        let l = [
            lease("a", Some("10.89.0.2"), &[]),
            lease("b", Some("10.89.0.3"), &[]),
        ];
        assert_eq!(free_address(&l, net, 16), Some(Ipv4Addr::new(10, 89, 0, 4)));
        let full = [lease("a", Some("10.89.0.2"), &[])];
        assert_eq!(free_address(&full, net, 30), None);
    }

    #[test]
    fn the_holder_of_a_port_is_named() {
        let l = [lease("a", None, &[5200]), lease("b", None, &[5201])];
        let want = lease("c", None, &[5201]).ports;
        let (h, p) = holder(&l, "c", &want).unwrap();
        assert_eq!((h.container_name.as_str(), p.host_port), ("n-b", 5201));
        assert!(
            holder(&l, "b", &want).is_none(),
            "a container never clashes with itself"
        );
    }

    #[test]
    fn stale_leases_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::lock(d.path()).unwrap();
        r.add(lease("a", Some("10.89.0.2"), &[5200])).unwrap();
        // Its namespace file does not exist: the lease is stale.
        assert!(r.leases().unwrap().is_empty());
        r.remove("a").unwrap();
    }
}
