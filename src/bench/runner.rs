//! Runs the chosen workloads on every chosen backend and gathers the samples.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::backend::{Backend, Mount};
use super::deadline::with_deadline;
use super::error::{BenchError, Result};
use super::fixture::{mkdirs, Fixture, FixtureSpec, LayerSet};
use super::procfs;
use super::report::{BackendStatus, Measured};
use super::workload::{mib_per_s, read_all, Layers, Sample, Temperature, Unit, Workload};

/// Everything one benchmark needs to know.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Backends to compare, in column order.
    pub backends: Vec<Backend>,
    /// Fixture sizes.
    pub spec: FixtureSpec,
    /// Timed runs of each workload.
    pub runs: u32,
    /// Workloads to run, in report order.
    pub workloads: Vec<Workload>,
    /// Where the fixture is built (and reused from).
    pub fixture_dir: PathBuf,
    /// Where uppers, work dirs and mount points are made.
    pub scratch_dir: PathBuf,
    /// Show a progress bar on the terminal.
    pub progress: bool,
    /// Longest a single run may take before its mount is torn down.
    pub run_deadline: Duration,
}

/// Set by the first SIGINT/SIGTERM: the benchmark stops after the current run, unmounts and
/// reports what it measured so far.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Lets Ctrl-C end the benchmark cleanly (mounts are dropped on the way out); a second one
/// exits at once.
fn catch_interrupts() {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, &INTERRUPTED);
        let _ = signal_hook::flag::register(signal, &INTERRUPTED);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(BenchError::Interrupted);
    }
    Ok(())
}

/// Builds (or reuses) the fixture and runs every workload on every backend.
pub fn run(config: &BenchConfig) -> Result<Measured> {
    catch_interrupts();
    if config.runs == 0 {
        return Err(BenchError::Config("--runs must be at least 1".into()));
    }
    for (i, b) in config.backends.iter().enumerate() {
        if config.backends[..i].iter().any(|a| a.name() == b.name()) {
            return Err(BenchError::Config(format!(
                "backend {} is named twice (rename a --mount-program)",
                b.name()
            )));
        }
    }
    let bar = if config.progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    let fixture = Fixture::ensure(&config.fixture_dir, &config.spec, &|step| {
        bar.set_message(format!("building fixture: {step}"))
    })?;
    mkdirs(&config.scratch_dir)?;
    let root = procfs::is_root();
    let mut measured = Measured {
        root,
        runs: config.runs,
        spec: config.spec.clone(),
        ..Measured::default()
    };
    let workloads: Vec<Workload> = config
        .workloads
        .iter()
        .copied()
        .filter(|w| root || w.temperature() != Temperature::Cold)
        .collect();
    if !root {
        measured
            .notes
            .push("not running as root: cold runs (they drop the caches) are skipped".into());
    }
    let available: Vec<(&Backend, Option<String>)> = config
        .backends
        .iter()
        .map(|b| (b, b.unavailable()))
        .collect();
    let steps = available.iter().filter(|(_, why)| why.is_none()).count() * workloads.len();
    bar.set_length(steps as u64);
    bar.set_position(0);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    for (backend, unavailable) in available {
        let name = backend.name();
        if let Some(reason) = unavailable {
            measured.backends.push(BackendStatus {
                name,
                ran: false,
                notes: vec![format!("skipped: {reason}")],
            });
            continue;
        }
        let mut status = BackendStatus {
            name: name.clone(),
            ran: true,
            notes: Vec::new(),
        };
        let mut peak_rss = 0u64;
        let mut transport = None;
        for &workload in &workloads {
            bar.set_message(format!("{name}: {}", workload.id()));
            match run_workload(
                config,
                &fixture,
                backend,
                workload,
                &mut peak_rss,
                &mut transport,
            ) {
                Err(BenchError::Interrupted) => {
                    measured.notes.push(format!(
                        "interrupted during {name} {}: results are partial",
                        workload.id()
                    ));
                    measured.backends.push(status);
                    bar.finish_and_clear();
                    return Ok(measured);
                }
                Ok(samples) => measured
                    .samples
                    .extend(samples.into_iter().map(|s| (name.clone(), s))),
                Err(e) => status.notes.push(format!("{} failed: {e}", workload.id())),
            }
            bar.inc(1);
        }
        if let Some(t) = transport {
            status.notes.push(format!("requests served over {t}"));
        }
        if backend.is_fuse() && peak_rss > 0 {
            let value = peak_rss as f64 / (1024.0 * 1024.0);
            measured.samples.push((
                name,
                Sample {
                    metric: "daemon-peak-rss",
                    unit: Unit::Mib,
                    value,
                },
            ));
        }
        measured.backends.push(status);
    }
    bar.finish_and_clear();
    Ok(measured)
}

fn layer_set(fixture: &Fixture, layers: Layers) -> &LayerSet {
    match layers {
        Layers::Main => &fixture.main,
        Layers::Deep => &fixture.deep,
        Layers::Shallow => &fixture.shallow,
    }
}

