//! One registry's HTTP API: transport (HTTPS, or plain HTTP where allowed), the `/v2/` ping,
//! and authentication (anonymous, Basic, Bearer tokens reused until they expire and fetched
//! anew on a 401).
//!
//! The HTTP client is `ureq`: synchronous like the rest of strata (no async runtime for a
//! command-line tool that runs a few parallel downloads on threads), rustls for TLS, small.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Body;

use super::challenge::{self, Challenge};
use super::credentials::{self, Credentials};
use super::{Error, Result};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `Some(false)`: accept any certificate and fall back to plain HTTP (`--tls-verify=false`).
    /// `None`: verify, except that `localhost`/`127.0.0.1` may answer in plain HTTP, as docker
    /// allows. `Some(true)`: verified HTTPS only, localhost included.
    pub tls_verify: Option<bool>,
    /// A directory of extra CA certificates (`*.crt`) to trust, as podman's `--cert-dir`;
    /// default `/etc/containers/certs.d/HOST/` and `/etc/docker/certs.d/HOST/`.
    pub cert_dir: Option<PathBuf>,
    /// Credentials to use instead of looking them up in the auth files.
    pub credentials: Option<Credentials>,
}

/// A token and when to stop using it.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    until: Instant,
}

/// A connection to one registry, shared by the threads of a pull or push.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: String,
    base: String,
    agent: ureq::Agent,
    creds: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, Token>>,
    /// Held while a token is fetched, so parallel transfers wait for one token instead of
    /// each asking for its own.
    fetching: Mutex<()>,
}

/// Whether `host` (with its port) is this machine, where docker allows plain HTTP.
fn is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

/// The PEM certificates of the `*.crt` files (CAs) in `dir`.
fn certs_in(dir: &Path) -> Result<Vec<Certificate<'static>>> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("crt") {
            continue;
        }
        let pem = fs::read(&p).map_err(super::io_err(format!("read {}", p.display())))?;
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => out.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::Invalid(format!("{}: {e}", p.display())));
                }
            }
        }
    }
    Ok(out)
}

/// The system's CA bundle (Debian's path), so extra CAs add to the trusted roots.
fn system_roots() -> Vec<Certificate<'static>> {
    for p in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = fs::read(p) {
            return ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
        }
    }
    Vec::new()
}

fn agent(tls: TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .max_idle_connections_per_host(8)
        .build()
        .new_agent()
}

/// A transport error, said plainly.
pub fn transport(what: impl Into<String>, e: ureq::Error) -> Error {
    Error::Transport {
        what: what.into(),
        message: e.to_string(),
    }
}

/// The registry's error codes and messages from an error response body, else the status.
/// The body of an error answer, at most 64 KiB of it (for the registry's message).
pub fn error_body(resp: &mut Response<Body>) -> Vec<u8> {
    resp.body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()
        .unwrap_or_default()
}

/// The first byte of a 206 answer, from its `Content-Range: bytes START-END/SIZE`.
pub fn range_start(resp: &Response<Body>) -> Option<u64> {
    resp.headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

pub fn registry_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let reason = ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|i| format!("{} ({})", i.message, i.code))
            .collect::<Vec<_>>()
            .join("; "),
        _ => format!("HTTP {status} {reason}"),
    }
}

