//! `strata build` end to end, as root: Dockerfiles built into the store, their images run, the
//! cache, multi-stage builds, reproducibility, and every kind of bad input; and `strata commit`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::cli::StrataEnv;

/// A context holding the files of `examples/NAME` plus the host's busybox.
fn example_context(env: &StrataEnv, name: &str) -> PathBuf {
    let ctx = env.busybox_context(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.file_name() != "busybox" {
            std::fs::copy(e.path(), ctx.join(e.file_name())).unwrap();
        }
    }
    ctx
}

/// A busybox base image `base` built from `FROM scratch`.
fn base_image(env: &StrataEnv) {
    let ctx = env.busybox_context("base-ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "base", ctx.to_str().unwrap()]);
}

fn build_in(
    env: &StrataEnv,
    dir: &str,
    dockerfile: &str,
    files: &[(&str, &str)],
) -> (PathBuf, std::process::Output) {
    let ctx = env.path(dir);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    for (p, c) in files {
        let f = ctx.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
    // Never from a registry: these tests name only images of the store (or none).
    let out = env.run(&["build", "--pull=never", "-t", dir, ctx.to_str().unwrap()]);
    (ctx, out)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn example_builds_runs_and_rebuilds_from_cache() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    let ctx = example_context(&env, "hello");
    let first = env.run(&["build", "-t", "hello", ctx.to_str().unwrap()]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let id = text(&first.stdout).trim().to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    assert!(!text(&first.stderr).contains("Using cache"));
    let out = env.ok(&["run", "--rm", "hello"]);
    assert!(out.starts_with("hello from strata"), "{out}");

    // Unchanged rebuild: every filesystem step from the cache, the same image.
    let again = env.run(&["build", "-t", "hello", ctx.to_str().unwrap()]);
    assert!(again.status.success());
    assert_eq!(text(&again.stdout).trim(), id);
    assert_eq!(
        text(&again.stderr).matches("Using cache").count(),
        5,
        "{}",
        text(&again.stderr)
    );

    // A changed file in the context invalidates its COPY and what follows, not what precedes.
    std::fs::write(ctx.join("hello.sh"), "#!/bin/sh\necho changed\n").unwrap();
    std::fs::set_permissions(ctx.join("hello.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let changed = env.run(&["build", "-t", "hello", ctx.to_str().unwrap()]);
    assert!(changed.status.success());
    assert_ne!(text(&changed.stdout).trim(), id);
    assert_eq!(text(&changed.stderr).matches("Using cache").count(), 4);
    assert_eq!(env.ok(&["run", "--rm", "hello"]), "changed\n");

    // Metadata reached the config; history has one row per instruction.
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "hello"])).unwrap();
    let cfg = &inspect["Config"]["config"];
    assert_eq!(cfg["WorkingDir"], "/app");
    assert_eq!(cfg["Cmd"], serde_json::json!(["/app/hello.sh"]));
    assert!(cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "GREETING=hello from strata"));
    assert_eq!(cfg["Labels"]["org.opencontainers.image.title"], "hello");
    let history = env.ok(&["history", "--no-trunc", "hello"]);
    assert!(history.contains("COPY hello.sh ./"), "{history}");
    assert!(
        history.contains("RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]"),
        "{history}"
    );
    // .dockerignore left .gitignore out of the context.
    let o = env.run(&["run", "--rm", "hello", "ls", "-a", "/app"]);
    assert!(!text(&o.stdout).contains(".gitignore"));
    env.assert_no_leaks();
}

#[test]
fn build_args_override_defaults() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    let ctx = example_context(&env, "hello");
    env.ok(&[
        "build",
        "-q",
        "--build-arg",
        "GREETING=good morning",
        "-t",
        "hi:2",
        ctx.to_str().unwrap(),
    ]);
    assert!(env.ok(&["run", "--rm", "hi:2"]).starts_with("good morning"));
    // An unused build argument is warned about, not fatal.
    let o = env.run(&[
        "build",
        "--build-arg",
        "NOPE=1",
        "-t",
        "hi:3",
        ctx.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(
        text(&o.stderr).contains("not consumed: NOPE"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn multi_stage_keeps_only_what_it_copies() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    let ctx = example_context(&env, "multistage");
    env.ok(&["build", "-q", "-t", "report", ctx.to_str().unwrap()]);
    let out = env.ok(&["run", "--rm", "report"]);
    assert!(
        out.contains("made in the tools stage") && out.contains("/bin/busybox"),
        "{out}"
    );
    assert!(!env
        .run(&["run", "--rm", "report", "ls", "/out"])
        .status
        .success());
    // --target stops at the named stage.
    env.ok(&[
        "build",
        "-q",
        "--target",
        "tools",
        "-t",
        "tools",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(
        env.ok(&["run", "--rm", "tools", "cat", "/out/report.txt"]),
        "made in the tools stage\n"
    );
    let bad = env.run(&["build", "--target", "nosuch", ctx.to_str().unwrap()]);
    assert!(text(&bad.stderr).contains("no such stage"));
}

#[test]
fn identical_inputs_give_identical_digests() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    let ctx = example_context(&env, "hello");
    let sde = [("SOURCE_DATE_EPOCH", "1700000000")];
    let a = env.run_with(
        &[
            "build",
            "-q",
            "--no-cache",
            "-t",
            "r:a",
            ctx.to_str().unwrap(),
        ],
        &sde,
        None,
    );
    let b = env.run_with(
        &[
            "build",
            "-q",
            "--no-cache",
            "-t",
            "r:b",
            ctx.to_str().unwrap(),
        ],
        &sde,
        None,
    );
    assert!(
        a.status.success() && b.status.success(),
        "{}",
        text(&a.stderr)
    );
    assert_eq!(text(&a.stdout), text(&b.stdout));
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "r:a"])).unwrap();
    assert_eq!(inspect["Config"]["created"], "2023-11-14T22:13:20Z");
}

#[test]
fn failing_run_reports_its_code_and_leaves_nothing() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let (_, o) = build_in(
        &env,
        "failing",
        "FROM base\nRUN echo partial > /f\nRUN echo about to fail; exit 7\n",
        &[],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("Dockerfile:3: RUN exited with code 7"),
        "{err}"
    );
    assert!(
        text(&o.stdout).contains("about to fail"),
        "output of the failing step is shown"
    );
    assert!(!env.ok(&["images"]).contains("failing"));
    assert_eq!(env.containers(), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(env.store().join("tmp")).unwrap().count(),
        0
    );
    env.assert_no_leaks();
}

#[test]
fn bad_input_is_a_clear_error_naming_the_line() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let outside = env.path("outside-secret");
    std::fs::write(&outside, "secret").unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "FROM base\nFRO x\n",
            "Dockerfile:2: unknown instruction",
            "unknown instruction",
        ),
        (
            "FROM base\nCOPY --foo=1 a /\n",
            "Dockerfile:2: unknown flag --foo",
            "bad flag",
        ),
        (
            "FROM base\nCOPY nope.txt /\n",
            "Dockerfile:2: build context: \"nope.txt\": no such file",
            "missing file",
        ),
        (
            "FROM base\nCOPY ../outside-secret /\n",
            "Dockerfile:2: build context: \"../outside-secret\" is outside the build context",
            "parent path",
        ),
        (
            "FROM base\nCOPY escape /\n",
            "Dockerfile:2: build context: \"escape\": a symlink that leads outside",
            "escaping symlink",
        ),
        (
            "FROM base\nCOPY ignored.txt /\n",
            "Dockerfile:2: build context: \"ignored.txt\": excluded by .dockerignore",
            "ignored file",
        ),
        (
            "FROM nosuch:1\n",
            "Dockerfile:1: FROM nosuch:1: no such image",
            "unknown base",
        ),
        (
            "FROM base\nADD https://example.com/x /\n",
            "Dockerfile:2: https://example.com/x: remote sources are not supported",
            "URL",
        ),
        ("RUN true\n", "Dockerfile:1:", "no FROM"),
        (
            "FROM base\nCOPY --from=nosuch /x /\n",
            "Dockerfile:2: --from=nosuch",
            "unknown stage",
        ),
        // Errors found while writing into the image carry the location too.
        (
            "FROM base\nRUN touch /afile\nCOPY a.txt /afile/x\n",
            "Dockerfile:3: copy: /afile exists in the image and is not a directory",
            "file in the way",
        ),
        (
            "FROM base\nRUN ln -s /loop /loop\nCOPY a.txt /loop/\n",
            "Dockerfile:3: copy: resolve /loop/: Too many levels of symbolic links",
            "symlink loop",
        ),
        (
            "FROM base\nRUN touch /afile\nWORKDIR /afile/sub\n",
            "Dockerfile:3: copy: /afile exists in the image and is not a directory",
            "WORKDIR under a file",
        ),
    ];
    for (i, (df, want, what)) in cases.iter().enumerate() {
        let dir = format!("bad{i}");
        let ctx = env.path(&dir);
        std::fs::create_dir_all(&ctx).unwrap();
        std::os::unix::fs::symlink(&outside, ctx.join("escape")).unwrap();
        std::fs::write(ctx.join("ignored.txt"), "x").unwrap();
        std::fs::write(ctx.join("a.txt"), "a").unwrap();
        std::fs::write(ctx.join(".dockerignore"), "ignored.txt\n").unwrap();
        let (_, o) = build_in(&env, &dir, df, &[]);
        assert!(!o.status.success(), "{what}: built");
        let err = text(&o.stderr);
        assert!(err.contains(want), "{what}: expected {want:?} in {err:?}");
        assert_eq!(
            err.trim()
                .lines()
                .filter(|l| l.starts_with("strata:"))
                .count(),
            1,
            "{what}: one error line: {err}"
        );
    }
    // No image got a `badN` name (matched on the name column: an image ID is hex, and may
    // well contain "bad").
    let images = env.ok(&["images"]);
    assert!(
        !images.lines().any(|l| l.starts_with("bad")),
        "a failed build left an image: {images}"
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
    env.assert_no_leaks();
}

