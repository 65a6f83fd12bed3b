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

    // Finished uppers wait in graveyards during the run (untimed removals would slow the
    // next run's creations) and are gone at the end; so is the native copy's untarred tree.
    let fixture = tmp.path().join("fixture");
    for dir in [fixture.join("graveyard"), fixture.join("scratch/graveyard")] {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    assert!(!fixture.join("native/main/untar").exists());
    let scratch: Vec<_> = std::fs::read_dir(fixture.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(scratch.is_empty(), "scratch holds {scratch:?}");
    // The untar archive, written without staging files, is what `tar` lists.
    let listed = Command::new("tar")
        .arg("-tvf")
        .arg(fixture.join("untar.tar"))
        .output()
        .unwrap();
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines[0].starts_with("drwxr-xr-x 0/0 ") && lines[0].ends_with(" untar/"),
        "{}",
        lines[0]
    );
    assert!(lines[1].ends_with(" untar/u000/"), "{}", lines[1]);
    assert!(
        lines[2].starts_with("-rw-r--r-- 0/0             512 1970-01-01")
            && lines[2].ends_with(" untar/u000/f00000"),
        "{}",
        lines[2]
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
    // Rows come in the order the workloads were asked for, though rm-untarred runs last.
    let position = |metric: &str| rows.iter().position(|r| r["metric"] == metric).unwrap();
    assert!(position("untar") < position("rm-untarred"));
    assert!(position("rm-untarred") < position("rm-lower"));
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

/// An ext4 filesystem in a file, loop-mounted at `dir`; unmounted on drop.
struct LoopExt4 {
    dir: PathBuf,
}

impl LoopExt4 {
    fn new(at: &Path, journal: bool) -> LoopExt4 {
        let image = at.with_extension("img");
        let dir = at.to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(256 << 20).unwrap();
        let features = if journal {
            "has_journal"
        } else {
            "^has_journal"
        };
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", features])
            .arg(&image)
            .output()
            .expect("mkfs.ext4 (Debian: e2fsprogs)");
        assert!(made.status.success(), "{made:?}");
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(mounted.status.success(), "loop mount: {mounted:?}");
        LoopExt4 { dir }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Figures for creating files on ext4 without a journal are skewed by what was deleted just
/// before (see src/bench/graveyard.rs): the report says when the fixture is on one.
#[test]
fn a_fixture_on_ext4_without_a_journal_is_noted_and_one_with_a_journal_is_not() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: loop mounts need root");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("bench-journal")
        .tempdir_in(temp_base())
        .unwrap();
    for journal in [false, true] {
        let fs = LoopExt4::new(&tmp.path().join(format!("journal-{journal}")), journal);
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["bench", "--tiny", "--no-progress", "--backends", "native"])
            .args(["--workloads", "roundtrip"])
            .arg("--fixture-dir")
            .arg(fs.dir.join("fixture"))
            .arg("--out")
            .arg(fs.dir.join("out"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert_eq!(
            text.contains("on ext4 without a journal (loop"),
            !journal,
            "journal {journal}: {text}"
        );
    }
}
