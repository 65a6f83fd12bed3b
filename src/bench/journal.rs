//! Whether the benchmark's directories are on ext4 without a journal, where file creations
//! made within minutes of many deletions wait on the inode allocator (see
//! [`super::graveyard`]). The benchmark does not delete during its runs, but what the machine
//! deleted just before (a build, another benchmark) still slows the rows that create files,
//! so the report says so.

use std::fs;
use std::path::Path;

/// `EXT4_SUPER_MAGIC` (also ext2 and ext3).
const EXT4_MAGIC: i64 = 0xEF53;

/// The block device name of the ext4 filesystem holding `path` when that filesystem has no
/// journal; `None` when it has one, is not ext4, or cannot be told.
pub fn ext4_without_journal(path: &Path) -> Option<String> {
    let fs = rustix::fs::statfs(path).ok()?;
    if fs.f_type as i64 != EXT4_MAGIC {
        return None;
    }
    let dev = rustix::fs::stat(path).ok()?.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let device = fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let name = device.file_name()?.to_str()?.to_string();
    // ext4 names the thread that commits its journal here; "<none>" without a journal.
    let task = fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")).ok()?;
    (task.trim() == "<none>").then_some(name)
}

/// The note for the report when `path` (a fixture or scratch directory) is on such a
/// filesystem.
pub fn note(path: &Path) -> Option<String> {
    ext4_without_journal(path).map(|dev| {
        format!(
            "{} is on ext4 without a journal ({dev}): there, files created within minutes of \
             many deletions (a build, an earlier benchmark) wait on the inode allocator, which \
             slows the rows that create files (untar, chmod, rm-lower) by up to 10x at random; \
             a --fixture-dir and --scratch-dir on a filesystem with a journal avoid it (see \
             docs/bench.md)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_that_is_not_ext4_is_never_reported() {
        // /proc is procfs on every Linux system.
        assert_eq!(ext4_without_journal(Path::new("/proc")), None);
        assert_eq!(ext4_without_journal(Path::new("/no/such/dir")), None);
    }
}
