//! The chunk cache: verified chunks of eStargz layers, one file per chunk named by its
//! digest, shared by every layer, container and later pull that has the same chunk.
//!
//! Nothing unverified goes in, and nothing comes out unverified: [`ChunkCache::put`] checks a
//! chunk against its digest before writing it, and [`ChunkCache::get`] checks it again on
//! every read, so a chunk damaged on disk (or torn by a crash: writes are not fsynced) is
//! dropped and fetched again, never served. Writes go to a temp file renamed into place, so a
//! reader sees a whole chunk or none. The directory is made by the store, private (0700); the
//! files are 0600.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{io_err, Error, Result, Sha256Digest};

/// Prefix of the temp files of unfinished writes: `.tmp-PID-N`.
const TEMP_PREFIX: &str = ".tmp-";

/// A content-addressed directory of chunks.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    counter: AtomicU64,
}

/// What a cache holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Number of chunks.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl ChunkCache {
    /// The cache in the existing directory `dir`; removes the temp files of writers that are
    /// gone (a crash mid-write).
    pub fn open(dir: &Path) -> Result<ChunkCache> {
        let rd =
            fs::read_dir(dir).map_err(io_err(format!("open chunk cache {}", dir.display())))?;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !Path::new("/proc").join(pid).exists() || pid.is_empty() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(ChunkCache {
            dir: dir.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }

    /// Where chunk `d` lives.
    pub fn path(&self, d: &Sha256Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Whether chunk `d` is present (not verified).
    pub fn contains(&self, d: &Sha256Digest) -> bool {
        self.path(d).is_file()
    }

    /// Chunk `d`, verified; `None` if absent or damaged (a damaged one is removed).
    pub fn get(&self, d: &Sha256Digest) -> Result<Option<Vec<u8>>> {
        let p = self.path(d);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("read cached chunk {d}"))(e)),
        };
        match d.verify(&bytes, || format!("cached chunk {}", p.display())) {
            Ok(()) => Ok(Some(bytes)),
            Err(e) => {
                tracing::warn!("{e}: dropped, to be fetched again");
                let _ = fs::remove_file(&p);
                Ok(None)
            }
        }
    }

    /// Store `bytes` as chunk `d`; refused (and nothing written) unless they have digest `d`.
    pub fn put(&self, d: &Sha256Digest, bytes: &[u8]) -> Result<()> {
        d.verify(bytes, || format!("chunk {d} to cache"))?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            f.write_all(bytes)?;
            fs::rename(&temp, self.path(d))
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&temp);
            io_err(format!("cache chunk {d}"))(e)
        })
    }

    /// Chunk `d` from the cache, or from `fetch` (whose bytes are verified, then cached).
    pub fn get_or_fetch(
        &self,
        d: &Sha256Digest,
        fetch: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        if let Some(b) = self.get(d)? {
            return Ok(b);
        }
        let bytes = fetch()?;
        if let Err(e) = self.put(d, &bytes) {
            // A digest mismatch is the fetcher's lie: refuse the bytes. A full disk only
            // costs the cache: serve them (they are verified).
            if matches!(e, Error::DigestMismatch { .. }) {
                return Err(e);
            }
            tracing::warn!("{e}");
        }
        Ok(bytes)
    }

    /// How many chunks and bytes the cache holds.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        let rd = fs::read_dir(&self.dir).map_err(io_err("list the chunk cache"))?;
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(m) = e.metadata() {
                u.chunks += 1;
                u.bytes += m.len();
            }
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    fn cache() -> (tempfile::TempDir, ChunkCache) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("chunks");
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let c = ChunkCache::open(&dir).unwrap();
        (t, c)
    }

    #[test]
    fn stores_verified_chunks_privately_and_keeps_them_across_opens() {
        let (t, c) = cache();
        let d = Sha256Digest::of(b"chunk one");
        assert_eq!(c.get(&d).unwrap(), None);
        c.put(&d, b"chunk one").unwrap();
        assert_eq!(c.get(&d).unwrap().unwrap(), b"chunk one");
        let mode = fs::metadata(c.path(&d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ChunkCache::open(&t.path().join("chunks")).unwrap();
        assert_eq!(again.get(&d).unwrap().unwrap(), b"chunk one");
        assert_eq!(
            again.usage().unwrap(),
            Usage {
                chunks: 1,
                bytes: 9
            }
        );
    }

    #[test]
    fn never_stores_or_serves_wrong_bytes() {
        let (_t, c) = cache();
        let d = Sha256Digest::of(b"good");
        assert!(matches!(
            c.put(&d, b"evil"),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(!c.contains(&d));
        let r = c.get_or_fetch(&d, || Ok(b"evil".to_vec()));
        assert!(matches!(r, Err(Error::DigestMismatch { .. })));
        assert!(!c.contains(&d));
        // A chunk damaged on disk is dropped and fetched again.
        c.put(&d, b"good").unwrap();
        fs::write(c.path(&d), b"bad!").unwrap();
        assert_eq!(c.get(&d).unwrap(), None);
        assert!(!c.contains(&d));
        let mut fetched = 0;
        let got = c
            .get_or_fetch(&d, || {
                fetched += 1;
                Ok(b"good".to_vec())
            })
            .unwrap();
        assert_eq!((got.as_slice(), fetched), (&b"good"[..], 1));
        let got = c.get_or_fetch(&d, || panic!("cached")).unwrap();
        assert_eq!(got, b"good");
        // A failed fetch caches nothing.
        let e = Sha256Digest::of(b"other");
        assert!(c
            .get_or_fetch(&e, || Err(Error::NotEstargz("gone".into())))
            .is_err());
        assert!(!c.contains(&e));
    }

    #[test]
    fn removes_temp_files_of_dead_writers_only() {
        let (t, c) = cache();
        let dir = t.path().join("chunks");
        let dead = dir.join(format!("{TEMP_PREFIX}999999999-3"));
        let live = dir.join(format!("{TEMP_PREFIX}{}-0", std::process::id()));
        fs::write(&dead, b"x").unwrap();
        fs::write(&live, b"x").unwrap();
        drop(c);
        let c = ChunkCache::open(&dir).unwrap();
        assert!(!dead.exists() && live.exists());
        assert_eq!(c.usage().unwrap().chunks, 0);
    }
}
