//! `strata diff`: what a container's writable layer added (A), changed (C) and deleted (D).
//!
//! A path in the upper that exists in a lower layer is C; otherwise A. A 0/0 character device
//! or a `.wh.NAME` file is a whiteout: D. Directories that only hold changes below them are
//! reported C, as docker does.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{io_err, Result};

/// One line of diff output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `A`, `C` or `D`.
    pub kind: char,
    /// Absolute path inside the container.
    pub path: String,
}

/// Changes in `upper` relative to `lower` (bottom first), sorted by path.
pub fn changes(upper: &Path, lower: &[PathBuf]) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    walk(upper, Path::new(""), lower, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn in_lower(rel: &Path, lower: &[PathBuf]) -> bool {
    lower
        .iter()
        .any(|l| std::fs::symlink_metadata(l.join(rel)).is_ok())
}

fn walk(upper: &Path, rel: &Path, lower: &[PathBuf], out: &mut Vec<Change>) -> Result<()> {
    let dir = upper.join(rel);
    for e in std::fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))? {
        let e = e.map_err(io_err("readdir"))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == ".wh..wh..opq" {
            continue;
        }
        let md = e.metadata().map_err(io_err("stat"))?;
        if let Some(target) = name.strip_prefix(".wh.") {
            out.push(Change {
                kind: 'D',
                path: format!("/{}", rel.join(target).display()),
            });
            continue;
        }
        let r = rel.join(&*name);
        let shown = format!("/{}", r.display());
        if rel.as_os_str().is_empty()
            && super::RUNTIME_MOUNT_POINTS.contains(&&*name)
            && md.is_dir()
            && !in_lower(&r, lower)
            && std::fs::read_dir(e.path())
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
        {
            continue;
        }
        if md.file_type().is_char_device() && md.rdev() == 0 {
            out.push(Change {
                kind: 'D',
                path: shown,
            });
            continue;
        }
        let kind = if in_lower(&r, lower) { 'C' } else { 'A' };
        out.push(Change { kind, path: shown });
        if md.is_dir() {
            walk(upper, &r, lower, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_change_delete() {
        let d = tempfile::tempdir().unwrap();
        let (lo, up) = (d.path().join("lo"), d.path().join("up"));
        std::fs::create_dir_all(lo.join("etc")).unwrap();
        std::fs::write(lo.join("etc/a"), "").unwrap();
        std::fs::write(lo.join("gone"), "").unwrap();
        std::fs::create_dir_all(up.join("etc")).unwrap();
        std::fs::write(up.join("etc/a"), "x").unwrap();
        std::fs::write(up.join("new"), "").unwrap();
        std::fs::write(up.join(".wh.gone"), "").unwrap();
        std::fs::create_dir_all(up.join("proc")).unwrap();
        let c = changes(&up, &[lo]).unwrap();
        let s: Vec<String> = c.iter().map(|c| format!("{} {}", c.kind, c.path)).collect();
        assert_eq!(s, ["C /etc", "C /etc/a", "D /gone", "A /new"]);
    }
}
