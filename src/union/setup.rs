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
use super::overlap::{self, Overlap};
use super::{detach, Union};
use crate::overlay::format::{self, XattrNamespace};

/// Name of the scratch directory inside the work dir (the kernel uses the same one, so either
/// can clean up after the other).
pub const WORK_SUBDIR: &str = "work";

/// Share of RLIMIT_NOFILE given to cached directory fds; the rest serves open files.
const FD_CACHE_SHARE: f64 = 0.5;

/// Why a union cannot be set up; each names the directory at fault.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A `lazy=` spec that cannot be used.
    #[error("lazy layer '{spec}': {reason}")]
    Lazy {
        /// The spec file.
        spec: PathBuf,
        /// Why.
        reason: String,
    },
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
    #[error("upperdir '{upper}' and workdir '{work}' are on different filesystems (they must be on one mount: EINVAL, as with kernel overlayfs)")]
    CrossDevice {
        /// The upper directory.
        upper: PathBuf,
        /// The work directory.
        work: PathBuf,
    },
    /// The work directory may not lie inside the upper one (or the reverse).
    #[error("workdir '{work}' and upperdir '{upper}' must be separate subtrees, neither inside the other (EINVAL, as with kernel overlayfs)")]
    Nested {
        /// The upper directory.
        upper: PathBuf,
        /// The work directory.
        work: PathBuf,
    },
    /// Upper and work directories must be on one mount, as the kernel requires.
    #[error("upperdir '{upper}' and workdir '{work}' are on different mounts (workdir and upperdir must reside under the same mount: EINVAL, as with kernel overlayfs)")]
    DifferentMounts {
        /// The upper directory.
        upper: PathBuf,
        /// The work directory.
        work: PathBuf,
    },
    /// A lower layer is, or lies inside, another layer or the work directory.
    #[error("{role} '{path}' {relation} {other_role} '{other}' ({words}: ELOOP, as with kernel overlayfs)")]
    Overlap {
        /// The refused layer's role (lowerdir).
        role: &'static str,
        /// The refused layer's path.
        path: PathBuf,
        /// "is the same directory as" or "lies inside".
        relation: &'static str,
        /// The kernel's words for it.
        words: &'static str,
        /// The role of the layer it clashes with.
        other_role: &'static str,
        /// That layer's path.
        other: PathBuf,
    },
    /// Without detached layer clones the daemon would reach its own mount through a layer.
    #[error("mountpoint '{mountpoint}' lies inside {role} '{path}': stratafs would reach its own mount through that layer; this layout needs CAP_SYS_ADMIN (run as root, or inside `unshare -Urm`), where stratafs hides submounts of its layers as kernel overlayfs does")]
    MountInsideLayer {
        /// The mount point.
        mountpoint: PathBuf,
        /// The layer's role.
        role: &'static str,
        /// The layer's path.
        path: PathBuf,
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

impl SetupError {
    fn lazy(spec: &Path, reason: impl Into<String>) -> SetupError {
        SetupError::Lazy {
            spec: spec.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The errno that kernel overlayfs (or the system) gives for the same mistake.
    pub fn errno(&self) -> Errno {
        match self {
            SetupError::Open { errno, .. } | SetupError::Work { errno, .. } => *errno,
            SetupError::NotADirectory { .. } => Errno::NOTDIR,
            SetupError::CrossDevice { .. }
            | SetupError::Nested { .. }
            | SetupError::DifferentMounts { .. } => Errno::INVAL,
            SetupError::Overlap { .. } | SetupError::MountInsideLayer { .. } => Errno::LOOP,
            SetupError::Lazy { .. } => Errno::INVAL,
        }
    }
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

/// Give the lower layers named by the `lazy=` specs their lazy part.
fn attach_lazy(
    specs: &[PathBuf],
    layers: &mut [Layer],
    has_upper: bool,
    open_source: super::lazy::OpenSource<'_>,
) -> Result<(), SetupError> {
    let lowers = if has_upper { &mut layers[1..] } else { layers };
    let mut found = Vec::new();
    for path in specs {
        let spec = crate::estargz::LazySpec::read(path).map_err(|e| SetupError::lazy(path, e))?;
        let st = rustix::fs::stat(&spec.dir)
            .map_err(|e| SetupError::lazy(path, format!("{}: {e}", spec.dir.display())))?;
        let lower = lowers
            .iter()
            .position(|l| {
                rustix::fs::fstat(&l.root)
                    .is_ok_and(|r| (r.st_dev, r.st_ino) == (st.st_dev, st.st_ino))
            })
            .ok_or_else(|| {
                SetupError::lazy(
                    path,
                    format!("{} is not one of the lowerdirs", spec.dir.display()),
                )
            })?;
        found.push((path, spec, lower));
    }
    // Each layer's TOC and prefetch are read at once, one thread each (the threads end here,
    // before the daemon forks).
    let opened: Vec<Result<super::lazy::LazyLayer, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = found
            .iter()
            .map(|(_, spec, _)| s.spawn(move || super::lazy::LazyLayer::open(spec, open_source)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for ((path, _, lower), lazy) in found.iter().zip(opened) {
        let lazy = lazy.map_err(|e| SetupError::lazy(path, e))?;
        lowers[*lower].lazy = Some(std::sync::Arc::new(lazy));
    }
    Ok(())
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
    /// Check the directories of `options` and open them as a union (lazy layers' blobs must
    /// be local files).
    pub fn new(options: MountOptions) -> Result<Union, SetupError> {
        Union::with_sources(options, &super::lazy::local_source)
    }

    /// [`Union::new`], with `open_source` making the source of each lazy layer's blob.
    pub fn with_sources(
        options: MountOptions,
        open_source: super::lazy::OpenSource<'_>,
    ) -> Result<Union, SetupError> {
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
        let mut work_root = None;
        if has_upper {
            let upper_path = options.upperdir.clone().expect("writable has upper");
            let work_path = options.workdir.clone().expect("writable has work");
            let mut upper = open_layer("upperdir", &upper_path, 0)?;
            upper.fs_index = fs_index(upper.dev);
            check_dir("workdir", &work_path)?;
            let root = Layer::open(&work_path, 0).map_err(|errno| SetupError::Open {
                role: "workdir",
                path: work_path.clone(),
                errno,
            })?;
            if root.dev != upper.dev {
                return Err(SetupError::CrossDevice {
                    upper: upper_path,
                    work: work_path,
                });
            }
            if let Err(overlap) =
                overlap::check_upper_and_work(upper.root.as_fd(), root.root.as_fd())
            {
                return Err(match overlap {
                    Overlap::DifferentMounts => SetupError::DifferentMounts {
                        upper: upper_path,
                        work: work_path,
                    },
                    _ => SetupError::Nested {
                        upper: upper_path,
                        work: work_path,
                    },
                });
            }
            layers.push(upper);
            work_root = Some(root);
        }
        let mapped = !options.uid_map.is_empty() || !options.gid_map.is_empty();
        for path in &options.lowerdirs {
            let mut lower = open_layer("lowerdir", path, 0)?;
            if mapped {
                // Before the detached clone is made: it must clone the unmapped view.
                see_as_stored(&mut lower);
            }
            lower.fs_index = fs_index(lower.dev);
            layers.push(lower);
        }
        attach_lazy(&options.lazy, &mut layers, has_upper, open_source)?;
        // Before anything is written: a lower layer that is the work directory would be
        // emptied by `prepare_work`.
        check_overlaps(&layers, has_upper, work_root.as_ref())?;
        let traps = traps_inside_lowers(&layers, has_upper, work_root.as_ref());
        detach_layers(&mut layers, has_upper, work_root.as_mut());
        if let Some(work_root) = &work_root {
            let work_path = &work_root.path;
            let scratch = prepare_work(work_root).map_err(|errno| SetupError::Work {
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
            discards: super::discard::Discarder::default(),
            prefetch: std::sync::OnceLock::new(),
            link_indexes: Default::default(),
            traps,
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

/// The role (option name) of layer `i` of a union's layer list.
fn role_of(i: usize, has_upper: bool) -> &'static str {
    if has_upper && i == 0 {
        "upperdir"
    } else {
        "lowerdir"
    }
}

/// Refuse the lower layers kernel overlayfs refuses: one that is, or lies inside, the upper,
/// the work directory or another lower layer.
fn check_overlaps(
    layers: &[Layer],
    has_upper: bool,
    work_root: Option<&Layer>,
) -> Result<(), SetupError> {
    // Indices: the layers as in `layers`, then the work directory, then its `work/`.
    let work_index = layers.len();
    let scratch = work_root.and_then(|w| {
        rfs::openat(
            w.root.as_fd(),
            WORK_SUBDIR,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .ok()
    });
    let mut trapped = Vec::new();
    if has_upper {
        trapped.push((0, layers[0].root.as_fd()));
    }
    if let Some(w) = work_root {
        trapped.push((work_index, w.root.as_fd()));
    }
    if let Some(s) = &scratch {
        trapped.push((work_index, s.as_fd()));
    }
    let first_lower = usize::from(has_upper);
    let lowers: Vec<_> = layers
        .iter()
        .enumerate()
        .skip(first_lower)
        .map(|(i, l)| (i, l.root.as_fd()))
        .collect();
    let describe = |i: usize| -> (&'static str, PathBuf) {
        match work_root {
            Some(w) if i == work_index => ("workdir", w.path.clone()),
            _ => (role_of(i, has_upper), layers[i].path.clone()),
        }
    };
    let refusal = match overlap::check_lowers(&trapped, &lowers) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let (layer, other, relation) = match refusal {
        Overlap::Same { layer, other } => (layer, other, "is the same directory as"),
        Overlap::Inside { layer, other } => (layer, other, "lies inside"),
        Overlap::NotSeparate | Overlap::DifferentMounts => return Ok(()),
    };
    let words = refusal.kernel_words();
    let (role, path) = describe(layer);
    let (other_role, other) = describe(other);
    Err(SetupError::Overlap {
        role,
        path,
        relation,
        words,
        other_role,
        other,
    })
}

/// The upper directory, the work directory and its `work/` where they lie inside a lower
/// layer (kernel overlayfs mounts that, and answers ELOOP to a lookup that reaches them).
fn traps_inside_lowers(
    layers: &[Layer],
    has_upper: bool,
    work_root: Option<&Layer>,
) -> Vec<overlap::DirId> {
    if !has_upper {
        return Vec::new();
    }
    let lowers: Vec<overlap::DirId> = layers[1..]
        .iter()
        .filter_map(|l| overlap::dir_id(l.root.as_fd()).ok())
        .collect();
    let mut dirs = vec![layers[0].root.try_clone().ok()];
    if let Some(w) = work_root {
        dirs.push(w.root.try_clone().ok());
        dirs.push(
            rfs::openat(
                w.root.as_fd(),
                WORK_SUBDIR,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .ok(),
        );
    }
    dirs.into_iter()
        .flatten()
        .filter(|fd| {
            overlap::ancestors(fd.as_fd()).is_ok_and(|up| up.iter().any(|a| lowers.contains(a)))
        })
        .filter_map(|fd| overlap::dir_id(fd.as_fd()).ok())
        .collect()
}

/// Replace the layers' roots (and the work directory's) by detached clones of their mounts,
/// where the kernel allows it; all or none, so that [`Union::check_mountpoint`] knows.
fn detach_layers(layers: &mut [Layer], has_upper: bool, work_root: Option<&mut Layer>) {
    let mut roots = Vec::with_capacity(layers.len() + 1);
    let mut work_clone = None;
    let result = (|| -> Result<(), Errno> {
        let first_lower = if let (true, Some(w)) = (has_upper, work_root.as_deref()) {
            let (u, wk) = detach::clone_upper_and_work(
                &layers[0].path,
                layers[0].root.as_fd(),
                &w.path,
                w.root.as_fd(),
            )?;
            roots.push(u);
            work_clone = Some(wk);
            1
        } else {
            0
        };
        for layer in &layers[first_lower..] {
            roots.push(detach::clone_dir(layer.root.as_fd(), true)?);
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            for (layer, root) in layers.iter_mut().zip(roots) {
                layer.root = root;
                layer.detached = true;
            }
            if let (Some(w), Some(clone)) = (work_root, work_clone) {
                w.root = clone;
                w.detached = true;
            }
        }
        Err(e) => tracing::info!(
            "layers stay on their mounts (no detached clones: {e}); mounts inside them are visible"
        ),
    }
}

impl Union {
    /// Refuse to mount at `mountpoint` when the daemon could reach its own mount through a
    /// layer: the mount point lies inside a layer that is not a detached clone.
    pub fn check_mountpoint(&self, mountpoint: &Path) -> Result<(), SetupError> {
        if self.layers.iter().all(|l| l.detached) {
            return Ok(());
        }
        let Ok(fd) = rfs::open(
            mountpoint,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return Ok(());
        };
        let Ok(up) = overlap::ancestors(fd.as_fd()) else {
            return Ok(());
        };
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.detached {
                continue;
            }
            if let Ok(id) = overlap::dir_id(layer.root.as_fd()) {
                if up.contains(&id) {
                    return Err(SetupError::MountInsideLayer {
                        mountpoint: mountpoint.to_path_buf(),
                        role: role_of(i, self.has_upper),
                        path: layer.path.clone(),
                    });
                }
            }
        }
        Ok(())
    }
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
