//! Registry verbs: pull (push, login and logout follow the same shape).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata::image::{Digest, Store};
use strata::registry::client::Options;
use strata::registry::manifest::Platform;
use strata::registry::progress::{Done, Progress};
use strata::registry::pull::{self, PullOptions};
use strata::registry::Reference;

/// How to reach a registry: the flags every registry verb shares.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Require HTTPS with a verified certificate, localhost included (false: accept any
    /// certificate, and plain HTTP) [default: verify, but localhost and 127.0.0.1 may answer
    /// in plain HTTP].
    #[arg(long = "tls-verify", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: Option<bool>,
    /// A directory of CA certificates (*.crt) to trust for the registry
    /// [default: /etc/containers/certs.d/HOST and /etc/docker/certs.d/HOST].
    #[arg(long = "cert-dir", value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
}

impl ConnectArgs {
    /// The client options.
    pub fn options(&self) -> Options {
        Options {
            tls_verify: self.tls_verify,
            cert_dir: self.cert_dir.clone(),
            credentials: None,
        }
    }
}

/// `strata pull` flags.
#[derive(clap::Args)]
pub struct PullArgs {
    /// Print nothing but the digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The platform to pull from a multi-platform image: OS/ARCH[/VARIANT] [default: this
    /// machine's].
    #[arg(long)]
    pub platform: Option<String>,
    /// Layers to download at once.
    #[arg(long, default_value_t = 3)]
    pub jobs: usize,
    /// Fetch only the TOCs of eStargz layers: containers start at once and read each file
    /// from the registry on first use (other layers are pulled in full). A later pull
    /// without --lazy makes the image ordinary (complete lazy layers are checked against
    /// their blobs and kept; the others are pulled in full).
    #[arg(long)]
    pub lazy: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The image: NAME[:TAG|@DIGEST], e.g. alpine, localhost:5000/app:1.
    pub reference: String,
}

/// Progress as one bar per blob on a terminal, one line per event otherwise, or nothing.
pub enum Shown {
    /// `-q`.
    Quiet,
    /// Plain lines on stderr.
    Lines,
    /// Bars on stderr.
    Bars {
        /// The bars.
        multi: MultiProgress,
        /// One per blob.
        bars: Mutex<HashMap<Digest, ProgressBar>>,
    },
}

impl Shown {
    /// The display for `quiet` and whether stderr is a terminal.
    pub fn new(quiet: bool) -> Shown {
        if quiet {
            Shown::Quiet
        } else if std::io::stderr().is_terminal() {
            Shown::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(HashMap::new()),
            }
        } else {
            Shown::Lines
        }
    }

    /// Print a status line (not with `-q`).
    pub fn say(&self, msg: &str) {
        match self {
            Shown::Quiet => {}
            Shown::Lines => eprintln!("{msg}"),
            Shown::Bars { multi, .. } => {
                let _ = multi.println(msg);
            }
        }
    }
}

impl Progress for Shown {
    fn start(&self, blob: &Digest, size: u64, resumed: u64) {
        match self {
            Shown::Quiet => {}
            Shown::Lines => eprintln!("{}: transferring {size} bytes", blob.short()),
            Shown::Bars { multi, bars } => {
                let bar = multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix}: {bar:30} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec}",
                    )
                    .expect("a valid template"),
                );
                bar.set_prefix(blob.short().to_string());
                bar.set_position(resumed);
                bars.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(blob.clone(), bar);
            }
        }
    }

    fn advance(&self, blob: &Digest, n: u64) {
        if let Shown::Bars { bars, .. } = self {
            if let Some(b) = bars.lock().unwrap_or_else(|p| p.into_inner()).get(blob) {
                b.inc(n);
            }
        }
    }

    fn done(&self, blob: &Digest, how: Done) {
        let word = match how {
            Done::Present => "already exists",
            Done::Mounted => "mounted from another repository",
            Done::Transferred => "done",
        };
        match self {
            Shown::Quiet => {}
            Shown::Lines => eprintln!("{}: {word}", blob.short()),
            Shown::Bars { multi, bars } => {
                match bars.lock().unwrap_or_else(|p| p.into_inner()).get(blob) {
                    Some(b) => b.finish_with_message(word),
                    None => {
                        let _ = multi.println(format!("{}: {word}", blob.short()));
                    }
                }
            }
        }
    }

    fn note(&self, msg: &str) {
        self.say(msg);
    }
}

