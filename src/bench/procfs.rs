//! What the kernel tells about memory and caches, and how to empty the caches for cold runs.

use std::fs;

use super::error::{io_err, Result};

/// True when this process may drop caches and mount kernel overlayfs.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Writes dirty data back and drops the page, dentry and inode caches, so the next run is cold.
pub fn drop_caches() -> Result<()> {
    rustix::fs::sync();
    let path = "/proc/sys/vm/drop_caches";
    fs::write(path, b"3\n").map_err(io_err("write", path))
}

/// The page cache's size in bytes (`Cached:` of `/proc/meminfo`).
pub fn cached_bytes() -> Result<u64> {
    let path = "/proc/meminfo";
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    Ok(kib_field(&text, "Cached:").unwrap_or(0) * 1024)
}

/// Peak resident memory in bytes of a process (`VmHWM:` of `/proc/PID/status`), if it runs.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, "VmHWM:").map(|kib| kib * 1024)
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "MemTotal: 100 kB\nCached:   2048 kB\nSwapCached: 5 kB\n";
        assert_eq!(kib_field(text, "Cached:"), Some(2048));
        assert_eq!(kib_field(text, "VmHWM:"), None);
    }

    #[test]
    fn own_peak_rss_is_known() {
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
        assert!(cached_bytes().unwrap() > 0);
    }
}
