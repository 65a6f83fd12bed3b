//! Images in and out of the store: OCI archives (`strata save`/`load`), `docker save` archives
//! (legacy `manifest.json` form and docker 25's OCI form), and OCI layout directories such as
//! skopeo, podman and buildah write (`strata load -i DIR`, `FROM oci:PATH[:TAG]`).
//!
//! Every blob that comes in is written through the store's blob writer and checked against
//! the digest it is referenced by; a corrupt or truncated archive leaves nothing in the index.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::layout::{self, IndexEntry, REF_NAME};
use super::reference;
use super::store::{self, Image, LayerDesc, Store, LAYER_GZIP, LAYER_TAR, MANIFEST};
use super::{io_err, Error, Result};

/// Largest JSON document accepted from an archive.
const MAX_JSON: u64 = 16 << 20;

/// docker's `manifest.json` entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The GOARCH name of this machine, as image platforms spell it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn is_index_type(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// Write `images` (each with the tag to record, if any) to `out` as an OCI archive that also
/// carries docker's `manifest.json`, so both `strata load`/skopeo and `docker load` read it.
pub fn save(store: &Store, images: &[(Image, Option<String>)], out: &Path) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
        let mut entries = Vec::new();
        let mut docker = Vec::new();
        let mut blobs: BTreeMap<Digest, ()> = BTreeMap::new();
        for (img, tag) in images {
            entries.push(IndexEntry {
                manifest: img.manifest_digest.clone(),
                size: store.blobs().size(&img.manifest_digest)?,
                media_type: MANIFEST.to_string(),
                name: tag.clone(),
            });
            blobs.insert(img.manifest_digest.clone(), ());
            blobs.insert(img.id.clone(), ());
            let layers = img.layers()?;
            for l in &layers {
                if !store.blobs().path(&l.digest).is_file()
                    && super::lazy::existing(store, l).is_some()
                {
                    return Err(Error::PulledLazily(l.digest.clone()));
                }
                blobs.insert(l.digest.clone(), ());
            }
            docker.push(DockerManifest {
                config: format!("blobs/sha256/{}", img.id.hex()),
                repo_tags: tag.clone().map(|t| vec![t]),
                layers: layers
                    .iter()
                    .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                    .collect(),
            });
        }
        let add = |tar: &mut tar::Builder<_>, path: &str, size: u64, data: &mut dyn Read| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(size);
            h.set_mtime(0);
            tar.append_data(&mut h, path, data)
                .map_err(io_err(format!("write {path} to {}", tmp.display())))
        };
        let mut dir_header = tar::Header::new_gnu();
        dir_header.set_entry_type(tar::EntryType::Directory);
        dir_header.set_mode(0o755);
        dir_header.set_size(0);
        dir_header.set_mtime(0);
        for d in ["blobs/", "blobs/sha256/"] {
            tar.append_data(&mut dir_header.clone(), d, io::empty())
                .map_err(io_err(format!("write {}", tmp.display())))?;
        }
        for d in blobs.keys() {
            let size = store.blobs().size(d)?;
            let mut r = store.blobs().verifying_reader(d)?;
            add(&mut tar, &format!("blobs/sha256/{}", d.hex()), size, &mut r)?;
        }
        let layout_bytes = layout::OCI_LAYOUT.as_bytes();
        add(
            &mut tar,
            "oci-layout",
            layout_bytes.len() as u64,
            &mut &layout_bytes[..],
        )?;
        let index_tmp = store.temp_dir("save")?;
        let index_path = index_tmp.path().join("index.json");
        layout::write_index(&index_path, &entries)?;
        let index_bytes = fs::read(&index_path).map_err(io_err("read index"))?;
        add(
            &mut tar,
            "index.json",
            index_bytes.len() as u64,
            &mut &index_bytes[..],
        )?;
        let m = serde_json::to_vec(&docker).map_err(|e| Error::Json {
            what: "manifest.json".into(),
            source: e,
        })?;
        add(&mut tar, "manifest.json", m.len() as u64, &mut &m[..])?;
        let mut w = tar
            .into_inner()
            .map_err(io_err(format!("write {}", tmp.display())))?;
        w.flush()
            .map_err(io_err(format!("write {}", tmp.display())))?;
        w.get_ref()
            .sync_all()
            .map_err(io_err(format!("sync {}", tmp.display())))?;
        fs::rename(&tmp, out).map_err(io_err(format!("rename to {}", out.display())))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An image found in an archive or layout, with the tags to give it.
