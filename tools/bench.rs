//! `strata bench`: flags to a [`strata::bench::BenchConfig`], then the table on the terminal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strata::bench::{self, Backend, BenchConfig, FixtureSpec, Report, Workload, BACKEND_NAMES};

/// Flags of `strata bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backends to compare, comma-separated: stratafs, overlay, fuse-overlayfs, unionfs-fuse, native.
    #[arg(long, value_delimiter = ',', default_values_t = BACKEND_NAMES.map(String::from))]
    backends: Vec<String>,
    /// Also benchmark this program, which must take fuse-overlayfs's command line (repeatable).
    #[arg(long = "mount-program", value_name = "PATH")]
    mount_programs: Vec<PathBuf>,
    /// The stratafs binary [default: the one next to this executable].
    #[arg(long, value_name = "PATH")]
    stratafs: Option<PathBuf>,
    /// A fixture about ten times smaller, and 3 runs.
    #[arg(long, conflicts_with = "tiny")]
    quick: bool,
    /// A fixture of a few hundred files and 4 MiB, and 1 run: checks that everything works.
    #[arg(long)]
    tiny: bool,
    /// Where results.json, table.md and chart.svg go.
    #[arg(long, default_value = "strata-bench-results")]
    out: PathBuf,
    /// Timed runs per workload [default: 5; --quick 3; --tiny 1].
    #[arg(long)]
    runs: Option<u32>,
    /// Workloads to run, comma-separated ids or prefixes (find, seqread, ...) [default: all].
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Where the fixture is built and reused [default: ./strata-bench-fixture-SIZE].
    #[arg(long, value_name = "DIR")]
    fixture_dir: Option<PathBuf>,
    /// Where uppers, work dirs and mount points go [default: FIXTURE_DIR/scratch].
    #[arg(long, value_name = "DIR")]
    scratch_dir: Option<PathBuf>,
    /// Directories of small files (25 files each).
    #[arg(long)]
    dirs: Option<u32>,
    /// Size of the big file in MiB.
    #[arg(long)]
    big_file_mib: Option<u64>,
    /// Entries of the wide directory.
    #[arg(long)]
    wide_entries: Option<u32>,
    /// Layers of the deep stack.
    #[arg(long)]
    stack_layers: Option<u32>,
    /// Seconds one run may take before its mount is torn down.
    #[arg(long, default_value_t = 600)]
    run_timeout: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Runs the benchmark, prints the table and writes the report files.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (size, mut spec, default_runs) = if args.tiny {
        ("tiny", FixtureSpec::tiny(), 1)
    } else if args.quick {
        ("quick", FixtureSpec::quick(), 3)
    } else {
        ("full", FixtureSpec::full(), 5)
    };
    spec.dirs = args.dirs.unwrap_or(spec.dirs);
    spec.big_file_bytes = args
        .big_file_mib
        .map(|m| m << 20)
        .unwrap_or(spec.big_file_bytes);
    spec.wide_entries = args.wide_entries.unwrap_or(spec.wide_entries);
    spec.stack_layers = args.stack_layers.unwrap_or(spec.stack_layers);
    let stratafs = args.stratafs.unwrap_or_else(bench::default_stratafs);
    let mut backends = args
        .backends
        .iter()
        .map(|name| Backend::parse(name, &stratafs))
        .collect::<Result<Vec<_>, _>>()?;
    backends.extend(args.mount_programs.into_iter().map(Backend::Program));
    let workloads = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        Workload::select(&args.workloads)?
    };
    let fixture_dir = args
        .fixture_dir
        .unwrap_or_else(|| PathBuf::from(format!("strata-bench-fixture-{size}")));
    let fixture_dir = std::path::absolute(&fixture_dir).context("fixture directory")?;
    let scratch_dir = args
        .scratch_dir
        .unwrap_or_else(|| fixture_dir.join("scratch"));
    let config = BenchConfig {
        backends,
        spec,
        runs: args.runs.unwrap_or(default_runs),
        workloads,
        fixture_dir,
        scratch_dir: std::path::absolute(scratch_dir).context("scratch directory")?,
        progress: !args.no_progress,
        run_deadline: Duration::from_secs(args.run_timeout),
    };
    let report = Report::new(bench::run(&config)?);
    println!("{}", report.table());
    for line in report.remarks() {
        println!("note: {line}");
    }
    for path in report.write(&args.out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
