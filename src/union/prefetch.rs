//! Read-ahead of directory metadata. A cold tree walk through FUSE is a chain of round trips
//! that each wait for one disk read (a child's inode, then its directory blocks); the kernel
//! overlay pays the same reads, one at a time. When a merged listing is read, the
//! subdirectories it names are the walker's next stops: a few threads read their inodes and
//! directory blocks now, in parallel, so the requests that follow find them in the cache.
//!
//! Only reads, only through fds of layer directories the union already holds, one valid name
//! at a time without following symlinks; nothing is kept but what the kernel caches. Jobs are
//! dropped, never waited for, when the queue is full.

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, RawDir};

/// Threads reading ahead: disk reads in flight at once, mostly asleep.
const THREADS: usize = 4;
/// Queued names; beyond this, read-ahead is skipped (a huge directory is not worth it).
const QUEUE: usize = 4096;

/// One name to read ahead: a directory in one layer.
struct Job {
    parent: Arc<OwnedFd>,
    name: OsString,
}

/// The read-ahead queue and its threads (they exit when this is dropped).
pub struct Prefetcher {
    tx: SyncSender<Job>,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prefetcher")
    }
}

impl Prefetcher {
    /// Start the threads; `None` if none could be started.
    pub fn start() -> Option<Prefetcher> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || worker(&rx));
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then_some(Prefetcher { tx })
    }

    /// Read ahead directory `name` in the layer directory `parent`. Never blocks.
    pub fn directory(&self, parent: &Arc<OwnedFd>, name: &std::ffi::OsStr) -> bool {
        let job = Job {
            parent: parent.clone(),
            name: name.to_owned(),
        };
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    loop {
        let job = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        // Opening reads the inode; reading the entries reads the directory blocks.
        let Ok(fd) = rfs::openat(
            job.parent.as_fd(),
            &job.name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            // Not a directory here (or gone): at least its inode.
            let _ = rfs::statat(job.parent.as_fd(), &job.name, AtFlags::SYMLINK_NOFOLLOW);
            continue;
        };
        let mut raw = RawDir::new(fd.as_fd(), &mut buf);
        while let Some(Ok(_)) = raw.next() {}
    }
}
