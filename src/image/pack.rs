//! Pack an overlay-format directory (an upper layer, or a plain root filesystem) into an OCI
//! layer tar, reproducibly: entries sorted by name, numeric owners without names, times clamped
//! when asked, no access or change times. Overlay markers become OCI ones: a 0/0 character
//! device `NAME` becomes an empty `.wh.NAME`, an opaque xattr a `.wh..wh..opq` entry.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tar::{EntryType, Header};

use crate::overlay::beneath::BENEATH;
use crate::overlay::format::{self, OPAQUE_MARKER, WHITEOUT_PREFIX};

use super::{Error, Result};

/// How to pack.
#[derive(Debug, Clone, Copy, Default)]
pub struct PackOptions {
    /// Clamp every mtime to at most this (seconds since the epoch): `SOURCE_DATE_EPOCH`.
    pub clamp_mtime: Option<i64>,
    /// Top-level directories to leave out when they are empty: the mount points an OCI
    /// runtime creates in a container's upper (`dev`, `proc`, `sys`), which are not content.
    pub skip_empty_top_dirs: &'static [&'static str],
}

/// What a pack wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct PackStats {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Write the tar of the tree at `src` to `out`.
pub fn pack(src: &Path, out: impl Write, opts: PackOptions) -> Result<PackStats> {
    let root = rfs::open(
        src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        what: format!("open {}", src.display()),
        source: e.into(),
    })?;
    let mut p = Packer {
        builder: tar::Builder::new(out),
        opts,
        links: HashMap::new(),
        stats: PackStats::default(),
        src: src.display().to_string(),
    };
    p.builder.mode(tar::HeaderMode::Deterministic);
    p.dir_contents(root.as_fd(), &mut Vec::new())?;
    p.builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| p_io(&p.src, "finish tar of", e))?;
    Ok(p.stats)
}

fn p_io(src: &str, doing: &str, e: impl Into<io::Error>) -> Error {
    Error::Io {
        what: format!("{doing} {src}"),
        source: e.into(),
    }
}

struct Packer<W: Write> {
    builder: tar::Builder<W>,
    opts: PackOptions,
    /// First path of each multiply-linked inode, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: PackStats,
    src: String,
}

