//! `stratafs`: mount an ordered stack of lower directories plus an optional writable upper
//! directory as one union, with fuse-overlayfs's command line.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fuser::{Config, MountOption, Session, SessionACL, Transport};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use strata::sys::{self, Forked};
use strata::union::fs::{finish_and_exit, StrataFs};
use strata::union::options::{MountOptions, UringMode};
use strata::union::stats::RequestStats;
use strata::union::Union;

/// Mount read-only lower directories and one writable upper directory as one union tree,
/// with kernel overlayfs semantics and on-disk format.
#[derive(Parser, Debug)]
#[command(
    name = "stratafs",
    version,
    after_help = "Examples:\n  stratafs -o lowerdir=/img/top:/img/base,upperdir=/c/upper,workdir=/c/work /c/rootfs\n  stratafs -o lowerdir=/img/top:/img/base /mnt/ro        (read-only)\n  fusermount3 -u /c/rootfs                                 (unmount)\n\nOptions (-o, comma-separated): lowerdir=A:B (leftmost is the top; \\: escapes a colon),\nupperdir=, workdir=, volatile, fsync=0|1, uidmapping=IN:OUT:LEN[:...], gidmapping=...,\nsquash_to_root, squash_to_uid=, squash_to_gid=, static_nlink, timeout=SECS,\nthreaded=N (worker threads, 1-1024), allow_other, allow_root, ro, noexec,\nsuid|nosuid, dev|nodev (as root: suid,nodev unless given; otherwise always nosuid,nodev),\ndebug, fsname=.\nAs a mount helper: mount -t fuse.stratafs SOURCE MNT -o OPTS runs 'stratafs SOURCE MNT -o OPTS'."
)]
struct Args {
    /// Stay in the foreground instead of returning once the mount serves requests.
    #[arg(short = 'f')]
    foreground: bool,
    /// Log every request (implies -f).
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Mount options, comma-separated; may be repeated.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    options: Vec<String>,
    /// `[SOURCE] MOUNTPOINT`: the source is only a label (as mount(8) passes it).
    #[arg(required = true, num_args = 1..=2, value_name = "MOUNTPOINT")]
    paths: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratafs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let mut options = MountOptions::parse(args.options.iter().map(String::as_str))?;
    options.debug |= args.debug;
    let (source, mountpoint) = match args.paths.as_slice() {
        [m] => (None, m.clone()),
        [s, m] => (Some(s.to_string_lossy().into_owned()), m.clone()),
        _ => unreachable!("clap enforces 1..=2"),
    };
    if options.fsname.is_none() {
        options.fsname = source;
    }
    init_logging(options.debug);
    for ignored in &options.ignored {
        tracing::warn!("option '{ignored}' is accepted but has no effect");
    }
    match std::fs::metadata(&mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("mountpoint '{}' is not a directory", mountpoint.display()),
        Err(e) => bail!("mountpoint '{}': {e}", mountpoint.display()),
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, pass the device in");
    }
    // Modes of created files are exactly what the kernel asks for (it applied the umask).
    rustix::process::umask(rustix::fs::Mode::empty());
    let union = Union::with_sources(options, &open_source)?;
    union.check_mountpoint(&mountpoint)?;
    let foreground = args.foreground || args.debug;
    let notify = if foreground { None } else { Some(daemonize()?) };
    match serve(union, &mountpoint, notify) {
        Ok(()) => Ok(()),
        Err((e, Some(mut pipe))) => {
            // Tell the waiting parent why, so it can print the message and fail.
            let _ = write!(pipe, "{e:#}");
            Err(e)
        }
        Err((e, None)) => Err(e),
    }
}

/// The source of a lazy layer's blob: a local file, or the registry the spec names (reached
/// by the registry client, with the auth files' credentials).
fn open_source(
    spec: &strata::estargz::LazySpec,
) -> std::result::Result<Box<dyn strata::estargz::BlobSource>, String> {
    match &spec.remote {
        // Its TOC is read from the store when `pull --lazy` kept it (checked all the same).
        Some(_) => strata::registry::lazy_pull::blob_source(spec).map_err(|e| e.to_string()),
        None => strata::union::lazy::local_source(spec),
    }
}

