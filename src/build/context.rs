//! The build context: the directory `COPY`/`ADD` read from, minus what `.dockerignore` leaves
//! out. Sources are resolved beneath the context root (`openat2` with `RESOLVE_BENEATH`):
//! a `..` or a symlink that leaves the context is an error, never a read outside it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use super::dockerignore::DockerIgnore;
use super::{Error, Result};

/// Resolution of context sources: beneath the root, symlinks allowed only if they stay inside.
const IN_CONTEXT: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// An opened build context.
#[derive(Debug)]
pub struct Context {
    root: OwnedFd,
    path: PathBuf,
    ignore: DockerIgnore,
}

/// Clean a source path lexically to a context-relative path (`""` is the root); `..` that
/// would climb above the root is refused.
pub fn clean_relative(src: &str) -> std::result::Result<String, String> {
    let mut out: Vec<&str> = Vec::new();
    for c in src.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(format!("{src:?} is outside the build context"));
                }
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Context {
    /// Open the context directory `path` with its `.dockerignore` (if any).
    pub fn open(path: &Path) -> Result<Context> {
        let root = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            Error::Context(format!(
                "build context {}: {}",
                path.display(),
                std::io::Error::from(e)
            ))
        })?;
        let ignore = match std::fs::read_to_string(path.join(".dockerignore")) {
            Ok(t) => DockerIgnore::parse(&t).map_err(|e| {
                Error::Context(format!("{}: {e}", path.join(".dockerignore").display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
            Err(e) => {
                return Err(Error::Context(format!(
                    "read {}: {e}",
                    path.join(".dockerignore").display()
                )))
            }
        };
        tracing::debug!(patterns = ?ignore.patterns(), ".dockerignore of the build context");
        Ok(Context {
            root,
            path: path.to_path_buf(),
            ignore,
        })
    }

    /// Whether `rel` is left out by `.dockerignore`.
    pub fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        !rel.is_empty() && self.ignore.is_excluded(rel, is_dir)
    }

    /// Open `rel` (context-relative) for reading, following symlinks only within the context.
    pub fn open_source(&self, rel: &str) -> Result<OwnedFd> {
        let p = if rel.is_empty() { "." } else { rel };
        rfs::openat2(
            &self.root,
            p,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            IN_CONTEXT,
        )
        .map_err(|e| match e {
            Errno::XDEV | Errno::LOOP => Error::Context(format!(
                "{rel:?}: a symlink that leads outside the build context"
            )),
            Errno::NOENT | Errno::NOTDIR => Error::Context(format!(
                "{rel:?}: no such file or directory in the build context {}",
                self.path.display()
            )),
            e => Error::Context(format!("{rel:?}: {}", std::io::Error::from(e))),
        })
    }

    /// The context-relative paths a `COPY` source names: the path itself, or every match of a
    /// glob. Sources excluded by `.dockerignore` are not there.
    pub fn select(&self, src: &str) -> Result<Vec<String>> {
        let rel = clean_relative(src).map_err(Error::Context)?;
        if !has_glob(&rel) {
            let fd = self.open_source(&rel)?;
            let is_dir = FileType::from_raw_mode(rfs::fstat(&fd).map_err(io)?.st_mode)
                == FileType::Directory;
            if self.excluded(&rel, is_dir) {
                return Err(Error::Context(format!(
                    "{src:?}: excluded by .dockerignore"
                )));
            }
            return Ok(vec![rel]);
        }
        let glob = globset::GlobBuilder::new(&rel)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Context(format!("{src:?}: {e}")))?
            .compile_matcher();
        let mut found = Vec::new();
        let depth = rel.split('/').count();
        self.walk(self.root.as_fd(), "", depth, &mut |p, _| {
            if glob.is_match(p) {
                found.push(p.to_string());
            }
        })?;
        if found.is_empty() {
            return Err(Error::Context(format!(
                "{src:?}: no source files were specified (nothing in the build context matches)"
            )));
        }
        found.sort();
        Ok(found)
    }

    /// Visit every non-excluded path under `dir` (at `prefix`) down to `depth` levels.
    fn walk(
        &self,
        dir: BorrowedFd<'_>,
        prefix: &str,
        depth: usize,
        f: &mut dyn FnMut(&str, bool),
    ) -> Result<()> {
        if depth == 0 {
            return Ok(());
        }
        let d = rfs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let mut names = Vec::new();
        for e in rfs::Dir::read_from(&d).map_err(io)? {
            let e = e.map_err(io)?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push((
                    String::from_utf8_lossy(n).into_owned(),
                    e.file_type() == FileType::Directory,
                ));
            }
        }
        names.sort();
        for (n, is_dir) in names {
            let p = if prefix.is_empty() {
                n.clone()
            } else {
                format!("{prefix}/{n}")
            };
            if self.excluded(&p, is_dir) && !(is_dir && self.ignore.may_contain_included(&p)) {
                continue;
            }
            if !self.excluded(&p, is_dir) {
                f(&p, is_dir);
            }
            if is_dir {
                let sub = rfs::openat(
                    &d,
                    n.as_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io)?;
                self.walk(sub.as_fd(), &p, depth - 1, f)?;
            }
        }
        Ok(())
    }

    /// A digest of what copying `rels` would read: names, types, modes, link targets and file
    /// contents (not times), for the build cache.
    pub fn content_digest(&self, rels: &[String]) -> Result<String> {
        let mut h = Sha256::new();
        for rel in rels {
            let fd = self.open_source(rel)?;
            h.update(rel.as_bytes());
            self.hash_node(fd.as_fd(), rel, &mut h)?;
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    fn hash_node(&self, fd: BorrowedFd<'_>, rel: &str, h: &mut Sha256) -> Result<()> {
        let st = rfs::fstat(fd).map_err(io)?;
        h.update(st.st_mode.to_le_bytes());
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let file = std::fs::File::from(
                    fd.try_clone_to_owned()
                        .map_err(|e| Error::Context(e.to_string()))?,
                );
                let mut buf = vec![0u8; 1 << 16];
                let mut off = 0u64;
                loop {
                    let n = file
                        .read_at(&mut buf, off)
                        .map_err(|e| Error::Context(format!("read {rel}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    off += n as u64;
                    h.update(&buf[..n]);
                }
            }
            FileType::Directory => {
                let mut names = Vec::new();
                let d = rfs::openat(
                    fd,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io)?;
                for e in rfs::Dir::read_from(&d).map_err(io)? {
                    let e = e.map_err(io)?;
                    let n = e.file_name().to_bytes();
                    if n != b"." && n != b".." {
                        names.push(n.to_vec());
                    }
                }
                names.sort();
                for n in names {
                    let child = format!("{rel}/{}", String::from_utf8_lossy(&n));
                    let st = rfs::statat(&d, OsStr::from_bytes(&n), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io)?;
                    let ft = FileType::from_raw_mode(st.st_mode);
                    if self.excluded(&child, ft == FileType::Directory) {
                        continue;
                    }
                    h.update(b"\0");
                    h.update(&n);
                    if ft == FileType::Symlink {
                        h.update(st.st_mode.to_le_bytes());
                        let t =
                            rfs::readlinkat(&d, OsStr::from_bytes(&n), Vec::new()).map_err(io)?;
                        h.update(t.as_bytes());
                    } else if matches!(ft, FileType::RegularFile | FileType::Directory) {
                        let c = rfs::openat(
                            &d,
                            OsStr::from_bytes(&n),
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                            Mode::empty(),
                        )
                        .map_err(io)?;
                        self.hash_node(c.as_fd(), &child, h)?;
                    } else {
                        h.update(st.st_mode.to_le_bytes());
                        h.update(st.st_rdev.to_le_bytes());
                    }
                }
            }
            _ => h.update(st.st_rdev.to_le_bytes()),
        }
        Ok(())
    }
}

fn io(e: Errno) -> Error {
    Error::Context(std::io::Error::from(e).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_paths() {
        assert_eq!(clean_relative("/a/./b/").unwrap(), "a/b");
        assert_eq!(clean_relative("a/../b").unwrap(), "b");
        assert_eq!(clean_relative(".").unwrap(), "");
        assert!(clean_relative("../x").is_err());
        assert!(clean_relative("a/../../x").is_err());
    }
}
