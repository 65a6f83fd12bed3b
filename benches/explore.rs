//! The explorer on big stacks: time to the `--ci` report (the real `strata` binary, with its
//! peak memory), time to the first full screen of the UI, and the redraw after a key press on
//! a tree of 200,000 files; against a reference measured in the same run: `tar -tf` of the
//! same layers as tars, the least work dive does (it reads every layer tar, and also hashes
//! every file and builds a tree per layer).
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
    for (name, layers, files) in [
        ("200k files", 3usize, 200_000usize),
        ("60 layers", 60, 60_000),
    ] {
        let root = tmp.path().join(name.replace(' ', "-"));
        let dirs = make_stack(&root.join("layers"), layers, files);
        std::fs::create_dir_all(root.join("tars")).unwrap();
        let t = tars(&dirs, &root.join("tars"));
        case(name, &dirs, &t);
    }
}
