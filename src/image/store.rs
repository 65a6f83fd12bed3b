//! The image store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) plus the
//! layers extracted once each, by diff ID, under `layers/sha256/`, which are the lowerdirs of
//! every container of every image that shares them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageManifest, ImageManifestBuilder, MediaType,
};

use super::blobs::Blobs;
use super::digest::{Digest, DigestReader, DigestWriter};
use super::extract::{self, UnpackOptions};
use super::layout::{self, IndexEntry};
use super::lock::Lock;
use super::pack::{self, PackOptions};
use super::pins::{self, Pins, TEMP_PREFIX};
use super::reference::Reference;
use super::{io_err, private, Error, Result};

/// How long garbage collection keeps a partial download that nobody writes to (an
/// interrupted pull resumed within that time fetches only what it lacks).
pub const PARTIAL_MAX_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// OCI media type of a gzip-compressed layer.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of an uncompressed layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of an image manifest.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI media type of an image config.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A layer blob as a manifest lists it, with the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDesc {
    /// Digest of the blob (compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Blob media type.
    pub media_type: String,
    /// Annotations of the layer's descriptor (e.g. an eStargz layer's TOC digest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl LayerDesc {
    /// The digest of the layer's eStargz TOC, if its descriptor names one.
    pub fn toc_digest(&self) -> Option<&str> {
        self.annotations
            .get(crate::estargz::TOC_DIGEST_ANNOTATION)
            .map(String::as_str)
    }
}

/// An image read from the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// Digest of its manifest.
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: ImageManifest,
    /// Digest of its config: the image ID.
    pub id: Digest,
    /// The config.
    pub config: ImageConfiguration,
    /// Tags pointing at it (`name:tag`).
    pub tags: Vec<String>,
}

