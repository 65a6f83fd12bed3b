//! The deterministic fixture: the layers every backend is mounted on, built once and reused.
//!
//! Layout under the fixture directory:
//! - `main/lower1` (bottom) and `main/lower2` (top): `tree/gGG/dDDDD/fFF` small files, the big
//!   file `big/bigfile`, the wide directory `wide/` and an `opq/` directory that `lower2` makes
//!   opaque; `lower2` overrides about 5% of the tree's files and whites out 2% of them.
//! - `stack100/lNNN` and `stack2/lNNN`: the same tree of empty files spread over N layers, for
//!   the find-over-many-layers workload (`l000` is the bottom layer).
//! - `native/{main,stack100,stack2}`: plain copies of each merged tree, for the `native` backend.
//! - `untar.tar`: the small files the untar workload extracts.
//! - `stamp.json`: the parameters the fixture was built with; a fixture with the same stamp is
//!   reused, any other is rebuilt from scratch.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, XattrFlags, CWD};
use serde::{Deserialize, Serialize};

use super::error::{io_err, Result};

/// Bumped whenever the generator changes what it writes, so old fixtures are rebuilt.
const GENERATOR_VERSION: u32 = 2;

/// The xattr that marks a directory opaque in kernel overlayfs's format.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The same marker as rootless overlayfs (`userxattr`) and FUSE implementations read it.
const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";
/// The OCI whiteout prefix, written where creating a 0/0 device is not allowed (rootless).
const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The sizes of a fixture; every workload's size follows from them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixtureSpec {
    /// Directories of small files in the tree (grouped 50 to a parent).
    pub dirs: u32,
    /// Small files per directory.
    pub files_per_dir: u32,
    /// Largest small file, in bytes.
    pub small_file_max: u32,
    /// Size of the big file, in bytes.
    pub big_file_bytes: u64,
    /// Entries of the wide directory.
    pub wide_entries: u32,
    /// Layers of the deep stack.
    pub stack_layers: u32,
    /// Files in the untar archive.
    pub untar_files: u32,
    /// Lower files the chmod workload changes.
    pub chmod_files: u32,
    /// 4 KiB reads of the random-read workload.
    pub random_reads: u32,
}

impl FixtureSpec {
    /// The size the issue describes: 50,000 files in 2,000 dirs, a 1 GiB file, 10,000 entries.
    pub fn full() -> Self {
        FixtureSpec {
            dirs: 2000,
            files_per_dir: 25,
            small_file_max: 2048,
            big_file_bytes: 1 << 30,
            wide_entries: 10_000,
            stack_layers: 100,
            untar_files: 10_000,
            chmod_files: 1000,
            random_reads: 20_000,
        }
    }

    /// About ten times smaller than [`FixtureSpec::full`], for development and `cargo bench`.
    pub fn quick() -> Self {
        FixtureSpec {
            dirs: 200,
            files_per_dir: 25,
            small_file_max: 2048,
            big_file_bytes: 100 << 20,
            wide_entries: 1000,
            stack_layers: 100,
            untar_files: 1000,
            chmod_files: 100,
            random_reads: 2000,
        }
    }

    /// A few seconds' worth, for the smoke test.
    pub fn tiny() -> Self {
        FixtureSpec {
            dirs: 20,
            files_per_dir: 5,
            small_file_max: 512,
            big_file_bytes: 4 << 20,
            wide_entries: 100,
            stack_layers: 10,
            untar_files: 50,
            chmod_files: 10,
            random_reads: 200,
        }
    }

    /// Number of group directories (at most 50 directories each, at least two groups so the rm
    /// subtree leaves files for chmod), so no tree directory gets too wide.
    fn groups(&self) -> u32 {
        self.dirs.div_ceil(50).max(2)
    }

    /// The lower files the chmod workload changes: visible ones outside the rm subtree.
    pub fn chmod_targets(&self) -> Vec<PathBuf> {
        self.tree_files()
            .filter(|f| !f.whited_out() && !f.in_rm_subtree())
            .take(self.chmod_files as usize)
            .map(|f| f.rel_path())
            .collect()
    }

