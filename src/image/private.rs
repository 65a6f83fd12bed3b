//! The store is private to its owner: extracted layers keep what their images hold (set-uid-root
//! programs, device nodes) and containers can plant the same in their writable layers, so any
//! path into the store that another local user could follow would hand them root. The store
//! root and every directory under it that holds layer content or container state are mode 0700
//! (docker makes its root 0710, containers-storage its layer directories 0700).
//!
//! Nothing that must keep working needs those paths: the `stratafs` daemon, the OCI runtime and
//! garbage collection run as the store's owner (root, or the rootless user as root of its user
//! namespace); a container's processes, whatever their user, see only their root file system,
//! into which the runtime pivots, and their volumes, which it bind-mounts. The directories that
//! *are* those roots (an extracted layer, a container's upper) keep the modes their image gives
//! them, because the container sees them as its `/`: only their parents are closed.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of the store root and of its private directories: the owner only.
pub const MODE: u32 = 0o700;

/// The directories of a store, relative to its root, that hold layer content, container state
/// or what is derived from them (blobs hold the layers as tars; build steps and temporary
/// extractions live in `tmp` and under `layers`).
pub const DIRS: &[&str] = &[
    "blobs",
    "blobs/sha256",
    "layers",
    "layers/sha256",
    "tmp",
    "pins",
    "build-cache",
    "containers",
    "volumes",
    "runtime",
    "userns",
    "chunks",
    "chunks/sha256",
    "lazy",
];

/// Create the directory `dir` with mode 0700 (missing parents get the usual modes), or make an
/// existing one 0700.
pub fn create(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(MODE).create(dir) {
        // The umask can only take bits away, and none are left to take from the group or others.
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => close(dir),
        Err(e) => Err(e),
    }
}

/// Take every permission of the group and others from the existing directory `dir`; a stat,
/// and a chmod only when one is needed.
pub fn close(dir: &Path) -> io::Result<()> {
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7700))
}

/// Make the store at `root` private: create the root 0700 if missing, and close the root and
/// those of its [`DIRS`] that exist (stores made before this rule had 0755 everywhere). Cheap
/// enough to run whenever a store is opened. A root owned by someone else (a shared directory a
/// user pointed `--root` at) cannot be closed by its user: that is logged, and the directories
/// below, which are the user's own, still are.
pub fn secure(root: &Path) -> io::Result<()> {
    if let Err(e) = create(root) {
        if e.kind() != io::ErrorKind::PermissionDenied {
            return Err(io::Error::new(
                e.kind(),
                format!("make the store {} private: {e}", root.display()),
            ));
        }
        tracing::warn!(
            "cannot make the store root {} private ({e}): relying on its subdirectories",
            root.display()
        );
    }
    for d in DIRS {
        let p = root.join(d);
        match close(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("make {} private: {e}", p.display()),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_private_and_old_stores_closed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/store");
        create(&root.join("layers/sha256")).unwrap();
        assert_eq!(mode(&root.join("layers/sha256")), 0o700);
        // Parents made on the way get ordinary modes; `secure` closes the root.
        secure(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        // An old store: 0755 everywhere, a layer directory whose mode is the image's.
        for d in ["", "layers", "layers/sha256", "containers", "tmp"] {
            fs::create_dir_all(root.join(d)).unwrap();
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let layer = root.join("layers/sha256/abc");
        fs::create_dir(&layer).unwrap();
        fs::set_permissions(&layer, fs::Permissions::from_mode(0o755)).unwrap();
        secure(&root).unwrap();
        for d in ["", "layers", "layers/sha256", "containers", "tmp"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        assert_eq!(mode(&layer), 0o755, "a layer's own mode is the image's");
        // Idempotent.
        secure(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }
}
