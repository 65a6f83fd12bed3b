//! The container root file system: a `stratafs` mount of the image layers plus the upper.
//!
//! `STRATA_MOUNT=overlay` switches to kernel overlayfs (developer use only); the default is
//! the `stratafs` next to the running executable, or `$STRATA_STRATAFS`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Error, Result};

/// The stratafs binary to use.
pub fn stratafs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_STRATAFS") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("stratafs")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("stratafs"))
}

/// Lowerdir option value: top layer leftmost, colons escaped.
fn lowerdir_arg(lower_bottom_first: &[PathBuf]) -> String {
    lower_bottom_first
        .iter()
        .rev()
        .map(|p| p.to_string_lossy().replace(':', "\\:"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Mount layers (bottom first) + upper at `target`.
pub fn mount_rootfs(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    mount_union(lower, Some((upper, work)), target)
}

/// Mount layers (bottom first) read-only at `target`, without set-id programs or device
/// nodes: a view to look at, not a root to run.
pub fn mount_read_only(lower: &[PathBuf], target: &Path) -> Result<()> {
    mount_union(lower, None, target)
}

/// Mount layers (bottom first) at `target`, with a writable upper and work dir or read-only.
fn mount_union(lower: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<()> {
    if lower.is_empty() {
        return Err(Error::Mount("an image needs at least one layer".into()));
    }
    let mut opts = format!("lowerdir={}", lowerdir_arg(lower));
    if let Some((upper, work)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    // Layers pulled lazily (and not complete yet) are filled by stratafs from the registry.
    let lazy: Vec<PathBuf> = lower
        .iter()
        .filter_map(|d| crate::image::lazy::spec_of_dir(d))
        .collect();
    let overlay = std::env::var("STRATA_MOUNT").as_deref() == Ok("overlay");
    if !lazy.is_empty() {
        if overlay {
            return Err(Error::Mount(
                "the image was pulled lazily: its layers need stratafs (unset STRATA_MOUNT, or pull it in full)".into(),
            ));
        }
        opts.push_str(&format!(",lazy={}", lowerdir_arg(&lazy)));
        // STRATA_LAZY_FETCH=off: fetch only what the container reads (no background fetch).
        if std::env::var("STRATA_LAZY_FETCH").as_deref() == Ok("off") {
            opts.push_str(",lazyfetch=off");
        }
    }
    let mut cmd = if overlay {
        let mut c = Command::new("mount");
        c.args(["-t", "overlay", "overlay", "-o"]);
        if upper.is_none() {
            opts.push_str(",ro");
        }
        c.arg(&opts).arg(target);
        c
    } else {
        // A union without an upper is read-only: stratafs mounts it `ro` (EROFS).
        let root = rustix::process::geteuid().is_root() && upper.is_some();
        let mut c = Command::new(stratafs_binary());
        c.arg("-o").arg(rootfs_options(&opts, root));
        c.arg(target);
        c
    };
    tracing::debug!(?cmd, "mounting");
    let out = cmd
        .output()
        .map_err(|e| Error::Mount(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Mount(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The stratafs options of a container's root filesystem: as docker mounts one (an overlay
/// without `nosuid` or `nodev`), set-id programs and device nodes work in the container (its
/// device cgroup decides which devices open). Only a daemon running as root may mount so.
fn rootfs_options(layers: &str, root: bool) -> String {
    if root {
        format!("{layers},suid,dev")
    } else {
        layers.to_string()
    }
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// Whether the root file system at `target` of a running container has lost its daemon: not
/// mounted any more, or every access fails with `ENOTCONN` (`ECONNABORTED` after a forced
/// abort) because the `stratafs` serving it exited. The container's processes then fail on
/// every file they touch; only a restart (a new mount) or removal helps. A daemon that does not
/// answer within two seconds is not called lost: it may be busy.
pub fn rootfs_lost(target: &Path) -> bool {
    if !is_mounted(target) {
        return true;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let t = target.to_path_buf();
    // statfs always reaches the daemon (a stat may be answered from the attribute cache); a
    // thread, so a stopped daemon cannot hang the caller.
    std::thread::spawn(move || {
        let _ = tx.send(rustix::fs::statfs(&t));
    });
    matches!(
        rx.recv_timeout(std::time::Duration::from_secs(2)),
        Ok(Err(
            rustix::io::Errno::NOTCONN | rustix::io::Errno::CONNABORTED
        ))
    )
}

/// Whether anything is mounted at or below `dir`, from /proc/self/mountinfo.
pub fn mounted_under(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape_mountinfo(m)).starts_with(dir))
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount the rootfs if mounted; the FUSE daemon exits when its mount goes away.
pub fn unmount_rootfs(target: &Path) -> Result<()> {
    if !is_mounted(target) {
        return Ok(());
    }
    for args in [&["-u"][..], &["-uz"][..]] {
        let ok = Command::new("fusermount3")
            .args(args)
            .arg(target)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok && !is_mounted(target) {
            return Ok(());
        }
    }
    let _ = Command::new("umount").arg(target).output();
    if is_mounted(target) {
        let _ = Command::new("umount").arg("-l").arg(target).output();
    }
    if is_mounted(target) {
        return Err(Error::Mount(format!(
            "{} is still mounted",
            target.display()
        )));
    }
    wait_daemon_exit(target);
    Ok(())
}

/// Wait (up to 5 s) until no daemon serving `target` is alive: an exiting FUSE daemon
/// unmounts its mount point by path, which would take down a new mount made there meanwhile
/// (seen as "executable file not found" when a container restarts).
fn wait_daemon_exit(target: &Path) {
    let needle = target.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && daemon_alive(&needle) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether a live (non-zombie) stratafs process names `mountpoint` on its command line.
fn daemon_alive(mountpoint: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let mut args = cmd.split(|b| *b == 0).map(String::from_utf8_lossy);
        let is_stratafs = args.next().is_some_and(|a| a.ends_with("stratafs"));
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        is_stratafs && !zombie && args.any(|a| a == mountpoint)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_is_top_first_and_escaped() {
        let l = vec![PathBuf::from("/a"), PathBuf::from("/b:c")];
        assert_eq!(lowerdir_arg(&l), "/b\\:c:/a");
    }

    #[test]
    fn rootfs_allows_set_id_programs_and_devices_as_root_only() {
        assert_eq!(rootfs_options("lowerdir=/l", true), "lowerdir=/l,suid,dev");
        assert_eq!(rootfs_options("lowerdir=/l", false), "lowerdir=/l");
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/x\\040y"), "/x y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
