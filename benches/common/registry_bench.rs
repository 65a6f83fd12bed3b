//! What the registry benches (`registry_pull`, `lazy_pull`) share: their scratch directory
//! and run count, running a command, a test image's files copied from this machine, medians.

use std::path::Path;
use std::process::Command;

/// `$STRATA_BENCH_RUNS` (default 3).
pub fn runs() -> usize {
    std::env::var("STRATA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// A temp dir named `prefix...` under `$STRATA_BENCH_TMP` (default: the system's).
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var_os("STRATA_BENCH_TMP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap()
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Run `c`; its stdout, or a panic naming the command and its output.
pub fn sh(c: &mut Command) -> String {
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
pub fn fill(src: &Path, dst: &Path, cap: u64) -> u64 {
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
