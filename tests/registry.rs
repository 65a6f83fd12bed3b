//! Registries end to end: `strata pull` (and push, login) against a real `docker-registry`
//! started by each test on a loopback port, with skopeo as the reference client, and a fault
//! proxy in front of it for the failure cases.
//!
//! Needs docker-registry, skopeo, busybox-static, openssl and apache2-utils (htpasswd);
//! scripts/test.sh installs them.

mod common;

use std::path::PathBuf;

use common::cli::StrataEnv;
use common::entries;
use common::registry::{Fault, FaultProxy, Registry};
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Build `app:1` (busybox, a greeting, two more layers) in `env`'s store.
fn build_app(env: &StrataEnv, greeting: &str) -> String {
    let ctx = env.busybox_context("ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             RUN echo {greeting} > /greeting && mkdir -p /data && head -c 300000 /bin/busybox > /data/blob\n\
             CMD [\"/bin/sh\", \"-c\", \"cat /greeting\"]\n"
        ),
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "app:1", ctx.to_str().unwrap()])
        .trim()
        .to_string()
}

/// `skopeo copy oci:STORE:NAME docker://HOST/DEST` with plain HTTP; extra args first.
fn skopeo_push(env: &StrataEnv, name: &str, dest: &str, extra: &[&str]) {
    let src = format!("oci:{}:{name}", env.store().display());
    let dst = format!("docker://{dest}");
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&src, &dst]);
    env.tool("skopeo", &args);
}

/// The manifest digest `skopeo inspect` reports for `reference`.
fn skopeo_digest(env: &StrataEnv, reference: &str) -> String {
    let v: Value = serde_json::from_str(&env.tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ))
    .unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// A second store of the same test.
fn store2(env: &StrataEnv) -> PathBuf {
    env.path("store2")
}

fn strata2(env: &StrataEnv, args: &[&str]) -> std::process::Output {
    env.run_in(&store2(env), None, args, &[], None)
}

