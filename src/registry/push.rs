//! `strata push`: an image of the store to a registry.
//!
//! Each blob (config, layers) is skipped when the registry has it (`HEAD`), mounted from
//! another repository of the same registry when the store knows one that holds it (an image
//! tagged from that registry), else uploaded in chunks (`POST`, `PATCH`…, `PUT ?digest=`),
//! falling back to one monolithic `PUT` where a registry refuses chunks. The manifest goes
//! last, as the exact bytes the store holds, with its own media type: the digest printed is
//! the store's manifest digest, and the registry's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use ureq::http::Response;
use ureq::Body;

use super::client::{registry_message, Client, Options};
use super::manifest::OCI_MANIFEST;
use super::parallel;
use super::progress::{Done, Progress};
use super::reference::Reference;
use super::{Error, Result};
use crate::image::{Digest, Image, Store};

/// Size of one `PATCH` of a chunked upload.
const CHUNK: u64 = 8 << 20;

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Blobs uploaded at once (default 3).
    pub jobs: usize,
    /// How to reach the registry.
    pub client: Options,
}

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    /// The manifest digest (the registry's name for what was pushed).
    pub digest: Digest,
    /// Blobs uploaded (the others were there already or mounted).
    pub uploaded: usize,
}

/// One blob to push.
#[derive(Debug, Clone)]
struct Blob {
    digest: Digest,
    size: u64,
}

/// Push `image` from `store` to `dest`.
pub fn push(
    store: &Store,
    image: &Image,
    dest: &Reference,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<Pushed> {
    let client = Client::connect(&dest.registry, dest.api_host(), &opts.client)?;
    let mut blobs = vec![Blob {
        digest: image.id.clone(),
        size: store.blobs().size(&image.id)?,
    }];
    for l in image.layers()? {
        if !blobs.iter().any(|b| b.digest == l.digest) {
            blobs.push(Blob {
                digest: l.digest,
                size: l.size,
            });
        }
    }
    let uploaded = parallel::for_each(
        &blobs,
        opts.jobs,
        || false,
        |b| {
            let how = push_blob(&client, store, dest, b, progress)?;
            progress.done(&b.digest, how);
            Ok(how == Done::Transferred)
        },
    )?;
    let digest = put_manifest(&client, store, image, dest)?;
    Ok(Pushed { digest, uploaded })
}

fn auth_req<B>(r: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    }
}

fn fail(what: &str, mut resp: Response<Body>) -> Error {
    let status = resp.status().as_u16();
    let body = super::client::error_body(&mut resp);
    Error::Registry {
        what: what.to_string(),
        status,
        message: registry_message(status, &body),
    }
}

fn location(client: &Client, what: &str, resp: &Response<Body>) -> Result<String> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|l| client.url(l))
        .ok_or_else(|| Error::Invalid(format!("{what}: the registry gave no upload location")))
}

/// `url` with `?digest=` (or `&digest=`) added.
fn with_digest(url: &str, d: &Digest) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={d}")
}

/// Another repository of `dest`'s registry that holds blob `d`, as far as the store knows.
fn mount_source(store: &Store, dest: &Reference, d: &Digest) -> Option<String> {
    for img in store.images().ok()? {
        let has = &img.id == d
            || img
                .manifest
                .layers()
                .iter()
                .any(|l| l.digest().as_ref() == d.as_str());
        if !has {
            continue;
        }
        for t in &img.tags {
            if let Ok(r) = Reference::parse(t) {
                if r.registry == dest.registry && r.repository != dest.repository {
                    return Some(r.repository);
                }
            }
        }
    }
    None
}

