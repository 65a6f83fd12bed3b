//! Turning mount options into a ready [`Union`]: checking the directories, opening the layers,
//! preparing the work directory and the root node.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use thiserror::Error;

use super::dir::LayerIndex;
use super::handle::HandleTable;
use super::idmap::IdMapper;
use super::idmapped;
use super::inode::{self, Node, NodeTable, ROOT_ID};
use super::layer::Layer;
use super::options::MountOptions;
use super::Union;
use crate::overlay::format::{self, XattrNamespace};

/// Name of the scratch directory inside the work dir (the kernel uses the same one, so either
/// can clean up after the other).
pub const WORK_SUBDIR: &str = "work";

/// Share of RLIMIT_NOFILE given to cached directory fds; the rest serves open files.
const FD_CACHE_SHARE: f64 = 0.5;

/// Why a union cannot be set up; each names the directory at fault.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A layer directory is missing or unreadable.
    #[error("{role} '{path}': {errno}")]
    Open {
        /// lowerdir, upperdir or workdir.
        role: &'static str,
        /// The path given.
        path: PathBuf,
        /// What the system said.
        errno: Errno,
    },
    /// A layer path is not a directory.
    #[error("{role} '{path}' is not a directory")]
    NotADirectory {
        /// lowerdir, upperdir or workdir.
        role: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// Upper and work directories must share a filesystem for atomic renames.
    #[error("upperdir '{upper}' and workdir '{work}' are on different filesystems")]
    CrossDevice {
        /// The upper directory.
        upper: PathBuf,
        /// The work directory.
        work: PathBuf,
    },
    /// The work directory may not lie inside the upper one (or the reverse).
    #[error("workdir '{work}' and upperdir '{upper}' must not be inside one another")]
    Nested {
        /// The upper directory.
        upper: PathBuf,
        /// The work directory.
        work: PathBuf,
    },
    /// The work directory could not be prepared.
    #[error("workdir '{path}': cannot prepare '{WORK_SUBDIR}': {errno}")]
    Work {
        /// The work directory.
        path: PathBuf,
        /// What the system said.
        errno: Errno,
    },
}

fn check_dir(role: &'static str, path: &Path) -> Result<(), SetupError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SetupError::NotADirectory {
            role,
            path: path.into(),
        }),
        Err(e) => Err(SetupError::Open {
            role,
            path: path.into(),
            errno: super::errno_of(&e),
        }),
    }
}

fn open_layer(role: &'static str, path: &Path, fs_index: u64) -> Result<Layer, SetupError> {
    check_dir(role, path)?;
    Layer::open(path, fs_index).map_err(|errno| SetupError::Open {
        role,
        path: path.into(),
        errno,
    })
}

impl Union {
    /// Check the directories of `options` and open them as a union.
    pub fn new(options: MountOptions) -> Result<Union, SetupError> {
        let mut layers = Vec::new();
        let mut devs: Vec<u64> = Vec::new();
        let mut fs_index = |dev: u64| -> u64 {
            match devs.iter().position(|d| *d == dev) {
                Some(i) => i as u64,
                None => {
                    devs.push(dev);
                    (devs.len() - 1) as u64
                }
            }
        };
        let has_upper = options.writable();
        let mut work = None;
        let creator = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        // What we make in the work directory is ours, in its group if it is setgid.
        let mut work_owner = creator;
        let mut xattr_ns = XattrNamespace::Trusted;
        if has_upper {
            let upper_path = options.upperdir.clone().expect("writable has upper");
            let work_path = options.workdir.clone().expect("writable has work");
            let mut upper = open_layer("upperdir", &upper_path, 0)?;
            upper.fs_index = fs_index(upper.dev);
            check_dir("workdir", &work_path)?;
            let work_root = Layer::open(&work_path, 0).map_err(|errno| SetupError::Open {
                role: "workdir",
                path: work_path.clone(),
                errno,
            })?;
            if work_root.dev != upper.dev {
                return Err(SetupError::CrossDevice {
                    upper: upper_path,
                    work: work_path,
                });
            }
            let (u, w) = (canonical(&upper_path), canonical(&work_path));
            if u.starts_with(&w) || w.starts_with(&u) {
                return Err(SetupError::Nested {
                    upper: upper_path,
                    work: work_path,
                });
            }
            let scratch = prepare_work(&work_root).map_err(|errno| SetupError::Work {
                path: work_path.clone(),
                errno,
            })?;
            xattr_ns = detect_xattr_namespace(&scratch);
            let st = rustix::fs::fstat(&scratch).map_err(|errno| SetupError::Work {
                path: work_path.clone(),
                errno,
            })?;
            if st.st_mode & libc::S_ISGID != 0 {
                work_owner.1 = st.st_gid;
            }
            work = Some(scratch);
            layers.push(upper);
        }
        let mapped = !options.uid_map.is_empty() || !options.gid_map.is_empty();
        for path in &options.lowerdirs {
            let mut lower = open_layer("lowerdir", path, 0)?;
            if mapped {
                see_as_stored(&mut lower);
            }
            lower.fs_index = fs_index(lower.dev);
            layers.push(lower);
        }
        let root_layers = root_layers(&layers);
        let root = Node::new(ROOT_ID, true, None, OsStr::new(""), root_layers);
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1024);
        inode::FD_BUDGET.set((nofile as f64 * FD_CACHE_SHARE) as usize);
        Ok(Union {
            layers,
            has_upper,
            work,
            work_owner,
            no_shared_whiteout: std::sync::atomic::AtomicBool::new(false),
            creator,
            xattr_ns,
            nodes: NodeTable::new(root),
            handles: HandleTable::default(),
            ids: IdMapper::from_options(&options).in_own_namespace(),
            options,
            temp_counter: AtomicU64::new(0),
            temp_pid: std::sync::OnceLock::new(),
            prefetch: std::sync::OnceLock::new(),
            link_indexes: Default::default(),
        })
    }
}

