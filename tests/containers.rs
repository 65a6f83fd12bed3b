//! Containers end to end, as root: `strata` verbs over a stratafs mount run by runc.
//!
//! Each test has its own store in a temp dir (under `$STRATA_TEST_TMP` if set), runs every
//! `strata` command with a deadline, and on drop removes runtime state, unmounts anything left
//! under its dir and kills (by PID) any daemon whose command line names its dir.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::StrataEnv;

fn mknod_whiteout(p: &Path) {
    let st = Command::new("mknod")
        .arg(p)
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod whiteout");
}

/// A store with a two-layer busybox image given as layer directories.
struct Env {
    cli: StrataEnv,
    image: String,
}

impl std::ops::Deref for Env {
    type Target = StrataEnv;
    fn deref(&self) -> &StrataEnv {
        &self.cli
    }
}

impl Env {
    fn new() -> Env {
        let cli = StrataEnv::new("strata-ctr-");
        let l0 = cli.dir.path().join("layers/base");
        let l1 = cli.dir.path().join("layers/top");
        for d in ["bin", "etc", "tmp", "proc", "dev", "sys", "root"] {
            std::fs::create_dir_all(l0.join(d)).unwrap();
        }
        std::fs::set_permissions(l0.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::copy("/bin/busybox", l0.join("bin/busybox")).expect("busybox-static is needed");
        for a in [
            "sh", "echo", "cat", "ls", "true", "false", "sleep", "id", "hostname", "pwd", "env",
            "touch", "test", "rm", "chown", "stat",
        ] {
            std::os::unix::fs::symlink("busybox", l0.join("bin").join(a)).unwrap();
        }
        std::fs::write(
            l0.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/tmp:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(l0.join("etc/group"), "root:x:0:\nbob:x:1000:\n").unwrap();
        std::fs::write(l0.join("etc/old"), "old\n").unwrap();
        std::fs::create_dir_all(l1.join("etc")).unwrap();
        std::fs::write(l1.join("etc/release"), "top\n").unwrap();
        mknod_whiteout(&l1.join("etc/old"));
        let image = format!("{},{}", l0.display(), l1.display());
        Env { cli, image }
    }

    /// Run `strata ARGS` with `stdin`, killed at the deadline.
    fn strata(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.cli.run_with(args, &[], stdin)
    }

    /// `strata ARGS` as `user` (uid, gid) when given, else as the caller.
    fn strata_as(&self, user: Option<(u32, u32)>, args: &[&str], stdin: Option<&str>) -> Output {
        self.cli.run_as(user, args, &[], stdin)
    }

    fn run(&self, pre: &[&str], cmd: &[&str]) -> Output {
        let mut a = vec!["run"];
        a.extend_from_slice(pre);
        a.push(&self.image);
        a.extend_from_slice(cmd);
        self.strata(&a, None)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn run_gives_exit_code_stdout_and_union_view() {
    need_root!();
    let e = Env::new();
    let o = e.run(
        &["--rm"],
        &[
            "sh",
            "-c",
            "echo hi; cat /etc/release; test ! -e /etc/old && echo gone; exit 7",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "hi\ntop\ngone\n");
    assert!(e.containers().is_empty(), "--rm left {:?}", e.containers());
    e.assert_no_leaks();
}

#[test]
fn run_interactive_reads_stdin() {
    need_root!();
    let e = Env::new();
    let o = e.strata(
        &["run", "--rm", "-i", &e.image, "cat"],
        Some("line one\nline two\n"),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "line one\nline two\n");
    // Without -i the process sees an empty stdin.
    let o = e.strata(&["run", "--rm", &e.image, "cat"], Some("ignored\n"));
    assert_eq!(stdout(&o), "");
    e.assert_no_leaks();
}

#[test]
fn run_options_user_env_workdir_hostname_readonly() {
    need_root!();
    let e = Env::new();
    let o = e.run(&["--rm", "-u", "bob"], &["id", "-u"]);
    assert_eq!(stdout(&o), "1000\n");
    let o = e.run(&["--rm", "-u", "77:78"], &["id"]);
    assert_eq!(stdout(&o), "uid=77 gid=78\n");
    let o = e.run(
        &["--rm", "-e", "FOO=bar", "-w", "/tmp", "--hostname", "box"],
        &["sh", "-c", "echo $FOO; pwd; hostname"],
    );
    assert_eq!(stdout(&o), "bar\n/tmp\nbox\n");
    let o = e.run(&["--rm", "--read-only"], &["touch", "/x"]);
    assert_ne!(o.status.code(), Some(0));
    let o = e.run(&["--rm", "-u", "nosuchuser"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosuchuser"));
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
}

/// As docker mounts a container's root filesystem: neither `nosuid` nor `nodev`, so set-id
/// programs (su, sudo, ping, passwd) keep their privileges inside.
#[test]
fn container_root_filesystem_is_mounted_without_nosuid_and_nodev() {
    need_root!();
    let e = Env::new();
    let o = e.run(&["--rm"], &["cat", "/proc/self/mountinfo"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let table = stdout(&o);
    let root = table
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .unwrap_or_else(|| panic!("no / in the container's mountinfo:\n{table}"));
    let sep = root.iter().position(|f| *f == "-").unwrap();
    assert_eq!(root[sep + 1], "fuse.stratafs", "{root:?}");
    for flag in ["nosuid", "nodev"] {
        assert!(
            !root[5].split(',').any(|o| o == flag),
            "the container's / is mounted {flag}: {root:?}"
        );
    }
    e.assert_no_leaks();
}

#[test]
fn detached_lifecycle_restart_keeps_state_rm_discards() {
    need_root!();
    let e = Env::new();
    let script =
        "echo started; echo state >> /root/s; trap 'exit 0' TERM; while true; do sleep 0.2; done";
    let id = e
        .ok(&["run", "-d", "--name", "c1", &e.image, "sh", "-c", script])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.ok(&["logs", "c1"]).contains("started") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(e.ok(&["logs", "c1"]), "started\n");
    assert!(e.ok(&["ps"]).contains("running"));
    assert_eq!(e.ok(&["exec", "c1", "cat", "/root/s"]), "state\n");
    let o = e.strata(&["exec", "c1", "sh", "-c", "exit 3"], None);
    assert_eq!(o.status.code(), Some(3));
    assert!(e.ok(&["diff", "c1"]).lines().any(|l| l == "A /root/s"));
    let o = e.strata(&["rm", "c1"], None);
    assert_eq!(
        o.status.code(),
        Some(125),
        "rm of a running container must be refused"
    );
    e.ok(&["stop", "-t", "5", "c1"]);
    assert!(!e.ok(&["ps"]).contains("c1"));
    assert!(e.ok(&["ps", "-a"]).contains("exited"));
    assert!(
        e.mounts_under().is_empty(),
        "a stopped container holds no mount"
    );
    e.ok(&["restart", &id[..12]]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.ok(&["exec", "c1", "cat", "/root/s"]) != "state\nstate\n" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        e.ok(&["exec", "c1", "cat", "/root/s"]),
        "state\nstate\n",
        "restart keeps the upper"
    );
    let inspect: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "c1"])).unwrap();
    assert_eq!(inspect["status"], "running");
    e.ok(&["rm", "-f", "c1"]);
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
    // A new container of the same image starts from the image, not from c1's upper.
    let o = e.run(&["--rm"], &["sh", "-c", "test -e /root/s; echo $?"]);
    assert_eq!(stdout(&o), "1\n");
}

#[test]
fn stop_escalates_to_sigkill() {
    need_root!();
    let e = Env::new();
    // PID 1 ignores SIGTERM by default in a pid namespace, so only SIGKILL ends it.
    e.ok(&["run", "-d", "--name", "stubborn", &e.image, "sleep", "1000"]);
    let t = Instant::now();
    e.ok(&["stop", "-t", "1", "stubborn"]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(15),
        "stop took {took:?}"
    );
    assert!(e.ok(&["ps", "-a"]).contains("exited(137)"));
    e.ok(&["rm", "stubborn"]);
    e.assert_no_leaks();
}

impl Env {
    /// The container's state.json as strata's monitor left it (read without running strata).
    fn state_file(&self, id: &str) -> Option<serde_json::Value> {
        let p = self.store().join("containers").join(id).join("state.json");
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }

    /// Wait (10 s at most) until the state file of `id` satisfies `f`.
    fn wait_state(&self, id: &str, f: impl Fn(Option<&serde_json::Value>) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if f(self.state_file(id).as_ref()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

#[test]
fn detached_exit_code_is_recorded_without_strata() {
    need_root!();
    let e = Env::new();
    let id = e
        .ok(&[
            "run",
            "-d",
            "--name",
            "e3",
            &e.image,
            "sh",
            "-c",
            "echo bye; exit 3",
        ])
        .trim()
        .to_string();
    // No strata command runs while the process exits: the monitor alone records it.
    assert!(
        e.wait_state(&id, |s| s.is_some_and(|s| s["status"] == "exited")),
        "state: {:?}",
        e.state_file(&id)
    );
    assert_eq!(e.state_file(&id).unwrap()["exit_code"], 3);
    e.assert_no_leaks();
    let ps = e.ok(&["ps", "-a"]);
    let line = ps.lines().find(|l| l.contains("e3")).unwrap();
    assert!(line.contains("exited(3)"), "{ps}");
    let inspect: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "e3"])).unwrap();
    assert_eq!(inspect["exit_code"], 3);
    assert_eq!(inspect["mounted"], false);
    assert_eq!(e.ok(&["logs", "e3"]), "bye\n");
    // Started again, the same container records its new exit.
    e.ok(&["start", "e3"]);
    assert!(e.wait_state(&id, |s| s.is_some_and(|s| s["status"] == "exited")));
    assert_eq!(e.ok(&["logs", "e3"]), "bye\nbye\n");
    e.ok(&["rm", "e3"]);

    // --rm with -d: the monitor removes the container when its process exits.
    let id = e
        .ok(&[
            "run",
            "-d",
            "--rm",
            &e.image,
            "sh",
            "-c",
            "sleep 0.3; exit 5",
        ])
        .trim()
        .to_string();
    assert!(
        e.wait_state(&id, |_| e.containers().is_empty()),
        "--rm -d left {:?}",
        e.containers()
    );
    e.assert_no_leaks();

    // A killed monitor: strata still tells running from exited, and the code is unknown.
    let id = e
        .ok(&["run", "-d", "--name", "orphan", &e.image, "sleep", "1000"])
        .trim()
        .to_string();
    let keeper = e.state_file(&id).unwrap()["keeper"]["pid"]
        .as_i64()
        .expect("a running detached container names its monitor") as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(keeper).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(e.ok(&["ps"]).contains("orphan"), "still running");
    e.ok(&["kill", "orphan"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.ok(&["ps"]).contains("orphan") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ps = e.ok(&["ps", "-a"]);
    assert!(
        ps.lines()
            .any(|l| l.contains("orphan") && l.contains("exited(?)")),
        "{ps}"
    );
    let inspect: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "orphan"])).unwrap();
    assert_eq!(inspect["exit_code"], serde_json::Value::Null);
    e.ok(&["rm", "orphan"]);
    e.assert_no_leaks();
}

#[test]
fn process_killed_behind_strata_is_seen_as_exited() {
    need_root!();
    let e = Env::new();
    let id = e
        .ok(&["run", "-d", &e.image, "sleep", "1000"])
        .trim()
        .to_string();
    let st = Command::new("runc")
        .arg("--root")
        .arg(e.store().join("runtime/runc"))
        .args(["state", &id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let pid = v["pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.ok(&["ps"]).contains(&id[..12]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!e.ok(&["ps"]).contains(&id[..12]));
    assert!(e.ok(&["ps", "-a"]).contains(&id[..12]));
    e.ok(&["rm", &id]);
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
}

#[test]
fn failed_start_leaks_nothing() {
    need_root!();
    let e = Env::new();
    let o = e.run(&["--rm"], &["/no/such/binary"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
    let o = e.run(&["-d", "--name", "bad"], &["/no/such/binary"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        !String::from_utf8_lossy(&o.stderr).trim().contains('\n'),
        "one-line error: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    e.assert_no_leaks();
    e.ok(&["rm", "bad"]);
    let id = e
        .ok(&["create", &e.image, "/no/such/binary"])
        .trim()
        .to_string();
    assert_ne!(e.strata(&["start", &id], None).status.code(), Some(0));
    e.assert_no_leaks();
    e.ok(&["rm", &id]);
    assert!(e.containers().is_empty());
}

#[test]
fn volumes_outlive_containers() {
    need_root!();
    let e = Env::new();
    e.ok(&["volume", "create", "data"]);
    let o = e.run(
        &["--rm", "-v", "data:/data"],
        &["sh", "-c", "echo kept > /data/f"],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = e.run(&["--rm", "-v", "data:/data"], &["cat", "/data/f"]);
    assert_eq!(stdout(&o), "kept\n");
    assert!(e.ok(&["volume", "ls"]).lines().any(|l| l == "data"));
    let host = e.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("h"), "from host\n").unwrap();
    let spec = format!("{}:/h:ro", host.display());
    let o = e.run(
        &["--rm", "-v", &spec],
        &["sh", "-c", "cat /h/h; touch /h/x"],
    );
    assert_eq!(stdout(&o), "from host\n");
    assert_ne!(
        o.status.code(),
        Some(0),
        "a :ro bind mount must refuse writes"
    );
    let spec = format!("{}:/h", host.display());
    e.run(&["--rm", "-v", &spec], &["touch", "/h/x"]);
    assert!(host.join("x").exists());
    e.ok(&[
        "run",
        "-d",
        "--name",
        "user",
        "-v",
        "data:/data",
        &e.image,
        "sleep",
        "1000",
    ]);
    assert_eq!(
        e.strata(&["volume", "rm", "data"], None).status.code(),
        Some(125),
        "volume in use"
    );
    e.ok(&["rm", "-f", "user"]);
    e.ok(&["volume", "rm", "data"]);
    assert!(!e.ok(&["volume", "ls"]).contains("data"));
    e.assert_no_leaks();
}

#[test]
fn diff_reports_add_change_delete() {
    need_root!();
    let e = Env::new();
    let o = e.run(
        &["--name", "d"],
        &[
            "sh",
            "-c",
            "echo new > /root/new; echo more >> /etc/release; rm /etc/passwd",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let d = e.ok(&["diff", "d"]);
    let lines: Vec<&str> = d.lines().collect();
    for want in [
        "C /root",
        "A /root/new",
        "C /etc",
        "C /etc/release",
        "D /etc/passwd",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in {lines:?}");
    }
    e.ok(&["rm", "d"]);
    e.assert_no_leaks();
}

fn du_bytes(p: &Path) -> u64 {
    let o = Command::new("du")
        .args(["-s", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn ten_containers_share_the_image_layers() {
    need_root!();
    let e = Env::new();
    let image_bytes = du_bytes(&e.dir.path().join("layers"));
    let mut ids = Vec::new();
    let t = Instant::now();
    for i in 0..10 {
        let id = e.ok(&[
            "run",
            "-d",
            "--name",
            &format!("n{i}"),
            &e.image,
            "sh",
            "-c",
            &format!("echo {i} > /root/mine; sleep 1000"),
        ]);
        ids.push(id.trim().to_string());
    }
    let per_start = t.elapsed() / 10;
    for (i, id) in ids.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.ok(&["exec", id, "cat", "/root/mine"]) != format!("{i}\n")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            e.ok(&["exec", id, "cat", "/root/mine"]),
            format!("{i}\n"),
            "each sees only its own file"
        );
    }
    let mut per_container = Vec::new();
    for id in &ids {
        let d = e.store().join("containers").join(id);
        assert!(
            !d.join("upper/bin/busybox").exists(),
            "image data copied into a container"
        );
        per_container.push(
            du_bytes(&d.join("upper"))
                + du_bytes(&d.join("work"))
                + std::fs::metadata(d.join("config.json")).unwrap().len(),
        );
    }
    let max = *per_container.iter().max().unwrap();
    assert!(
        max < 64 * 1024,
        "a container added {max} bytes (image {image_bytes})"
    );
    for id in &ids {
        e.ok(&["rm", "-f", id]);
    }
    let t = Instant::now();
    for _ in 0..5 {
        let o = e.run(&["--rm"], &["true"]);
        assert_eq!(o.status.code(), Some(0));
    }
    let run_true = t.elapsed() / 5;
    eprintln!(
        "FIGURES image={image_bytes}B added_per_container(upper+work+config)={per_container:?}B max={max}B run_-d_each={per_start:?} run_--rm_true={run_true:?}"
    );
    e.assert_no_leaks();
}

#[test]
fn run_tty_gives_a_terminal() {
    need_root!();
    let e = Env::new();
    // `script` gives strata a terminal, as an interactive shell would.
    let line = format!(
        "{} run --rm -it {} sh -c 'test -t 0 && test -t 1 && echo isatty; exit 4'",
        env!("CARGO_BIN_EXE_strata"),
        e.image
    );
    let mut c = Command::new("timeout");
    c.args(["30", "script", "-qec", &line, "/dev/null"])
        .env("STRATA_ROOT", e.store())
        .env("STRATA_STRATAFS", env!("CARGO_BIN_EXE_stratafs"))
        .stdin(Stdio::null());
    let o = c.output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).contains("isatty"), "{}", stdout(&o));
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
}

#[test]
fn detached_tty_output_goes_to_the_log() {
    need_root!();
    let e = Env::new();
    let id = e
        .ok(&[
            "run",
            "-dt",
            "--name",
            "t",
            &e.image,
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo isatty; echo $TERM; exit 4",
        ])
        .trim()
        .to_string();
    assert!(
        e.wait_state(&id, |s| s.is_some_and(|s| s["status"] == "exited")),
        "state: {:?}",
        e.state_file(&id)
    );
    assert_eq!(e.state_file(&id).unwrap()["exit_code"], 4);
    // A terminal ends lines with CR LF, as docker logs shows them.
    assert_eq!(e.ok(&["logs", "t"]), "isatty\r\nxterm\r\n");
    let dir = e.store().join("containers").join(&id);
    assert!(!dir.join("console.sock").exists(), "console socket left");
    e.assert_no_leaks();
    // A long-running terminal container: running until stopped, then released.
    e.ok(&["run", "-dt", "--name", "t2", &e.image, "sh"]);
    assert!(e.ok(&["ps"]).contains("t2"));
    assert_eq!(e.ok(&["exec", "t2", "echo", "in"]), "in\n");
    e.ok(&["stop", "-t", "1", "t2"]);
    assert!(e.ok(&["ps", "-a"]).contains("exited(137)"));
    e.ok(&["rm", "t", "t2"]);
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
}

#[test]
fn runtime_choice_errors_are_one_line() {
    need_root!();
    let e = Env::new();
    let o = e.run(&["--rm", "--runtime", "no-such-runtime"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-runtime"));
    assert!(e.containers().is_empty());
}

#[test]
fn rootless_run_lifecycle_and_volumes() {
    need_root!();
    let e = Env::new();
    let user = Some(e.give_to_user());
    let o = e.strata_as(
        user,
        &[
            "run",
            "--rm",
            &e.image,
            "sh",
            "-c",
            "id -u; echo w > /root/w; cat /root/w; exit 6",
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "0\nw\n");
    let o = e.strata_as(
        user,
        &[
            "run",
            "-d",
            "--name",
            "r",
            "-v",
            "v:/v",
            &e.image,
            "sh",
            "-c",
            "echo kept > /v/f; sleep 1000",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while Instant::now() < deadline && seen != "kept\n" {
        seen = stdout(&e.strata_as(user, &["exec", "r", "cat", "/v/f"], None));
    }
    assert_eq!(seen, "kept\n");
    assert!(stdout(&e.strata_as(user, &["ps"], None)).contains("running"));
    assert!(e.strata_as(user, &["rm", "-f", "r"], None).status.success());
    assert!(
        e.store().join("volumes/v/_data/f").exists(),
        "volume survives rm"
    );
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
}

/// The subordinate range of the test user in `file` (/etc/subuid or /etc/subgid).
fn subrange(file: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{}:", common::unprivileged::USER)))
        .expect("the test set-up adds a range");
    let f: Vec<u64> = line
        .split(':')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[1])
}

fn id_map(text: &str) -> Vec<Vec<u64>> {
    text.lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect()
}

#[test]
fn rootless_with_subids_maps_the_full_range() {
    need_root!();
    if Command::new("newuidmap").arg("--help").output().is_err() {
        eprintln!("skipped: newuidmap (Debian's uidmap) is not installed");
        return;
    }
    let e = Env::new();
    let (uid, gid) = e.give_to_user();
    let user = Some((uid, gid));
    let (us, uc) = subrange("/etc/subuid");
    let (gs, gc) = subrange("/etc/subgid");
    let o = e.strata_as(
        user,
        &[
            "run",
            "--rm",
            &e.image,
            "sh",
            "-c",
            "cat /proc/self/uid_map; echo; cat /proc/self/gid_map",
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    let (u, g) = out.split_once("\n\n").unwrap();
    assert_eq!(id_map(u), vec![vec![0, uid as u64, 1], vec![1, us, uc]]);
    assert_eq!(id_map(g), vec![vec![0, gid as u64, 1], vec![1, gs, gc]]);
    // Container root can give a file to uid 1000: on the host it belongs to the range.
    let o = e.strata_as(
        user,
        &[
            "run",
            "--name",
            "own",
            &e.image,
            "sh",
            "-c",
            "echo mine > /root/f; chown 1000:1000 /root/f; stat -c %u:%g /root/f",
        ],
        None,
    );
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "1000:1000\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = e.containers().pop().unwrap();
    let host =
        std::fs::metadata(e.store().join("containers").join(&id).join("upper/root/f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((host.uid() as u64, host.gid() as u64), (us + 999, gs + 999));
    // A process of uid 1000 uses the rootfs (the mount lets every mapped uid in).
    let o = e.strata_as(
        user,
        &[
            "run",
            "--rm",
            "-u",
            "bob",
            &e.image,
            "sh",
            "-c",
            "id -u; echo x > /tmp/x; cat /tmp/x",
        ],
        None,
    );
    assert_eq!(
        stdout(&o),
        "1000\nx\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The user removes the container, files of the range included.
    assert!(e.strata_as(user, &["rm", "own"], None).status.success());
    assert!(e.containers().is_empty());
    // The pause process holding the namespace goes once nothing uses it.
    e.assert_no_leaks();
}

#[test]
fn rootless_without_subids_maps_only_the_caller() {
    need_root!();
    let e = Env::new();
    let (uid, gid) = e.give_to_user();
    let user = Some((uid, gid));
    // STRATA_SUBIDS=0: the fallback used where the user has no ranges or no newuidmap.
    let run = |args: &[&str]| {
        e.cli
            .run_in(&e.store(), user, args, &[("STRATA_SUBIDS", "0")], None)
    };
    let o = run(&[
        "run",
        "--rm",
        &e.image,
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; echo; cat /proc/self/gid_map; echo w > /root/w; cat /root/w",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    let (first, rest) = out.split_once('\n').unwrap();
    assert_eq!(first, "0");
    let (u, rest) = rest.split_once("\n\n").unwrap();
    let (g, w) = rest
        .rsplit_once('\n')
        .map(|(g, _)| g.rsplit_once('\n').unwrap())
        .unwrap();
    assert_eq!(id_map(u), vec![vec![0, uid as u64, 1]]);
    assert_eq!(id_map(g), vec![vec![0, gid as u64, 1]]);
    assert_eq!(w, "w");
    // Detached, stopped and removed the same way, leaving nothing.
    let o = run(&["run", "-d", "--name", "solo", &e.image, "sleep", "1000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&run(&["ps"])).contains("solo"));
    assert!(run(&["rm", "-f", "solo"]).status.success());
    assert_eq!(e.containers(), Vec::<String>::new());
    e.assert_no_leaks();
}

/// The PID of the stratafs daemon serving the rootfs of container `id`.
fn stratafs_pid(e: &Env, id: &str) -> i32 {
    let rootfs = e
        .store()
        .join("containers")
        .join(id)
        .join("rootfs")
        .display()
        .to_string();
    let found: Vec<i32> = e
        .processes()
        .into_iter()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.ends_with("stratafs")) && args.contains(&rootfs)
        })
        .collect();
    assert_eq!(found.len(), 1, "stratafs daemons of {id}: {found:?}");
    found[0]
}

/// Kill the stratafs serving container `id` and wait until it is gone.
fn kill_stratafs(e: &Env, id: &str) {
    let pid = stratafs_pid(e, id);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.processes().contains(&pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !e.processes().contains(&pid),
        "stratafs {pid} survived SIGKILL"
    );
}

#[test]
fn dead_stratafs_is_reported_and_restart_or_rm_recovers() {
    need_root!();
    let e = Env::new();
    let id = e
        .ok(&["run", "-d", "--name", "c1", &e.image, "sleep", "1000"])
        .trim()
        .to_string();
    assert_eq!(e.ok(&["exec", "c1", "cat", "/etc/release"]), "top\n");
    kill_stratafs(&e, &id);
    // ps says what happened (the process itself still runs).
    let ps = e.ok(&["ps"]);
    let row = ps.lines().find(|l| l.starts_with(&id[..12])).unwrap_or("");
    assert!(row.contains("rootfs-lost"), "{ps}");
    let inspect: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "c1"])).unwrap();
    assert_eq!(inspect["rootfs_lost"], true);
    // exec and start explain it and name the ways out, instead of the runtime's raw error.
    for args in [&["exec", "c1", "true"][..], &["start", "c1"][..]] {
        let err = e.fails(args);
        assert!(
            err.contains("running without its root file system")
                && err.contains("strata restart c1")
                && err.contains("strata rm -f c1"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("transport endpoint"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    // restart mounts it again, on the same upper.
    e.ok(&["restart", "-t", "1", "c1"]);
    assert!(!e.ok(&["ps"]).contains("rootfs-lost"));
    assert_eq!(e.ok(&["exec", "c1", "cat", "/etc/release"]), "top\n");
    // rm -f removes a container in that state too.
    kill_stratafs(&e, &id);
    assert!(e.ok(&["ps"]).contains("rootfs-lost"));
    e.ok(&["rm", "-f", "c1"]);
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
}

#[test]
fn verbs_on_several_containers_go_past_one_that_fails() {
    need_root!();
    let e = Env::new();
    for n in ["c1", "c2"] {
        e.ok(&["run", "-d", "--name", n, &e.image, "sleep", "1000"]);
    }
    // As docker: every container named is done, the failure is reported, the exit code says.
    for verb in [&["stop", "-t", "1"][..], &["rm"][..]] {
        let mut args = verb.to_vec();
        args.extend(["c1", "nosuch", "c2"]);
        let o = e.strata(&args, None);
        assert_eq!(o.status.code(), Some(125), "{args:?}");
        assert_eq!(stdout(&o), "c1\nc2\n", "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            err.trim(),
            "strata: no such container: nosuch",
            "{args:?}: {err}"
        );
    }
    assert!(e.containers().is_empty());
    e.assert_no_leaks();
}
