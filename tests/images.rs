//! The image store end to end, as root, through the `strata` command line: import, list,
//! inspect, tag, history, save/load, the OCI layout as skopeo reads and writes it, hostile and
//! corrupt input, `rmi` and garbage collection, concurrent writers, reproducible imports.
//!
//! Each test has its own stores in a temp dir (under `$STRATA_TEST_TMP` if set), runs every
//! command with a deadline, and on drop removes runtime state, unmounts anything left under its
//! dir and kills (by PID) any process whose command line names its dir. Needs busybox-static,
//! skopeo, python3 and tar (scripts/test.sh installs the Debian packages).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cli::{run_deadline, StrataEnv, COMMAND_DEADLINE};
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Files (or directories) directly in `dir`, temp files of writers excluded.
fn names_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// A test's stores (`store`, `store2`) with image helpers.
struct Env {
    cli: StrataEnv,
}

impl std::ops::Deref for Env {
    type Target = StrataEnv;
    fn deref(&self) -> &StrataEnv {
        &self.cli
    }
}

impl Env {
    fn new() -> Env {
        Env {
            cli: StrataEnv::new("strata-img-"),
        }
    }

    /// `strata ARGS` on the store at `root` with extra environment `envs`.
    fn strata_env(&self, root: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
        self.cli.run_in(root, None, args, envs, None)
    }

    /// A busybox root filesystem at `rel`, with `/etc/greeting` holding `greeting`.
    fn rootfs(&self, rel: &str, greeting: &str) -> PathBuf {
        let r = self.path(rel);
        for d in ["bin", "etc", "tmp", "proc", "dev", "sys", "root"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox-static is needed");
        for a in ["sh", "ls", "cat", "echo", "true", "test", "id"] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
        }
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(r.join("etc/greeting"), greeting).unwrap();
        r
    }

    /// A tiny root filesystem (no binaries): cheap to import many times.
    fn tiny_rootfs(&self, rel: &str, content: &str) -> PathBuf {
        let r = self.path(rel);
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/content"), content).unwrap();
        r
    }

    /// `strata import SRC NAME` on the default store; the image ID it prints.
    fn import(&self, src: &Path, name: &str) -> String {
        let id = self.ok(&["import", src.to_str().unwrap(), name]);
        let id = id.trim().to_string();
        assert!(is_full_id(&id), "import printed {id:?}");
        id
    }

    /// `strata inspect REF` as JSON.
    fn inspect(&self, root: &Path, r: &str) -> Value {
        let o = ok_output(self.strata_env(root, &["inspect", r], &[]), &["inspect", r]);
        serde_json::from_str(&o).unwrap_or_else(|e| panic!("inspect {r}: {e}: {o}"))
    }

    /// The store's `index.json`, parsed.
    fn index(&self, root: &Path) -> Value {
        let s = std::fs::read_to_string(root.join("index.json")).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("index.json does not parse: {e}: {s}"))
    }

    /// The tags recorded in a store's `index.json`.
    fn tags(&self, root: &Path) -> BTreeSet<String> {
        self.index(root)["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .map(String::from)
            .collect()
    }

    /// `strata run --rm IMAGE cat FILE` must print `want`.
    fn assert_cat(&self, root: &Path, image: &str, file: &str, want: &str) {
        let args = ["run", "--rm", image, "cat", file];
        let o = ok_output(self.strata_env(root, &args, &[]), &args);
        assert_eq!(o, want, "{image}:{file}");
    }
}

fn ok_output(o: Output, args: &[&str]) -> String {
    assert!(
        o.status.success(),
        "strata {args:?} failed ({:?}): {}",
        o.status.code(),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn fail_output(o: Output, args: &[&str]) -> String {
    assert!(
        !o.status.success(),
        "strata {args:?} succeeded: {}",
        text(&o.stdout)
    );
    text(&o.stderr)
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn is_full_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && is_hex(h))
}

/// The `strata images` rows as (name, tag, short id, the rest of the line).
fn image_rows(listing: &str) -> Vec<(String, String, String, String)> {
    let mut lines = listing.lines();
    let head = lines.next().unwrap_or_default();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(head.contains(col), "images header {head:?} lacks {col}");
    }
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 5, "short images row {l:?}");
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].to_string(),
                f[3..].join(" "),
            )
        })
        .collect()
}

