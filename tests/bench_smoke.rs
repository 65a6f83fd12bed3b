//! `strata bench --tiny` end to end: kernel overlayfs, the native directory and stratafs, one
//! run each, must produce a JSON report and an SVG chart covering every workload.
//!
//! Runs as root (kernel overlayfs and cold runs need it); as another user only the native and
//! stratafs backends are checked, and the cold workloads are expected to be skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use strata::bench::workload::Unit;
use strata::bench::Workload;

/// The whole tiny benchmark must finish within this, or the test fails (and the benchmark,
/// which unmounts on exit, is killed).
const DEADLINE: Duration = Duration::from_secs(120);

fn temp_base() -> PathBuf {
    let base = std::env::var_os("STRATA_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).expect("create the temp base");
    base
}

fn run_bench(dir: &Path) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "bench",
            "--tiny",
            "--runs",
            "1",
            "--no-progress",
            "--run-timeout",
            "30",
        ])
        .args(["--backends", "overlay,native,stratafs"])
        .arg("--stratafs")
        .arg(env!("CARGO_BIN_EXE_stratafs"))
        .arg("--fixture-dir")
        .arg(dir.join("fixture"))
        .arg("--out")
        .arg(dir.join("out"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strata starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("strata ran"),
        Err(_) => {
            // SIGTERM is not handled, so kill outright; its mounts are then detached below.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            detach_mounts_under(dir);
            panic!("strata bench --tiny did not finish within {DEADLINE:?}");
        }
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

fn detach_mounts_under(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = Command::new("umount").args(["-l", &m]).status();
    }
}

#[test]
fn tiny_bench_reports_every_workload_for_overlay_native_and_stratafs() {
    let tmp = tempfile::Builder::new()
        .prefix("bench-smoke")
        .tempdir_in(temp_base())
        .unwrap();
    let output = run_bench(tmp.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "strata bench failed:\n{stdout}\n{stderr}"
    );
    assert!(
        mounts_under(tmp.path()).is_empty(),
        "mounts left behind: {:?}",
        mounts_under(tmp.path())
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/results.json")).unwrap())
            .unwrap();
    let root = json["root"].as_bool().unwrap();
    let backends: &[&str] = if root {
        &["overlay", "native", "stratafs"]
    } else {
        &["native", "stratafs"]
    };
    for b in json["backends"].as_array().unwrap() {
        let name = b["name"].as_str().unwrap();
        if backends.contains(&name) {
            assert_eq!(b["ran"], true, "{name} did not run: {b}");
            // The one note that is not a failure says which transport served stratafs.
            let failures: Vec<_> = b["notes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| !n.as_str().unwrap().starts_with("requests served over "))
                .collect();
            assert!(failures.is_empty(), "{name} had failures: {b}");
            if name == "stratafs" {
                assert!(
                    b["notes"].to_string().contains("requests served over"),
                    "{b}"
                );
            }
        }
    }
    let rows = json["rows"].as_array().unwrap();
    let svg = std::fs::read_to_string(tmp.path().join("out/chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for workload in Workload::ALL {
        let cold = workload.temperature() == strata::bench::workload::Temperature::Cold;
        for (metric, unit) in workload.metrics() {
            for backend in backends {
                let row = rows
                    .iter()
                    .find(|r| r["metric"] == metric && r["backend"] == *backend);
                if cold && !root {
                    assert!(row.is_none(), "{metric} on {backend} ran without root");
                    continue;
                }
                let row = row.unwrap_or_else(|| panic!("no {metric} for {backend} in {json}"));
                let median = row["median"].as_f64().unwrap();
                assert!(median > 0.0, "{metric} on {backend}: {median}");
                assert_eq!(
                    row["samples"].as_array().unwrap().len(),
                    1,
                    "{metric} on {backend}"
                );
                if *backend != "native" && root && unit != Unit::Mib {
                    assert!(
                        row["vs_overlay"].as_f64().unwrap() > 0.0,
                        "{metric} on {backend}"
                    );
                }
            }
            assert!(
                stdout.contains(metric),
                "{metric} missing from the terminal table"
            );
            if root {
                assert!(
                    svg.contains(&format!(">{metric}</text>")),
                    "{metric} missing from the chart"
                );
            }
        }
    }
    let rss = rows
        .iter()
        .find(|r| r["metric"] == "daemon-peak-rss" && r["backend"] == "stratafs");
    assert!(
        rss.and_then(|r| r["median"].as_f64())
            .is_some_and(|m| m > 0.0),
        "no daemon memory for stratafs"
    );
}