/// The names in `dir`, sorted bytewise.
fn sorted_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for e in rfs::Dir::read_from(dir).map_err(io::Error::from)? {
        let e = e.map_err(io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Whether `name` in `dir` is a directory with no entries.
fn is_empty_dir(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    let Ok(d) = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    sorted_names(d.as_fd()).is_ok_and(|n| n.is_empty())
}

impl<W: Write> Packer<W> {
    fn err(&self, path: &[u8], doing: &str, e: impl Into<io::Error>) -> Error {
        Error::Io {
            what: format!("{}: {doing} {}", self.src, String::from_utf8_lossy(path)),
            source: e.into(),
        }
    }

    fn header(&self, st: &rfs::Stat, kind: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(st.st_uid as u64);
        h.set_gid(st.st_gid as u64);
        let mut mtime = st.st_mtime;
        if let Some(c) = self.opts.clamp_mtime {
            mtime = mtime.min(c);
        }
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    fn dir_contents(&mut self, dir: BorrowedFd<'_>, path: &mut Vec<u8>) -> Result<()> {
        let names = sorted_names(dir).map_err(|e| self.err(path, "list", e))?;
        for name in names {
            if path.is_empty()
                && self
                    .opts
                    .skip_empty_top_dirs
                    .iter()
                    .any(|d| d.as_bytes() == name.as_bytes())
                && is_empty_dir(dir, &name)
            {
                continue;
            }
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            self.entry(dir, &name, path)?;
            path.truncate(len);
        }
        Ok(())
    }

    fn xattrs(&self, path: &[u8], list_from: &OsStr) -> Result<Vec<(String, Vec<u8>)>> {
        let mut names = vec![0u8; 4096];
        let n = match rfs::llistxattr(list_from, &mut names) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => 0,
            Err(e) => return Err(self.err(path, "list xattrs of", e)),
        };
        let mut out = Vec::new();
        for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if format::is_private_xattr(name) || name.starts_with(b"security.selinux") {
                continue;
            }
            let key = String::from_utf8_lossy(name).into_owned();
            let mut val = vec![0u8; 65536];
            match rfs::lgetxattr(list_from, key.as_str(), &mut val) {
                Ok(len) => {
                    val.truncate(len);
                    out.push((key, val));
                }
                Err(Errno::NODATA) => {}
                Err(e) => return Err(self.err(path, "read xattr of", e)),
            }
        }
        out.sort();
        Ok(out)
    }

    fn append_xattrs(&mut self, path: &[u8], xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let recs: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        self.builder
            .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(|e| self.err(path, "write pax header of", e))
    }

    fn entry(&mut self, dir: BorrowedFd<'_>, name: &OsString, path: &mut Vec<u8>) -> Result<()> {
        let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(path, "stat", e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let proc = crate::overlay::fd_path::proc_path(dir, Some(name));
        self.stats.entries += 1;
        match ft {
            FileType::Directory => {
                let d: OwnedFd = rfs::openat2(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                    BENEATH,
                )
                .map_err(|e| self.err(path, "open", e))?;
                let xattrs = self.xattrs(path, &proc)?;
                self.append_xattrs(path, &xattrs)?;
                let mut h = self.header(&st, EntryType::Directory);
                let mut p = path.clone();
                p.push(b'/');
                self.builder
                    .append_data(&mut h, OsStr::from_bytes(&p), io::empty())
                    .map_err(|e| self.err(path, "write", e))?;
                if format::has_opaque_xattr(d.as_fd())
                    && rfs::statat(
                        &d,
                        OsStr::from_bytes(OPAQUE_MARKER),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .is_err()
                {
                    let mut h = self.header(&st, EntryType::Regular);
                    h.set_mode(0o644);
                    let mut m = path.clone();
                    m.push(b'/');
                    m.extend_from_slice(OPAQUE_MARKER);
                    self.builder
                        .append_data(&mut h, OsStr::from_bytes(&m), io::empty())
                        .map_err(|e| self.err(path, "write", e))?;
                }
                self.dir_contents(d.as_fd(), path)?;
            }
            FileType::CharacterDevice if format::is_device_whiteout(&st) => {
                let mut h = self.header(&st, EntryType::Regular);
                h.set_mode(0o644);
                let cut = path.len() - name.len();
                let mut wh = path[..cut].to_vec();
                wh.extend_from_slice(WHITEOUT_PREFIX);
                wh.extend_from_slice(name.as_bytes());
                self.builder
                    .append_data(&mut h, OsStr::from_bytes(&wh), io::empty())
                    .map_err(|e| self.err(path, "write", e))?;
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key).cloned() {
                        let mut h = self.header(&st, EntryType::Link);
                        self.builder
                            .append_link(&mut h, OsStr::from_bytes(path), OsStr::from_bytes(&first))
                            .map_err(|e| self.err(path, "write", e))?;
                        return Ok(());
                    }
                    self.links.insert(key, path.clone());
                }
                if rfs::lgetxattr(&proc, format::TRUSTED_METACOPY, &mut [0u8; 0][..]).is_ok()
                    || rfs::lgetxattr(&proc, format::USER_METACOPY, &mut [0u8; 0][..]).is_ok()
                {
                    return Err(Error::Invalid(format!(
                        "{}: {} is a metadata-only copy whose data is still in a lower layer; \
                         unmount the union (stratafs completes such copies) before packing it",
                        self.src,
                        String::from_utf8_lossy(path)
                    )));
                }
                let xattrs = self.xattrs(path, &proc)?;
                self.append_xattrs(path, &xattrs)?;
                let f = rfs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.err(path, "open", e))?;
                let mut h = self.header(&st, EntryType::Regular);
                h.set_size(st.st_size as u64);
                let file = std::fs::File::from(f);
                // Take exactly the size recorded: a file changing under us must not corrupt
                // the tar's framing.
                let reader = io::Read::take(file, st.st_size as u64);
                self.builder
                    .append_data(&mut h, OsStr::from_bytes(path), reader)
                    .map_err(|e| self.err(path, "write", e))?;
                self.stats.bytes += st.st_size as u64;
            }
            FileType::Symlink => {
                let target = rfs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| self.err(path, "read link", e))?;
                let mut h = self.header(&st, EntryType::Symlink);
                self.builder
                    .append_link(
                        &mut h,
                        OsStr::from_bytes(path),
                        OsStr::from_bytes(target.as_bytes()),
                    )
                    .map_err(|e| self.err(path, "write", e))?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                let kind = match ft {
                    FileType::CharacterDevice => EntryType::Char,
                    FileType::BlockDevice => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut h = self.header(&st, kind);
                if kind != EntryType::Fifo {
                    h.set_device_major(rfs::major(st.st_rdev))
                        .and_then(|_| h.set_device_minor(rfs::minor(st.st_rdev)))
                        .map_err(|e| self.err(path, "write", e))?;
                }
                self.builder
                    .append_data(&mut h, OsStr::from_bytes(path), io::empty())
                    .map_err(|e| self.err(path, "write", e))?;
            }
            _ => {
                // Sockets have no place in an image (docker skips them too).
                self.stats.entries -= 1;
            }
        }
        Ok(())
    }
}
