//! The union filesystems under test, and mounting one of them on a fixture's layers.
//!
//! Every mount gets a fresh upper and work directory, waits at most a deadline for the
//! filesystem to appear, and is unmounted (its daemon killed by PID if need be) on drop.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::deadline::{kill, run_command};
use super::error::{io_err, BenchError, Result};
use super::fixture::{mkdirs, LayerSet};
use super::graveyard::Graveyard;
use super::procfs;
use crate::union::stats::StatsSnapshot;

/// How long a mount may take to appear, and an unmount to finish.
const MOUNT_DEADLINE: Duration = Duration::from_secs(20);

/// A union filesystem to benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Our FUSE daemon, at this path.
    Stratafs(PathBuf),
    /// Kernel overlayfs with `index=on`: the reference.
    Overlay,
    /// fuse-overlayfs from `$PATH`.
    FuseOverlayfs,
    /// unionfs-fuse from `$PATH`, in copy-on-write mode.
    UnionfsFuse,
    /// No union at all: a plain directory holding a copy of the merged tree.
    Native,
    /// Any program that takes fuse-overlayfs's command line.
    Program(PathBuf),
    /// A union backend with extra mount options (`--backends stratafs+metacopy=on`), to
    /// compare modes of one filesystem.
    WithOptions(Box<Backend>, String),
}

/// Names accepted by `--backends`, in the default order.
pub const BACKEND_NAMES: [&str; 5] = [
    "stratafs",
    "overlay",
    "fuse-overlayfs",
    "unionfs-fuse",
    "native",
];

impl Backend {
    /// Parses a `--backends` name, optionally followed by `+OPTIONS` (comma-separated mount
    /// options, joined with `+` on the command line); `stratafs` is the path of our daemon.
    pub fn parse(name: &str, stratafs: &Path) -> Result<Backend> {
        if let Some((base, options)) = name.split_once('+') {
            let base = Backend::parse(base, stratafs)?;
            if base == Backend::Native || base == Backend::UnionfsFuse {
                return Err(BenchError::Config(format!(
                    "{name}: only overlay-style backends take options"
                )));
            }
            return Ok(Backend::WithOptions(
                Box::new(base),
                options.replace('+', ","),
            ));
        }
        Ok(match name {
            "stratafs" => Backend::Stratafs(stratafs.to_path_buf()),
            "overlay" | "kernel" => Backend::Overlay,
            "fuse-overlayfs" => Backend::FuseOverlayfs,
            "unionfs-fuse" | "unionfs" => Backend::UnionfsFuse,
            "native" => Backend::Native,
            other => {
                return Err(BenchError::Config(format!(
                    "unknown backend {other:?} (known: {})",
                    BACKEND_NAMES.join(", ")
                )))
            }
        })
    }

    /// The name used in tables, JSON and charts.
    pub fn name(&self) -> String {
        match self {
            Backend::WithOptions(base, options) => {
                format!("{}+{}", base.name(), options.replace(',', "+"))
            }
            Backend::Stratafs(_) => "stratafs".into(),
            Backend::Overlay => "overlay".into(),
            Backend::FuseOverlayfs => "fuse-overlayfs".into(),
            Backend::UnionfsFuse => "unionfs-fuse".into(),
            Backend::Native => "native".into(),
            Backend::Program(path) => path
                .file_name()
                .unwrap_or(path.as_os_str())
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// True for backends served by a FUSE daemon (whose memory is measured).
    pub fn is_fuse(&self) -> bool {
        if let Backend::WithOptions(base, _) = self {
            return base.is_fuse();
        }
        !matches!(self, Backend::Overlay | Backend::Native)
    }

    /// Why this backend cannot run here, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Backend::WithOptions(base, _) => base.unavailable(),
            Backend::Overlay if !procfs::is_root() => Some("kernel overlayfs needs root".into()),
            Backend::Native | Backend::Overlay => None,
            Backend::Stratafs(path) | Backend::Program(path) => (!is_executable(path))
                .then(|| format!("{} is not an executable file", path.display())),
            Backend::FuseOverlayfs => find_in_path("fuse-overlayfs")
                .is_none()
                .then(|| "fuse-overlayfs is not installed (Debian: fuse-overlayfs)".into()),
            Backend::UnionfsFuse => find_in_path("unionfs")
                .is_none()
                .then(|| "unionfs is not installed (Debian: unionfs-fuse)".into()),
        }
    }