impl Image {
    /// The layers, bottom first, with their diff IDs from the config.
    pub fn layers(&self) -> Result<Vec<LayerDesc>> {
        let diff_ids = self.config.rootfs().diff_ids();
        let layers = self.manifest.layers();
        if diff_ids.len() != layers.len() {
            return Err(Error::Invalid(format!(
                "image {}: the manifest lists {} layers but the config {} diff IDs",
                self.id.short(),
                layers.len(),
                diff_ids.len()
            )));
        }
        layers
            .iter()
            .zip(diff_ids)
            .map(|(l, d)| {
                Ok(LayerDesc {
                    digest: l.digest().to_string().parse()?,
                    diff_id: d.parse()?,
                    size: l.size(),
                    media_type: l.media_type().to_string(),
                    annotations: l
                        .annotations()
                        .as_ref()
                        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The name to show for it: its first tag or its short ID.
    pub fn display_name(&self) -> String {
        self.tags
            .first()
            .cloned()
            .unwrap_or_else(|| self.id.short().to_string())
    }
}

/// Serialize with sorted object keys, so equal values give equal bytes and equal digests.
pub fn canonical_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(v).map_err(|e| Error::Json {
        what: "serialize".into(),
        source: e,
    })?;
    serde_json::to_vec(&value).map_err(|e| Error::Json {
        what: "serialize".into(),
        source: e,
    })
}

/// An opened store. Clones share this process's session (see [`super::pins`]): what the
/// store's users resolve with [`Store::resolve_pinned`], write or extract stays safe from
/// garbage collection until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    blobs: Blobs,
    pins: Pins,
}

impl Store {
    /// Open the store at `root`, creating its layout if missing and making it private to its
    /// owner (stores made by older versions are closed here).
    pub fn open(root: &Path) -> Result<Store> {
        private::secure(root).map_err(|e| Error::Io {
            what: "open store".into(),
            source: e,
        })?;
        for d in [
            "blobs",
            "blobs/sha256",
            "layers",
            "layers/sha256",
            "tmp",
            "build-cache",
        ] {
            let p = root.join(d);
            private::create(&p).map_err(io_err(format!("create {}", p.display())))?;
        }
        let pins = Pins::new(root);
        let blobs = Blobs::new(root.join("blobs/sha256"), pins.clone());
        let layout_file = root.join("oci-layout");
        if !layout_file.exists() {
            layout::write_atomic(&layout_file, layout::OCI_LAYOUT.as_bytes())?;
        }
        let store = Store {
            root: root.to_path_buf(),
            blobs,
            pins,
        };
        if !store.index_path().exists() {
            let _l = store.index_lock()?;
            if !store.index_path().exists() {
                layout::write_index(&store.index_path(), &[])?;
            }
        }
        Ok(store)
    }

    /// The store's cache of verified eStargz chunks (`chunks/sha256`, private), shared by
    /// every lazy layer.
    pub fn chunk_cache(&self) -> Result<crate::estargz::cache::ChunkCache> {
        let dir = self.root.join("chunks/sha256");
        private::create(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        private::create(&self.root.join("chunks")).map_err(io_err("create the chunk cache"))?;
        crate::estargz::cache::ChunkCache::open(&dir).map_err(|source| Error::Estargz {
            what: "chunk cache".into(),
            source,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This process's session (what it pins, garbage collection keeps).
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The blob directory.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn index_lock(&self) -> Result<Lock> {
        Lock::exclusive(&self.root.join(".index.lock"))
    }

    /// A fresh directory under the store's `tmp/` (same filesystem as the layers), kept from
    /// garbage collection while this process lives.
    pub fn temp_dir(&self, what: &str) -> Result<TempDir> {
        let p = self.root.join("tmp").join(self.pins.temp_name(what)?);
        fs::create_dir(&p).map_err(io_err(format!("create {}", p.display())))?;
        Ok(TempDir(p))
    }

    /// The index entries.
    pub fn entries(&self) -> Result<Vec<IndexEntry>> {
        layout::read_index(&self.index_path())
    }

    /// Read the image whose manifest is `digest`.
    pub fn image(&self, digest: &Digest, entries: &[IndexEntry]) -> Result<Image> {
        let manifest: ImageManifest = self.read_json(digest, "manifest")?;
        let config_digest: Digest = manifest.config().digest().to_string().parse()?;
        let config: ImageConfiguration = self.read_json(&config_digest, "config")?;
        let mut tags: Vec<String> = entries
            .iter()
            .filter(|e| &e.manifest == digest)
            .filter_map(|e| e.name.clone())
            .collect();
        tags.sort();
        tags.dedup();
        Ok(Image {
            manifest_digest: digest.clone(),
            manifest,
            id: config_digest,
            config,
            tags,
        })
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, d: &Digest, what: &str) -> Result<T> {
        let bytes = self.blobs.read(d)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            what: format!("{what} {d}"),
            source: e,
        })
    }

    /// Every image in the store (one per manifest), tags sorted.
    pub fn images(&self) -> Result<Vec<Image>> {
        let entries = self.entries()?;
        let digests: BTreeSet<&Digest> = entries.iter().map(|e| &e.manifest).collect();
        digests
            .into_iter()
            .map(|d| self.image(d, &entries))
            .collect()
    }

    /// Find the image `s` names: a tag, `name@digest`, a full ID, or an ID prefix.
    pub fn resolve(&self, s: &str) -> Result<Image> {
        let entries = self.entries()?;
        let not_found = || Error::NoSuchImage(s.to_string());
        let reference = Reference::parse(s);
        if let Ok(r) = &reference {
            match r {
                Reference::Tagged { .. } => {
                    let t = r.tagged().expect("tagged");
                    if let Some(e) = entries.iter().find(|e| e.name.as_deref() == Some(&t)) {
                        return self.image(&e.manifest, &entries);
                    }
                }
                Reference::Digested { digest, .. } => {
                    return match entries.iter().find(|e| &e.manifest == digest) {
                        Some(e) => self.image(&e.manifest, &entries),
                        None => Err(not_found()),
                    };
                }
                Reference::Id(_) => {}
            }
        }
        // An image ID or a prefix of one (with or without "sha256:").
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() < 3 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return match reference {
                Err(e) => Err(e),
                Ok(_) => Err(not_found()),
            };
        }
        let mut found: Vec<Image> = Vec::new();
        for img in self.images()? {
            if img.id.hex().starts_with(hex) && !found.iter().any(|f| f.id == img.id) {
                found.push(img);
            }
        }
        match found.len() {
            0 => Err(not_found()),
            1 => Ok(found.pop().expect("one")),
            n => Err(Error::Ambiguous(format!("{s:?} matches {n} images"))),
        }
    }

    /// [`Store::resolve`], and pin what the image is made of (its manifest, config, layer
    /// blobs and extracted layers) for as long as this process's session lives: what resolves
    /// an image in order to reference it (a tag, a build's base, a container) must use this.
    pub fn resolve_pinned(&self, s: &str) -> Result<Image> {
        self.pins.locked(|p| {
            let img = self.resolve(s)?;
            p.blob(&img.manifest_digest)?;
            p.blob(&img.id)?;
            for l in img.layers()? {
                p.blob(&l.digest)?;
                p.layer(&l.diff_id)?;
            }
            Ok(img)
        })
    }

    /// Point tag `name` (`name:tag`) at `image`; the image it pointed at before keeps its
    /// other tags, or stays as an untagged image if it has none.
    pub fn tag(&self, image: &Image, name: &str) -> Result<()> {
        self.update_index(|entries| {
            let old = entries.iter().position(|e| e.name.as_deref() == Some(name));
            if let Some(i) = old {
                let prev = entries.remove(i);
                if !entries.iter().any(|e| e.manifest == prev.manifest) {
                    entries.push(IndexEntry { name: None, ..prev });
                }
            }
            entries.retain(|e| !(e.manifest == image.manifest_digest && e.name.is_none()));
            entries.push(IndexEntry {
                manifest: image.manifest_digest.clone(),
                size: self.blobs.size(&image.manifest_digest)?,
                media_type: image
                    .manifest
                    .media_type()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| MANIFEST.to_string()),
                name: Some(name.to_string()),
            });
            Ok(())
        })
    }

    /// Keep `image` in the index without a tag (unless it already has one).
    pub fn add_untagged(&self, image: &Image) -> Result<()> {
        self.update_index(|entries| {
            if !entries.iter().any(|e| e.manifest == image.manifest_digest) {
                entries.push(IndexEntry {
                    manifest: image.manifest_digest.clone(),
                    size: self.blobs.size(&image.manifest_digest)?,
                    media_type: MANIFEST.to_string(),
                    name: None,
                });
            }
            Ok(())
        })
    }

    /// Remove tag `name`; returns whether the image it named is still in the index.
    pub fn untag(&self, name: &str) -> Result<bool> {
        let mut remains = false;
        self.update_index(|entries| {
            let Some(i) = entries.iter().position(|e| e.name.as_deref() == Some(name)) else {
                return Err(Error::NoSuchImage(name.to_string()));
            };
            let prev = entries.remove(i);
            remains = entries.iter().any(|e| e.manifest == prev.manifest);
            Ok(())
        })?;
        Ok(remains)
    }

    /// Remove every index entry of `image` (its blobs go at the next garbage collection).
    pub fn remove(&self, image: &Image) -> Result<()> {
        self.update_index(|entries| {
            entries.retain(|e| e.manifest != image.manifest_digest);
            Ok(())
        })
    }

    fn update_index(&self, f: impl FnOnce(&mut Vec<IndexEntry>) -> Result<()>) -> Result<()> {
        let _l = self.index_lock()?;
        let mut entries = self.entries()?;
        f(&mut entries)?;
        layout::write_index(&self.index_path(), &entries)
    }

    /// Store the tar of the directory `dir` as a gzip layer blob.
    pub fn layer_from_dir(&self, dir: &Path, opts: PackOptions) -> Result<LayerDesc> {
        self.write_gzip_layer(|out| pack::pack(dir, out, opts).map(|_| ()))
    }

    /// Store the (plain or gzip) tar read from `input` as a gzip layer blob.
    pub fn layer_from_tar(&self, input: impl Read, what: &str) -> Result<LayerDesc> {
        let mut input = decompressed(BufReader::new(input), what)?;
        self.write_gzip_layer(|out| {
            io::copy(&mut input, out)
                .map(|_| ())
                .map_err(io_err(format!("read {what}")))
        })
    }

    fn write_gzip_layer(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<LayerDesc> {
        let blob = self.blobs.writer()?;
        let gz = flate2::GzBuilder::new().write(blob, flate2::Compression::default());
        let mut tar_out = DigestWriter::new(gz);
        fill(&mut tar_out)?;
        let (diff_id, _, gz) = tar_out.finish();
        let blob = gz.finish().map_err(io_err("compress layer"))?;
        let (digest, size) = blob.commit(None)?;
        Ok(LayerDesc {
            digest,
            diff_id,
            size,
            media_type: LAYER_GZIP.to_string(),
            annotations: BTreeMap::new(),
        })
    }

    /// Write `config` and a manifest of `layers` as blobs; the image is not in the index yet
    /// (see [`Store::tag`], [`Store::add_untagged`]).
    pub fn write_image(&self, config: &ImageConfiguration, layers: &[LayerDesc]) -> Result<Image> {
        let config_bytes = canonical_json(config)?;
        let config_digest = self.blobs.put(&config_bytes)?;
        let (manifest_digest, manifest) =
            self.write_manifest(&config_digest, config_bytes.len() as u64, layers)?;
        Ok(Image {
            manifest_digest,
            manifest,
            id: config_digest,
            config: config.clone(),
            tags: Vec::new(),
        })
    }

    /// Write the manifest of the config blob `config` (`config_len` bytes) and `layers`.
    pub fn write_manifest(
        &self,
        config: &Digest,
        config_len: u64,
        layers: &[LayerDesc],
    ) -> Result<(Digest, ImageManifest)> {
        let descs = layers
            .iter()
            .map(|l| {
                let mut d = descriptor(&l.media_type, l.size, &l.digest)?;
                if !l.annotations.is_empty() {
                    d.set_annotations(Some(l.annotations.clone().into_iter().collect()));
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(CONFIG, config_len, config)?)
            .layers(descs)
            .build()
            .map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
        let digest = self.blobs.put(&canonical_json(&manifest)?)?;
        Ok((digest, manifest))
    }

    /// The directory holding `layer` extracted in overlay format, extracting it first if
    /// needed (verifying the blob digest and the diff ID on the way); pinned for this process.
    pub fn extracted(&self, layer: &LayerDesc) -> Result<PathBuf> {
        if let Some(dest) = self.pin_extracted(layer)? {
            return Ok(dest);
        }
        let blob = match self.blobs.open_blob(&layer.digest) {
            Err(Error::MissingBlob(d)) if super::lazy::existing(self, layer).is_some() => {
                return Err(Error::PulledLazily(d))
            }
            r => r?,
        };
        // A corrupt blob mostly shows as a broken gzip or tar stream long before its end,
        // where the digest is checked: the stream below names the real cause.
        self.extract_stream(layer, blob, |_| Ok(())).map_err(|e| {
            match self.blobs.verify(&layer.digest) {
                Err(mismatch @ Error::DigestMismatch { .. }) => mismatch,
                _ => e,
            }
        })
    }

    /// The extracted directory of `layer` if it is present, pinned for this process.
    pub fn pin_extracted(&self, layer: &LayerDesc) -> Result<Option<PathBuf>> {
        let dest = self.root.join("layers/sha256").join(layer.diff_id.hex());
        self.pins.locked(|p| {
            if !dest.is_dir() {
                return Ok(None);
            }
            p.layer(&layer.diff_id)?;
            Ok(Some(dest.clone()))
        })
    }

    /// Extract `layer` from `blob`, its raw (compressed) bytes as they come, in one pass: the
    /// blob's digest and the diff ID are checked as it streams, and `verified` (given the
    /// blob's digest) runs once both matched, before the layer is renamed into place (a pull
    /// commits the blob it wrote alongside there). Nothing is left behind on error. A stream
    /// whose bytes do not match the blob digest fails with [`Error::DigestMismatch`], even
    /// when its corruption broke the gzip or tar stream first.
    pub fn extract_stream(
        &self,
        layer: &LayerDesc,
        blob: impl Read,
        verified: impl FnOnce(&Digest) -> Result<()>,
    ) -> Result<PathBuf> {
        let dest = self.root.join("layers/sha256").join(layer.diff_id.hex());
        let tmp = self.root.join("layers").join(self.pins.temp_name("layer")?);
        fs::create_dir(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let guard = TempDir(tmp);
        let what = format!("layer {}", layer.digest);
        let mut raw = DigestReader::new(blob);
        let unpacked = (|| -> Result<Digest> {
            let mut tar = DigestReader::new(decompressed(
                BufReader::with_capacity(1 << 20, &mut raw),
                &what,
            )?);
            extract::unpack(
                &mut tar,
                guard.path(),
                &what,
                UnpackOptions {
                    estargz: layer.toc_digest().is_some(),
                    ..UnpackOptions::for_current_user()
                },
            )?;
            // Read to the end so both digests cover the whole blob.
            io::copy(&mut tar, &mut io::sink()).map_err(|e| Error::Tar {
                what: format!("read {what}"),
                source: e,
            })?;
            Ok(tar.finish().0)
        })();
        // Whatever happened, the blob's digest is over all of it (the decoder may stop early).
        let drained = io::copy(&mut raw, &mut io::sink());
        let (blob_digest, _) = raw.finish();
        let mismatch = || Error::DigestMismatch {
            what: what.clone(),
            expected: layer.digest.clone(),
            found: blob_digest.clone(),
        };
        let found = match (unpacked, drained) {
            // An unreadable stream (a dropped connection) is the cause, not the digest.
            (Err(e), Err(_)) => return Err(e),
            (Err(e), Ok(_)) => {
                return Err(if blob_digest != layer.digest {
                    mismatch()
                } else {
                    e
                })
            }
            (Ok(_), Err(e)) => {
                return Err(Error::Tar {
                    what: format!("read {what}"),
                    source: e,
                })
            }
            (Ok(found), Ok(_)) => found,
        };
        if blob_digest != layer.digest {
            return Err(mismatch());
        }
        if found != layer.diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed {what}"),
                expected: layer.diff_id.clone(),
                found,
            });
        }
        let d = rustix::fs::open(
            guard.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_err("open layer")(e.into()))?;
        rustix::fs::syncfs(&d).map_err(|e| io_err("sync layer")(e.into()))?;
        verified(&blob_digest)?;
        let renamed = self.pins.locked(|p| {
            let renamed = match fs::rename(guard.path(), &dest) {
                Ok(()) => true,
                // Another process extracted it meanwhile.
                Err(_) if dest.is_dir() => false,
                Err(e) => return Err(io_err(format!("rename to {}", dest.display()))(e)),
            };
            p.layer(&layer.diff_id)?;
            Ok(renamed)
        })?;
        if renamed {
            std::mem::forget(guard);
        }
        Ok(dest)
    }

    /// The extracted layer directories of `image`, bottom first.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        self.extracted_dirs(&image.layers()?)
    }

    /// The extracted directories of `layers` (bottom first), extracting what is missing.
    pub fn extracted_dirs(&self, layers: &[LayerDesc]) -> Result<Vec<PathBuf>> {
        layers.iter().map(|l| self.extracted(l)).collect()
    }

    /// Free the blobs and extracted layers that no image in the index, no container (the
    /// layer directories `keep` returns, asked at the right moment) and no live session needs,
    /// and the temporaries of sessions that are gone. Waits only for the short steps of other
    /// processes, never for a build or a load as a whole.
    pub fn gc(&self, keep: impl FnOnce() -> Result<Vec<PathBuf>>) -> Result<GcStats> {
        let mut stats = GcStats::default();
        self.blobs.remove_stale_partials(PARTIAL_MAX_IDLE)?;
        let layers = self.root.join("layers");
        let doomed = self.pins.locked(|me| {
            // The pins first, then the index and the containers: a process that ends its
            // session after writing a tag or a container's state is seen by one or the other.
            let mut live = pins::scan(&self.root)?;
            let images = self.images()?;
            let keep: HashSet<PathBuf> = keep()?.into_iter().collect();
            let mut live_blobs = std::mem::take(&mut live.blobs);
            let mut live_layers = std::mem::take(&mut live.layers);
            let mut live_lazy = std::mem::take(&mut live.lazy);
            // A container that lists a lazy layer made ordinary since (its path a link to the
            // extracted layer, see `lazy_adopt`) keeps that layer.
            for p in &keep {
                let in_lazy = p.parent().and_then(Path::parent) == Some(&self.root.join("lazy"));
                if let (true, Ok(target)) = (in_lazy, fs::read_link(p)) {
                    if let Some(name) = target.file_name() {
                        live_layers.insert(name.to_string_lossy().into_owned());
                    }
                }
            }
            for img in images {
                live_blobs.insert(img.manifest_digest.hex().to_string());
                live_blobs.insert(img.id.hex().to_string());
                for l in img.layers()? {
                    live_blobs.insert(l.digest.hex().to_string());
                    live_layers.insert(l.diff_id.hex().to_string());
                    // Its lazy directory, unless the layer is extracted (then that is used).
                    if let Some(toc) = l.toc_digest() {
                        if !layers.join("sha256").join(l.diff_id.hex()).is_dir() {
                            let hex = toc.strip_prefix("sha256:").unwrap_or(toc);
                            live_lazy.insert(hex.to_string());
                        }
                    }
                }
            }
            let (blobs, temps) = self.blobs.list()?;
            for b in blobs {
                if !live_blobs.contains(b.hex()) {
                    stats.bytes += self.blobs.size(&b).unwrap_or(0);
                    self.blobs.remove(&b)?;
                    stats.blobs += 1;
                }
            }
            for t in temps {
                let name = t.file_name().unwrap_or_default().to_string_lossy();
                if !live.owns(&name) {
                    let _ = fs::remove_file(&t);
                }
            }
            // Directory trees are moved aside here, where it is cheap and atomic, and deleted
            // after the lock is released.
            let mut doomed = Vec::new();
            // Moved into `trash_dir` (same file system) under this session's name: another
            // collection then leaves it alone. A failure only leaves garbage for the next one.
            let mut set_aside = |path: &Path, trash_dir: &Path| -> bool {
                let trash = trash_dir.join(me.temp_name("trash"));
                match fs::rename(path, &trash) {
                    Ok(()) => {
                        doomed.push(trash);
                        true
                    }
                    Err(e) => {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!("garbage collection: set aside {}: {e}", path.display());
                        }
                        false
                    }
                }
            };
            let extracted = layers.join("sha256");
            for e in fs::read_dir(&extracted).map_err(io_err("list layers"))? {
                let e = e.map_err(io_err("list layers"))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                if !live_layers.contains(&name)
                    && !keep.contains(&e.path())
                    && set_aside(&e.path(), &layers)
                {
                    stats.layers += 1;
                }
            }
            // Lazy layers no image, container or session needs, and the chunks that only
            // they could use.
            let lazy_dir = self.root.join("lazy");
            let mut chunks = Some(HashSet::new());
            if let Ok(rd) = fs::read_dir(&lazy_dir) {
                for e in rd {
                    let e = e.map_err(io_err("list lazy layers"))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    let home = e.path();
                    if name.starts_with(TEMP_PREFIX) {
                        if !live.owns(&name) {
                            set_aside(&home, &lazy_dir);
                        }
                        continue;
                    }
                    let used = live_lazy.contains(&name) || keep.contains(&home.join("root"));
                    if !used && set_aside(&home, &lazy_dir) {
                        stats.lazy += 1;
                        continue;
                    }
                    match (super::lazy::chunk_digests(&home), chunks.as_mut()) {
                        (Some(mine), Some(all)) => all.extend(mine),
                        (None, Some(_)) => {
                            tracing::info!(
                                "garbage collection: no TOC kept for {}: the chunk cache is kept",
                                home.display()
                            );
                            chunks = None;
                        }
                        _ => {}
                    }
                }
            }
            if let Some(live_chunks) = chunks {
                let cache = self.root.join("chunks/sha256");
                if let Ok(rd) = fs::read_dir(&cache) {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let is_chunk =
                            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
                        if is_chunk && !live_chunks.contains(&name) {
                            stats.bytes += e.metadata().map_or(0, |m| m.len());
                            if fs::remove_file(e.path()).is_ok() {
                                stats.chunks += 1;
                            }
                        }
                    }
                }
            }
            for dir in [&layers, &self.root.join("tmp")] {
                for e in fs::read_dir(dir).map_err(io_err("list temp dirs"))? {
                    let e = e.map_err(io_err("list temp dirs"))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    let temp = dir.ends_with("tmp") || name.starts_with(TEMP_PREFIX);
                    if temp && !live.owns(&name) {
                        set_aside(&e.path(), dir);
                    }
                }
            }
            Ok(doomed)
        })?;
        for d in doomed {
            // A crashed build may have left a mount in its step directory: keep going.
            if let Err(e) = remove_dir(&d) {
                tracing::warn!("garbage collection: {e}");
            }
        }
        Ok(stats)
    }
}

/// What garbage collection freed.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcStats {
    /// Blobs deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Extracted layers deleted.
    pub layers: u64,
    /// Lazy layer directories deleted.
    pub lazy: u64,
    /// Cached chunks deleted (their bytes are in `bytes`).
    pub chunks: u64,
}

