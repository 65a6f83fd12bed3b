//! Run a parsed Dockerfile: each stage starts from its base's layers and config; `RUN` runs in a
//! container over a stratafs mount of the layers so far plus a fresh upper; `COPY`/`ADD`/`WORKDIR`
//! write into such a mount directly; every upper that changed becomes one layer. Metadata
//! instructions only change the config. Each step is looked up in the build cache first.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oci_spec::image::ImageConfiguration;

use crate::container::{self, mount, Container, ImageSpec, RunOptions};
use crate::image::extract::{self, UnpackOptions};
use crate::image::pack::PackOptions;
use crate::image::store::TempDir;
use crate::image::{archive, config, reference, Image, LayerDesc, Store};

use super::cache::{self, Entry};
use super::context::{self, Context};
use super::copy::{self, CopyRules};
use super::expand::expand;
use super::instruction::{CommandForm, CopySpec, Dockerfile, Instruction, Located, Stage};
use super::{dockerfile, Error, Result};

/// A Ctrl-C (`crate::interrupt`) stops the build at the next step boundary (a running `RUN`
/// is killed); it removes its container and mounts and stores nothing more.
fn check_interrupted() -> Result<()> {
    if crate::interrupt::requested() {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Docker's default `SHELL`.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// When `FROM` fetches its image from a registry (docker's `--pull`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the store does not have it (docker's default).
    #[default]
    Missing,
    /// Every time, so a moved tag is followed.
    Always,
    /// Never: the store must have it.
    Never,
}

/// The function behind a [`Puller`].
pub type PullFn = dyn Fn(&str) -> std::result::Result<String, String> + Send + Sync;

/// Fetches an image into the store (a registry pull, which the caller supplies: the build
/// knows nothing of registries). Given the reference as the Dockerfile writes it, returns the
/// pulled image's ID.
#[derive(Clone)]
pub struct Puller(pub std::sync::Arc<PullFn>);

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Puller")
    }
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// When `FROM` pulls its image.
    pub pull: PullPolicy,
    /// How (none: never).
    pub puller: Option<Puller>,
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `CONTEXT/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// Tags (`name:tag`) for the result.
    pub tags: Vec<String>,
    /// `--build-arg K=V`.
    pub build_args: Vec<(String, String)>,
    /// Ignore the cache (results are still recorded).
    pub no_cache: bool,
    /// Build up to this stage (name or index).
    pub target: Option<String>,
    /// OCI runtime for `RUN`.
    pub runtime: Option<String>,
    /// The network of `RUN` steps (`None`: the host's, so they have outbound access without
    /// any set-up; bridge gives each step a private network with outbound access).
    pub network: Option<container::network::Mode>,
}

/// A stage's state while it is built, and its result.
#[derive(Debug, Clone)]
struct StageState {
    config: ImageConfiguration,
    layers: Vec<LayerDesc>,
    key: String,
    args: BTreeMap<String, String>,
    shell: Vec<String>,
    cmd_set: bool,
}

impl StageState {
    fn cfg(&self) -> oci_spec::image::Config {
        self.config.config().clone().unwrap_or_default()
    }

    fn set_cfg(&mut self, c: oci_spec::image::Config) {
        self.config.set_config(Some(c));
    }

    fn env(&self) -> Vec<(String, String)> {
        self.cfg()
            .env()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .or_else(|| self.args.get(name).cloned())
    }

    fn workdir(&self) -> String {
        self.cfg()
            .working_dir()
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

/// A step that changes the file system.
enum FsStep {
    /// `RUN` with its argv.
    Run(Vec<String>),
    /// `WORKDIR` with its absolute path.
    Workdir(String),
    /// `COPY` (false) or `ADD` (true), arguments expanded.
    Copy(CopySpec, bool),
}

/// A union mount of some layers plus a fresh upper, unmounted (and its directories removed)
/// when dropped.
struct StepMount {
    dir: TempDir,
    target: PathBuf,
}

impl StepMount {
    fn new(store: &Store, lowers: &[PathBuf]) -> Result<StepMount> {
        let dir = store.temp_dir("step")?;
        let (upper, work, target, empty) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("root"),
            dir.path().join("empty"),
        );
        for d in [&upper, &work, &target, &empty] {
            std::fs::create_dir(d)
                .map_err(|e| Error::Io(format!("create {}: {e}", d.display())))?;
        }
        let lowers = if lowers.is_empty() {
            vec![empty]
        } else {
            lowers.to_vec()
        };
        mount::mount_rootfs(&lowers, &upper, &work, &target)?;
        Ok(StepMount { dir, target })
    }

    fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    fn root_fd(&self) -> Result<std::os::fd::OwnedFd> {
        rustix::fs::open(
            &self.target,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| {
            Error::Io(format!(
                "open {}: {}",
                self.target.display(),
                std::io::Error::from(e)
            ))
        })
    }

    /// Unmount, so the upper is complete (metadata-only copies finished) and can be packed.
    fn unmount(&self) -> Result<()> {
        Ok(mount::unmount_rootfs(&self.target)?)
    }
}

impl Drop for StepMount {
    fn drop(&mut self) {
        let _ = mount::unmount_rootfs(&self.target);
    }
}

/// Build the Dockerfile of `opts`; `log` receives the progress lines. Returns the image (also
/// tagged, or kept untagged when no tag was asked for).
pub fn build(
    store: &Store,
    containers_root: &Path,
    opts: &BuildOptions,
    log: &mut dyn Write,
) -> Result<Image> {
    let df_path = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let text = std::fs::read_to_string(&df_path)
        .map_err(|e| Error::Io(format!("read {}: {e}", df_path.display())))?;
    let df = dockerfile::parse(&text).map_err(|e| Error::Dockerfile {
        file: df_path.display().to_string(),
        error: e,
    })?;
    let ctx = Context::open(&opts.context)?;
    crate::interrupt::catch();
    let mut b = Builder {
        store,
        containers_root,
        opts,
        log,
        ctx,
        df_path: df_path.display().to_string(),
        step: 0,
        total: 0,
        stages: Vec::new(),
        df: df.clone(),
    };
    b.run()
}

struct Builder<'a> {
    store: &'a Store,
    containers_root: &'a Path,
    opts: &'a BuildOptions,
    log: &'a mut dyn Write,
    ctx: Context,
    df_path: String,
    df: Dockerfile,
    step: usize,
    total: usize,
    stages: Vec<(Option<String>, StageState)>,
}

impl Builder<'_> {
    fn at(&self, line: usize, message: impl Into<String>) -> Error {
        Error::Step {
            file: self.df_path.clone(),
            line,
            message: message.into(),
        }
    }

    fn run(&mut self) -> Result<Image> {
        let last = match &self.opts.target {
            None => self.df.stages.len() - 1,
            Some(t) => self
                .df
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some(&t.to_lowercase()))
                .or_else(|| {
                    t.parse::<usize>()
                        .ok()
                        .filter(|i| *i < self.df.stages.len())
                })
                .ok_or_else(|| {
                    Error::Invalid(format!("--target {t:?}: no such stage in {}", self.df_path))
                })?,
        };
        let known: Vec<&str> = self
            .df
            .global_args
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(
                self.df
                    .stages
                    .iter()
                    .flat_map(|s| s.instructions.iter())
                    .flat_map(|i| match &i.instruction {
                        Instruction::Arg(a) => {
                            a.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
                        }
                        _ => Vec::new(),
                    }),
            )
            .collect();
        for (k, _) in &self.opts.build_args {
            if !known.contains(&k.as_str()) && !is_predefined_arg(k) {
                let _ = writeln!(
                    self.log,
                    "[Warning] one or more build args were not consumed: {k}"
                );
            }
        }
        self.total = self.df.stages[..=last]
            .iter()
            .map(|s| 1 + s.instructions.len())
            .sum();
        let stages: Vec<Stage> = self.df.stages[..=last].to_vec();
        for stage in &stages {
            let state = self.stage(stage)?;
            self.stages.push((stage.name.clone(), state));
        }
        let (_, fin) = self.stages.last().expect("at least one stage").clone();
        check_interrupted()?;
        let image = self.store.write_image(&fin.config, &fin.layers)?;
        // Every layer of the result is extracted already (RUN/COPY mounted them): a container
        // of the new image starts without unpacking anything.
        if self.opts.tags.is_empty() {
            self.store.add_untagged(&image)?;
        }
        for t in &self.opts.tags {
            self.store.tag(&image, t)?;
        }
        let _ = writeln!(self.log, "Successfully built {}", image.id.short());
        for t in &self.opts.tags {
            let _ = writeln!(self.log, "Successfully tagged {t}");
        }
        Ok(image)
    }

    fn global_lookup(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.opts.build_args.iter().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.df
            .global_args
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, d)| d.clone())
            .map(|d| expand(&d, &|_| None, self.df.escape).unwrap_or(d))
    }

    fn progress(&mut self, text: &str) -> Result<Instant> {
        check_interrupted()?;
        self.step += 1;
        let _ = writeln!(self.log, "STEP {}/{}: {}", self.step, self.total, text);
        Ok(Instant::now())
    }

    fn stage(&mut self, stage: &Stage) -> Result<StageState> {
        let base = expand(&stage.base, &|n| self.global_lookup(n), self.df.escape)
            .map_err(|e| self.at(stage.line, format!("FROM: {e}")))?;
        let t = self.progress(&format!(
            "FROM {base}{}",
            stage
                .name
                .as_ref()
                .map(|n| format!(" AS {n}"))
                .unwrap_or_default()
        ))?;
        let mut state = self
            .from(&base, stage.line)
            .map_err(|e| self.locate(stage.line, e))?;
        let _ = writeln!(self.log, " --> {:.2}s", t.elapsed().as_secs_f64());
        for ins in &stage.instructions {
            self.instruction(&mut state, ins)?;
        }
        Ok(state)
    }

    fn from(&mut self, base: &str, line: usize) -> Result<StageState> {
        let fresh = |config: ImageConfiguration, layers: Vec<LayerDesc>, key: String| StageState {
            config,
            layers,
            key,
            args: BTreeMap::new(),
            shell: DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
            cmd_set: false,
        };
        if base == "scratch" {
            return Ok(fresh(
                config::empty()?,
                Vec::new(),
                cache::key("scratch", &[]),
            ));
        }
        if let Some((_, s)) = self
            .stages
            .iter()
            .find(|(n, _)| n.as_deref() == Some(&base.to_lowercase()))
        {
            let mut st = s.clone();
            st.args.clear();
            st.cmd_set = false;
            return Ok(st);
        }
        let image = if let Some(rest) = base.strip_prefix("oci:") {
            // oci:PATH[:TAG]; a path may itself hold no colon.
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') => (p, Some(t)),
                _ => (rest, None),
            };
            archive::from_layout_dir(self.store, Path::new(path), tag)
                .map_err(|e| self.at(line, format!("FROM {base}: {e}")))?
        } else {
            self.resolve_base(base, line)?
        };
        let layers = image.layers()?;
        // Images come with their own config history; later steps append to it.
        Ok(fresh(
            image.config.clone(),
            layers,
            cache::key(image.id.as_str(), &[]),
        ))
    }

    /// The store image `FROM base` names, pulled first as the pull policy says.
    fn resolve_base(&mut self, base: &str, line: usize) -> Result<Image> {
        let puller = match (&self.opts.puller, self.opts.pull) {
            (Some(p), policy) if policy != PullPolicy::Never => Some((p.clone(), policy)),
            _ => None,
        };
        let pull = |this: &mut Self| -> Result<Image> {
            let (p, _) = puller.clone().expect("checked");
            let _ = writeln!(this.log, "pulling {base}");
            let id = (p.0)(base).map_err(|e| this.at(line, format!("FROM {base}: {e}")))?;
            this.store
                .resolve_pinned(&id)
                .map_err(|e| this.at(line, format!("FROM {base}: {e}")))
        };
        if matches!(puller, Some((_, PullPolicy::Always))) {
            return pull(self);
        }
        match self.store.resolve_pinned(base) {
            Ok(img) => Ok(img),
            Err(crate::image::Error::NoSuchImage(_)) if puller.is_some() => pull(self),
            Err(crate::image::Error::NoSuchImage(_)) => Err(self.at(
                line,
                format!("FROM {base}: no such image in the store (and --pull=never)"),
            )),
            Err(e) => Err(self.at(line, format!("FROM {base}: {e}"))),
        }
    }

    fn expand_word(&self, st: &StageState, word: &str, line: usize) -> Result<String> {
        expand(word, &|n| st.lookup(n), self.df.escape).map_err(|e| self.at(line, e.to_string()))
    }

    fn args_fingerprint(st: &StageState) -> String {
        st.args.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    /// An error of the instruction at `line` that does not say where it comes from yet gets
    /// the instruction's location, as every build error has.
    fn locate(&self, line: usize, e: Error) -> Error {
        match e {
            Error::Dockerfile { .. }
            | Error::Step { .. }
            | Error::RunFailed { .. }
            | Error::Interrupted => e,
            e => self.at(line, e.to_string()),
        }
    }

    fn instruction(&mut self, st: &mut StageState, ins: &Located) -> Result<()> {
        self.apply(st, ins).map_err(|e| self.locate(ins.line, e))
    }

    fn apply(&mut self, st: &mut StageState, ins: &Located) -> Result<()> {
        let line = ins.line;
        let t = self.progress(&ins.text)?;
        let args_fp = Self::args_fingerprint(st);
        // Metadata instructions: config only.
        let mut cfg = st.cfg();
        let meta = match &ins.instruction {
            Instruction::Env(pairs) => {
                let mut env = st.env();
                for (k, v) in pairs {
                    let v = self.expand_word(st, v, line)?;
                    env.retain(|(ek, _)| ek != k);
                    env.push((k.clone(), v));
                    cfg.set_env(Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()));
                    st.set_cfg(cfg.clone());
                }
                true
            }
            Instruction::Arg(defs) => {
                for (k, default) in defs {
                    let v = match self.opts.build_args.iter().find(|(bk, _)| bk == k) {
                        Some((_, v)) => Some(v.clone()),
                        None => match default {
                            Some(d) => Some(self.expand_word(st, d, line)?),
                            None => self
                                .df
                                .global_args
                                .iter()
                                .find(|(gk, _)| gk == k)
                                .and_then(|_| self.global_lookup(k)),
                        },
                    };
                    st.args.insert(k.clone(), v.unwrap_or_default());
                }
                let _ = writeln!(self.log, " --> {:.2}s", t.elapsed().as_secs_f64());
                st.key = cache::key(&st.key, &[&ins.text, &Self::args_fingerprint(st)]);
                return Ok(());
            }
            Instruction::Label(pairs) => {
                let mut labels = cfg.labels().clone().unwrap_or_default();
                for (k, v) in pairs {
                    labels.insert(
                        self.expand_word(st, k, line)?,
                        self.expand_word(st, v, line)?,
                    );
                }
                cfg.set_labels(Some(labels));
                true
            }
            Instruction::Maintainer(m) => {
                st.config.set_author(Some(m.clone()));
                true
            }
            Instruction::Expose(ports) => {
                let mut list = cfg.exposed_ports().clone().unwrap_or_default();
                for p in ports {
                    let p = self.expand_word(st, p, line)?;
                    let p = if p.contains('/') {
                        p
                    } else {
                        format!("{p}/tcp")
                    };
                    if !list.contains(&p) {
                        list.push(p);
                    }
                }
                cfg.set_exposed_ports(Some(list));
                true
            }
            Instruction::Volume(vols) => {
                let mut list = cfg.volumes().clone().unwrap_or_default();
                for v in vols {
                    let v = self.expand_word(st, v, line)?;
                    if !list.contains(&v) {
                        list.push(v);
                    }
                }
                cfg.set_volumes(Some(list));
                true
            }
            Instruction::User(u) => {
                cfg.set_user(Some(self.expand_word(st, u, line)?));
                true
            }
            Instruction::StopSignal(s) => {
                cfg.set_stop_signal(Some(self.expand_word(st, s, line)?));
                true
            }
            Instruction::Shell(sh) => {
                st.shell = sh.clone();
                true
            }
            Instruction::Cmd(form) => {
                cfg.set_cmd(Some(command(&st.shell, form)));
                st.cmd_set = true;
                true
            }
            Instruction::Entrypoint(form) => {
                cfg.set_entrypoint(Some(command(&st.shell, form)));
                if !st.cmd_set {
                    cfg.set_cmd(None);
                }
                true
            }
            _ => false,
        };
        if meta {
            if !matches!(
                ins.instruction,
                Instruction::Env(_) | Instruction::Maintainer(_)
            ) {
                st.set_cfg(cfg);
            }
            st.key = cache::key(&st.key, &[&ins.text, &args_fp]);
            let created = self.cached_or(st, None, |_| Ok(None))?.created;
            config::push_history(&mut st.config, &ins.text, &created, true)?;
            let _ = writeln!(self.log, " --> {:.2}s", t.elapsed().as_secs_f64());
            return Ok(());
        }
        // Filesystem instructions.
        let (key_extra, step) = match &ins.instruction {
            Instruction::Run(form) => (String::new(), FsStep::Run(command(&st.shell, form))),
            Instruction::Workdir(w) => {
                let w = self.expand_word(st, w, line)?;
                let path = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{}", st.workdir().trim_end_matches('/'), w)
                };
                let mut c = st.cfg();
                c.set_working_dir(Some(path.clone()));
                st.set_cfg(c);
                (path.clone(), FsStep::Workdir(path))
            }
            Instruction::Copy(spec) | Instruction::Add(spec) => {
                let is_add = matches!(ins.instruction, Instruction::Add(_));
                let spec = self.expand_copy(st, spec, line)?;
                let fp = self.copy_fingerprint(&spec, line)?;
                (fp, FsStep::Copy(spec, is_add))
            }
            other => return Err(self.at(line, format!("unhandled instruction {other:?}"))),
        };
        st.key = cache::key(&st.key, &[&ins.text, &args_fp, &key_extra]);
        let entry = self.cached_or(st, Some(&t), |b| match step {
            FsStep::Run(argv) => b.run_step(st, argv, line),
            FsStep::Workdir(path) => b.workdir_step(st, &path),
            FsStep::Copy(spec, is_add) => b.copy_step(st, &spec, is_add, line),
        })?;
        match &entry.layer {
            Some(l) => {
                config::push_layer(
                    &mut st.config,
                    l.diff_id.as_str(),
                    &ins.text,
                    &entry.created,
                )?;
                st.layers.push(l.clone());
            }
            None => config::push_history(&mut st.config, &ins.text, &entry.created, true)?,
        }
        let _ = writeln!(self.log, " --> {:.2}s", t.elapsed().as_secs_f64());
        Ok(())
    }

    /// The cached entry for `st.key`, or the result of `work` recorded under it.
    fn cached_or(
        &mut self,
        st: &StageState,
        started: Option<&Instant>,
        work: impl FnOnce(&mut Self) -> Result<Option<LayerDesc>>,
    ) -> Result<Entry> {
        if !self.opts.no_cache {
            if let Some(e) = cache::lookup(self.store, &st.key) {
                if started.is_some() {
                    let _ = writeln!(self.log, " --> Using cache {}", &st.key[..12]);
                }
                return Ok(e);
            }
        }
        let layer = work(self)?;
        let e = Entry {
            layer,
            created: config::created_now(),
        };
        cache::record(self.store, &st.key, &e);
        Ok(e)
    }

    fn expand_copy(&self, st: &StageState, spec: &CopySpec, line: usize) -> Result<CopySpec> {
        let mut s = spec.clone();
        s.sources = spec
            .sources
            .iter()
            .map(|x| self.expand_word(st, x, line))
            .collect::<Result<_>>()?;
        s.dest = self.expand_word(st, &spec.dest, line)?;
        s.chown = spec
            .chown
            .as_ref()
            .map(|c| self.expand_word(st, c, line))
            .transpose()?;
        s.from = spec
            .from
            .as_ref()
            .map(|c| self.expand_word(st, c, line))
            .transpose()?;
        if !s.dest.starts_with('/') {
            let wd = st.workdir();
            let trailing = if s.dest.ends_with('/') || s.dest == "." {
                "/"
            } else {
                ""
            };
            s.dest = format!(
                "{}/{}{}",
                wd.trim_end_matches('/'),
                s.dest.trim_end_matches('/'),
                trailing
            );
        }
        Ok(s)
    }

    /// What a COPY reads, for its cache key: the content of context sources, or the identity of
    /// the stage or image copied from.
    fn copy_fingerprint(&self, spec: &CopySpec, line: usize) -> Result<String> {
        let mut fp = format!("{:?}", spec);
        match &spec.from {
            None => {
                let mut rels = Vec::new();
                for s in &spec.sources {
                    if s.contains("://") {
                        return Err(self.at(
                            line,
                            format!(
                                "{s}: remote sources are not supported (no network in builds here)"
                            ),
                        ));
                    }
                    rels.extend(
                        self.ctx
                            .select(s)
                            .map_err(|e| self.at(line, e.to_string()))?,
                    );
                }
                fp.push_str(
                    &self
                        .ctx
                        .content_digest(&rels)
                        .map_err(|e| self.at(line, e.to_string()))?,
                );
            }
            Some(from) => {
                let (_, layers) = self.copy_source(from, line)?;
                for l in layers {
                    fp.push_str(l.diff_id.as_str());
                }
            }
        }
        Ok(fp)
    }

    /// The layers `COPY --from=X` reads: a stage by name or index, or an image.
    fn copy_source(&self, from: &str, line: usize) -> Result<(String, Vec<LayerDesc>)> {
        let lc = from.to_lowercase();
        if let Some((_, s)) = self.stages.iter().find(|(n, _)| n.as_deref() == Some(&lc)) {
            return Ok((lc, s.layers.clone()));
        }
        if let Ok(i) = from.parse::<usize>() {
            if let Some((_, s)) = self.stages.get(i) {
                return Ok((from.to_string(), s.layers.clone()));
            }
            return Err(self.at(line, format!("--from={from}: no stage {i} before this one")));
        }
        reference::Reference::parse(from).map_err(|e| self.at(line, e.to_string()))?;
        let img = self
            .store
            .resolve_pinned(from)
            .map_err(|e| self.at(line, format!("--from={from}: {e}")))?;
        Ok((from.to_string(), img.layers()?))
    }

    fn finish_layer(&self, m: StepMount) -> Result<Option<LayerDesc>> {
        m.unmount()?;
        let upper = m.upper();
        if std::fs::read_dir(&upper)
            .map_err(|e| Error::Io(format!("read {}: {e}", upper.display())))?
            .next()
            .is_none()
        {
            return Ok(None);
        }
        let layer = self.store.layer_from_dir(
            &upper,
            PackOptions {
                clamp_mtime: config::source_date_epoch(),
                ..Default::default()
            },
        )?;
        self.store.extracted(&layer)?;
        Ok(Some(layer))
    }

    fn workdir_step(&mut self, st: &StageState, path: &str) -> Result<Option<LayerDesc>> {
        let m = StepMount::new(self.store, &self.store.extracted_dirs(&st.layers)?)?;
        let root = m.root_fd()?;
        if !copy::is_dir(root.as_fd(), path) {
            copy::make_dirs(
                root.as_fd(),
                path,
                &CopyRules {
                    uid: 0,
                    gid: 0,
                    chown: false,
                    chmod: None,
                },
            )?;
        }
        drop(root);
        self.finish_layer(m)
    }

    fn copy_step(
        &mut self,
        st: &StageState,
        spec: &CopySpec,
        is_add: bool,
        line: usize,
    ) -> Result<Option<LayerDesc>> {
        let lowers = self.store.extracted_dirs(&st.layers)?;
        let m = StepMount::new(self.store, &lowers)?;
        let root = m.root_fd()?;
        let (uid, gid) = match &spec.chown {
            Some(c) => {
                let u = container::spec::resolve_user(c, &lowers)
                    .map_err(|e| self.at(line, format!("--chown={c}: {e}")))?;
                (u.uid(), u.gid())
            }
            None => (0, 0),
        };
        let rules = CopyRules {
            uid,
            gid,
            chown: rustix::process::geteuid().is_root(),
            chmod: spec.chmod,
        };
        // Sources: context paths, or paths in another stage's or image's root (mounted).
        let from_mount = match &spec.from {
            Some(f) => {
                let (_, layers) = self.copy_source(f, line)?;
                Some(StepMount::new(
                    self.store,
                    &self.store.extracted_dirs(&layers)?,
                )?)
            }
            None => None,
        };
        let mut sources: Vec<(String, std::os::fd::OwnedFd)> = Vec::new();
        for s in &spec.sources {
            match &from_mount {
                None => {
                    for rel in self
                        .ctx
                        .select(s)
                        .map_err(|e| self.at(line, e.to_string()))?
                    {
                        let fd = self
                            .ctx
                            .open_source(&rel)
                            .map_err(|e| self.at(line, e.to_string()))?;
                        sources.push((rel, fd));
                    }
                }
                Some(fm) => {
                    let rel = context::clean_relative(s).map_err(|e| self.at(line, e))?;
                    let froot = fm.root_fd()?;
                    let p = if rel.is_empty() {
                        ".".to_string()
                    } else {
                        rel.clone()
                    };
                    let fd = rustix::fs::openat2(
                        &froot,
                        p.as_str(),
                        rustix::fs::OFlags::RDONLY
                            | rustix::fs::OFlags::NONBLOCK
                            | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                        rustix::fs::ResolveFlags::IN_ROOT,
                    )
                    .map_err(|e| {
                        self.at(
                            line,
                            format!(
                                "--from={}: {s}: {}",
                                spec.from.as_deref().unwrap_or(""),
                                std::io::Error::from(e)
                            ),
                        )
                    })?;
                    sources.push((rel, fd));
                }
            }
        }
        let dest_is_dir =
            spec.dest.ends_with('/') || sources.len() > 1 || copy::is_dir(root.as_fd(), &spec.dest);
        for (rel, fd) in &sources {
            let st_src = rustix::fs::fstat(fd)
                .map_err(|e| Error::Io(format!("stat {rel}: {}", std::io::Error::from(e))))?;
            let src_is_dir = rustix::fs::FileType::from_raw_mode(st_src.st_mode)
                == rustix::fs::FileType::Directory;
            let ctx = &self.ctx;
            let in_context = spec.from.is_none();
            let base_rel = rel.clone();
            let filter = move |child: &str, is_dir: bool| {
                !in_context
                    || !ctx.excluded(
                        &if base_rel.is_empty() {
                            child.to_string()
                        } else {
                            format!("{base_rel}/{child}")
                        },
                        is_dir,
                    )
            };
            if src_is_dir {
                let d = copy::make_dirs(root.as_fd(), &spec.dest, &rules)?;
                copy::copy_dir_contents(fd.as_fd(), d.as_fd(), &rules, "", &filter)?;
                continue;
            }
            if is_add && is_tar(fd)? {
                let d = copy::make_dirs(root.as_fd(), &spec.dest, &rules)?;
                let file =
                    std::fs::File::from(fd.try_clone().map_err(|e| Error::Io(e.to_string()))?);
                let reader = crate::image::store::decompressed(BufReader::new(file), rel)?;
                let opts = UnpackOptions {
                    whiteouts: false,
                    ..UnpackOptions::for_current_user()
                };
                let target = rustix::fs::openat(
                    &d,
                    ".",
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| Error::Io(std::io::Error::from(e).to_string()))?;
                extract::unpack_at(reader, target, rel, opts)
                    .map_err(|e| self.at(line, format!("ADD {rel}: {e}")))?;
                continue;
            }
            let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
            let (dir, name) = if dest_is_dir {
                (copy::make_dirs(root.as_fd(), &spec.dest, &rules)?, name)
            } else {
                // Through a symlink at the destination, as docker copies (see copy::resolve).
                let d = copy::resolve(root.as_fd(), spec.dest.trim_end_matches('/'))?;
                let (parent, leaf) = d.rsplit_once('/').unwrap_or(("", &d));
                (
                    copy::make_dirs(root.as_fd(), parent, &rules)?,
                    leaf.to_string(),
                )
            };
            copy::copy_node(
                fd.as_fd(),
                dir.as_fd(),
                std::ffi::OsStr::new(&name),
                &rules,
                rel,
                &filter,
            )?;
        }
        drop(sources);
        drop(root);
        drop(from_mount);
        self.finish_layer(m)
    }

    fn run_step(
        &mut self,
        st: &StageState,
        argv: Vec<String>,
        line: usize,
    ) -> Result<Option<LayerDesc>> {
        let lowers = self.store.extracted_dirs(&st.layers)?;
        if lowers.is_empty() {
            return Err(self.at(
                line,
                "RUN needs a base image with a shell; this stage has no layers yet",
            ));
        }
        let mut config = st.config.clone();
        let mut c = st.cfg();
        c.set_entrypoint(None);
        c.set_cmd(None);
        config.set_config(Some(c));
        let spec = ImageSpec {
            id: "build".into(),
            name: "build".into(),
            lower_dirs: lowers,
            config,
        };
        let env = st
            .args
            .iter()
            .filter(|(k, _)| !st.env().iter().any(|(ek, _)| ek == *k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let opts = RunOptions {
            name: Some(format!("strata-build-{:016x}", fastrand::u64(..))),
            env,
            network: self.opts.network.unwrap_or(container::network::Mode::Host),
            cmd: argv,
            runtime: self.opts.runtime.clone(),
            ..Default::default()
        };
        let mut ctr = Container::create(self.containers_root, &spec, &opts)?;
        let id = ctr.state.id.clone();
        let finished = AtomicBool::new(false);
        let code = std::thread::scope(|s| {
            // An interrupt kills the step's process (a container's init ignores SIGINT).
            s.spawn(|| {
                while !finished.load(Ordering::SeqCst) {
                    if crate::interrupt::requested() {
                        if let Ok(mut c) = Container::open(self.containers_root, &id) {
                            let _ = c.kill("KILL");
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let code = ctr.run_attached(false);
            finished.store(true, Ordering::SeqCst);
            code
        });
        let result = match code {
            _ if crate::interrupt::requested() => Err(Error::Interrupted),
            Ok(0) => {
                let upper = ctr.dir().join("upper");
                for d in container::RUNTIME_MOUNT_POINTS {
                    // Mount points the runtime made (removed only if empty): not RUN's output.
                    let _ = std::fs::remove_dir(upper.join(d));
                }
                let empty = std::fs::read_dir(&upper)
                    .map(|mut r| r.next().is_none())
                    .unwrap_or(false);
                if empty {
                    Ok(None)
                } else {
                    self.store
                        .layer_from_dir(
                            &upper,
                            PackOptions {
                                clamp_mtime: config::source_date_epoch(),
                                ..Default::default()
                            },
                        )
                        .and_then(|l| self.store.extracted(&l).map(|_| Some(l)))
                        .map_err(Error::from)
                }
            }
            Ok(code) => Err(Error::RunFailed {
                file: self.df_path.clone(),
                line,
                code,
            }),
            Err(e) => Err(e.into()),
        };
        ctr.remove(true)?;
        result
    }
}

/// The argv of a shell- or exec-form command.
fn command(shell: &[String], form: &CommandForm) -> Vec<String> {
    match form {
        CommandForm::Exec(v) => v.clone(),
        CommandForm::Shell(s) => shell.iter().cloned().chain([s.clone()]).collect(),
    }
}

/// Whether the file open as `fd` is a tar (plain or gzip).
fn is_tar(fd: &std::os::fd::OwnedFd) -> Result<bool> {
    let mut head = [0u8; 512];
    let file = std::fs::File::from(fd.try_clone().map_err(|e| Error::Io(e.to_string()))?);
    let mut r = BufReader::new(&file);
    let n = r
        .fill_buf()
        .map_err(|e| Error::Io(e.to_string()))?
        .len()
        .min(512);
    head[..n].copy_from_slice(&r.fill_buf().map_err(|e| Error::Io(e.to_string()))?[..n]);
    drop(r);
    std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(0))
        .map_err(|e| Error::Io(e.to_string()))?;
    let gz = n >= 2 && head[..2] == [0x1f, 0x8b];
    let ustar = n >= 262 && &head[257..262] == b"ustar";
    let _ = Read::by_ref(&mut &file);
    Ok(gz || ustar)
}

/// Build args docker accepts without an `ARG` (proxies).
fn is_predefined_arg(k: &str) -> bool {
    matches!(
        k.to_ascii_uppercase().as_str(),
        "HTTP_PROXY" | "HTTPS_PROXY" | "FTP_PROXY" | "NO_PROXY" | "ALL_PROXY"
    )
}
