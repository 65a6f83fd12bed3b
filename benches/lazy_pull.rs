//! `cargo bench --bench lazy_pull`: time from `strata pull` to the end of a first command in
//! a container, for a lazy pull (`pull --lazy`: TOCs only, files fetched on first read) and a
//! full pull of the same eStargz image, in the same run; with the bytes each fetched from the
//! registry. The registry is reached through an in-bench TCP proxy that limits the
//! registry-to-client direction to `$STRATA_BENCH_MBIT` (default 100) Mbit/s and counts the
//! bytes, on loopback only.
//!
//! The image (about 150 MB of files in 3 layers: this Debian machine's own python3 with the
//! libraries it needs, its stdlib and dist-packages, and /usr/share up to the total) is built
//! with strata and pushed with `push --estargz`, and again converted with `--prefetch` naming
//! the files python reads at start-up (`-pf`). Two workloads: `python3 -c 'print(1)'`, timed
//! from `pull` to its first output (the measure), and reading every file (`find / -xdev
//! -type f -exec cat {} +`, which must succeed), timed to its end. Median of
//! `$STRATA_BENCH_RUNS` (default 3); `$STRATA_BENCH_ONLY=WORD` runs the workloads named so. Needs root, docker-registry, busybox-static and python3.

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

#[path = "common/registry_bench.rs"]
mod registry_bench;
use registry_bench::{fill, median, runs, scratch, sh};

/// The files of shared library dependencies of `exe` that ldd names (the dynamic loader too).
fn libraries(exe: &str) -> Vec<PathBuf> {
    sh(Command::new("ldd").arg(exe))
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=> ") {
                Some((_, rest)) => rest,
                None => l,
            };
            let p = p.split_whitespace().next()?;
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

/// Make the build context of a ~150 MB Debian+python image from this machine's own python3:
/// `base/` (busybox, the interpreter and the libraries it needs), `py/` (its stdlib and
/// dist-packages, under /usr/lib), `share/` (/usr/share up to the total). Returns the file
/// bytes and the files python reads at start-up (what a user would give `--prefetch`).
fn python_context(ctx: &Path) -> (u64, Vec<String>) {
    let exe = std::fs::canonicalize("/usr/bin/python3").expect("Debian's python3");
    let exe = exe.to_str().unwrap().to_string();
    let base = ctx.join("base");
    let copy = |from: &Path, to: &Path| -> u64 {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()))
    };
    let mut total = copy(Path::new("/bin/busybox"), &base.join("bin/busybox"));
    total += copy(Path::new(&exe), &base.join(&exe[1..]));
    let name = Path::new(&exe).file_name().unwrap();
    std::os::unix::fs::symlink(name, base.join("usr/bin/python3")).unwrap();
    let mut prefetch = vec![exe.clone()];
    for lib in libraries(&exe) {
        let real = std::fs::canonicalize(&lib).unwrap();
        // Merged /usr: the libraries live under /usr/lib, /lib is a link to it; the loader
        // is where the executable names it.
        let at = if lib.starts_with("/lib64") {
            lib.clone()
        } else {
            let rel = lib
                .strip_prefix("/usr/lib")
                .or_else(|_| lib.strip_prefix("/lib"))
                .expect("a library under /lib or /usr/lib");
            Path::new("/usr/lib").join(rel)
        };
        total += copy(&real, &base.join(at.strip_prefix("/").unwrap()));
        prefetch.push(at.to_str().unwrap().to_string());
    }
    std::os::unix::fs::symlink("usr/lib", base.join("lib")).unwrap();
    let py = ctx.join("py");
    for d in ["python3.11", "python3/dist-packages"] {
        total += fill(&Path::new("/usr/lib").join(d), &py.join(d), u64::MAX);
    }
    total += fill(
        Path::new("/usr/share"),
        &ctx.join("share"),
        (150 << 20) - total,
    );
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY base /\nCOPY py /usr/lib\nCOPY share /usr/share\n",
    )
    .unwrap();
    // The modules python imports at start-up, as it reports them itself.
    let list = sh(Command::new(&exe).env_clear().args([
        "-c",
        "import sys\nfor m in list(sys.modules.values()):\n    c = getattr(m, '__cached__', None)\n    if c: print(c)",
    ]));
    for c in list.lines() {
        let p = Path::new(c);
        let inside = ["/usr/lib/python3.11/", "/usr/lib/python3/dist-packages/"]
            .iter()
            .any(|d| c.starts_with(d));
        if inside && p.is_file() && !prefetch.iter().any(|x| x == c) {
            prefetch.push(c.to_string());
        }
    }
    // And the path configuration files site.py reads at start-up.
    let site = Path::new("/usr/lib/python3/dist-packages");
    for e in std::fs::read_dir(site).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "pth") && p.is_file() {
            prefetch.push(p.to_str().unwrap().to_string());
        }
    }
    (total, prefetch)
}

