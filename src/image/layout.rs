//! The OCI image layout files of a store: `oci-layout` and `index.json`, the latter holding one
//! manifest descriptor per tag (`org.opencontainers.image.ref.name`) and one without a name for
//! each untagged ("dangling") image, as skopeo, podman and buildah read them.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};

use super::digest::Digest;
use super::{io_err, Error, Result};

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The contents of `oci-layout`.
pub const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// One entry of `index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The manifest's digest.
    pub manifest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// The tag (`name:tag`), or `None` for an untagged image.
    pub name: Option<String>,
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}-{:08x}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(format!("write {}", path.display())))
}

/// Read the entries of the `index.json` at `path` (missing file: empty).
pub fn read_index(path: &Path) -> Result<Vec<IndexEntry>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        what: path.display().to_string(),
        source: e,
    })?;
    index
        .manifests()
        .iter()
        .map(|d| {
            Ok(IndexEntry {
                manifest: d.digest().to_string().parse()?,
                size: d.size(),
                media_type: d.media_type().to_string(),
                name: d
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .cloned(),
            })
        })
        .collect()
}

/// Write `entries` as the `index.json` at `path`, atomically.
pub fn write_index(path: &Path, entries: &[IndexEntry]) -> Result<()> {
    let manifests = entries
        .iter()
        .map(|e| {
            let mut d = Descriptor::new(
                MediaType::from(e.media_type.as_str()),
                e.size,
                oci_spec::image::Digest::try_from(e.manifest.as_str())?,
            );
            if let Some(n) = &e.name {
                d.set_annotations(Some(HashMap::from([(REF_NAME.to_string(), n.clone())])));
            }
            Ok(d)
        })
        .collect::<std::result::Result<Vec<_>, oci_spec::OciSpecError>>()
        .map_err(|e| Error::Invalid(format!("index entry: {e}")))?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| Error::Invalid(format!("index: {e}")))?;
    let bytes = serde_json::to_vec_pretty(&index).map_err(|e| Error::Json {
        what: "index.json".into(),
        source: e,
    })?;
    write_atomic(path, &bytes)
}
