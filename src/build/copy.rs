//! Copy files for `COPY`/`ADD` into the build's union mount, fd to fd: sources are already
//! resolved (beneath the context or another stage's root); destinations are resolved inside the
//! image root with `RESOLVE_IN_ROOT`, so an image symlink (`/bin -> usr/bin`) is followed the way
//! the container will see it, and never out of the root.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
};
use rustix::io::Errno;

use super::{Error, Result};

/// Resolution of destination paths: symlinks followed as if the image root were `/`.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Owner and mode rules of one `COPY`.
#[derive(Debug, Clone, Copy)]
pub struct CopyRules {
    /// Owner of everything copied (docker: 0:0 unless `--chown`).
    pub uid: u32,
    /// Group of everything copied.
    pub gid: u32,
    /// Whether owners can be set (root, or inside a user namespace that maps them).
    pub chown: bool,
    /// `--chmod`: mode of every file and directory copied.
    pub chmod: Option<u32>,
}

fn err(what: &str, e: impl Into<io::Error>) -> Error {
    Error::Copy(format!("{what}: {}", e.into()))
}

/// Most symlinks followed while resolving one path, as the kernel's limit (`ELOOP` beyond).
const MAX_LINKS: usize = 40;

/// The path that `path` names inside the image root `root`: every symlink on the way followed
/// as the container would see it (an absolute target from the image root, `..` stopping at
/// it), the final component included, as far as the path exists; what does not exist is
/// appended as written. This is where docker's builder copies to: a `COPY` to a symlink writes
/// through it, and one to a dangling symlink creates its target.
pub fn resolve(root: BorrowedFd<'_>, path: &str) -> Result<String> {
    // `done` holds existing components without symlinks, so its `..` is a lexical pop.
    let mut done: Vec<OsString> = Vec::new();
    let mut todo: std::collections::VecDeque<OsString> =
        path.split('/').map(OsString::from).collect();
    let mut links = 0;
    let mut missing = false;
    while let Some(c) = todo.pop_front() {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            done.pop();
            continue;
        }
        if missing {
            done.push(c);
            continue;
        }
        let shown = || {
            let mut p = OsString::from("/");
            p.push(join(&done));
            p.to_string_lossy().into_owned()
        };
        let parent = open_dir(root, &done).map_err(|e| match e {
            Errno::NOTDIR => Error::Copy(format!(
                "{} exists in the image and is not a directory",
                shown()
            )),
            e => err(&format!("open {}", shown()), e),
        })?;
        match rfs::readlinkat(&parent, c.as_os_str(), Vec::new()) {
            Ok(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(err(&format!("resolve {path}"), Errno::LOOP));
                }
                let target = target.into_bytes();
                if target.starts_with(b"/") {
                    done.clear();
                }
                for t in target.split(|b| *b == b'/').rev() {
                    todo.push_front(OsString::from_vec(t.to_vec()));
                }
            }
            // There, and not a symlink.
            Err(Errno::INVAL) => done.push(c),
            Err(Errno::NOENT) => {
                missing = true;
                done.push(c);
            }
            Err(e) => return Err(err(&format!("resolve {path}"), e)),
        }
    }
    let mut out = OsString::from("/");
    out.push(join(&done));
    out.into_string()
        .map_err(|p| Error::Copy(format!("{p:?}: not a UTF-8 path")))
}

fn join(components: &[OsString]) -> OsString {
    let mut out = OsString::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push("/");
        }
        out.push(c);
    }
    out
}

/// The directory of the symlink-free `components` beneath `root`, opened `O_PATH`.
fn open_dir(root: BorrowedFd<'_>, components: &[OsString]) -> std::result::Result<OwnedFd, Errno> {
    let p = join(components);
    let p = if p.is_empty() { OsString::from(".") } else { p };
    rfs::openat2(
        root,
        p.as_os_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        IN_ROOT,
    )
}