    /// All small files of the tree, in a fixed order.
    pub fn tree_files(&self) -> impl Iterator<Item = TreeFile> + '_ {
        (0..self.dirs).flat_map(move |d| {
            (0..self.files_per_dir).map(move |f| TreeFile {
                index: d * self.files_per_dir + f,
                dir: d,
                group: d % self.groups(),
                file: f,
            })
        })
    }
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec::quick()
    }
}

/// One small file of the tree.
#[derive(Clone, Copy, Debug)]
pub struct TreeFile {
    /// Position in [`FixtureSpec::tree_files`].
    pub index: u32,
    /// Directory number.
    pub dir: u32,
    /// Group (parent directory) number.
    pub group: u32,
    /// Number within the directory.
    pub file: u32,
}

impl TreeFile {
    /// Path relative to a layer root.
    pub fn rel_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "tree/g{:02}/d{:04}/f{:02}",
            self.group, self.dir, self.file
        ))
    }

    /// The top layer replaces this file (about 5% of them).
    pub fn overridden(&self) -> bool {
        self.index % 20 == 3
    }

    /// The top layer whites this file out (2% of them, disjoint from the overridden ones).
    pub fn whited_out(&self) -> bool {
        self.index % 50 == 7
    }

    /// Group 0 is the lower subtree the rm workload removes; the rest are free for chmod.
    pub fn in_rm_subtree(&self) -> bool {
        self.group == 0
    }
}

/// A set of layers that backends mount together.
#[derive(Clone, Debug)]
pub struct LayerSet {
    /// Short name: `main`, `stack100`, `stack2`.
    pub name: String,
    /// Layer directories, top layer first (overlay's `lowerdir` order).
    pub layers: Vec<PathBuf>,
    /// The plain copy of the merged tree.
    pub native: PathBuf,
}

/// A built fixture on disk.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Its directory.
    pub root: PathBuf,
    /// The sizes it was built with.
    pub spec: FixtureSpec,
    /// The two-layer image with the big file, the wide dir and the tree.
    pub main: LayerSet,
    /// The tree of empty files over [`FixtureSpec::stack_layers`] layers.
    pub deep: LayerSet,
    /// The same tree over two layers, the baseline of [`Fixture::deep`].
    pub shallow: LayerSet,
    /// The archive of the untar workload.
    pub untar_archive: PathBuf,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Stamp {
    version: u32,
    spec: FixtureSpec,
}

impl Fixture {
    /// Returns the fixture at `root` built with `spec`, building it first unless a stamp says
    /// it is already there. `progress` is told what is being built.
    pub fn ensure(root: &Path, spec: &FixtureSpec, progress: &dyn Fn(&str)) -> Result<Fixture> {
        let fixture = Fixture::describe(root, spec);
        let stamp_path = root.join("stamp.json");
        let wanted = Stamp {
            version: GENERATOR_VERSION,
            spec: spec.clone(),
        };
        if let Ok(text) = fs::read_to_string(&stamp_path) {
            if serde_json::from_str::<Stamp>(&text).ok().as_ref() == Some(&wanted) {
                return Ok(fixture);
            }
        }
        if root.exists() {
            progress("removing the old fixture");
            fs::remove_dir_all(root).map_err(io_err("remove", root))?;
        }
        mkdirs(root)?;
        fixture.build(progress)?;
        fs::write(&stamp_path, serde_json::to_vec_pretty(&wanted)?)
            .map_err(io_err("write", &stamp_path))?;
        Ok(fixture)
    }

