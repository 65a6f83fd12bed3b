//! `cargo bench --bench lazy_pull`: time from `strata pull` to the end of a first command in
//! a container, for a lazy pull (`pull --lazy`: TOCs only, files fetched on first read) and a
//! full pull of the same eStargz image, in the same run; with the bytes each fetched from the
//! registry. The registry is reached through an in-bench TCP proxy that limits the
//! registry-to-client direction to `$STRATA_BENCH_MBIT` (default 100) Mbit/s and counts the
//! bytes, on loopback only.
//!
//! The image (about 150 MB: busybox, /usr/bin, /usr/share of this machine) is built with
//! strata and pushed with `push --estargz`. Two workloads: `busybox echo 1` (reads one file)
//! and reading every file (`find / -xdev -type f -exec cat {} +`, which must succeed). Median of
//! `$STRATA_BENCH_RUNS` (default 3). Needs root, docker-registry and busybox-static.

#[path = "../tests/common/registry.rs"]
#[allow(dead_code)]
mod registry;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn sh(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Copy regular files of `src` (sorted, recursively) into `dst` until `cap` bytes.
fn fill(src: &Path, dst: &Path, cap: u64) -> u64 {
    let mut total = 0;
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = match std::fs::read_dir(&d) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => continue,
        };
        entries.sort();
        for p in entries.into_iter().rev() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && total + m.len() <= cap {
                let to = dst.join(p.strip_prefix(src).unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                if std::fs::copy(&p, &to).is_ok() {
                    total += m.len();
                }
            }
        }
    }
    total
}

/// A TCP proxy to a loopback port whose answers share one link of `mbit` Mbit/s.
struct Throttle {
    port: u16,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    fn start(upstream: u16, mbit: f64) -> Throttle {
        let port = registry::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let link = Arc::new(Mutex::new(Instant::now()));
        let (b, s) = (bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_in, mut u_out) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut u_out);
                    let _ = u_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut u_in, mut c_out) = (up, client);
                let (b, link) = (b.clone(), link.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match u_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let due = {
                            let mut next = link.lock().unwrap();
                            let start = (*next).max(Instant::now());
                            *next = start + Duration::from_secs_f64(n as f64 * 8.0 / (mbit * 1e6));
                            *next
                        };
                        if let Some(d) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                        b.fetch_add(n as u64, Ordering::Relaxed);
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Throttle { port, bytes, stop }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("lazy_pull: run with `cargo bench --bench lazy_pull`");
        return;
    }
    let runs: usize = std::env::var("STRATA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mbit: f64 = std::env::var("STRATA_BENCH_MBIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0);
    let strata = PathBuf::from(env!("CARGO_BIN_EXE_strata"));
    let stratafs = PathBuf::from(env!("CARGO_BIN_EXE_stratafs"));
    let base = std::env::var_os("STRATA_BENCH_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("strata-lazy-bench-")
        .tempdir_in(&base)
        .unwrap();
    let dir = tmp.path();
    let reg = registry::Registry::start(dir);
    let st = |root: &Path, args: &[&str]| {
        let mut c = Command::new(&strata);
        c.args(args)
            .env("STRATA_ROOT", root)
            .env("STRATA_STRATAFS", &stratafs);
        c
    };
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static");
    let a = fill(Path::new("/usr/bin"), &ctx.join("part1"), 80 << 20);
    let b = fill(Path::new("/usr/share"), &ctx.join("part2"), 70 << 20);
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY part1 /usr/bin\nCOPY part2 /usr/share\n",
    )
    .unwrap();
    let src = dir.join("src-store");
    sh(&mut st(
        &src,
        &["build", "-q", "-t", "bench:1", ctx.to_str().unwrap()],
    ));
    sh(&mut st(
        &src,
        &[
            "push",
            "-q",
            "--estargz",
            "bench:1",
            &format!("{}/bench/lazy:1", reg.host()),
        ],
    ));
    let proxy = Throttle::start(reg.port, mbit);
    let img = format!("127.0.0.1:{}/bench/lazy:1", proxy.port);
    println!(
        "image: 3 eStargz layers, {:.0} MB of files; registry behind a {mbit} Mbit/s proxy",
        (a + b) as f64 / 1e6
    );

    let workloads: [(&str, &[&str]); 2] = [
        ("echo 1 (one file)", &["/bin/busybox", "echo", "1"]),
        (
            "read every file",
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "find / -xdev -type f -exec cat {} + > /dev/null && echo 1",
            ],
        ),
    ];
    println!(
        "\n{:<20} {:<6} {:>10} {:>12} {:>10}",
        "workload", "pull", "median s", "MB fetched", "vs full"
    );
    for (name, cmd) in workloads {
        let mut full_t = 0.0;
        for lazy in [false, true] {
            let (mut ts, mut mb) = (Vec::new(), 0.0);
            for i in 0..runs {
                let root = dir.join(format!("s-{lazy}-{i}"));
                let before = proxy.bytes.load(Ordering::Relaxed);
                let start = Instant::now();
                let mut pull = vec!["pull", "-q"];
                if lazy {
                    pull.push("--lazy");
                }
                pull.push(&img);
                sh(&mut st(&root, &pull));
                let mut run = vec!["run", "--rm", img.as_str()];
                run.extend_from_slice(cmd);
                let out = sh(&mut st(&root, &run));
                ts.push(start.elapsed().as_secs_f64());
                assert_eq!(out.trim(), "1");
                mb = (proxy.bytes.load(Ordering::Relaxed) - before) as f64 / 1e6;
                let _ = std::fs::remove_dir_all(&root);
            }
            let m = median(ts);
            if !lazy {
                full_t = m;
            }
            println!(
                "{name:<20} {:<6} {m:>10.2} {mb:>12.1} {:>9.2}x",
                if lazy { "lazy" } else { "full" },
                m / full_t
            );
        }
    }
    drop(proxy);
    drop(reg);
}
