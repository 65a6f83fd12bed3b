//! pjdfstest, the POSIX file system test suite (its Rust edition, the `pjdfstest` crate 0.2.2,
//! which scripts/test.sh installs), on stratafs with and without FUSE passthrough, held to
//! kernel overlayfs run in the same test on the same kind of layers.
//!
//! Every overlay treats a 0/0 character device as a whiteout, and the suite's `::char` cases
//! make such devices: kernel overlayfs fails a few dozen of them. So the rule is the kernel's
//! result, case by case: stratafs may fail only cases the kernel fails too, and must skip
//! exactly what it skips. Cases stratafs passes where the kernel fails are listed in the test
//! output. As a check on the reference itself, every case the kernel fails must be a `::char`
//! case: any other failure there means the environment changed (users, time granularity).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::modes::Mode;
use common::*;

/// The version scripts/test.sh installs.
const VERSION: &str = "0.2.2";
/// One run of the suite takes a few seconds; this is for a machine under heavy load.
const SUITE_DEADLINE: u64 = 300;
/// The suite has 398 cases in 0.2.2; far fewer means it did not really run.
const MIN_CASES: usize = 390;

/// Features the mounts have (`pjdfstest -l` lists them), the time step of its checks of
/// changed times (above the kernel's timestamp granularity), and the two unprivileged users
/// it switches to (present on every Debian system).
const CONFIG: &str = r#"
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.02
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#;

/// What one case did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Skipped,
    /// Failed, with what the suite printed about it.
    Failed(String),
}

/// The pjdfstest binary: `$PJDFSTEST`, else where scripts/test.sh installs it, else
/// `pjdfstest` on the PATH or in cargo's bin dir.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cache")))
    {
        dirs.push(cache.join("strata/tools/bin"));
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    if let Some(cargo) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")))
    {
        dirs.push(cargo.join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("pjdfstest"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "pjdfstest is not installed: run scripts/test.sh, or \
                 `cargo install pjdfstest --version {VERSION} --locked` and set PJDFSTEST"
            )
        })
}

