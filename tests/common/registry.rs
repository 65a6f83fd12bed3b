//! A real registry for one test: Debian's `docker-registry` (distribution 2.8) on a free
//! loopback port of 5100-5199, filesystem storage in the test's temp dir, optionally behind
//! htpasswd authentication and TLS with a CA the test makes (openssl CLI); killed by PID on
//! drop. And [`FaultProxy`], a small HTTP proxy in front of it that corrupts, truncates or
//! drops chosen responses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The port range the registry tests may use: 5100-5199, or `STRATA_TEST_PORTS=FIRST-LAST`
/// (for a machine where those are taken).
fn ports() -> std::ops::Range<u16> {
    std::env::var("STRATA_TEST_PORTS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once('-')?;
            let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then(|| a..b + 1)
        })
        .unwrap_or(5100..5200)
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free port of [`ports`] (tests in one binary take turns through the counter; another
/// process's use is seen by the bind failing).
pub fn free_port() -> u16 {
    let range = ports();
    let n = range.end - range.start;
    let start = (std::process::id() as u16) % n;
    for _ in 0..n {
        let i = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = range.start + (start + i) % n;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {range:?}");
}

/// What a registry is set up with.
#[derive(Default, Clone)]
pub struct RegistryConfig {
    /// htpasswd user and password.
    pub auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate for 127.0.0.1/localhost signed by a CA of the test.
    pub tls: bool,
}

/// A running `docker-registry`.
pub struct Registry {
    child: Option<Child>,
    /// Its directory (config, storage, certificates).
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// With TLS: the directory holding `ca.crt` (for `--cert-dir`).
    pub ca_dir: Option<PathBuf>,
}

fn sh(c: &mut Command, what: &str) {
    let o = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Make a CA and a server certificate for 127.0.0.1 and localhost in `dir`; returns the CA
/// directory (holding `ca.crt` only).
fn make_certs(dir: &Path) -> PathBuf {
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    sh(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=strata test CA"])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(ca_dir.join("ca.crt")),
        "openssl CA",
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(dir.join("server.key"))
            .arg("-out")
            .arg(dir.join("server.csr")),
        "openssl CSR",
    );
    sh(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(dir.join("server.csr"))
            .arg("-CA")
            .arg(ca_dir.join("ca.crt"))
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("ext.cnf"))
            .arg("-out")
            .arg(dir.join("server.crt")),
        "openssl sign",
    );
    ca_dir
}

impl Registry {
    /// A plain HTTP registry without authentication in `parent`.
    pub fn start(parent: &Path) -> Registry {
        Registry::start_with(parent, &RegistryConfig::default())
    }

    /// A registry as `cfg` says, in a new directory under `parent`.
    pub fn start_with(parent: &Path, cfg: &RegistryConfig) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in(parent)
            .unwrap()
            .keep();
        let mut extra = String::new();
        let mut ca_dir = None;
        if let Some((user, pass)) = &cfg.auth {
            sh(
                Command::new("htpasswd")
                    .args(["-Bbc"])
                    .arg(dir.join("htpasswd"))
                    .args([user, pass]),
                "htpasswd",
            );
            extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        let mut tls = String::new();
        if cfg.tls {
            ca_dir = Some(make_certs(&dir));
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            );
        }
        for attempt in 0..5 {
            let port = free_port();
            std::fs::write(
                dir.join("config.yml"),
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{extra}http:\n  addr: 127.0.0.1:{port}\n{tls}",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join("log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry is needed (Debian package docker-registry)");
            let mut r = Registry {
                child: Some(child),
                dir: dir.clone(),
                port,
                ca_dir: ca_dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(st) = r.child.as_mut().unwrap().try_wait().unwrap() {
                    eprintln!("registry exited ({st}) on attempt {attempt}: {}", r.log());
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return r;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            r.stop();
        }
        panic!("docker-registry did not start in {}", dir.display());
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Start it again after [`Registry::stop`], on the same port with the same storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the registry is running");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not restart: {}", self.log());
    }

    /// Kill it (by PID) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What [`FaultProxy`] does to the responses it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward unchanged.
    None,
    /// Flip a byte in the middle of the body of `GET …/blobs/DIGEST`.
    CorruptBlob(String),
    /// Serve the blob `DIGEST` cut to half its length (a complete, short response).
    TruncateBlob(String),
    /// Close the connection half way through the blob `DIGEST`, the first `n` times.
    DropBlob(String, usize),
    /// As [`Fault::DropBlob`], for answers of at least `min` bytes only (a long read of the
    /// blob, not its footer or TOC).
    DropLongRead(String, usize, usize),
    /// Change the bytes of every manifest served (its digest no longer matches).
    BadManifest,
    /// Answer every `PATCH` (a chunk of an upload) 405, as registries without chunked
    /// uploads do.
    RefusePatch,
    /// Send half the blob `DIGEST`, then the rest 4 KiB every 100 ms.
    SlowBlob(String),
    /// Serve every manifest padded past 4 MiB.
    HugeManifest,
    /// Demand a Bearer token from the proxy's own token endpoint (`/token`), which answers
    /// any request with a fresh token valid for 300 s; the registry behind needs none.
    Bearer,
    /// As [`Fault::Bearer`], but a token is refused after it served this many requests (a
    /// token that expired early, or was revoked).
    BearerUses(usize),
}

/// An HTTP/1.1 proxy (one request per connection) in front of a registry.
pub struct FaultProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// With [`Fault::Bearer`]: the tokens handed out and the requests refused for the lack
    /// of a valid one.
    pub tokens: Arc<Mutex<(usize, usize)>>,
    stop: Arc<AtomicBool>,
    /// The `Range` headers of the blob requests it saw.
    pub ranges: Arc<Mutex<Vec<String>>>,
    /// The fault, which a test may change.
    pub fault: Arc<Mutex<Fault>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Head {
        first: first.trim_end().to_string(),
        headers,
    })
}

/// Answer with `resp`'s head announcing all of `body`, send half of it, then close the
/// connection (a transfer cut mid-way).
fn cut_half(
    resp: &Head,
    w: &mut std::net::TcpStream,
    keep: &[&str],
    close: (String, String),
    body: &[u8],
) {
    resp.write(
        w,
        keep,
        &[("Content-Length".into(), body.len().to_string()), close],
    );
    let _ = w.write_all(&body[..body.len() / 2]);
    let _ = w.flush();
    let _ = w.shutdown(std::net::Shutdown::Both);
}

impl Head {
    fn get(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    fn write(&self, w: &mut impl Write, drop: &[&str], extra: &[(String, String)]) {
        let mut s = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            if drop.iter().any(|d| d.eq_ignore_ascii_case(k)) {
                continue;
            }
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        let _ = w.write_all(s.as_bytes());
    }
}

impl FaultProxy {
    /// Proxy to `127.0.0.1:upstream`, applying `fault`.
    pub fn start(upstream: u16, fault: Fault) -> FaultProxy {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(Mutex::new((0, 0)));
        let fault = Arc::new(Mutex::new(fault));
        let (s2, r2, t2, f2) = (stop.clone(), ranges.clone(), tokens.clone(), fault.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (f, r, t) = (f2.clone(), r2.clone(), t2.clone());
                        std::thread::spawn(move || serve(c, port, upstream, &f, &r, &t));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultProxy {
            port,
            tokens,
            stop,
            fault,
            ranges,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Apply `fault` to the requests from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many requests each token served, by proxy port and token.
fn token_uses() -> &'static Mutex<std::collections::HashMap<String, usize>> {
    static USES: std::sync::OnceLock<Mutex<std::collections::HashMap<String, usize>>> =
        std::sync::OnceLock::new();
    USES.get_or_init(|| Mutex::new(std::collections::HashMap::new()))
}

fn serve(
    client: TcpStream,
    port: u16,
    upstream: u16,
    fault: &Mutex<Fault>,
    ranges: &Mutex<Vec<String>>,
    tokens: &Mutex<(usize, usize)>,
) {
    client.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cr = BufReader::new(client.try_clone().unwrap());
    let mut cw = client;
    // One request per connection: answers say `Connection: close`.
    let Some(req) = read_head(&mut cr) else {
        return;
    };
    let mut body = vec![
        0u8;
        req.get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    ];
    if cr.read_exact(&mut body).is_err() {
        return;
    }
    let path = req.first.split(' ').nth(1).unwrap_or("").to_string();
    let is_get = req.first.starts_with("GET ");
    let blob = path.rsplit_once("/blobs/").map(|(_, d)| d.to_string());
    if let (true, Some(_), Some(r)) = (is_get, &blob, req.get("range")) {
        ranges.lock().unwrap().push(r.to_string());
    }
    let bearer = match *fault.lock().unwrap() {
        Fault::Bearer => Some(usize::MAX),
        Fault::BearerUses(n) => Some(n),
        _ => None,
    };
    if let Some(uses) = bearer {
        if path.starts_with("/token") {
            let n = {
                let mut t = tokens.lock().unwrap();
                t.0 += 1;
                t.0
            };
            let body = format!(r#"{{"token":"tok-{n}","expires_in":300}}"#);
            let _ = cw.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            return;
        }
        let good = req
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer tok-"))
            .is_some_and(|t| {
                let mut used = token_uses().lock().unwrap();
                let n = used.entry(format!("{port}-{t}")).or_insert(0);
                *n += 1;
                *n <= uses
            });
        if !good {
            tokens.lock().unwrap().1 += 1;
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}"#;
            let _ = cw.write_all(
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            return;
        }
    }
    if req.first.starts_with("PATCH ") && *fault.lock().unwrap() == Fault::RefusePatch {
        let _ = cw.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    up.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut uw = up.try_clone().unwrap();
    // The client's Host is kept: the registry makes upload locations from it, which then
    // lead back through the proxy.
    req.write(
        &mut uw,
        &["connection"],
        &[("Connection".into(), "close".into())],
    );
    let _ = uw.write_all(&body);
    let mut ur = BufReader::new(up);
    let Some(resp) = read_head(&mut ur) else {
        return;
    };
    let mut rbody = Vec::new();
    if !req.first.starts_with("HEAD ") {
        match resp
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) => {
                rbody = vec![0; n];
                if ur.read_exact(&mut rbody).is_err() {
                    return;
                }
            }
            None => {
                let _ = ur.read_to_end(&mut rbody);
            }
        }
    }
    let f = fault.lock().unwrap().clone();
    let ok = resp.first.contains(" 200 ") || resp.first.contains(" 206 ");
    let this_blob = |d: &str| is_get && ok && blob.as_deref() == Some(d);
    let keep = ["connection", "content-length"];
    let close = ("Connection".to_string(), "close".to_string());
    match f {
        Fault::CorruptBlob(d) if this_blob(&d) && !rbody.is_empty() => {
            let i = rbody.len() / 2;
            rbody[i] ^= 0xff;
        }
        Fault::TruncateBlob(d) if this_blob(&d) => {
            rbody.truncate(rbody.len() / 2);
        }
        Fault::DropBlob(d, n) if this_blob(&d) && n > 0 => {
            *fault.lock().unwrap() = Fault::DropBlob(d, n - 1);
            cut_half(&resp, &mut cw, &keep, close, &rbody);
            return;
        }
        Fault::DropLongRead(d, min, n) if this_blob(&d) && n > 0 && rbody.len() >= min => {
            *fault.lock().unwrap() = Fault::DropLongRead(d, min, n - 1);
            cut_half(&resp, &mut cw, &keep, close, &rbody);
            return;
        }
        Fault::SlowBlob(d) if this_blob(&d) => {
            resp.write(
                &mut cw,
                &keep,
                &[("Content-Length".into(), rbody.len().to_string()), close],
            );
            let half = rbody.len() / 2;
            if cw.write_all(&rbody[..half]).is_err() {
                return;
            }
            for chunk in rbody[half..].chunks(4096) {
                std::thread::sleep(Duration::from_millis(100));
                if cw.write_all(chunk).is_err() {
                    return;
                }
            }
            return;
        }
        Fault::BadManifest if is_get && ok && path.contains("/manifests/") => {
            rbody.push(b'\n');
        }
        Fault::HugeManifest if is_get && ok && path.contains("/manifests/") => {
            rbody.resize(rbody.len() + (5 << 20), b' ');
        }
        _ => {}
    }
    let mut extra = vec![close];
    if !req.first.starts_with("HEAD ") {
        extra.push(("Content-Length".into(), rbody.len().to_string()));
    } else if let Some(n) = resp.get("content-length") {
        extra.push(("Content-Length".into(), n.to_string()));
    }
    resp.write(&mut cw, &keep, &extra);
    let _ = cw.write_all(&rbody);
    let _ = cw.flush();
}