#[test]
fn copy_and_add_semantics() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let ctx = env.path("copy");
    std::fs::create_dir_all(ctx.join("tree/sub")).unwrap();
    std::fs::write(ctx.join("tree/a.txt"), "A").unwrap();
    std::fs::write(ctx.join("tree/sub/b.txt"), "B").unwrap();
    std::fs::write(ctx.join("tree/sub/skip.log"), "no").unwrap();
    std::fs::write(ctx.join("one.txt"), "1").unwrap();
    std::fs::write(ctx.join("two.txt"), "2").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "**/*.log\n").unwrap();
    // A tar for ADD to unpack.
    let st = std::process::Command::new("tar")
        .args([
            "-czf",
            ctx.join("pkg.tgz").to_str().unwrap(),
            "-C",
            ctx.join("tree").to_str().unwrap(),
            "sub/b.txt",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let df = "FROM base\n\
RUN mkdir -p /usr/real && ln -s usr/real /link\n\
COPY tree /dst/\n\
COPY *.txt /globbed/\n\
COPY one.txt /link/\n\
COPY --chown=1000:1001 --chmod=600 two.txt /owned/two\n\
ADD pkg.tgz /unpacked/\n\
COPY one.txt /renamed.txt\n";
    std::fs::write(ctx.join("Dockerfile"), df).unwrap();
    env.ok(&["build", "-q", "-t", "copy", ctx.to_str().unwrap()]);
    let script = "cat /dst/a.txt /dst/sub/b.txt; echo; ls /dst/sub; ls /globbed; \
cat /usr/real/one.txt; echo; test -L /link && echo link-kept; \
stat -c '%u:%g %a' /owned/two; cat /unpacked/sub/b.txt; echo; cat /renamed.txt";
    let out = env.ok(&["run", "--rm", "copy", "sh", "-c", script]);
    assert_eq!(
        out, "AB\nb.txt\none.txt\ntwo.txt\n1\nlink-kept\n1000:1001 600\nB\n1",
        "{out}"
    );
}

#[test]
fn from_an_oci_layout_directory() {
    need_root!();
    if std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("skopeo is needed (scripts/test.sh installs it)");
    }
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let layout = env.path("layout");
    let st = std::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:base:latest", env.store().display()))
        .arg(format!("oci:{}:mybase", layout.display()))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", text(&st.stderr));
    let (_, o) = build_in(
        &env,
        "fromoci",
        &format!(
            "FROM oci:{}:mybase\nRUN echo from-layout > /note\n",
            layout.display()
        ),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        env.ok(&["run", "--rm", "fromoci", "cat", "/note"]),
        "from-layout\n"
    );
}