/// Open the store as the image verbs do (rootless: inside the store's user namespace).
fn open_store(root: &Path) -> Result<(Store, Option<strata::container::userns::Session>)> {
    let userns = strata::container::userns::enter(root)?;
    let store = Store::open(root).with_context(|| format!("open store {}", root.display()))?;
    Ok((store, userns))
}

/// `strata pull`: prints the digest on stdout.
pub fn pull(root: &Path, a: PullArgs) -> Result<i32> {
    let r = Reference::parse(&a.reference)?;
    let (store, _userns) = open_store(root)?;
    let opts = PullOptions {
        platform: a.platform.as_deref().map(Platform::parse).transpose()?,
        jobs: a.jobs,
        client: a.connect.options(),
        lazy: a.lazy,
    };
    let shown = Shown::new(a.quiet);
    shown.say(&format!("Pulling {r}"));
    let pulled = pull::pull(&store, &r, &opts, &shown).with_context(|| format!("pull {r}"))?;
    let lazy = if pulled.lazy > 0 {
        format!(", {} lazy (TOC only)", pulled.lazy)
    } else {
        String::new()
    };
    shown.say(&format!(
        "{}: {} layer(s) fetched{lazy}, image {}",
        pulled.tag.as_deref().unwrap_or(&r.to_string()),
        pulled.fetched,
        pulled.image.id.short()
    ));
    println!("{}", pulled.digest);
    Ok(0)
}

/// `strata push` flags.
#[derive(clap::Args)]
pub struct PushArgs {
    /// Print nothing but the digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Blobs to upload at once.
    #[arg(long, default_value_t = 3)]
    pub jobs: usize,
    /// Convert the layers to eStargz first (as `strata convert --estargz`), so the image
    /// can be pulled lazily; the image in the store is unchanged.
    #[arg(long)]
    pub estargz: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The image in the store: NAME[:TAG] or an ID.
    pub image: String,
    /// Where to push it: [HOST[:PORT]/]NAME[:TAG] [default: the image's own name].
    pub destination: Option<String>,
}

/// `strata push`: prints the manifest digest on stdout.
pub fn push(root: &Path, a: PushArgs) -> Result<i32> {
    let (store, _userns) = open_store(root)?;
    // Pinned: an `rmi` meanwhile cannot free what is being uploaded.
    let mut image = store.resolve_pinned(&a.image)?;
    if a.estargz {
        image = strata::image::estargz::convert_image(
            &store,
            &image,
            &strata::estargz::writer::Options::default(),
        )
        .with_context(|| format!("convert {} to eStargz", a.image))?;
    }
    let dest =
        Reference::parse(a.destination.as_deref().unwrap_or(&a.image)).with_context(|| {
            if a.destination.is_none() {
                format!(
                    "{}: name a destination (strata push IMAGE HOST/NAME[:TAG])",
                    a.image
                )
            } else {
                "destination".into()
            }
        })?;
    let opts = strata::registry::push::PushOptions {
        jobs: a.jobs,
        client: a.connect.options(),
    };
    let shown = Shown::new(a.quiet);
    shown.say(&format!("Pushing {} to {dest}", image.display_name()));
    let pushed = strata::registry::push::push(&store, &image, &dest, &opts, &shown)
        .with_context(|| format!("push {dest}"))?;
    shown.say(&format!("{dest}: {} blob(s) uploaded", pushed.uploaded));
    println!("{}", pushed.digest);
    Ok(0)
}

/// `strata login` flags.
#[derive(clap::Args)]
pub struct LoginArgs {
    /// User name [default: asked on the terminal].
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password (visible to other users in the process list: prefer --password-stdin).
    #[arg(short = 'p', long = "password")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The registry: HOST[:PORT] [default: docker.io].
    pub registry: Option<String>,
}

/// `strata logout` flags.
#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT] [default: docker.io].
    pub registry: Option<String>,
}

