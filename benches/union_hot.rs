//! Micro-benchmarks of the union's hot paths, without FUSE: building a merged directory from
//! its layers, and looking names up in a deep stack once the directory is known.
//!
//! Run with `cargo bench --bench union_hot`. Prints the median of several runs per case.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use strata::union::inode::ROOT_ID;
use strata::union::options::MountOptions;
use strata::union::Union;

const FILES_PER_DIR: usize = 10_000;
const RUNS: usize = 7;

/// `layers` layers, each holding `dir/` with its share of FILES_PER_DIR files (layer i holds
/// the names with index % layers == i, so every layer contributes to the merged directory).
fn make_stack(root: &Path, layers: usize) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    for l in 0..layers {
        let d = root.join(format!("layer{l}"));
        std::fs::create_dir_all(d.join("dir")).unwrap();
        for i in (l..FILES_PER_DIR).step_by(layers) {
            std::fs::write(d.join("dir").join(format!("f{i:05}")), b"x").unwrap();
        }
        dirs.push(d);
    }
    dirs
}

fn open_union(lowers: &[std::path::PathBuf]) -> Union {
    let joined = lowers
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = MountOptions::parse([format!("lowerdir={joined}").as_str()]).unwrap();
    Union::new(opts).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: only check that
    // this one builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("union_hot: run with `cargo bench --bench union_hot`");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<OsString> = (0..FILES_PER_DIR)
        .map(|i| OsString::from(format!("f{i:05}")))
        .collect();
    println!("{:<44} {:>12}", "case", "median");
    for layers in [2usize, 20, 100] {
        let lowers = make_stack(&tmp.path().join(format!("s{layers}")), layers);
        let build: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let u = open_union(&lowers);
                let t = Instant::now();
                let (dir, _) = u.lookup(ROOT_ID, "dir".as_ref()).unwrap();
                u.listing(&dir).unwrap();
                t.elapsed()
            })
            .collect();
        println!(
            "{:<44} {:>10.3?}",
            format!("merged dir build, {FILES_PER_DIR} names, {layers} layers"),
            median(build)
        );
        let listings: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let u = open_union(&lowers);
                let (dir, _) = u.lookup(ROOT_ID, "dir".as_ref()).unwrap();
                let t = Instant::now();
                u.opendir(dir.id).unwrap();
                let mut offset = 0;
                let mut seen = 0;
                loop {
                    let batch = u.readdir(dir.id, offset, 1024).unwrap();
                    let Some(last) = batch.last() else { break };
                    offset = last.next_offset;
                    seen += batch.len();
                }
                assert_eq!(seen, FILES_PER_DIR + 2);
                t.elapsed()
            })
            .collect();
        println!(
            "{:<44} {:>10.3?}",
            format!("opendir + readdir all, {layers} layers"),
            median(listings)
        );
        let u = open_union(&lowers);
        let (dir, _) = u.lookup(ROOT_ID, "dir".as_ref()).unwrap();
        u.listing(&dir).unwrap();
        let lookups: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                for n in &names {
                    let (node, _) = u.lookup(dir.id, n).unwrap();
                    u.forget(node.id, 1);
                }
                t.elapsed() / FILES_PER_DIR as u32
            })
            .collect();
        println!(
            "{:<44} {:>10.3?}",
            format!("lookup in a known dir, {layers} layers (each)"),
            median(lookups)
        );
    }
}