fn push_blob(
    client: &Client,
    store: &Store,
    dest: &Reference,
    b: &Blob,
    progress: &dyn Progress,
) -> Result<Done> {
    let d = &b.digest;
    let repo = &dest.repository;
    let scope = format!("repository:{repo}:pull,push");
    let what = format!("{dest}: push blob {d}");
    let blob_url = client.url(&format!("/v2/{repo}/blobs/{d}"));
    let head = client.send(&what, &scope, |auth| {
        auth_req(client.agent().head(&blob_url), auth).call()
    })?;
    if head.status().is_success() {
        return Ok(Done::Present);
    }
    // Start an upload, or mount the blob from another repository in the same request.
    let from = mount_source(store, dest, d);
    let start_url = client.url(&format!("/v2/{repo}/blobs/uploads/"));
    let (post_url, post_scope) = match &from {
        Some(f) => (
            format!("{start_url}?mount={d}&from={f}"),
            format!("{scope} repository:{f}:pull"),
        ),
        None => (start_url.clone(), scope.clone()),
    };
    let resp = client.send(&what, &post_scope, |auth| {
        auth_req(client.agent().post(&post_url), auth).send_empty()
    })?;
    match resp.status().as_u16() {
        201 => return Ok(Done::Mounted),
        202 => {}
        _ => return Err(fail(&what, resp)),
    }
    let upload = location(client, &what, &resp)?;
    progress.start(d, b.size, 0);
    let path = store.blobs().path(d);
    if !path.is_file() {
        // Not in the store: its layer was pulled lazily (its source registry, if this one,
        // would have mounted it above).
        return Err(crate::image::Error::PulledLazily(d.clone()).into());
    }
    let open = || File::open(&path).map_err(super::io_err(format!("open blob {d}")));
    match upload_chunks(client, &scope, &what, &upload, open()?, b, progress)? {
        Some(()) => Ok(Done::Transferred),
        None => {
            // Chunks refused: one monolithic PUT in a fresh session.
            progress.note(&format!(
                "{}: the registry refused chunks; uploading it whole",
                d.short()
            ));
            let resp = client.send(&what, &scope, |auth| {
                auth_req(client.agent().post(&start_url), auth).send_empty()
            })?;
            if resp.status().as_u16() != 202 {
                return Err(fail(&what, resp));
            }
            let url = with_digest(&location(client, &what, &resp)?, d);
            let resp = client.send(&what, &scope, |auth| {
                let f = File::open(&path)?;
                auth_req(client.agent().put(&url), auth)
                    .header("Content-Type", "application/octet-stream")
                    .send(f)
            })?;
            if resp.status().as_u16() != 201 {
                return Err(fail(&what, resp));
            }
            progress.advance(d, b.size);
            Ok(Done::Transferred)
        }
    }
}

/// The chunked upload of `b` to the session at `url`: `Some` when done, `None` if the
/// registry refuses `PATCH` (the caller falls back to a monolithic upload).
fn upload_chunks(
    client: &Client,
    scope: &str,
    what: &str,
    url: &str,
    mut file: File,
    b: &Blob,
    progress: &dyn Progress,
) -> Result<Option<()>> {
    let mut url = url.to_string();
    let mut offset = 0u64;
    let mut buf = Vec::new();
    while offset < b.size {
        let n = CHUNK.min(b.size - offset);
        buf.resize(n as usize, 0);
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(super::io_err(format!("read blob {}", b.digest)))?;
        let range = format!("{offset}-{}", offset + n - 1);
        let resp = client.send(what, scope, |auth| {
            auth_req(client.agent().patch(&url), auth)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", &range)
                .send(&buf[..])
        })?;
        match resp.status().as_u16() {
            202 => {}
            400 | 405 | 415 | 416 | 501 if offset == 0 => return Ok(None),
            _ => return Err(fail(what, resp)),
        }
        url = location(client, what, &resp)?;
        offset += n;
        progress.advance(&b.digest, n);
    }
    let done = with_digest(&url, &b.digest);
    let resp = client.send(what, scope, |auth| {
        auth_req(client.agent().put(&done), auth)
            .header("Content-Type", "application/octet-stream")
            .send_empty()
    })?;
    if resp.status().as_u16() != 201 {
        return Err(fail(what, resp));
    }
    Ok(Some(()))
}

/// PUT the manifest under the tag (or digest) of `dest`; its digest.
fn put_manifest(client: &Client, store: &Store, image: &Image, dest: &Reference) -> Result<Digest> {
    let bytes = store.blobs().read(&image.manifest_digest)?;
    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let what = format!("{dest}: push manifest");
    let url = client.url(&format!(
        "/v2/{}/manifests/{}",
        dest.repository,
        dest.manifest_ref()
    ));
    let scope = format!("repository:{}:pull,push", dest.repository);
    let resp = client.send(&what, &scope, |auth| {
        auth_req(client.agent().put(&url), auth)
            .header("Content-Type", &media_type)
            .send(&bytes[..])
    })?;
    if resp.status().as_u16() != 201 {
        return Err(fail(&what, resp));
    }
    let digest = image.manifest_digest.clone();
    if let Some(announced) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
    {
        if announced != digest {
            return Err(Error::DigestMismatch {
                what: format!("{what}: the registry's digest of the manifest"),
                expected: digest,
                found: announced,
            });
        }
    }
    Ok(digest)
}