/// Ask on the terminal; the answer without its newline.
fn ask(prompt: &str, hidden: bool) -> Result<String> {
    use std::io::Write;
    let stdin = std::io::stdin();
    anyhow::ensure!(
        stdin.is_terminal(),
        "no terminal to ask for the {}: give -u and --password-stdin",
        prompt.trim_end_matches([':', ' ']).to_lowercase()
    );
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let saved = if hidden {
        let t = rustix::termios::tcgetattr(&stdin)?;
        let mut quiet = t.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)?;
        Some(t)
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Some(t) = saved {
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t)?;
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `strata login`: check the credentials with the registry, then record them.
pub fn login(a: LoginArgs) -> Result<i32> {
    use std::io::Read;
    use strata::registry::credentials::{self, Credentials};
    let registry = strata::registry::reference::registry_host(
        a.registry
            .as_deref()
            .unwrap_or(strata::registry::reference::DOCKER_HUB),
    )?;
    let username = match a.username {
        Some(u) => u,
        None => ask("Username: ", false)?,
    };
    anyhow::ensure!(!username.is_empty(), "a user name is needed");
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => anyhow::bail!("--password and --password-stdin are exclusive"),
        (Some(p), false) => p,
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => ask("Password: ", true)?,
    };
    anyhow::ensure!(!password.is_empty(), "a password is needed");
    let creds = Credentials { username, password };
    let mut opts = a.connect.options();
    opts.credentials = Some(creds.clone());
    let api_host = if registry == strata::registry::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        &registry
    };
    let client = strata::registry::client::Client::connect(&registry, api_host, &opts)
        .with_context(|| format!("log in to {registry}"))?;
    client.check_login()?;
    let file = credentials::store(&registry, &creds)?;
    tracing::info!(file = %file.display(), "credentials stored");
    println!("Login Succeeded!");
    Ok(0)
}

/// `strata logout`: forget the credentials of a registry.
pub fn logout(a: LogoutArgs) -> Result<i32> {
    let registry = strata::registry::reference::registry_host(
        a.registry
            .as_deref()
            .unwrap_or(strata::registry::reference::DOCKER_HUB),
    )?;
    if !strata::registry::credentials::erase(&registry)? {
        anyhow::bail!(
            "not logged in to {registry} (in {})",
            strata::registry::credentials::auth_file().display()
        );
    }
    println!("Removed login credentials for {registry}");
    Ok(0)
}

/// `--pull` of run, create and build: when an image is fetched from its registry.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullWhen {
    /// Only if the store does not have it.
    #[default]
    Missing,
    /// Every time (a moved tag is followed).
    Always,
    /// Never.
    Never,
}

/// `--pull` of run and create: [`PullWhen`], or a lazy pull.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunPull {
    /// Only if the store does not have it.
    #[default]
    Missing,
    /// Every time (a moved tag is followed).
    Always,
    /// Never.
    Never,
    /// Only if the store does not have it, and then lazily (as `pull --lazy`: the TOCs of
    /// eStargz layers only, their files fetched as the container reads them; other layers
    /// in full).
    Lazy,
}

impl From<PullWhen> for strata::build::PullPolicy {
    fn from(p: PullWhen) -> Self {
        match p {
            PullWhen::Missing => strata::build::PullPolicy::Missing,
            PullWhen::Always => strata::build::PullPolicy::Always,
            PullWhen::Never => strata::build::PullPolicy::Never,
        }
    }
}

/// Pull `reference` into the store at `root` for a verb that needs it (run, create, build),
/// progress on stderr; the image ID. `lazy`: as `pull --lazy`.
pub fn pull_for(root: &Path, reference: &str, connect: &ConnectArgs, lazy: bool) -> Result<String> {
    let r = Reference::parse(reference)?;
    let store = Store::open(root)?;
    let shown = Shown::new(false);
    shown.say(&format!("Pulling {r}"));
    let opts = PullOptions {
        platform: None,
        jobs: 3,
        client: connect.options(),
        lazy,
    };
    let pulled = pull::pull(&store, &r, &opts, &shown).with_context(|| format!("pull {r}"))?;
    if pulled.lazy > 0 {
        shown.say(&format!("{} layer(s) lazy (TOC only)", pulled.lazy));
    }
    shown.say(&format!("Digest: {}", pulled.digest));
    Ok(pulled.image.id.to_string())
}

/// The build's way to pull `FROM` images.
pub fn puller(root: &Path, connect: &ConnectArgs) -> strata::build::Puller {
    let (root, connect) = (root.to_path_buf(), connect.clone());
    strata::build::Puller(std::sync::Arc::new(move |reference: &str| {
        pull_for(&root, reference, &connect, false).map_err(|e| format!("{e:#}"))
    }))
}
