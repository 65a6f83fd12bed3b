//! Volumes: named volumes under `STORE/volumes/NAME/_data` and `-v` parsing.

use std::path::{Path, PathBuf};

use super::{io_err, Error, Result};

/// One bind mount for the runtime spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMount {
    /// Host directory.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
    /// Named volume name, if it is one.
    pub volume: Option<String>,
}

/// The data directory of named volume `name`.
pub fn volume_dir(store_root: &Path, name: &str) -> PathBuf {
    store_root.join("volumes").join(name).join("_data")
}

/// Whether `name` is a valid volume name (docker's: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || "_.-".contains(x))
}

/// Create named volume `name` (no error if it exists).
pub fn create(store_root: &Path, name: &str) -> Result<PathBuf> {
    if !valid_name(name) {
        return Err(Error::Volume(format!("invalid volume name {name:?}")));
    }
    let d = volume_dir(store_root, name);
    // `volumes/NAME` is private (a container may put set-uid files in its volume); `_data`,
    // which the container sees, keeps an ordinary mode.
    let parent = d.parent().expect("volumes/NAME/_data");
    for p in [store_root.join("volumes"), parent.to_path_buf()] {
        crate::image::private::create(&p).map_err(io_err(format!("create volume {name}")))?;
    }
    std::fs::create_dir_all(&d).map_err(io_err(format!("create volume {name}")))?;
    Ok(d)
}

/// Names of all volumes.
pub fn list(store_root: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = match std::fs::read_dir(store_root.join("volumes")) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    Ok(v)
}

/// Remove volume `name`; refused while a container in `in_use` uses it.
pub fn remove(store_root: &Path, name: &str, in_use: &[String]) -> Result<()> {
    if !in_use.is_empty() {
        return Err(Error::Volume(format!(
            "volume {name} is in use by {}",
            in_use.join(", ")
        )));
    }
    let d = store_root.join("volumes").join(name);
    if !valid_name(name) || !d.exists() {
        return Err(Error::Volume(format!("no such volume: {name}")));
    }
    std::fs::remove_dir_all(&d).map_err(io_err(format!("remove volume {name}")))
}

/// Parse `-v SRC:DST[:ro|rw]`: SRC with a `/` is a host path, else a named volume (created
/// on first use, as docker does).
pub fn parse(store_root: &Path, spec: &str) -> Result<ResolvedMount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, "rw"),
        [s, d, m] => (*s, *d, *m),
        _ => {
            return Err(Error::Invalid(format!(
                "bad volume {spec:?}: want SRC:DST[:ro]"
            )))
        }
    };
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        m => {
            return Err(Error::Invalid(format!(
                "bad volume mode {m:?}: want ro or rw"
            )))
        }
    };
    if !dst.starts_with('/') {
        return Err(Error::Invalid(format!(
            "volume target {dst:?} must be absolute"
        )));
    }
    let (source, volume) = if src.contains('/') {
        let p = std::fs::canonicalize(src).map_err(io_err(format!("volume source {src}")))?;
        (p, None)
    } else {
        (create(store_root, src)?, Some(src.to_string()))
    };
    Ok(ResolvedMount {
        source,
        target: PathBuf::from(dst),
        read_only,
        volume,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let d = tempfile::tempdir().unwrap();
        let m = parse(d.path(), "data:/data").unwrap();
        assert_eq!(m.volume.as_deref(), Some("data"));
        assert!(m.source.ends_with("volumes/data/_data") && m.source.is_dir());
        let host = d.path().to_str().unwrap().to_string();
        let m = parse(d.path(), &format!("{host}:/h:ro")).unwrap();
        assert!(m.read_only && m.volume.is_none());
        assert!(parse(d.path(), "x:rel").is_err());
        assert!(parse(d.path(), "x:/a:zz").is_err());
        assert!(parse(d.path(), "../x:/a").is_err());
        assert_eq!(list(d.path()).unwrap(), vec!["data".to_string()]);
        assert!(remove(d.path(), "data", &["c1".into()]).is_err());
        remove(d.path(), "data", &[]).unwrap();
        assert!(list(d.path()).unwrap().is_empty());
    }
}
