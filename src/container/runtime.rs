//! The OCI runtime (runc or crun): detection and the few commands strata uses.
//!
//! Each store keeps its own runtime state root (`STORE/runtime/NAME`) so strata's containers
//! never collide with other users of the same runtime on the host.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use super::{Error, Result};

/// A chosen OCI runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Short name (`runc`, `crun`), recorded in state.
    pub name: String,
    /// The binary.
    pub path: PathBuf,
    /// The runtime's `--root` state directory.
    pub root: PathBuf,
}

/// Find `name` on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.exists());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether the host mounts cgroup v1 controllers besides the v2 hierarchy (hybrid mode).
pub fn cgroups_are_hybrid() -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v1 = info.lines().any(|l| l.contains(" - cgroup "));
    let v2 = info.lines().any(|l| l.contains(" - cgroup2 "));
    v1 && v2
}

impl Runtime {
    /// Pick a runtime: `requested` if given, else runc, else crun (crun only off hybrid
    /// cgroups, which crun 1.8 refuses).
    pub fn detect(requested: Option<&str>, store_root: &Path) -> Result<Runtime> {
        let candidates: Vec<&str> = match requested {
            Some(r) => vec![r],
            None if cgroups_are_hybrid() => vec!["runc"],
            None => vec!["runc", "crun"],
        };
        for c in &candidates {
            if c.ends_with("crun") && cgroups_are_hybrid() {
                return Err(Error::Runtime(
                    "crun refuses hosts with hybrid (v1+v2) cgroups like this one: use --runtime runc".into(),
                ));
            }
            if let Some(path) = which(c) {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| c.to_string());
                let root = store_root.join("runtime").join(&name);
                return Ok(Runtime { name, path, root });
            }
        }
        Err(Error::Runtime(match requested {
            Some(r) => format!("runtime {r:?} not found"),
            None if cgroups_are_hybrid() => {
                "runc not found (this host has hybrid cgroups, which crun refuses)".into()
            }
            None => "neither runc nor crun found on PATH".into(),
        }))
    }

    /// A command for this runtime with its state root set.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.arg("--root").arg(&self.root);
        c
    }

    /// Run a runtime command that must succeed, turning its stderr into one line.
    pub fn check(&self, mut cmd: Command, what: &str) -> Result<()> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Runtime(format!("cannot run {}: {e}", self.path.display())))?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "{} {what} failed: {}",
                self.name,
                last_error_line(&out.stderr)
            )));
        }
        Ok(())
    }

    /// The runtime's view of the container: `Some("running"|"created"|"stopped"|...)` or
    /// `None` if it does not know it.
    pub fn status(&self, id: &str) -> Option<String> {
        let out = self.command().arg("state").arg(id).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get("status")?.as_str().map(str::to_owned)
    }

    /// Send `signal` (name or number) to the container's init process.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        let mut c = self.command();
        c.arg("kill");
        if all {
            c.arg("--all");
        }
        c.arg(id).arg(signal);
        self.check(c, "kill")
    }

    /// Forget the container in the runtime (force kills anything left).
    pub fn delete(&self, id: &str) -> Result<()> {
        if self.status(id).is_none() {
            return Ok(());
        }
        let mut c = self.command();
        c.args(["delete", "--force", id]);
        self.check(c, "delete")
    }

    /// Run a command in a running container with inherited stdio; returns its exit status.
    pub fn exec(&self, id: &str, args: &[String], env: &[String], tty: bool) -> Result<ExitStatus> {
        let mut c = self.command();
        c.arg("exec");
        if tty {
            c.arg("--tty");
        }
        for e in env {
            c.arg("--env").arg(e);
        }
        c.arg(id).args(args);
        c.status()
            .map_err(|e| Error::Runtime(format!("cannot run {}: {e}", self.path.display())))
    }
}

/// The meaningful part of a runtime's error output: runc logs JSON-ish `msg="..."` lines.
pub fn last_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if let Some(i) = line.find("msg=\"") {
        let rest = &line[i + 5..];
        return rest.trim_end_matches('"').replace("\\\"", "\"");
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_error_line_is_extracted() {
        let e = b"time=\"x\" level=error msg=\"runc run failed: unable to start\"\n";
        assert_eq!(last_error_line(e), "runc run failed: unable to start");
        assert_eq!(last_error_line(b"plain error\n\n"), "plain error");
    }
}
