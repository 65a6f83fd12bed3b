//! The store is private: another local user can neither open nor execute anything in it
//! (extracted layers keep set-uid-root programs, containers can plant them in their writable
//! layers and volumes), for root and rootless stores, and a store an older version left
//! world-readable is closed when it is next opened. What must keep working with a private
//! store works: containers running as a non-root user, `exec` into them, volumes, builds with
//! `USER`.
//!
//! Each test walks its store as root, then tries every path as another user in one process.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{run_deadline, StrataEnv, COMMAND_DEADLINE};

/// Tries, as the user it is run as, every path of the NUL-separated list in argv[1]: lstat,
/// open (without following a last symlink) and, for executable files, running them. Prints
/// each path it reached and how.
const PROBE: &str = r#"
import os, stat, subprocess, sys
for p in open(sys.argv[1], "rb").read().split(b"\0"):
    if not p:
        continue
    how, st = [], None
    try:
        st = os.lstat(p)
        how.append("stat")
    except OSError:
        pass
    try:
        os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
        how.append("open")
    except OSError:
        pass
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
        try:
            r = subprocess.run([p], capture_output=True, timeout=5)
            out = r.stdout.decode(errors="replace").strip().replace("\n", " ")
            how.append("exec:" + out[:120])
        except Exception:
            pass
    if how:
        print(p.decode(errors="replace"), " ".join(how))
"#;

/// Every path under `dir` (not crossing into mounts, which are listed themselves).
fn walk(dir: &Path, dev: u64, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if let Ok(m) = fs::symlink_metadata(&p) {
            if m.is_dir() && m.dev() == dev {
                walk(&p, dev, out);
            }
        }
    }
}

/// What of the store at `root` (the root itself included) the user `(uid, gid)` reached, as
/// `PATH HOW` lines. Seeing that the root exists (`stat` of it alone) is not reaching it.
fn reached(env: &StrataEnv, root: &Path, (uid, gid): (u32, u32)) -> Vec<String> {
    let dev = fs::metadata(root).unwrap().dev();
    let mut paths = vec![root.to_path_buf()];
    walk(root, dev, &mut paths);
    assert!(paths.len() > 20, "the store is nearly empty: {paths:?}");
    let list = env.path("paths.list");
    let mut bytes = Vec::new();
    for p in &paths {
        bytes.extend_from_slice(p.as_os_str().as_encoded_bytes());
        bytes.push(0);
    }
    fs::write(&list, bytes).unwrap();
    fs::set_permissions(&list, fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "/usr/bin/python3", "-c", PROBE])
        .arg(&list)
        .current_dir("/");
    let o = run_deadline(c, "probe the store", COMMAND_DEADLINE, None);
    assert!(
        o.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let root_seen = format!("{} stat", root.display());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| *l != root_seen)
        .map(String::from)
        .collect()
}

/// Let other users traverse the test's directory and its parents, so only the store's own
/// modes stand between them and its content.
fn open_test_dir(env: &StrataEnv) {
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut p = env.dir.path().parent();
    while let Some(d) = p {
        let m = fs::metadata(d).unwrap().permissions().mode();
        if m & 0o001 == 0 {
            fs::set_permissions(d, fs::Permissions::from_mode(m | 0o001)).unwrap();
        }
        p = d.parent();
    }
}

/// The issue's reproducer: a tar holding a copy of `id` that is set-uid root.
fn suid_tar(env: &StrataEnv) -> PathBuf {
    let out = env.path("suid.tar");
    env.tool(
        "python3",
        &[
            "-c",
            "import io, sys, tarfile\n\
             d = open('/usr/bin/id', 'rb').read()\n\
             with tarfile.open(sys.argv[1], 'w') as t:\n\
             \x20   i = tarfile.TarInfo('suidid'); i.size = len(d); i.mode = 0o4755\n\
             \x20   t.addfile(i, io.BytesIO(d))\n",
            out.to_str().unwrap(),
        ],
    );
    out
}

/// A busybox image with a user 1000 who owns a private file, built with `USER 1000`.
fn build_app(env: &StrataEnv) {
    let ctx = env.busybox_context("app");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /etc /tmp /home/u && chmod 1777 /tmp && \
             echo 'root:x:0:0::/root:/bin/sh' > /etc/passwd && \
             echo 'u:x:1000:1000::/home/u:/bin/sh' >> /etc/passwd && \
             echo greeting > /etc/greeting && echo own > /home/u/own && \
             chown -R 1000:1000 /home/u && chmod 600 /home/u/own\n\
         USER 1000\n\
         RUN id -u > /home/u/built-as\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "app", ctx.to_str().unwrap()]);
}