#[test]
fn commit_makes_a_runnable_image_of_the_writable_layer() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    env.ok(&[
        "run",
        "--name",
        "work",
        "base",
        "sh",
        "-c",
        "echo kept > /new.txt; rm /bin/ls; mkdir -p /d/e",
    ]);
    let id = env.ok(&["commit", "-m", "my change", "work", "committed:1"]);
    assert!(id.trim().starts_with("sha256:"));
    let out = env.ok(&[
        "run",
        "--rm",
        "committed:1",
        "sh",
        "-c",
        "cat /new.txt; test -e /bin/ls || echo ls-gone; test -d /d/e && echo dir",
    ]);
    assert_eq!(out, "kept\nls-gone\ndir\n");
    // The base image is untouched, and history names the commit.
    assert!(env
        .run(&["run", "--rm", "base", "test", "-e", "/bin/ls"])
        .status
        .success());
    let history = env.ok(&["history", "committed:1"]);
    assert!(history.contains("strata commit work"), "{history}");
    // The new layer holds the deletion as an OCI `.wh.` entry, and not the empty mount points
    // (/dev, /proc, /sys) the runtime made in the container's upper.
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "committed:1"])).unwrap();
    let top = inspect["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let listing = env.tool(
        "tar",
        &[
            "-tzf",
            env.store()
                .join("blobs/sha256")
                .join(&top)
                .to_str()
                .unwrap(),
        ],
    );
    let names: Vec<&str> = listing.lines().collect();
    assert!(names.contains(&"bin/.wh.ls"), "{names:?}");
    assert!(
        names.contains(&"new.txt") && names.contains(&"d/e/"),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("dev") || n.starts_with("proc") || n.starts_with("sys")),
        "{names:?}"
    );
    env.ok(&["rm", "work"]);
    env.assert_no_leaks();
}

