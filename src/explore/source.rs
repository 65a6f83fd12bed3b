//! Where a stack comes from: a store image, a container (its image's layers plus its live
//! writable layer), an OCI archive, docker-save archive or OCI layout, a raw overlay stack
//! (`lowerdir` top first, as overlayfs and stratafs take it), or an existing mount.

use std::path::{Path, PathBuf};

use super::stack::{Layer, Stack};
use super::{io_err, Error, Result};
use crate::container::{state::Paths, Container};
use crate::image::{archive, Image, Store};

/// What to explore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An image of the store, by any reference form.
    Image(String),
    /// A container of the store, by name or ID.
    Container(String),
    /// An OCI archive, a docker-save archive or an OCI layout directory.
    Archive(PathBuf),
    /// Raw layer directories: `lower` top first (as `lowerdir=`), and a writable layer.
    Dirs {
        /// Lower layers, top first.
        lower: Vec<PathBuf>,
        /// The writable layer, if any.
        upper: Option<PathBuf>,
    },
    /// The layers of an overlay (kernel, stratafs, fuse-overlayfs) mounted at this path.
    Mount(PathBuf),
}

impl Source {
    /// What `strata explore NAME` means: a path on the host (it has a `/` or ends in `.tar`
    /// and exists) is an archive or layout; otherwise an image of the store, else a container.
    pub fn guess(store_root: &Path, name: &str) -> Result<Source> {
        let p = Path::new(name);
        if (name.contains('/') || name.ends_with(".tar")) && p.exists() {
            return Ok(Source::Archive(p.to_path_buf()));
        }
        let store = Store::open(store_root)?;
        match store.resolve(name) {
            Ok(_) => return Ok(Source::Image(name.into())),
            Err(crate::image::Error::NoSuchImage(_))
            | Err(crate::image::Error::BadReference(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if Container::open(store_root, name).is_ok() {
            return Ok(Source::Container(name.into()));
        }
        Err(Error::Invalid(format!(
            "{name}: no such image or container (nor an archive or OCI layout path)"
        )))
    }

    /// Read the stack.
    pub fn open(&self, store_root: &Path) -> Result<Stack> {
        match self {
            Source::Image(r) => {
                let store = Store::open(store_root)?;
                let img = store.resolve_pinned(r)?;
                image_stack(&store, &img, None)
            }
            Source::Container(c) => {
                let c = Container::open(store_root, c)?;
                let upper = Paths::new(store_root, &c.state.id).upper();
                let mut layers: Vec<Layer> = c
                    .state
                    .lower_dirs
                    .iter()
                    .map(|d| Layer::open(d))
                    .collect::<Result<_>>()?;
                // What the image knows of its layers, if it is still in the store.
                if let Ok(store) = Store::open(store_root) {
                    if let Ok(img) = store.resolve(&c.state.image) {
                        describe(&img, &mut layers);
                    }
                }
                let mut up = Layer::open(&upper)?;
                up.upper = true;
                up.created_by = Some(format!("container {} (writable layer)", c.state.name));
                layers.push(up);
                Stack::read(format!("container {}", c.state.name), layers)
            }
            Source::Archive(p) => {
                let store = Store::open(store_root)?;
                let mut images = archive::images_in(&store, p)?;
                match images.len() {
                    1 => image_stack(&store, &images.remove(0), Some(p.display().to_string())),
                    0 => Err(Error::Invalid(format!("{}: no image in it", p.display()))),
                    n => Err(Error::Invalid(format!(
                        "{}: holds {n} images; load it (strata load) and explore one by name",
                        p.display()
                    ))),
                }
            }
            Source::Dirs { lower, upper } => dirs_stack(lower, upper.as_deref(), None),
            Source::Mount(m) => {
                let (lower, upper) = mount_layers(m)?;
                dirs_stack(&lower, upper.as_deref(), Some(m.display().to_string()))
            }
        }
    }
}

fn dirs_stack(lower: &[PathBuf], upper: Option<&Path>, name: Option<String>) -> Result<Stack> {
    if lower.is_empty() {
        return Err(Error::Invalid("no lower layer given".into()));
    }
    let mut layers: Vec<Layer> = lower
        .iter()
        .rev()
        .map(|d| Layer::open(d))
        .collect::<Result<_>>()?;
    if let Some(u) = upper {
        let mut up = Layer::open(u)?;
        up.upper = true;
        up.created_by = Some("upper (writable layer)".into());
        layers.push(up);
    }
    let name = name.unwrap_or_else(|| {
        let mut s = format!(
            "lowerdir={}",
            lower
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        );
        if let Some(u) = upper {
            s.push_str(&format!(",upperdir={}", u.display()));
        }
        s
    });
    Stack::read(name, layers)
}

/// The stack of a store image: its layers extracted (if they were not yet), with their
/// digests and the instructions of its history.
pub fn image_stack(store: &Store, img: &Image, name: Option<String>) -> Result<Stack> {
    let dirs = store.layer_dirs(img)?;
    let mut layers: Vec<Layer> = dirs.iter().map(|d| Layer::open(d)).collect::<Result<_>>()?;
    describe(img, &mut layers);
    Stack::read(name.unwrap_or_else(|| img.display_name()), layers)
}

/// Give `layers` (the image's, bottom first) their digests and the history's instructions.
fn describe(img: &Image, layers: &mut [Layer]) {
    if let Ok(descs) = img.layers() {
        for (l, d) in layers.iter_mut().zip(descs) {
            l.digest = Some(d.digest.to_string());
            l.diff_id = Some(d.diff_id.to_string());
            l.blob_size = Some(d.size);
        }
    }
    let history = img.config.history().clone().unwrap_or_default();
    let with_layers = history.iter().filter(|h| !h.empty_layer().unwrap_or(false));
    for (l, h) in layers.iter_mut().zip(with_layers) {
        l.created_by = h.created_by().clone();
    }
}

/// Split a `lowerdir=` value at colons not escaped by `\`, removing the escapes. Empty
/// pieces (the `::` before data-only layers) are skipped.
pub fn split_lowerdir(v: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Split mount options at commas not escaped by `\` (kept escaped for [`split_lowerdir`]).
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// The `lowerdir` (top first) and `upperdir` of option strings, if they have them.
fn layers_of_options<'a>(
    options: impl IntoIterator<Item = &'a str>,
) -> Option<(Vec<PathBuf>, Option<PathBuf>)> {
    let mut lower = None;
    let mut upper = None;
    for o in options.into_iter().flat_map(split_options) {
        if let Some(v) = o.strip_prefix("lowerdir=") {
            lower = Some(split_lowerdir(v));
        } else if let Some(v) = o.strip_prefix("upperdir=") {
            upper = Some(split_lowerdir(v).into_iter().next()?);
        }
    }
    lower.map(|l| (l, upper))
}

/// The layers of the overlay mounted at `mnt`: from its options in /proc/self/mountinfo
/// (kernel overlayfs), else from the command line of the FUSE daemon serving it (stratafs,
/// fuse-overlayfs: FUSE mounts do not show their options).
pub fn mount_layers(mnt: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let want = std::fs::canonicalize(mnt).map_err(io_err(format!("{}", mnt.display())))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read /proc/self/mountinfo"))?;
    let (opts, fstype) = parse_mountinfo(&info, &want)
        .ok_or_else(|| Error::Invalid(format!("{}: not a mount point", mnt.display())))?;
    if let Some(found) = layers_of_options(opts.iter().map(|s| s.as_str())) {
        return Ok(found);
    }
    if fstype.starts_with("fuse") {
        if let Some(found) = fuse_daemon_layers(&want) {
            return Ok(found);
        }
    }
    Err(Error::Invalid(format!(
        "{}: a {fstype} mount whose layers are not known (no lowerdir= in its options, nor \
         in the command line of a daemon serving it); give them with --lower and --upper",
        mnt.display()
    )))
}

/// The mount options and super options, and the file-system type, of the last mount at `at`.
fn parse_mountinfo(info: &str, at: &Path) -> Option<(Vec<String>, String)> {
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || fields.len() < sep + 4 {
            continue;
        }
        if Path::new(&unescape_octal(fields[4])) != at {
            continue;
        }
        let opts = vec![unescape_octal(fields[5]), unescape_octal(fields[sep + 3])];
        found = Some((opts, fields[sep + 1].to_string()));
    }
    found
}

/// The layers given on the command line of a process that has `mnt` as an argument and a
/// `lowerdir=` option (how stratafs and fuse-overlayfs are started).
fn fuse_daemon_layers(mnt: &Path) -> Option<(Vec<PathBuf>, Option<PathBuf>)> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let names_mnt = args
            .iter()
            .any(|a| Path::new(a) == mnt || std::fs::canonicalize(a).is_ok_and(|p| p == mnt));
        if !names_mnt {
            continue;
        }
        if let Some(found) = layers_of_options(args.iter().map(|s| s.as_str())) {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_escapes() {
        assert_eq!(
            split_lowerdir("/a:/b\\:c:/d"),
            [PathBuf::from("/a"), "/b:c".into(), "/d".into()]
        );
        assert_eq!(
            split_lowerdir("/a::/data"),
            [PathBuf::from("/a"), "/data".into()]
        );
    }

    #[test]
    fn mountinfo_overlay() {
        let info = "36 35 98:0 / /mnt rw,relatime - ext4 /dev/sda rw\n\
                    40 35 0:40 / /tmp/x\\040y rw,relatime - overlay overlay rw,lowerdir=/l/a\\,b:/l/c,upperdir=/u,workdir=/w\n";
        let (opts, ty) = parse_mountinfo(info, Path::new("/tmp/x y")).unwrap();
        assert_eq!(ty, "overlay");
        let (lower, upper) = layers_of_options(opts.iter().map(|s| s.as_str())).unwrap();
        assert_eq!(lower, [PathBuf::from("/l/a,b"), "/l/c".into()]);
        assert_eq!(upper, Some(PathBuf::from("/u")));
        assert!(parse_mountinfo(info, Path::new("/nope")).is_none());
    }
}