/// Open (creating missing directories, mode 0755, owned by `rules`) the directory `path` inside
/// the image root `root`, following symlinks on the way as [`resolve`] does (so a dangling one
/// gets its target made). Returns its fd.
pub fn make_dirs(root: BorrowedFd<'_>, path: &str, rules: &CopyRules) -> Result<OwnedFd> {
    let path = resolve(root, path)?;
    let mut cur = rfs::openat2(
        root,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        IN_ROOT,
    )
    .map_err(|e| err("open image root", e))?;
    let mut so_far = String::new();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        so_far.push('/');
        so_far.push_str(c);
        // Resolve from the root each time so `..` and absolute symlinks stay inside it.
        let full = so_far.trim_start_matches('/').to_string();
        match rfs::openat2(
            root,
            full.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        ) {
            Ok(fd) => cur = fd,
            Err(Errno::NOENT) => {
                let (parent, name) = match full.rsplit_once('/') {
                    Some((p, n)) => (
                        rfs::openat2(
                            root,
                            p,
                            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                            IN_ROOT,
                        )
                        .map_err(|e| err(&format!("open /{p}"), e))?,
                        n,
                    ),
                    None => (
                        rfs::openat2(
                            root,
                            ".",
                            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                            IN_ROOT,
                        )
                        .map_err(|e| err("open /", e))?,
                        full.as_str(),
                    ),
                };
                if name == ".." {
                    continue;
                }
                match rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        if rules.chown {
                            rfs::chownat(
                                &parent,
                                name,
                                Some(rfs::Uid::from_raw(rules.uid)),
                                Some(rfs::Gid::from_raw(rules.gid)),
                                AtFlags::SYMLINK_NOFOLLOW,
                            )
                            .map_err(|e| err(&format!("chown {so_far}"), e))?;
                        }
                    }
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(err(&format!("create {so_far}"), e)),
                }
                cur = rfs::openat2(
                    root,
                    full.as_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    IN_ROOT,
                )
                .map_err(|e| err(&format!("open {so_far}"), e))?;
            }
            Err(Errno::NOTDIR) => {
                return Err(Error::Copy(format!(
                    "{so_far} exists in the image and is not a directory"
                )))
            }
            Err(e) => return Err(err(&format!("open {so_far}"), e)),
        }
    }
    Ok(cur)
}

/// Whether `path` inside `root` is an existing directory (following image symlinks).
pub fn is_dir(root: BorrowedFd<'_>, path: &str) -> bool {
    let p = path.trim_start_matches('/');
    let p = if p.is_empty() { "." } else { p };
    rfs::openat2(
        root,
        p,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        IN_ROOT,
    )
    .is_ok()
}

/// A filter over source paths (relative to the copied source): `false` leaves the path out.
pub type Filter<'a> = &'a dyn Fn(&str, bool) -> bool;

/// Copy the source open as `src` (a file or directory fd, readable) to `name` in `dst_dir`. A
/// directory source copies as a directory named `name` (callers copying "contents of" pass the
/// destination directory itself via [`copy_dir_contents`]).
pub fn copy_node(
    src: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &OsStr,
    rules: &CopyRules,
    rel: &str,
    filter: Filter<'_>,
) -> Result<()> {
    let st = rfs::fstat(src).map_err(|e| err(rel, e))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            clear(dst_dir, name, true, rel)?;
            match rfs::mkdirat(dst_dir, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(err(&format!("create {rel}"), e)),
            }
            let d = rfs::openat(
                dst_dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| err(&format!("open {rel}"), e))?;
            copy_dir_contents(src, d.as_fd(), rules, rel, filter)?;
            finish(d.as_fd(), &st, rules, rel)
        }
        FileType::RegularFile => {
            clear(dst_dir, name, false, rel)?;
            let out = rfs::openat(
                dst_dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| err(&format!("create {rel}"), e))?;
            let mut input = std::fs::File::from(src.try_clone_to_owned().map_err(|e| err(rel, e))?);
            io::Seek::seek(&mut input, io::SeekFrom::Start(0)).map_err(|e| err(rel, e))?;
            let mut output = std::fs::File::from(out);
            io::copy(&mut input, &mut output).map_err(|e| err(&format!("copy {rel}"), e))?;
            finish(output.as_fd(), &st, rules, rel)
        }
        other => Err(Error::Copy(format!(
            "{rel}: cannot copy a {other:?} source"
        ))),
    }
}