fn run_workload(
    config: &BenchConfig,
    fixture: &Fixture,
    backend: &Backend,
    workload: Workload,
    peak_rss: &mut u64,
    transport: &mut Option<String>,
) -> Result<Vec<Sample>> {
    let set = layer_set(fixture, workload.layers());
    let mount = || {
        check_interrupted()?;
        backend.mount(set, &config.scratch_dir)
    };
    let mut samples = Vec::new();
    if workload == Workload::FourMounts {
        for _ in 0..config.runs {
            check_interrupted()?;
            samples.extend(four_mounts(config, fixture, backend, peak_rss)?);
        }
        return Ok(samples);
    }
    match workload.temperature() {
        Temperature::Warm => {
            let mut m = mount()?;
            timed_run(config, fixture, workload, &mut m)?;
            for _ in 0..config.runs {
                check_interrupted()?;
                samples.extend(timed_run(config, fixture, workload, &mut m)?);
            }
            note_peak(&m, peak_rss);
            m.unmount()?;
        }
        Temperature::Cold => {
            for _ in 0..config.runs {
                let mut m = mount()?;
                procfs::drop_caches()?;
                samples.extend(timed_run(config, fixture, workload, &mut m)?);
                note_peak(&m, peak_rss);
                m.unmount()?;
            }
        }
        Temperature::Fresh => {
            for _ in 0..config.runs {
                let mut m = mount()?;
                let ran = workload.setup(&m.root, fixture).and_then(|()| {
                    let counted = workload.request_metric(fixture);
                    let before = counted.and_then(|_| m.request_counts());
                    let mut samples = timed_run(config, fixture, workload, &mut m)?;
                    // The daemon writes its counts outside the timed part.
                    if let (Some((metric, unit, per)), Some(before)) = (counted, before) {
                        if let Some(after) = m.request_counts() {
                            let served = after.since(&before);
                            samples.push(Sample {
                                metric,
                                unit,
                                value: served.total as f64 / per,
                            });
                            *transport = Some(after.transport);
                        }
                    }
                    Ok(samples)
                });
                note_peak(&m, peak_rss);
                let unmounted = m.unmount();
                if *backend == Backend::Native {
                    workload.restore_native(set, fixture)?;
                    // The restore's dirty pages would otherwise be written back during the
                    // next timed run.
                    rustix::fs::sync();
                }
                samples.extend(ran?);
                unmounted?;
            }
        }
    }
    Ok(samples)
}

fn note_peak(mount: &Mount, peak_rss: &mut u64) {
    if let Some(rss) = mount.daemon_peak_rss() {
        *peak_rss = (*peak_rss).max(rss);
    }
}

/// One run under the deadline; a run that overstays it takes its mount down with it.
fn timed_run(
    config: &BenchConfig,
    fixture: &Fixture,
    workload: Workload,
    mount: &mut Mount,
) -> Result<Vec<Sample>> {
    let (root, fixture) = (mount.root.clone(), fixture.clone());
    let result = with_deadline(workload.id(), config.run_deadline, move || {
        workload.run(&root, &fixture)
    });
    if let Err(BenchError::Timeout { .. }) = &result {
        mount.abort();
    }
    result
}

/// Four mounts of the same layers read the big file one after the other: how much the page
/// cache grows (in copies of the file) and how fast mounts 2..4 read once mount 1 has.
fn four_mounts(
    config: &BenchConfig,
    fixture: &Fixture,
    backend: &Backend,
    peak_rss: &mut u64,
) -> Result<Vec<Sample>> {
    let mut mounts = Vec::new();
    for _ in 0..4 {
        mounts.push(backend.mount(&fixture.main, &config.scratch_dir)?);
    }
    procfs::drop_caches()?;
    let roots: Vec<PathBuf> = mounts.iter().map(|m| m.root.join("big/bigfile")).collect();
    let result = with_deadline("four-mounts", config.run_deadline, move || {
        let before = procfs::cached_bytes()?;
        read_all(&roots[0])?;
        let start = Instant::now();
        let mut bytes = 0;
        for file in &roots[1..] {
            bytes += read_all(file)?;
        }
        let elapsed = start.elapsed();
        let after = procfs::cached_bytes()?;
        Ok((after.saturating_sub(before), bytes, elapsed))
    });
    for m in &mut mounts {
        note_peak(m, peak_rss);
        if matches!(result, Err(BenchError::Timeout { .. })) {
            m.abort();
        }
    }
    let (growth, bytes, elapsed) = result?;
    for m in mounts {
        m.unmount()?;
    }
    let copies = growth as f64 / fixture.spec.big_file_bytes as f64;
    Ok(vec![
        Sample {
            metric: "pagecache-4mounts",
            unit: Unit::Copies,
            value: copies,
        },
        Sample {
            metric: "read-mounts-2to4",
            unit: Unit::MibPerSecond,
            value: mib_per_s(bytes, elapsed),
        },
    ])
}