/// A descriptor for the store's own blobs.
pub fn descriptor(media_type: &str, size: u64, d: &Digest) -> Result<Descriptor> {
    Ok(Descriptor::new(
        MediaType::from(media_type),
        size,
        oci_spec::image::Digest::try_from(d.as_str())
            .map_err(|e| Error::Invalid(format!("digest {d}: {e}")))?,
    ))
}

/// Remove a directory tree of the store (directories without write permission included).
pub fn remove_dir(p: &Path) -> Result<()> {
    let parent = p.parent().unwrap_or(Path::new("/"));
    let name = p.file_name().unwrap_or_default();
    let dir = rustix::fs::open(
        parent,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(format!("open {}", parent.display()))(e.into()))?;
    match extract::remove_tree(std::os::fd::AsFd::as_fd(&dir), name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            fs::remove_file(p).map_err(io_err(format!("remove {}", p.display())))
        }
        Err(e) => Err(io_err(format!("remove {}", p.display()))(e)),
    }
}

/// A directory removed when dropped (unless forgotten).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = remove_dir(&self.0);
    }
}

/// `input` decompressed if it is gzip or zstd (the layer compressions of the OCI spec, told by
/// their magic numbers); bzip2 and xz are refused by name.
pub fn decompressed<'a, R: BufRead + 'a>(mut input: R, what: &str) -> Result<Box<dyn Read + 'a>> {
    let head = input.fill_buf().map_err(io_err(format!("read {what}")))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(input)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(io_err(format!("read {what}")))?,
        ))
    } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        Err(Error::Invalid(format!(
            "{what}: bzip2/xz-compressed tars are not supported; use gzip or none"
        )))
    } else {
        Ok(Box::new(input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `Store::open` has a session of its own, as separate processes do.
    #[test]
    fn gc_keeps_what_a_live_session_pinned_and_never_waits_for_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        let src = t.path().join("rootfs");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/f"), "x").unwrap();
        let img = {
            let writer = Store::open(&root).unwrap();
            super::super::import::import(&writer, &src, "a:1").unwrap()
        };
        let layer = img.layers().unwrap().pop().unwrap();
        let layer_dir = root.join("layers/sha256").join(layer.diff_id.hex());
        assert!(layer_dir.is_dir());

        // A user (a build from it, say) pins it; a step directory of its own lives in tmp/.
        let user = Store::open(&root).unwrap();
        assert_eq!(user.resolve_pinned("a:1").unwrap().id, img.id);
        let step = user.temp_dir("step").unwrap();
        // Left by a process that is gone (an older version's name, too).
        fs::create_dir(root.join("tmp/step-1234-00000000")).unwrap();

        let rmi = Store::open(&root).unwrap();
        rmi.remove(&img).unwrap();
        let stats = rmi.gc(|| Ok(Vec::new())).unwrap();
        assert_eq!(
            (stats.blobs, stats.layers),
            (0, 0),
            "pinned by a live session"
        );
        for d in [&img.manifest_digest, &img.id, &layer.digest] {
            assert!(rmi.blobs().contains(d), "{d} was freed");
        }
        assert!(layer_dir.is_dir() && step.path().is_dir());
        assert!(!root.join("tmp/step-1234-00000000").exists());

        drop(step);
        drop(user);
        let stats = rmi.gc(|| Ok(Vec::new())).unwrap();
        assert_eq!(
            (stats.blobs, stats.layers),
            (3, 1),
            "freed once the user is gone"
        );
        assert!(!layer_dir.exists());
        assert_eq!(rmi.blobs().list().unwrap(), (Vec::new(), Vec::new()));
        let left: Vec<_> = fs::read_dir(root.join("layers"))
            .unwrap()
            .chain(fs::read_dir(root.join("tmp")).unwrap())
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "sha256")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_container_keeps_its_layers_and_a_dead_session_pins_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        let src = t.path().join("rootfs");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), "x").unwrap();
        let s = Store::open(&root).unwrap();
        let img = super::super::import::import(&s, &src, "a:1").unwrap();
        let dir = s.layer_dirs(&img).unwrap().pop().unwrap();
        drop(s);
        // A session file whose process died (its lock is free), pinning everything.
        let dead = root.join("pins/0123456789abcdef");
        let pins: String = img
            .layers()
            .unwrap()
            .iter()
            .map(|l| format!("blob {}\nlayer {}\n", l.digest.hex(), l.diff_id.hex()))
            .collect();
        fs::write(&dead, pins).unwrap();
        let s = Store::open(&root).unwrap();
        s.remove(&img).unwrap();
        let keep = dir.clone();
        let stats = s.gc(move || Ok(vec![keep])).unwrap();
        assert_eq!((stats.blobs, stats.layers), (3, 0));
        assert!(dir.is_dir(), "a container's lowerdir was freed");
        assert!(!dead.exists());
    }
}
