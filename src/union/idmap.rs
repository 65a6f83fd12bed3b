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

/// An id the kernel cannot take back in a reply, and what is reported instead.
///
/// In a user namespace, an id of a layer that the namespace does not map reads as the
/// overflow id. Where the overflow id is itself unmapped (`unshare -Ur` maps one id), the
/// kernel turns it into an invalid id on the inode and then refuses every write to it
/// (EACCES: creating in a directory whose group is host root fails), while kernel overlayfs,
/// which keeps the real id, allows it. Such an id is reported as the daemon's own, which the
/// kernel accepts; what the caller may do is then decided by the other bits, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unmappable {
    /// The overflow id, as the daemon reads unmapped ids.
    pub overflow: u32,
    /// What is reported in its place.
    pub reported: u32,
}

impl Unmappable {
    /// For a namespace whose id map (the text of `/proc/self/uid_map` or `gid_map`) leaves
    /// `overflow` unmapped: report it as `own`. `None` where the kernel maps it.
    pub fn for_namespace(map: &str, overflow: u32, own: u32) -> Option<Unmappable> {
        let mapped = map.lines().any(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            f.len() == 3 && (f[0]..f[0] + f[2]).contains(&u64::from(overflow))
        });
        (!mapped).then_some(Unmappable {
            overflow,
            reported: own,
        })
    }

    fn apply(this: Option<Unmappable>, id: u32) -> u32 {
        match this {
            Some(u) if u.overflow == id => u.reported,
            _ => id,
        }
    }
}

/// The uid and gid tables of a mount.
#[derive(Debug, Clone, Default)]
pub struct IdMapper {
    /// User ids.
    pub uids: IdMap,
    /// Group ids.
    pub gids: IdMap,
    /// A uid the kernel cannot take back in replies (in a user namespace).
    pub unmappable_uid: Option<Unmappable>,
    /// A gid the kernel cannot take back in replies (in a user namespace).
    pub unmappable_gid: Option<Unmappable>,
}

impl IdMapper {
    /// The tables described by the mount options.
    pub fn from_options(o: &MountOptions) -> Self {
        IdMapper {
            uids: IdMap::new(o.uid_map.clone(), o.squash_uid),
            gids: IdMap::new(o.gid_map.clone(), o.squash_gid),
            unmappable_uid: None,
            unmappable_gid: None,
        }
    }

    /// These tables, also reporting ids this process's user namespace cannot map as its own
    /// (see [`Unmappable`]); a no-op outside a user namespace.
    pub fn in_own_namespace(mut self) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let overflow = |p: &str| read(p).trim().parse().unwrap_or(OVERFLOW_ID);
        let uid_map = read("/proc/self/uid_map");
        let gid_map = read("/proc/self/gid_map");
        if !uid_map.is_empty() {
            self.unmappable_uid = Unmappable::for_namespace(
                &uid_map,
                overflow("/proc/sys/kernel/overflowuid"),
                rustix::process::geteuid().as_raw(),
            );
        }
        if !gid_map.is_empty() {
            self.unmappable_gid = Unmappable::for_namespace(
                &gid_map,
                overflow("/proc/sys/kernel/overflowgid"),
                rustix::process::getegid().as_raw(),
            );
        }
        self
    }

    /// Client view of a stored uid.
    pub fn uid_to_client(&self, uid: u32) -> u32 {
        Unmappable::apply(self.unmappable_uid, self.uids.to_client(HostId(uid)).0)
    }

    /// Client view of a stored gid.
    pub fn gid_to_client(&self, gid: u32) -> u32 {
        Unmappable::apply(self.unmappable_gid, self.gids.to_client(HostId(gid)).0)
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
    fn overflow_id_unmapped_in_the_namespace_is_reported_as_our_own() {
        // `unshare -Ur` as uid 1001: only 0 is mapped, so 65534 (unmapped ids) cannot be
        // given back to the kernel.
        let u = Unmappable::for_namespace("         0       1001          1\n", 65534, 0);
        assert_eq!(
            u,
            Some(Unmappable {
                overflow: 65534,
                reported: 0
            })
        );
        let m = IdMapper {
            unmappable_gid: u,
            ..IdMapper::default()
        };
        assert_eq!(m.gid_to_client(65534), 0);
        assert_eq!(m.gid_to_client(7), 7);
        assert_eq!(m.uid_to_client(65534), 65534);
        // Subordinate ids mapped too (`--map-auto`): 65534 is a real id there.
        let auto = "0 1001 1\n1 400000 65536\n";
        assert_eq!(Unmappable::for_namespace(auto, 65534, 0), None);
        // The initial namespace maps everything.
        assert_eq!(
            Unmappable::for_namespace("0 0 4294967295\n", 65534, 0),
            None
        );
    }

    #[test]
    fn identity_and_squash() {
        assert_eq!(IdMap::default().to_client(HostId(7)), ClientId(7));
        let s = IdMap::new(vec![], Some(300000));
        assert_eq!(s.to_client(HostId(0)), ClientId(300000));
    }
}
