//! `strata pull --lazy`: an eStargz layer is not downloaded; its TOC is read from the registry
//! by range (checked against the descriptor's TOC digest), the lazy layer directory is made
//! from it, and the spec stratafs mounts it with names the registry, repository and blob, so
//! the daemon fetches the files' chunks itself on first read (see
//! [`super::blob_source::RegistryBlob`]).

use std::path::PathBuf;

use super::blob_source::RegistryBlob;
use super::client::{Client, Options};
use super::reference::Reference;
use super::Result;
use crate::estargz::RemoteBlob;
use crate::image::{LayerDesc, Store};

/// Whether `layer` is to be pulled lazily: it has a TOC and neither its extracted directory
/// nor its blob is here (those are used as they are). A lazy directory already here is
/// used as it is, complete or not (a pull without `--lazy` makes it an ordinary layer).
pub fn wanted(store: &Store, layer: &LayerDesc) -> Result<bool> {
    Ok(layer.toc_digest().is_some()
        && store.pin_extracted(layer)?.is_none()
        && !store.blobs().pin_existing(&layer.digest)?)
}

/// Make the lazy directory and spec of `layer` of `r` (reading its TOC over `client`); the
/// spec file's path.
pub fn prepare(
    client: &Client,
    store: &Store,
    r: &Reference,
    layer: &LayerDesc,
    opts: &Options,
) -> Result<PathBuf> {
    if let Some(spec) = crate::image::lazy::pin_existing(store, layer)? {
        return Ok(spec);
    }
    let remote = RemoteBlob {
        registry: r.registry.clone(),
        api_host: r.api_host().to_string(),
        repository: r.repository.clone(),
        digest: layer.digest.to_string(),
        size: layer.size,
        tls_verify: opts.tls_verify,
        cert_dir: opts.cert_dir.clone(),
        auth_file: super::credentials::file_for(&r.registry)?,
    };
    let source = RegistryBlob::with_client(remote.clone(), client.clone());
    Ok(crate::image::lazy::prepare_from(
        store,
        layer,
        &source,
        PathBuf::new(),
        Some(remote),
    )?)
}

/// The source of a lazy layer's blob as stratafs (and strata, to read a file before the mount
/// exists) opens it: the local blob file, or the registry blob with the TOC the store kept
/// (see [`crate::image::lazy_toc`]) and the credentials of the auth files, or else of the
/// auth file the pull recorded.
pub fn blob_source(
    spec: &crate::estargz::LazySpec,
) -> std::io::Result<Box<dyn crate::estargz::BlobSource>> {
    let Some(remote) = &spec.remote else {
        return Ok(Box::new(crate::estargz::FileSource::open(&spec.blob)?));
    };
    let found = super::credentials::lookup(&remote.registry)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let source: Box<dyn crate::estargz::BlobSource> = match (&found, &remote.auth_file) {
        (None, Some(file)) => {
            let creds = super::credentials::lookup_in(file, &remote.registry)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if creds.is_none() {
                tracing::warn!(
                    "no credentials for {} in {} (recorded by the pull) or the auth files",
                    remote.registry,
                    file.display()
                );
            }
            let opts = Options {
                tls_verify: remote.tls_verify,
                cert_dir: remote.cert_dir.clone(),
                credentials: creds,
            };
            Box::new(RegistryBlob::with_options(remote.clone(), opts))
        }
        _ => Box::new(RegistryBlob::with_options(
            remote.clone(),
            Options {
                tls_verify: remote.tls_verify,
                cert_dir: remote.cert_dir.clone(),
                credentials: found,
            },
        )),
    };
    Ok(crate::image::lazy_toc::source_for(spec, source))
}

/// The bytes of file `rel` of lower directory `dir` if it is a lazy layer's file still
/// waiting for them (then fetched, verified and cached as stratafs would); `None` when the
/// file is whole on disk (or not there).
pub fn read_file(dir: &std::path::Path, rel: &str) -> Result<Option<Vec<u8>>> {
    use crate::overlay::format::XattrNamespace;
    let Some(spec_path) = crate::image::lazy::spec_of_dir(dir) else {
        return Ok(None);
    };
    let path = dir.join(rel);
    let marked = [XattrNamespace::Trusted.lazy(), XattrNamespace::User.lazy()]
        .iter()
        .any(|x| rustix::fs::lgetxattr(&path, *x, &mut [0u8; 0][..]).is_ok());
    if !marked {
        return Ok(None);
    }
    let bad = |e: String| super::Error::Invalid(format!("lazy file {}: {e}", path.display()));
    let spec = crate::estargz::LazySpec::read(&spec_path).map_err(bad)?;
    let toc = crate::estargz::Sha256Digest::parse(&spec.toc).map_err(|e| bad(e.to_string()))?;
    let source = blob_source(&spec).map_err(|e| bad(e.to_string()))?;
    let reader =
        crate::estargz::Reader::open(source, Some(&toc)).map_err(|e| bad(e.to_string()))?;
    let cache =
        crate::estargz::cache::ChunkCache::open(&spec.cache).map_err(|e| bad(e.to_string()))?;
    let ix = reader.index();
    let ino = ix
        .lookup_path(rel)
        .ok_or_else(|| bad(format!("{rel} is not in its TOC")))?;
    let mut out = Vec::new();
    for c in &ix.node(ino).chunks {
        out.extend(
            reader
                .read_chunk_cached(&cache, c)
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    Ok(Some(out))
}