fn ok2(env: &StrataEnv, args: &[&str]) -> String {
    let o = strata2(env, args);
    assert!(
        o.status.success(),
        "strata {args:?} failed: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn fails2(env: &StrataEnv, args: &[&str]) -> String {
    let o = strata2(env, args);
    assert!(
        !o.status.success(),
        "strata {args:?} succeeded: {}",
        text(&o.stdout)
    );
    text(&o.stderr)
}

/// The store has no image, no temp blob and no half-extracted layer.
fn assert_store_clean(env: &StrataEnv) {
    let s = store2(env);
    let images = ok2(env, &["images", "-q"]);
    assert_eq!(images.trim(), "", "an image entered the store");
    let blobs: Vec<String> = entries(&s.join("blobs/sha256"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(blobs.is_empty(), "temp blobs left: {blobs:?}");
    let layers: Vec<String> = entries(&s.join("layers"))
        .into_iter()
        .filter(|n| n != "sha256")
        .collect();
    assert!(layers.is_empty(), "temp layers left: {layers:?}");
}

#[test]
fn pull_runs_and_agrees_with_skopeo() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let id = build_app(&env, "hello");
    let name = format!("{}/app:1", reg.host());
    skopeo_push(&env, "app:1", &name, &[]);
    let expected = skopeo_digest(&env, &name);

    let out = ok2(&env, &["pull", &name]);
    assert_eq!(
        out.trim(),
        expected,
        "the digest strata prints is the registry's"
    );
    let inspect: Value = serde_json::from_str(&ok2(&env, &["inspect", &name])).unwrap();
    assert_eq!(
        inspect[0]["Id"]
            .as_str()
            .unwrap_or_else(|| inspect["Id"].as_str().unwrap()),
        id
    );
    assert_eq!(ok2(&env, &["run", "--rm", &name]), "hello\n");
    let listed = ok2(&env, &["images"]);
    assert!(listed.contains(&format!("{}/app", reg.host())), "{listed}");

    // Again: nothing is fetched; -q prints the digest alone.
    let o = strata2(&env, &["pull", &name]);
    assert!(o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("0 layer(s) fetched"), "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(ok2(&env, &["pull", "-q", &name]), format!("{expected}\n"));

    // By digest: untagged name@digest, same image.
    let by_digest = format!("{}/app@{expected}", reg.host());
    assert_eq!(ok2(&env, &["pull", "-q", &by_digest]).trim(), expected);

    // Docker schema 2 as skopeo converts it: the digest is still the registry's.
    let v2 = format!("{}/app:v2s2", reg.host());
    skopeo_push(&env, "app:1", &v2, &["--format", "v2s2"]);
    let expected_v2 = skopeo_digest(&env, &v2);
    assert_ne!(expected_v2, expected);
    assert_eq!(ok2(&env, &["pull", "-q", &v2]).trim(), expected_v2);
    assert_eq!(ok2(&env, &["run", "--rm", &v2]), "hello\n");

    // zstd and uncompressed layers: the image recompressed into an OCI layout, loaded and
    // pushed by strata as it is, pulled into the other store, verified, extracted, run.
    let layout = mixed_compression_layout(&env, "app:1");
    env.ok(&["load", "-i", layout.to_str().unwrap()]);
    let mixed = format!("{}/app:mixed", reg.host());
    env.ok(&["push", "-q", "mixed:1", &mixed]);
    let raw: Value = serde_json::from_str(&env.tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{mixed}"),
        ],
    ))
    .unwrap();
    let types: Vec<&str> = raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert!(
        types.iter().any(|t| t.ends_with("+zstd")) && types.iter().any(|t| t.ends_with(".tar")),
        "{types:?}"
    );
    assert_eq!(
        ok2(&env, &["pull", "-q", &mixed]).trim(),
        skopeo_digest(&env, &mixed)
    );
    assert_eq!(ok2(&env, &["run", "--rm", &mixed]), "hello\n");
    drop(reg);
    env.assert_no_leaks();
}

/// An OCI layout holding the image `name` of the store with its layers recompressed: zstd,
/// then none, then zstd again, and so on; tagged `mixed:1`.
fn mixed_compression_layout(env: &StrataEnv, name: &str) -> PathBuf {
    use std::io::Read;
    let store = env.store();
    let v: Value = serde_json::from_str(&env.ok(&["inspect", name])).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    let mut manifest = v["Manifest"].clone();
    let layout = env.path("mixed");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| -> String {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let blob = |d: &str| std::fs::read(store.join("blobs/sha256").join(&d[7..])).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    put(&blob(&config));
    for (i, l) in manifest["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        let gz = blob(l["digest"].as_str().unwrap());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar)
            .unwrap();
        let (bytes, media_type) = if i % 2 == 0 {
            (
                zstd::stream::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )
        } else {
            (tar, "application/vnd.oci.image.layer.v1.tar")
        };
        l["digest"] = Value::from(put(&bytes));
        l["size"] = Value::from(bytes.len());
        l["mediaType"] = Value::from(media_type);
    }
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let md = put(&mbytes);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
            "size": mbytes.len(), "annotations": {"org.opencontainers.image.ref.name": "mixed:1"}}]}))
        .unwrap(),
    )
    .unwrap();
    layout
}

