//! The workloads of the comparison: what each one does on a mounted tree, and how it is timed.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::deadline::run_command;
use super::error::{io_err, BenchError, Result};
use super::fixture::{materialize, Fixture, LayerSet};
use super::graveyard::Graveyard;

/// How one external command of a workload may take at most.
const COMMAND_DEADLINE: Duration = Duration::from_secs(600);

/// What a number measures, and which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Elapsed time; lower is better.
    Seconds,
    /// Throughput in MiB/s; higher is better.
    MibPerSecond,
    /// Operations per second; higher is better.
    Iops,
    /// Copies of a file held in the page cache; lower is better.
    Copies,
    /// Memory in MiB; lower is better.
    Mib,
    /// A ratio between two of the numbers above; lower is better.
    Ratio,
    /// Time of one operation in microseconds; lower is better.
    Microseconds,
    /// FUSE requests the kernel sent per file of a workload (stratafs only); lower is better.
    RequestsPerFile,
    /// FUSE requests the kernel sent for a workload (stratafs only); lower is better.
    Requests,
}

impl Unit {
    /// True when a larger number is the better result.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Unit::MibPerSecond | Unit::Iops)
    }

    /// Short label for tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::MibPerSecond => "MiB/s",
            Unit::Iops => "IOPS",
            Unit::Copies => "copies",
            Unit::Mib => "MiB",
            Unit::Ratio => "x",
            Unit::Microseconds => "us",
            Unit::RequestsPerFile => "req/file",
            Unit::Requests => "requests",
        }
    }
}

/// One measured number of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Metric name, e.g. `find-cold` or `pagecache-4mounts`.
    pub metric: &'static str,
    /// What the value measures.
    pub unit: Unit,
    /// The value.
    pub value: f64,
}

/// When the caches are emptied and the mount made anew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temperature {
    /// A fresh mount and dropped caches before every run (needs root).
    Cold,
    /// One mount, one untimed warm-up run, then the timed runs.
    Warm,
    /// A fresh mount (and upper) for every run, caches left as they are: for workloads that
    /// change the tree.
    Fresh,
}

/// Which layer set a workload runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    /// The two-layer image.
    Main,
    /// The deep stack.
    Deep,
    /// The same tree over two layers.
    Shallow,
}

/// A workload of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `find` of the whole tree.
    Find(Temperature),
    /// `lstat` of every entry of the tree.
    StatAll(Temperature),
    /// Reading the names of the wide directory.
    ListWide(Temperature),
    /// Reading the big file start to end.
    SeqRead(Temperature),
    /// 4 KiB reads at random offsets of the big file.
    RandRead(Temperature),
    /// Extracting the untar archive into the mount.
    Untar,
    /// `rm -rf` of the tree just extracted.
    RmUntarred,
    /// `rm -rf` of a lower subtree.
    RmLower,
    /// Appending one byte to the big lower file, which copies it up (the lower file read
    /// once before, untimed, so that each run copies from the page cache).
    AppendCopyUp,
    /// chmod of lower files.
    Chmod,
    /// Four mounts of the same layers each reading the big file.
    FourMounts,
    /// `find` over the deep stack.
    FindDeep,
    /// `find` over the same tree in two layers.
    FindShallow,
    /// One round trip to the filesystem: `getxattr` of a name that does not exist, which no
    /// kernel cache answers.
    RoundTrip,
}

