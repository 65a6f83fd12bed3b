//! A layer blob in a registry as a [`BlobSource`]: each read is one HTTP `Range` GET through
//! the registry client (its TLS settings, its credentials from the auth files, its tokens).
//!
//! Nothing here is trusted: the eStargz reader checks the TOC against its digest and every
//! chunk against the TOC before any byte is used. A registry that cannot be reached, refuses,
//! or answers with the wrong range is an I/O error (EIO for a reader of a lazy file); the
//! connection is made on first use and again after a failure, so reads resume when the
//! registry is back.

use std::io::{self, Read};
use std::sync::Mutex;

use super::client::{registry_message, Client, Options};
use crate::estargz::source::Exact;
use crate::estargz::{BlobSource, RemoteBlob};

/// Largest single range read (a chunk is 4 MiB by default; a prefetch span may be larger).
const MAX_RANGE: u64 = 1 << 30;

/// A registry blob read by ranges.
#[derive(Debug)]
pub struct RegistryBlob {
    remote: RemoteBlob,
    opts: Options,
    client: Mutex<Option<Client>>,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl RegistryBlob {
    /// The blob `remote` names, reached with `remote`'s TLS settings and the credentials the
    /// auth files hold for its registry. Nothing is sent until the first read.
    pub fn new(remote: RemoteBlob) -> RegistryBlob {
        let opts = Options {
            tls_verify: remote.tls_verify,
            cert_dir: remote.cert_dir.clone(),
            credentials: None,
        };
        RegistryBlob::with_options(remote, opts)
    }

    /// [`RegistryBlob::new`] with explicit client options (credentials given, not looked up).
    pub fn with_options(remote: RemoteBlob, opts: Options) -> RegistryBlob {
        RegistryBlob {
            remote,
            opts,
            client: Mutex::new(None),
        }
    }

    /// [`RegistryBlob::new`] over an existing connection.
    pub fn with_client(remote: RemoteBlob, client: Client) -> RegistryBlob {
        RegistryBlob {
            remote,
            opts: Options::default(),
            client: Mutex::new(Some(client)),
        }
    }

    fn client(&self) -> io::Result<Client> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect(&self.remote.registry, &self.remote.api_host, &self.opts)
            .map_err(|e| err(e.to_string()))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The answer to a GET of `len` bytes at `offset`, as a stream of exactly those bytes,
    /// and what it is (for messages).
    fn request(&self, offset: u64, len: u64) -> io::Result<(Box<dyn Read + Send>, String)> {
        let r = &self.remote;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= r.size)
            .ok_or_else(|| {
                err(format!(
                    "range {offset}+{len} is past the end of the blob ({} bytes)",
                    r.size
                ))
            })?;
        let what = format!(
            "{}: get bytes {offset}-{} of blob {}",
            r.api_host,
            end.saturating_sub(1),
            r.digest
        );
        if len == 0 {
            return Ok((Box::new(io::empty()), what));
        }
        let client = self.client()?;
        let url = client.url(&format!("/v2/{}/blobs/{}", r.repository, r.digest));
        let scope = format!("repository:{}:pull", r.repository);
        let resp = client
            .send(&what, &scope, |auth| {
                let mut req = client
                    .agent()
                    .get(&url)
                    .header("Range", format!("bytes={offset}-{}", end - 1));
                if let Some(a) = auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            })
            .map_err(|e| err(e.to_string()))?;
        let status = resp.status().as_u16();
        let skip = match status {
            206 => {
                let start = super::client::range_start(&resp);
                if start != Some(offset) {
                    return Err(err(format!(
                        "{what}: the registry answered from byte {start:?}"
                    )));
                }
                0
            }
            // A registry that ignores ranges sends it all: skip to the range.
            200 => offset,
            _ => {
                let mut resp = resp;
                let body = super::client::error_body(&mut resp);
                return Err(err(format!("{what}: {}", registry_message(status, &body))));
            }
        };
        let mut body = resp
            .into_body()
            .into_with_config()
            .limit(skip + len)
            .reader();
        io::copy(&mut (&mut body).take(skip), &mut io::sink())
            .map_err(|e| err(format!("{what}: {e}")))?;
        Ok((Box::new(Exact::new(body, len)), what))
    }

    fn get(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if len > MAX_RANGE {
            return Err(err(format!("range of {len} bytes is too large")));
        }
        let (mut body, what) = self.request(offset, len)?;
        let mut buf = Vec::with_capacity(len as usize);
        body.read_to_end(&mut buf)
            .map_err(|e| err(format!("{what}: {e}")))?;
        Ok(buf)
    }

    /// Forget the connection after a failure: the next read connects anew (the registry may
    /// have moved to plain HTTP, or restarted).
    fn reset(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A streamed answer: its errors name the request.
struct Named {
    body: Box<dyn Read + Send>,
    what: String,
}

impl Read for Named {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body
            .read(buf)
            .map_err(|e| err(format!("{}: {e}", self.what)))
    }
}

impl BlobSource for RegistryBlob {
    fn size(&self) -> io::Result<u64> {
        Ok(self.remote.size)
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let r = self.get(offset, len);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn open_range(&self, offset: u64, len: u64) -> io::Result<Box<dyn Read + Send + '_>> {
        match self.request(offset, len) {
            Ok((body, what)) => Ok(Box::new(Named { body, what })),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}/{}@{}",
            self.remote.api_host, self.remote.repository, self.remote.digest
        )
    }
}

/// The source of a lazy layer's blob as its spec names it: the registry blob, or the local
/// file (what stratafs uses to fill the layer's files, and strata to read one before the
/// container's mount exists).
pub fn for_spec(spec: &crate::estargz::LazySpec) -> io::Result<Box<dyn BlobSource>> {
    Ok(match &spec.remote {
        Some(remote) => Box::new(RegistryBlob::new(remote.clone())),
        None => Box::new(crate::estargz::FileSource::open(&spec.blob)?),
    })
}