/// An OCI layout holding an index of the app (this machine's platform) and another image
/// (linux/arm64/v8, or amd64 on an arm64 host), as skopeo pushes multi-arch images.
fn multi_arch_layout(env: &StrataEnv) -> PathBuf {
    let layout = env.path("multi");
    let src = format!("oci:{}:app:1", env.store().display());
    env.tool(
        "skopeo",
        &["copy", &src, &format!("oci:{}:app", layout.display())],
    );
    // The other platform's image: the same with another greeting.
    let ctx = env.path("ctx2");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM app:1\nRUN echo other > /greeting\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "other:1", ctx.to_str().unwrap()]);
    let src = format!("oci:{}:other:1", env.store().display());
    env.tool(
        "skopeo",
        &["copy", &src, &format!("oci:{}:other", layout.display())],
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let find = |n: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == n)
            .unwrap()
            .clone()
    };
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let (other_arch, other_variant) = if host == "arm64" {
        ("amd64", None)
    } else {
        ("arm64", Some("v8"))
    };
    let mut app = find("app");
    let mut other = find("other");
    app.as_object_mut().unwrap().remove("annotations");
    other.as_object_mut().unwrap().remove("annotations");
    app["platform"] = serde_json::json!({"os": "linux", "architecture": host});
    other["platform"] = match other_variant {
        Some(v) => serde_json::json!({"os": "linux", "architecture": other_arch, "variant": v}),
        None => serde_json::json!({"os": "linux", "architecture": other_arch}),
    };
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other, app],
    });
    let bytes = serde_json::to_vec(&multi).unwrap();
    let hex = {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(&bytes);
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    layout
}

#[test]
fn pull_picks_the_platform_from_an_index() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    build_app(&env, "native");
    let layout = multi_arch_layout(&env);
    let name = format!("{}/multi:1", reg.host());
    env.tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", layout.display()),
            &format!("docker://{name}"),
        ],
    );
    let index_digest = skopeo_digest(&env, &name);
    // The index's digest is what the reference names (docker prints the same).
    assert_eq!(ok2(&env, &["pull", "-q", &name]).trim(), index_digest);
    assert_eq!(ok2(&env, &["run", "--rm", &name]), "native\n");

    let other = if std::env::consts::ARCH == "aarch64" {
        "linux/amd64"
    } else {
        "linux/arm64/v8"
    };
    let o2 = format!("{}/multi:other", reg.host());
    env.tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{name}"),
            &format!("docker://{o2}"),
        ],
    );
    ok2(&env, &["pull", "-q", "--platform", other, &o2]);
    // Same busybox binary, so it runs here whatever the label says.
    assert_eq!(ok2(&env, &["run", "--rm", &o2]), "other\n");

    // The same as a Docker manifest list of schema 2 manifests.
    let list = format!("{}/multi:list", reg.host());
    env.tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--format",
            "v2s2",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{name}"),
            &format!("docker://{list}"),
        ],
    );
    let raw: Value = serde_json::from_str(&env.tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{list}"),
        ],
    ))
    .unwrap();
    assert_eq!(
        raw["mediaType"].as_str().unwrap(),
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(
        ok2(&env, &["pull", "-q", &list]).trim(),
        skopeo_digest(&env, &list)
    );
    assert_eq!(ok2(&env, &["run", "--rm", &list]), "native\n");

    let err = fails2(&env, &["pull", "--platform", "linux/s390x", &name]);
    assert!(err.contains("no image for platform linux/s390x"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
    let err = fails2(&env, &["pull", "--platform", "linux", &name]);
    assert!(err.contains("OS/ARCH"), "{err}");
}

#[test]
fn bad_references_unknown_images_and_a_registry_that_is_down() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let err = fails2(&env, &["pull", &format!("{}/nosuch:1", reg.host())]);
    assert!(
        err.contains("NAME_UNKNOWN") || err.contains("MANIFEST_UNKNOWN"),
        "{err}"
    );
    // An explicit --tls-verify wants HTTPS, even from 127.0.0.1.
    let err = fails2(
        &env,
        &["pull", "--tls-verify", &format!("{}/nosuch:1", reg.host())],
    );
    assert!(err.contains("https://"), "{err}");
    let err = fails2(&env, &["pull", "Bad/Name"]);
    assert!(err.contains("invalid reference"), "{err}");
    let err = fails2(&env, &["pull", "a@sha256:12"]);
    assert!(err.contains("invalid reference"), "{err}");
    // Nothing listens on the port of a stopped registry.
    let mut down = Registry::start(env.dir.path());
    let host = down.host();
    down.stop();
    let err = fails2(&env, &["pull", &format!("{host}/app:1")]);
    assert!(err.contains("unreachable"), "{err}");
    assert!(
        err.contains("refused") || err.contains("Connection"),
        "{err}"
    );
    assert_store_clean(&env);
}

/// The app pushed to `reg`, a proxy with `fault` in front; the proxy's name of it and the
/// digest of its biggest layer.
fn faulty(
    env: &StrataEnv,
    reg: &Registry,
    fault: impl Fn(String) -> Fault,
) -> (FaultProxy, String, String) {
    build_app(env, "hello");
    let name = format!("{}/app:1", reg.host());
    skopeo_push(env, "app:1", &name, &[]);
    let m: Value = serde_json::from_str(&env.tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ],
    ))
    .unwrap();
    let big = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = FaultProxy::start(reg.port, fault(big.clone()));
    let via = format!("{}/app:1", proxy.host());
    (proxy, via, big)
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_is_stored() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let (_p, via, big) = faulty(&env, &reg, Fault::CorruptBlob);
    let err = fails2(&env, &["pull", &via]);
    assert!(
        err.contains("digest mismatch") && err.contains(&big),
        "{err}"
    );
    assert_store_clean(&env);
    assert!(
        entries(&store2(&env).join("partial")).is_empty(),
        "bad bytes kept"
    );
}

