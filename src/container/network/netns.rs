//! A container's network namespace kept as a file (`containers/ID/netns`, a bind mount of the
//! namespace, as `ip netns` and podman keep theirs), so it exists before the runtime starts the
//! process (which joins it by path) and after the process exits (so the network can be torn
//! down cleanly whenever the container ends).

use std::path::Path;

use super::{Error, Result};

/// `NSFS_MAGIC`: the file system type of a namespace file.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Whether `path` is a kept namespace (an nsfs bind mount).
pub fn is_kept(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as u64 == NSFS_MAGIC)
}

/// Make a new network namespace (only loopback, down) and keep it at `path`.
pub fn create(path: &Path) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Setup(format!("network namespace {}: {what}: {e}", path.display()))
    };
    if is_kept(path) {
        return Ok(());
    }
    std::fs::write(path, b"").map_err(|e| fail("create the file", e))?;
    let target = path.to_path_buf();
    // In a thread of its own: the namespace changes only that thread, which then ends.
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        crate::sys::unshare_network()?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
        Ok(())
    })
    .join()
    .map_err(|_| Error::Setup("the network namespace thread panicked".into()))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(fail("unshare and bind", e));
    }
    Ok(())
}

/// Let go of the namespace at `path` (it ends with its last user) and remove the file.
pub fn remove(path: &Path) -> Result<()> {
    if is_kept(path) {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| Error::Setup(format!("unmount {}: {e}", path.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Setup(format!("remove {}: {e}", path.display()))),
    }
}