/// Copy what is in the directory `src` into the directory `dst`.
pub fn copy_dir_contents(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    rules: &CopyRules,
    rel: &str,
    filter: Filter<'_>,
) -> Result<()> {
    let d = rfs::openat(
        src,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(rel, e))?;
    let mut names: Vec<OsString> = Vec::new();
    for e in rfs::Dir::read_from(&d).map_err(|e| err(rel, e))? {
        let e = e.map_err(|e| err(rel, e))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    names.sort();
    for n in names {
        let child = if rel.is_empty() {
            n.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", n.to_string_lossy())
        };
        let st = rfs::statat(&d, &n, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| err(&child, e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if !filter(&child, ft == FileType::Directory) {
            continue;
        }
        match ft {
            FileType::Symlink => {
                let target = rfs::readlinkat(&d, &n, Vec::new()).map_err(|e| err(&child, e))?;
                clear(dst, &n, false, &child)?;
                rfs::symlinkat(OsStr::from_bytes(target.as_bytes()), dst, &n)
                    .map_err(|e| err(&format!("symlink {child}"), e))?;
                if rules.chown {
                    rfs::chownat(
                        dst,
                        &n,
                        Some(rfs::Uid::from_raw(rules.uid)),
                        Some(rfs::Gid::from_raw(rules.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| err(&format!("chown {child}"), e))?;
                }
                let _ = rfs::utimensat(dst, &n, &times(&st), AtFlags::SYMLINK_NOFOLLOW);
            }
            FileType::RegularFile | FileType::Directory => {
                let c = rfs::openat(
                    &d,
                    &n,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| err(&child, e))?;
                copy_node(c.as_fd(), dst, &n, rules, &child, filter)?;
            }
            FileType::Fifo => {
                clear(dst, &n, false, &child)?;
                rfs::mknodat(
                    dst,
                    &n,
                    FileType::Fifo,
                    Mode::from_raw_mode(st.st_mode & 0o7777),
                    0,
                )
                .map_err(|e| err(&format!("mkfifo {child}"), e))?;
            }
            _ => tracing::warn!("skipped {child}: sockets and devices are not copied"),
        }
    }
    Ok(())
}

/// Remove what is at `name` unless it is a directory and a directory is wanted.
fn clear(dir: BorrowedFd<'_>, name: &OsStr, want_dir: bool, rel: &str) -> Result<()> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err(rel, e)),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            if want_dir {
                Ok(())
            } else {
                Err(Error::Copy(format!(
                    "cannot replace the directory at {rel} with a file"
                )))
            }
        }
        Ok(_) => rfs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| err(&format!("replace {rel}"), e)),
    }
}

fn times(st: &rfs::Stat) -> Timestamps {
    let t = Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Owner, mode and times of a copied file or directory.
fn finish(fd: BorrowedFd<'_>, src: &rfs::Stat, rules: &CopyRules, rel: &str) -> Result<()> {
    if rules.chown {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(rules.uid)),
            Some(rfs::Gid::from_raw(rules.gid)),
        )
        .map_err(|e| err(&format!("chown {rel}"), e))?;
    }
    let mode = rules.chmod.unwrap_or(src.st_mode & 0o7777);
    rfs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| err(&format!("chmod {rel}"), e))?;
    rfs::futimens(fd, &times(src)).map_err(|e| err(&format!("set times of {rel}"), e))
}
