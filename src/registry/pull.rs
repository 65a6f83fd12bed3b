//! `strata pull`: an image from a registry into the store, byte for byte as the registry
//! serves it.
//!
//! Layers download in parallel (bounded). Each layer blob streams from the network once:
//! appended to its partial file under `partial/` (so an interrupted pull resumes with an HTTP
//! `Range` request), hashed, decompressed and extracted as it comes; when the blob's digest
//! and the layer's diff ID both match, the partial file becomes the blob and the extracted
//! directory the layer. Blobs and layers already in the store are not fetched again. Nothing
//! enters the index until every part is in place.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use oci_spec::image::{ImageConfiguration, ImageManifest};

use super::client::{self, registry_message, Client, Options};
use super::manifest::{self, Fetched, Platform};
use super::parallel;
use super::progress::{Done, Progress};
use super::reference::Reference;
use super::{Error, Result};
use crate::image::{self, Digest, Image, LayerDesc, Store};

/// Largest config blob accepted.
const MAX_CONFIG: u64 = 16 << 20;

/// How many times a blob download broken by the network is resumed within one pull.
const RETRIES: usize = 2;

/// Whether Ctrl-C came: downloads stop at their next read, keep what they fetched for the
/// next pull, and remove their half-extracted layers.
fn interrupted() -> bool {
    crate::interrupt::requested()
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The platform to pick from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// Layers downloaded at once (default 3, as docker).
    pub jobs: usize,
    /// How to reach the registry.
    pub client: Options,
    /// Leave eStargz layers in the registry: fetch their TOCs only, to be mounted lazily
    /// (see [`super::lazy_pull`]); other layers are pulled in full.
    pub lazy: bool,
}

/// What a pull did.
#[derive(Debug)]
pub struct Pulled {
    /// The image, as the store now has it.
    pub image: Image,
    /// The digest the reference resolved to (an index's if it named one): the registry's.
    pub digest: Digest,
    /// The tag recorded, if the reference had one.
    pub tag: Option<String>,
    /// Layers fetched from the registry (the others were already in the store).
    pub fetched: usize,
    /// Layers left in the registry, to be read lazily (`--lazy`).
    pub lazy: usize,
}

