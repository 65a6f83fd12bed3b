//! The on-disk overlay format: whiteouts, opaque directories and private xattrs, in every form
//! that kernel overlayfs, fuse-overlayfs and OCI tooling write.
//!
//! Whiteouts (a name deleted from the layers below):
//! - `OverlayRemoval`: a character device with device number 0/0 (the kernel's form);
//! - `OciRemoval`: a file named `.wh.NAME` (OCI/AUFS; containers-storage writes these).
//!
//! Opaque directories (nothing below shows through):
//! - `OverlayOpaque`: xattr `trusted.overlay.opaque=y` (root) or `user.overlay.opaque=y`
//!   (rootless, the kernel's `userxattr`);
//! - `OciOpaque`: a file named `.wh..wh..opq` inside the directory.
//!
//! None of these markers is ever shown to a client.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Prefix of an OCI whiteout file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque marker file.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The kernel's opaque xattr as root writes it.
pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// The kernel's opaque xattr in `userxattr` (rootless) form.
pub const USER_OPAQUE: &str = "user.overlay.opaque";

/// The kernel's metacopy marker as root writes it.
pub const TRUSTED_METACOPY: &str = "trusted.overlay.metacopy";
/// The kernel's metacopy marker in `userxattr` form.
pub const USER_METACOPY: &str = "user.overlay.metacopy";

/// Which xattr namespace the upper layer's private markers are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNamespace {
    /// `trusted.overlay.*`: needs CAP_SYS_ADMIN in the initial namespace.
    Trusted,
    /// `user.overlay.*`: what the kernel uses with `userxattr`, for rootless mounts.
    User,
}

impl XattrNamespace {
    /// Name of the metacopy marker (the data is still in the lower file) in this namespace.
    pub fn metacopy(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => TRUSTED_METACOPY,
            XattrNamespace::User => USER_METACOPY,
        }
    }

    /// Name of the opaque xattr in this namespace.
    pub fn opaque(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => TRUSTED_OPAQUE,
            XattrNamespace::User => USER_OPAQUE,
        }
    }
    /// Name of the mark of a lazy layer's file whose bytes are not here yet (its value is
    /// the file's path in the layer's TOC).
    pub const fn lazy(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.strata.lazy",
            XattrNamespace::User => "user.overlay.strata.lazy",
        }
    }
}

/// File capabilities: dropped by the kernel on any write, so kept aside around one.
pub const FILE_CAPS: &str = "security.capability";

/// Run `write` on `fd` and put back the file capabilities it had (a write drops them).
pub fn keeping_caps<T>(
    fd: BorrowedFd<'_>,
    write: impl FnOnce() -> Result<T, Errno>,
) -> Result<T, Errno> {
    let mut buf = vec![0u8; 256];
    let caps = rfs::fgetxattr(fd, FILE_CAPS, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec());
    let out = write()?;
    if let Some(caps) = caps {
        rfs::fsetxattr(fd, FILE_CAPS, &caps, rfs::XattrFlags::empty())?;
    }
    Ok(out)
}

/// What one raw directory entry of a layer means to the union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// An ordinary entry shown to clients.
    Visible(FileType),
    /// A whiteout hiding the name it stands for in the layers below.
    Whiteout(WhiteoutForm),
    /// The `.wh..wh..opq` marker: the directory is opaque.
    OpaqueMarker,
}

/// The two ways a whiteout is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// A 0/0 character device under the deleted name.
    Device,
    /// A `.wh.NAME` file.
    OciFile,
}

/// Whether a client-supplied or on-disk xattr name belongs to overlay bookkeeping, which is
/// never shown to or settable by clients.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// If `name` is an OCI whiteout file name, the name it deletes.
pub fn oci_whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OPAQUE_MARKER {
        return None;
    }
    name.strip_prefix(WHITEOUT_PREFIX).filter(|t| !t.is_empty())
}

/// Whether a stat result is a kernel whiteout (character device 0/0).
pub fn is_device_whiteout(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Whether the directory open as `dir` (a readable, non-`O_PATH` fd) carries an opaque xattr.
pub fn has_opaque_xattr(dir: BorrowedFd<'_>) -> bool {
    // Most directories have no xattrs at all: one list answers for both names. A long list
    // (ERANGE) or an odd filesystem falls through to asking for each name.
    let mut names = [0u8; 256];
    if let Ok(n) = rfs::flistxattr(dir, &mut names) {
        let opaque_listed = names[..n]
            .split(|b| *b == 0)
            .any(|x| x == TRUSTED_OPAQUE.as_bytes() || x == USER_OPAQUE.as_bytes());
        if !opaque_listed {
            return false;
        }
    }
    let mut buf = [0u8; 4];
    for name in [TRUSTED_OPAQUE, USER_OPAQUE] {
        if let Ok(n) = rfs::fgetxattr(dir, name, &mut buf) {
            if &buf[..n] == b"y" {
                return true;
            }
        }
    }
    false
}

/// Whether the file `name` in `dir` carries a metacopy marker (its data is below).
pub fn has_metacopy(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    let path = super::fd_path::proc_path(dir, Some(name));
    [TRUSTED_METACOPY, USER_METACOPY]
        .iter()
        .any(|x| rfs::lgetxattr(&path, *x, &mut [0u8; 0][..]).is_ok())
}

/// Write a whiteout for `name` in `dir`: a 0/0 device, or a `.wh.NAME` file where `mknod` is
/// refused (some rootless setups).
pub fn create_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<WhiteoutForm, Errno> {
    match rfs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0) {
        Ok(()) => Ok(WhiteoutForm::Device),
        Err(Errno::PERM) | Err(Errno::ACCESS) => {
            let mut wh = WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(name.as_bytes());
            let fd = rfs::openat(
                dir,
                OsStr::from_bytes(&wh),
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o000),
            )?;
            drop(fd);
            Ok(WhiteoutForm::OciFile)
        }
        Err(e) => Err(e),
    }
}

/// Remove the whiteout for `name` in `dir`, whichever form it has.
pub fn remove_whiteout(dir: BorrowedFd<'_>, name: &OsStr, form: WhiteoutForm) -> Result<(), Errno> {
    match form {
        WhiteoutForm::Device => rfs::unlinkat(dir, name, AtFlags::empty()),
        WhiteoutForm::OciFile => {
            let mut wh = WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(name.as_bytes());
            rfs::unlinkat(dir, OsStr::from_bytes(&wh), AtFlags::empty())
        }
    }
}

/// Mark the directory open as `dir` opaque in namespace `ns`.
pub fn set_opaque(dir: BorrowedFd<'_>, ns: XattrNamespace) -> Result<(), Errno> {
    rfs::fsetxattr(dir.as_fd(), ns.opaque(), b"y", rfs::XattrFlags::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(oci_whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(oci_whiteout_target(b".wh..wh..opq"), None);
        assert_eq!(oci_whiteout_target(b".wh."), None);
        assert_eq!(oci_whiteout_target(b"foo"), None);
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(b"trusted.overlay.opaque"));
        assert!(is_private_xattr(b"user.overlay.origin"));
        assert!(!is_private_xattr(b"user.overlayish"));
        assert!(!is_private_xattr(b"user.foo"));
    }
}