#[test]
fn a_truncated_blob_is_refused_and_nothing_is_stored() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let (_p, via, big) = faulty(&env, &reg, Fault::TruncateBlob);
    let err = fails2(&env, &["pull", &via]);
    assert!(
        err.contains("digest mismatch") && err.contains(&big),
        "{err}"
    );
    assert_store_clean(&env);
}

#[test]
fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let (_p, via, _) = faulty(&env, &reg, |_| Fault::BadManifest);
    let err = fails2(&env, &["pull", &via]);
    assert!(err.contains("manifest: digest mismatch"), "{err}");
    assert_store_clean(&env);
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    // Dropped once: the same pull resumes where it stopped.
    let (p, via, big) = faulty(&env, &reg, |d| Fault::DropBlob(d, 1));
    let out = ok2(&env, &["pull", "-q", &via]);
    assert!(out.starts_with("sha256:"), "{out}");
    let ranges = p.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert!(
        ranges[0].starts_with("bytes=") && !ranges[0].starts_with("bytes=0-"),
        "{ranges:?}"
    );
    assert_eq!(ok2(&env, &["run", "--rm", &via]), "hello\n");
    drop(p);

    // Dropped more often than one pull retries: the pull fails, keeps what it has, and the
    // next pull resumes it.
    let env = StrataEnv::new("strata-reg-");
    let (p, via, _) = faulty(&env, &reg, |d| Fault::DropBlob(d, 3));
    let _ = big;
    let err = fails2(&env, &["pull", &via]);
    assert!(err.contains("kept for resuming"), "{err}");
    assert_store_clean(&env);
    let partial = entries(&store2(&env).join("partial"));
    assert_eq!(partial.len(), 1, "{partial:?}");
    ok2(&env, &["pull", "-q", &via]);
    let ranges = p.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert!(entries(&store2(&env).join("partial")).is_empty());
    assert_eq!(ok2(&env, &["run", "--rm", &via]), "hello\n");
}

