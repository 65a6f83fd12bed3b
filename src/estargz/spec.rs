//! The description of a lazy layer that the store writes and stratafs reads (`lazy=SPEC`):
//! which lower directory it is, and where its blob, TOC digest and chunk cache are.

use std::path::{Path, PathBuf};

/// What `lazy=SPEC` names: a JSON file describing one lazy layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LazySpec {
    /// The layer directory (also given in `lowerdir=`).
    pub dir: PathBuf,
    /// The eStargz blob (a local file).
    pub blob: PathBuf,
    /// The digest its TOC must have (the layer descriptor's annotation).
    pub toc: String,
    /// The chunk cache directory.
    pub cache: PathBuf,
}

impl LazySpec {
    /// Read the spec file at `path`.
    pub fn read(path: &Path) -> Result<LazySpec, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}
