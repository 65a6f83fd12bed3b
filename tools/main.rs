//! `strata`: the command line. One small file per verb group; no logic here.

mod containers;

use clap::Parser;

/// Strata: union filesystem tools for container images.
#[derive(Parser)]
#[command(name = "strata", version)]
struct Cli {
    /// Store directory [default: /var/lib/strata as root, ~/.local/share/strata otherwise].
    #[arg(long, global = true, env = "STRATA_ROOT")]
    root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    #[command(flatten)]
    Containers(containers::Cmd),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let root = cli.root.unwrap_or_else(default_root);
    let result = match cli.cmd {
        Cmd::Containers(c) => containers::run(&root, c),
    };
    // One line, docker's convention: 125 when strata itself failed, else the process's code.
    std::process::exit(result.unwrap_or_else(|e| {
        eprintln!("strata: {e:#}");
        125
    }))
}

/// The store of root is system-wide; an unprivileged user's lives in their home, as podman's.
fn default_root() -> std::path::PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !rustix::process::geteuid().is_root() => {
            std::path::Path::new(&h).join(".local/share/strata")
        }
        _ => "/var/lib/strata".into(),
    }
}