#[test]
fn rootless_build_and_run() {
    need_root!();
    let mut env = StrataEnv::new("strata-build-");
    let ctx = example_context(&env, "hello");
    env.rootless();
    let o = env.run(&["build", "-t", "hello", ctx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = env.ok(&[
        "run",
        "--rm",
        "hello",
        "sh",
        "-c",
        "/app/hello.sh; id -u; stat -c %u /app/hello.sh",
    ]);
    assert_eq!(out, "hello from strata (hostname strata)\n0\n0\n");
    let again = env.run(&["build", "-t", "hello", ctx.to_str().unwrap()]);
    assert_eq!(text(&again.stderr).matches("Using cache").count(), 5);
    env.ok(&["rmi", "hello"]);
    assert_eq!(
        common::cli::count_files(&env.store().join("blobs/sha256")),
        0
    );
    env.assert_no_leaks();
}

#[test]
fn build_racing_rmi_of_its_base_keeps_every_layer_it_needs() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let ctx = env.path("derived");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("f"), "file").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nRUN sleep 1; echo ran > /ran\nCOPY f /f\n",
    )
    .unwrap();
    std::thread::scope(|s| {
        let build = s.spawn(|| env.run(&["build", "-t", "derived", ctx.to_str().unwrap()]));
        // The base goes while the build runs on its layers: rmi keeps what the build pinned,
        // and the new image references the base layers it used.
        std::thread::sleep(std::time::Duration::from_millis(500));
        env.ok(&["rmi", "base"]);
        let o = build.join().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    });
    assert_eq!(
        env.ok(&["run", "--rm", "derived", "cat", "/ran", "/f"]),
        "ran\nfile"
    );
    env.ok(&["rmi", "derived"]);
    assert_eq!(
        common::cli::count_files(&env.store().join("blobs/sha256")),
        0
    );
    assert!(std::fs::read_dir(env.store().join("layers/sha256"))
        .unwrap()
        .next()
        .is_none());
    env.assert_no_leaks();
}

