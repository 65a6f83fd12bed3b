//! stratafs without root: as a plain user mounting through fusermount3, and as an unprivileged
//! user inside a user namespace (`unshare -Urm`), where the results are compared with kernel
//! overlayfs mounted in the same namespace (`userxattr`).
//!
//! The set-up (run as root, as CI does) creates the user `strata-rootless` with subordinate id
//! ranges and makes /dev/fuse usable by it (Debian's default mode 0666).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::unprivileged::*;
use common::*;

/// Lower layers written by the user (as an image extracted rootless would be).
const LAYERS: &str = r#"
mkdir -p l1/etc l1/d/sub l1/gone l2/etc l2/opq
echo base > l1/etc/conf
echo lower > l1/d/file
echo deep > l1/d/sub/x
echo hidden > l1/gone/h
echo below > l1/opqdir 2>/dev/null || true
echo top > l2/etc/conf
echo keep > l2/opq/keep
"#;

/// The same operations on a mounted union at $M; prints what a client sees. (A subshell:
/// the caller's working directory stays.)
const OPS: &str = r#"(
echo appended >> "$M/etc/conf"
rm "$M/d/file"
rm -r "$M/gone"
mkdir "$M/gone"
echo again > "$M/gone/new"
mv "$M/d/sub/x" "$M/d/moved"
chmod 600 "$M/d/moved"
ln -s ../etc/conf "$M/d/link"
ln "$M/d/moved" "$M/d/hard"
mkdir -m 0750 "$M/made"
setfattr -n user.note -v hi "$M/made"
cd "$M" && find . | sort | while read -r p; do
  printf '%s %s %s %s\n' "$p" "$(stat -c '%F %a %h' "$p")" \
    "$( [ -f "$p" ] && md5sum < "$p" | cut -c1-8 || echo -)" \
    "$(getfattr --absolute-names -n user.note --only-values "$p" 2>/dev/null || echo -)"
done
)"#;

#[test]
fn plain_user_mounts_through_fusermount3() {
    let dir = user_dir();
    let _reaper = DaemonReaper(dir.path().to_path_buf());
    let script = format!(
        r#"
{LAYERS}
mkdir -p upper work mnt
"$STRATAFS" -o lowerdir=$PWD/l2:$PWD/l1,upperdir=$PWD/upper,workdir=$PWD/work mnt
M=$PWD/mnt
{OPS}
echo "== upper"
stat -c '%n %F %t:%T' upper/d/file upper/gone 2>&1 || true
getfattr --absolute-names -n user.overlay.opaque --only-values upper/gone; echo
cat l1/d/file
fusermount3 -u mnt
i=0; while pgrep -u "$(id -u)" -f "stratafs -o lowerdir=$PWD" >/dev/null; do
  i=$((i+1)); [ $i -lt 400 ] || {{ echo "daemon did not exit"; exit 1; }}; sleep 0.05
done
echo unmounted
"#
    );
    let o = as_user(&script, dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "as {USER}: {}\n{out}\n{err}", o.status);
    // Whiteouts: unprivileged 0/0 devices are allowed on this kernel.
    assert!(
        out.contains("upper/d/file character special file 0:0"),
        "whiteout form:\n{out}"
    );
    assert!(
        out.contains("\ny\n"),
        "opaque dir carries user.overlay.opaque=y:\n{out}"
    );
    assert!(out.contains("./made directory 750"), "{out}");
    assert!(out.contains("./d/hard regular file 600 2"), "{out}");
    assert!(
        out.contains("lower\nunmounted"),
        "lower layer untouched:\n{out}"
    );
    assert!(!out.contains("./d/file "), "{out}");
    assert!(!out.contains("./gone/h"), "{out}");
}

#[test]
fn another_user_cannot_see_a_rootless_mount() {
    let dir = user_dir();
    let _reaper = DaemonReaper(dir.path().to_path_buf());
    let script = r#"
mkdir -p l u w m && echo secret > l/f
"$STRATAFS" -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w m
cat m/f
"#;
    let o = as_user(script, dir.path());
    let (out, err) = text(&o);
    let mnt = dir.path().join("m");
    let _cleanup = Unmounter(mnt.clone());
    assert!(o.status.success() && out.contains("secret"), "{out}\n{err}");
    // nobody (uid 65534) is neither the owner nor root: no access without allow_other.
    let mnt2 = mnt.clone();
    let other = with_timeout(30, "access as nobody", move || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(mnt2.join("f"))
            .output()
            .unwrap()
    });
    assert!(!other.status.success(), "nobody read a private mount");
}

