//! Layers handed to us through an idmapped mount.
//!
//! Rootful podman 4 with `--uidmap` and a mount program bind-mounts every lower layer with an
//! idmapping (`mapped/N` under the container's storage directory) *and* passes the same mapping
//! as `uidmapping=`/`gidmapping=`. Read through the idmapped mount, the layers already show the
//! container's ids; mapping them a second time turns every owner into the overflow id, and the
//! container cannot write its own root directory. Kernel overlayfs has no mapping option and
//! takes the idmapped view as it is. When we are given a mapping we must see the layers as
//! stored, so a layer on an idmapped mount is reopened through a mount of the same filesystem
//! that is not idmapped, found in `/proc/self/mountinfo` and accepted only if it is the very
//! same directory (same device and inode).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use crate::overlay::fd_path::proc_path;

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    /// Mount id (what `statx` reports as `stx_mnt_id`).
    id: u64,
    /// `major:minor` of the filesystem.
    dev: String,
    /// The directory of the filesystem this mount shows at its mount point.
    root: PathBuf,
    /// Where it is mounted, in our mount namespace.
    mount_point: PathBuf,
    /// Whether the mount carries an idmapping.
    idmapped: bool,
}

/// What happened to a layer on an idmapped mount.
#[derive(Debug)]
pub enum Unmapped {
    /// The layer is not on an idmapped mount: keep it as it is.
    NotIdmapped,
    /// The same directory, reached through a mount without an idmapping.
    Reopened(OwnedFd, PathBuf),
    /// On an idmapped mount, and no other mount of its filesystem reaches it.
    NotFound,
}

/// If `root` (a layer's root directory) is on an idmapped mount, the same directory reached
/// through a mount of its filesystem that is not idmapped.
pub fn unmapped_view(root: BorrowedFd<'_>) -> Result<Unmapped, Errno> {
    let mnt_id = rfs::statx(root, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?.stx_mnt_id;
    let info = std::fs::read("/proc/self/mountinfo").map_err(|e| super::errno_of(&e))?;
    let mounts = parse_mountinfo(&info);
    let Some(mount) = mounts.iter().find(|m| m.id == mnt_id) else {
        return Ok(Unmapped::NotIdmapped);
    };
    if !mount.idmapped {
        return Ok(Unmapped::NotIdmapped);
    }
    let here = PathBuf::from(OsString::from_vec(
        rfs::readlink(proc_path(root, None), Vec::new())?.into_bytes(),
    ));
    let Ok(within_mount) = here.strip_prefix(&mount.mount_point) else {
        return Ok(Unmapped::NotFound);
    };
    let in_fs = mount.root.join(within_mount);
    let want = rfs::fstat(root)?;
    for other in mounts.iter().filter(|m| !m.idmapped && m.dev == mount.dev) {
        let Ok(below) = in_fs.strip_prefix(&other.root) else {
            continue;
        };
        let candidate = other.mount_point.join(below);
        let Ok(fd) = rfs::open(
            &candidate,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        match rfs::fstat(fd.as_fd()) {
            Ok(st) if st.st_dev == want.st_dev && st.st_ino == want.st_ino => {
                return Ok(Unmapped::Reopened(fd, candidate));
            }
            _ => continue,
        }
    }
    Ok(Unmapped::NotFound)
}

/// The mounts listed in `text` (the format of `/proc/self/mountinfo`).
fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let id = std::str::from_utf8(fields.first()?).ok()?.parse().ok()?;
            let dev = String::from_utf8_lossy(fields.get(2)?).into_owned();
            let root = unescape(fields.get(3)?);
            let mount_point = unescape(fields.get(4)?);
            let idmapped = fields
                .get(5)?
                .split(|b| *b == b',')
                .any(|o| o == b"idmapped");
            Some(MountEntry {
                id,
                dev,
                root,
                mount_point,
                idmapped,
            })
        })
        .collect()
}

/// A mountinfo path field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let digits = &field[i + 1..i + 4];
            if let Some(v) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SAMPLE: &[u8] = b"22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
47 22 254:0 /srv/graph /srv/graph rw,relatime - ext4 /dev/vda rw\n\
91 47 254:0 /srv/graph /srv/graph/ab/mapped/0 rw,relatime,idmapped - ext4 /dev/vda rw\n\
92 22 0:41 / /mnt/with\\040space rw,nosuid - tmpfs tmpfs rw\n";

    #[test]
    fn parses_ids_roots_and_the_idmapped_flag() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].id, 91);
        assert_eq!(m[2].dev, "254:0");
        assert_eq!(m[2].root, Path::new("/srv/graph"));
        assert_eq!(m[2].mount_point, Path::new("/srv/graph/ab/mapped/0"));
        assert!(m[2].idmapped);
        assert!(!m[1].idmapped);
        assert_eq!(m[3].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn an_ordinary_directory_is_not_idmapped() {
        let fd = rfs::open(
            std::env::temp_dir(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        assert!(matches!(
            unmapped_view(fd.as_fd()),
            Ok(Unmapped::NotIdmapped)
        ));
    }
}
