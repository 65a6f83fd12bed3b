//! Registry credentials in the files podman, skopeo and docker use, so a user who logged in
//! with any of them is logged in for strata too.
//!
//! `strata login` writes `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`
//! (`/run/containers/UID/auth.json` without it), mode 0600. Lookups read that file, then
//! `~/.config/containers/auth.json`, then `~/.docker/config.json`, whose `credHelpers` and
//! `credsStore` name a `docker-credential-NAME` program to ask.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{Map, Value};

use super::reference::{registry_host, DOCKER_HUB};
use super::{io_err, Error, Result};

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// `base64(user:password)`, as auth files and Basic authentication spell it.
    pub fn encoded(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }

    fn decode(auth: &str) -> Option<Credentials> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    }
}

/// The file `strata login` writes.
pub fn auth_file() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return p.into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Path::new(&d).join("containers/auth.json"),
        None => format!(
            "/run/containers/{}/auth.json",
            rustix::process::geteuid().as_raw()
        )
        .into(),
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The files read for credentials, in order.
fn lookup_files() -> Vec<PathBuf> {
    let mut files = vec![auth_file()];
    if let Some(h) = home() {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| h.join(".config"));
        files.push(config.join("containers/auth.json"));
    }
    let docker = std::env::var_os("DOCKER_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".docker")));
    if let Some(d) = docker {
        files.push(d.join("config.json"));
    }
    files
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::Credentials(format!("{}: not a valid auth file: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// The credentials for `registry` (`host[:port]`, docker hub as `docker.io`), if any file
/// or helper has some.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    for f in lookup_files() {
        if let Some(c) = lookup_in(&f, registry)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// The auth file that [`lookup`] takes `registry`'s credentials from (a lazy layer's spec
/// records it, so its daemon finds them whatever its environment).
pub fn file_for(registry: &str) -> Result<Option<PathBuf>> {
    for f in lookup_files() {
        if lookup_in(&f, registry)?.is_some() {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// The credentials auth file `file` holds (or names a helper for) for `registry`.
pub fn lookup_in(file: &Path, registry: &str) -> Result<Option<Credentials>> {
    let Some(doc) = read_json(file)? else {
        return Ok(None);
    };
    if let Some(helper) = doc
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| registry_host(k).ok().as_deref() == Some(registry))
        })
        .and_then(|(_, v)| v.as_str())
    {
        return helper_get(helper, registry);
    }
    if let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) {
        for (k, v) in auths {
            if registry_host(k).ok().as_deref() != Some(registry) {
                continue;
            }
            if let Some(c) = v
                .get("auth")
                .and_then(|a| a.as_str())
                .and_then(Credentials::decode)
            {
                return Ok(Some(c));
            }
        }
    }
    if let Some(store) = doc.get("credsStore").and_then(|s| s.as_str()) {
        if let Some(c) = helper_get(store, registry)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// The server URL docker's helpers key docker hub by.
fn helper_server(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        "https://index.docker.io/v1/"
    } else {
        registry
    }
}

/// Ask `docker-credential-NAME get` (the docker credential helper protocol).
fn helper_get(name: &str, registry: &str) -> Result<Option<Credentials>> {
    let prog = format!("docker-credential-{name}");
    let fail = |why: String| Error::Credentials(format!("{prog} get {registry}: {why}"));
    let mut child = Command::new(&prog)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(helper_server(registry).as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // The protocol's way of saying "none stored".
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!(
            "{}{}",
            msg,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    let (Some(u), Some(p)) = (
        v.get("Username").and_then(|x| x.as_str()),
        v.get("Secret").and_then(|x| x.as_str()),
    ) else {
        return Err(fail("no Username/Secret in its answer".into()));
    };
    Ok(Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    }))
}

/// Write `doc` to `path` atomically, mode 0600, its directory 0700 if made here.
fn write_private(path: &Path, doc: &Value) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("create {}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:016x}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        fastrand::u64(..)
    ));
    let bytes = serde_json::to_vec_pretty(doc).expect("a JSON value serializes");
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(format!("write {}", path.display()))(e)
    })
}

/// Record `creds` for `registry` in [`auth_file`], keeping what else it holds.
pub fn store(registry: &str, creds: &Credentials) -> Result<PathBuf> {
    let path = auth_file();
    let mut doc = read_json(&path)?.unwrap_or_else(|| Value::Object(Map::new()));
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| Error::Credentials(format!("{}: not a JSON object", path.display())))?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| {
            Error::Credentials(format!("{}: \"auths\" is not an object", path.display()))
        })?;
    auths.retain(|k, _| registry_host(k).ok().as_deref() != Some(registry));
    auths.insert(
        registry.to_string(),
        serde_json::json!({ "auth": creds.encoded() }),
    );
    write_private(&path, &doc)?;
    Ok(path)
}

/// Remove the credentials of `registry` from [`auth_file`]; whether there were any.
pub fn erase(registry: &str) -> Result<bool> {
    let path = auth_file();
    let Some(mut doc) = read_json(&path)? else {
        return Ok(false);
    };
    let Some(auths) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) else {
        return Ok(false);
    };
    let before = auths.len();
    auths.retain(|k, _| registry_host(k).ok().as_deref() != Some(registry));
    if auths.len() == before {
        return Ok(false);
    }
    write_private(&path, &doc)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        assert_eq!(c.encoded(), "dTpwOnc=");
        assert_eq!(Credentials::decode("dTpwOnc="), Some(c));
        assert_eq!(Credentials::decode("!!"), None);
        assert!(!format!("{:?}", Credentials::decode("dTpwOnc=").unwrap()).contains("p:w"));
    }
}
