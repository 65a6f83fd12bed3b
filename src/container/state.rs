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
    /// The image as the user named it (for `ps`).
    #[serde(default)]
    pub image_name: String,
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
    /// The process that waits for the container's process and records its exit (the monitor
    /// of a detached container, strata itself for an attached run); absent in older states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper: Option<Keeper>,
    /// The network it asked for (none in states older than networking).
    #[serde(default)]
    pub network: super::network::Settings,
    /// The network set up for its current run: recorded before it is set up, cleared once
    /// torn down, so whoever finds the container ended can tear it down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<super::network::Attachment>,
}

/// A process identified by pid and start time, so a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keeper {
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks after boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

impl Keeper {
    /// The calling process.
    pub fn me() -> Option<Keeper> {
        Keeper::of(std::process::id() as i32)
    }

    /// Process `pid` as it is now.
    pub fn of(pid: i32) -> Option<Keeper> {
        Some(Keeper {
            pid,
            start_time: proc_start_time(pid)?,
        })
    }

    /// Whether this very process is still alive (not a zombie, not a reused pid).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(after_comm) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // After the comm: state is field 3, starttime field 22 (1-based), so indices 0 and 19.
        fields.first().is_some_and(|s| *s != "Z" && *s != "X")
            && fields.get(19).and_then(|t| t.parse().ok()) == Some(self.start_time)
    }
}

/// The start time of process `pid`, in clock ticks after boot.
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
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
    /// The lock that serialises changes of state between strata commands and the monitor.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
}

/// An exclusive lock on a container's state, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Take the container's state lock, waiting for it; `None` if the container is gone.
pub fn lock(paths: &Paths) -> Result<Option<StateLock>> {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock())
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open state lock")(e)),
    };
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err("lock state")(e.into())),
        }
    }
    // The holder before us may have removed the container.
    if !paths.state().exists() {
        return Ok(None);
    }
    Ok(Some(StateLock { _file: file }))
}

impl ContainerState {
    /// Write atomically (temp then rename) so a crash never leaves half a state file.
    pub fn save(&self, paths: &Paths) -> Result<()> {
        // One temp name per process: the monitor and a strata command may save at once.
        let tmp = paths
            .dir
            .join(format!("state.json.tmp.{}", std::process::id()));
        let data = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            what: "state".into(),
            source,
        })?;
        std::fs::write(&tmp, data).map_err(io_err("write state"))?;
        std::fs::rename(&tmp, paths.state()).map_err(io_err("rename state"))
    }

    /// Read a container's state; `None` if the container has been removed.
    pub fn reload(paths: &Paths) -> Result<Option<ContainerState>> {
        match ContainerState::load(paths) {
            Ok(s) => Ok(Some(s)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
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

/// Remove a container's directory: renamed away first (to a dot name that listings skip), so
/// the container disappears at once and a crash midway leaves no half container.
pub fn remove_dir(paths: &Paths) -> Result<()> {
    let name = paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = paths.dir.with_file_name(format!(".{name}.removing"));
    match std::fs::rename(&paths.dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("remove {}", paths.dir.display()))(e)),
    }
    std::fs::remove_dir_all(&trash).map_err(io_err(format!("remove {}", trash.display())))
}

/// All container states in the store, oldest first.
pub fn list(store_root: &Path) -> Result<Vec<ContainerState>> {
    let dir = store_root.join("containers");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
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