#[test]
fn ctrl_c_stops_a_build_and_leaves_nothing() {
    need_root!();
    use std::os::unix::process::CommandExt;
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let ctx = env.path("slow");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nRUN echo started; sleep 60\nRUN true\n",
    )
    .unwrap();
    let mut c = env.command_in(
        &env.store(),
        None,
        &["build", "-t", "slow", ctx.to_str().unwrap()],
    );
    // Its own process group, as a shell runs a foreground job: Ctrl-C signals the group.
    c.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let pgid = child.id() as i32;
    // Wait until the RUN step's container exists.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.containers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pgid).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = common::cli::run_deadline_child(
        child,
        "interrupted build",
        std::time::Duration::from_secs(30),
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the RUN was not stopped"
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("build interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert!(!env.ok(&["images"]).contains("slow"));
    assert_eq!(env.containers(), Vec::<String>::new());
    env.assert_no_leaks();
}

/// The PID of a process `sleep SECS` (a `RUN` step's, with SECS unique to the test).
fn sleeper(secs: &str) -> Option<i32> {
    let want = format!("sleep\0{secs}\0");
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        (cmd == want.as_bytes()).then_some(pid)
    })
}

#[test]
fn rmi_is_not_held_up_by_a_running_build() {
    need_root!();
    use std::time::{Duration, Instant};
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let other = env.path("other");
    std::fs::create_dir_all(other.join("etc")).unwrap();
    std::fs::write(other.join("etc/other"), "other").unwrap();
    env.ok(&["import", other.to_str().unwrap(), "other:1"]);
    let blobs = || common::cli::count_files(&env.store().join("blobs/sha256"));
    let layers = || common::cli::count_files(&env.store().join("layers/sha256"));
    let ctx = env.path("derived");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("f"), "file").unwrap();
    // The RUN step waits until the test kills its `sleep`: the build is held in the middle for
    // as long as the test needs, with its base resolved and its first layers in use.
    let secs = (10_000_000 + std::process::id()).to_string();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM base\nRUN sleep {secs} || true; echo ran > /ran\nCOPY f /f\n"),
    )
    .unwrap();
    let mut build = env.command_in(
        &env.store(),
        None,
        &["build", "-t", "derived", ctx.to_str().unwrap()],
    );
    build
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let build = build.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let sleep = loop {
        if let Some(pid) = sleeper(&secs) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the RUN step did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let alive = || std::path::Path::new(&format!("/proc/{sleep}")).exists();
    // The deadline only guards against a hang: the build cannot end before the test lets it,
    // so an rmi that waited for it would never finish.
    let rmi = |image: &str| {
        let c = env.command_in(&env.store(), None, &["rmi", image]);
        let o = common::cli::run_deadline(c, "rmi during a build", Duration::from_secs(60), None);
        assert!(o.status.success(), "rmi {image}: {}", text(&o.stderr));
    };
    // An image the build does not use goes at once, blobs and layer included.
    let (b, l) = (blobs(), layers());
    rmi("other:1");
    assert_eq!((blobs(), layers()), (b - 3, l - 1), "other:1 was not freed");
    assert!(alive(), "the build ended: this proves nothing");
    // The build's own base is untagged at once; what the build uses stays.
    let l = layers();
    rmi("base");
    assert!(!env.ok(&["images"]).contains("base"));
    assert_eq!(layers(), l, "a layer the build uses was freed");
    assert!(alive());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sleep).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let o = common::cli::run_deadline_child(build, "build", common::cli::COMMAND_DEADLINE);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        env.ok(&["run", "--rm", "derived", "cat", "/ran", "/f"]),
        "ran\nfile"
    );
    // The build's pins ended with it: removing its image frees everything.
    env.ok(&["rmi", "derived"]);
    assert_eq!((blobs(), layers()), (0, 0));
    env.assert_no_leaks();
}

