//! Mount verbs: mount and umount (read-only views of images and containers), and unshare (a
//! command in strata's rootless namespaces, where a rootless view is visible).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use strata::container::state::Paths;
use strata::container::{userns, view, Container};
use strata::image::{self, Store};

/// Mount verbs.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Mount an image's layers, or a container's layers and its writable layer, read-only to
    /// look at with ordinary tools; prints the mount point (made in the store unless
    /// MOUNTPOINT is given). Without arguments, list the mounts. Rootless with subordinate
    /// ids the mount lives in strata's namespace: look at it from `strata unshare`.
    Mount {
        /// An image (any reference form) or a container (name or ID); an image wins.
        source: Option<String>,
        /// An existing directory to mount it on.
        mountpoint: Option<PathBuf>,
    },
    /// Unmount what `strata mount` mounted, named by its mount point or by the image or
    /// container it shows (all of that one's mounts).
    Umount {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Run a command (default $SHELL) in strata's rootless user and mount namespaces, as
    /// `podman unshare` does: there, ids are the containers' and rootless mounts are visible.
    /// Without subordinate ids, or as root, it just runs the command.
    Unshare {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// Run one mount verb.
pub fn run(root: &Path, cmd: Cmd) -> Result<i32> {
    let _userns = userns::enter(root)?;
    match cmd {
        Cmd::Mount {
            source: None,
            mountpoint: _,
        } => list(root),
        Cmd::Mount {
            source: Some(s),
            mountpoint,
        } => mount(root, &s, mountpoint.as_deref()),
        Cmd::Umount { targets } => {
            let mut failed = false;
            for t in &targets {
                if let Err(e) = umount(root, t) {
                    crate::report(&e);
                    failed = true;
                }
            }
            Ok(if failed { crate::FAILED } else { 0 })
        }
        Cmd::Unshare { command } => unshare(&command),
    }
}

fn list(root: &Path) -> Result<i32> {
    for v in view::mounted(root)? {
        println!("{} {}", v.name, v.target.display());
    }
    Ok(0)
}

fn mount(root: &Path, source: &str, mountpoint: Option<&Path>) -> Result<i32> {
    let store = Store::open(root).with_context(|| format!("open store {}", root.display()))?;
    // Pinned from here until this process ends, long after the view's record exists and
    // garbage collection sees it.
    let what = match store.resolve_pinned(source) {
        Ok(img) => view::What {
            name: source.to_string(),
            image: img.id.to_string(),
            container: None,
            // A layer pulled lazily is its lazy directory (mounted with `lazy=`).
            lower_dirs: strata::image::lazy::lower_dirs(&store, &img)?,
        },
        Err(image::Error::NoSuchImage(_)) | Err(image::Error::BadReference(_)) => {
            let c = Container::open(root, source)
                .map_err(|_| anyhow::anyhow!("{source}: no such image or container"))?;
            let mut lower_dirs = c.state.lower_dirs.clone();
            lower_dirs.push(Paths::new(root, &c.state.id).upper());
            view::What {
                name: source.to_string(),
                image: c.state.image.clone(),
                container: Some(c.state.id.clone()),
                lower_dirs,
            }
        }
        Err(e) => return Err(e.into()),
    };
    // As podman: mounting the same thing again gives the mount it has.
    let existing = view::mounted(root)?.into_iter().find(|v| {
        mountpoint.is_none()
            && v.own_target
            && v.image == what.image
            && v.container == what.container
    });
    let v = match existing {
        Some(v) => v,
        None => view::mount(root, what, mountpoint)?,
    };
    if userns::joined() {
        eprintln!("(rootless: the mount is visible from `strata unshare`)");
    }
    println!("{}", v.target.display());
    Ok(0)
}

fn umount(root: &Path, key: &str) -> Result<()> {
    let all = view::list(root)?;
    let mut views: Vec<&view::View> = all.iter().filter(|v| v.matches(key)).collect();
    if views.is_empty() {
        // Another name of the image or container.
        let image = Store::open(root)
            .and_then(|s| s.resolve(key))
            .map(|i| i.id.to_string());
        let container = Container::open(root, key).map(|c| c.state.id);
        views = all
            .iter()
            .filter(|v| match &v.container {
                None => image.as_ref().is_ok_and(|i| *i == v.image),
                Some(c) => container.as_ref().is_ok_and(|id| id == c),
            })
            .collect();
    }
    if views.is_empty() {
        bail!(
            "{key}: not mounted by strata mount (name its mount point, image or container; \
             `strata mount` lists them)"
        );
    }
    for v in views {
        view::unmount(root, v).with_context(|| format!("umount {}", v.target.display()))?;
        println!("{}", v.target.display());
    }
    Ok(())
}

fn unshare(command: &[String]) -> Result<i32> {
    let (prog, args) = match command.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (
            std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()),
            Vec::new(),
        ),
    };
    let status = std::process::Command::new(&prog)
        .args(&args)
        .status()
        .with_context(|| format!("cannot run {prog}"))?;
    Ok(status.code().unwrap_or(crate::FAILED))
}
