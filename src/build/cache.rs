//! The build cache: one small JSON record per step, keyed by a digest of the parent step's key,
//! the instruction, the build arguments in scope and the content of copied files. A hit reuses
//! the step's layer and its recorded time, so an unchanged rebuild is near instant and gives
//! the same image digest.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::image::{layout, LayerDesc, Store};

/// What one step produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Its layer, or `None` for a step that only changed the config.
    pub layer: Option<LayerDesc>,
    /// The time recorded in its history entry.
    pub created: String,
}

/// A step's cache key.
pub fn key(parent: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    for p in parts {
        h.update(b"\0");
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn path(store: &Store, key: &str) -> PathBuf {
    store.root().join("build-cache").join(format!("{key}.json"))
}

fn read(store: &Store, key: &str) -> Option<Entry> {
    let bytes = std::fs::read(path(store, key)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The cached result of step `key`, if any and if its layer blob is still in the store (then
/// pinned: the build will reference it).
pub fn lookup(store: &Store, key: &str) -> Option<Entry> {
    let e = read(store, key)?;
    match &e.layer {
        Some(l) => match store.blobs().pin_existing(&l.digest) {
            Ok(true) => Some(e),
            Ok(false) => None,
            Err(err) => {
                tracing::warn!("build cache: {err}");
                None
            }
        },
        None => Some(e),
    }
}

/// Record the result of step `key` (failures to record only cost a future cache miss).
pub fn record(store: &Store, key: &str, entry: &Entry) {
    if let Ok(bytes) = serde_json::to_vec(entry) {
        if let Err(e) = layout::write_atomic(&path(store, key), &bytes) {
            tracing::warn!("build cache: {e}");
        }
    }
}

/// Remove the cache records whose layer blobs are gone (after garbage collection).
pub fn prune(store: &Store) {
    let Ok(dir) = std::fs::read_dir(store.root().join("build-cache")) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(key) = name.strip_suffix(".json") {
            let gone = read(store, key)
                .is_none_or(|e| e.layer.is_some_and(|l| !store.blobs().contains(&l.digest)));
            if gone {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
