//! Unpack a layer tar into an overlay-format directory, never writing outside it.
//!
//! Every entry is resolved component by component beneath the destination with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): an entry with `..`, an absolute path, a parent
//! that is a symlink, or a hard link to something outside the layer is refused with an error
//! naming the entry. OCI whiteouts become the overlay forms stratafs and the kernel read:
//! `.wh.NAME` a 0/0 character device (or the `.wh.` file kept where `mknod` is refused), and
//! `.wh..wh..opq` an opaque xattr on its directory (or the marker kept where xattrs are refused).
//! Overlay-private xattrs in a tar (`trusted.overlay.*`, `user.overlay.*`) are dropped: a layer
//! must not be able to redirect or hide what another layer holds.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tar::EntryType;

use crate::overlay::beneath::BENEATH;
use crate::overlay::format::{self, XattrNamespace, OPAQUE_MARKER};

use super::{Error, Result};

/// How to unpack.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Give entries the tar's owner (needs privilege); otherwise files belong to the caller.
    pub chown: bool,
    /// Namespace of the opaque xattr written for `.wh..wh..opq`.
    pub xattrs: XattrNamespace,
    /// Turn OCI whiteout entries into overlay whiteouts (layers); `false` writes them as the
    /// plain files they are (`ADD` of a tar).
    pub whiteouts: bool,
    /// Skip the eStargz bookkeeping entries at the root (the TOC and the landmarks): the
    /// layer is an eStargz blob, whose lazy view does not show them either.
    pub estargz: bool,
}

impl UnpackOptions {
    /// What the current process can do: owners and trusted xattrs as root, neither otherwise.
    pub fn for_current_user() -> UnpackOptions {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions {
            chown: root,
            xattrs: if root {
                XattrNamespace::Trusted
            } else {
                XattrNamespace::User
            },
            whiteouts: true,
            estargz: false,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    /// Number of tar entries applied.
    pub entries: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
}

/// A directory whose final mode and times are applied after all its children are written.
struct PendingDir {
    components: Vec<OsString>,
    mode: u32,
    mtime: i64,
}

/// Unpack the tar read from `input` into the existing, empty directory `dest`. `what` names the
/// layer in error messages.
pub fn unpack(
    input: impl Read,
    dest: &Path,
    what: &str,
    opts: UnpackOptions,
) -> Result<UnpackStats> {
    let root = rfs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        what: format!("open {}", dest.display()),
        source: e.into(),
    })?;
    unpack_at(input, root, what, opts)
}

/// Unpack the tar read from `input` beneath the directory open as `root`.
pub fn unpack_at(
    input: impl Read,
    root: OwnedFd,
    what: &str,
    opts: UnpackOptions,
) -> Result<UnpackStats> {
    let mut u = Unpacker {
        root,
        what,
        opts,
        stats: UnpackStats::default(),
        pending: Vec::new(),
        parent_cache: None,
    };
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(|e| u.tar_error("read", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| u.tar_error("read", e))?;
        u.apply(entry)?;
    }
    u.finish_dirs()?;
    Ok(u.stats)
}

struct Unpacker<'a> {
    root: OwnedFd,
    what: &'a str,
    opts: UnpackOptions,
    stats: UnpackStats,
    pending: Vec<PendingDir>,
    /// The last parent directory opened, reused for consecutive entries of one directory.
    parent_cache: Option<(Vec<OsString>, OwnedFd)>,
}

