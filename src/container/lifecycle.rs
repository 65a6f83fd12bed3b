//! Container lifecycle: create, start, run, stop, restart, kill, rm, exec, logs, inspect.
//!
//! The rootfs is mounted only while the process may run (start → exit/stop), so a created or
//! exited container holds no mount and no daemon.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use super::runtime::Runtime;
use super::state::{self, ContainerState, Keeper, Paths, Status};
use super::{diff, io_err, monitor, mount, network, spec, volume, Error, ImageSpec, Result};

/// The options of `strata create`/`run` (docker's meaning).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--name`.
    pub name: Option<String>,
    /// `-e K=V` (a bare `K` copies strata's own value).
    pub env: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`, names resolved in the image's /etc/passwd.
    pub user: Option<String>,
    /// `-v SRC:DST[:ro]`.
    pub volumes: Vec<String>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--network` (the default of this struct is none; the CLI's is
    /// [`network::default_mode`]).
    pub network: network::Mode,
    /// `-p [IP:][HOST:]CTR[/PROTO]`.
    pub publish: Vec<String>,
    /// `-P`: publish every exposed port on a random host port.
    pub publish_all: bool,
    /// `--entrypoint`.
    pub entrypoint: Option<String>,
    /// Command and arguments after the image.
    pub cmd: Vec<String>,
    /// `-t`.
    pub tty: bool,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--runtime` (default: detected).
    pub runtime: Option<String>,
}

/// A container in a store.
#[derive(Debug)]
pub struct Container {
    store_root: PathBuf,
    paths: Paths,
    /// Its persisted state.
    pub state: ContainerState,
    /// The container was removed (by `--rm` on exit) while this handle was open.
    removed: bool,
}

/// The result of a scoped thread: its own, or an error if it panicked.
fn joined<T>(r: std::thread::Result<network::Result<T>>) -> Result<T> {
    match r {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::State("a network thread panicked".into())),
    }
}

fn new_id() -> Result<String> {
    let mut b = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io_err("read /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Container {
    /// Create a container of `image` in `store_root`: directories, an empty upper and the
    /// runtime bundle. Nothing is mounted or started.
    pub fn create(store_root: &Path, image: &ImageSpec, opts: &RunOptions) -> Result<Container> {
        let runtime = Runtime::detect(opts.runtime.as_deref(), store_root)?;
        let id = new_id()?;
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("strata-{}", &id[..12]));
        if state::list(store_root)?.iter().any(|s| s.name == name) {
            return Err(Error::Invalid(format!(
                "the container name {name:?} is already in use"
            )));
        }
        let mut mounts = opts
            .volumes
            .iter()
            .map(|v| volume::parse(store_root, v))
            .collect::<Result<Vec<_>>>()?;
        let cfg = image.config.config().clone().unwrap_or_default();
        let hostname = opts
            .hostname
            .clone()
            .unwrap_or_else(|| spec::HOSTNAME.into());
        let net = network::Settings::new(
            opts.network,
            &opts.publish,
            opts.publish_all,
            cfg.exposed_ports().as_deref().unwrap_or_default(),
            &hostname,
        )?;
        let paths = Paths::new(store_root, &id);
        let netns = (net.mode == network::Mode::Bridge).then(|| network::netns_path(&paths.dir));
        if netns.is_some() {
            // Written when the network is set up, before each start.
            for (src, dst) in [
                (network::resolv_path(&paths.dir), "/etc/resolv.conf"),
                (network::hosts_path(&paths.dir), "/etc/hosts"),
            ] {
                mounts.push(volume::ResolvedMount {
                    source: src,
                    target: dst.into(),
                    read_only: false,
                    volume: None,
                });
            }
        }
        // Private: the upper will hold whatever the container writes, set-uid files included.
        // The upper itself keeps an ordinary mode: it is the container's `/`.
        for d in [store_root.join("containers"), paths.dir.clone()] {
            crate::image::private::create(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        for d in [paths.upper(), paths.work(), paths.rootfs()] {
            std::fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let c = Container {
            store_root: store_root.to_path_buf(),
            paths: paths.clone(),
            removed: false,
            state: ContainerState {
                id: id.clone(),
                name,
                image: image.id.clone(),
                image_name: image.name.clone(),
                lower_dirs: image.lower_dirs.clone(),
                command: Vec::new(),
                status: Status::Created,
                exit_code: None,
                runtime: runtime.name.clone(),
                volumes: mounts.iter().filter_map(|m| m.volume.clone()).collect(),
                auto_remove: opts.auto_remove,
                created: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                keeper: None,
                network: net,
                net: None,
            },
        };
        let result =
            spec::build(image, opts, &paths.rootfs(), &mounts, netns.as_deref()).and_then(|s| {
                s.save(paths.config())?;
                Ok(s)
            });
        match result {
            Ok(s) => {
                let mut c = c;
                c.state.command = s
                    .process()
                    .as_ref()
                    .and_then(|p| p.args().clone())
                    .unwrap_or_default();
                c.state.save(&paths)?;
                Ok(c)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&paths.dir);
                Err(e)
            }
        }
    }

    /// Open container `key` (ID, ID prefix or name).
    pub fn open(store_root: &Path, key: &str) -> Result<Container> {
        let state = state::find(store_root, key)?;
        Ok(Container {
            store_root: store_root.to_path_buf(),
            paths: Paths::new(store_root, &state.id),
            state,
            removed: false,
        })
    }

    /// Open the container with exactly this ID.
    pub(crate) fn open_id(store_root: &Path, id: &str) -> Result<Container> {
        let paths = Paths::new(store_root, id);
        let state = ContainerState::reload(&paths)?
            .ok_or_else(|| Error::NoSuchContainer(id.to_string()))?;
        Ok(Container {
            store_root: store_root.to_path_buf(),
            paths,
            state,
            removed: false,
        })
    }

    /// All containers of the store, their status refreshed.
    pub fn list(store_root: &Path) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        for s in state::list(store_root)? {
            let mut c = Container {
                store_root: store_root.to_path_buf(),
                paths: Paths::new(store_root, &s.id),
                state: s,
                removed: false,
            };
            c.refresh()?;
            if !c.removed {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The container's directory (`containers/ID`).
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    /// The container's paths.
    pub(crate) fn paths(&self) -> &Paths {
        &self.paths
    }

    pub(crate) fn runtime(&self) -> Result<Runtime> {
        Runtime::detect(Some(&self.state.runtime), &self.store_root)
    }

    fn mount(&self) -> Result<()> {
        if mount::is_mounted(&self.paths.rootfs()) {
            return Ok(());
        }
        mount::mount_rootfs(
            &self.state.lower_dirs,
            &self.paths.upper(),
            &self.paths.work(),
            &self.paths.rootfs(),
        )
    }

    /// Release everything a stopped process held: runtime state, network and the mount (the
    /// last two at once: neither waits for the other).
    fn release(&mut self) -> Result<()> {
        let rt = self.runtime()?;
        rt.delete(&self.state.id)?;
        let Some(a) = self.state.net.clone() else {
            return mount::unmount_rootfs(&self.paths.rootfs());
        };
        let (id, name, root) = (
            self.state.id.clone(),
            self.state.name.clone(),
            self.store_root.clone(),
        );
        let dir = self.paths.dir.clone();
        let rootfs = self.paths.rootfs();
        let (net, unmounted) = std::thread::scope(|s| {
            let net = s.spawn(|| {
                let ep = network::Endpoint {
                    id: &id,
                    name: &name,
                    dir: &dir,
                    store_root: &root,
                };
                network::detach(&ep, &a)
            });
            let unmounted = mount::unmount_rootfs(&rootfs);
            (joined(net.join()), unmounted)
        });
        if net.is_ok() {
            self.state.net = None;
        }
        unmounted?;
        net
    }

    /// Tear down the network of the last run, if any is recorded; the record is cleared only
    /// once it is gone (the caller saves the state).
    fn detach_network(&mut self) -> Result<()> {
        if let Some(a) = self.state.net.clone() {
            let (id, name) = (self.state.id.clone(), self.state.name.clone());
            let ep = network::Endpoint {
                id: &id,
                name: &name,
                dir: &self.paths.dir,
                store_root: &self.store_root,
            };
            network::detach(&ep, &a)?;
            self.state.net = None;
        }
        Ok(())
    }

    /// Mount the rootfs and set up the network, at once (the network is recorded in the state
    /// before it is set up); on error neither is left.
    fn mount_and_attach(&mut self) -> Result<()> {
        self.detach_network()?;
        let (id, name) = (self.state.id.clone(), self.state.name.clone());
        let dir = self.paths.dir.clone();
        let root = self.store_root.clone();
        let ep = network::Endpoint {
            id: &id,
            name: &name,
            dir: &dir,
            store_root: &root,
        };
        let plan = network::plan(&ep, &self.state.network)?;
        if let Some(p) = &plan {
            self.state.net = Some(p.attachment.clone());
            if let Err(e) = self.state.save(&self.paths) {
                drop(plan);
                let _ = self.detach_network();
                return Err(e);
            }
        }
        let settings = self.state.network.clone();
        let this = &*self;
        let (mounted, attached) = std::thread::scope(|s| {
            let attached = plan.map(|p| s.spawn(|| p.activate(&ep, &settings)));
            let mounted = this.mount();
            (mounted, attached.map(|h| joined(h.join())))
        });
        match attached {
            Some(Ok(a)) => self.state.net = Some(a),
            // Activation undid what it reserved.
            Some(Err(e)) => {
                self.state.net = None;
                self.state.save(&self.paths)?;
                if mounted.is_ok() {
                    let _ = mount::unmount_rootfs(&self.paths.rootfs());
                }
                return Err(e);
            }
            None => {}
        }
        if let Err(e) = mounted {
            let _ = self.detach_network();
            self.state.save(&self.paths)?;
            return Err(e);
        }
        self.state.save(&self.paths)
    }

    /// The published ports of the current run (host ports assigned).
    pub fn ports(&self) -> &[network::PortMapping] {
        match (&self.state.net, self.state.status) {
            (Some(a), Status::Running) => &a.ports,
            _ => &[],
        }
    }

    /// Check the recorded status against the runtime. When the process has exited, its
    /// keeper (the monitor) records the exit code; if the keeper is gone, strata marks the
    /// container exited with an unknown code and releases its mount itself.
    pub fn refresh(&mut self) -> Result<()> {
        if self.state.status != Status::Running {
            return Ok(());
        }
        let live = self.runtime()?.status(&self.state.id);
        if matches!(
            live.as_deref(),
            Some("running") | Some("paused") | Some("created")
        ) {
            return Ok(());
        }
        self.await_exit()
    }

    /// The process is gone: wait (a few seconds at most) for its keeper to record the exit,
    /// else record it here with an unknown exit code.
    fn await_exit(&mut self) -> Result<()> {
        if let Some(k) = self.state.keeper.filter(|k| k.is_alive()) {
            let mut err = None;
            monitor::poll_until(Duration::from_secs(10), || {
                match ContainerState::reload(&self.paths) {
                    Ok(Some(s)) => self.state = s,
                    Ok(None) => {
                        self.removed = true;
                        self.state.status = Status::Exited;
                    }
                    Err(e) => err = Some(e),
                }
                err.is_some() || self.state.status != Status::Running || !k.is_alive()
            });
            if let Some(e) = err {
                return Err(e);
            }
            if self.state.status != Status::Running {
                return Ok(());
            }
        }
        self.finish(None, None, true)
    }

    /// Record that the process exited with `code` (unknown if `None`) and release its mount,
    /// all under the state lock. `keeper`: only if the state still names this keeper (a
    /// monitor whose container was stopped and started again must not touch the new run).
    /// `auto_remove`: honour `--rm`.
    pub(crate) fn finish(
        &mut self,
        code: Option<i32>,
        keeper: Option<Keeper>,
        auto_remove: bool,
    ) -> Result<()> {
        let Some(_lock) = state::lock(&self.paths)? else {
            self.removed = true;
            return Ok(());
        };
        match ContainerState::reload(&self.paths)? {
            Some(s) => self.state = s,
            None => {
                self.removed = true;
                return Ok(());
            }
        }
        if self.state.status != Status::Running || (keeper.is_some() && self.state.keeper != keeper)
        {
            return Ok(());
        }
        let released = self.release();
        self.state.status = Status::Exited;
        self.state.exit_code = code;
        self.state.keeper = None;
        self.state.save(&self.paths)?;
        released?;
        if auto_remove && self.state.auto_remove {
            // Its writable layer goes: so do the views of it (`strata mount`).
            for v in super::view::mounted(&self.store_root)? {
                if v.container.as_deref() == Some(self.state.id.as_str()) {
                    super::view::unmount(&self.store_root, &v)?;
                }
            }
            state::remove_dir(&self.paths)?;
            self.removed = true;
        }
        Ok(())
    }

    /// Record that the process runs, watched by `keeper`.
    pub(crate) fn mark_running(&mut self, keeper: Option<Keeper>) -> Result<()> {
        let _lock = state::lock(&self.paths)?
            .ok_or_else(|| Error::NoSuchContainer(self.state.id.clone()))?;
        if let Some(s) = ContainerState::reload(&self.paths)? {
            self.state = s;
        }
        self.state.status = Status::Running;
        self.state.exit_code = None;
        self.state.keeper = keeper;
        self.state.save(&self.paths)
    }

    /// Whether the process is running (checked with the runtime).
    pub fn is_running(&mut self) -> Result<bool> {
        self.refresh()?;
        Ok(self.state.status == Status::Running)
    }

    /// Whether the container, running as of its last refresh (see [`Container::list`],
    /// [`Container::is_running`]), runs on a root file system whose `stratafs` daemon is gone
    /// (see [`mount::rootfs_lost`]).
    pub fn rootfs_lost(&self) -> bool {
        self.state.status == Status::Running && mount::rootfs_lost(&self.paths.rootfs())
    }

    /// The error for a verb that needs the root file system of a container that lost it.
    fn lost_error(&self) -> Error {
        let n = &self.state.name;
        Error::State(format!(
            "container {n} is running without its root file system (its stratafs daemon exited): \
             `strata restart {n}` mounts it again, `strata rm -f {n}` removes the container"
        ))
    }

    fn prepare_start(&mut self) -> Result<Runtime> {
        if self.is_running()? {
            if self.rootfs_lost() {
                return Err(self.lost_error());
            }
            return Err(Error::State(format!(
                "container {} is already running",
                self.state.name
            )));
        }
        let rt = self.runtime()?;
        rt.delete(&self.state.id)?;
        self.mount_and_attach()?;
        Ok(rt)
    }

    /// Start detached: output goes to the container's log; a monitor process records the
    /// exit code and releases the mount when the process exits.
    pub fn start(&mut self) -> Result<()> {
        self.prepare_start()?;
        match monitor::spawn(&self.store_root, &self.paths, &self.state.id) {
            Ok(()) => {
                // The monitor has recorded the start (and maybe already the exit).
                match ContainerState::reload(&self.paths)? {
                    Some(s) => self.state = s,
                    None => self.removed = true,
                }
                Ok(())
            }
            Err(e) => {
                // What the runtime saw, so a failure of the mount is told apart from a bad
                // command.
                let root = self.paths.rootfs();
                let seen = format!(
                    "rootfs mounted={}, entries={}, bin/sh visible={}",
                    mount::is_mounted(&root),
                    std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0),
                    root.join("bin/sh").exists()
                );
                let _ = self.release();
                self.state.status = Status::Exited;
                self.state.keeper = None;
                self.state.save(&self.paths)?;
                Err(match e {
                    Error::Runtime(msg) => Error::Runtime(format!("{msg} ({seen})")),
                    e => e,
                })
            }
        }
    }

    /// Run in the foreground with strata's stdio (stdin only if `interactive`); returns the
    /// process's exit code (128+N for a signal), after releasing the mount.
    pub fn run_attached(&mut self, interactive: bool) -> Result<i32> {
        let rt = self.prepare_start()?;
        let mut cmd = rt.command();
        cmd.args(["run", "--bundle"])
            .arg(&self.paths.dir)
            .arg(&self.state.id);
        if !interactive {
            cmd.stdin(Stdio::null());
        }
        let me = Keeper::me();
        self.mark_running(me)?;
        let st = cmd.status();
        let code = match &st {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                Some(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
            }
            Err(_) => None,
        };
        // The caller removes a `--rm` container: it wants the exit code first.
        self.finish(code, me, false)?;
        match (st, code) {
            (Ok(_), Some(code)) => Ok(code),
            (Err(e), _) => Err(Error::Runtime(format!(
                "cannot run {}: {e}",
                rt.path.display()
            ))),
            (Ok(_), None) => Err(Error::Runtime("no exit status".into())),
        }
    }

    /// Send `signal` to the container's process.
    pub fn kill(&mut self, signal: &str) -> Result<()> {
        if !self.is_running()? {
            return Err(Error::State(format!(
                "container {} is not running",
                self.state.name
            )));
        }
        self.runtime()?.kill(&self.state.id, signal, false)
    }

    /// SIGTERM, then SIGKILL after `timeout`; then release the mount.
    pub fn stop(&mut self, timeout: Duration) -> Result<()> {
        if !self.is_running()? {
            return Ok(());
        }
        let rt = self.runtime()?;
        let _ = rt.kill(&self.state.id, "TERM", false);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && rt.status(&self.state.id).as_deref() == Some("running") {
            std::thread::sleep(Duration::from_millis(50));
        }
        if rt.status(&self.state.id).as_deref() == Some("running") {
            let _ = rt.kill(&self.state.id, "KILL", true);
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && rt.status(&self.state.id).as_deref() == Some("running")
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.await_exit()
    }

    /// Stop then start again on the same upper layer.
    pub fn restart(&mut self, timeout: Duration) -> Result<()> {
        self.stop(timeout)?;
        self.start()
    }

    /// Remove the container: refuse a running or mounted (`strata mount`) one unless `force`
    /// (which kills it and unmounts its views); the upper is discarded, named volumes are kept.
    pub fn remove(mut self, force: bool) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        if self.is_running()? {
            if !force {
                return Err(Error::State(format!(
                    "container {} is running: stop it first or use rm -f",
                    self.state.name
                )));
            }
            let _ = self.runtime()?.kill(&self.state.id, "KILL", true);
        }
        // Its writable layer is a layer of these read-only views.
        let views: Vec<_> = super::view::mounted(&self.store_root)?
            .into_iter()
            .filter(|v| v.container.as_deref() == Some(self.state.id.as_str()))
            .collect();
        if let Some(v) = views.first().filter(|_| !force) {
            return Err(Error::State(format!(
                "container {} is mounted at {} (strata mount): strata umount it first or use rm -f",
                self.state.name,
                v.target.display()
            )));
        }
        for v in &views {
            super::view::unmount(&self.store_root, v)?;
        }
        // Under the lock, so a monitor recording the exit meanwhile finds the container gone.
        let Some(_lock) = state::lock(&self.paths)? else {
            return Ok(());
        };
        self.release()?;
        state::remove_dir(&self.paths)
    }

    /// Run `args` inside the running container with strata's stdio; returns the exit code.
    pub fn exec(&mut self, args: &[String], env: &[String], tty: bool) -> Result<i32> {
        if !self.is_running()? {
            return Err(Error::State(format!(
                "container {} is not running",
                self.state.name
            )));
        }
        if self.rootfs_lost() {
            return Err(self.lost_error());
        }
        let st = self.runtime()?.exec(&self.state.id, args, env, tty)?;
        use std::os::unix::process::ExitStatusExt;
        Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
    }

    /// Copy the log to `out`; with `follow`, keep copying until the process exits.
    pub fn logs(&mut self, out: &mut dyn std::io::Write, follow: bool) -> Result<()> {
        let mut f = match File::open(self.paths.log()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Ok(()),
            Err(e) => return Err(io_err("open log")(e)),
        };
        loop {
            std::io::copy(&mut f, out).map_err(io_err("copy log"))?;
            if !follow || !self.is_running()? {
                std::io::copy(&mut f, out).map_err(io_err("copy log"))?;
                return Ok(());
            }
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the writable layer added, changed and deleted.
    pub fn diff(&self) -> Result<Vec<diff::Change>> {
        diff::changes(&self.paths.upper(), &self.state.lower_dirs)
    }

    /// State plus paths, as JSON for `inspect`.
    pub fn inspect(&mut self) -> Result<serde_json::Value> {
        self.refresh()?;
        let mut v = serde_json::to_value(&self.state).map_err(|source| Error::Json {
            what: "state".into(),
            source,
        })?;
        v["dir"] = self.paths.dir.display().to_string().into();
        v["upper"] = self.paths.upper().display().to_string().into();
        v["rootfs"] = self.paths.rootfs().display().to_string().into();
        v["mounted"] = mount::is_mounted(&self.paths.rootfs()).into();
        v["rootfs_lost"] = self.rootfs_lost().into();
        Ok(v)
    }
}
