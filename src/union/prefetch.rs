//! Read-ahead of directory metadata. A cold tree walk through FUSE is a chain of round trips
//! that each wait for one disk read (a child's inode, then its directory blocks); the kernel
//! overlay pays the same reads, one at a time. When a merged listing is read, the
//! subdirectories it names are the walker's next stops: a few threads read their inodes and
//! directory blocks now, in parallel, so the requests that follow find them in the cache.
//!
//! The queue is a stack: the directory listed last is where a depth-first walker (`find`,
//! `du`, `rm -r`) goes next, so its subdirectories are read first, in listing order, ahead of
//! what older listings queued (a directory merged from 100 layers queues 100 reads per
//! subdirectory; a queue served in order would make the walk wait behind all of them). When
//! the stack is full the oldest jobs are dropped: read-ahead never waits and never grows.
//!
//! Only reads, only through fds of layer directories the union already holds, one valid name
//! at a time without following symlinks; nothing is kept but what the kernel caches.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, RawDir};

/// Threads reading ahead: disk reads in flight at once, mostly asleep. Sixteen beat four on
/// a cold `find` over 100 layers (0.49 s → 0.44 s, `strata bench`), where each merged
/// directory needs a read in every layer.
const THREADS: usize = 16;
/// Jobs kept; beyond this the oldest are dropped (a huge directory is not worth it all).
const QUEUE: usize = 4096;

/// One name to read ahead: a directory in one layer.
pub struct Job {
    parent: Arc<OwnedFd>,
    name: OsString,
}

impl Job {
    /// Read ahead directory `name` in the layer directory `parent`.
    pub fn new(parent: &Arc<OwnedFd>, name: &OsStr) -> Job {
        Job {
            parent: parent.clone(),
            name: name.to_owned(),
        }
    }
}

/// Jobs waiting, newest at the back, and whether the threads should stop.
#[derive(Default)]
struct Stack {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    stack: Mutex<Stack>,
    ready: Condvar,
}

/// The read-ahead stack and its threads (they exit when this is dropped).
pub struct Prefetcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prefetcher")
    }
}

impl Prefetcher {
    /// Start the threads; `None` if none could be started.
    pub fn start() -> Option<Prefetcher> {
        let shared = Arc::new(Shared::default());
        let mut started = 0;
        for i in 0..THREADS {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || worker(&shared));
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then_some(Prefetcher { shared })
    }

    /// Queue `jobs` (one listing's subdirectories, in listing order) ahead of everything
    /// queued before, the first of them to be read first. Never blocks.
    pub fn push(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let Ok(mut stack) = self.shared.stack.lock() else {
            return;
        };
        let keep = jobs.len().min(QUEUE);
        while stack.jobs.len() + keep > QUEUE {
            stack.jobs.pop_front();
        }
        // Workers pop from the back: the listing's first subdirectory goes last.
        stack.jobs.extend(jobs.into_iter().take(keep).rev());
        drop(stack);
        // Wake as many threads as there is work for, not all of them for one job.
        if keep >= THREADS {
            self.shared.ready.notify_all();
        } else {
            for _ in 0..keep {
                self.shared.ready.notify_one();
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        if let Ok(mut stack) = self.shared.stack.lock() {
            stack.closed = true;
            stack.jobs.clear();
        }
        self.shared.ready.notify_all();
    }
}

fn worker(shared: &Shared) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    loop {
        let job = {
            let Ok(mut stack) = shared.stack.lock() else {
                return;
            };
            loop {
                if stack.closed {
                    return;
                }
                if let Some(job) = stack.jobs.pop_back() {
                    break job;
                }
                stack = match shared.ready.wait(stack) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_listing_first_in_its_order_and_oldest_dropped() {
        // No threads: look at the stack the workers would pop from.
        let p = Prefetcher {
            shared: Arc::new(Shared::default()),
        };
        let fd = Arc::new(rfs::openat(rfs::CWD, ".", OFlags::PATH, Mode::empty()).unwrap());
        let jobs = |prefix: &str, n: usize| -> Vec<Job> {
            (0..n)
                .map(|i| Job::new(&fd, OsStr::new(&format!("{prefix}{i}"))))
                .collect()
        };
        p.push(jobs("old", QUEUE - 1));
        p.push(jobs("new", 3));
        let mut stack = p.shared.stack.lock().unwrap();
        assert_eq!(stack.jobs.len(), QUEUE);
        let popped: Vec<OsString> = (0..4)
            .map(|_| stack.jobs.pop_back().unwrap().name)
            .collect();
        assert_eq!(popped, ["new0", "new1", "new2", "old0"]);
        // The two oldest jobs went: the last of the old listing.
        let front = format!("old{}", QUEUE - 4);
        assert_eq!(stack.jobs.front().unwrap().name, OsStr::new(&front));
    }
}
