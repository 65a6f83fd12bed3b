//! Background removal of directories moved out of sight into the work directory.
//!
//! Removing a directory that hides a lower one (or holds only whiteouts) swaps a whiteout in
//! for it, or renames it into the work directory: the union stops showing it at once, and what
//! is left is a directory full of whiteouts under a temporary name in the work directory.
//! Emptying it costs one unlink per entry; done before answering, every `rmdir` of such a
//! directory waited for them (`rm -rf` of a lower subtree: one directory full of whiteouts per
//! removed directory). A thread of its own removes them instead, in the order they come.
//!
//! Nothing is lost if the daemon ends first: the work directory is emptied at every mount
//! (`setup::prepare_work`), and a daemon that ends normally waits for the queue
//! ([`Discarder::finish`]).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rustix::io::Errno;

use super::copyup::remove_any;

/// The queue of work-directory entries to remove, and the thread that removes them (started
/// on first use: no thread may exist before the daemon forks).
#[derive(Default)]
pub struct Discarder {
    state: Mutex<Option<Worker>>,
}

struct Worker {
    queue: Sender<OsString>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Discarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discarder")
            .field("started", &self.state.lock().is_some())
            .finish()
    }
}

impl Discarder {
    /// Remove `name`, an entry of the work directory `work` that nothing else uses any more,
    /// in the background; here and now if no thread can take it.
    pub fn discard(&self, work: BorrowedFd<'_>, name: OsString) -> Result<(), Errno> {
        let mut state = self.state.lock();
        if state.is_none() {
            *state = start(work);
        }
        let Some(worker) = state.as_ref() else {
            return remove_or_gone(work, &name);
        };
        match worker.queue.send(name) {
            Ok(()) => Ok(()),
            Err(unsent) => {
                // The thread is gone (it does not end on its own): start over next time.
                *state = None;
                remove_or_gone(work, &unsent.0)
            }
        }
    }

    /// Wait until everything queued so far is removed; the next discard starts a new thread.
    pub fn finish(&self) {
        let worker = self.state.lock().take();
        if let Some(Worker { queue, thread }) = worker {
            drop(queue);
            if thread.join().is_err() {
                tracing::error!("the work-directory cleaner panicked");
            }
        }
    }
}

fn start(work: BorrowedFd<'_>) -> Option<Worker> {
    let fd: OwnedFd = match rustix::io::fcntl_dupfd_cloexec(work, 0) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("work-directory cleaner: cannot duplicate the work fd: {e}");
            return None;
        }
    };
    let (queue, names) = channel::<OsString>();
    let thread = std::thread::Builder::new()
        .name("work-cleaner".into())
        .spawn(move || {
            for name in names {
                if let Err(e) = remove_or_gone(fd.as_fd(), &name) {
                    tracing::warn!("removing {name:?} from the work directory: {e}");
                }
            }
        });
    match thread {
        Ok(thread) => Some(Worker { queue, thread }),
        Err(e) => {
            tracing::warn!("work-directory cleaner: cannot start its thread: {e}");
            None
        }
    }
}

fn remove_or_gone(work: BorrowedFd<'_>, name: &OsString) -> Result<(), Errno> {
    match remove_any(work, name) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}
