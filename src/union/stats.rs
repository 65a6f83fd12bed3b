//! Counts of the requests the kernel sends, by type: what a workload costs in round trips
//! (`stats=PATH`, read by `strata bench`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The request types the daemon serves (FUSE opcodes, by the kernel's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Lookup,
    Forget,
    BatchForget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Ioctl,
    Fallocate,
    Lseek,
}

const OPS: [(Op, &str); 34] = [
    (Op::Lookup, "LOOKUP"),
    (Op::Forget, "FORGET"),
    (Op::BatchForget, "BATCH_FORGET"),
    (Op::Getattr, "GETATTR"),
    (Op::Setattr, "SETATTR"),
    (Op::Readlink, "READLINK"),
    (Op::Mknod, "MKNOD"),
    (Op::Mkdir, "MKDIR"),
    (Op::Unlink, "UNLINK"),
    (Op::Rmdir, "RMDIR"),
    (Op::Symlink, "SYMLINK"),
    (Op::Rename, "RENAME"),
    (Op::Link, "LINK"),
    (Op::Open, "OPEN"),
    (Op::Read, "READ"),
    (Op::Write, "WRITE"),
    (Op::Flush, "FLUSH"),
    (Op::Release, "RELEASE"),
    (Op::Fsync, "FSYNC"),
    (Op::Opendir, "OPENDIR"),
    (Op::Readdir, "READDIR"),
    (Op::Readdirplus, "READDIRPLUS"),
    (Op::Releasedir, "RELEASEDIR"),
    (Op::Fsyncdir, "FSYNCDIR"),
    (Op::Statfs, "STATFS"),
    (Op::Setxattr, "SETXATTR"),
    (Op::Getxattr, "GETXATTR"),
    (Op::Listxattr, "LISTXATTR"),
    (Op::Removexattr, "REMOVEXATTR"),
    (Op::Access, "ACCESS"),
    (Op::Create, "CREATE"),
    (Op::Ioctl, "IOCTL"),
    (Op::Fallocate, "FALLOCATE"),
    (Op::Lseek, "LSEEK"),
];

/// Request counters, one per type; an increment is one relaxed atomic add.
pub struct RequestStats {
    counts: [AtomicU64; OPS.len()],
    generation: AtomicU64,
    transport: parking_lot::Mutex<String>,
}

/// What `stats=PATH` holds: a snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Increases with every write of the file (so a reader can wait for a fresh one).
    pub generation: u64,
    /// Which transport served the requests ("/dev/fuse", "io_uring (...)").
    pub transport: String,
    /// All requests counted.
    pub total: u64,
    /// Requests by type; types never seen are left out.
    pub requests: std::collections::BTreeMap<String, u64>,
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            generation: AtomicU64::new(0),
            transport: parking_lot::Mutex::new(String::new()),
        }
    }
}

impl RequestStats {
    /// Count one request of type `op`.
    #[inline]
    pub fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Record which transport serves the mount.
    pub fn set_transport(&self, transport: &str) {
        *self.transport.lock() = transport.to_string();
    }

    /// The counters now (each read on its own: concurrent requests may land either side).
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut requests = std::collections::BTreeMap::new();
        let mut total = 0;
        for (i, (op, name)) in OPS.iter().enumerate() {
            debug_assert_eq!(*op as usize, i);
            let n = self.counts[i].load(Ordering::Relaxed);
            if n > 0 {
                requests.insert((*name).to_string(), n);
                total += n;
            }
        }
        StatsSnapshot {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            transport: self.transport.lock().clone(),
            total,
            requests,
        }
    }

    /// Write a snapshot to `path` atomically (a temp file renamed over it).
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let snap = self.snapshot();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let json = serde_json::to_vec_pretty(&snap).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}

impl StatsSnapshot {
    /// Read a snapshot written by [`RequestStats::write_to`].
    pub fn read(path: &Path) -> std::io::Result<StatsSnapshot> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
    }

    /// Requests counted in `self` but not in `earlier`, by type.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        let mut requests = std::collections::BTreeMap::new();
        for (name, n) in &self.requests {
            let d = n.saturating_sub(earlier.requests.get(name).copied().unwrap_or(0));
            if d > 0 {
                requests.insert(name.clone(), d);
            }
        }
        StatsSnapshot {
            generation: self.generation,
            transport: self.transport.clone(),
            total: requests.values().sum(),
            requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_snapshots_and_differences() {
        let s = RequestStats::default();
        s.count(Op::Lookup);
        s.count(Op::Lookup);
        s.count(Op::Lseek);
        let a = s.snapshot();
        assert_eq!(a.total, 3);
        assert_eq!(a.requests["LOOKUP"], 2);
        assert_eq!(a.requests["LSEEK"], 1);
        s.count(Op::Create);
        let b = s.snapshot();
        assert!(b.generation > a.generation);
        let d = b.since(&a);
        assert_eq!(d.total, 1);
        assert_eq!(d.requests.get("CREATE"), Some(&1));
        assert_eq!(d.requests.get("LOOKUP"), None);
    }

    #[test]
    fn every_op_has_its_own_slot() {
        for (i, (op, _)) in OPS.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }
}