/// Calls timed by the round-trip workload.
pub const ROUND_TRIPS: u32 = 20_000;

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 19] = [
        Workload::Find(Temperature::Cold),
        Workload::Find(Temperature::Warm),
        Workload::StatAll(Temperature::Cold),
        Workload::StatAll(Temperature::Warm),
        Workload::ListWide(Temperature::Cold),
        Workload::ListWide(Temperature::Warm),
        Workload::SeqRead(Temperature::Cold),
        Workload::SeqRead(Temperature::Warm),
        Workload::RandRead(Temperature::Cold),
        Workload::RandRead(Temperature::Warm),
        Workload::Untar,
        Workload::RmUntarred,
        Workload::RmLower,
        Workload::AppendCopyUp,
        Workload::Chmod,
        Workload::FourMounts,
        Workload::FindDeep,
        Workload::FindShallow,
        Workload::RoundTrip,
    ];

    /// The name used on the command line and in reports.
    pub fn id(self) -> &'static str {
        use Temperature::Cold;
        match self {
            Workload::Find(Cold) => "find-cold",
            Workload::Find(_) => "find-warm",
            Workload::StatAll(Cold) => "stat-cold",
            Workload::StatAll(_) => "stat-warm",
            Workload::ListWide(Cold) => "list-cold",
            Workload::ListWide(_) => "list-warm",
            Workload::SeqRead(Cold) => "seqread-cold",
            Workload::SeqRead(_) => "seqread-warm",
            Workload::RandRead(Cold) => "randread-cold",
            Workload::RandRead(_) => "randread-warm",
            Workload::Untar => "untar",
            Workload::RmUntarred => "rm-untarred",
            Workload::RmLower => "rm-lower",
            Workload::AppendCopyUp => "append-copyup",
            Workload::Chmod => "chmod",
            Workload::FourMounts => "four-mounts",
            Workload::FindDeep => "find-deep-cold",
            Workload::FindShallow => "find-shallow-cold",
            Workload::RoundTrip => "roundtrip",
        }
    }

    /// The metrics a run reports, with their units.
    pub fn metrics(self) -> Vec<(&'static str, Unit)> {
        match self {
            Workload::SeqRead(_) => vec![(self.id(), Unit::MibPerSecond)],
            Workload::RandRead(_) => vec![(self.id(), Unit::Iops)],
            Workload::RoundTrip => vec![(self.id(), Unit::Microseconds)],
            Workload::FourMounts => {
                vec![
                    ("pagecache-4mounts", Unit::Copies),
                    ("read-mounts-2to4", Unit::MibPerSecond),
                ]
            }
            _ => vec![(self.id(), Unit::Seconds)],
        }
    }

    /// Picks workloads by id; a bare prefix (`find`) selects every workload whose id starts
    /// with it followed by `-`.
    pub fn select(names: &[String]) -> Result<Vec<Workload>> {
        let mut picked = Vec::new();
        for name in names {
            let before = picked.len();
            for w in Workload::ALL {
                let id = w.id();
                if (id == name
                    || id
                        .strip_prefix(name.as_str())
                        .is_some_and(|r| r.starts_with('-')))
                    && !picked.contains(&w)
                {
                    picked.push(w);
                }
            }
            if picked.len() == before && !Workload::ALL.iter().any(|w| w.id() == name) {
                let known: Vec<&str> = Workload::ALL.iter().map(|w| w.id()).collect();
                return Err(BenchError::Config(format!(
                    "unknown workload {name:?} (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(picked)
    }

    /// When caches are dropped and mounts made.
    pub fn temperature(self) -> Temperature {
        match self {
            Workload::Find(t)
            | Workload::StatAll(t)
            | Workload::ListWide(t)
            | Workload::SeqRead(t)
            | Workload::RandRead(t) => t,
            Workload::FindDeep | Workload::FindShallow | Workload::FourMounts => Temperature::Cold,
            Workload::RoundTrip => Temperature::Warm,
            Workload::Untar
            | Workload::RmUntarred
            | Workload::RmLower
            | Workload::AppendCopyUp
            | Workload::Chmod => Temperature::Fresh,
        }
    }

    /// The layers it is mounted on.
    pub fn layers(self) -> Layers {
        match self {
            Workload::FindDeep => Layers::Deep,
            Workload::FindShallow => Layers::Shallow,
            _ => Layers::Main,
        }
    }

    /// The request-count row of this workload on stratafs: metric, unit, and the number of
    /// files to divide the count by.
    pub fn request_metric(self, fixture: &Fixture) -> Option<(&'static str, Unit, f64)> {
        let files = f64::from(fixture.spec.untar_files);
        match self {
            Workload::Untar => Some(("requests-untar", Unit::RequestsPerFile, files)),
            Workload::RmUntarred => Some(("requests-rm-untarred", Unit::RequestsPerFile, files)),
            Workload::RmLower => Some(("requests-rm-lower", Unit::Requests, 1.0)),
            _ => None,
        }
    }

    /// Untimed preparation on a fresh mount.
    pub fn setup(self, root: &Path, fixture: &Fixture) -> Result<()> {
        match self {
            Workload::RmUntarred => {
                untar(root, fixture)?;
                rustix::fs::sync();
            }
            // Every copy-up reads the lower file from the page cache: otherwise the first
            // backend to run pays for reading what earlier workloads left uncached.
            Workload::AppendCopyUp => {
                read_all(&fixture.main.layers[1].join("big/bigfile"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the workload once on the tree at `root` and returns what it measured. The four
    /// mounts workload is run by [`super::runner`] instead, which owns the mounts.
    pub fn run(self, root: &Path, fixture: &Fixture) -> Result<Vec<Sample>> {
        let spec = &fixture.spec;
        let start = Instant::now();
        let value = match self {
            Workload::Find(_) | Workload::FindDeep | Workload::FindShallow => {
                find(root)?;
                start.elapsed().as_secs_f64()
            }
            Workload::StatAll(_) => {
                let n = stat_all(root)?;
                let expected = spec.dirs as u64 * spec.files_per_dir as u64;
                if n < expected {
                    return Err(BenchError::Config(format!(
                        "stat saw {n} entries, the fixture has more than {expected}"
                    )));
                }
                start.elapsed().as_secs_f64()
            }
            Workload::ListWide(_) => {
                let dir = root.join("wide");
                let n = fs::read_dir(&dir)
                    .map_err(io_err("read dir", &dir))?
                    .count();
                if n != spec.wide_entries as usize {
                    return Err(BenchError::Config(format!(
                        "{} lists {n} entries, not {}",
                        dir.display(),
                        spec.wide_entries
                    )));
                }
                start.elapsed().as_secs_f64()
            }
            Workload::SeqRead(_) => {
                let bytes = read_all(&root.join("big/bigfile"))?;
                mib_per_s(bytes, start.elapsed())
            }
            Workload::RandRead(_) => {
                random_read_iops(&root.join("big/bigfile"), spec.random_reads)?
            }
            Workload::Untar => {
                untar(root, fixture)?;
                start.elapsed().as_secs_f64()
            }
            Workload::RmUntarred => {
                rm_rf(&root.join("untar"))?;
                start.elapsed().as_secs_f64()
            }
            Workload::RmLower => {
                rm_rf(&root.join("tree/g00"))?;
                start.elapsed().as_secs_f64()
            }
            Workload::AppendCopyUp => {
                let path = root.join("big/bigfile");
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                file.write_all(b"!").map_err(io_err("append", &path))?;
                drop(file);
                start.elapsed().as_secs_f64()
            }
            Workload::Chmod => {
                let targets = spec.chmod_targets();
                if targets.len() != spec.chmod_files as usize {
                    return Err(BenchError::Config(format!(
                        "only {} files to chmod, not {}",
                        targets.len(),
                        spec.chmod_files
                    )));
                }
                for rel in targets {
                    let path = root.join(rel);
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                        .map_err(io_err("chmod", &path))?;
                }
                start.elapsed().as_secs_f64()
            }
            Workload::RoundTrip => round_trip_us(&root.join("big/bigfile"))?,
            Workload::FourMounts => unreachable!("the runner measures four mounts itself"),
        };
        Ok(vec![Sample {
            metric: self.id(),
            unit: self.metrics()[0].1,
            value,
        }])
    }

    /// Undoes the changes of a run on the native copy, which has no upper layer to throw away.
    pub fn restore_native(self, set: &LayerSet, fixture: &Fixture) -> Result<()> {
        let root = &set.native;
        match self {
            // Not removed: see [`super::graveyard`].
            Workload::Untar | Workload::RmUntarred => {
                Graveyard::within(&fixture.root).bury(&root.join("untar"))
            }
            Workload::RmLower => {
                let bottom_up: Vec<&Path> = set.layers.iter().rev().map(PathBuf::as_path).collect();
                materialize(&bottom_up, root, Path::new("tree/g00"))
            }
            Workload::AppendCopyUp => {
                let path = root.join("big/bigfile");
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                file.set_len(fixture.spec.big_file_bytes)
                    .map_err(io_err("truncate", &path))
            }
            Workload::Chmod => {
                for rel in fixture.spec.chmod_targets() {
                    let path = root.join(rel);
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                        .map_err(io_err("chmod", &path))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Microseconds per `getxattr` of a missing name on `path`: a request that crosses to the
/// filesystem every time (the kernel caches no xattrs), and whose work there is one lookup.
fn round_trip_us(path: &Path) -> Result<f64> {
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..ROUND_TRIPS {
        match rustix::fs::getxattr(path, "user.strata-bench-missing", &mut buf[..]) {
            Ok(_) | Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(io_err("getxattr", path)(e.into())),
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / ROUND_TRIPS as f64)
}

/// MiB per second for `bytes` read in `elapsed`.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

fn find(root: &Path) -> Result<()> {
    run_command(
        Command::new("find")
            .arg(root)
            .args(["-fprint", "/dev/null"]),
        COMMAND_DEADLINE,
    )
    .map(drop)
}

fn untar(root: &Path, fixture: &Fixture) -> Result<()> {
    run_command(
        Command::new("tar")
            .arg("-xf")
            .arg(&fixture.untar_archive)
            .arg("-C")
            .arg(root),
        COMMAND_DEADLINE,
    )
    .map(drop)
}

fn rm_rf(path: &Path) -> Result<()> {
    run_command(Command::new("rm").arg("-rf").arg(path), COMMAND_DEADLINE).map(drop)
}

/// `lstat`s every entry under `root`, returning how many it saw.
fn stat_all(root: &Path) -> Result<u64> {
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let path = entry.map_err(io_err("read dir", &dir))?.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            count += 1;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(count)
}

/// Reads a file start to end in 1 MiB blocks, returning its length.
pub fn read_all(path: &Path) -> Result<u64> {
    let mut file = fs::File::open(path).map_err(io_err("open", path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf).map_err(io_err("read", path))? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// 4 KiB random reads per second: with fio where it is installed, else with `pread` at
/// offsets from a fixed seed, so every backend reads the same blocks.
fn random_read_iops(path: &Path, reads: u32) -> Result<f64> {
    let size = fs::metadata(path).map_err(io_err("stat", path))?.len();
    if super::backend::find_in_path("fio").is_some() {
        return fio_iops(path, size, reads);
    }
    let file = fs::File::open(path).map_err(io_err("open", path))?;
    let mut rng = fastrand::Rng::with_seed(42);
    let blocks = (size / 4096).max(1);
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    for _ in 0..reads {
        let offset = rng.u64(0..blocks) * 4096;
        file.read_at(&mut buf, offset)
            .map_err(io_err("pread", path))?;
    }
    Ok(reads as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

fn fio_iops(path: &Path, size: u64, reads: u32) -> Result<f64> {
    let out = run_command(
        Command::new("fio")
            .args([
                "--name=randread",
                "--readonly",
                "--rw=randread",
                "--bs=4k",
                "--ioengine=psync",
            ])
            .args([
                "--randrepeat=1",
                "--randseed=42",
                "--norandommap",
                "--invalidate=0",
                "--output-format=json",
            ])
            .arg(format!("--filename={}", path.display()))
            .arg(format!("--size={size}"))
            .arg(format!("--io_size={}", reads as u64 * 4096)),
        COMMAND_DEADLINE,
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let read = &json["jobs"][0]["read"];
    // fio's own IOPS figure divides by a runtime in whole milliseconds, too coarse for short
    // runs; with one synchronous job, IOPS is the inverse of the mean latency.
    let from_latency = read["lat_ns"]["mean"]
        .as_f64()
        .filter(|ns| *ns > 0.0)
        .map(|ns| 1e9 / ns);
    from_latency
        .or_else(|| read["iops"].as_f64())
        .filter(|v| *v > 0.0)
        .ok_or_else(|| BenchError::Command {
            program: "fio".into(),
            message: "no read IOPS in its JSON output".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_selectable() {
        let ids: std::collections::HashSet<_> = Workload::ALL.iter().map(|w| w.id()).collect();
        assert_eq!(ids.len(), Workload::ALL.len());
        let picked = Workload::select(&["seqread".into(), "chmod".into(), "untar".into()]).unwrap();
        let want = [
            Workload::SeqRead(Temperature::Cold),
            Workload::SeqRead(Temperature::Warm),
            Workload::Chmod,
            Workload::Untar,
        ];
        assert_eq!(picked, want);
        assert!(Workload::select(&["nope".into()]).is_err());
    }
}
