//! Runs the chosen workloads on every chosen backend and gathers the samples.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::backend::{Backend, Mount};
use super::deadline::with_deadline;
use super::error::{BenchError, Result};
use super::fixture::{mkdirs, Fixture, FixtureSpec, LayerSet};
use super::graveyard::Graveyard;
use super::journal;
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
    measured.notes.extend(journal::note(&config.scratch_dir));
    if journal::ext4_without_journal(&config.scratch_dir)
        != journal::ext4_without_journal(&fixture.root)
    {
        measured.notes.extend(journal::note(&fixture.root));
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
    let graveyards = Graveyards::clear_at_start_and_end(config, &fixture)?;
    let mut columns: Vec<Column> = available
        .iter()
        .map(|(backend, unavailable)| Column {
            backend,
            status: BackendStatus {
                name: backend.name(),
                ran: unavailable.is_none(),
                notes: unavailable
                    .iter()
                    .map(|why| format!("skipped: {why}"))
                    .collect(),
            },
            peak_rss: 0,
            transport: None,
        })
        .collect();
    // One workload at a time on every backend, so that a drift of the machine falls on all
    // backends alike; samples are reported in the order the workloads were asked for.
    let mut by_workload: Vec<Vec<(String, Sample)>> = vec![Vec::new(); workloads.len()];
    let mut interrupted = None;
    'workloads: for i in execution_order(&workloads) {
        let workload = workloads[i];
        for column in columns.iter_mut().filter(|c| c.status.ran) {
            let name = &column.status.name;
            bar.set_message(format!("{name}: {}", workload.id()));
            match run_workload(
                config,
                &fixture,
                column.backend,
                workload,
                &mut column.peak_rss,
                &mut column.transport,
            ) {
                Err(BenchError::Interrupted) => {
                    interrupted = Some(format!(
                        "interrupted during {name} {}: results are partial",
                        workload.id()
                    ));
                    break 'workloads;
                }
                Ok(samples) => {
                    by_workload[i].extend(samples.into_iter().map(|s| (name.clone(), s)))
                }
                Err(e) => column
                    .status
                    .notes
                    .push(format!("{} failed: {e}", workload.id())),
            }
            bar.inc(1);
        }
    }
    measured.samples.extend(by_workload.into_iter().flatten());
    measured.notes.extend(interrupted);
    for mut column in columns {
        if let Some(t) = column.transport {
            column
                .status
                .notes
                .push(format!("requests served over {t}"));
        }
        if column.backend.is_fuse() && column.peak_rss > 0 {
            measured.samples.push((
                column.status.name.clone(),
                Sample {
                    metric: "daemon-peak-rss",
                    unit: Unit::Mib,
                    value: column.peak_rss as f64 / (1024.0 * 1024.0),
                },
            ));
        }
        measured.backends.push(column.status);
    }
    bar.finish_and_clear();
    graveyards.clear()?;
    Ok(measured)
}

/// One backend's column of the report while the workloads run.
struct Column<'a> {
    backend: &'a Backend,
    status: BackendStatus,
    peak_rss: u64,
    transport: Option<String>,
}

/// The order to run `workloads` in (indices into it): as asked, except that `rm -rf` of the
/// untarred files goes last. It frees 10,000 inodes per run, and on ext4 without a journal
/// every inode created in the minutes after pays for them (see [`super::graveyard`]), which
/// would fall on whichever workload that creates files came next.
fn execution_order(workloads: &[Workload]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..workloads.len()).collect();
    order.sort_by_key(|&i| workloads[i] == Workload::RmUntarred);
    order
}

/// The graveyards of the scratch and fixture directories: emptied before the first run and
/// after the last (on every way out).
struct Graveyards([Graveyard; 2]);

impl Graveyards {
    fn clear_at_start_and_end(config: &BenchConfig, fixture: &Fixture) -> Result<Graveyards> {
        let g = Graveyards([
            Graveyard::within(&config.scratch_dir),
            Graveyard::within(&fixture.root),
        ]);
        g.clear()?;
        Ok(g)
    }

    fn clear(&self) -> Result<()> {
        self.0.iter().try_for_each(Graveyard::clear)
    }
}

impl Drop for Graveyards {
    fn drop(&mut self) {
        if let Err(e) = self.clear() {
            tracing::warn!("removing the benchmark's finished trees: {e}");
        }
    }
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
                    // No run pays for what an earlier one left dirty: fuse-overlayfs and
                    // unionfs-fuse do not fsync their copy-ups, and the next backend's fsync
                    // (a journal commit) could write their data back in its timed part.
                    rustix::fs::sync();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rm_of_the_untarred_files_runs_last_and_the_rest_as_asked() {
        let asked = [
            Workload::Untar,
            Workload::RmUntarred,
            Workload::RmLower,
            Workload::Chmod,
        ];
        assert_eq!(execution_order(&asked), [0, 2, 3, 1]);
        let all = Workload::ALL;
        let order = execution_order(&all);
        assert_eq!(all[*order.last().unwrap()], Workload::RmUntarred);
        assert_eq!(order.len(), all.len());
    }
}