struct Found {
    image: Image,
    tags: Vec<String>,
    /// Names in the index that are not valid references, each told as a warning.
    bad_names: Vec<String>,
}

/// What [`load`] did.
#[derive(Debug)]
pub struct Loaded {
    /// The images loaded, with their tags.
    pub images: Vec<Image>,
    /// What the user should know: names in the archive that could not be used, each naming
    /// the entry that holds it.
    pub warnings: Vec<String>,
}

/// Load every image of the archive or OCI layout directory at `input` into the store and tag
/// it as the archive says. A name in a docker `manifest.json` that is not a valid reference
/// fails the load before anything is tagged (as `docker load` does); one in an OCI
/// `index.json` annotation (where the OCI spec allows names docker does not) is left out with
/// a warning.
pub fn load(store: &Store, input: &Path) -> Result<Loaded> {
    let found = if input.is_dir() {
        layout_dir_images(store, input, None)?
    } else {
        archive_images(store, input)?
    };
    if found.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no image in it",
            input.display()
        )));
    }
    let mut out = Loaded {
        images: Vec::new(),
        warnings: Vec::new(),
    };
    for f in found {
        for bad in f.bad_names {
            out.warnings.push(format!(
                "{}: {bad}; image {} is loaded without that name",
                input.display(),
                f.image.id.short()
            ));
        }
        if f.tags.is_empty() {
            store.add_untagged(&f.image)?;
        }
        for t in &f.tags {
            store.tag(&f.image, t)?;
        }
        let entries = store.entries()?;
        out.images
            .push(store.image(&f.image.manifest_digest, &entries)?);
    }
    Ok(out)
}

/// The images of the archive or OCI layout directory at `input`, their blobs copied into the
/// store (and pinned for this process) but not tagged: what `strata explore ARCHIVE` reads.
pub fn images_in(store: &Store, input: &Path) -> Result<Vec<Image>> {
    let found = if input.is_dir() {
        layout_dir_images(store, input, None)?
    } else {
        archive_images(store, input)?
    };
    Ok(found.into_iter().map(|f| f.image).collect())
}

