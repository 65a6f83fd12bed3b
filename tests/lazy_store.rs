//! The store side of lazy images, through the `strata` command line on the real
//! `docker-registry`: the TOC kept at `pull --lazy` (a mount needs no registry for what is
//! local), garbage collection of lazy directories and cached chunks, a complete lazy layer
//! made an ordinary one by the next pull, `run/create --pull=lazy`, credentials the daemon
//! finds through the auth file the pull used, and a rootless lazy run. Every command has a
//! deadline (StrataEnv), registries are killed by PID on drop, and each test checks that
//! nothing is left mounted or running.

mod common;

use std::path::{Path, PathBuf};

use common::cli::StrataEnv;
use common::registry::Registry;

fn skip() -> bool {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

/// An image with a greeting, a 3 MB file (several chunks), a user and a command, built in
/// `env`'s default store and pushed as eStargz to `host` as `app:1`; its name there.
fn push_app(env: &StrataEnv, host: &str, extra: &[&str]) -> String {
    let ctx = env.busybox_context("ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN echo hello > /greeting && mkdir -p /data && head -c 3000000 /bin/busybox > /data/blob \
         && cat /data/blob /data/blob > /data/blob2 \
         && mkdir -p /etc && echo root:x:0:0::/:/bin/sh > /etc/passwd \
         && echo app:x:1234:4321::/:/bin/sh >> /etc/passwd\n\
         CMD [\"cat\", \"/greeting\"]\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "app:1", ctx.to_str().unwrap()]);
    let name = format!("{host}/app:1");
    let mut args = vec!["push", "-q", "--estargz"];
    args.extend_from_slice(extra);
    args.extend(["app:1", name.as_str()]);
    env.ok(&args);
    name
}

/// `strata ARGS` on store `store` of `env` with `envs`; (success, stdout, stderr).
fn strata(env: &StrataEnv, store: &str, args: &[&str], envs: &[(&str, &str)]) -> Output3 {
    let o = env.run_in(&env.path(store), None, args, envs, None);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

type Output3 = (bool, String, String);

/// [`strata`] that must succeed; its stdout.
fn ok(env: &StrataEnv, store: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
    let (good, out, err) = strata(env, store, args, envs);
    assert!(good, "strata {args:?} in {store} failed: {out}{err}");
    out
}

/// Names in a directory, temporaries left out (none if it does not exist).
/// Nothing lazy, no chunk and no blob is left in `store` (nor any layer, with `layers`).
fn assert_collected(store: &Path, layers: bool) {
    assert_eq!(lazy_homes(store), Vec::<PathBuf>::new());
    assert_eq!(names(&store.join("chunks/sha256")), Vec::<String>::new());
    if layers {
        assert_eq!(names(&store.join("layers/sha256")), Vec::<String>::new());
    }
    assert_eq!(names(&store.join("blobs/sha256")), Vec::<String>::new());
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".tmp-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The lazy layer homes of a store.
fn lazy_homes(store: &Path) -> Vec<PathBuf> {
    names(&store.join("lazy"))
        .into_iter()
        .map(|n| store.join("lazy").join(n))
        .collect()
}

const NO_FETCH: [(&str, &str); 1] = [("STRATA_LAZY_FETCH", "off")];

#[test]
fn kept_toc_runs_without_the_registry_and_rmi_frees_lazy_dirs_and_chunks() {
    if skip() {
        return;
    }
    let env = StrataEnv::new("strata-lazystore-");
    let mut reg = Registry::start(env.dir.path());
    let name = push_app(&env, &reg.host(), &[]);
    ok(&env, "lazy", &["pull", "-q", "--lazy", &name], &[]);
    let store = env.path("lazy");
    let homes = lazy_homes(&store);
    assert!(!homes.is_empty());
    for h in &homes {
        let tail = h.join("toc.tail");
        assert!(tail.is_file(), "{} kept no TOC", h.display());
    }

    // Only what the container reads is fetched (no background fetch).
    assert_eq!(
        ok(&env, "lazy", &["run", "--rm", &name], &NO_FETCH),
        "hello\n"
    );
    let chunks = names(&store.join("chunks/sha256"));
    assert!(!chunks.is_empty());

    // The registry gone: the mount reads its TOCs from the store, what is local is served...
    reg.stop();
    assert_eq!(
        ok(&env, "lazy", &["run", "--rm", &name], &NO_FETCH),
        "hello\n"
    );
    // ... and what is not fails to read (EIO), not to mount.
    let (good, out, err) = strata(
        &env,
        "lazy",
        &[
            "run",
            "--rm",
            &name,
            "sh",
            "-c",
            "echo mounted; cat /data/blob2 > /dev/null",
        ],
        &NO_FETCH,
    );
    assert!(!good, "{out}{err}");
    assert!(out.contains("mounted"), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("Input/output error"),
        "{out}{err}"
    );
    // A kept TOC that does not match its digest is not used: the registry is asked (and,
    // down, the mount fails with the reason) rather than trusting it.
    let tails: Vec<(PathBuf, Vec<u8>)> = homes
        .iter()
        .map(|h| {
            (
                h.join("toc.tail"),
                std::fs::read(h.join("toc.tail")).unwrap(),
            )
        })
        .collect();
    for (tail, bytes) in &tails {
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        std::fs::write(tail, &bad).unwrap();
    }
    let (good, out, err) = strata(&env, "lazy", &["run", "--rm", &name], &NO_FETCH);
    assert!(!good, "a corrupt kept TOC was used: {out}{err}");
    for (tail, bytes) in &tails {
        std::fs::write(tail, bytes).unwrap();
    }
    reg.restart();

    // A container keeps its lazy layers and their chunks through `rmi -f` of the image.
    ok(
        &env,
        "lazy",
        &["create", "--name", "keeper", &name],
        &NO_FETCH,
    );
    ok(&env, "lazy", &["rmi", "-f", &name], &[]);
    assert_eq!(lazy_homes(&store), homes);
    assert_eq!(names(&store.join("chunks/sha256")), chunks);
    assert_eq!(
        ok(&env, "lazy", &["start", "-a", "keeper"], &NO_FETCH),
        "hello\n"
    );
    // Once nothing uses them, the next collection frees them all.
    ok(&env, "lazy", &["rm", "keeper"], &[]);
    let (_, _, err) = strata(&env, "lazy", &["rmi", "no-such-image"], &[]);
    assert!(err.contains("no-such-image"), "{err}");
    assert_collected(&store, false);
    drop(reg);
    env.assert_no_leaks();
}

#[test]
fn a_complete_lazy_layer_becomes_an_ordinary_layer_at_the_next_pull() {
    if skip() {
        return;
    }
    let env = StrataEnv::new("strata-lazystore-");
    let mut reg = Registry::start(env.dir.path());
    let name = push_app(&env, &reg.host(), &[]);
    ok(&env, "full", &["pull", "-q", &name], &[]);
    ok(&env, "lazy", &["pull", "-q", "--lazy", &name], &[]);
    let store = env.path("lazy");
    // Read every file: every lazy layer is then complete.
    let sums = "find / -xdev -type f ! -path /etc/hosts ! -path /etc/hostname \
                ! -path /etc/resolv.conf | sort | xargs md5sum";
    let want = ok(&env, "full", &["run", "--rm", &name, "sh", "-c", sums], &[]);
    assert_eq!(
        ok(
            &env,
            "lazy",
            &["run", "--rm", &name, "sh", "-c", sums],
            &NO_FETCH
        ),
        want
    );
    let listed = ok(&env, "lazy", &["images"], &[]);
    assert!(listed.contains("100%)"), "{listed}");
    assert!(names(&store.join("layers/sha256")).is_empty());

    // A container made before lists the lazy directories as its lower layers.
    ok(
        &env,
        "lazy",
        &["create", "--name", "old", &name, "sh", "-c", sums],
        &[],
    );

    // A pull (not lazy) checks each complete lazy layer against its blob and moves it.
    let (good, _, err) = strata(&env, "lazy", &["pull", &name], &[]);
    assert!(good, "{err}");
    assert!(err.contains("lazy layer complete"), "{err}");
    assert_eq!(
        names(&store.join("layers/sha256")),
        names(&env.path("full/layers/sha256")),
        "the same layers as a full pull, by diff ID"
    );
    assert_eq!(
        names(&store.join("blobs/sha256")),
        names(&env.path("full/blobs/sha256"))
    );
    let listed = ok(&env, "lazy", &["images"], &[]);
    assert!(!listed.contains("lazy"), "{listed}");
    reg.stop();
    assert_eq!(
        ok(&env, "lazy", &["run", "--rm", &name, "sh", "-c", sums], &[]),
        want
    );
    // An ordinary image: it can be saved (its blobs are all here).
    ok(
        &env,
        "lazy",
        &["save", &name, "-o", env.path("saved.tar").to_str().unwrap()],
        &[],
    );
    // The old container still runs: its lower paths lead to the moved layers.
    assert_eq!(ok(&env, "lazy", &["start", "-a", "old"], &[]), want);
    // Through the image's removal, the container keeps the moved layers (and the links).
    let layers = names(&store.join("layers/sha256"));
    ok(&env, "lazy", &["rmi", "-f", &name], &[]);
    assert_eq!(names(&store.join("layers/sha256")), layers);
    assert_eq!(ok(&env, "lazy", &["start", "-a", "old"], &[]), want);
    // Once the container goes, the next collection frees everything.
    ok(&env, "lazy", &["rm", "old"], &[]);
    strata(&env, "lazy", &["rmi", "no-such-image"], &[]);
    assert_collected(&store, true);
    drop(reg);
    env.assert_no_leaks();
}

#[test]
fn run_and_create_pull_lazily_with_pull_lazy() {
    if skip() {
        return;
    }
    let env = StrataEnv::new("strata-lazystore-");
    let reg = Registry::start(env.dir.path());
    let name = push_app(&env, &reg.host(), &[]);
    let help = env.ok(&["run", "--help"]);
    assert!(help.contains("lazy"), "{help}");

    let (good, out, err) = strata(&env, "run", &["run", "--rm", "--pull=lazy", &name], &[]);
    assert!(good, "{out}{err}");
    assert_eq!(out, "hello\n");
    assert!(err.contains("lazy (TOC only)"), "{err}");
    assert!(names(&env.path("run/layers/sha256")).is_empty());
    assert!(!lazy_homes(&env.path("run")).is_empty());
    // What needs the blobs says so; what can use the lazy layers does.
    let (good, _, err) = strata(
        &env,
        "run",
        &["save", &name, "-o", env.path("x.tar").to_str().unwrap()],
        &[],
    );
    assert!(!good && err.contains("was pulled lazily"), "{err}");
    // A push to the registry it came from mounts the blobs there; to another, it cannot.
    let other = {
        let d = env.path("other");
        std::fs::create_dir_all(&d).unwrap();
        Registry::start(&d)
    };
    let elsewhere = format!("{}/app:1", other.host());
    let (good, _, err) = strata(&env, "run", &["push", &name, &elsewhere], &[]);
    assert!(!good && err.contains("was pulled lazily"), "{err}");
    drop(other);
    let ctx = env.path("from");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {name}\nRUN true\n")).unwrap();
    let (good, _, err) = strata(
        &env,
        "run",
        &["build", "-t", "b", ctx.to_str().unwrap()],
        &[],
    );
    assert!(!good && err.contains("was pulled lazily"), "{err}");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&env, "run", &["inspect", &name], &[])).unwrap();
    let layers = inspect["Layers"].as_array().unwrap();
    assert!(
        layers
            .iter()
            .any(|l| l.as_str().unwrap().contains("/lazy/")),
        "{inspect}"
    );
    let view = env.path("view");
    std::fs::create_dir_all(&view).unwrap();
    ok(&env, "run", &["mount", &name, view.to_str().unwrap()], &[]);
    let greeting = std::fs::read_to_string(view.join("greeting"));
    ok(&env, "run", &["umount", view.to_str().unwrap()], &[]);
    assert_eq!(greeting.unwrap(), "hello\n");
    // Present now: used as it is (no second pull).
    let (good, out, err) = strata(&env, "run", &["run", "--rm", "--pull=lazy", &name], &[]);
    assert!(good && out == "hello\n", "{out}{err}");
    assert!(!err.contains("Pulling"), "{err}");

    let (good, _, err) = strata(
        &env,
        "create",
        &["create", "--pull=lazy", "--name", "c", &name],
        &[],
    );
    assert!(good, "{err}");
    assert!(err.contains("lazy (TOC only)"), "{err}");
    assert!(names(&env.path("create/layers/sha256")).is_empty());
    assert_eq!(ok(&env, "create", &["start", "-a", "c"], &[]), "hello\n");
    ok(&env, "create", &["rm", "c"], &[]);

    // Without a registry to pull from: the pull's error, not a panic.
    let (good, _, err) = strata(
        &env,
        "none",
        &["run", "--rm", "--pull=lazy", "127.0.0.1:1/app:1"],
        &[],
    );
    assert!(!good);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    drop(reg);
    env.assert_no_leaks();
}

#[test]
fn the_daemon_finds_the_credentials_in_the_auth_file_the_pull_used() {
    if skip() {
        return;
    }
    let env = StrataEnv::new("strata-lazystore-");
    let reg = Registry::start_with(
        env.dir.path(),
        &common::registry::RegistryConfig {
            auth: Some(("alice".into(), "s3cret".into())),
            tls: true,
        },
    );
    let ca = reg.ca_dir.clone().unwrap();
    let ca = ca.to_str().unwrap();
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let auth = env.path("auth.json");
    let with_file = [
        ("REGISTRY_AUTH_FILE", auth.to_str().unwrap()),
        ("XDG_RUNTIME_DIR", home.to_str().unwrap()),
        ("HOME", home.to_str().unwrap()),
        ("DOCKER_CONFIG", ""),
    ];
    let o = env.run_with(
        &[
            "login",
            "--cert-dir",
            ca,
            "-u",
            "alice",
            "--password-stdin",
            &reg.host(),
        ],
        &with_file,
        Some("s3cret\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(auth.is_file());
    // Built and pushed with the same auth file.
    let ctx = env.busybox_context("ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN cat /bin/busybox /bin/busybox > /blob && echo second > /second\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "app:1", ctx.to_str().unwrap()]);
    let name = format!("{}/sec/app:1", reg.host());
    let o = env.run_with(
        &["push", "-q", "--estargz", "--cert-dir", ca, "app:1", &name],
        &with_file,
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(
        &env,
        "lazy",
        &["pull", "-q", "--lazy", "--cert-dir", ca, &name],
        &with_file,
    );
    // The run's environment leads to no auth file: the daemon uses the one the pull used.
    let without = [
        ("REGISTRY_AUTH_FILE", ""),
        ("XDG_RUNTIME_DIR", home.to_str().unwrap()),
        ("HOME", home.to_str().unwrap()),
        ("DOCKER_CONFIG", ""),
        ("STRATA_LAZY_FETCH", "off"),
    ];
    let size = 2 * std::fs::metadata("/bin/busybox").unwrap().len();
    assert_eq!(
        ok(
            &env,
            "lazy",
            &["run", "--rm", &name, "sh", "-c", "wc -c < /blob"],
            &without
        )
        .trim(),
        size.to_string()
    );
    // Logged out of that file: the daemon has no credentials, the read fails (EIO), and the
    // daemon's log names the registry's refusal.
    let o = env.run_with(&["logout", &reg.host()], &with_file, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (good, out, err) = strata(
        &env,
        "lazy",
        &[
            "run",
            "--rm",
            &name,
            "sh",
            "-c",
            "wc -c < /blob; cat /second",
        ],
        &without,
    );
    // What the first run read is here; a file not read yet cannot be fetched.
    assert!(!good, "{out}{err}");
    assert_eq!(
        out.lines().next(),
        Some(size.to_string().as_str()),
        "{out}{err}"
    );
    assert!(err.contains("Input/output error"), "{out}{err}");
    drop(reg);
    env.assert_no_leaks();
}

#[test]
fn a_rootless_lazy_run_fills_files_correctly() {
    if skip() {
        return;
    }
    let env = StrataEnv::new("strata-lazystore-");
    let reg = Registry::start(env.dir.path());
    let name = push_app(&env, &reg.host(), &[]);
    let sums = "md5sum /data/blob /data/blob2 /greeting /bin/busybox";
    ok(&env, "full", &["pull", "-q", &name], &[]);
    let want = ok(&env, "full", &["run", "--rm", &name, "sh", "-c", sums], &[]);
    let user = env.give_to_user();
    // With the user's subordinate ids (one user namespace per store, strata as its root) and
    // without (strata as the user; each container its own single mapping).
    for (store, subids) in [("user", "1"), ("plain", "0")] {
        rootless_round(&env, user, store, subids, &name, sums, &want);
    }
    drop(reg);
    env.assert_no_leaks();
}

/// Pull `name` lazily into `store` as `user`, run `sums` in it (must give `want`), remove it.
fn rootless_round(
    env: &StrataEnv,
    user: (u32, u32),
    store: &str,
    subids: &str,
    name: &str,
    sums: &str,
    want: &str,
) {
    let name = name.to_string();
    let run = |args: &[&str]| {
        let o = env.run_in(
            &env.path(store),
            Some(user),
            args,
            &[("STRATA_SUBIDS", subids)],
            None,
        );
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(
            o.status.success(),
            "strata {args:?} as the user: {out}{err}"
        );
        out
    };
    run(&["pull", "-q", "--lazy", &name]);
    assert!(names(&env.path(store).join("layers/sha256")).is_empty());
    assert_eq!(run(&["run", "--rm", &name, "sh", "-c", sums]), want);
    let listed = run(&["images"]);
    assert!(listed.contains("(lazy: "), "{listed}");
    run(&["rmi", &name]);
    assert_eq!(lazy_homes(&env.path(store)), Vec::<PathBuf>::new());
}

/// Put a copy of the manifest of `host`/app:1 as app:`tag`, with each layer's TOC digest
/// annotation replaced by what `toc` returns for its index (`None`: left out).
fn retagged_with_tocs(host: &str, tag: &str, toc: impl Fn(usize) -> Option<String>) -> String {
    let agent = ureq::Agent::new_with_defaults();
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let mut resp = agent
        .get(&format!("http://{host}/v2/app/manifests/1"))
        .header("Accept", oci)
        .call()
        .unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
    let media = m["mediaType"].as_str().unwrap_or(oci).to_string();
    for (i, l) in m["layers"].as_array_mut().unwrap().iter_mut().enumerate() {
        let a = l["annotations"].as_object_mut().unwrap();
        match toc(i) {
            Some(t) => a.insert("containerd.io/snapshot/stargz/toc.digest".into(), t.into()),
            None => a.remove("containerd.io/snapshot/stargz/toc.digest"),
        };
    }
    let resp = agent
        .put(&format!("http://{host}/v2/app/manifests/{tag}"))
        .header("Content-Type", &media)
        .send(serde_json::to_vec(&m).unwrap().as_slice())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    format!("{host}/app:{tag}")
}

#[test]
fn layers_whose_toc_cannot_be_used_are_pulled_in_full() {
    if skip() {
        return;
    }
    let env = StrataEnv::new("strata-lazystore-");
    let reg = Registry::start(env.dir.path());
    let name = push_app(&env, &reg.host(), &[]);
    ok(&env, "full", &["pull", "-q", &name], &[]);
    let want = ok(
        &env,
        "full",
        &["run", "--rm", &name, "md5sum", "/greeting", "/data/blob"],
        &[],
    );
    // Layer 0: a malformed digest naming a path; layer 1: a well-formed digest of another
    // TOC; layer 2: no annotation (pulled in full as any layer).
    let bad = retagged_with_tocs(&reg.host(), "bad", |i| match i {
        0 => Some("sha256:../../../../etc/x".into()),
        1 => Some(format!("sha256:{}", "ab".repeat(32))),
        _ => None,
    });
    let (good, _, err) = strata(&env, "bad", &["pull", "--lazy", &bad], &[]);
    assert!(good, "{err}");
    assert_eq!(err.matches("not usable lazily").count(), 2, "{err}");
    assert!(err.contains("malformed digest"), "{err}");
    assert!(err.contains("digest mismatch"), "{err}");
    let store = env.path("bad");
    assert_eq!(lazy_homes(&store), Vec::<PathBuf>::new());
    assert_eq!(names(&store.join("layers/sha256")).len(), 3);
    assert!(!env.dir.path().join("etc").exists());
    assert_eq!(
        ok(
            &env,
            "bad",
            &["run", "--rm", &bad, "md5sum", "/greeting", "/data/blob"],
            &[]
        ),
        want
    );
    drop(reg);
    env.assert_no_leaks();
}