#[test]
fn copy_through_symlinks_resolves_them_inside_the_image() {
    need_root!();
    let env = StrataEnv::new("strata-build-");
    base_image(&env);
    let ctx = env.path("links");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("one.txt"), "1").unwrap();
    // A host path: as a symlink target in the image it means that path inside the image.
    let host = env.path("escaped");
    // As docker: a COPY to a symlink writes where it points, creating a dangling one's target
    // (and its missing parents); `..` and absolute targets stay inside the image.
    let df = format!(
        "FROM base\n\
RUN ln -s /target /vl && ln -s /nowhere/deep/file /vf && mkdir /real && \\
    echo old > /real/existing && ln -s real/existing /vx && ln -s ../../../real /vr && \\
    ln -s {host} /vh && ln -s /wd /vw\n\
COPY one.txt /vl/\n\
COPY one.txt /vf\n\
COPY one.txt /vx\n\
COPY one.txt /vr/\n\
COPY one.txt /vh\n\
WORKDIR /vw\n",
        host = host.display()
    );
    std::fs::write(ctx.join("Dockerfile"), df).unwrap();
    env.ok(&["build", "-q", "-t", "links", ctx.to_str().unwrap()]);
    let script = format!(
        "for l in /vl /vf /vx /vr /vh /vw; do readlink $l; done; \
         cat /target/one.txt /nowhere/deep/file /real/existing /real/one.txt {host}; echo; \
         test -d /wd && echo wd-made",
        host = host.display()
    );
    let out = env.ok(&["run", "--rm", "links", "sh", "-c", &script]);
    assert_eq!(
        out,
        format!(
            "/target\n/nowhere/deep/file\nreal/existing\n../../../real\n{}\n/wd\n11111\nwd-made\n",
            host.display()
        )
    );
    assert!(!host.exists(), "COPY wrote outside the image");
    env.assert_no_leaks();
}

/// `--root` (or `STRATA_ROOT`) given as a relative path: the runtime and stratafs run
/// elsewhere, so the store is made absolute first (runc said "invalid rootfs" with the path
/// doubled, and the build left its mount behind).
#[test]
fn a_relative_store_path_builds_and_runs() {
    need_root!();
    let env = StrataEnv::new("strata-build-relroot-");
    let ctx = example_context(&env, "hello");
    let rel = Path::new("relative-store");
    let strata = |args: &[&str]| env.run_in(rel, None, args, &[], None);
    let out = strata(&[
        "build",
        "--pull=never",
        "-t",
        "hello",
        ctx.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = strata(&["run", "--rm", "--network", "none", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("hello from strata"),
        "{}",
        text(&out.stdout)
    );
    assert!(env.path("relative-store/index.json").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = env.dir.path().to_str().unwrap();
    assert!(!mounts.contains(dir), "mounts left under {dir}:\n{mounts}");
}
