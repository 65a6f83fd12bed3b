//! `strata build`: a Dockerfile and a context directory become an image in the store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use strata::build::{build, BuildOptions};
use strata::image::{reference, Store};

/// `strata build` flags.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Name the image NAME[:TAG] (repeatable).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Build argument K=V (a bare K takes strata's environment value).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Do not use the build cache.
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Build up to this stage.
    #[arg(long)]
    target: Option<String>,
    /// OCI runtime for RUN (runc, crun or a path).
    #[arg(long)]
    runtime: Option<String>,
    /// Network of RUN steps: host (the default: outbound access, no set-up), bridge (a
    /// private network with outbound access) or none.
    #[arg(long)]
    network: Option<String>,
    /// Print only the image ID.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// When FROM pulls its image from a registry.
    #[arg(long, value_enum, default_value_t = crate::registry::PullWhen::Missing, num_args = 0..=1, require_equals = true, default_missing_value = "always")]
    pull: crate::registry::PullWhen,
    #[command(flatten)]
    connect: crate::registry::ConnectArgs,
    /// The build context directory.
    context: PathBuf,
}

/// Run a build; prints the image ID.
pub fn run(root: &Path, a: BuildArgs) -> Result<i32> {
    if !a.context.is_dir() {
        bail!("build context {}: not a directory", a.context.display());
    }
    let mut build_args = Vec::new();
    for b in &a.build_args {
        match b.split_once('=') {
            Some((k, v)) => build_args.push((k.to_string(), v.to_string())),
            None => {
                if let Ok(v) = std::env::var(b) {
                    build_args.push((b.clone(), v));
                }
            }
        }
    }
    let tags = a
        .tags
        .iter()
        .map(|t| reference::parse_tag(t))
        .collect::<Result<Vec<_>, _>>()?;
    // Rootless with subordinate ids: RUN steps and layer files live in the store's namespace.
    let _userns = strata::container::userns::enter(root)?;
    let store = Store::open(root).with_context(|| format!("open store {}", root.display()))?;
    let opts = BuildOptions {
        context: a.context.clone(),
        dockerfile: a.file.clone(),
        tags,
        build_args,
        no_cache: a.no_cache,
        target: a.target.clone(),
        runtime: a.runtime.clone(),
        pull: a.pull.into(),
        puller: Some(crate::registry::puller(root, &a.connect)),
        network: a
            .network
            .as_deref()
            .map(strata::container::network::Mode::parse)
            .transpose()?,
    };
    let mut log: Box<dyn std::io::Write> = if a.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stderr())
    };
    let img = build(&store, root, &opts, &mut log)?;
    println!("{}", img.id);
    Ok(0)
}