/// Copy the image `tag` (or the only one) of the OCI layout at `dir` into the store's blobs
/// without tagging it: what `FROM oci:PATH[:TAG]` uses.
pub fn from_layout_dir(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Image> {
    let mut found = layout_dir_images(store, dir, tag)?;
    match found.len() {
        1 => Ok(found.pop().expect("one").image),
        0 => Err(Error::NoSuchImage(format!(
            "{}{}",
            dir.display(),
            tag.map(|t| format!(":{t}")).unwrap_or_default()
        ))),
        n => Err(Error::Invalid(format!(
            "{} holds {n} images: name one as oci:{}:TAG",
            dir.display(),
            dir.display()
        ))),
    }
}

/// The tag to record for a name an archive gives an image.
fn tag_from_name(name: &str) -> Result<String> {
    let name = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    reference::parse_tag(name)
}

/// The tags of docker `manifest.json` entry `i` (0-based) of `what`: each must be a valid
/// reference, or the load fails naming the entry, as `docker load` does.
fn repo_tags(what: &str, i: usize, d: &DockerManifest) -> Result<Vec<String>> {
    d.repo_tags
        .iter()
        .flatten()
        .map(|t| {
            tag_from_name(t).map_err(|e| {
                Error::Invalid(format!(
                    "{what}: manifest.json entry {} (config {}): RepoTags: {e}",
                    i + 1,
                    d.config
                ))
            })
        })
        .collect()
}

/// Images of an OCI layout directory, their blobs copied into the store.
fn layout_dir_images(store: &Store, dir: &Path, want: Option<&str>) -> Result<Vec<Found>> {
    let index_path = dir.join("index.json");
    if !index_path.is_file() {
        return Err(Error::Invalid(format!(
            "{}: not an OCI image layout (no index.json)",
            dir.display()
        )));
    }
    let entries = layout::read_index(&index_path)?;
    let blob_path = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
    let copy = |d: &Digest| -> Result<()> {
        if store.blobs().pin_existing(d)? {
            return Ok(());
        }
        let f = File::open(blob_path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::Invalid(format!(
                "{}: blob {d} is missing from the layout",
                dir.display()
            )),
            _ => io_err(format!("open blob {d} of {}", dir.display()))(e),
        })?;
        let mut w = store.blobs().writer()?;
        io::copy(&mut BufReader::with_capacity(1 << 20, f), &mut w)
            .map_err(io_err(format!("copy blob {d}")))?;
        w.commit(Some(d)).map_err(|e| match e {
            Error::DigestMismatch {
                expected, found, ..
            } => Error::DigestMismatch {
                what: format!("blob {} of {}", expected, dir.display()),
                expected,
                found,
            },
            e => e,
        })?;
        Ok(())
    };
    // Per manifest: its media type, tags, and the names that are not references.
    let mut groups: Vec<(Digest, String, Vec<String>, Vec<String>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let matches = match (want, &e.name) {
            (None, _) => true,
            (Some(w), Some(n)) => {
                n == w
                    || tag_from_name(n).ok().as_deref() == reference::parse_tag(w).ok().as_deref()
            }
            (Some(_), None) => false,
        };
        if !matches {
            continue;
        }
        let (mut tags, mut bad) = (Vec::new(), Vec::new());
        match e.name.as_deref().map(tag_from_name) {
            Some(Ok(t)) => tags.push(t),
            Some(Err(err)) => bad.push(format!(
                "index.json entry {} (manifest {}): {REF_NAME}: {err}",
                i + 1,
                e.manifest
            )),
            None => {}
        }
        match groups.iter_mut().find(|g| g.0 == e.manifest) {
            Some(g) => {
                g.2.extend(tags);
                g.3.extend(bad);
            }
            None => groups.push((e.manifest.clone(), e.media_type.clone(), tags, bad)),
        }
    }
    let mut out = Vec::new();
    for (digest, media_type, tags, bad_names) in groups {
        copy(&digest)?;
        let manifest_digest = if is_index_type(&media_type) {
            let chosen = pick_platform(&store.blobs().read(&digest)?, &digest)?;
            copy(&chosen)?;
            chosen
        } else {
            digest
        };
        let manifest: ImageManifest =
            serde_json::from_slice(&store.blobs().read(&manifest_digest)?).map_err(|e| {
                Error::Json {
                    what: format!("manifest {manifest_digest}"),
                    source: e,
                }
            })?;
        copy(&manifest.config().digest().to_string().parse()?)?;
        for l in manifest.layers() {
            copy(&l.digest().to_string().parse()?)?;
        }
        let image = store.image(&manifest_digest, &[])?;
        out.push(Found {
            image,
            tags,
            bad_names,
        });
    }
    Ok(out)
}

/// The manifest of an image index for this machine's platform.
fn pick_platform(index_bytes: &[u8], digest: &Digest) -> Result<Digest> {
    let index: oci_spec::image::ImageIndex =
        serde_json::from_slice(index_bytes).map_err(|e| Error::Json {
            what: format!("index {digest}"),
            source: e,
        })?;
    let arch = host_arch();
    for m in index.manifests() {
        let ok = match m.platform() {
            Some(p) => p.architecture().to_string() == arch && p.os().to_string() == "linux",
            None => true,
        };
        if ok {
            return m.digest().to_string().parse();
        }
    }
    Err(Error::Invalid(format!(
        "image index {digest} has no linux/{arch} image"
    )))
}