/// Layer blob digests of the image a store's manifest lists.
fn manifest_layers(inspect: &Value) -> Vec<String> {
    inspect["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Build a tar with Python's tarfile; `body` adds the members to `t`, with the helpers
/// `f(name)`, `sym(name, target)`, `hard(name, target)` and `d(name)`.
fn python_tar(e: &Env, out: &Path, body: &str) {
    let script = format!(
        r#"
import io, sys, tarfile
def f(name, data=b"x"):
    i = tarfile.TarInfo(name); i.size = len(data); i.mode = 0o644
    t.addfile(i, io.BytesIO(data))
def sym(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.SYMTYPE; i.linkname = target; t.addfile(i)
def hard(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.LNKTYPE; i.linkname = target; t.addfile(i)
def d(name):
    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
with tarfile.open(sys.argv[1], "w", format=tarfile.GNU_FORMAT) as t:
{}
"#,
        body.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    e.tool("python3", &["-c", &script, out.to_str().unwrap()]);
}

#[test]
fn import_dir_and_tars_then_list_run_history_inspect() {
    need_root!();
    let e = Env::new();
    let rootfs = e.rootfs("rootfs", "from dir\n");
    let id_dir = e.import(&rootfs, "fromdir:1");

    // The same tree as a plain and a gzip tar, made by tar(1); different content each.
    std::fs::write(rootfs.join("etc/greeting"), "from tar\n").unwrap();
    e.tool("tar", &["-C", "rootfs", "-cf", "root.tar", "."]);
    std::fs::write(rootfs.join("etc/greeting"), "from tar.gz\n").unwrap();
    e.tool("tar", &["-C", "rootfs", "-czf", "root.tar.gz", "."]);
    let id_tar = e.import(&e.path("root.tar"), "fromtar:2");
    let id_tgz = e.import(&e.path("root.tar.gz"), "fromtgz");
    let ids = BTreeSet::from([id_dir.clone(), id_tar.clone(), id_tgz.clone()]);
    assert_eq!(ids.len(), 3, "three different images");

    let rows = image_rows(&e.ok(&["images"]));
    let want = [
        ("fromdir", "1", &id_dir),
        ("fromtar", "2", &id_tar),
        ("fromtgz", "latest", &id_tgz),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (name, tag, id) in want {
        let row = rows
            .iter()
            .find(|r| r.0 == name)
            .unwrap_or_else(|| panic!("{name} not listed: {rows:?}"));
        assert_eq!(row.1, tag);
        assert_eq!(row.2.len(), 12, "short ID {:?}", row.2);
        assert!(is_hex(&row.2));
        assert_eq!(row.2, id[7..19], "{name}'s ID");
        assert!(row.3.contains("ago"), "created column in {row:?}");
        let size = row.3.split_whitespace().last().unwrap();
        assert!(
            size.ends_with("MB") || size.ends_with("kB"),
            "size {size:?} of a ~1MB busybox layer"
        );
    }
    let quiet = e.ok(&["images", "-q"]);
    let quiet: BTreeSet<&str> = quiet.lines().collect();
    assert_eq!(quiet, ids.iter().map(|i| &i[7..19]).collect());

    e.assert_cat(&e.store(), "fromdir:1", "/etc/greeting", "from dir\n");
    e.assert_cat(&e.store(), "fromtar:2", "/etc/greeting", "from tar\n");
    e.assert_cat(&e.store(), "fromtgz", "/etc/greeting", "from tar.gz\n");
    let o = e.ok(&["run", "--rm", "fromtar:2", "ls", "/bin"]);
    assert!(o.contains("busybox") && o.contains("cat"), "ls /bin: {o}");

    let h = e.ok(&["history", "fromdir:1"]);
    let mut lines = h.lines();
    assert!(lines.next().unwrap().contains("CREATED BY"));
    let row = lines.next().expect("one history row");
    assert!(row.contains("strata import"), "{row}");
    assert!(lines.next().is_none(), "one layer, one row: {h}");
    let h = e.ok(&["history", "--no-trunc", "fromtar:2"]);
    assert!(h.contains("root.tar"), "{h}");

    let doc = e.inspect(&e.store(), "fromdir:1");
    assert_eq!(doc["Id"], id_dir.as_str());
    assert_eq!(doc["RepoTags"], serde_json::json!(["fromdir:1"]));
    assert_eq!(doc["Config"]["os"], "linux");
    let diff_ids = doc["Config"]["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), 1);
    assert_eq!(doc["Manifest"]["config"]["digest"], id_dir.as_str());
    assert_eq!(manifest_layers(&doc).len(), 1);
    // The extracted layer is kept by diff ID.
    let layers = doc["Layers"].as_array().unwrap();
    assert!(layers[0]
        .as_str()
        .unwrap()
        .ends_with(&diff_ids[0].as_str().unwrap()[7..]));
    e.assert_no_leaks();
}

#[test]
fn references_resolve_by_name_tag_digest_and_id() {
    need_root!();
    let e = Env::new();
    let rootfs = e.rootfs("rootfs", "hi\n");
    let id = e.import(&rootfs, "app");
    let other = e.import(&e.tiny_rootfs("tiny", "x"), "other:1");
    let doc = e.inspect(&e.store(), "app:latest");
    let manifest = doc["Digest"].as_str().unwrap().to_string();
    assert!(is_full_id(&manifest), "Digest {manifest}");
    assert_ne!(manifest, id, "the manifest digest is not the config digest");

    let refs = [
        "app".to_string(),
        "app:latest".to_string(),
        format!("app@{manifest}"),
        id.clone(),
        id[7..].to_string(),
        id[7..19].to_string(),
        id[7..12].to_string(),
        id[..19].to_string(),
    ];
    for r in &refs {
        assert_eq!(e.inspect(&e.store(), r)["Id"], id.as_str(), "{r}");
    }
    assert_eq!(e.inspect(&e.store(), "other:1")["Id"], other.as_str());
    e.assert_cat(&e.store(), &id[7..19], "/etc/greeting", "hi\n");
    e.assert_cat(
        &e.store(),
        &format!("app@{manifest}"),
        "/etc/greeting",
        "hi\n",
    );

    // tag: from a tag and from an ID; both names list the same ID.
    e.ok(&["tag", "app", "app:v2"]);
    e.ok(&["tag", &id[7..19], "registry.example:5000/team/app:3"]);
    let rows = image_rows(&e.ok(&["images"]));
    for (n, t) in [
        ("app", "latest"),
        ("app", "v2"),
        ("registry.example:5000/team/app", "3"),
    ] {
        assert!(
            rows.iter()
                .any(|r| r.0 == n && r.1 == t && r.2 == id[7..19]),
            "{n}:{t} in {rows:?}"
        );
    }
    let doc = e.inspect(&e.store(), "app:v2");
    let mut tags: Vec<String> = serde_json::from_value(doc["RepoTags"].clone()).unwrap();
    tags.sort();
    assert_eq!(
        tags,
        ["app:latest", "app:v2", "registry.example:5000/team/app:3"]
    );
    // Moving a tag leaves the other image its own.
    e.ok(&["tag", "other:1", "app:v2"]);
    assert_eq!(e.inspect(&e.store(), "app:v2")["Id"], other.as_str());
    assert_eq!(e.inspect(&e.store(), "app")["Id"], id.as_str());

    for bad in [
        "nosuch",
        "app:nosuch",
        "app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let err = e.fails(&["inspect", bad]);
        assert!(err.contains("no such image"), "{bad}: {err}");
    }
    let err = e.fails(&["tag", "app", "Bad Name"]);
    assert!(err.contains("invalid image reference"), "{err}");
    e.assert_no_leaks();
}

#[test]
fn store_is_an_oci_layout_that_skopeo_reads_and_writes() {
    need_root!();
    let e = Env::new();
    let rootfs = e.rootfs("rootfs", "skopeo\n");
    let id = e.import(&rootfs, "a:1");
    let doc = e.inspect(&e.store(), "a:1");
    let store = e.store();
    let store = store.to_str().unwrap();

    // skopeo reads the store as it is.
    let si: Value =
        serde_json::from_str(&e.tool("skopeo", &["inspect", &format!("oci:{store}:a:1")])).unwrap();
    assert_eq!(si["Digest"], doc["Digest"]);
    assert_eq!(si["Layers"], serde_json::json!(manifest_layers(&doc)));
    let raw: Value = serde_json::from_str(&e.tool(
        "skopeo",
        &["inspect", "--config", &format!("oci:{store}:a:1")],
    ))
    .unwrap();
    assert_eq!(raw["rootfs"], doc["Config"]["rootfs"]);

    // skopeo writes an OCI layout; strata loads it into a fresh store: same image.
    let other = e.path("other");
    e.tool(
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{store}:a:1"),
            &format!("oci:{}:b:2", other.display()),
        ],
    );
    let store2 = e.path("store2");
    let args = ["load", "-i", other.to_str().unwrap()];
    let o = ok_output(e.strata_env(&store2, &args, &[]), &args);
    assert!(o.contains("b:2"), "{o}");
    assert_eq!(e.inspect(&store2, "b:2")["Id"], id.as_str());
    e.assert_cat(&store2, "b:2", "/etc/greeting", "skopeo\n");

    // docker save format (uncompressed layers, manifest.json): same ID, runnable.
    e.tool(
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{store}:a:1"),
            "docker-archive:x.tar:foo/bar:3",
        ],
    );
    let o = e.ok(&["load", "-i", "x.tar"]);
    assert!(o.contains("foo/bar:3"), "{o}");
    let d = e.inspect(&e.store(), "foo/bar:3");
    assert_eq!(d["Id"], id.as_str());
    e.assert_cat(&e.store(), "foo/bar:3", "/etc/greeting", "skopeo\n");
    // Its layer is the same content: it shares the extracted directory.
    assert_eq!(d["Layers"], doc["Layers"]);
    assert_eq!(names_in(&e.store().join("layers/sha256")).len(), 1);

    // And skopeo still reads the store after strata wrote to it again.
    e.tool("skopeo", &["inspect", &format!("oci:{store}:foo/bar:3")]);
    e.assert_no_leaks();
}

#[test]
fn save_and_load_round_trip_into_another_store() {
    need_root!();
    let e = Env::new();
    let id = e.import(&e.rootfs("rootfs", "saved\n"), "a:1");
    e.ok(&["tag", "a:1", "b:2"]);
    let id2 = e.import(&e.tiny_rootfs("tiny", "tiny\n"), "tiny:1");
    e.ok(&["save", "-o", "f.tar", "a:1", "b:2", "tiny:1"]);
    // It is an OCI archive skopeo reads too.
    e.tool("skopeo", &["inspect", "oci-archive:f.tar:b:2"]);

    let store2 = e.path("store2");
    let args = ["load", "-i", "f.tar"];
    let o = ok_output(e.strata_env(&store2, &args, &[]), &args);
    for t in ["a:1", "b:2", "tiny:1"] {
        assert!(o.contains(&format!("Loaded image: {t}")), "{o}");
    }
    assert_eq!(
        e.tags(&store2),
        BTreeSet::from(["a:1".into(), "b:2".into(), "tiny:1".into()])
    );
    assert_eq!(e.inspect(&store2, "a:1")["Id"], id.as_str());
    assert_eq!(e.inspect(&store2, "b:2")["Id"], id.as_str());
    assert_eq!(e.inspect(&store2, "tiny:1")["Id"], id2.as_str());
    assert_eq!(
        e.inspect(&store2, "a:1")["Digest"],
        e.inspect(&e.store(), "a:1")["Digest"]
    );
    e.assert_cat(&store2, "b:2", "/etc/greeting", "saved\n");
    // The same blobs, no more.
    let blobs1 = names_in(&e.store().join("blobs/sha256"));
    let blobs2 = names_in(&store2.join("blobs/sha256"));
    assert_eq!(blobs1, blobs2);

    // Loading twice is harmless; an untagged save loads as an untagged image.
    ok_output(e.strata_env(&store2, &args, &[]), &args);
    assert_eq!(e.tags(&store2).len(), 3);
    e.ok(&["save", "-o", "byid.tar", &id[7..19]]);
    let store3 = e.path("store3");
    let args = ["load", "-i", "byid.tar"];
    let o = ok_output(e.strata_env(&store3, &args, &[]), &args);
    assert!(o.contains(&format!("Loaded image ID: {id}")), "{o}");
    assert!(e.tags(&store3).is_empty());
    assert_eq!(e.inspect(&store3, &id)["Id"], id.as_str());
    e.assert_no_leaks();
}

#[test]
fn hostile_tars_are_refused_and_write_nothing_outside() {
    need_root!();
    let e = Env::new();
    let outside = e.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let out = outside.display().to_string();
    let victim = e.path("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let vic = victim.display().to_string();
    // (name, tar body, the entry the message must name)
    let cases: Vec<(&str, String, &str)> = vec![
        ("dotdot", "f('ok')\nf('../escape')".into(), "../escape"),
        (
            "dotdot-deep",
            "d('a')\nf('a/../../../outside/escape')".into(),
            "a/../../../outside/escape",
        ),
        ("absolute", format!("f('ok')\nf('{out}/abs')"), "/abs"),
        (
            "symlink-parent",
            format!("sym('link', '{out}')\nf('link/evil')"),
            "link/evil",
        ),
        (
            "symlink-parent-relative",
            "sym('link', '../../../outside')\nf('link/evil')".into(),
            "link/evil",
        ),
        (
            "symlink-dir-parent",
            format!("sym('link', '{out}')\nd('link/sub')\nf('link/sub/evil')"),
            "link/sub",
        ),
        (
            "hardlink-dotdot",
            "hard('pw', '../../etc/passwd')".into(),
            "pw",
        ),
        ("hardlink-absolute", format!("hard('pw', '{vic}')"), "pw"),
        (
            "hardlink-missing",
            "hard('pw', 'not/in/the/tar')".into(),
            "pw",
        ),
        (
            "hardlink-through-symlink",
            format!(
                "sym('l', '{}')\nhard('pw', 'l/victim')",
                e.dir.path().display()
            ),
            "pw",
        ),
    ];
    for (name, body, entry) in &cases {
        let tar = e.path(&format!("{name}.tar"));
        python_tar(&e, &tar, body);
        let err = e.fails(&["import", tar.to_str().unwrap(), &format!("evil:{name}")]);
        assert!(
            err.contains("refusing entry") && err.contains(entry),
            "{name}: the message should name entry {entry:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    }
    assert_eq!(names_in(&outside), BTreeSet::new(), "written outside");
    assert!(!e.path("escape").exists() && !e.path("store/escape").exists());
    assert!(!e.path("store/blobs/escape").exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        std::fs::metadata(&victim)
            .map(|m| std::os::unix::fs::MetadataExt::nlink(&m))
            .unwrap(),
        1,
        "hard-linked from the store"
    );
    assert_eq!(e.tags(&e.store()), BTreeSet::new(), "a tag was created");
    assert_eq!(e.ok(&["images", "-q"]), "");
    assert_eq!(names_in(&e.store().join("layers/sha256")), BTreeSet::new());
    assert_eq!(names_in(&e.store().join("tmp")), BTreeSet::new());
    let layers_dir: BTreeSet<String> = std::fs::read_dir(e.store().join("layers"))
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        layers_dir,
        BTreeSet::from(["sha256".to_string()]),
        "temp layers left"
    );

    // A benign tar with the same shapes inside the layer is fine.
    let tar = e.path("benign.tar");
    python_tar(
        &e,
        &tar,
        "d('dir')\nf('dir/file', b'data')\nhard('dir/hard', 'dir/file')\nsym('link', 'dir')\nsym('abs', '/etc/passwd')",
    );
    e.ok(&["import", tar.to_str().unwrap(), "benign"]);
    let layer = e.inspect(&e.store(), "benign")["Layers"][0]
        .as_str()
        .unwrap()
        .to_string();
    let layer = Path::new(&layer);
    assert_eq!(std::fs::read(layer.join("dir/hard")).unwrap(), b"data");
    assert_eq!(
        std::fs::read_link(layer.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
}

/// The digest of the single layer blob of `image`.
fn layer_blob(e: &Env, image: &str) -> (String, PathBuf) {
    let doc = e.inspect(&e.store(), image);
    let digest = manifest_layers(&doc).pop().unwrap();
    let path = e.store().join("blobs/sha256").join(&digest[7..]);
    (digest, path)
}

#[test]
fn corrupt_layer_blob_is_a_digest_mismatch_on_run() {
    need_root!();
    let e = Env::new();
    e.import(&e.rootfs("rootfs", "x\n"), "a:1");
    let (digest, blob) = layer_blob(&e, "a:1");
    let layer = PathBuf::from(e.inspect(&e.store(), "a:1")["Layers"][0].as_str().unwrap());
    assert!(layer.is_dir());

    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, &bytes).unwrap();
    std::fs::remove_dir_all(&layer).unwrap();

    let err = fail_output(
        e.run(&["run", "--rm", "a:1", "true"]),
        &["run", "--rm", "a:1", "true"],
    );
    assert!(
        err.contains("digest mismatch") && err.contains(&digest[7..]),
        "the error should be a digest mismatch naming {digest}: {err}"
    );
    assert!(!layer.exists(), "a corrupt blob was extracted");
    assert_eq!(
        names_in(&e.store().join("layers")),
        BTreeSet::from(["sha256".to_string()])
    );
    assert!(e.containers().is_empty());

    // Corruption near the end (the gzip trailer) and a truncated blob are caught too.
    let good_len = bytes.len();
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    let n = bytes.len();
    bytes[n - 6] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let err = fail_output(e.run(&["run", "--rm", "a:1", "true"]), &["run"]);
    assert!(err.contains("digest mismatch"), "trailer: {err}");
    bytes[n - 6] ^= 0x01;
    std::fs::write(&blob, &bytes[..good_len - 100]).unwrap();
    let err = fail_output(e.run(&["run", "--rm", "a:1", "true"]), &["run"]);
    assert!(err.contains("digest mismatch"), "truncated: {err}");
    // Repaired, it runs again.
    std::fs::write(&blob, &bytes).unwrap();
    e.ok(&["run", "--rm", "a:1", "true"]);
    // A missing blob is named as such.
    std::fs::remove_dir_all(&layer).unwrap();
    std::fs::remove_file(&blob).unwrap();
    let err = fail_output(e.run(&["run", "--rm", "a:1", "true"]), &["run"]);
    assert!(
        err.contains("missing") && err.contains(&digest[7..]),
        "{err}"
    );
    e.assert_no_leaks();
}

#[test]
fn truncated_blob_in_archive_fails_load_and_adds_no_tag() {
    need_root!();
    let e = Env::new();
    e.import(&e.rootfs("rootfs", "x\n"), "a:1");
    let (digest, _) = layer_blob(&e, "a:1");
    e.ok(&["save", "-o", "good.tar", "a:1"]);
    // Rewrite the archive with the layer blob cut in half (a well-formed tar).
    let script = format!(
        r#"
import io, sys, tarfile
src = tarfile.open("good.tar")
with tarfile.open("trunc.tar", "w", format=tarfile.GNU_FORMAT) as out:
    for m in src.getmembers():
        data = src.extractfile(m).read() if m.isfile() else None
        if m.name == "blobs/sha256/{hex}":
            data = data[: len(data) // 2]
            m.size = len(data)
        out.addfile(m, io.BytesIO(data) if data is not None else None)
"#,
        hex = &digest[7..]
    );
    e.tool("python3", &["-c", &script]);
    // And the archive itself cut short in the middle of that blob.
    let good = std::fs::read(e.path("good.tar")).unwrap();
    std::fs::write(e.path("cut.tar"), &good[..good.len() / 2]).unwrap();

    let store2 = e.path("store2");
    for f in ["trunc.tar", "cut.tar"] {
        let args = ["load", "-i", f];
        let err = fail_output(e.strata_env(&store2, &args, &[]), &args);
        assert!(
            err.contains(&digest[7..]) && err.contains("digest mismatch"),
            "{f}: the error should name the blob: {err}"
        );
        assert!(e.tags(&store2).is_empty(), "{f}: a tag was added");
        assert!(!store2.join("blobs/sha256").join(&digest[7..]).exists());
    }
    // The good one loads.
    let args = ["load", "-i", "good.tar"];
    ok_output(e.strata_env(&store2, &args, &[]), &args);
    assert_eq!(e.tags(&store2), BTreeSet::from(["a:1".to_string()]));
}

#[test]
fn layout_whose_index_names_a_missing_blob_is_a_clear_error() {
    need_root!();
    let e = Env::new();
    e.import(&e.tiny_rootfs("tiny", "x\n"), "a:1");
    let (digest, _) = layer_blob(&e, "a:1");
    let store = e.store();
    let lay = e.path("lay");
    e.tool(
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{}:a:1", store.display()),
            &format!("oci:{}:b:2", lay.display()),
        ],
    );
    std::fs::remove_file(lay.join("blobs/sha256").join(&digest[7..])).unwrap();
    let store2 = e.path("store2");
    let args = ["load", "-i", lay.to_str().unwrap()];
    let err = fail_output(e.strata_env(&store2, &args, &[]), &args);
    assert!(
        err.contains(&digest[7..]) && err.contains("missing"),
        "the error should name the missing blob {digest}: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(e.tags(&store2).is_empty(), "a tag was added");

    // An index naming a manifest that is not there at all.
    let mut index = e.index(&lay);
    let bogus = format!("sha256:{}", "ab".repeat(32));
    index["manifests"][0]["digest"] = Value::from(bogus.clone());
    std::fs::write(lay.join("index.json"), index.to_string()).unwrap();
    let err = fail_output(e.strata_env(&store2, &args, &[]), &args);
    assert!(
        err.contains(&bogus[7..]) && err.contains("missing"),
        "{err}"
    );
    assert!(e.tags(&store2).is_empty(), "a tag was added");
}

#[test]
fn rmi_refuses_an_image_in_use_unless_forced() {
    need_root!();
    let e = Env::new();
    let id = e.import(&e.rootfs("rootfs", "x\n"), "a:1");
    let layer = PathBuf::from(e.inspect(&e.store(), "a:1")["Layers"][0].as_str().unwrap());
    e.ok(&["create", "--name", "user1", "a:1", "true"]);
    for r in ["a:1", &id[7..19]] {
        let err = e.fails(&["rmi", r]);
        assert!(
            err.contains("user1"),
            "the error should name the container: {err}"
        );
        assert_eq!(e.inspect(&e.store(), "a:1")["Id"], id.as_str());
    }
    // -f removes the image; the container keeps its layer.
    let o = e.ok(&["rmi", "-f", "a:1"]);
    assert!(o.contains(&format!("Deleted: {id}")), "{o}");
    assert!(e.tags(&e.store()).is_empty());
    assert!(layer.is_dir(), "the container's layer was freed");
    e.ok(&["start", "-a", "user1"]);
    e.ok(&["rm", "user1"]);
    e.assert_no_leaks();
}

#[test]
fn rmi_of_one_of_several_tags_only_untags() {
    need_root!();
    let e = Env::new();
    let id = e.import(&e.tiny_rootfs("tiny", "x\n"), "a:1");
    e.ok(&["tag", "a:1", "b:2"]);
    let blobs = names_in(&e.store().join("blobs/sha256"));
    let o = e.ok(&["rmi", "a:1"]);
    assert!(o.contains("Untagged: a:1"), "{o}");
    assert!(!o.contains("Deleted"), "{o}");
    assert_eq!(e.tags(&e.store()), BTreeSet::from(["b:2".to_string()]));
    assert_eq!(e.inspect(&e.store(), "b:2")["Id"], id.as_str());
    assert_eq!(names_in(&e.store().join("blobs/sha256")), blobs);
    let o = e.ok(&["rmi", "b:2"]);
    assert!(
        o.contains("Untagged: b:2") && o.contains(&format!("Deleted: {id}")),
        "{o}"
    );
    assert!(e.tags(&e.store()).is_empty());
    assert_eq!(e.index(&e.store())["manifests"], serde_json::json!([]));
    let err = e.fails(&["rmi", "b:2"]);
    assert!(err.contains("no such image"), "{err}");
}

#[test]
fn rmi_of_an_image_id_removes_every_manifest_of_it() {
    need_root!();
    let e = Env::new();
    let id = e.import(&e.tiny_rootfs("tiny", "x\n"), "a:1");
    // A docker archive of it loads as a second manifest (uncompressed layer) of the same ID.
    let src = format!("oci:{}:a:1", e.store().display());
    e.tool(
        "skopeo",
        &["copy", "-q", &src, "docker-archive:x.tar:foo/bar:3"],
    );
    e.ok(&["load", "-i", "x.tar"]);
    assert_eq!(e.inspect(&e.store(), "foo/bar:3")["Id"], id.as_str());
    assert_ne!(
        e.inspect(&e.store(), "foo/bar:3")["Digest"],
        e.inspect(&e.store(), "a:1")["Digest"]
    );
    // One of its two tags: only untagged.
    let o = e.ok(&["rmi", "foo/bar:3"]);
    assert!(
        o.contains("Untagged: foo/bar:3") && !o.contains("Deleted"),
        "{o}"
    );
    assert_eq!(e.tags(&e.store()), BTreeSet::from(["a:1".to_string()]));
    // By ID while two tags name it: refused without -f, as docker does.
    e.ok(&["load", "-i", "x.tar"]);
    let err = e.fails(&["rmi", &id[7..19]]);
    assert!(err.contains("referenced by 2 tags"), "{err}");
    // With -f: the image is gone, whichever manifest it came with.
    let o = e.ok(&["rmi", "-f", &id[7..19]]);
    assert!(
        o.contains("Untagged: a:1")
            && o.contains("Untagged: foo/bar:3")
            && o.contains(&format!("Deleted: {id}")),
        "{o}"
    );
    assert_eq!(
        e.ok(&["images", "-q"]),
        "",
        "the deleted ID is still listed"
    );
    assert_eq!(names_in(&e.store().join("blobs/sha256")), BTreeSet::new());
    assert_eq!(names_in(&e.store().join("layers/sha256")), BTreeSet::new());
}

#[test]
fn rmi_frees_unreferenced_blobs_and_layers_and_keeps_shared_ones() {
    need_root!();
    let e = Env::new();
    let blobs = || names_in(&e.store().join("blobs/sha256"));
    let layers = || names_in(&e.store().join("layers/sha256"));
    let dir = e.rootfs("rootfs", "shared\n");
    // Two images of one layer (created at different times: different configs), and a third
    // with a layer of its own.
    let future =
        |s: &'static str| -> Vec<(&'static str, &'static str)> { vec![("SOURCE_DATE_EPOCH", s)] };
    let import = |name: &str, env: &[(&str, &str)]| {
        let args = ["import", dir.to_str().unwrap(), name];
        ok_output(e.strata_env(&e.store(), &args, env), &args)
            .trim()
            .to_string()
    };
    let a = import("a:1", &future("4000000000"));
    let b = import("b:1", &future("4000000001"));
    assert_ne!(a, b);
    let da = e.inspect(&e.store(), "a:1");
    let db = e.inspect(&e.store(), "b:1");
    assert_eq!(
        manifest_layers(&da),
        manifest_layers(&db),
        "one shared layer"
    );
    let c = e.import(&e.tiny_rootfs("tiny", "own\n"), "c:1");
    let dc = e.inspect(&e.store(), "c:1");
    assert_eq!(dc["Id"], c.as_str());
    // 3 manifests + 3 configs + 2 layer blobs; 2 extracted layers.
    assert_eq!(blobs().len(), 8, "{:?}", blobs());
    assert_eq!(layers().len(), 2);

    let hex = |v: &Value| v.as_str().unwrap()[7..].to_string();
    let before = blobs();
    e.ok(&["rmi", "a:1"]);
    let gone: BTreeSet<String> = before.difference(&blobs()).cloned().collect();
    assert_eq!(
        gone,
        BTreeSet::from([hex(&da["Digest"]), hex(&da["Id"])]),
        "only a's manifest and config go"
    );
    assert_eq!(layers().len(), 2, "the shared layer stays");
    e.assert_cat(&e.store(), "b:1", "/etc/greeting", "shared\n");

    e.ok(&["rmi", "c:1"]);
    assert_eq!(blobs().len(), 3, "{:?}", blobs());
    assert_eq!(
        layers(),
        BTreeSet::from([hex(&db["Config"]["rootfs"]["diff_ids"][0])])
    );
    assert!(!e.store().join("blobs/sha256").join(hex(&dc["Id"])).exists());

    e.ok(&["rmi", &b[7..19]]);
    assert_eq!(blobs(), BTreeSet::new());
    assert_eq!(layers(), BTreeSet::new());
    assert!(e.tags(&e.store()).is_empty());
    e.assert_no_leaks();
}

#[test]
fn concurrent_imports_and_tags_never_corrupt_the_index() {
    need_root!();
    let e = Env::new();
    let base = e.import(&e.tiny_rootfs("base", "base\n"), "base:1");
    let strata = env!("CARGO_BIN_EXE_strata");
    let store = e.store();
    let mut want = BTreeSet::from(["base:1".to_string()]);
    for i in 0..10 {
        let one = e.tiny_rootfs(&format!("one{i}"), &format!("one {i}\n"));
        let two = e.tiny_rootfs(&format!("two{i}"), &format!("two {i}\n"));
        let jobs: Vec<Vec<String>> = vec![
            vec![
                "import".into(),
                one.display().to_string(),
                format!("one:{i}"),
            ],
            vec![
                "import".into(),
                two.display().to_string(),
                format!("two:{i}"),
            ],
            vec!["tag".into(), "base:1".into(), format!("t1:{i}")],
            vec!["tag".into(), "base:1".into(), format!("t2:{i}")],
        ];
        let children: Vec<_> = jobs
            .iter()
            .map(|args| {
                let store = store.clone();
                let args = args.clone();
                std::thread::spawn(move || {
                    let mut c = Command::new(strata);
                    c.arg("--root").arg(&store).args(&args);
                    let o = run_deadline(c, &format!("strata {args:?}"), COMMAND_DEADLINE, None);
                    (args, o)
                })
            })
            .collect();
        for c in children {
            let (args, o) = c.join().unwrap();
            assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        }
        want.extend([
            format!("one:{i}"),
            format!("two:{i}"),
            format!("t1:{i}"),
            format!("t2:{i}"),
        ]);
        // Parses (e.index panics otherwise) and has every tag so far.
        assert_eq!(e.tags(&store), want, "round {i}");
    }
    assert_eq!(e.inspect(&store, "t2:9")["Id"], base.as_str());
    // Every tag resolves and no writer left temp files behind.
    let rows = image_rows(&e.ok(&["images"]));
    assert_eq!(rows.len(), want.len());
    let temps: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .chain(std::fs::read_dir(store.join("blobs/sha256")).unwrap())
        .flatten()
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert_eq!(temps, Vec::<String>::new());
}

#[test]
fn tag_racing_rmi_never_leaves_a_tag_on_freed_blobs() {
    need_root!();
    let e = Env::new();
    let tiny = e.tiny_rootfs("tiny", "x\n");
    let strata = env!("CARGO_BIN_EXE_strata");
    for i in 0..30 {
        e.import(&tiny, "a:1");
        let jobs = [
            vec!["tag".to_string(), "a:1".into(), format!("keep:{i}")],
            vec!["rmi".to_string(), "a:1".into()],
        ];
        let children: Vec<_> = jobs
            .into_iter()
            .map(|args| {
                let store = e.store();
                std::thread::spawn(move || {
                    let mut c = Command::new(strata);
                    c.arg("--root").arg(&store).args(&args);
                    run_deadline(c, &format!("strata {args:?}"), COMMAND_DEADLINE, None)
                })
            })
            .collect();
        for c in children {
            c.join().unwrap();
        }
        // Whichever won, every tag in the index names a manifest whose blobs are there.
        e.ok(&["images"]);
        for t in e.tags(&e.store()) {
            e.inspect(&e.store(), &t);
        }
        let _ = e.run(&["rmi", "-f", &format!("keep:{i}")]);
    }
}

#[test]
fn import_with_source_date_epoch_is_reproducible() {
    need_root!();
    let e = Env::new();
    let dir = e.rootfs("rootfs", "same\n");
    e.tool("tar", &["-C", "rootfs", "-cf", "root.tar", "."]);
    let epoch = [("SOURCE_DATE_EPOCH", "0")];
    let import = |src: &str, name: &str| {
        let args = ["import", src, name];
        ok_output(e.strata_env(&e.store(), &args, &epoch), &args)
            .trim()
            .to_string()
    };
    let dir = dir.to_str().unwrap();
    let first = import(dir, "r:1");
    let first_tar = import("root.tar", "t:1");
    // Past a second boundary: "now" would differ; touch the files: their times are clamped.
    std::thread::sleep(Duration::from_millis(1100));
    e.tool(
        "touch",
        &[&format!("{dir}/etc/greeting"), &format!("{dir}/bin")],
    );
    assert_eq!(import(dir, "r:2"), first, "directory import");
    assert_eq!(import("root.tar", "t:2"), first_tar, "tar import");
    let doc = e.inspect(&e.store(), "r:2");
    assert_eq!(doc["Config"]["created"], "1970-01-01T00:00:00Z");
    // Still one image each, with both tags.
    assert_eq!(e.ok(&["images", "-q"]).lines().count(), 2);
    // A second store gets the same ID too.
    let store2 = e.path("store2");
    let args = ["import", dir, "r:1"];
    let o = ok_output(e.strata_env(&store2, &args, &epoch), &args);
    assert_eq!(o.trim(), first);
}

#[test]
fn rmi_of_several_removes_all_it_can_and_reports_the_missing() {
    need_root!();
    let e = Env::new();
    let a = e.import(&e.tiny_rootfs("a", "a\n"), "a:1");
    let b = e.import(&e.tiny_rootfs("b", "b\n"), "b:1");
    let o = e.run(&["rmi", "a:1", "missing:1", "b:1"]);
    assert_eq!(o.status.code(), Some(125));
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("Deleted: {a}")) && out.contains(&format!("Deleted: {b}")),
        "{out}"
    );
    assert_eq!(text(&o.stderr).trim(), "strata: no such image: missing:1");
    assert!(e.tags(&e.store()).is_empty());
    // Garbage collection ran for what did go.
    assert_eq!(names_in(&e.store().join("blobs/sha256")), BTreeSet::new());
    assert_eq!(names_in(&e.store().join("layers/sha256")), BTreeSet::new());
}

#[test]
fn load_tells_of_names_that_are_not_references() {
    need_root!();
    let e = Env::new();
    let id = e.import(&e.tiny_rootfs("tiny", "x\n"), "src:1");
    e.ok(&["save", "-o", "saved.tar", "src:1"]);
    // From strata's own archive: an OCI archive whose index names the image "bad\nname:1",
    // and a docker archive whose manifest.json does.
    let script = r#"
import io, json, sys, tarfile
src, oci, dock = sys.argv[1:4]
with tarfile.open(src) as t:
    members = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
def write(path, keep, edit):
    with tarfile.open(path, "w") as o:
        for m, data in members:
            if m.name not in keep and not m.name.startswith("blobs"):
                continue
            if data is None:
                o.addfile(m)
                continue
            data = edit(m.name, data)
            m.size = len(data)
            o.addfile(m, io.BytesIO(data))
def oci_edit(name, data):
    if name == "index.json":
        i = json.loads(data)
        i["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "bad\nname:1"
        data = json.dumps(i).encode()
    return data
def docker_edit(name, data):
    if name == "manifest.json":
        m = json.loads(data)
        m[0]["RepoTags"] = ["good:1", "bad\nname:1"]
        data = json.dumps(m).encode()
    return data
write(oci, {"index.json", "oci-layout"}, oci_edit)
write(dock, {"manifest.json"}, docker_edit)
"#;
    e.tool(
        "python3",
        &["-c", script, "saved.tar", "oci.tar", "docker.tar"],
    );

    // OCI: the image loads, without that name, and the user is told which entry held it.
    let store2 = e.path("store2");
    let o = e.strata_env(&store2, &["load", "-i", "oci.tar"], &[]);
    let out = ok_output(o.clone(), &["load", "-i", "oci.tar"]);
    assert_eq!(out, format!("Loaded image ID: {id}\n"));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("strata: warning: oci.tar: index.json entry 1 ")
            && err.contains(r#""bad\nname:1""#)
            && err.contains("loaded without that name"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(e.tags(&store2).is_empty());
    assert_eq!(e.inspect(&store2, &id)["Id"], id.as_str());

    // docker's manifest.json: the load fails as docker load does, naming the entry, and tags
    // nothing (not even the good name).
    let store3 = e.path("store3");
    let o = e.strata_env(&store3, &["load", "-i", "docker.tar"], &[]);
    let err = fail_output(o, &["load", "-i", "docker.tar"]);
    assert!(
        err.contains("docker.tar: manifest.json entry 1 ")
            && err.contains("RepoTags")
            && err.contains(r#""bad\nname:1""#),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(e.tags(&store3).is_empty());
}

/// A listing verb whose reader has gone (`strata images | head -0`) ends by SIGPIPE, as
/// other command-line tools do, not with a panic about a failed print.
#[test]
fn listing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    need_root!();
    let e = Env::new();
    let rootfs = e.rootfs("rootfs", "hi\n");
    e.import(&rootfs, "piped:1");
    for args in [&["images"][..], &["history", "piped:1"], &["ps", "-a"]] {
        let (read, write) = rustix::pipe::pipe().unwrap();
        drop(read);
        let mut c = e.command_in(&e.store(), None, args);
        c.stdout(std::process::Stdio::from(write));
        let err = e.path("stderr");
        c.stderr(std::fs::File::create(&err).unwrap());
        let mut child = c.spawn().unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > COMMAND_DEADLINE {
                let _ = child.kill();
                panic!("{args:?} into a closed pipe did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&err).unwrap();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {status:?} {stderr}"
        );
    }
}
