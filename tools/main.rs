//! `strata`: the command line of the Strata tools. Each verb group lives in its own file and
//! only translates flags into calls on the library.

mod bench;

use clap::{ArgAction, Parser, Subcommand};

/// Strata: union filesystems for container images.
#[derive(Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    /// More log output (-v, -vv); RUST_LOG overrides it.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare union filesystems on one fixture: table, JSON and SVG chart.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Bench(args) => bench::run(args),
    }
}