#[test]
fn push_round_trip_agrees_with_skopeo_and_podman() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let id = build_app(&env, "round trip");
    let manifest = {
        let v: Value = serde_json::from_str(&env.ok(&["inspect", "app:1"])).unwrap();
        let v = if v.is_array() { v[0].clone() } else { v };
        v["Digest"].as_str().unwrap().to_string()
    };
    let name = format!("{}/rt/app:1", reg.host());
    let pushed = env.ok(&["push", "-q", "app:1", &name]);
    assert_eq!(pushed.trim(), manifest, "push prints the manifest digest");
    assert_eq!(skopeo_digest(&env, &name), manifest);

    // skopeo copies it to an OCI layout: the same manifest and config digests.
    let layout = env.path("copied");
    env.tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{name}"),
            &format!("oci:{}:x", layout.display()),
        ],
    );
    let idx: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"][0]["digest"].as_str().unwrap(), manifest);

    // rmi, pull back: the same image ID and manifest digest; it runs.
    env.ok(&["rmi", "app:1"]);
    assert_eq!(env.ok(&["pull", "-q", &name]).trim(), manifest);
    let v: Value = serde_json::from_str(&env.ok(&["inspect", &name])).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    assert_eq!(v["Id"].as_str().unwrap(), id);
    assert_eq!(v["Digest"].as_str().unwrap(), manifest);
    assert_eq!(env.ok(&["run", "--rm", &name]), "round trip\n");

    // Pushed again: every blob is there already. To another repository: mounted.
    let o = env.run(&["push", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("0 blob(s) uploaded"),
        "{}",
        text(&o.stderr)
    );
    let other = format!("{}/rt/other:2", reg.host());
    let o = env.run(&["push", &name, &other]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("mounted from another repository") && err.contains("0 blob(s) uploaded"),
        "{err}"
    );
    assert_eq!(skopeo_digest(&env, &other), manifest);

    // podman pulls and runs what strata pushed (its own storage and config: runc, rlimits
    // it may set, as tests/podman.rs does).
    let podman_root = env.path("podman");
    std::fs::create_dir_all(&podman_root).unwrap();
    let conf = podman_root.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\ntmp_dir = \"{}\"\n",
            podman_root.join("tmp").display()
        ),
    )
    .unwrap();
    let podman = |args: &[&str]| {
        let mut c = std::process::Command::new("podman");
        c.args(["--root", podman_root.join("graph").to_str().unwrap()])
            .args(["--runroot", podman_root.join("run").to_str().unwrap()])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", &conf)
            .env_remove("CONTAINERS_STORAGE_CONF");
        let o = common::cli::run_deadline(
            c,
            &format!("podman {args:?}"),
            common::cli::COMMAND_DEADLINE,
            None,
        );
        assert!(o.status.success(), "podman {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    podman(&["pull", "-q", "--tls-verify=false", &other]);
    assert_eq!(
        podman(&["run", "--rm", "--net=none", &other]),
        "round trip\n"
    );
    // What podman builds and pushes, strata pulls and runs.
    let pctx = env.path("podman-ctx");
    std::fs::create_dir_all(&pctx).unwrap();
    std::fs::write(
        pctx.join("Containerfile"),
        format!("FROM {other}\nRUN echo built by podman > /greeting\n"),
    )
    .unwrap();
    podman(&[
        "build",
        "-q",
        "--tls-verify=false",
        "--network=none",
        "-t",
        "localhost/pb:1",
        pctx.to_str().unwrap(),
    ]);
    let from_podman = format!("{}/rt/podman:1", reg.host());
    podman(&[
        "push",
        "-q",
        "--tls-verify=false",
        "localhost/pb:1",
        &format!("docker://{from_podman}"),
    ]);
    assert_eq!(
        env.ok(&["pull", "-q", &from_podman]).trim(),
        skopeo_digest(&env, &from_podman)
    );
    assert_eq!(env.ok(&["run", "--rm", &from_podman]), "built by podman\n");
    podman(&["rmi", "-a", "-f"]);
    drop(reg);
}

#[test]
fn push_falls_back_to_a_monolithic_upload() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    build_app(&env, "whole");
    let proxy = FaultProxy::start(reg.port, Fault::RefusePatch);
    let name = format!("{}/mono:1", proxy.host());
    let o = env.run(&["push", "app:1", &name]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("refused chunks; uploading it whole"), "{err}");
    assert_eq!(
        skopeo_digest(&env, &format!("{}/mono:1", reg.host())),
        text(&o.stdout).trim()
    );
    ok2(&env, &["pull", "-q", &format!("{}/mono:1", reg.host())]);
    assert_eq!(
        ok2(&env, &["run", "--rm", &format!("{}/mono:1", reg.host())]),
        "whole\n"
    );
    // A name that is not in the store, a destination the registry cannot take.
    let err = env.fails(&["push", "nosuch:1", &name]);
    assert!(err.contains("no such image"), "{err}");
    let err = env.fails(&["push", "app:1", "Bad/Dest"]);
    assert!(err.contains("invalid reference"), "{err}");
}