    fn describe(root: &Path, spec: &FixtureSpec) -> Fixture {
        let stack = |name: &str, n: u32| LayerSet {
            name: name.to_string(),
            layers: (0..n)
                .rev()
                .map(|k| root.join(name).join(format!("l{k:03}")))
                .collect(),
            native: root.join("native").join(name),
        };
        Fixture {
            root: root.to_path_buf(),
            spec: spec.clone(),
            main: LayerSet {
                name: "main".into(),
                layers: vec![root.join("main/lower2"), root.join("main/lower1")],
                native: root.join("native/main"),
            },
            deep: stack(&format!("stack{}", spec.stack_layers), spec.stack_layers),
            shallow: stack("stack2", 2),
            untar_archive: root.join("untar.tar"),
        }
    }

    fn build(&self, progress: &dyn Fn(&str)) -> Result<()> {
        let lower1 = &self.main.layers[1];
        let lower2 = &self.main.layers[0];
        progress("small files");
        self.build_tree(lower1, lower2)?;
        progress("big file");
        write_big_file(&lower1.join("big/bigfile"), self.spec.big_file_bytes)?;
        progress("wide directory");
        let wide = lower1.join("wide");
        mkdirs(&wide)?;
        for i in 0..self.spec.wide_entries {
            write_file(&wide.join(format!("e{i:06}")), b"")?;
        }
        progress("opaque directory");
        for i in 0..20 {
            write_file(&lower1.join(format!("opq/hidden{i:02}")), b"lower1\n")?;
        }
        write_file(&lower2.join("opq/shown"), b"lower2\n")?;
        make_opaque(&lower2.join("opq"))?;
        progress("layer stacks");
        for set in [&self.deep, &self.shallow] {
            self.build_stack(set)?;
        }
        progress("untar archive");
        self.build_untar_archive()?;
        progress("native copies");
        for set in [&self.main, &self.deep, &self.shallow] {
            let bottom_up: Vec<&Path> = set.layers.iter().rev().map(PathBuf::as_path).collect();
            materialize(&bottom_up, &set.native, Path::new(""))?;
        }
        Ok(())
    }

    fn build_tree(&self, lower1: &Path, lower2: &Path) -> Result<()> {
        let mut made = std::collections::HashSet::new();
        for file in self.spec.tree_files() {
            let rel = file.rel_path();
            let size = (file.index.wrapping_mul(37) % self.spec.small_file_max.max(1)) as usize;
            let dir = rel.parent().expect("tree files have parents").to_path_buf();
            if made.insert(dir.clone()) {
                mkdirs(&lower1.join(&dir))?;
            }
            write_file(&lower1.join(&rel), &small_content(file.index, size, b'a'))?;
            if file.overridden() {
                write_file(
                    &lower2.join(&rel),
                    &small_content(file.index, size + 1, b'A'),
                )?;
            } else if file.whited_out() {
                whiteout(&lower2.join(&rel))?;
            }
        }
        Ok(())
    }

    fn build_stack(&self, set: &LayerSet) -> Result<()> {
        let n = set.layers.len() as u32;
        // Every layer holds every group directory, so the upper directories merge all layers.
        for (k, layer) in set.layers.iter().rev().enumerate() {
            for g in 0..self.spec.groups() {
                mkdirs(&layer.join(format!("tree/g{g:02}")))?;
            }
            write_file(&layer.join(format!("layer{k:03}")), b"")?;
        }
        let bottom_up: Vec<&PathBuf> = set.layers.iter().rev().collect();
        let mut made = std::collections::HashSet::new();
        for file in self.spec.tree_files() {
            let layer = bottom_up[(file.dir % n) as usize];
            let rel = file.rel_path();
            let dir = layer.join(rel.parent().expect("tree files have parents"));
            if made.insert(dir.clone()) {
                mkdirs(&dir)?;
            }
            write_file(&layer.join(&rel), b"")?;
        }
        Ok(())
    }

    /// Writes the untar archive directly, without making its files on disk first: removing
    /// 10,000 staged files would slow the first runs' file creations (see
    /// [`super::graveyard`]).
    fn build_untar_archive(&self) -> Result<()> {
        let path = &self.untar_archive;
        let file = fs::File::create(path).map_err(io_err("create", path))?;
        write_untar_archive(std::io::BufWriter::new(file), self.spec.untar_files)
            .map_err(io_err("write", path))
    }
}

