//! Image verbs: images, tag, rmi, history, import, save, load, convert (and image `inspect`, which
//! `containers` falls back to when no container has the name).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use strata::container::{state, view, Container};
use strata::image::{self, archive, import, reference, Image, Store};

/// Image verbs.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List images.
    Images {
        /// Show only image IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Give an image another name: SOURCE[:TAG] TARGET[:TAG].
    Tag { source: String, target: String },
    /// Remove images (untag; blobs and layers no image needs are freed).
    Rmi {
        /// Remove even if containers use it (their layers stay until they are removed).
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show the layers of an image and the instructions that made them.
    History {
        /// Do not truncate the instructions.
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        image: String,
    },
    /// Make a one-layer image from a root filesystem tar (plain or gzip) or directory.
    Import {
        /// ROOTFS.tar, ROOTFS.tar.gz or a directory.
        source: PathBuf,
        /// NAME[:TAG].
        name: String,
    },
    /// Write images to an OCI archive (also readable by docker load).
    Save {
        /// Output file.
        #[arg(short = 'o', long = "output", required = true)]
        output: PathBuf,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Make a copy of an image whose layers are eStargz (lazily pullable, still valid gzip
    /// tars for every other client). The layers' diff IDs change: each gains a TOC entry.
    Convert {
        /// Write eStargz layers (the only target format, and required).
        #[arg(long)]
        estargz: bool,
        /// Put this file (an absolute path in the image) before the prefetch landmark, to be
        /// fetched at mount time; repeat for more.
        #[arg(long = "prefetch", value_name = "PATH")]
        prefetch: Vec<String>,
        /// Largest chunk of a file in one gzip member, in bytes.
        #[arg(long, default_value_t = strata::estargz::CHUNK_SIZE, value_parser = clap::value_parser!(u64).range(4096..=256 << 20))]
        chunk_size: u64,
        /// The image to convert.
        image: String,
        /// NAME[:TAG] of the new image.
        new: String,
    },
    /// Load images from an OCI archive, a docker save archive or an OCI layout directory.
    Load {
        /// Input archive or OCI layout directory.
        #[arg(short = 'i', long = "input", required = true)]
        input: PathBuf,
    },
}

/// Run one image verb.
pub fn run(root: &Path, cmd: Cmd) -> Result<i32> {
    // Rootless with subordinate ids: layer files are owned as the containers see them.
    let _userns = strata::container::userns::enter(root)?;
    let store = Store::open(root).with_context(|| format!("open store {}", root.display()))?;
    match cmd {
        Cmd::Images { quiet } => images(&store, quiet)?,
        Cmd::Tag { source, target } => {
            // Pinned: an `rmi` between resolving and writing the tag must not free the
            // manifest the new tag names.
            let img = store.resolve_pinned(&source)?;
            store.tag(&img, &reference::parse_tag(&target)?)?;
        }
        Cmd::Rmi { force, images } => return rmi(root, &store, &images, force),
        Cmd::History { no_trunc, image } => history(&store.resolve(&image)?, no_trunc)?,
        Cmd::Import { source, name } => {
            let tag = reference::parse_tag(&name)?;
            let img = import::import(&store, &source, &tag)
                .with_context(|| format!("import {}", source.display()))?;
            println!("{}", img.id);
        }
        Cmd::Save { output, images } => {
            let mut list = Vec::new();
            for r in &images {
                // Pinned, so a concurrent `rmi` cannot free a blob while it is written out.
                let img = store.resolve_pinned(r)?;
                let tag = reference::Reference::parse(r)
                    .ok()
                    .and_then(|p| p.tagged())
                    .filter(|t| img.tags.contains(t));
                list.push((img, tag));
            }
            archive::save(&store, &list, &output)?;
        }
        Cmd::Convert {
            estargz,
            prefetch,
            chunk_size,
            image,
            new,
        } => {
            if !estargz {
                bail!("convert: say which format to write: --estargz");
            }
            let tag = reference::parse_tag(&new)?;
            let src = store.resolve_pinned(&image)?;
            let opts = strata::estargz::writer::Options {
                chunk_size,
                prefetch,
                ..Default::default()
            };
            let img = image::estargz::convert_image(&store, &src, &opts)
                .with_context(|| format!("convert {image}"))?;
            store.tag(&img, &tag)?;
            println!("{}", img.id);
        }
        Cmd::Load { input } => {
            let loaded = archive::load(&store, &input)
                .with_context(|| format!("load {}", input.display()))?;
            for w in &loaded.warnings {
                eprintln!("strata: warning: {w}");
            }
            for img in loaded.images {
                if img.tags.is_empty() {
                    println!("Loaded image ID: {}", img.id);
                }
                for t in &img.tags {
                    println!("Loaded image: {t}");
                }
            }
        }
    }
    Ok(0)
}

/// Print an image's inspect document: ID, tags, digest, manifest and config.
pub fn inspect(root: &Path, key: &str) -> Result<serde_json::Value> {
    let store = Store::open(root)?;
    let img = store.resolve(key)?;
    Ok(serde_json::json!({
        "Id": img.id.as_str(),
        "RepoTags": img.tags,
        "Digest": img.manifest_digest.as_str(),
        "Layers": image::lazy::lower_dirs(&store, &img)?.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "Manifest": img.manifest,
        "Config": img.config,
    }))
}

fn ago(created: Option<&String>) -> String {
    let Some(t) = created.and_then(|c| humantime::parse_rfc3339_weak(c).ok()) else {
        return "N/A".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match secs {
        0..=59 => format!("{secs} seconds ago"),
        60..=3599 => format!("{} minutes ago", secs / 60),
        3600..=172_799 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

/// Sizes as docker prints them (decimal units).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[u]
    }
}

fn images(store: &Store, quiet: bool) -> Result<()> {
    let list = store.images()?;
    if quiet {
        for img in list {
            println!("{}", img.id.short());
        }
        return Ok(());
    }
    println!(
        "{:<30} {:<12} {:<14} {:<16} SIZE",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
    );
    for img in list {
        let size: u64 = img.manifest.layers().iter().map(|l| l.size()).sum();
        let created = ago(img.config.created().as_ref());
        let names: Vec<(String, String)> = if img.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            img.tags
                .iter()
                .map(|t| {
                    let (n, tag) = reference::split_tagged(t);
                    (n.to_string(), tag.to_string())
                })
                .collect()
        };
        // A lazily pulled image: how much of its lazy layers' file bytes are here.
        let lazy = match image::lazy::local_share(store, &img)? {
            Some((have, total)) => format!(
                " (lazy: {} of {} local, {}%)",
                human_size(have),
                human_size(total),
                (have * 100).checked_div(total).unwrap_or(100)
            ),
            None => String::new(),
        };
        for (n, t) in names {
            println!(
                "{n:<30} {t:<12} {:<14} {created:<16} {}{lazy}",
                img.id.short(),
                human_size(size)
            );
        }
    }
    Ok(())
}

fn history(img: &Image, no_trunc: bool) -> Result<()> {
    let layers = img.layers()?;
    let mut layer_iter = layers.iter();
    let mut rows = Vec::new();
    for h in img.config.history().clone().unwrap_or_default() {
        let (size, digest) = if h.empty_layer().unwrap_or(false) {
            (0, "<missing>".to_string())
        } else {
            match layer_iter.next() {
                Some(l) => (
                    l.size,
                    if no_trunc {
                        l.digest.to_string()
                    } else {
                        l.digest.short().to_string()
                    },
                ),
                None => (0, "<missing>".to_string()),
            }
        };
        let mut by = h.created_by().clone().unwrap_or_default();
        if !no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        rows.push((digest, ago(h.created().as_ref()), by, size));
    }
    println!(
        "{:<14} {:<16} {:<46} {:>10}",
        "LAYER", "CREATED", "CREATED BY", "SIZE"
    );
    for (d, c, by, size) in rows.iter().rev() {
        println!("{d:<14} {c:<16} {by:<46} {:>10}", human_size(*size));
    }
    Ok(())
}

/// Remove each image named, as docker does: one that cannot be removed (missing, in use) is
/// reported and the others still go; the exit code then says something failed.
fn rmi(root: &Path, store: &Store, keys: &[String], force: bool) -> Result<i32> {
    let containers = Container::list(root)?;
    let views = view::mounted(root)?;
    let mut failed = false;
    for key in keys {
        if let Err(e) = rmi_one(store, &containers, &views, key, force) {
            crate::report(&e);
            failed = true;
        }
    }
    // The layers of the containers and of the mounted views are listed by garbage collection
    // itself, at the moment it decides (a container created or a view mounted since the lists
    // above keeps its layers).
    let stats = store.gc(|| {
        let views =
            view::mounted(root).map_err(|e| image::Error::Invalid(format!("list mounts: {e}")))?;
        Ok(state::list(root)
            .map_err(|e| image::Error::Invalid(format!("list containers: {e}")))?
            .into_iter()
            .flat_map(|s| s.lower_dirs)
            .chain(views.into_iter().flat_map(|v| v.lower_dirs))
            .collect())
    })?;
    strata::build::cache::prune(store);
    tracing::info!(
        "freed {} blobs and {} cached chunks ({} bytes), {} layers and {} lazy layers",
        stats.blobs,
        stats.chunks,
        stats.bytes,
        stats.layers,
        stats.lazy
    );
    Ok(if failed { crate::FAILED } else { 0 })
}

fn rmi_one(
    store: &Store,
    containers: &[Container],
    views: &[view::View],
    key: &str,
    force: bool,
) -> Result<()> {
    let img = store.resolve(key)?;
    let named_tag = reference::Reference::parse(key)
        .ok()
        .and_then(|r| r.tagged())
        .filter(|t| img.tags.contains(t));
    // One image ID can have several manifests (a `docker save` archive gets a new one on
    // load): they are all that image.
    let manifests: Vec<Image> = store
        .images()?
        .into_iter()
        .filter(|i| i.id == img.id)
        .collect();
    let tags: usize = manifests.iter().map(|i| i.tags.len()).sum();
    // A tag of an image with other tags: only the tag goes, as docker does.
    if let Some(t) = &named_tag {
        if tags > 1 {
            store.untag(t)?;
            println!("Untagged: {t}");
            return Ok(());
        }
    }
    if named_tag.is_none() && tags > 1 && !force {
        bail!(
            "image {} is referenced by {tags} tags ({}): remove them by name, or use rmi -f",
            img.id.short(),
            manifests
                .iter()
                .flat_map(|m| m.tags.clone())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let users: Vec<&str> = containers
        .iter()
        .filter(|c| c.state.image == img.id.as_str())
        .map(|c| c.state.name.as_str())
        .collect();
    if !users.is_empty() && !force {
        bail!(
            "image {} is used by container(s) {}: remove them first or use rmi -f",
            img.display_name(),
            users.join(", ")
        );
    }
    // As podman: a mounted image stays (with -f it goes, its layers stay until unmounted).
    if let Some(v) = views
        .iter()
        .find(|v| v.container.is_none() && v.image == img.id.as_str())
    {
        if !force {
            bail!(
                "image {} is mounted at {}: strata umount it first, or use rmi -f (its layers \
                 then stay until it is unmounted)",
                img.display_name(),
                v.target.display()
            );
        }
    }
    for m in &manifests {
        store.remove(m)?;
        for t in &m.tags {
            println!("Untagged: {t}");
        }
    }
    println!("Deleted: {}", img.id);
    Ok(())
}

/// `strata commit`.
pub fn commit(
    root: &Path,
    c: &Container,
    name: Option<&str>,
    message: Option<&str>,
) -> Result<Image> {
    let store = Store::open(root)?;
    let tag = name.map(reference::parse_tag).transpose()?;
    Ok(strata::container::commit::commit(
        &store,
        c,
        tag.as_deref(),
        message,
    )?)
}
