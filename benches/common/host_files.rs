//! Pieces the registry benches share: running a command, and a test image's files copied
//! from this machine.

use std::path::Path;
use std::process::Command;

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
