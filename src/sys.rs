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