/// Pull `r` into `store`.
pub fn pull(
    store: &Store,
    r: &Reference,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled> {
    crate::interrupt::catch();
    let client = Client::connect(&r.registry, r.api_host(), &opts.client)?;
    pull_with(&client, store, r, opts, progress)
}

/// [`pull`] over an existing connection.
pub fn pull_with(
    client: &Client,
    store: &Store,
    r: &Reference,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let top = manifest::fetch(client, r)?;
    let chosen: Fetched = if top.is_index() {
        let want = opts.platform.clone().unwrap_or_else(Platform::host);
        let d = manifest::select(&top, &want, &r.to_string())?;
        let m = manifest::fetch(client, &r.with_digest(&d))?;
        if m.is_index() {
            return Err(Error::Invalid(format!(
                "{r}: the index entry for {want} is itself an index"
            )));
        }
        m
    } else {
        if let Some(p) = &opts.platform {
            tracing::debug!(%p, "single-platform image: --platform checked against its config");
        }
        top.clone()
    };
    let parsed: ImageManifest = serde_json::from_slice(&chosen.bytes)
        .map_err(|e| Error::Invalid(format!("{r}: bad image manifest: {e}")))?;
    let config_digest: Digest = parse_digest(r, parsed.config().digest().as_ref())?;

    // The config: small, fetched whole, checked, stored.
    if !store.blobs().pin_existing(&config_digest)? {
        let bytes = fetch_small(client, r, &config_digest, MAX_CONFIG)?;
        store.blobs().put(&bytes)?;
    }
    let config: ImageConfiguration =
        serde_json::from_slice(&store.blobs().read(&config_digest)?)
            .map_err(|e| Error::Invalid(format!("{r}: bad image config {config_digest}: {e}")))?;
    if let Some(p) = &opts.platform {
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if !top.is_index() && (os != p.os || arch != p.arch) {
            return Err(Error::NoPlatform {
                reference: r.to_string(),
                wanted: p.to_string(),
                available: format!("{os}/{arch}"),
            });
        }
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != parsed.layers().len() {
        return Err(Error::Invalid(format!(
            "{r}: the manifest lists {} layers but the config {} diff IDs",
            parsed.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (l, d) in parsed.layers().iter().zip(diff_ids) {
        let media_type = l.media_type().to_string();
        layers.push(LayerDesc {
            digest: parse_digest(r, l.digest().as_ref())?,
            diff_id: parse_digest(r, d)?,
            size: l.size(),
            media_type,
            // Kept as the registry served them (the eStargz TOC digest among them).
            annotations: l
                .annotations()
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        });
    }

    let mut full = Vec::new();
    let mut lazy = Vec::new();
    for l in layers {
        if opts.lazy && super::lazy_pull::wanted(store, &l)? {
            lazy.push(l);
        } else {
            full.push(l);
        }
    }
    // The lazy layers' TOCs are read and their directories made at once, one thread each. A
    // layer whose TOC cannot be used (a malformed or wrong digest, a blob that is not eStargz
    // after all) is pulled in full instead: that path checks the blob and its diff ID as for
    // any layer.
    let prepared: Vec<Result<std::path::PathBuf>> = std::thread::scope(|s| {
        let hs: Vec<_> = lazy
            .iter()
            .map(|l| s.spawn(move || super::lazy_pull::prepare(client, store, r, l, &opts.client)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut made_lazy = 0;
    for (l, p) in lazy.into_iter().zip(prepared) {
        match p {
            Ok(_) => {
                made_lazy += 1;
                progress.note(&format!("{}: TOC only (lazy)", l.digest.short()));
            }
            Err(_) if interrupted() => return Err(Error::Interrupted),
            Err(e) => {
                progress.note(&format!(
                    "{}: not usable lazily ({e}): pulling it in full",
                    l.digest.short()
                ));
                full.push(l);
            }
        }
    }
    let fetched = fetch_layers(client, store, r, &full, opts.jobs.max(1), progress)?;

    // Every part is in place and pinned: now the manifest, then the index entry.
    let stored = store.blobs().put(&chosen.bytes)?;
    debug_assert_eq!(stored, chosen.digest);
    let image = store.image(&chosen.digest, &[])?;
    let tag = r.store_tag();
    match &tag {
        Some(t) => store.tag(&image, t)?,
        None => store.add_untagged(&image)?,
    }
    let entries = store.entries()?;
    Ok(Pulled {
        image: store.image(&chosen.digest, &entries)?,
        digest: top.digest,
        tag,
        fetched,
        lazy: made_lazy,
    })
}

fn parse_digest(r: &Reference, s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|_| Error::Invalid(format!("{r}: unsupported digest {s:?} (only sha256)")))
}

/// Fetch a small blob whole and check it.
fn fetch_small(client: &Client, r: &Reference, d: &Digest, limit: u64) -> Result<Vec<u8>> {
    let what = format!("{r}: get blob {d}");
    let url = client.url(&format!("/v2/{}/blobs/{d}", r.repository));
    let mut resp = client.send(
        &what,
        &format!("repository:{}:pull", r.repository),
        |auth| {
            let mut req = client.agent().get(&url);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call()
        },
    )?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| client::transport(&what, e))?;
    if !(200..300).contains(&status) {
        return Err(Error::Registry {
            what,
            status,
            message: registry_message(status, &body),
        });
    }
    let found = Digest::of(&body);
    if &found != d {
        return Err(Error::DigestMismatch {
            what,
            expected: d.clone(),
            found,
        });
    }
    Ok(body)
}

/// Bring every layer of `layers` into the store, `jobs` at a time; how many were fetched.
fn fetch_layers(
    client: &Client,
    store: &Store,
    r: &Reference,
    layers: &[LayerDesc],
    jobs: usize,
    progress: &dyn Progress,
) -> Result<usize> {
    // The same blob twice in one image is fetched once.
    let mut unique: Vec<&LayerDesc> = Vec::new();
    for l in layers {
        if !unique.iter().any(|u| u.digest == l.digest) {
            unique.push(l);
        }
    }
    let fetched = parallel::for_each(&unique, jobs, interrupted, |layer| {
        one_layer(client, store, r, layer, progress)
    })?;
    if interrupted() {
        return Err(Error::Interrupted);
    }
    // Same-blob duplicates: make sure each listed layer is there (and pinned).
    for l in layers {
        store.extracted(l)?;
    }
    Ok(fetched)
}

/// One layer into the store: nothing to do, extract a blob already here, or download it
/// (resuming a partial download) while extracting it. Whether it was downloaded.
fn one_layer(
    client: &Client,
    store: &Store,
    r: &Reference,
    layer: &LayerDesc,
    progress: &dyn Progress,
) -> Result<bool> {
    let blob_here = store.blobs().pin_existing(&layer.digest)?;
    let layer_here = store.pin_extracted(layer)?.is_some();
    if blob_here {
        if !layer_here {
            store.extracted(layer)?;
        }
        progress.done(&layer.digest, Done::Present);
        return Ok(false);
    }
    let then = if layer_here {
        Then::KeepBlob
    } else if crate::image::lazy_adopt::ready(store, layer) {
        progress.note(&format!(
            "{}: lazy layer complete: checking it against its blob",
            layer.digest.short()
        ));
        Then::Adopt
    } else {
        Then::Extract
    };
    let mut attempt = 0;
    loop {
        match download(client, store, r, layer, then, progress) {
            Err(Error::Transport { .. }) if interrupted() => return Err(Error::Interrupted),
            Err(e @ Error::Transport { .. }) if attempt < RETRIES => {
                attempt += 1;
                progress.note(&format!("{e}; resuming ({attempt}/{RETRIES})"));
            }
            Err(e) => return Err(e),
            Ok(()) => {
                progress.done(&layer.digest, Done::Transferred);
                return Ok(true);
            }
        }
    }
}

/// Reads what a partial file already holds, then the network response, appending the
/// response's bytes to the partial file as they pass; remembers a network failure.
struct Tee<'a> {
    prefix: Option<io::Take<File>>,
    body: Box<dyn Read>,
    sink: File,
    blob: &'a Digest,
    progress: &'a dyn Progress,
    net_error: &'a Mutex<Option<String>>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(p) = self.prefix.as_mut() {
            let n = p.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.prefix = None;
        }
        if interrupted() {
            *self.net_error.lock().unwrap_or_else(|p| p.into_inner()) = Some("interrupted".into());
            return Err(io::Error::other("interrupted"));
        }
        let n = match self.body.read(buf) {
            Ok(n) => n,
            Err(e) => {
                *self.net_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                return Err(e);
            }
        };
        self.sink.write_all(&buf[..n])?;
        self.progress.advance(self.blob, n as u64);
        Ok(n)
    }
}

/// What a downloaded layer blob is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Extract it on the way.
    Extract,
    /// The layer is extracted already (its blob was freed): the blob alone, checked.
    KeepBlob,
    /// The layer's lazy directory is complete: check the blob against it and make it the
    /// extracted layer (see [`crate::image::lazy_adopt`]).
    Adopt,
}

/// Download the blob of `layer`, resuming its partial file, and do with it what `then` says.
fn download(
    client: &Client,
    store: &Store,
    r: &Reference,
    layer: &LayerDesc,
    then: Then,
    progress: &dyn Progress,
) -> Result<()> {
    let extract = then == Then::Extract;
    let d = &layer.digest;
    let what = format!("{r}: get blob {d}");
    let partial = store.blobs().partial(d)?;
    // Another process may have finished it while this one waited for the partial file.
    if store.blobs().pin_existing(d)? {
        partial.discard();
        if then != Then::KeepBlob {
            store.extracted(layer)?;
        }
        return Ok(());
    }
    let mut have = partial.len()?;
    if have > layer.size {
        partial.truncate()?;
        have = 0;
    }
    // A complete partial file (an interrupt came after its last byte) is checked as it is.
    let (resumed, body): (u64, Box<dyn Read>) = if have == layer.size {
        (have, Box::new(io::empty()))
    } else {
        let (resumed, resp) = request_blob(client, r, d, have, &partial, &what)?;
        // More than the manifest says is never read: the digest would fail anyway, and a
        // hostile server cannot fill the disk.
        let body = resp
            .into_body()
            .into_with_config()
            .limit(layer.size - resumed)
            .reader();
        (resumed, Box::new(body))
    };
    if resumed > 0 {
        progress.note(&format!("{}: resuming at byte {resumed}", d.short()));
    }
    progress.start(d, layer.size, resumed);
    let file_err = |e: io::Error| image::Error::Io {
        what: format!("partial blob {d}"),
        source: e,
    };
    let mut sink = partial.file().try_clone().map_err(file_err)?;
    sink.seek(SeekFrom::End(0)).map_err(file_err)?;
    let mut prefix = partial.file().try_clone().map_err(file_err)?;
    prefix.seek(SeekFrom::Start(0)).map_err(file_err)?;
    let net_error = Mutex::new(None);
    let tee = Tee {
        prefix: Some(prefix.take(resumed)),
        body,
        sink,
        blob: d,
        progress,
        net_error: &net_error,
    };
    let mut slot = Some(partial);
    let result = if then == Then::Adopt {
        crate::image::lazy_adopt::adopt_stream(store, layer, tee, |found| {
            debug_assert_eq!(found, d);
            store
                .blobs()
                .commit_partial(slot.take().expect("committed once"), d)
        })
        .map(|_| ())
    } else if extract {
        store
            .extract_stream(layer, tee, |found| {
                debug_assert_eq!(found, d);
                store
                    .blobs()
                    .commit_partial(slot.take().expect("committed once"), d)
            })
            .map(|_| ())
    } else {
        // The layer is extracted already (its blob was freed): the blob alone, checked.
        let mut raw = image::digest::DigestReader::new(tee);
        let copied = io::copy(&mut raw, &mut io::sink());
        let (found, _) = raw.finish();
        match copied {
            Err(e) => Err(image::Error::Io {
                what: format!("read blob {d}"),
                source: e,
            }),
            Ok(_) if &found != d => Err(image::Error::DigestMismatch {
                what: format!("blob {d}"),
                expected: d.clone(),
                found,
            }),
            Ok(_) => store
                .blobs()
                .commit_partial(slot.take().expect("committed once"), d),
        }
    };
    let net = net_error.into_inner().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let Some(partial) = slot else {
                return Err(e.into());
            };
            if let Some(msg) = net {
                // Kept: the next attempt or the next pull resumes from here.
                let kept = partial.len().unwrap_or(0);
                return Err(Error::Transport {
                    what,
                    message: format!(
                        "{msg} (after {kept} of {} bytes; kept for resuming)",
                        layer.size
                    ),
                });
            }
            // Bad bytes or a refused layer: nothing of it is worth keeping.
            partial.discard();
            Err(match e {
                image::Error::DigestMismatch {
                    expected, found, ..
                } if expected == *d => Error::DigestMismatch {
                    what: format!("{r}: blob {d} as the registry served it"),
                    expected,
                    found,
                },
                e => e.into(),
            })
        }
    }
}

/// `GET` blob `d` from byte `have` (a `Range` request when `have > 0`): the byte the answer
/// starts at (0 if the registry sent it whole; the partial file is then emptied) and the
/// response.
fn request_blob(
    client: &Client,
    r: &Reference,
    d: &Digest,
    have: u64,
    partial: &image::blobs::Partial,
    what: &str,
) -> Result<(u64, ureq::http::Response<ureq::Body>)> {
    let what = what.to_string();
    let url = client.url(&format!("/v2/{}/blobs/{d}", r.repository));
    let scope = format!("repository:{}:pull", r.repository);
    let resp = client.send(&what, &scope, |auth| {
        let mut req = client.agent().get(&url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call()
    })?;
    let status = resp.status().as_u16();
    let resumed = match status {
        206 => {
            let start = client::range_start(&resp);
            if start != Some(have) {
                partial.truncate()?;
                return Err(Error::Transport {
                    what,
                    message: format!(
                        "the registry answered a range request from byte {have} at {start:?}"
                    ),
                });
            }
            have
        }
        200..=299 => {
            if have > 0 {
                partial.truncate()?;
            }
            0
        }
        _ => {
            let mut resp = resp;
            let body = client::error_body(&mut resp);
            return Err(Error::Registry {
                what,
                status,
                message: registry_message(status, &body),
            });
        }
    };
    Ok((resumed, resp))
}
