//! Thin, documented wrappers over the few syscalls that std and rustix do not offer safely.
//! This is the only module with `unsafe` code.

use std::io;

/// What `fork` returned in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// We are the parent; the child has this pid.
    Parent(i32),
    /// We are the child.
    Child,
}

/// Fork the process. Only call this while the process has a single thread: a child of a
/// multi-threaded process may only call async-signal-safe functions.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: fork(2) has no memory-safety preconditions of its own; the caller guarantees the
    // process is single-threaded, so the child's copy of every lock and allocator is consistent.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Point stdin, stdout and stderr at /dev/null (a daemon must not hold its caller's terminal
/// or pipes open: podman waits for them to close).
pub fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 on two valid descriptors (the open /dev/null and a standard fd number)
        // only replaces the standard fd; no Rust object owns fds 0-2 exclusively.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An all-zero `stat`, the base for synthetic attributes.
pub fn zeroed_stat() -> rustix::fs::Stat {
    // SAFETY: `stat` is a plain C struct of integers, for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// Move the calling thread into a new user namespace and a new mount namespace (the rootless
/// pause process of `strata`, whose id maps are then written by newuidmap/newgidmap).
pub fn unshare_user_and_mount() -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    // SAFETY: the only hazard of unshare is `CLONE_FILES`, which would leave other threads
    // with a file table they no longer share; these flags do not include it.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS) }
        .map_err(io::Error::from)
}

/// Let `SIGPIPE` end the process (the Rust runtime ignores it, so a write to a closed pipe
/// is an error that `println!` turns into a panic).
pub fn default_sigpipe() {
    // SAFETY: setting the default disposition of a signal installs no handler and touches no
    // memory; it only changes what a later SIGPIPE does to the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Move the calling thread into a new network namespace (a container's, which is then kept
/// by a bind mount of `/proc/thread-self/ns/net`; see `container::network::netns`).
pub fn unshare_network() -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    // SAFETY: the only hazard of unshare is `CLONE_FILES`, which would leave other threads
    // with a file table they no longer share; this flag is not it.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.map_err(io::Error::from)
}

/// Change the flags and propagation of the detached mount `mount` (an `open_tree` clone):
/// `set` and `clear` are `MOUNT_ATTR_*` bits, `propagation` an `MS_*` type or 0 for none.
pub fn mount_setattr_detached(
    mount: std::os::fd::BorrowedFd<'_>,
    set: u64,
    clear: u64,
    propagation: u64,
) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads `size_of::<mount_attr>()` bytes from `&attr`, which lives
    // across the call; the path is a valid empty C string and `mount` a valid fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            std::os::fd::AsRawFd::as_raw_fd(&mount),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether thread `tid` belongs to process `tgid` (`tgkill` with signal 0 sends nothing; it
/// fails with ESRCH unless the thread is in that thread group).
pub fn is_thread_of(tgid: u32, tid: u32) -> bool {
    let (Ok(tgid), Ok(tid)) = (libc::pid_t::try_from(tgid), libc::pid_t::try_from(tid)) else {
        return false;
    };
    if tgid <= 0 || tid <= 0 {
        return false;
    }
    // SAFETY: tgkill(2) with signal 0 only checks that the thread exists and may be signalled;
    // it takes plain integers and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_this_process_are_recognised() {
        let pid = std::process::id();
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        assert!(is_thread_of(pid, pid));
        assert!(is_thread_of(pid, me));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let live = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32)
                .unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(is_thread_of(pid, tid), "a live thread of ours");
        stop_tx.send(()).unwrap();
        live.join().unwrap();
        // Another process's threads and the header's "unknown sender" are not ours.
        assert!(!is_thread_of(pid, 1));
        assert!(!is_thread_of(pid, 0));
    }
}