/// The untar archive of `files` files of 512 bytes, 100 to a directory, sorted, owned by root
/// and dated 1970, as `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner` would.
fn write_untar_archive(out: std::io::BufWriter<fs::File>, files: u32) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    let mut add = |name: &str, kind, mode, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, name, data)
    };
    add("untar/", tar::EntryType::Directory, 0o755, &[])?;
    for i in 0..files {
        let dir = format!("untar/u{:03}/", i / 100);
        if i % 100 == 0 {
            add(&dir, tar::EntryType::Directory, 0o755, &[])?;
        }
        let data = small_content(i, 512, b'u');
        add(
            &format!("{dir}f{i:05}"),
            tar::EntryType::Regular,
            0o644,
            &data,
        )?;
    }
    let out = tar.into_inner()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Writes the merged view of `rel` in `bottom_up` layers to `dest/rel`, as overlayfs shows it:
/// upper entries replace lower ones, 0/0 character devices remove them and opaque directories
/// hide everything below. Used to build the native copies and to restore them after a
/// workload changed them.
pub fn materialize(bottom_up: &[&Path], dest: &Path, rel: &Path) -> Result<()> {
    let target = dest.join(rel);
    for layer in bottom_up {
        let src = layer.join(rel);
        let Ok(meta) = fs::symlink_metadata(&src) else {
            continue;
        };
        apply_entry(&src, &meta, &target)?;
    }
    Ok(())
}

/// Whites `path` out: a 0/0 character device as root, an OCI `.wh.` file where `mknod` is
/// refused.
fn whiteout(path: &Path) -> Result<()> {
    let parent = path.parent().expect("whiteouts have parents");
    mkdirs(parent)?;
    match rustix::fs::mknodat(CWD, path, FileType::CharacterDevice, Mode::empty(), 0) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => {
            let name = path
                .file_name()
                .expect("whiteouts have names")
                .to_string_lossy();
            write_file(&parent.join(format!("{WHITEOUT_PREFIX}{name}")), b"")
        }
        Err(e) => Err(io_err("mknod whiteout", path)(e.into())),
    }
}

/// Marks a directory opaque: the trusted xattr as root, else the user xattr and the OCI marker.
fn make_opaque(dir: &Path) -> Result<()> {
    match rustix::fs::setxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => {
            rustix::fs::setxattr(dir, USER_OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| io_err("setxattr", dir)(e.into()))?;
            write_file(&dir.join(OPAQUE_MARKER), b"")
        }
        Err(e) => Err(io_err("setxattr", dir)(e.into())),
    }
}

fn is_opaque(dir: &Path) -> bool {
    [OPAQUE_XATTR, USER_OPAQUE_XATTR]
        .iter()
        .any(|name| rustix::fs::getxattr(dir, *name, &mut [0u8; 4]).is_ok_and(|n| n == 1))
        || dir.join(OPAQUE_MARKER).exists()
}

fn apply_entry(src: &Path, meta: &fs::Metadata, target: &Path) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_char_device() && meta.rdev() == 0 {
        return remove_any(target);
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == OPAQUE_MARKER {
        return Ok(());
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        return remove_any(&target.with_file_name(hidden));
    }
    if ft.is_dir() {
        let opaque = is_opaque(src);
        let is_dir = fs::symlink_metadata(target).is_ok_and(|m| m.is_dir());
        if opaque || !is_dir {
            remove_any(target)?;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(meta.mode() & 0o7777)
                .create(target)
                .map_err(io_err("mkdir", target))?;
        }
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(io_err("read dir", src))?
            .collect::<std::io::Result<_>>()
            .map_err(io_err("read dir", src))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = entry.path();
            let child_meta = fs::symlink_metadata(&child).map_err(io_err("stat", &child))?;
            apply_entry(&child, &child_meta, &target.join(entry.file_name()))?;
        }
        return Ok(());
    }
    remove_any(target)?;
    if ft.is_symlink() {
        let link = fs::read_link(src).map_err(io_err("readlink", src))?;
        std::os::unix::fs::symlink(link, target).map_err(io_err("symlink", target))
    } else {
        fs::copy(src, target).map_err(io_err("copy", target))?;
        fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("chmod", target))
    }
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
    }
}