/// With `uidmapping=`/`gidmapping=`, a lower layer must show the ids as stored: one on an
/// idmapped mount (podman's `mapped/N`) is reopened without the idmapping (see [`idmapped`]).
fn see_as_stored(layer: &mut Layer) {
    match idmapped::unmapped_view(layer.root.as_fd()) {
        Ok(idmapped::Unmapped::NotIdmapped) => {}
        Ok(idmapped::Unmapped::Reopened(fd, through)) => {
            tracing::info!(
                "lowerdir '{}' is on an idmapped mount and uidmapping/gidmapping are given: \
                 reading it through '{}' so ids are mapped once",
                layer.path.display(),
                through.display()
            );
            layer.root = fd;
        }
        Ok(idmapped::Unmapped::NotFound) => tracing::warn!(
            "lowerdir '{}' is on an idmapped mount and uidmapping/gidmapping are given, but no \
             mount without the idmapping reaches it: its owners are mapped twice",
            layer.path.display()
        ),
        Err(e) => tracing::warn!(
            "lowerdir '{}': cannot tell whether it is on an idmapped mount: {e}",
            layer.path.display()
        ),
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Layers of the root directory: all of them, down to the first opaque root.
fn root_layers(layers: &[Layer]) -> Vec<LayerIndex> {
    let mut out = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        out.push(i as LayerIndex);
        let opaque = rfs::openat(
            layer.root.as_fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(|fd| {
            format::has_opaque_xattr(fd.as_fd())
                || rfs::statat(&fd, OsStr::new(".wh..wh..opq"), AtFlags::SYMLINK_NOFOLLOW).is_ok()
        })
        .unwrap_or(false);
        if opaque && i + 1 < layers.len() {
            break;
        }
    }
    out
}

/// Create `WORKDIR/work` and empty it of anything a crashed mount left behind.
fn prepare_work(work_root: &Layer) -> Result<std::os::fd::OwnedFd, Errno> {
    let fd = work_root.root.as_fd();
    match rfs::mkdirat(fd, WORK_SUBDIR, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    let scratch = rfs::openat2(
        fd,
        WORK_SUBDIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        crate::overlay::beneath::BENEATH,
    )?;
    super::copyup::remove_contents(scratch.as_fd())?;
    Ok(scratch)
}

/// Root writes `trusted.overlay.*`; where that is refused (rootless), `user.overlay.*`.
fn detect_xattr_namespace(scratch: &std::os::fd::OwnedFd) -> XattrNamespace {
    let probe = "trusted.overlay.strata-probe";
    match rfs::fsetxattr(scratch, probe, b"1", rfs::XattrFlags::empty()) {
        Ok(()) => {
            let _ = rfs::fremovexattr(scratch, probe);
            XattrNamespace::Trusted
        }
        Err(_) => XattrNamespace::User,
    }
}
