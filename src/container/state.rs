//! A container's on-disk state: `containers/ID/state.json`, which survives restarts of strata.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, Error, Result};

/// What strata last knew of a container; `ps` checks it against the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Bundle written, never started (or stopped and not yet restarted).
    Created,
    /// The process was started.
    Running,
    /// The process has exited.
    Exited,
}

/// The persisted state of one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// The container ID (64 hex digits).
    pub id: String,
    /// Its name (unique in the store).
    pub name: String,
    /// The image ID it was created from.
    pub image: String,
    /// The image layer directories, bottom first.
    pub lower_dirs: Vec<PathBuf>,
    /// The process command line.
    pub command: Vec<String>,
    /// Last known status.
    pub status: Status,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Runtime name (`runc`, `crun`).
    pub runtime: String,
    /// Named volumes the container uses (kept on rm).
    pub volumes: Vec<String>,
    /// Remove the container when its process exits.
    pub auto_remove: bool,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

/// Paths of one container's directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `containers/ID`.
    pub dir: PathBuf,
}

impl Paths {
    /// The paths of container `id` in `store_root`.
    pub fn new(store_root: &Path, id: &str) -> Paths {
        Paths {
            dir: store_root.join("containers").join(id),
        }
    }
    /// The writable layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// The copy-up work dir.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// The union mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    /// The runtime-spec file (the bundle is `dir`).
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// The state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// Output of detached containers.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log")
    }
}

impl ContainerState {
    /// Write atomically (temp then rename) so a crash never leaves half a state file.
    pub fn save(&self, paths: &Paths) -> Result<()> {
        let tmp = paths.dir.join("state.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            what: "state".into(),
            source,
        })?;
        std::fs::write(&tmp, data).map_err(io_err("write state"))?;
        std::fs::rename(&tmp, paths.state()).map_err(io_err("rename state"))
    }

    /// Read a container's state.
    pub fn load(paths: &Paths) -> Result<ContainerState> {
        let data = std::fs::read(paths.state())
            .map_err(io_err(format!("read {}", paths.state().display())))?;
        serde_json::from_slice(&data).map_err(|source| Error::Json {
            what: paths.state().display().to_string(),
            source,
        })
    }
}

/// All container states in the store, oldest first.
pub fn list(store_root: &Path) -> Result<Vec<ContainerState>> {
    let dir = store_root.join("containers");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let p = Paths { dir: e.path() };
        if let Ok(s) = ContainerState::load(&p) {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.created);
    Ok(out)
}

/// Find a container by ID, unique ID prefix or name.
pub fn find(store_root: &Path, key: &str) -> Result<ContainerState> {
    let all = list(store_root)?;
    if let Some(s) = all.iter().find(|s| s.id == key || s.name == key) {
        return Ok(s.clone());
    }
    let m: Vec<_> = all
        .iter()
        .filter(|s| !key.is_empty() && s.id.starts_with(key))
        .collect();
    match m.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NoSuchContainer(key.into())),
        _ => Err(Error::Invalid(format!(
            "ambiguous container ID prefix {key}"
        ))),
    }
}