/// Runs the whole suite on a fresh fixture mounted in `mode`; returns every case's outcome.
fn run_suite(mode: Mode) -> BTreeMap<String, Outcome> {
    let bin = binary();
    let fx = Fixture::new(1);
    // The suite switches to unprivileged users, which must reach the mount.
    fs::set_permissions(fx.root(), fs::Permissions::from_mode(0o755)).unwrap();
    let config = fx.root().join("pjdfstest.toml");
    fs::write(&config, CONFIG).unwrap();
    // A directory on another filesystem than the mount, for the EXDEV cases.
    let secondary = fx.root().join("secondary");
    fs::create_dir(&secondary).unwrap();
    let m = mode.mount(&fx);
    let out = m.with_timeout(SUITE_DEADLINE, move |root| {
        Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&root)
            .arg("-s")
            .arg(&secondary)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run pjdfstest")
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cases = parse(&text);
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| {
            panic!(
                "pjdfstest on {mode:?} printed no summary ({}):\n{text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let total: usize = summary
        .rsplit(", ")
        .next()
        .and_then(|t| t.trim_end_matches(" total").parse().ok())
        .unwrap_or_else(|| panic!("cannot read the summary: {summary}"));
    assert_eq!(
        cases.len(),
        total,
        "pjdfstest on {mode:?}: every case has a result line ({summary})"
    );
    assert!(
        total >= MIN_CASES,
        "pjdfstest on {mode:?} ran {total} cases: {summary}"
    );
    eprintln!("pjdfstest on {mode:?}: {summary}");
    cases
}

/// The result lines of pjdfstest's output (`NAME  ok|FAILED|skipped`, a failure followed by
/// tab-indented lines saying why).
fn parse(text: &str) -> BTreeMap<String, Outcome> {
    let mut cases = BTreeMap::new();
    let mut last_failed: Option<String> = None;
    for line in text.lines() {
        if let Some(why) = line.strip_prefix('\t') {
            if let Some(Outcome::Failed(msg)) = last_failed.as_ref().and_then(|n| cases.get_mut(n))
            {
                if !msg.is_empty() {
                    msg.push_str(" / ");
                }
                msg.push_str(why.trim());
            }
            continue;
        }
        let line = line.trim_end();
        let outcome = [
            (
                "PASSED UNEXPECTEDLY",
                Outcome::Failed("passed unexpectedly".into()),
            ),
            ("failed as expected", Outcome::Failed(String::new())),
            ("FAILED", Outcome::Failed(String::new())),
            ("skipped", Outcome::Skipped),
            ("ok", Outcome::Passed),
        ]
        .into_iter()
        .find_map(|(word, o)| {
            let name = line.strip_suffix(word)?;
            (name.ends_with(' ') && !name.trim().contains(' ')).then(|| (name.trim(), o))
        });
        last_failed = None;
        if let Some((name, o)) = outcome {
            if matches!(o, Outcome::Failed(_)) {
                last_failed = Some(name.to_string());
            }
            cases.insert(name.to_string(), o);
        }
    }
    cases
}

fn failed(cases: &BTreeMap<String, Outcome>) -> BTreeMap<&str, &str> {
    cases
        .iter()
        .filter_map(|(n, o)| match o {
            Outcome::Failed(why) => Some((n.as_str(), why.as_str())),
            _ => None,
        })
        .collect()
}

fn skipped(cases: &BTreeMap<String, Outcome>) -> Vec<&str> {
    cases
        .iter()
        .filter(|(_, o)| **o == Outcome::Skipped)
        .map(|(n, _)| n.as_str())
        .collect()
}

/// Runs the suite on the kernel and on stratafs in `mode`, and holds stratafs to the kernel.
fn matches_kernel(mode: Mode) {
    need_root!();
    let kernel = run_suite(Mode::Kernel);
    let kernel_failed = failed(&kernel);
    let odd: Vec<_> = kernel_failed
        .iter()
        .filter(|(n, _)| !n.ends_with("::char"))
        .collect();
    assert!(
        odd.is_empty(),
        "kernel overlayfs fails cases other than 0/0 character devices (the environment \
         changed?): {odd:#?}"
    );
    let ours = run_suite(mode);
    let ours_failed = failed(&ours);
    let worse: Vec<_> = ours_failed
        .iter()
        .filter(|(n, _)| !kernel_failed.contains_key(*n))
        .collect();
    assert!(
        worse.is_empty(),
        "stratafs ({mode:?}) fails {} pjdfstest case(s) that kernel overlayfs passes: {worse:#?}",
        worse.len()
    );
    assert_eq!(
        skipped(&ours),
        skipped(&kernel),
        "stratafs ({mode:?}) skips other cases than the kernel"
    );
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        kernel.keys().collect::<Vec<_>>(),
        "the same cases ran"
    );
    let better: Vec<_> = kernel_failed
        .keys()
        .filter(|n| !ours_failed.contains_key(*n))
        .collect();
    eprintln!(
        "kernel overlayfs fails {}, stratafs ({mode:?}) {} (all also failed by the kernel); \
         stratafs passes {} the kernel fails: {better:?}",
        kernel_failed.len(),
        ours_failed.len(),
        better.len()
    );
}

#[test]
fn pjdfstest_with_passthrough_fails_only_what_kernel_overlayfs_fails() {
    matches_kernel(Mode::Passthrough);
}

#[test]
fn pjdfstest_without_passthrough_fails_only_what_kernel_overlayfs_fails() {
    matches_kernel(Mode::NoPassthrough);
}

#[test]
fn result_lines_are_parsed() {
    let text = "chmod::a                ok\n\
                chmod::b::char          FAILED\n\
                \tcalled `Result::unwrap()` on an `Err` value: EPERM\n\
                Backtrace:\n   0: x\n\
                open::erofs_named       skipped\n\
                \trequires features: x\n\
                rename::c  failed as expected\n\
                Summary: 1 failed, 1 skipped, 1 passed, 1 expected failures, 4 total\n";
    let c = parse(text);
    assert_eq!(c.len(), 4);
    assert_eq!(c["chmod::a"], Outcome::Passed);
    assert_eq!(
        c["chmod::b::char"],
        Outcome::Failed("called `Result::unwrap()` on an `Err` value: EPERM".into())
    );
    assert_eq!(c["open::erofs_named"], Outcome::Skipped);
    assert!(matches!(c["rename::c"], Outcome::Failed(_)));
}