    /// Mounts `set` with a fresh upper and work directory under `scratch`.
    /// True for our daemon, with or without extra options (it counts its requests).
    pub fn is_stratafs(&self) -> bool {
        match self {
            Backend::Stratafs(_) => true,
            Backend::WithOptions(base, _) => base.is_stratafs(),
            _ => false,
        }
    }

    pub fn mount(&self, set: &LayerSet, scratch: &Path) -> Result<Mount> {
        match self {
            Backend::WithOptions(base, options) => base.mount_with(set, scratch, Some(options)),
            _ => self.mount_with(set, scratch, None),
        }
    }

    fn mount_with(&self, set: &LayerSet, scratch: &Path, extra: Option<&str>) -> Result<Mount> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if *self == Backend::Native {
            // A mount pins its root's dentry; holding the directory open does the same here, so
            // a cold run does not also pay for looking up the path to the copy.
            let pin = fs::File::open(&set.native).map_err(io_err("open", &set.native))?;
            return Ok(Mount {
                root: set.native.clone(),
                dir: None,
                daemon: None,
                kernel: false,
                stats: None,
                graveyard: None,
                _pin: Some(pin),
            });
        }
        let dir = scratch.join(format!(
            "{}-{}-{}",
            self.name(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("mnt"));
        for d in [&upper, &work, &mnt] {
            mkdirs(d)?;
        }
        let mut mount = Mount {
            root: mnt.clone(),
            dir: Some(dir.clone()),
            daemon: None,
            kernel: false,
            stats: None,
            graveyard: Some(Graveyard::within(scratch)),
            _pin: None,
        };
        match self {
            Backend::Overlay => {
                mount.kernel = true;
                // Relative lower paths keep 100 layers under the one-page limit of mount data.
                let (cwd, lowers) = relative_layers(&set.layers);
                let mut opts = format!(
                    "lowerdir={lowers},upperdir={},workdir={},index=on",
                    upper.display(),
                    work.display()
                );
                if let Some(extra) = extra {
                    opts.push(',');
                    opts.push_str(extra);
                }
                let mut cmd = Command::new("mount");
                cmd.current_dir(cwd)
                    .args(["-t", "overlay", "overlay", "-o", &opts])
                    .arg(&mnt);
                if let Err(e) = run_command(&mut cmd, MOUNT_DEADLINE) {
                    mount.kernel = false;
                    return Err(e);
                }
            }
            Backend::UnionfsFuse => {
                let mut branches = format!("{}=RW", upper.display());
                for layer in &set.layers {
                    branches.push_str(&format!(":{}=RO", layer.display()));
                }
                let mut cmd = Command::new("unionfs");
                cmd.args(["-f", "-o", "cow"]).arg(branches).arg(&mnt);
                mount.daemon = Some(spawn_daemon(cmd, &dir)?);
            }
            Backend::Stratafs(program) => {
                // Our daemon counts the requests it serves, for the requests-per-file rows.
                let stats = dir.join("stats.json");
                let mut opts = format!("stats={}", stats.display());
                if let Some(extra) = extra {
                    opts = format!("{extra},{opts}");
                }
                mount.daemon = Some(spawn_daemon(
                    overlay_syntax(program.as_os_str(), set, &upper, &work, &mnt, Some(&opts)),
                    &dir,
                )?);
                mount.stats = Some(stats);
            }
            Backend::Program(program) => {
                mount.daemon = Some(spawn_daemon(
                    overlay_syntax(program.as_os_str(), set, &upper, &work, &mnt, extra),
                    &dir,
                )?);
            }
            Backend::FuseOverlayfs => {
                let cmd =
                    overlay_syntax("fuse-overlayfs".as_ref(), set, &upper, &work, &mnt, extra);
                mount.daemon = Some(spawn_daemon(cmd, &dir)?);
            }
            Backend::Native | Backend::WithOptions(..) => unreachable!("handled above"),
        }
        if mount.daemon.is_some() {
            mount.wait_mounted(&dir)?;
        }
        Ok(mount)
    }
}

/// A mounted backend; unmounted on drop.
#[derive(Debug)]
pub struct Mount {
    /// Where the merged tree is seen.
    pub root: PathBuf,
    dir: Option<PathBuf>,
    daemon: Option<Child>,
    kernel: bool,
    /// Where a stratafs daemon writes its request counts (on SIGUSR1).
    stats: Option<PathBuf>,
    /// Where its upper and work directories go once it is unmounted.
    graveyard: Option<Graveyard>,
    _pin: Option<fs::File>,
}

impl Mount {
    /// The FUSE daemon's PID, if a daemon serves this mount.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The requests a stratafs daemon has served so far, by type (`None` for other backends).
    /// The daemon writes them when signalled; this waits up to a few seconds for the file.
    pub fn request_counts(&self) -> Option<StatsSnapshot> {
        let (path, pid) = (self.stats.as_ref()?, self.daemon_pid()?);
        let before = StatsSnapshot::read(path).map(|s| s.generation).unwrap_or(0);
        let pid = rustix::process::Pid::from_raw(pid as i32)?;
        rustix::process::kill_process(pid, rustix::process::Signal::USR1).ok()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(s) = StatsSnapshot::read(path) {
                if s.generation > before {
                    return Some(s);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// The FUSE daemon's peak resident memory so far.
    pub fn daemon_peak_rss(&self) -> Option<u64> {
        self.daemon_pid().and_then(procfs::peak_rss_bytes)
    }

    /// The upper directory of this mount, if it has one.
    pub fn upper(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("upper"))
    }

    fn wait_mounted(&mut self, dir: &Path) -> Result<()> {
        let start = Instant::now();
        let parent_dev = fs::metadata(dir).map_err(io_err("stat", dir))?.dev();
        loop {
            if fs::metadata(&self.root).is_ok_and(|m| m.dev() != parent_dev) {
                return Ok(());
            }
            let daemon = self.daemon.as_mut().expect("only daemons are waited for");
            if let Ok(Some(status)) = daemon.try_wait() {
                let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                self.daemon = None;
                return Err(BenchError::Command {
                    program: "mount daemon".into(),
                    message: format!("exited with {status} before mounting: {}", log.trim()),
                });
            }
            if start.elapsed() > MOUNT_DEADLINE {
                self.abort();
                return Err(BenchError::Timeout {
                    what: format!("mount at {}", self.root.display()),
                    seconds: MOUNT_DEADLINE.as_secs(),
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Detaches the mount at once and kills its daemon: used when a workload hung on it.
    pub fn abort(&mut self) {
        if self.dir.is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.root)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut daemon) = self.daemon.take() {
            kill(daemon.id());
            let _ = daemon.wait();
        }
        self.kernel = false;
    }

    /// Unmounts, waits for the daemon to exit and buries the upper and work directories
    /// (see [`super::graveyard`]).
    pub fn unmount(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        if self.daemon.is_some() || self.kernel {
            let unmounted = if self.kernel {
                run_command(Command::new("umount").arg(&self.root), MOUNT_DEADLINE)
            } else {
                run_command(
                    Command::new("fusermount3").arg("-u").arg(&self.root),
                    MOUNT_DEADLINE,
                )
            };
            if let Err(e) = unmounted {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.root)
                    .stderr(Stdio::null())
                    .status();
                result = Err(e);
            }
            self.kernel = false;
        }
        if let Some(mut daemon) = self.daemon.take() {
            let start = Instant::now();
            while !matches!(daemon.try_wait(), Ok(Some(_))) {
                if start.elapsed() > MOUNT_DEADLINE {
                    kill(daemon.id());
                    let _ = daemon.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        match &self.graveyard {
            Some(g) => g.bury(&dir)?,
            None => fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?,
        }
        result
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("cleaning up a benchmark mount: {e}");
        }
    }
}

/// The fuse-overlayfs command line, in the foreground so the daemon's PID is the child's.
fn overlay_syntax(
    program: &std::ffi::OsStr,
    set: &LayerSet,
    upper: &Path,
    work: &Path,
    mnt: &Path,
    extra: Option<&str>,
) -> Command {
    let lowers: Vec<String> = set.layers.iter().map(|l| l.display().to_string()).collect();
    let mut opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if let Some(extra) = extra {
        opts.push(',');
        opts.push_str(extra);
    }
    let mut cmd = Command::new(program);
    cmd.args(["-f", "-o", &opts]).arg(mnt);
    cmd
}

fn spawn_daemon(mut cmd: Command, dir: &Path) -> Result<Child> {
    let log_path = dir.join("daemon.log");
    let log = fs::File::create(&log_path).map_err(io_err("create", &log_path))?;
    let err = log.try_clone().map_err(io_err("dup", &log_path))?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| BenchError::Command {
            program: cmd.get_program().to_string_lossy().into_owned(),
            message: e.to_string(),
        })
}

/// The layers' common parent and their names relative to it, or absolute paths if they differ.
fn relative_layers(layers: &[PathBuf]) -> (PathBuf, String) {
    let parent = layers[0].parent().unwrap_or(Path::new("/")).to_path_buf();
    if layers.iter().all(|l| l.parent() == Some(&parent)) {
        let names: Vec<String> = layers
            .iter()
            .map(|l| {
                l.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        (parent, names.join(":"))
    } else {
        let names: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        (PathBuf::from("/"), names.join(":"))
    }
}

/// Looks a program up in `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// The `stratafs` binary next to the running executable (or one directory up, where cargo
/// puts binaries relative to tests and benches), if there is one.
pub fn default_stratafs() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let next_to = dir.join("stratafs");
    if is_executable(&next_to) {
        return next_to;
    }
    let above = dir.parent().map(|d| d.join("stratafs"));
    above.filter(|p| is_executable(p)).unwrap_or(next_to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backends_with_options() {
        let exe = Path::new("/x/stratafs");
        let b = Backend::parse("stratafs+metacopy=on+fsync=0", exe).unwrap();
        assert_eq!(
            b,
            Backend::WithOptions(
                Box::new(Backend::Stratafs(exe.into())),
                "metacopy=on,fsync=0".into()
            )
        );
        assert_eq!(b.name(), "stratafs+metacopy=on+fsync=0");
        assert!(b.is_fuse());
        assert!(!Backend::parse("overlay+metacopy=on", exe)
            .unwrap()
            .is_fuse());
        assert!(Backend::parse("native+x", exe).is_err());
        assert!(Backend::parse("zfs", exe).is_err());
    }

    #[test]
    fn kernel_lowerdirs_are_relative_to_their_common_parent() {
        let layers = vec![
            PathBuf::from("/f/stack/l001"),
            PathBuf::from("/f/stack/l000"),
        ];
        assert_eq!(
            relative_layers(&layers),
            (PathBuf::from("/f/stack"), "l001:l000".into())
        );
        let mixed = vec![PathBuf::from("/a/x"), PathBuf::from("/b/y")];
        assert_eq!(relative_layers(&mixed).1, "/a/x:/b/y");
    }
}
