//! Killing privileges on change, differentially against kernel overlayfs. stratafs asks the
//! kernel for `FUSE_HANDLE_KILLPRIV_V2`, which leaves clearing set-id bits to the daemon; with
//! passthrough, writes do not even reach the daemon. So: set-uid, set-gid and file-capability
//! files, written, truncated, truncated at open and chowned by an unprivileged user (and by
//! root, who keeps set-id bits on write), must end with the same modes and capabilities as
//! under the kernel, with passthrough on and off.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::unprivileged::*;
use common::*;

/// `security.capability`, version 2, CAP_NET_BIND_SERVICE permitted.
const CAP_V2: [u8; 20] = [
    0, 0, 0, 2, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// (file, mode) in the lower layer, owned by the test user.
const FILES: [(&str, u32); 14] = [
    ("w-suid", 0o4755),
    ("t-suid", 0o4755),
    ("o-suid", 0o4755),
    ("c-suid", 0o4755),
    ("w-sgid", 0o2775),
    ("t-sgid", 0o2775),
    ("w-sgid-nogx", 0o2764),
    ("w-cap", 0o755),
    ("t-cap", 0o755),
    ("rc-suid", 0o4755),
    ("rc-cap", 0o755),
    ("rw-suid", 0o4755),
    ("k-cap", 0o755),
    ("m-suid", 0o755),
];

/// What the user does (as `sh` in the mount). `m-suid` becomes set-uid while open for writing
/// (through passthrough: it was not set-id at the open), then is written.
const USER_SCRIPT: &str = "printf x >> w-suid
truncate -s 1 t-suid
: > o-suid
chown \"$(id -u):$(id -g)\" c-suid
printf x >> w-sgid
truncate -s 0 t-sgid
printf x >> w-sgid-nogx
printf x >> w-cap
truncate -s 0 t-cap
exec 3>>m-suid
chmod 4755 m-suid
printf x >&3
exec 3>&-
";

fn cap_of(p: &Path) -> bool {
    let mut buf = [0u8; 64];
    rustix::fs::getxattr(p, "security.capability", &mut buf[..]).is_ok()
}

/// Runs the scenario on `b` and describes every file afterwards: mode, size, capability.
fn scenario(b: Backend, extra: &[&str]) -> Vec<String> {
    let (uid, gid) = setup_user();
    let fx = Fixture::new(1);
    // The user must reach the mount.
    let mut p = Some(fx.root());
    while let Some(d) = p {
        let m = fs::metadata(d).unwrap();
        if m.mode() & 0o005 != 0o005 {
            fs::set_permissions(d, fs::Permissions::from_mode(m.mode() | 0o005)).unwrap();
        }
        p = d.parent();
    }
    let lower = fx.lower(0);
    for (name, mode) in FILES {
        lower.file(name, b"data");
        std::os::unix::fs::chown(lower.path(name), Some(uid), Some(gid)).unwrap();
        lower.chmod(name, mode);
    }
    for name in ["w-cap", "t-cap", "rc-cap", "k-cap"] {
        lower.xattr(name, "security.capability", &CAP_V2);
    }
    let m = fx.mount_with(
        b,
        &MountSpec {
            writable: true,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        },
    );
    let out = as_user(USER_SCRIPT, &m.root);
    let (so, se) = text(&out);
    assert!(out.status.success(), "{b:?}: {so}{se}");
    m.with_timeout(DEADLINE, |r| {
        std::os::unix::fs::chown(r.join("rc-suid"), Some(12345), None).unwrap();
        std::os::unix::fs::chown(r.join("rc-cap"), Some(12345), None).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(r.join("rw-suid"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"root"))
            .unwrap();
        FILES
            .iter()
            .map(|(name, _)| {
                let md = fs::symlink_metadata(r.join(name)).unwrap();
                format!(
                    "{name}: mode {:o} size {} uid {} cap {}",
                    md.mode() & 0o7777,
                    md.size(),
                    md.uid(),
                    cap_of(&r.join(name))
                )
            })
            .collect()
    })
}

fn matches_kernel(extra: &[&str]) {
    need_root!();
    let kernel = scenario(Backend::Kernel, &[]);
    let strata = scenario(Backend::Stratafs, extra);
    // The scenario must exercise what it claims: the kernel killed set-uid on a user's write
    // and a capability on a user's truncate, and kept set-uid on root's write.
    assert!(
        kernel.iter().any(|l| l.starts_with("w-suid: mode 755 ")),
        "{kernel:#?}"
    );
    assert!(
        kernel.iter().any(|l| l.starts_with("m-suid: mode 755 ")),
        "{kernel:#?}"
    );
    assert!(
        kernel
            .iter()
            .any(|l| l.starts_with("t-cap:") && l.ends_with("cap false")),
        "{kernel:#?}"
    );
    assert!(
        kernel.iter().any(|l| l.starts_with("rw-suid: mode 4755 ")),
        "{kernel:#?}"
    );
    assert!(
        kernel
            .iter()
            .any(|l| l.starts_with("k-cap:") && l.ends_with("cap true")),
        "{kernel:#?}"
    );
    assert_eq!(
        kernel, strata,
        "stratafs {extra:?} differs from kernel overlayfs"
    );
}

#[test]
fn setid_and_caps_killed_as_by_kernel_with_passthrough() {
    matches_kernel(&["passthrough=on"]);
}

#[test]
fn setid_and_caps_killed_as_by_kernel_without_passthrough() {
    matches_kernel(&["passthrough=off"]);
}
