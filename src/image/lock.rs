//! Advisory file locks that keep concurrent `strata` processes from corrupting the store.
//!
//! Two locks: `index` guards read-modify-write of `index.json` (held briefly); `gc` is held
//! *shared* by every process that may write blobs or layers not yet referenced by the index
//! (build, import, load, commit) and *exclusively* by garbage collection, so `rmi` never frees a
//! blob another process is about to reference.

use std::fs::File;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

use super::{io_err, Result};

/// A held lock; released when dropped (the fd is closed).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Take the lock file at `path` exclusively, waiting for other holders.
    pub fn exclusive(path: &Path) -> Result<Lock> {
        Self::take(path, FlockOperation::LockExclusive)
    }

    /// Take the lock file at `path` shared, waiting for an exclusive holder.
    pub fn shared(path: &Path) -> Result<Lock> {
        Self::take(path, FlockOperation::LockShared)
    }

    fn take(path: &Path, op: FlockOperation) -> Result<Lock> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(format!("open lock {}", path.display())))?;
        loop {
            match flock(&file, op) {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(io_err(format!("lock {}", path.display()))(e.into()));
                }
            }
        }
    }
}