/// Deterministic content of a small file: its number repeated, so overrides differ visibly.
fn small_content(index: u32, size: usize, tag: u8) -> Vec<u8> {
    let pattern = format!("{}{index}\n", tag as char).into_bytes();
    pattern.iter().copied().cycle().take(size).collect()
}

fn write_big_file(path: &Path, bytes: u64) -> Result<()> {
    mkdirs(path.parent().expect("has parent"))?;
    let file = fs::File::create(path).map_err(io_err("create", path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    // Incompressible, seeded data: a filesystem cannot shortcut zeros or a repeated block.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        rng.fill(&mut block);
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n]).map_err(io_err("write", path))?;
        left -= n as u64;
    }
    out.into_inner()
        .map_err(|e| io_err("write", path)(e.into_error()))?
        .sync_all()
        .map_err(io_err("sync", path))
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            mkdirs(parent)?;
        }
    }
    fs::write(path, data).map_err(io_err("write", path))
}

/// Creates a directory and its parents.
pub(crate) fn mkdirs(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(io_err("mkdir", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_whiteouts_are_disjoint_and_about_the_promised_share() {
        let spec = FixtureSpec::full();
        let files: Vec<_> = spec.tree_files().collect();
        assert_eq!(files.len(), 50_000);
        let over = files.iter().filter(|f| f.overridden()).count();
        let white = files.iter().filter(|f| f.whited_out()).count();
        assert!(files.iter().all(|f| !(f.overridden() && f.whited_out())));
        assert_eq!(over, 2500);
        assert_eq!(white, 1000);
        let dirs: std::collections::HashSet<_> = files
            .iter()
            .map(|f| f.rel_path().parent().unwrap().to_owned())
            .collect();
        assert_eq!(dirs.len(), 2000);
    }

    #[test]
    fn materialize_applies_whiteouts_and_opaque_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let (l1, l2, out) = (
            tmp.path().join("l1"),
            tmp.path().join("l2"),
            tmp.path().join("out"),
        );
        write_file(&l1.join("d/a"), b"1").unwrap();
        write_file(&l1.join("d/b"), b"1").unwrap();
        write_file(&l1.join("o/x"), b"1").unwrap();
        write_file(&l2.join("d/a"), b"2").unwrap();
        rustix::fs::mknodat(
            CWD,
            l2.join("d/b"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        write_file(&l2.join("o/y"), b"2").unwrap();
        rustix::fs::setxattr(l2.join("o"), OPAQUE_XATTR, b"y", XattrFlags::empty()).unwrap();
        write_file(&l1.join("w/gone"), b"1").unwrap();
        write_file(&l2.join("w/.wh.gone"), b"").unwrap();
        write_file(&l1.join("p/x"), b"1").unwrap();
        write_file(&l2.join("p/.wh..wh..opq"), b"").unwrap();
        materialize(&[&l1, &l2], &out, Path::new("")).unwrap();
        assert!(
            out.join("w").is_dir()
                && !out.join("w/gone").exists()
                && !out.join("w/.wh.gone").exists()
        );
        assert!(
            out.join("p").is_dir()
                && !out.join("p/x").exists()
                && !out.join("p/.wh..wh..opq").exists()
        );
        assert_eq!(fs::read(out.join("d/a")).unwrap(), b"2");
        assert!(!out.join("d/b").exists());
        assert!(!out.join("o/x").exists());
        assert!(out.join("o/y").exists());
    }
}
