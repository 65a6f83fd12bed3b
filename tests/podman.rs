//! stratafs as podman's `mount_program`, for real: a containers-storage root of its own whose
//! storage.conf points at a wrapper that logs every command line podman passes and then runs
//! stratafs. Imports a busybox rootfs, runs containers on it, builds an image with RUN, COPY
//! and ENV, and checks what podman asked the mount program to do.
//!
//! Needs root and Debian's podman, runc and busybox-static (scripts/test.sh installs them).
//! This VM's cgroups are hybrid (crun refuses them, runc works) and it lacks
//! CAP_SYS_RESOURCE, so the config uses runc and lowers podman's default rlimits.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::unprivileged::*;
use common::*;

const STRATAFS: &str = env!("CARGO_BIN_EXE_stratafs");
/// One podman command may take this long before the test fails.
const PODMAN_DEADLINE: u64 = 120;

/// A private containers-storage root with stratafs as its mount program.
struct Podman {
    dir: tempfile::TempDir,
    runroot: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempdir();
        let root = dir.path();
        // podman keeps sockets under the runroot: its path must stay short. One per instance:
        // the tests of this file run in parallel in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let runroot = PathBuf::from(format!("/run/strata-pm-{}-{n}", std::process::id()));
        fs::create_dir_all(&runroot).unwrap();
        let log = root.join("mount-program.log");
        let wrapper = root.join("mount-program");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\nexec {STRATAFS} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\
                 [storage.options.overlay]\nmount_program = \"{}\"\n",
                root.join("graph").display(),
                runroot.display(),
                wrapper.display()
            ),
        )
        .unwrap();
        // Its own tmp_dir too (exit codes live there; `system reset` empties it), so that
        // parallel tests do not see or clear each other's.
        fs::write(
            root.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\ntmp_dir = \"{}\"\n",
                runroot.join("libpod").display()
            ),
        )
        .unwrap();
        Podman { dir, runroot }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs podman with this storage; panics on a timeout.
    fn run(&self, args: &[&str]) -> Output {
        let root = self.root().to_path_buf();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let what = format!("podman {}", args.join(" "));
        with_timeout(PODMAN_DEADLINE + 10, &what, move || {
            Command::new("timeout")
                .arg(PODMAN_DEADLINE.to_string())
                .arg("podman")
                .args(&args)
                .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
                .env("CONTAINERS_CONF", root.join("containers.conf"))
                .stdin(Stdio::null())
                .output()
                .expect("run podman")
        })
    }

    /// Runs podman and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed: {}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn mount_log(&self) -> String {
        fs::read_to_string(self.root().join("mount-program.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af"]);
        let _ = self.run(&["system", "reset", "-f"]);
        // Whatever podman left mounted under this root goes too.
        for (mnt, _) in mounts() {
            if mnt.starts_with(self.root()) {
                unmount(&mnt);
            }
        }
        let _ = fs::remove_dir_all(&self.runroot);
    }
}

/// A tar of a busybox-static root filesystem with a few files to change.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "data/D"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "ls", "cat", "echo", "rm", "mkdir", "test", "true", "id", "stat",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(rootfs.join("data/D/child"), "lower child\n").unwrap();
    fs::write(rootfs.join("data/delme"), "from the image\n").unwrap();
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

#[test]
fn podman_runs_and_builds_on_stratafs() {
    let pm = Podman::new();
    let tar = busybox_rootfs(pm.root());
    pm.ok(&["import", tar.to_str().unwrap(), "strata-test:base"]);

    // run: a file written in the container, a file deleted from the image, the exit code.
    let o = pm.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "strata-test:base",
        "sh",
        "-c",
        "echo written > /tmp/new && cat /tmp/new && rm /data/delme && \
         test ! -e /data/delme && cat /data/D/child && exit 7",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(7),
        "exit code of the container; stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("written") && stdout.contains("lower child"),
        "{stdout}"
    );
    // The image is untouched for the next container.
    let out = pm.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "strata-test:base",
        "cat",
        "/data/delme",
    ]);
    assert_eq!(out, "from the image\n");

    // build: RUN, COPY and ENV, and `rm -rf D && mkdir D` must not bring lower children back
    // into the committed layer (podman walks the mount with getdents and lstat).
    let ctx = pm.root().join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(ctx.join("file.txt"), "copied in\n").unwrap();
    fs::write(
        ctx.join("Containerfile"),
        "FROM localhost/strata-test:base\nENV GREETING=hello\nCOPY file.txt /file.txt\n\
         RUN rm -rf /data/D && mkdir /data/D && echo $GREETING > /data/D/new\n",
    )
    .unwrap();
    pm.ok(&["build", "-t", "strata-test:built", ctx.to_str().unwrap()]);
    let out = pm.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "strata-test:built",
        "sh",
        "-c",
        "ls /data/D; cat /file.txt; echo $GREETING",
    ]);
    assert_eq!(out, "new\ncopied in\nhello\n", "built image content");

    // What podman passed to the mount program, and that stratafs honoured it.
    let log = pm.mount_log();
    eprintln!("podman mount-program command lines:\n{log}");
    assert!(!log.is_empty(), "podman never called the mount program");
    for line in log.lines() {
        assert!(line.starts_with("-o lowerdir="), "unexpected argv: {line}");
        // Every mount had a real upper (containers) or was read-only, and stratafs parsed
        // every option (it exits non-zero on an unknown one, which podman would report).
        assert!(
            line.contains("upperdir=") == line.contains("workdir="),
            "{line}"
        );
    }
    assert!(
        log.contains("volatile"),
        "podman passes volatile for containers: {log}"
    );
    assert!(log.contains(",,"), "podman passes an empty option: {log}");
    assert!(
        log.lines().any(|l| !l.contains("upperdir=")),
        "a read-only (lowerdir-only) mount for diff/commit: {log}"
    );
    // No stratafs mount outlives its container.
    let left: Vec<_> = mounts()
        .into_iter()
        .filter(|(m, t)| m.starts_with(pm.root()) && t.contains("fuse"))
        .collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

