//! Container verbs: run, create, start, stop, restart, kill, rm, ps, logs, exec, inspect,
//! diff, volume.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strata::container::{network, volume, Container, ImageSpec, RunOptions, Status};
use strata::image::Store;

/// Options shared by `run` and `create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Container name.
    #[arg(long)]
    name: Option<String>,
    /// Environment variable K=V.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// File of K=V lines.
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User (name or uid[:gid]).
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Volume HOST:CTR[:ro] or NAME:CTR.
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// Mount the root file system read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Network: bridge (the default: a private network with outbound access and published
    /// ports; rootless it needs subordinate ids, else the default is none), none (loopback
    /// only) or host (the host's network).
    #[arg(long)]
    network: Option<String>,
    /// Publish a container port on the host: [IP:][HOST:]CTR[/tcp|udp], ports or equal
    /// ranges (HOST omitted: a random free port).
    #[arg(short = 'p', long = "publish", value_name = "[IP:][HOST:]CTR[/PROTO]")]
    publish: Vec<String>,
    /// Publish every port the image exposes (EXPOSE) on a random host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Override the image entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal (with -d its output goes to the log).
    #[arg(short = 't', long)]
    tty: bool,
    /// OCI runtime (runc, crun or a path).
    #[arg(long)]
    runtime: Option<String>,
    /// When the image is pulled from its registry (lazy: if missing, pull it lazily, so the
    /// container starts once the TOCs of its eStargz layers are here).
    #[arg(long, value_enum, default_value_t = crate::registry::RunPull::Missing)]
    pull: crate::registry::RunPull,
    #[command(flatten)]
    connect: crate::registry::ConnectArgs,
    /// Image: a name, tag or ID from the store; or a root file system directory, or
    /// DIR,DIR,... layer directories bottom first (a path with a `/`).
    image: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// Container verbs.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create and start a container.
    Run {
        /// Remove the container when it exits.
        #[arg(long)]
        rm: bool,
        /// Run in the background and print the container ID.
        #[arg(short = 'd', long)]
        detach: bool,
        #[command(flatten)]
        args: CreateArgs,
    },
    /// Create a container without starting it.
    Create {
        #[command(flatten)]
        args: CreateArgs,
    },
    /// Start a created or stopped container.
    Start {
        /// Attach to its output and return its exit code.
        #[arg(short = 'a', long)]
        attach: bool,
        container: String,
    },
    /// Stop: SIGTERM, then SIGKILL after the timeout.
    Stop {
        /// Seconds before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop and start again on the same writable layer.
    Restart {
        /// Seconds before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal.
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers (their writable layer; volumes stay).
    Rm {
        /// Kill a running container first.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Show all, not only running.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// List a running container's published ports (`CTR/PROTO -> HOST_IP:HOST_PORT`).
    Port {
        container: String,
        /// Only this container port (PORT or PORT/PROTO).
        port: Option<String>,
    },
    /// Print the output of a detached container.
    Logs {
        /// Follow until it exits.
        #[arg(short = 'f', long)]
        follow: bool,
        container: String,
    },
    /// Run a command in a running container.
    Exec {
        /// Environment variable K=V.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Keep stdin open (always on).
        #[arg(short = 'i', long)]
        interactive: bool,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show a container's state, or an image's config and manifest, as JSON.
    Inspect { name: String },
    /// Make a new image from a container: its writable layer on top of its image's layers.
    Commit {
        /// Commit message recorded in the history.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
        container: String,
        /// NAME[:TAG] of the new image.
        name: Option<String>,
    },
    /// Show what a container's writable layer added (A), changed (C), deleted (D); or, given
    /// two images, what the second adds, changes and deletes relative to the first.
    Diff {
        /// A container; or the first of two images.
        container: String,
        /// The second image.
        image: Option<String>,
    },
    /// Named volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Internal: hold the rootless user namespace of the store.
    #[command(name = "__pause", hide = true)]
    Pause,
    /// Internal: watch a detached container's process and record its exit.
    #[command(name = "__monitor", hide = true)]
    Monitor { id: String },
    /// Internal: forward published TCP ports into a rootless container's network namespace.
    #[command(name = "__forward", hide = true)]
    Forward {
        /// The container's kept network namespace.
        #[arg(long)]
        netns: PathBuf,
        /// The container's address.
        #[arg(long)]
        to: std::net::Ipv4Addr,
        /// HOST_ADDR:PORT=CONTAINER_PORT, once per port.
        #[arg(long = "port")]
        ports: Vec<String>,
    },
}

/// `strata volume` verbs.
#[derive(clap::Subcommand)]
pub enum VolumeCmd {
    /// Create a named volume.
    Create { name: String },
    /// List volumes.
    Ls,
    /// Remove volumes not used by any container.
    Rm { names: Vec<String> },
}

/// An image given as local layer directories (until the image store is wired in).
fn local_image(arg: &str) -> Result<ImageSpec> {
    let lower_dirs: Vec<PathBuf> = arg
        .split(',')
        .map(|p| std::fs::canonicalize(p).with_context(|| format!("image {p}: not a directory")))
        .collect::<Result<_>>()?;
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))?;
    Ok(ImageSpec {
        id: arg.to_string(),
        name: arg.to_string(),
        lower_dirs,
        config,
    })
}

/// The image a `run`/`create` argument names: a path (with a `/`) is a directory or layer
/// list; anything else is looked up in the image store and its layers extracted.
///
/// For a store image the returned store pins its layers, so `rmi` cannot free them before the
/// container that lists them as lowerdirs exists: keep it until then.
fn image_spec(root: &Path, a: &CreateArgs) -> Result<(ImageSpec, Option<Store>)> {
    use crate::registry::RunPull;
    let arg = a.image.as_str();
    if arg.contains('/') && Path::new(arg.split(',').next().unwrap_or(arg)).is_dir() {
        return Ok((local_image(arg)?, None));
    }
    let store = Store::open(root)?;
    let img = match (a.pull, store.resolve_pinned(arg)) {
        (RunPull::Always, _) => {
            let id = crate::registry::pull_for(root, arg, &a.connect, false)?;
            store.resolve_pinned(&id)?
        }
        (pull @ (RunPull::Missing | RunPull::Lazy), Err(strata::image::Error::NoSuchImage(_))) => {
            eprintln!("Unable to find image '{arg}' in the store");
            let id = crate::registry::pull_for(root, arg, &a.connect, pull == RunPull::Lazy)?;
            store.resolve_pinned(&id)?
        }
        (_, r) => r?,
    };
    let spec = ImageSpec {
        id: img.id.to_string(),
        name: arg.to_string(),
        // A layer pulled lazily is its lazy directory (mounted with `lazy=`).
        lower_dirs: strata::image::lazy::lower_dirs(&store, &img)?,
        config: img.config,
    };
    Ok((spec, Some(store)))
}

fn options(
    root: &Path,
    a: &CreateArgs,
    auto_remove: bool,
) -> Result<(RunOptions, ImageSpec, Option<Store>)> {
    let network = match &a.network {
        Some(n) => network::Mode::parse(n)?,
        None => network::default_mode(),
    };
    let mut env = Vec::new();
    for f in &a.env_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("env file {}", f.display()))?;
        env.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    env.extend(a.env.iter().cloned());
    let opts = RunOptions {
        name: a.name.clone(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        volumes: a.volume.clone(),
        read_only: a.read_only,
        hostname: a.hostname.clone(),
        network,
        publish: a.publish.clone(),
        publish_all: a.publish_all,
        entrypoint: a.entrypoint.clone(),
        cmd: a.cmd.clone(),
        tty: a.tty,
        auto_remove,
        runtime: a.runtime.clone(),
    };
    let (image, lock) = image_spec(root, a)?;
    Ok((opts, image, lock))
}

/// Run one container verb; returns the process exit code.
pub fn run(root: &Path, cmd: Cmd) -> Result<i32> {
    if let Cmd::Pause = cmd {
        strata::container::userns::pause(root)?;
        return Ok(0);
    }
    if let Cmd::Forward { netns, to, ports } = &cmd {
        // Started inside the store's namespace; it needs no store session of its own.
        use strata::container::network::forward;
        let routes = ports
            .iter()
            .map(|p| forward::Route::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        forward::serve(netns, *to, &routes)?;
        return Ok(0);
    }
    // Rootless with subordinate ids: join the store's user namespace while single-threaded.
    let _userns = strata::container::userns::enter(root)?;
    match cmd {
        Cmd::Run { rm, detach, args } => {
            let (opts, image, lock) = options(root, &args, rm)?;
            let mut c = Container::create(root, &image, &opts)?;
            drop(lock); // the container now keeps its layers from garbage collection
            if detach {
                if let Err(e) = c.start() {
                    if rm {
                        let _ = c.remove(true);
                    }
                    return Err(e.into());
                }
                println!("{}", c.state.id);
                return Ok(0);
            }
            let code = c.run_attached(args.interactive);
            if rm {
                c.remove(true)?;
            }
            Ok(code?)
        }
        Cmd::Create { args } => {
            let (opts, image, _lock) = options(root, &args, false)?;
            println!("{}", Container::create(root, &image, &opts)?.state.id);
            Ok(0)
        }
        Cmd::Start { attach, container } => {
            let mut c = Container::open(root, &container)?;
            if attach {
                return Ok(c.run_attached(false)?);
            }
            c.start()?;
            println!("{container}");
            Ok(0)
        }
        Cmd::Stop { time, containers } => each(root, &containers, |mut c| {
            Ok(c.stop(Duration::from_secs(time))?)
        }),
        Cmd::Restart { time, containers } => each(root, &containers, |mut c| {
            Ok(c.restart(Duration::from_secs(time))?)
        }),
        Cmd::Kill { signal, containers } => each(root, &containers, |mut c| Ok(c.kill(&signal)?)),
        Cmd::Rm { force, containers } => each(root, &containers, |c| Ok(c.remove(force)?)),
        Cmd::Ps { all } => {
            println!(
                "{:<14}{:<12}{:<28}{:<20}{:<28}NAMES",
                "CONTAINER ID", "STATUS", "COMMAND", "IMAGE", "PORTS"
            );
            for c in Container::list(root)? {
                if !all && c.state.status != Status::Running {
                    continue;
                }
                let lost = c.rootfs_lost();
                let s = &c.state;
                let status = match (s.status, s.exit_code) {
                    // Its stratafs died: `exec` explains, `restart` or `rm -f` recovers.
                    (Status::Running, _) if lost => "rootfs-lost".to_string(),
                    (Status::Exited, Some(code)) => format!("exited({code})"),
                    // The exit was not seen (its monitor was killed): say so.
                    (Status::Exited, None) => "exited(?)".to_string(),
                    (st, _) => format!("{st:?}").to_lowercase(),
                };
                let mut command = s.command.join(" ");
                command.truncate(26);
                let mut image = if s.image_name.is_empty() {
                    s.image.clone()
                } else {
                    s.image_name.clone()
                };
                image.truncate(18);
                let ports: Vec<String> = c.ports().iter().map(|p| p.to_string()).collect();
                println!(
                    "{:<14}{:<12}{:<28}{:<20}{:<28}{}",
                    &s.id[..12],
                    status,
                    command,
                    image,
                    ports.join(", ") + " ",
                    s.name
                );
            }
            Ok(0)
        }
        Cmd::Port { container, port } => {
            let mut c = Container::open(root, &container)?;
            c.refresh()?;
            let want = match port.as_deref() {
                None => None,
                Some(p) => {
                    let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    let n: u16 = n
                        .parse()
                        .with_context(|| format!("invalid port {p:?}: PORT[/tcp|udp]"))?;
                    Some((n, proto.to_ascii_lowercase()))
                }
            };
            let mut found = false;
            for m in c.ports() {
                match &want {
                    Some((n, proto)) if *n != m.container_port || proto != m.protocol.as_str() => {}
                    Some(_) => {
                        println!("{}", m.host());
                        found = true;
                    }
                    None => {
                        println!(
                            "{}/{} -> {}",
                            m.container_port,
                            m.protocol.as_str(),
                            m.host()
                        );
                        found = true;
                    }
                }
            }
            if !found {
                if let Some(p) = port {
                    bail!("no public port {p} published for {container}");
                }
            }
            Ok(0)
        }
        Cmd::Logs { follow, container } => {
            Container::open(root, &container)?.logs(&mut std::io::stdout().lock(), follow)?;
            Ok(0)
        }
        Cmd::Exec {
            env,
            interactive: _,
            container,
            cmd,
        } => Ok(Container::open(root, &container)?.exec(&cmd, &env, false)?),
        Cmd::Inspect { name } => {
            let doc = match Container::open(root, &name) {
                Ok(mut c) => c.inspect()?,
                Err(strata::container::Error::NoSuchContainer(_)) => {
                    crate::images::inspect(root, &name)
                        .with_context(|| format!("no container or image named {name:?}"))?
                }
                Err(e) => return Err(e.into()),
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(0)
        }
        Cmd::Commit {
            message,
            container,
            name,
        } => {
            let c = Container::open(root, &container)?;
            let img = crate::images::commit(root, &c, name.as_deref(), message.as_deref())?;
            println!("{}", img.id);
            Ok(0)
        }
        Cmd::Diff {
            container: a,
            image: Some(b),
        } => crate::explore::diff_images(root, &a, &b),
        Cmd::Diff {
            container,
            image: None,
        } => {
            for ch in Container::open(root, &container)?.diff()? {
                println!("{} {}", ch.kind, ch.path);
            }
            Ok(0)
        }
        Cmd::Volume(v) => volume_cmd(root, v),
        Cmd::Pause | Cmd::Forward { .. } => Ok(0),
        Cmd::Monitor { id } => {
            strata::container::monitor::run(root, &id)?;
            Ok(0)
        }
    }
}

/// Apply `f` to each container named, as docker does: one that fails (missing, refused) is
/// reported and the others are still done; the exit code then says something failed.
fn each(root: &Path, keys: &[String], mut f: impl FnMut(Container) -> Result<()>) -> Result<i32> {
    let mut failed = false;
    for k in keys {
        match Container::open(root, k)
            .map_err(anyhow::Error::from)
            .and_then(&mut f)
        {
            Ok(()) => println!("{k}"),
            Err(e) => {
                crate::report(&e);
                failed = true;
            }
        }
    }
    Ok(if failed { crate::FAILED } else { 0 })
}

fn volume_cmd(root: &Path, v: VolumeCmd) -> Result<i32> {
    match v {
        VolumeCmd::Create { name } => {
            volume::create(root, &name)?;
            println!("{name}");
        }
        VolumeCmd::Ls => {
            println!("VOLUME NAME");
            for n in volume::list(root)? {
                println!("{n}");
            }
        }
        VolumeCmd::Rm { names } => {
            let all = Container::list(root)?;
            let mut failed = false;
            for n in names {
                let users: Vec<String> = all
                    .iter()
                    .filter(|c| c.state.volumes.contains(&n))
                    .map(|c| c.state.name.clone())
                    .collect();
                match volume::remove(root, &n, &users) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        crate::report(&e.into());
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(crate::FAILED);
            }
        }
    }
    Ok(0)
}