fn init_logging(debug: bool) {
    let filter = if debug {
        tracing_subscriber::EnvFilter::new("debug")
    } else {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Fork; the parent waits until the child reports the mount ready (exit 0) or fails (its
/// message, exit 1). The child gets the write end of the report pipe.
fn daemonize() -> Result<std::fs::File> {
    let (read, write) = rustix::pipe::pipe().context("pipe")?;
    match sys::fork_single_threaded().context("fork")? {
        Forked::Parent(_) => {
            drop(write);
            let mut msg = String::new();
            std::fs::File::from(read).read_to_string(&mut msg).ok();
            if msg == "ready" {
                std::process::exit(0);
            }
            if msg.is_empty() {
                msg = "the daemon exited before the mount was ready".into();
            }
            eprintln!("stratafs: {msg}");
            std::process::exit(1);
        }
        Forked::Child => {
            drop(read);
            rustix::process::setsid().context("setsid")?;
            Ok(std::fs::File::from(write))
        }
    }
}

type ServeError = (anyhow::Error, Option<std::fs::File>);

fn serve(
    union: Union,
    mountpoint: &std::path::Path,
    notify: Option<std::fs::File>,
) -> std::result::Result<(), ServeError> {
    let opts = &union.options;
    let root = rustix::process::geteuid().is_root();
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone().unwrap_or_else(|| "stratafs".into())),
        // As a kernel option (fuser passes `Subtype` to fusermount3 only), so /proc/mounts
        // says `fuse.stratafs` however we mount.
        MountOption::CUSTOM("subtype=stratafs".into()),
        MountOption::DefaultPermissions,
    ];
    // As root, set-id programs work (as with fuse-overlayfs, and as containers expect) and
    // devices do not unless asked; a user's daemon gets neither (fusermount3 would refuse).
    if !root && (opts.suid == Some(true) || opts.dev == Some(true)) {
        tracing::warn!("'suid' and 'dev' need a daemon running as root: mounting nosuid,nodev");
    }
    let suid = root && opts.suid.unwrap_or(true);
    let dev = root && opts.dev.unwrap_or(false);
    mount_options.push(if suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    mount_options.push(if dev {
        MountOption::Dev
    } else {
        MountOption::NoDev
    });
    if !union.has_upper {
        mount_options.push(MountOption::RO);
    }
    for flag in opts
        .kernel_flags
        .iter()
        .filter(|f| union.has_upper || *f != "ro")
    {
        mount_options.push(match flag.as_str() {
            "ro" => MountOption::RO,
            "noexec" => MountOption::NoExec,
            "sync" => MountOption::Sync,
            _ => MountOption::DirSync,
        });
    }
    // As root (like fuse-overlayfs), container processes of any uid must reach the rootfs.
    let acl = if opts.allow_other || (root && !opts.allow_root) {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = acl;
    config.n_threads = Some(opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
    }));
    config.clone_fd = true;
    let uring = opts.uring;
    config.io_uring = uring != UringMode::Off;
    let passthrough = root && union.options.passthrough;
    // Resolved now: once mounted, resolving the path would enter our own mount.
    let canonical = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.into());
    let stats_path = union.options.stats.clone();
    let stats = Arc::new(RequestStats::default());
    let union = Arc::new(union);
    let fs = StrataFs::new(union.clone(), passthrough, stats.clone());
    let mut session = match Session::new(fs, mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            let e = anyhow::anyhow!("cannot mount on '{}': {e}", mountpoint.display());
            return Err((e, notify));
        }
    };
    let transport = session.transport();
    if uring == UringMode::On && transport == Transport::DevFuse {
        let _ = session.unmount();
        let e = anyhow::anyhow!(
            "uring=on: the kernel did not offer FUSE over io_uring (Linux 6.14+ with \
             CONFIG_FUSE_IO_URING; as root: echo 1 > /sys/module/fuse/parameters/enable_uring)"
        );
        return Err((e, notify));
    }
    tracing::info!("requests served over {transport}");
    stats.set_transport(&transport.to_string());
    let device = topmost_mount(&canonical)
        .filter(|(_, fstype)| fstype.starts_with("fuse"))
        .map(|(device, _)| device);
    let mut unmounter = session.unmount_callable();
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
    {
        Ok(s) => s,
        Err(e) => return Err((e.into(), notify)),
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGUSR1 {
                if let Some(path) = &stats_path {
                    if let Err(e) = stats.write_to(path) {
                        tracing::warn!("writing request counts to {}: {e}", path.display());
                    }
                }
                continue;
            }
            // Unmount only our own mount: after `umount -l` the path may hold another one (a
            // container restarted on the same rootfs directory), or nothing.
            let ours = device.is_some() && topmost_mount(&canonical).map(|(d, _)| d) == device;
            if !ours {
                break;
            }
            if let Err(e) = unmounter.unmount() {
                tracing::warn!("unmount on signal: {e}; detaching the mount instead");
                if let Err(e) =
                    rustix::mount::unmount(&canonical, rustix::mount::UnmountFlags::DETACH)
                {
                    tracing::error!("detaching the mount on signal: {e}");
                }
            }
            break;
        }
        // A mount that is gone, or detached but still in use, sends no DESTROY: end here.
        // (A clean unmount sends one; `finish_and_exit` runs once, whoever comes first.)
        finish_and_exit(&union, &stats);
    });
    if let Some(mut pipe) = notify {
        let _ = pipe.write_all(b"ready");
        drop(pipe);
        let _ = sys::detach_stdio();
    }
    // Returns only if the session fails; a normal end exits in `StrataFs::destroy`.
    session
        .run()
        .map_err(|e| (anyhow::anyhow!("serving the mount: {e}"), None))
}

/// The device (`MAJOR:MINOR`) and type of the topmost mount at `path`, from
/// /proc/self/mountinfo (read without touching the mount itself).
fn topmost_mount(path: &std::path::Path) -> Option<(String, String)> {
    use std::os::unix::ffi::OsStrExt;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        if unescape_mountinfo(fields.get(4)?) != want {
            return None;
        }
        Some((fields[2].to_string(), fields.get(sep + 1)?.to_string()))
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