impl Client {
    /// Connect to `registry` (its name in references) at `api_host`: ping `/v2/` over HTTPS,
    /// or plain HTTP where allowed, and learn how it wants to be authenticated.
    pub fn connect(registry: &str, api_host: &str, opts: &Options) -> Result<Client> {
        let verify = opts.tls_verify != Some(false);
        let mut tls = TlsConfig::builder().disable_verification(!verify);
        let dirs = match &opts.cert_dir {
            Some(d) => vec![d.clone()],
            None => vec![
                Path::new("/etc/containers/certs.d").join(api_host),
                Path::new("/etc/docker/certs.d").join(api_host),
            ],
        };
        let mut extra = Vec::new();
        for d in &dirs {
            extra.extend(certs_in(d)?);
        }
        if verify && !extra.is_empty() {
            extra.extend(system_roots());
            tls = tls.root_certs(RootCerts::Specific(Arc::new(extra)));
        }
        let agent = agent(tls.build());
        // An explicit --tls-verify=true wants HTTPS even from localhost.
        let plain_allowed = !verify || (opts.tls_verify.is_none() && is_local(api_host));
        let creds = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => credentials::lookup(registry)?,
        };
        let mut last_err = None;
        for scheme in ["https", "http"] {
            if scheme == "http" && !plain_allowed {
                break;
            }
            let base = format!("{scheme}://{api_host}");
            let url = format!("{base}/v2/");
            match agent.get(&url).call() {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let challenge = match status {
                        200..=299 => None,
                        401 => resp
                            .headers()
                            .get("www-authenticate")
                            .and_then(|v| v.to_str().ok())
                            .and_then(challenge::parse),
                        // An HTTPS server answering our plain HTTP fallback: its HTTPS
                        // failure is the one to tell.
                        _ if last_err.is_some() => break,
                        _ => {
                            let body = error_body(&mut resp);
                            return Err(Error::Registry {
                                what: format!("{api_host}: ping {url}"),
                                status,
                                message: registry_message(status, &body),
                            });
                        }
                    };
                    tracing::debug!(%url, ?challenge, "registry ping");
                    return Ok(Client {
                        inner: Arc::new(Inner {
                            registry: registry.to_string(),
                            base,
                            agent,
                            creds,
                            challenge: Mutex::new(challenge),
                            tokens: Mutex::new(HashMap::new()),
                            fetching: Mutex::new(()),
                        }),
                    });
                }
                Err(e) => last_err = Some((url, e)),
            }
        }
        let (url, e) = last_err.expect("tried at least https");
        Err(Error::Transport {
            what: format!("registry {api_host} is unreachable (GET {url})"),
            message: e.to_string(),
        })
    }

    /// The registry's name.
    pub fn registry(&self) -> &str {
        &self.inner.registry
    }

    /// `scheme://host[:port]`.
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// The full URL of an API path (`/v2/…`) or of an absolute `Location` the registry gave.
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.inner.base)
        }
    }

    /// The HTTP agent (for requests that must not carry our credentials, such as a redirect
    /// to a blob store).
    pub fn agent(&self) -> &ureq::Agent {
        &self.inner.agent
    }

    /// Send a request built by `build` (given the `Authorization` value to set, if any) with
    /// the authentication `scope` needs (`repository:NAME:pull[,push]`, several separated by
    /// spaces); on a 401, authenticate anew once and resend.
    pub fn send(
        &self,
        what: &str,
        scope: &str,
        mut build: impl FnMut(Option<&str>) -> std::result::Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>> {
        let mut auth = self.authorization(scope, None)?;
        let mut retried = false;
        loop {
            let resp = build(auth.as_deref()).map_err(|e| transport(what, e))?;
            if resp.status().as_u16() != 401 || retried {
                if resp.status().as_u16() == 401 {
                    return Err(self.unauthorized(what, resp));
                }
                return Ok(resp);
            }
            // A new challenge (another scope, an expired token): authenticate once more.
            if let Some(c) = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .and_then(challenge::parse)
            {
                *self
                    .inner
                    .challenge
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(c);
            } else {
                return Err(self.unauthorized(what, resp));
            }
            auth = self.authorization(scope, Some(auth.as_deref().unwrap_or("")))?;
            retried = true;
        }
    }

    fn unauthorized(&self, what: &str, mut resp: Response<Body>) -> Error {
        let body = error_body(&mut resp);
        let msg = registry_message(401, &body);
        Error::Unauthorized {
            what: what.to_string(),
            message: if self.inner.creds.is_some() {
                format!(
                    "{msg}: the registry refused the credentials for {}",
                    self.registry()
                )
            } else {
                format!(
                    "{msg}: authentication required (strata login {})",
                    self.registry()
                )
            },
        }
    }

    /// The `Authorization` header value for `scope`, fetching a token if the registry wants
    /// one and none is cached, or only the one it `refused` is.
    fn authorization(&self, scope: &str, refused: Option<&str>) -> Result<Option<String>> {
        let challenge = self
            .inner
            .challenge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self
                .inner
                .creds
                .as_ref()
                .map(|c| format!("Basic {}", c.encoded()))),
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                let key = scope.to_string();
                let cached = || {
                    let tokens = self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner());
                    tokens
                        .get(&key)
                        .filter(|t| t.until > Instant::now())
                        .map(|t| t.value.clone())
                };
                let refused = refused.map(|r| r.strip_prefix("Bearer ").unwrap_or(r));
                let usable = |t: &String| Some(t.as_str()) != refused;
                if refused.is_none() {
                    if let Some(t) = cached() {
                        return Ok(Some(format!("Bearer {t}")));
                    }
                }
                let _one = self
                    .inner
                    .fetching
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // Another thread may have fetched one (after the same 401) meanwhile.
                if let Some(t) = cached().filter(usable) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let mut scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
                if let Some(a) = asked.as_deref() {
                    if !scopes.contains(&a) {
                        scopes.push(a);
                    }
                }
                let token = self.fetch_token(&realm, service.as_deref(), &scopes)?;
                self.inner
                    .tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, token.clone());
                Ok(Some(format!("Bearer {}", token.value)))
            }
        }
    }

    /// `GET realm?service=…&scope=…` (with Basic credentials if we have some).
    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[&str]) -> Result<Token> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let what = format!("get a token from {realm}");
        let mut req = self.inner.agent.get(realm);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        for s in scopes {
            req = req.query("scope", *s);
        }
        if let Some(c) = &self.inner.creds {
            req = req.header("Authorization", format!("Basic {}", c.encoded()));
        }
        let started = Instant::now();
        let mut resp = req.call().map_err(|e| transport(&what, e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| transport(&what, e))?;
        if status == 401 || status == 403 {
            return Err(Error::Unauthorized {
                what,
                message: format!(
                    "{}: the token service refused {}",
                    registry_message(status, &body),
                    if self.inner.creds.is_some() {
                        "the credentials"
                    } else {
                        "anonymous access"
                    }
                ),
            });
        }
        if !(200..300).contains(&status) {
            return Err(Error::Registry {
                what,
                status,
                message: registry_message(status, &body),
            });
        }
        let a: Answer = serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("{what}: not a token answer: {e}")))?;
        let value = a
            .token
            .or(a.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Invalid(format!("{what}: the answer has no token")))?;
        // The spec's default lifetime is 60 s; stop using a token a little before it ends.
        let life = Duration::from_secs(a.expires_in.unwrap_or(60).max(60));
        Ok(Token {
            value,
            until: started + life - Duration::from_secs(10),
        })
    }

    /// Whether the registry wants credentials and we have some that it accepts: the check
    /// `strata login` makes, on a request that needs authentication when any is configured.
    pub fn check_login(&self) -> Result<()> {
        let what = format!("log in to {}", self.registry());
        let url = self.url("/v2/");
        let resp = self.send(&what, "", |auth| {
            let mut r = self.inner.agent.get(&url);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.call()
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(Error::Registry {
                what,
                status,
                message: registry_message(status, &[]),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for h in [
            "localhost",
            "localhost:5100",
            "127.0.0.1:5000",
            "[::1]:5000",
        ] {
            assert!(is_local(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_local(h), "{h}");
        }
    }

    #[test]
    fn registry_errors_are_quoted() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_message(404, body),
            "manifest unknown (MANIFEST_UNKNOWN)"
        );
        assert_eq!(registry_message(502, b"<html>"), "HTTP 502 Bad Gateway");
    }
}