/// Fill the store with what must stay private, checking on the way that a container running
/// as user 1000 works: reads its files, writes (copy-up as that user), `exec`s.
fn fill_store(env: &StrataEnv) {
    env.ok(&["import", suid_tar(env).to_str().unwrap(), "suid:1"]);
    build_app(env);
    let script = "id -u; cat /etc/greeting /home/u/own /home/u/built-as; \
                  echo new > /home/u/new; cat /home/u/new; echo t > /tmp/t; cat /tmp/t";
    assert_eq!(
        env.ok(&["run", "--rm", "app", "sh", "-c", script]),
        "1000\ngreeting\nown\n1000\nnew\nt\n"
    );
    // A set-uid file planted in a container's writable layer, and in a volume.
    let plant = "cp /bin/busybox /planted && chmod 4755 /planted";
    env.ok(&[
        "run", "--name", "planter", "-u", "0", "app", "sh", "-c", plant,
    ]);
    let plant = "cp /bin/busybox /data/planted && chmod 4755 /data/planted";
    env.ok(&[
        "run",
        "--rm",
        "-u",
        "0",
        "-v",
        "vol:/data",
        "app",
        "sh",
        "-c",
        plant,
    ]);
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-v",
            "vol:/data",
            "app",
            "stat",
            "-c",
            "%a",
            "/data/planted"
        ]),
        "4755\n"
    );
    // A running container of user 1000, which `exec` enters.
    env.ok(&["run", "-d", "--name", "live", "app", "sleep", "1000"]);
    assert_eq!(
        env.ok(&[
            "exec",
            "live",
            "sh",
            "-c",
            "id -u; cat /home/u/own; touch /home/u/x"
        ]),
        "1000\nown\n"
    );
}

/// Fails naming how much of the store `user` reached, and the first paths.
fn assert_unreachable(env: &StrataEnv, root: &Path, user: (u32, u32)) {
    let got = reached(env, root, user);
    assert!(
        got.is_empty(),
        "uid {} reached {} paths of the store {}, such as:\n{}",
        user.0,
        got.len(),
        root.display(),
        got.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn another_user_reaches_nothing_in_a_root_store_and_old_stores_are_closed() {
    need_root!();
    let env = StrataEnv::new("strata-private-");
    open_test_dir(&env);
    fill_store(&env);
    let store = env.store();
    let user = common::unprivileged::setup_user();
    assert_unreachable(&env, &store, user);
    for d in [
        "",
        "layers",
        "layers/sha256",
        "containers",
        "blobs",
        "tmp",
        "volumes",
    ] {
        assert_eq!(mode(&store.join(d)), 0o700, "{d}");
    }
    // skopeo (as root) still reads the store as an OCI layout.
    let src = format!("oci:{}:app:latest", store.display());
    env.tool("skopeo", &["inspect", "--raw", &src]);

    // A store as older versions left it: 0755 everywhere. The probe then finds the way in
    // (and the set-uid copy of `id` runs as root): what the test exists to catch.
    let mut old: Vec<PathBuf> = vec![store.clone()];
    old.extend(strata::image::private::DIRS.iter().map(|d| store.join(d)));
    for parent in ["containers", "volumes"] {
        old.extend(
            fs::read_dir(store.join(parent))
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        );
    }
    for d in old.iter().filter(|d| d.is_dir() && !d.ends_with("runtime")) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let open = reached(&env, &store, user);
    assert!(
        open.iter()
            .any(|l| l.contains("/suidid ") && l.contains("euid=0(root)")),
        "the probe did not find the set-uid file of the old store: {open:?}"
    );
    assert!(
        open.iter().any(|l| l.contains("/upper/planted ")),
        "{open:?}"
    );
    // Any verb opens the store and closes it.
    env.ok(&["ps"]);
    assert_unreachable(&env, &store, user);
    assert_eq!(mode(&store), 0o700);
    assert_eq!(
        env.ok(&["exec", "live", "cat", "/home/u/own"]),
        "own\n",
        "the running container still works"
    );
    env.ok(&["rm", "-f", "live", "planter"]);
    env.assert_no_leaks();
}

#[test]
fn another_user_reaches_nothing_in_a_rootless_store() {
    need_root!();
    let mut env = StrataEnv::new("strata-private-");
    env.rootless();
    open_test_dir(&env);
    fill_store(&env);
    // The other user is `nobody`: the test user owns this store.
    assert_unreachable(&env, &env.store(), (65534, 65534));
    assert_eq!(mode(&env.store()), 0o700);
    env.ok(&["rm", "-f", "live", "planter"]);
    env.assert_no_leaks();
}