/// Run `c`, returning its output and the seconds from `start` to its first byte of output.
fn run_first_output(c: &mut Command, start: Instant) -> (String, f64) {
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    let n = out.read(&mut first).unwrap();
    let t = start.elapsed().as_secs_f64();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{c:?}: {st}");
    (format!("{}{rest}", String::from_utf8_lossy(&first[..n])), t)
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

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("lazy_pull: run with `cargo bench --bench lazy_pull`");
        return;
    }
    let runs = runs();
    let mbit: f64 = std::env::var("STRATA_BENCH_MBIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0);
    let strata = PathBuf::from(env!("CARGO_BIN_EXE_strata"));
    let stratafs = PathBuf::from(env!("CARGO_BIN_EXE_stratafs"));
    let tmp = scratch("strata-lazy-bench-");
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
    let (bytes, prefetch) = python_context(&ctx);
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
    // The same image converted as a user would for a python workload: the files python
    // reads at start-up (its binary, libraries and the modules it imports) before the
    // prefetch landmark.
    let mut convert = vec!["convert", "--estargz"];
    for p in &prefetch {
        convert.extend(["--prefetch", p.as_str()]);
    }
    convert.extend(["bench:1", "bench-pf:1"]);
    sh(&mut st(&src, &convert));
    sh(&mut st(
        &src,
        &[
            "push",
            "-q",
            "bench-pf:1",
            &format!("{}/bench/lazy-pf:1", reg.host()),
        ],
    ));
    let proxy = Throttle::start(reg.port, mbit);
    let img = format!("127.0.0.1:{}/bench/lazy:1", proxy.port);
    let img_pf = format!("127.0.0.1:{}/bench/lazy-pf:1", proxy.port);
    println!(
        "image: 3 eStargz layers (python3, its stdlib, /usr/share), {:.0} MB of files, \
         {} files prefetched in the -pf image; registry behind a {mbit} Mbit/s proxy",
        bytes as f64 / 1e6,
        prefetch.len()
    );

    let workloads: [(&str, &[&str]); 2] = [
        ("python3 print(1)", &["/usr/bin/python3", "-c", "print(1)"]),
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
        "\n{:<18} {:<8} {:>7} {:>9} {:>9} {:>11} {:>8}",
        "workload", "pull", "pull s", "median s", "to out s", "MB fetched", "vs full"
    );
    // `$STRATA_BENCH_ONLY`: only the workloads whose names hold it.
    let only = std::env::var("STRATA_BENCH_ONLY").unwrap_or_default();
    for (w, (name, cmd)) in workloads.into_iter().enumerate() {
        if !name.contains(only.as_str()) {
            continue;
        }
        let mut full_t = 0.0;
        let modes: &[(&str, bool, &str)] = if name.starts_with("python") {
            &[
                ("full", false, &img),
                ("lazy", true, &img),
                ("lazy-pf", true, &img_pf),
            ]
        } else {
            &[("full", false, &img), ("lazy", true, &img)]
        };
        for &(mode, lazy, image) in modes {
            let (mut ts, mut firsts, mut mb, mut pulls) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..runs {
                // A store of its own for every workload, pull mode and run.
                let root = dir.join(format!("s{w}-{mode}-{i}"));
                let before = proxy.bytes.load(Ordering::Relaxed);
                let start = Instant::now();
                let mut pull = vec!["pull", "-q"];
                if lazy {
                    pull.push("--lazy");
                }
                pull.push(image);
                sh(&mut st(&root, &pull));
                pulls.push(start.elapsed().as_secs_f64());
                let mut run = vec!["run", "--rm", image];
                run.extend_from_slice(cmd);
                let mut run = st(&root, &run);
                // `$STRATA_BENCH_LOGS`: keep each run's messages (with `RUST_LOG` set, the
                // daemon's too) in that directory.
                if let Some(logs) = std::env::var_os("STRATA_BENCH_LOGS") {
                    let f = std::fs::File::create(Path::new(&logs).join(format!("{mode}-{i}.log")));
                    run.stderr(f.unwrap());
                }
                let (out, first) = run_first_output(&mut run, start);
                ts.push(start.elapsed().as_secs_f64());
                firsts.push(first);
                assert_eq!(out.trim(), "1");
                mb.push((proxy.bytes.load(Ordering::Relaxed) - before) as f64 / 1e6);
                // The stores stay until the end (the scratch dir goes then): on ext4 without
                // a journal, files created within minutes of many deletions wait on the inode
                // allocator's scan for recently deleted inodes (`recently_deleted` in
                // fs/ext4/ialloc.c), and the next run's pull would pay for this one's removal.
            }
            let (m, f) = (median(ts), median(firsts));
            if mode == "full" {
                full_t = f;
            }
            println!(
                "{name:<18} {mode:<8} {:>7.2} {m:>9.2} {f:>9.2} {:>11.1} {:>7.2}x",
                median(pulls),
                median(mb),
                f / full_t
            );
        }
    }
    drop(proxy);
    drop(reg);
}
