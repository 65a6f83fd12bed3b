//! Id translation between what clients see and what the layers store (`uidmapping=`,
//! `gidmapping=`, `squash_to_*`). Client and host ids are distinct types, so a mapping applied
//! the wrong way round does not compile.

use super::options::{IdRange, MountOptions};

/// The id the kernel shows for a host id no mapping covers (`overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// A uid or gid as stored in the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostId(pub u32);

/// A uid or gid as the client (the process using the mount) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId(pub u32);

/// One direction-aware mapping table.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    ranges: Vec<IdRange>,
    squash: Option<u32>,
}

impl IdMap {
    /// A table from `uidmapping=`-style ranges and an optional squash id.
    pub fn new(ranges: Vec<IdRange>, squash: Option<u32>) -> Self {
        IdMap { ranges, squash }
    }

    /// What the client sees for a stored id.
    pub fn to_client(&self, host: HostId) -> ClientId {
        if let Some(s) = self.squash {
            return ClientId(s);
        }
        if self.ranges.is_empty() {
            return ClientId(host.0);
        }
        for r in &self.ranges {
            if host.0 >= r.stored && host.0 - r.stored < r.len {
                return ClientId(r.client + (host.0 - r.stored));
            }
        }
        ClientId(OVERFLOW_ID)
    }

    /// What is stored for a client's id; `None` when no range covers it.
    pub fn to_host(&self, client: ClientId) -> Option<HostId> {
        if self.ranges.is_empty() {
            return Some(HostId(client.0));
        }
        self.ranges
            .iter()
            .find(|r| client.0 >= r.client && client.0 - r.client < r.len)
            .map(|r| HostId(r.stored + (client.0 - r.client)))
    }
}

/// The uid and gid tables of a mount.
#[derive(Debug, Clone, Default)]
pub struct IdMapper {
    /// User ids.
    pub uids: IdMap,
    /// Group ids.
    pub gids: IdMap,
}

impl IdMapper {
    /// The tables described by the mount options.
    pub fn from_options(o: &MountOptions) -> Self {
        IdMapper {
            uids: IdMap::new(o.uid_map.clone(), o.squash_uid),
            gids: IdMap::new(o.gid_map.clone(), o.squash_gid),
        }
    }

    /// Client view of a stored uid.
    pub fn uid_to_client(&self, uid: u32) -> u32 {
        self.uids.to_client(HostId(uid)).0
    }

    /// Client view of a stored gid.
    pub fn gid_to_client(&self, gid: u32) -> u32 {
        self.gids.to_client(HostId(gid)).0
    }

    /// Stored uid for a client uid (EINVAL when unmapped, as chown(2) says).
    pub fn uid_to_host(&self, uid: u32) -> Result<u32, rustix::io::Errno> {
        self.uids
            .to_host(ClientId(uid))
            .map(|h| h.0)
            .ok_or(rustix::io::Errno::INVAL)
    }

    /// Stored gid for a client gid (EINVAL when unmapped).
    pub fn gid_to_host(&self, gid: u32) -> Result<u32, rustix::io::Errno> {
        self.gids
            .to_host(ClientId(gid))
            .map(|h| h.0)
            .ok_or(rustix::io::Errno::INVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways() {
        let m = IdMap::new(
            vec![IdRange {
                stored: 0,
                client: 200000,
                len: 65536,
            }],
            None,
        );
        // podman --uidmap 0:200000:65536: image files owned by 0 belong to the container's
        // root, which runs as host uid 200000.
        assert_eq!(m.to_client(HostId(0)), ClientId(200000));
        assert_eq!(m.to_client(HostId(1000)), ClientId(201000));
        assert_eq!(m.to_client(HostId(70000)), ClientId(OVERFLOW_ID));
        assert_eq!(m.to_host(ClientId(201000)), Some(HostId(1000)));
        assert_eq!(m.to_host(ClientId(5)), None);
    }

    #[test]
    fn identity_and_squash() {
        assert_eq!(IdMap::default().to_client(HostId(7)), ClientId(7));
        let s = IdMap::new(vec![], Some(300000));
        assert_eq!(s.to_client(HostId(0)), ClientId(300000));
    }
}
