//! Running things as an unprivileged user: the test user, its set-up, and cleanup guards.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Once;

use super::{mounts, tempdir, unmount, with_timeout};

/// The unprivileged test user.
pub const USER: &str = "strata-rootless";
const STRATAFS: &str = env!("CARGO_BIN_EXE_stratafs");

/// Creates the test user (with subordinate id ranges) and makes /dev/fuse and /dev/net/tun
/// usable by it;
/// returns its uid and gid.
pub fn setup_user() -> (u32, u32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if Command::new("id")
            .arg(USER)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            let st = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/sh", USER])
                .status()
                .expect("useradd");
            assert!(st.success(), "useradd {USER}");
        }
        for f in ["/etc/subuid", "/etc/subgid"] {
            let text = fs::read_to_string(f).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
                fs::write(f, format!("{text}{USER}:400000:65536\n")).unwrap();
            }
        }
        // Debian's modes (some hosts restrict them): FUSE, and the tap device of rootless
        // networking (slirp4netns).
        for dev in ["/dev/fuse", "/dev/net/tun"] {
            let dev = Path::new(dev);
            let mode = fs::metadata(dev)
                .unwrap_or_else(|e| panic!("{}: {e}", dev.display()))
                .permissions()
                .mode();
            if mode & 0o006 != 0o006 {
                fs::set_permissions(dev, fs::Permissions::from_mode(0o666)).unwrap();
            }
        }
    });
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, USER]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Runs `script` with `sh -eu` as the unprivileged user, under a deadline.
pub fn as_user(script: &str, dir: &Path) -> Output {
    let (uid, gid) = setup_user();
    let script = format!("STRATAFS='{STRATAFS}'; export STRATAFS\n{script}");
    let dir = dir.to_path_buf();
    with_timeout(120, "script as the unprivileged user", move || {
        Command::new("timeout")
            .args(["100", "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--init-groups", "--reset-env", "sh", "-eu", "-c", &script])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("setpriv")
    })
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A temp dir the unprivileged user owns, with two lower layers.
pub fn user_dir() -> tempfile::TempDir {
    let (uid, gid) = setup_user();
    let dir = tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    // Every directory above must be searchable by the user.
    let mut p = dir.path().parent();
    while let Some(d) = p {
        let m = fs::metadata(d).unwrap();
        if m.mode() & 0o001 == 0 {
            fs::set_permissions(d, fs::Permissions::from_mode(m.mode() | 0o001)).unwrap();
        }
        p = d.parent();
    }
    dir
}

/// Unmounts on drop (fusermount3 -u, then a lazy umount).
pub struct Unmounter(pub std::path::PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// On drop, ends the stratafs daemons this test started under `dir` (inside a user namespace
/// they are invisible to the host's mount table) and unmounts what is still mounted there.
pub struct DaemonReaper(pub std::path::PathBuf);

impl Drop for DaemonReaper {
    fn drop(&mut self) {
        for (mnt, _) in mounts() {
            if mnt.starts_with(&self.0) {
                unmount(&mnt);
            }
        }
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("stratafs -o lowerdir={}", self.0.display()))
            .status();
    }
}
