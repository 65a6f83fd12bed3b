//! `strata`: the command line. One small file per verb group; no logic here.

mod containers;

use clap::Parser;

/// Strata: union filesystem tools for container images.
#[derive(Parser)]
#[command(name = "strata", version)]
struct Cli {
    /// Store directory (containers, volumes, runtime state).
    #[arg(
        long,
        global = true,
        env = "STRATA_ROOT",
        default_value = "/var/lib/strata"
    )]
    root: std::path::PathBuf,
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
    let result = match cli.cmd {
        Cmd::Containers(c) => containers::run(&cli.root, c),
    };
    // One line, docker's convention: 125 when strata itself failed, else the process's code.
    std::process::exit(result.unwrap_or_else(|e| {
        eprintln!("strata: {e:#}");
        125
    }))
}