#[test]
fn user_namespace_matches_kernel_overlayfs_in_the_same_namespace() {
    let dir = user_dir();
    let _reaper = DaemonReaper(dir.path().to_path_buf());
    let script = format!(
        r#"
{LAYERS}
cp -a l1 k1 && cp -a l2 k2
mkdir -p ku kw km su sw sm
unshare -Urm sh -eu -c '
  mount -t overlay overlay -o lowerdir=$PWD/k2:$PWD/k1,upperdir=$PWD/ku,workdir=$PWD/kw,userxattr km
  "$STRATAFS" -o lowerdir=$PWD/l2:$PWD/l1,upperdir=$PWD/su,workdir=$PWD/sw sm
  M=$PWD/km; {{ {ops_k} }} > kernel.txt
  M=$PWD/sm; {{ {ops_s} }} > strata.txt
  # Owners a mapped root can give: chown works on the copy.
  chown 0:0 sm/d/moved
  stat -c "%u:%g" sm/d/moved > chown.txt
  fusermount3 -u sm || umount sm
  umount km
'
grep -q "./made directory 750" kernel.txt
diff kernel.txt strata.txt && echo SAME
cat chown.txt
"#,
        ops_k = OPS.replace('\'', "'\\''"),
        ops_s = OPS.replace('\'', "'\\''"),
    );
    let o = as_user(&script, dir.path());
    let (out, err) = text(&o);
    for m in ["km", "sm"] {
        unmount(&dir.path().join(m));
    }
    assert!(o.status.success(), "{}\n{out}\n{err}", o.status);
    assert!(
        out.contains("SAME"),
        "kernel vs stratafs in a user namespace:\n{out}\n{err}"
    );
    assert!(out.contains("0:0"), "{out}");
}

/// The differential test (tests/differential.rs) a second time, as the unprivileged user in a
/// user namespace with its subordinate ids mapped (`unshare --map-auto`), against kernel
/// overlayfs mounted there with `userxattr`.
#[test]
fn differential_test_passes_in_a_user_namespace() {
    let dir = user_dir();
    let _reaper = DaemonReaper(dir.path().to_path_buf());
    // Cargo builds every test binary before running any; the differential one sits beside us.
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let binary = fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("differential-") && p.extension().is_none()
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("the differential test binary is built");
    let script = format!(
        "STRATA_TEST_TMP=$PWD STRATA_DIFF_SEEDS=20 STRATA_DIFF_OPS=500 \
         unshare --map-root-user --map-auto --mount --propagation private {} \
         random_operations_match_kernel_overlayfs --exact --test-threads=1",
        binary.display()
    );
    let o = as_user(&script, dir.path());
    let (out, err) = text(&o);
    assert!(
        o.status.success() && out.contains("1 passed"),
        "differential test in a user namespace: {}\n{out}\n{err}",
        o.status
    );
}

/// Layers owned by `user:root`, mounted by that user in `unshare -Urm` (which maps only the
/// user): the group of every directory is unmapped there. Kernel overlayfs lets the owner
/// create in them; stratafs reported the unmapped group as the overflow id, which the kernel
/// could not take back, and it refused every write to such a directory (EACCES). A copy-up
/// that would need the unmapped group fails on both with EOVERFLOW.
#[test]
fn unmapped_group_of_a_directory_matches_kernel_in_a_user_namespace() {
    let (uid, _) = setup_user();
    let dir = user_dir();
    let _reaper = DaemonReaper(dir.path().to_path_buf());
    let root = dir.path();
    for d in ["l/d", "su", "sw", "sm", "ku", "kw", "km"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("l/d/f"), "lower\n").unwrap();
    for p in ["l", "l/d", "l/d/f", "su", "sw", "sm", "ku", "kw", "km"] {
        std::os::unix::fs::chown(root.join(p), Some(uid), Some(0)).unwrap();
    }
    let script = r#"
unshare -Urm sh -eu -c '
  mount -t overlay overlay -o lowerdir=$PWD/l,upperdir=$PWD/ku,workdir=$PWD/kw,userxattr km
  "$STRATAFS" -o lowerdir=$PWD/l,upperdir=$PWD/su,workdir=$PWD/sw sm
  for m in km sm; do
    (
      cd $m
      touch newfile && echo "touch ok" || echo "touch failed"
      mkdir nd && echo "mkdir ok" || echo "mkdir failed"
      echo x > nd/inside && echo "write in new dir ok" || echo "write in new dir failed"
      touch d/nf 2>&1 | sed "s/.*: //" || true
      cat d/f
      stat -c "%n %u" newfile nd 2>&1 || true
    ) > $m.txt 2>&1
  done
  fusermount3 -u sm || umount sm
  umount km
'
cat km.txt
if diff km.txt sm.txt; then echo SAME; fi
stat -c "%n %u:%g" su/newfile ku/newfile
"#;
    let o = as_user(script, root);
    let (out, err) = text(&o);
    for m in ["km", "sm"] {
        unmount(&root.join(m));
    }
    assert!(o.status.success(), "{}\n{out}\n{err}", o.status);
    assert!(
        out.contains("touch ok\nmkdir ok\nwrite in new dir ok\n"),
        "the kernel creates in a directory whose group is unmapped:\n{out}\n{err}"
    );
    assert!(
        out.contains("Value too large for defined data type"),
        "a copy-up needing the unmapped group is EOVERFLOW on the kernel:\n{out}"
    );
    assert!(
        out.contains("SAME"),
        "stratafs differs from kernel overlayfs in the namespace:\n{out}\n{err}"
    );
    let gid = fs::metadata(root).unwrap().gid();
    for u in ["su", "ku"] {
        assert!(
            out.contains(&format!("{u}/newfile {uid}:{gid}")),
            "new files belong to the user on disk:\n{out}"
        );
    }
}