#[test]
fn login_tls_and_credentials_files() {
    use common::registry::RegistryConfig;
    use std::os::unix::fs::PermissionsExt;
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start_with(
        env.dir.path(),
        &RegistryConfig {
            auth: Some(("alice".into(), "s3cret".into())),
            tls: true,
        },
    );
    let ca = reg.ca_dir.clone().unwrap();
    let ca = ca.to_str().unwrap();
    build_app(&env, "secured");
    let runtime = env.path("xdg");
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let envs = [
        ("XDG_RUNTIME_DIR", runtime.to_str().unwrap()),
        ("HOME", home.to_str().unwrap()),
        ("REGISTRY_AUTH_FILE", ""),
        ("DOCKER_CONFIG", ""),
    ];
    let run = |args: &[&str], stdin: Option<&str>| env.run_with(args, &envs, stdin);
    let host = reg.host();
    let name = format!("{host}/sec/app:1");

    // Not logged in: the registry's refusal, and how to fix it.
    let o = run(&["push", "--cert-dir", ca, "app:1", &name], None);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("authentication required (strata login"),
        "{}",
        text(&o.stderr)
    );
    // Wrong password: refused, nothing recorded.
    let o = run(
        &[
            "login",
            "--cert-dir",
            ca,
            "-u",
            "alice",
            "--password-stdin",
            &host,
        ],
        Some("nope\n"),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("refused the credentials"),
        "{}",
        text(&o.stderr)
    );
    let auth = runtime.join("containers/auth.json");
    assert!(!auth.exists());
    // The CA is not trusted without --cert-dir: a TLS error, not a fallback to HTTP.
    let o = run(
        &["login", "-u", "alice", "--password-stdin", &host],
        Some("s3cret\n"),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("https://") && (err.contains("certificate") || err.contains("issuer")),
        "{err}"
    );
    // Right: recorded in podman's file, 0600, which skopeo then uses.
    let o = run(
        &[
            "login",
            "--cert-dir",
            ca,
            "-u",
            "alice",
            "--password-stdin",
            &host,
        ],
        Some("s3cret\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "Login Succeeded!\n");
    let mode = std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let o = run(&["push", "-q", "--cert-dir", ca, "app:1", &name], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let digest = text(&o.stdout).trim().to_string();
    let v: Value = serde_json::from_str(&env.tool(
        "skopeo",
        &[
            "inspect",
            "--authfile",
            auth.to_str().unwrap(),
            "--cert-dir",
            ca,
            &format!("docker://{name}"),
        ],
    ))
    .unwrap();
    assert_eq!(v["Digest"].as_str().unwrap(), digest);
    // --tls-verify=false accepts the unknown CA.
    let o = run(&["pull", "-q", "--tls-verify=false", &name], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), digest);

    // Logged out: refused again; logging out twice says so.
    let o = run(&["logout", &host], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = run(&["pull", "--cert-dir", ca, &name], None);
    assert!(!o.status.success());
    let o = run(&["logout", &host], None);
    assert!(
        text(&o.stderr).contains("not logged in"),
        "{}",
        text(&o.stderr)
    );

    // A docker login is a strata login: ~/.docker/config.json, with "auths"...
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::write(
        home.join(".docker/config.json"),
        format!(r#"{{"auths": {{"https://{host}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#),
    )
    .unwrap();
    let o = run(&["pull", "-q", "--cert-dir", ca, &name], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // ... or a credential helper.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-strata-test");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread host\n[ \"$1\" = get ] && echo \"{\\\"ServerURL\\\":\\\"$host\\\",\\\"Username\\\":\\\"alice\\\",\\\"Secret\\\":\\\"s3cret\\\"}\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        home.join(".docker/config.json"),
        format!(r#"{{"credHelpers": {{"{host}": "strata-test"}}}}"#),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut envs2 = envs.to_vec();
    envs2.push(("PATH", &path));
    let o = env.run_with(&["pull", "-q", "--cert-dir", ca, &name], &envs2, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), digest);
}

#[test]
fn bearer_tokens_are_fetched_once_and_reused() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    build_app(&env, "token");
    let proxy = FaultProxy::start(reg.port, Fault::Bearer);
    let name = format!("{}/tok/app:1", proxy.host());
    let o = env.run(&["push", "-q", "app:1", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (issued, refused) = *proxy.tokens.lock().unwrap();
    // One token for the push scope, asked after the ping's challenge; every blob and the
    // manifest reuse it.
    assert_eq!(issued, 1, "tokens issued");
    assert_eq!(refused, 1, "only the ping goes without a token");
    assert_eq!(
        ok2(&env, &["pull", "-q", &name]).trim(),
        text(&o.stdout).trim()
    );
    assert_eq!(ok2(&env, &["run", "--rm", &name]), "token\n");
    let (issued, _) = *proxy.tokens.lock().unwrap();
    assert_eq!(issued, 2, "one more for the pull scope");
}

#[test]
fn a_refused_token_is_replaced_by_a_fresh_one() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    build_app(&env, "fresh");
    // Each token is good for 3 requests: a push needs several tokens, each asked for after
    // a 401.
    let proxy = FaultProxy::start(reg.port, Fault::BearerUses(3));
    let name = format!("{}/tok/app:1", proxy.host());
    let o = env.run(&["push", "-q", "app:1", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (issued, refused) = *proxy.tokens.lock().unwrap();
    assert!(issued >= 3, "tokens issued: {issued}");
    // Parallel transfers refused the same token share the fresh one.
    assert!(
        issued <= refused,
        "a token fetched without a refusal: {issued} > {refused}"
    );
    assert_eq!(
        ok2(&env, &["run", "--rm", "--pull=always", &name]),
        "fresh\n"
    );
}

#[test]
fn a_huge_manifest_and_a_hostile_layer_are_refused() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let (_p, via, _) = faulty(&env, &reg, |_| Fault::HugeManifest);
    let err = fails2(&env, &["pull", &via]);
    assert!(err.contains("larger than 4 MiB"), "{err}");
    assert_store_clean(&env);

    // A layer whose tar climbs out of its root: the store's extraction rules apply.
    let layout = env.path("evil");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    let data = b"pwned\n";
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_mut_bytes()[..16].copy_from_slice(b"../../escaped\0\0\0");
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let (layer_d, layer_n) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_d]},
    });
    let (config_d, config_n) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_n},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer_n}],
    });
    let (m_d, m_n) = put(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_d, "size": m_n,
            "annotations": {"org.opencontainers.image.ref.name": "evil"}}]}))
        .unwrap(),
    )
    .unwrap();
    let evil = format!("{}/evil:1", reg.host());
    env.tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:evil", layout.display()),
            &format!("docker://{evil}"),
        ],
    );
    let err = fails2(&env, &["pull", &evil]);
    assert!(
        err.contains("refusing entry") && err.contains("escaped"),
        "{err}"
    );
    assert_store_clean(&env);
    assert!(!env.path("escaped").exists() && !store2(&env).join("escaped").exists());
}