/// Images of a tar archive (OCI archive or `docker save` output, optionally gzip-compressed).
fn archive_images(store: &Store, input: &Path) -> Result<Vec<Found>> {
    let what = input.display().to_string();
    let file = File::open(input).map_err(io_err(format!("open {what}")))?;
    let reader = store::decompressed(BufReader::with_capacity(1 << 20, file), &what)?;
    let mut archive = tar::Archive::new(reader);
    // Every regular file becomes a blob; keep which path holds which digest.
    let mut by_path: HashMap<String, Digest> = HashMap::new();
    let mut docs: HashMap<String, Vec<u8>> = HashMap::new();
    let bad = |e: io::Error| Error::Tar {
        what: format!("read {what}"),
        source: e,
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        if matches!(
            path.as_str(),
            "index.json" | "manifest.json" | "oci-layout" | "repositories"
        ) {
            if entry.size() > MAX_JSON {
                return Err(Error::Invalid(format!("{what}: {path} is too large")));
            }
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(bad)?;
            docs.insert(path, buf);
            continue;
        }
        let expected: Option<Digest> = path
            .strip_prefix("blobs/sha256/")
            .map(|h| format!("sha256:{h}").parse())
            .transpose()
            .map_err(|_| {
                Error::Invalid(format!("{what}: {path} is not named by a sha256 digest"))
            })?;
        let mut w = store.blobs().writer()?;
        io::copy(&mut entry, &mut w).map_err(bad)?;
        let (d, _) = w.commit(expected.as_ref()).map_err(|e| match e {
            Error::DigestMismatch {
                expected, found, ..
            } => Error::DigestMismatch {
                what: format!("{path} in {what}"),
                expected,
                found,
            },
            e => e,
        })?;
        by_path.insert(path, d);
    }
    if docs.contains_key("index.json") {
        // OCI archive (also docker >= 25): the blobs are in the store now; read it as a layout.
        let tmp = store.temp_dir("load")?;
        fs::write(tmp.path().join("index.json"), &docs["index.json"])
            .map_err(io_err("write index"))?;
        fs::create_dir_all(tmp.path().join("blobs")).map_err(io_err("create blobs"))?;
        std::os::unix::fs::symlink(
            store.root().join("blobs/sha256"),
            tmp.path().join("blobs/sha256"),
        )
        .map_err(io_err("link blobs"))?;
        let mut found = layout_dir_images(store, tmp.path(), None)?;
        // docker's index names only the tag ("latest"); its manifest.json has the full names,
        // which replace those.
        if let Some(m) = docs.get("manifest.json") {
            if let Ok(dm) = serde_json::from_slice::<Vec<DockerManifest>>(m) {
                for f in found.iter_mut() {
                    let mut named = Vec::new();
                    for (i, d) in dm.iter().enumerate() {
                        if by_path.get(&d.config) == Some(&f.image.id) {
                            named.extend(repo_tags(&what, i, d)?);
                        }
                    }
                    if !named.is_empty() {
                        f.tags = named;
                        f.bad_names.clear();
                    }
                }
            }
        }
        return Ok(found);
    }
    let Some(m) = docs.get("manifest.json") else {
        return Err(Error::Invalid(format!(
            "{what}: neither an OCI archive (index.json) nor a docker archive (manifest.json)"
        )));
    };
    let dm: Vec<DockerManifest> = serde_json::from_slice(m).map_err(|e| Error::Json {
        what: format!("manifest.json in {what}"),
        source: e,
    })?;
    let mut out = Vec::new();
    for (i, d) in dm.into_iter().enumerate() {
        // A bad name fails the load before anything is tagged.
        let tags = repo_tags(&what, i, &d)?;
        let find = |p: &str| {
            by_path.get(p).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "{what}: manifest.json names {p}, which is not in the archive"
                ))
            })
        };
        let config_digest = find(&d.config)?;
        let config_bytes = store.blobs().read(&config_digest)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| Error::Json {
                what: format!("{} in {what}", d.config),
                source: e,
            })?;
        let mut layers = Vec::new();
        for (i, p) in d.layers.iter().enumerate() {
            let digest = find(p)?;
            let mut head = [0u8; 2];
            let n = store
                .blobs()
                .open_blob(&digest)?
                .read(&mut head)
                .map_err(io_err("read layer"))?;
            let gz = n == 2 && head == [0x1f, 0x8b];
            if !gz && config.rootfs().diff_ids().get(i).map(String::as_str) != Some(digest.as_str())
            {
                return Err(Error::Invalid(format!(
                    "{what}: layer {p} does not match diff ID {} of the config",
                    config
                        .rootfs()
                        .diff_ids()
                        .get(i)
                        .cloned()
                        .unwrap_or_default()
                )));
            }
            layers.push(LayerDesc {
                media_type: if gz { LAYER_GZIP } else { LAYER_TAR }.to_string(),
                size: store.blobs().size(&digest)?,
                diff_id: config
                    .rootfs()
                    .diff_ids()
                    .get(i)
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| digest.clone()),
                digest,
                annotations: Default::default(),
            });
        }
        let (manifest_digest, _) =
            store.write_manifest(&config_digest, config_bytes.len() as u64, &layers)?;
        let image = store.image(&manifest_digest, &[])?;
        out.push(Found {
            image,
            tags,
            bad_names: Vec::new(),
        });
    }
    Ok(out)
}
