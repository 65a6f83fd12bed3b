//! The description of a lazy layer that the store writes and stratafs reads (`lazy=SPEC`):
//! which lower directory it is, and where its blob, TOC digest and chunk cache are.

use std::path::{Path, PathBuf};

/// What `lazy=SPEC` names: a JSON file describing one lazy layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LazySpec {
    /// The layer directory (also given in `lowerdir=`).
    pub dir: PathBuf,
    /// The eStargz blob as a local file (unused, and may be empty, when `remote` is given).
    #[serde(default)]
    pub blob: PathBuf,
    /// The digest its TOC must have (the layer descriptor's annotation).
    pub toc: String,
    /// The chunk cache directory.
    pub cache: PathBuf,
    /// The blob in a registry instead of a local file: the daemon fetches its ranges itself,
    /// with the credentials of the auth files the registry client reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteBlob>,
}

/// Where in a registry a lazy layer's blob is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteBlob {
    /// The registry's name as references spell it (the key of its credentials).
    pub registry: String,
    /// `host[:port]` of its API.
    pub api_host: String,
    /// The repository (`library/debian`).
    pub repository: String,
    /// The blob's digest (`sha256:…`).
    pub digest: String,
    /// The blob's size from the manifest.
    pub size: u64,
    /// `Some(false)`: accept any certificate and plain HTTP (`--tls-verify=false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (`--cert-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_dir: Option<PathBuf>,
    /// The auth file the pull found the registry's credentials in, for a daemon whose
    /// environment does not lead to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<PathBuf>,
}

impl LazySpec {
    /// Read the spec file at `path`.
    pub fn read(path: &Path) -> Result<LazySpec, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}