/// Rootful podman with `--uidmap`: podman (containers-storage) hands the mount program its
/// lower layers through idmapped bind mounts (`.../mapped/0/...`) *and* the same mapping as
/// `uidmapping=`/`gidmapping=`. Mapped twice, the image's root-owned files showed the overflow
/// id and runc could not create `/etc/hosts` in the container ("permission denied").
#[test]
fn rootful_podman_with_uidmap_runs_on_stratafs() {
    let pm = Podman::new();
    let tar = busybox_rootfs(pm.root());
    pm.ok(&["import", tar.to_str().unwrap(), "strata-test:base"]);
    // Not --rm: its upper directory is looked at below (dropping `pm` removes it).
    let out = pm.ok(&[
        "run",
        "--name",
        "strata-uidmap",
        "--network",
        "none",
        "--uidmap",
        "0:200000:65536",
        "--gidmap",
        "0:200000:65536",
        "strata-test:base",
        "sh",
        "-c",
        "id -u; stat -c '%u:%g' /etc/passwd /data/D/child; echo made > /etc/new && cat /etc/new; \
         rm /data/delme && test ! -e /data/delme && echo removed",
    ]);
    assert_eq!(
        out, "0\n0:0\n0:0\nmade\nremoved\n",
        "the image's root is the container's root, and it can write"
    );
    let log = pm.mount_log();
    eprintln!("podman mount-program command lines:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("uidmapping=") && l.contains("gidmapping=")),
        "podman passes the mapping to the mount program: {log}"
    );
    // The container's files are stored with the image's ids (0), not the host's (200000).
    let graph = pm.root().join("graph/overlay");
    let stored: Vec<u32> = fs::read_dir(&graph)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::symlink_metadata(e.path().join("diff/etc/new")).ok())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .collect();
    assert_eq!(
        stored,
        [0],
        "the container's upper file keeps container ids on disk"
    );
}

/// Rootless podman with stratafs as its mount program: import, run and build as the
/// unprivileged user, with /etc/subuid and /etc/subgid ranges set up above.
#[test]
fn rootless_podman_runs_and_builds_on_stratafs() {
    let dir = user_dir();
    let _reaper = DaemonReaper(dir.path().to_path_buf());
    let script = r#"
export HOME=$PWD/home XDG_RUNTIME_DIR=$PWD/run
mkdir -p "$HOME" "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
printf '#!/bin/sh\nprintf "%%s\\n" "$*" >> %s/mount-program.log\nexec %s "$@"\n' "$PWD" "$STRATAFS" > mp
chmod 755 mp
cat > storage.conf <<CONF
[storage]
driver = "overlay"
graphroot = "$PWD/graph"
runroot = "$XDG_RUNTIME_DIR/c"
[storage.options.overlay]
mount_program = "$PWD/mp"
CONF
cat > containers.conf <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_STORAGE_CONF=$PWD/storage.conf CONTAINERS_CONF=$PWD/containers.conf
cleanup() { podman system reset -f >/dev/null 2>&1 || true; pkill -u "$(id -u)" catatonit || true; }
trap cleanup EXIT
mkdir -p rootfs/bin rootfs/etc rootfs/tmp rootfs/data/D
cp /bin/busybox rootfs/bin/
for a in sh ls cat echo rm mkdir test; do ln -s busybox rootfs/bin/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' > rootfs/etc/passwd
echo 'root:x:0:' > rootfs/etc/group
echo child > rootfs/data/D/child
echo image > rootfs/data/delme
tar -C rootfs -cf rootfs.tar .
podman import rootfs.tar rl:base >/dev/null
set +e
podman run --rm --network none rl:base sh -c 'echo hi > /tmp/x && cat /tmp/x && rm /data/delme && exit 5'
echo "run-exit=$?"
set -e
podman run --rm --network none rl:base cat /data/delme
mkdir ctx && echo copied > ctx/file.txt
printf 'FROM localhost/rl:base\nENV G=hello\nCOPY file.txt /file.txt\nRUN rm -rf /data/D && mkdir /data/D && echo $G > /data/D/new\n' > ctx/Containerfile
podman build --network none -t rl:built ctx >/dev/null
podman run --rm --network none localhost/rl:built sh -c 'ls /data/D; cat /file.txt; echo $G'
echo "mounts=$(wc -l < mount-program.log)"
"#;
    let o = as_user(script, dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{}\n{out}\n{err}", o.status);
    assert!(out.contains("hi\nrun-exit=5\nimage\n"), "run: {out}\n{err}");
    assert!(out.contains("new\ncopied\nhello\n"), "build: {out}\n{err}");
    assert!(
        !out.contains("mounts=0"),
        "podman used the mount program: {out}"
    );
}
