//! `cargo bench --bench registry_pull`: pulling a multi-layer image of about 150 MB from a
//! loopback `docker-registry` into an empty store, strata against `skopeo copy docker://…
//! oci:DIR` and `podman pull` in the same run, with each one's wall time (median of
//! `$STRATA_BENCH_RUNS`, default 3) and peak RSS (GNU time's `%M`); then the second pull of
//! an image sharing all but its last layer, which must fetch only that layer.
//!
//! The image is built with strata from this machine's files (busybox, then about 80 MB of
//! /usr/bin and 70 MB of /usr/share: real binaries and text, compressed as usual). Needs root,
//! docker-registry, skopeo, podman and GNU time; the registry listens on a free port of
//! 5100-5199; everything lives under a temp dir removed at the end.

#[path = "../tests/common/registry.rs"]
#[allow(dead_code)]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "common/registry_bench.rs"]
mod registry_bench;
use registry_bench::{fill, median, runs, scratch, sh};

/// One timed run of `cmd` under GNU time: (seconds, peak RSS in MiB).
fn measure(cmd: Command) -> (f64, f64) {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect();
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f")
        .arg("STRATA-BENCH-RSS %M")
        .arg(prog)
        .args(args)
        .envs(envs);
    let start = Instant::now();
    let o = t.output().expect("GNU time (Debian package time)");
    let secs = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{t:?}: {err}");
    let kib: f64 = err
        .lines()
        .find_map(|l| l.strip_prefix("STRATA-BENCH-RSS "))
        .and_then(|v| v.trim().parse().ok())
        .expect("GNU time's %M");
    (secs, kib / 1024.0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("registry_pull: run with `cargo bench --bench registry_pull`");
        return;
    }
    let runs = runs();
    let strata = PathBuf::from(env!("CARGO_BIN_EXE_strata"));
    let stratafs = PathBuf::from(env!("CARGO_BIN_EXE_stratafs"));
    let tmp = scratch("strata-pull-bench-");
    let dir = tmp.path();
    let reg = registry::Registry::start(dir);
    let st = |root: &Path, args: &[&str]| {
        let mut c = Command::new(&strata);
        c.args(args)
            .env("STRATA_ROOT", root)
            .env("STRATA_STRATAFS", &stratafs);
        c
    };

    // The image: busybox, ~80 MB of /usr/bin, ~70 MB of /usr/share; a second one replaces
    // the last layer by ~5 MB of /usr/libexec... on top of the first two.
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static");
    let a = fill(Path::new("/usr/bin"), &ctx.join("part1"), 80 << 20);
    let b = fill(Path::new("/usr/share"), &ctx.join("part2"), 70 << 20);
    let c = fill(Path::new("/usr/libexec"), &ctx.join("part3"), 5 << 20);
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY part1 /usr/bin\nCOPY part2 /usr/share\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile.2"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY part1 /usr/bin\nCOPY part3 /usr/libexec\n",
    )
    .unwrap();
    let src = dir.join("src-store");
    let ctx_s = ctx.to_str().unwrap();
    sh(&mut st(&src, &["build", "-q", "-t", "bench:1", ctx_s]));
    sh(&mut st(
        &src,
        &[
            "build",
            "-q",
            "-f",
            &format!("{ctx_s}/Dockerfile.2"),
            "-t",
            "bench:2",
            ctx_s,
        ],
    ));
    let img1 = format!("{}/bench/app:1", reg.host());
    let img2 = format!("{}/bench/app:2", reg.host());
    sh(&mut st(&src, &["push", "-q", "bench:1", &img1]));
    sh(&mut st(&src, &["push", "-q", "bench:2", &img2]));
    let compressed: u64 = {
        let v: serde_json::Value = serde_json::from_str(&sh(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{img1}"),
        ])))
        .unwrap();
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum()
    };
    println!(
        "image: 3 layers, {:.0} MB uncompressed ({:.0} MB compressed); second image: +{:.1} MB layer",
        (a + b + 1_000_000) as f64 / 1e6,
        compressed as f64 / 1e6,
        c as f64 / 1e6
    );

    let podman_conf = dir.join("containers.conf");
    std::fs::write(
        &podman_conf,
        "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
    )
    .unwrap();
    let mut rows: Vec<(&str, Vec<f64>, f64)> = Vec::new();
    let (mut ts, mut rss) = (Vec::new(), 0f64);
    for i in 0..runs {
        let root = dir.join(format!("strata-{i}"));
        let (t, m) = measure(st(&root, &["pull", "-q", &img1]));
        ts.push(t);
        rss = rss.max(m);
        // Each run's tree stays until the end: on ext4 without a journal, files created
        // within minutes of many deletions wait on the inode allocator's scan for recently
        // deleted inodes (`recently_deleted` in fs/ext4/ialloc.c), so a removal here would
        // slow the next run's extraction.
    }
    rows.push(("strata pull", ts, rss));
    let (mut ts, mut rss) = (Vec::new(), 0f64);
    for i in 0..runs {
        let out = dir.join(format!("oci-{i}"));
        let mut c = Command::new("skopeo");
        c.args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{img1}"))
            .arg(format!("oci:{}:x", out.display()));
        let (t, m) = measure(c);
        ts.push(t);
        rss = rss.max(m);
    }
    rows.push(("skopeo copy docker:// oci:", ts, rss));
    let (mut ts, mut rss) = (Vec::new(), 0f64);
    let mut podmen = Vec::new();
    for i in 0..runs {
        let root = dir.join(format!("podman-{i}"));
        // podman wants a runroot of at most 50 characters.
        let runroot = PathBuf::from(format!("/tmp/spb-{}-{i}", std::process::id()));
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(root.join("graph"))
            .arg("--runroot")
            .arg(&runroot)
            .args([
                "--storage-driver",
                "overlay",
                "pull",
                "-q",
                "--tls-verify=false",
                &img1,
            ])
            .env("CONTAINERS_CONF", &podman_conf);
        let (t, m) = measure(c);
        ts.push(t);
        rss = rss.max(m);
        podmen.push((root, runroot));
    }
    rows.push(("podman pull", ts, rss));
    for (root, runroot) in podmen {
        let _ = Command::new("podman")
            .arg("--root")
            .arg(root.join("graph"))
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "overlay", "system", "reset", "-f"])
            .env("CONTAINERS_CONF", &podman_conf)
            .output();
        let _ = std::fs::remove_dir_all(&runroot);
    }

    let podman_t = median(rows[2].1.clone());
    println!(
        "\n{:<28} {:>10} {:>14} {:>12}",
        "pull of 1 image", "median s", "peak RSS MiB", "vs podman"
    );
    for (name, ts, rss) in &rows {
        let m = median(ts.clone());
        println!("{name:<28} {m:>10.2} {rss:>14.1} {:>11.2}x", m / podman_t);
    }

    // The second image shares all but its last layer with the first.
    let root = dir.join("strata-shared");
    sh(&mut st(&root, &["pull", "-q", &img1]));
    let mut c = st(&root, &["pull", &img2]);
    c.env("NO_COLOR", "1");
    let start = Instant::now();
    let o = c.output().unwrap();
    let t = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let fetched = err
        .lines()
        .find(|l| l.contains("layer(s) fetched"))
        .unwrap_or("")
        .to_string();
    println!("\nsecond pull, all but one layer present: {t:.2} s; {fetched}");
    assert!(fetched.contains(": 1 layer(s) fetched"), "{err}");
}
