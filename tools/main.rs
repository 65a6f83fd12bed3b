//! `strata`: the command line of the Strata tools. Each verb group lives in its own file and
//! only translates flags into calls on the library.

mod bench;
mod build;
mod containers;
mod explore;
mod images;
mod mount;
mod registry;

use clap::{ArgAction, Parser, Subcommand};

/// Strata: union filesystems for container images.
#[derive(Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    /// More log output (--verbose, twice for debug); RUST_LOG overrides it. Long only:
    /// `-v` is docker's volume flag of `run`/`create`.
    #[arg(long, action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Store directory [default: /var/lib/strata as root, $XDG_DATA_HOME/strata (~/.local/share/strata) otherwise].
    #[arg(long, global = true, env = "STRATA_ROOT")]
    root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare union filesystems on one fixture: table, JSON and SVG chart.
    Bench(bench::BenchArgs),
    /// Build an image from a Dockerfile.
    Build(build::BuildArgs),
    #[command(flatten)]
    Containers(containers::Cmd),
    #[command(flatten)]
    Images(images::Cmd),
    #[command(flatten)]
    Explore(explore::Cmd),
    #[command(flatten)]
    Mount(mount::Cmd),
    /// Pull an image from a registry (docker's reference grammar: alpine,
    /// localhost:5000/app:1, name@sha256:...); prints its digest.
    Pull(registry::PullArgs),
    /// Push an image of the store to a registry (to its own name or to DESTINATION); prints
    /// the manifest digest.
    Push(registry::PushArgs),
    /// Log in to a registry: the credentials go to $XDG_RUNTIME_DIR/containers/auth.json
    /// (podman's and skopeo's file; $REGISTRY_AUTH_FILE overrides it).
    Login(registry::LoginArgs),
    /// Log out of a registry (remove its credentials from the auth file).
    Logout(registry::LogoutArgs),
}

fn main() {
    let cli = Cli::parse();
    if only_reports(&cli.command) {
        // A verb that only prints, whose reader goes away (`strata inspect X | head`), ends
        // quietly as other command-line tools do instead of panicking on the failed print.
        // Verbs that hold mounts, pins or containers keep ignoring SIGPIPE: they fail and
        // clean up as on any other error.
        strata::sys::default_sigpipe();
    }
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
    let root = cli.root.unwrap_or_else(default_root);
    // Made absolute once: the runtime, stratafs and the monitor run in other directories.
    let root = match std::path::absolute(&root) {
        Ok(r) => r,
        Err(e) => {
            report(&anyhow::anyhow!("store {}: {e}", root.display()));
            std::process::exit(FAILED);
        }
    };
    // Every verb that uses the store first makes sure it is private (and closes a store an
    // older version made world-readable).
    let secured = match &cli.command {
        Command::Bench(_) | Command::Login(_) | Command::Logout(_) => Ok(()),
        _ => strata::image::private::secure(&root),
    };
    if let Err(e) = secured {
        report(&anyhow::Error::from(e));
        std::process::exit(FAILED);
    }
    let result = match cli.command {
        Command::Bench(args) => bench::run(args).map(|()| 0),
        Command::Build(args) => build::run(&root, args),
        Command::Containers(c) => containers::run(&root, c),
        Command::Images(c) => images::run(&root, c),
        Command::Explore(c) => explore::run(&root, c),
        Command::Mount(c) => mount::run(&root, c),
        Command::Pull(a) => registry::pull(&root, a),
        Command::Push(a) => registry::push(&root, a),
        Command::Login(a) => registry::login(a),
        Command::Logout(a) => registry::logout(a),
    };
    // One line, docker's convention: 125 when strata itself failed, else the process's code.
    std::process::exit(result.unwrap_or_else(|e| {
        report(&e);
        FAILED
    }))
}

/// The verbs that read and print, holding nothing that a sudden end would leave behind.
fn only_reports(command: &Command) -> bool {
    use containers::Cmd as C;
    use images::Cmd as I;
    matches!(
        command,
        Command::Images(I::Images { .. } | I::History { .. })
            | Command::Containers(
                C::Ps { .. } | C::Port { .. } | C::Logs { .. } | C::Inspect { .. } | C::Diff { .. }
            )
            | Command::Explore(
                explore::Cmd::Ls { .. } | explore::Cmd::Cat { .. } | explore::Cmd::Which { .. }
            )
    )
}

/// The exit code when strata itself failed (docker's convention), also when a verb given
/// several names failed for some of them.
pub const FAILED: i32 = 125;

/// Tell the user about an error, on one line.
pub fn report(e: &anyhow::Error) {
    eprintln!("strata: {}", message(e));
}

/// The error and its causes on one line, leaving out a cause whose text the message above it
/// already quotes (the library's errors include their io error's text).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// The store of root is system-wide; an unprivileged user's lives in `$XDG_DATA_HOME/strata`
/// (default `~/.local/share/strata`), as podman's does.
fn default_root() -> std::path::PathBuf {
    if rustix::process::geteuid().is_root() {
        return "/var/lib/strata".into();
    }
    match (std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME")) {
        (Some(x), _) if !x.is_empty() => std::path::Path::new(&x).join("strata"),
        (_, Some(h)) => std::path::Path::new(&h).join(".local/share/strata"),
        _ => "/var/lib/strata".into(),
    }
}
