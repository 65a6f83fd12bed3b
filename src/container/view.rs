//! Read-only views for looking at with ordinary tools (`strata mount`, as `podman image
//! mount`): a `stratafs` mount of an image's layers, or of a container's layers with its
//! writable layer on top, without an upper (so every write is `EROFS`).
//!
//! Each view is recorded in `mounts/ID.json` before it is mounted, so that `umount` finds it
//! by mount point or by name, garbage collection keeps its layers while it is mounted (the
//! creator's pins cover the moment between the record and the mount), `rmi` and `rm` know the
//! image or container is in use, and the rootless pause process keeps the namespace that
//! holds it. Without a mount point given, the view is mounted at `mounts/ID/` in the store.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, mount, Error, Result};
use crate::image::private;

/// The directory of view records (and default mount points) in the store.
const DIR: &str = "mounts";

/// One read-only view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct View {
    /// Its ID (the record's and the default mount point's name).
    pub id: String,
    /// The image or container as the user named it.
    pub name: String,
    /// The image ID (for a container, its image's).
    pub image: String,
    /// The container ID, for the live view of a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The layer directories mounted, bottom first (a container's writable layer last).
    pub lower_dirs: Vec<PathBuf>,
    /// Where it is mounted.
    pub target: PathBuf,
    /// Whether strata made the mount point (and removes it on unmount).
    pub own_target: bool,
}

/// What to mount.
#[derive(Debug, Clone)]
pub struct What {
    /// The image or container as the user named it.
    pub name: String,
    /// The image ID.
    pub image: String,
    /// The container ID, for a container's live view.
    pub container: Option<String>,
    /// The layer directories, bottom first.
    pub lower_dirs: Vec<PathBuf>,
}

impl View {
    /// Whether the view is mounted now (in this process's mount namespace).
    pub fn is_mounted(&self) -> bool {
        mount::is_mounted(&self.target)
    }

    fn record(store_root: &Path, id: &str) -> PathBuf {
        store_root.join(DIR).join(format!("{id}.json"))
    }

    /// Whether `key` names this view: its mount point, ID, name, image ID or container ID.
    pub fn matches(&self, key: &str) -> bool {
        let path = Path::new(key);
        path.is_absolute() && fs::canonicalize(path).is_ok_and(|p| p == self.target)
            || path == self.target
            || key == self.id
            || key == self.name
            || key == self.image
            || self.image.strip_prefix("sha256:") == Some(key)
            || self.container.as_deref() == Some(key)
    }
}

/// Mount `what` read-only at `target` (an existing empty directory), or at a new private
/// directory in the store. The caller must keep `what`'s layers pinned until this returns.
pub fn mount(store_root: &Path, what: What, target: Option<&Path>) -> Result<View> {
    let dir = store_root.join(DIR);
    private::create(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let id = format!("{:016x}", fastrand::u64(..));
    let (target, own_target) = match target {
        Some(t) => {
            let t = fs::canonicalize(t).map_err(io_err(format!("mount point {}", t.display())))?;
            if !t.is_dir() {
                return Err(Error::Invalid(format!(
                    "mount point {}: not a directory",
                    t.display()
                )));
            }
            if mount::is_mounted(&t) {
                return Err(Error::Invalid(format!(
                    "{}: something is mounted there already",
                    t.display()
                )));
            }
            (t, false)
        }
        None => {
            let t = dir.join(&id);
            private::create(&t).map_err(io_err(format!("create {}", t.display())))?;
            (t, true)
        }
    };
    let view = View {
        id,
        name: what.name,
        image: what.image,
        container: what.container,
        lower_dirs: what.lower_dirs,
        target,
        own_target,
    };
    let record = View::record(store_root, &view.id);
    write_record(&record, &view)?;
    if let Err(e) = mount::mount_read_only(&view.lower_dirs, &view.target) {
        let _ = fs::remove_file(&record);
        if view.own_target {
            let _ = fs::remove_dir(&view.target);
        }
        return Err(e);
    }
    Ok(view)
}

fn write_record(path: &Path, view: &View) -> Result<()> {
    let data = serde_json::to_vec_pretty(view).map_err(|source| Error::Json {
        what: path.display().to_string(),
        source,
    })?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&data))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io_err(format!("write {}", path.display())))
}

/// Every recorded view, mounted or not (a view unmounted by other means than `strata umount`
/// leaves its record until then).
pub fn list(store_root: &Path) -> Result<Vec<View>> {
    let dir = store_root.join(DIR);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("list {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err(format!("list {}", dir.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        // Removed since the listing, or half-written by a crash: not a view.
        let Ok(data) = fs::read(e.path()) else {
            continue;
        };
        if let Ok(v) = serde_json::from_slice::<View>(&data) {
            out.push(v);
        }
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(out)
}

/// The views that are mounted now.
pub fn mounted(store_root: &Path) -> Result<Vec<View>> {
    Ok(list(store_root)?
        .into_iter()
        .filter(View::is_mounted)
        .collect())
}

/// Unmount `view` (if still mounted), then forget it and remove the mount point strata made.
pub fn unmount(store_root: &Path, view: &View) -> Result<()> {
    mount::unmount_rootfs(&view.target)?;
    let record = View::record(store_root, &view.id);
    match fs::remove_file(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove {}", record.display()))(e)),
    }
    if view.own_target {
        match fs::remove_dir(&view.target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("remove {}", view.target.display()))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(target: &str) -> View {
        View {
            id: "0123456789abcdef".into(),
            name: "hello:latest".into(),
            image: "sha256:abcd".into(),
            container: Some("c0ffee".into()),
            lower_dirs: vec![PathBuf::from("/l")],
            target: PathBuf::from(target),
            own_target: false,
        }
    }

    #[test]
    fn a_view_is_named_by_mount_point_id_name_image_or_container() {
        let v = view("/no/such/mnt");
        for key in [
            "/no/such/mnt",
            "0123456789abcdef",
            "hello:latest",
            "sha256:abcd",
            "abcd",
            "c0ffee",
        ] {
            assert!(v.matches(key), "{key}");
        }
        for key in ["hello", "/no/such", "sha256:abc", "/tmp"] {
            assert!(!v.matches(key), "{key}");
        }
    }

    #[test]
    fn records_round_trip_and_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        private::create(&t.path().join(DIR)).unwrap();
        let v = view("/no/such/mnt");
        write_record(&View::record(t.path(), &v.id), &v).unwrap();
        let mode = fs::metadata(View::record(t.path(), &v.id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let all = list(t.path()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].target, v.target);
        assert!(mounted(t.path()).unwrap().is_empty(), "not mounted");
        unmount(t.path(), &all[0]).unwrap();
        assert!(list(t.path()).unwrap().is_empty());
    }
}