#[test]
fn run_create_and_build_pull_what_the_store_lacks() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    build_app(&env, "v1");
    let name = format!("{}/auto/app:1", reg.host());
    env.ok(&["push", "-q", "app:1", &name]);

    // --pull=never: the store must have it.
    let err = fails2(&env, &["run", "--rm", "--pull=never", &name]);
    assert!(err.contains("no such image"), "{err}");
    // Missing (the default): pulled, then run.
    let o = strata2(&env, &["run", "--rm", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "v1\n");
    assert!(
        text(&o.stderr).contains("Unable to find image"),
        "{}",
        text(&o.stderr)
    );
    // Present: not pulled again.
    let o = strata2(&env, &["create", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("Pulling"), "{}", text(&o.stderr));
    ok2(&env, &["rm", text(&o.stdout).trim()]);

    // The tag moves in the registry: only --pull=always follows it.
    let ctx = env.path("ctx-v2");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM app:1\nRUN echo v2 > /greeting\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "app:2", ctx.to_str().unwrap()]);
    env.ok(&["push", "-q", "app:2", &name]);
    assert_eq!(ok2(&env, &["run", "--rm", &name]), "v1\n");
    assert_eq!(ok2(&env, &["run", "--rm", "--pull=always", &name]), "v2\n");

    // build: FROM a registry image the store lacks.
    let ctx = env.path("ctx-from");
    std::fs::create_dir_all(&ctx).unwrap();
    let other = format!("{}/auto/base:1", reg.host());
    env.ok(&["push", "-q", "app:1", &other]);
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {other}\nRUN cat /greeting > /copy\nCMD [\"cat\", \"/copy\"]\n"),
    )
    .unwrap();
    let err = fails2(
        &env,
        &[
            "build",
            "--pull=never",
            "-t",
            "derived:1",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(err.contains("no such image"), "{err}");
    ok2(
        &env,
        &["build", "-q", "-t", "derived:1", ctx.to_str().unwrap()],
    );
    assert_eq!(ok2(&env, &["run", "--rm", "derived:1"]), "v1\n");
    drop(reg);
    env.assert_no_leaks();
}

#[test]
fn rootless_pull_and_run() {
    let mut env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    build_app(&env, "rootless");
    let name = format!("{}/user/app:1", reg.host());
    env.ok(&["push", "-q", "app:1", &name]);
    let user = env.rootless();
    let store = env.path("user-store");
    let run = |args: &[&str]| {
        let o = env.run_in(&store, Some(user), args, &[("XDG_RUNTIME_DIR", "")], None);
        assert!(o.status.success(), "strata {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let digest = run(&["pull", "-q", &name]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(run(&["run", "--rm", &name]), "rootless\n");
    // The partial-download directory, like the rest of the store, is the user's alone.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(store.join("partial")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (user.0, 0o700));
    drop(reg);
    env.assert_no_leaks();
}

#[test]
fn ctrl_c_keeps_the_store_consistent_and_the_next_pull_resumes() {
    let env = StrataEnv::new("strata-reg-");
    let reg = Registry::start(env.dir.path());
    let (proxy, via, big) = faulty(&env, &reg, Fault::SlowBlob);
    let mut c = env.command_in(&store2(&env), None, &["pull", &via]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    // Wait until part of the slow blob is on disk, then Ctrl-C.
    let partial = store2(&env).join("partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // The slow blob's own partial file (another layer's may come first).
        let size = std::fs::metadata(partial.join(&big[7..]))
            .map(|m| m.len())
            .unwrap_or(0);
        if size > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partial download of {big}: {:?}",
            entries(&partial)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    common::kill_pid(child.id(), rustix::process::Signal::INT);
    let out = common::run_with_deadline(30, move || child.wait_with_output().unwrap())
        .expect("pull ended after Ctrl-C");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert_store_clean(&env);
    // The slow blob's partial download is kept (and any other layer caught half way).
    let kept = entries(&partial);
    assert!(kept.contains(&big[7..].to_string()), "{kept:?}");

    *proxy.fault.lock().unwrap() = Fault::None;
    ok2(&env, &["pull", "-q", &via]);
    let ranges = proxy.ranges.lock().unwrap().clone();
    // Each kept download resumed where it stopped (one that was complete needs no request).
    assert!(
        !ranges.is_empty() && ranges.len() <= kept.len(),
        "{ranges:?}"
    );
    assert!(
        ranges.iter().all(|r| !r.starts_with("bytes=0-")),
        "{ranges:?}"
    );
    assert!(entries(&partial).is_empty());
    assert_eq!(ok2(&env, &["run", "--rm", &via]), "hello\n");
}