/// Split a tar path into normal components, refusing anything that could leave the root.
fn components(raw: &[u8]) -> std::result::Result<Vec<OsString>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if raw.contains(&0) {
        return Err("NUL in path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' in path"),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

impl Unpacker<'_> {
    fn tar_error(&self, doing: &str, e: io::Error) -> Error {
        Error::Tar {
            what: format!("{doing} {}", self.what),
            source: e,
        }
    }

    fn unsafe_entry(&self, entry: &[u8], why: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            layer: self.what.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            why: why.into(),
        }
    }

    fn io(&self, entry: &[u8], doing: &str, e: impl Into<io::Error>) -> Error {
        Error::Io {
            what: format!("{}: {doing} {}", self.what, String::from_utf8_lossy(entry)),
            source: e.into(),
        }
    }

    /// Open the directory `comps` beneath the root, creating missing directories (0755, as
    /// docker does for parents a tar leaves implicit).
    fn open_parent(&mut self, comps: &[OsString], entry: &[u8]) -> Result<BorrowedFd<'_>> {
        let cached = matches!(&self.parent_cache, Some((c, _)) if c.as_slice() == comps);
        if !cached {
            let mut cur: Option<OwnedFd> = None;
            for c in comps {
                let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.root.as_fd());
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
                let fd = match rfs::openat2(base, c.as_os_str(), flags, Mode::empty(), BENEATH) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => {
                        match rfs::mkdirat(base, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(self.io(entry, "create parent of", e)),
                        }
                        rfs::openat2(base, c.as_os_str(), flags, Mode::empty(), BENEATH)
                            .map_err(|e| self.parent_error(entry, e))?
                    }
                    Err(e) => return Err(self.parent_error(entry, e)),
                };
                cur = Some(fd);
            }
            let fd = match cur {
                Some(fd) => fd,
                None => rfs::openat2(
                    self.root.as_fd(),
                    ".",
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    BENEATH,
                )
                .map_err(|e| self.io(entry, "open root for", e))?,
            };
            self.parent_cache = Some((comps.to_vec(), fd));
        }
        Ok(self.parent_cache.as_ref().expect("cached").1.as_fd())
    }

    /// An owned fd of the parent directory `comps` (see [`Unpacker::open_parent`]), so the
    /// unpacker can be borrowed again while it is used.
    fn parent_fd(&mut self, comps: &[OsString], entry: &[u8]) -> Result<OwnedFd> {
        self.open_parent(comps, entry)?
            .try_clone_to_owned()
            .map_err(|e| self.io(entry, "duplicate the parent fd of", e))
    }

    fn parent_error(&self, entry: &[u8], e: Errno) -> Error {
        match e {
            Errno::LOOP | Errno::NOTDIR | Errno::XDEV => {
                self.unsafe_entry(entry, "a parent directory is a symlink or not a directory")
            }
            e => self.io(entry, "open parent of", e),
        }
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let mut comps = components(&raw).map_err(|why| self.unsafe_entry(&raw, why))?;
        let Some(name) = comps.pop() else {
            return Ok(()); // the root itself: its metadata belongs to the lower layers
        };
        if self.opts.estargz && comps.is_empty() && crate::estargz::writer::is_format_entry(&raw) {
            return Ok(());
        }
        self.stats.entries += 1;
        let header = entry.header().clone();
        let mode = header
            .mode()
            .map_err(|e| self.tar_error("read mode in", e))?
            & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0) as i64;

        if name.as_bytes() == OPAQUE_MARKER && self.opts.whiteouts {
            self.open_parent(&comps, &raw)?; // creates the directory if the tar left it implicit
            return self.mark_opaque(&comps, &raw);
        }
        if let Some(target) =
            format::oci_whiteout_target(name.as_bytes()).filter(|_| self.opts.whiteouts)
        {
            let target = OsStr::from_bytes(target).to_os_string();
            let parent = self.parent_fd(&comps, &raw)?;
            self.clear(parent.as_fd(), &target, false, &raw)?;
            format::create_whiteout(parent.as_fd(), &target)
                .map_err(|e| self.io(&raw, "write whiteout", e))?;
            return Ok(());
        }

        let xattrs = self.xattrs(&mut entry, &raw)?;
        let parent = self.parent_fd(&comps, &raw)?;
        let p = parent.as_fd();
        let is_dir = kind == EntryType::Directory;
        self.clear(p, &name, is_dir, &raw)?;
        match kind {
            EntryType::Directory => {
                match rfs::mkdirat(p, &name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(self.io(&raw, "mkdir", e)),
                }
                let d = rfs::openat2(
                    p,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                    BENEATH,
                )
                .map_err(|e| self.parent_error(&raw, e))?;
                self.owner_and_xattrs(d.as_fd(), uid, gid, &xattrs, &raw)?;
                let mut full = comps.clone();
                full.push(name);
                self.pending.push(PendingDir {
                    components: full,
                    mode,
                    mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let f = rfs::openat(
                    p,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io(&raw, "create", e))?;
                let mut file = std::fs::File::from(f);
                let n = io::copy(&mut entry, &mut file)
                    .map_err(|e| self.tar_error("read data of entry in", e))?;
                self.stats.bytes += n;
                self.owner_and_xattrs(file.as_fd(), uid, gid, &xattrs, &raw)?;
                rfs::fchmod(&file, Mode::from_raw_mode(mode))
                    .map_err(|e| self.io(&raw, "chmod", e))?;
                rfs::futimens(&file, &times(mtime))
                    .map_err(|e| self.io(&raw, "set times of", e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                rfs::symlinkat(OsStr::from_bytes(&target), p, &name)
                    .map_err(|e| self.io(&raw, "symlink", e))?;
                self.owner_and_times_at(p, &name, (uid, gid), mtime, &raw)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "hard link without a target"))?
                    .into_owned();
                let mut tcomps = components(&target)
                    .map_err(|why| self.unsafe_entry(&raw, format!("hard link target: {why}")))?;
                let tname = tcomps
                    .pop()
                    .ok_or_else(|| self.unsafe_entry(&raw, "hard link to the layer root"))?;
                let tparent = crate::overlay::beneath::open_beneath(
                    self.root.as_fd(),
                    &tcomps.iter().map(|c| c.as_os_str()).collect::<Vec<_>>(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                )
                .map_err(|_| {
                    self.unsafe_entry(
                        &raw,
                        format!(
                            "hard link to {:?}, which is not in the layer",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                match rfs::linkat(tparent.as_fd(), &tname, p, &name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => {
                        return Err(self.unsafe_entry(
                            &raw,
                            format!(
                                "hard link to {:?}, which is not in the layer",
                                String::from_utf8_lossy(&target)
                            ),
                        ))
                    }
                    Err(e) => return Err(self.io(&raw, "hard link", e)),
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ft, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    k => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if k == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rfs::makedev(major, minor))
                    }
                };
                if ft == FileType::CharacterDevice && dev == 0 {
                    return Err(self.unsafe_entry(&raw, "a 0/0 device (overlay whiteout) in an OCI layer; OCI layers use .wh. files"));
                }
                match rfs::mknodat(p, &name, ft, Mode::from_raw_mode(mode), dev) {
                    Ok(()) => {}
                    Err(Errno::PERM) if ft != FileType::Fifo => {
                        tracing::warn!(
                            "{}: skipped device {} (not permitted)",
                            self.what,
                            String::from_utf8_lossy(&raw)
                        );
                        return Ok(());
                    }
                    Err(e) => return Err(self.io(&raw, "mknod", e)),
                }
                // mknod's mode passed through the umask: set the entry's own.
                rfs::chmodat(p, &name, Mode::from_raw_mode(mode), rfs::AtFlags::empty())
                    .map_err(|e| self.io(&raw, "chmod", e))?;
                self.owner_and_times_at(p, &name, (uid, gid), mtime, &raw)?;
            }
            other => {
                return Err(
                    self.unsafe_entry(&raw, format!("unsupported tar entry type {other:?}"))
                );
            }
        }
        Ok(())
    }

    /// Give `name` in `dir` (not followed) the entry's owner (when allowed) and time.
    fn owner_and_times_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        (uid, gid): (u32, u32),
        mtime: i64,
        raw: &[u8],
    ) -> Result<()> {
        if self.opts.chown {
            rfs::chownat(
                dir,
                name,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io(raw, "chown", e))?;
        }
        rfs::utimensat(dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io(raw, "set times of", e))
    }

    /// The entry's PAX `SCHILY.xattr.*` records, minus overlay-private ones.
    fn xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| self.tar_error("read pax headers in", e))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| self.tar_error("read pax headers in", e))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if format::is_private_xattr(name.as_bytes()) {
                        tracing::warn!(
                            "{}: dropped overlay xattr {name} of {}",
                            self.what,
                            String::from_utf8_lossy(raw)
                        );
                        continue;
                    }
                    out.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(out)
    }

    fn owner_and_xattrs(
        &self,
        fd: BorrowedFd<'_>,
        uid: u32,
        gid: u32,
        xattrs: &[(String, Vec<u8>)],
        raw: &[u8],
    ) -> Result<()> {
        if self.opts.chown {
            rfs::fchown(
                fd,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
            )
            .map_err(|e| self.io(raw, "chown", e))?;
        }
        for (k, v) in xattrs {
            match rfs::fsetxattr(fd, k.as_str(), v, rfs::XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::PERM) | Err(Errno::NOTSUP) | Err(Errno::ACCESS) => {
                    tracing::warn!(
                        "{}: could not set xattr {k} on {}",
                        self.what,
                        String::from_utf8_lossy(raw)
                    );
                }
                Err(e) => return Err(self.io(raw, &format!("set xattr {k} on"), e)),
            }
        }
        Ok(())
    }

    /// Make room for `name`: remove whatever is there unless both are directories (a later
    /// entry of a tar replaces an earlier one, as tar and docker do).
    fn clear(&self, dir: BorrowedFd<'_>, name: &OsStr, keep_dir: bool, raw: &[u8]) -> Result<()> {
        let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.io(raw, "stat", e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(());
            }
            remove_tree(dir, name).map_err(|e| self.io(raw, "replace directory", e))
        } else {
            rfs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| self.io(raw, "replace", e))
        }
    }

    fn mark_opaque(&mut self, dir_comps: &[OsString], raw: &[u8]) -> Result<()> {
        let refs: Vec<&OsStr> = dir_comps.iter().map(|c| c.as_os_str()).collect();
        let d = crate::overlay::beneath::open_beneath(
            self.root.as_fd(),
            &refs,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        )
        .map_err(|e| self.parent_error(raw, e))?;
        match format::set_opaque(d.as_fd(), self.opts.xattrs) {
            Ok(()) => Ok(()),
            Err(Errno::PERM) | Err(Errno::NOTSUP) | Err(Errno::ACCESS) => {
                // Keep the OCI marker: stratafs reads it.
                let f = rfs::openat(
                    &d,
                    OsStr::from_bytes(OPAQUE_MARKER),
                    OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io(raw, "write opaque marker", e))?;
                drop(f);
                Ok(())
            }
            Err(e) => Err(self.io(raw, "mark opaque", e)),
        }
    }

    /// Apply directory modes and times, deepest first, once nothing more is written in them.
    fn finish_dirs(&mut self) -> Result<()> {
        self.parent_cache = None;
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|d| std::cmp::Reverse(d.components.len()));
        for d in pending {
            let refs: Vec<&OsStr> = d.components.iter().map(|c| c.as_os_str()).collect();
            let raw = crate::overlay::beneath::join(&refs).into_vec();
            let fd = match crate::overlay::beneath::open_beneath(
                self.root.as_fd(),
                &refs,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced by a later entry of another type.
                Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue,
                Err(e) => return Err(self.io(&raw, "open", e)),
            };
            rfs::fchmod(&fd, Mode::from_raw_mode(d.mode)).map_err(|e| self.io(&raw, "chmod", e))?;
            rfs::futimens(&fd, &times(d.mtime)).map_err(|e| self.io(&raw, "set times of", e))?;
        }
        Ok(())
    }
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Remove the directory `name` in `dir` and everything beneath it, never following symlinks.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let d = rfs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        BENEATH,
    )
    .map_err(errno_io)?;
    // Owner write permission may be missing on directories copied from images.
    let _ = rfs::fchmod(&d, Mode::from_raw_mode(0o700));
    let mut names = Vec::new();
    for e in rfs::Dir::read_from(&d).map_err(errno_io)? {
        let e = e.map_err(errno_io)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((OsString::from_vec(n.to_vec()), e.file_type()));
        }
    }
    for (n, ft) in names {
        if ft == FileType::Directory {
            remove_tree(d.as_fd(), &n)?;
        } else {
            match rfs::unlinkat(&d, &n, AtFlags::empty()) {
                Err(Errno::ISDIR) => remove_tree(d.as_fd(), &n)?,
                r => r.map_err(errno_io)?,
            }
        }
    }
    drop(d);
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(errno_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert_eq!(components(b"./a//b/./c").unwrap(), ["a", "b", "c"]);
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
