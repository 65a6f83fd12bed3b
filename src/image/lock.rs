//! Advisory file locks that keep concurrent `strata` processes from corrupting the store.
//!
//! `index` guards read-modify-write of `index.json`; `gc` guards the short steps that must not
//! interleave with garbage collection (see [`super::pins`]). Both are held briefly and only
//! exclusively. A session file's lock says its process is alive: taken by the process for its
//! whole life, tried without waiting by garbage collection.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::{io_err, Result};

/// A held lock; released when dropped (the fd is closed).
#[derive(Debug)]
pub struct Lock {
    file: File,
}

impl Lock {
    /// Take the lock file at `path` (created if missing) exclusively, waiting for its holder.
    pub fn exclusive(path: &Path) -> Result<Lock> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(format!("open lock {}", path.display())))?;
        loop {
            match flock(&file, FlockOperation::LockExclusive) {
                Ok(()) => return Ok(Lock { file }),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io_err(format!("lock {}", path.display()))(e.into())),
            }
        }
    }

    /// Create the file `path` (which must not exist) and lock it: nobody else can hold it yet,
    /// so this never waits.
    pub fn new_file(path: &Path) -> Result<Lock> {
        let file = File::options()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(io_err(format!("create {}", path.display())))?;
        flock(&file, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io_err(format!("lock {}", path.display()))(e.into()))?;
        Ok(Lock { file })
    }

    /// Take the existing file `path` exclusively if nobody holds it; `None` if a live process
    /// does (or the file is gone).
    pub fn try_existing(path: &Path) -> Result<Option<Lock>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(Lock { file })),
                Err(Errno::INTR) => continue,
                Err(Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(io_err(format!("lock {}", path.display()))(e.into())),
            }
        }
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}
