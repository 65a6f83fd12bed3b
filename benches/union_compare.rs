//! `cargo bench --bench union_compare`: the `strata bench` comparison at quick size on every
//! backend available here, printed as a table; the full report goes to
//! `target/strata-bench-results`. The fixture is built once under the target directory (or
//! `$STRATA_BENCH_FIXTURE`) and reused.

use std::path::PathBuf;
use std::time::Duration;

use strata::bench::{self, Backend, BenchConfig, FixtureSpec, Report, Workload, BACKEND_NAMES};

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: there, only check
    // that this one builds and starts (the comparison takes minutes).
    if !std::env::args().any(|a| a == "--bench") {
        println!("union_compare: run with `cargo bench --bench union_compare`");
        return;
    }
    let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let fixture_dir = std::env::var_os("STRATA_BENCH_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_tmp.join("strata-bench-fixture-quick"));
    let stratafs = PathBuf::from(env!("CARGO_BIN_EXE_stratafs"));
    let backends = BACKEND_NAMES
        .iter()
        .map(|n| Backend::parse(n, &stratafs).expect("known backend"))
        .collect();
    let config = BenchConfig {
        backends,
        spec: FixtureSpec::quick(),
        runs: 3,
        workloads: Workload::ALL.to_vec(),
        scratch_dir: fixture_dir.join("scratch"),
        fixture_dir,
        progress: true,
        run_deadline: Duration::from_secs(300),
    };
    let measured = match bench::run(&config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("union_compare: {e}");
            std::process::exit(1);
        }
    };
    let report = Report::new(measured);
    println!("{}", report.table());
    for line in report.remarks() {
        println!("note: {line}");
    }
    let out = target_tmp
        .parent()
        .unwrap_or(&target_tmp)
        .join("strata-bench-results");
    match report.write(&out) {
        Ok(paths) => paths.iter().for_each(|p| println!("wrote {}", p.display())),
        Err(e) => eprintln!("union_compare: writing the report: {e}"),
    }
}
