//! Content-addressed blobs under `blobs/sha256/`: written to a temp file while hashed, checked
//! against the digest they claim, then renamed into place, so a reader never sees half a blob.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use super::digest::{Digest, DigestReader, DigestWriter};
use super::lock::Lock;
use super::pins::{Pins, TEMP_PREFIX};
use super::{io_err, private, Error, Result};

/// The blob directory of a store.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
    pins: Pins,
}

impl Blobs {
    /// Blobs kept in the existing directory `dir` (`…/blobs/sha256`); what this process writes
    /// or reuses is pinned in `pins`.
    pub fn new(dir: PathBuf, pins: Pins) -> Blobs {
        Blobs { dir, pins }
    }

    /// Where blob `d` lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Whether blob `d` is present.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Pin blob `d` for this process if it is present (garbage collection then keeps it
    /// until the process ends); `false` if it is not. What checks for a blob in order to use
    /// it must ask this, not [`Blobs::contains`].
    pub fn pin_existing(&self, d: &Digest) -> Result<bool> {
        self.pins.locked(|p| {
            if !self.contains(d) {
                return Ok(false);
            }
            p.blob(d)?;
            Ok(true)
        })
    }

    /// Start writing a new blob.
    pub fn writer(&self) -> Result<BlobWriter> {
        let temp = self.dir.join(self.pins.temp_name("blob")?);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_err(format!("create {}", temp.display())))?;
        Ok(BlobWriter {
            out: Some(DigestWriter::new(BufWriter::with_capacity(1 << 20, file))),
            temp,
            dir: self.dir.clone(),
            pins: self.pins.clone(),
        })
    }

    /// Store `bytes` as a blob; returns its digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err("write blob"))?;
        Ok(w.commit(None)?.0)
    }

    /// Open blob `d` for reading (not verified: see [`Blobs::read`] and [`VerifyingReader`]).
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        File::open(self.path(d)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingBlob(d.clone()),
            _ => Error::Io {
                what: format!("open blob {d}"),
                source: e,
            },
        })
    }

    /// Read a whole (small: JSON) blob and check it against its digest.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut buf)
            .map_err(io_err(format!("read blob {d}")))?;
        let found = Digest::of(&buf);
        if &found != d {
            return Err(Error::DigestMismatch {
                what: format!("blob {}", self.path(d).display()),
                expected: d.clone(),
                found,
            });
        }
        Ok(buf)
    }

    /// Hash blob `d` and fail with [`Error::DigestMismatch`], naming its path, if it does not
    /// match its digest.
    pub fn verify(&self, d: &Digest) -> Result<()> {
        let mut r = DigestReader::new(self.open_blob(d)?);
        io::copy(&mut r, &mut io::sink()).map_err(io_err(format!("read blob {d}")))?;
        let (found, _) = r.finish();
        if &found != d {
            return Err(Error::DigestMismatch {
                what: format!("blob {}", self.path(d).display()),
                expected: d.clone(),
                found,
            });
        }
        Ok(())
    }

    /// A reader of blob `d` that fails at its end if the content does not match the digest.
    pub fn verifying_reader(&self, d: &Digest) -> Result<VerifyingReader<File>> {
        Ok(VerifyingReader::new(self.open_blob(d)?, d.clone()))
    }

    /// The size of blob `d`.
    pub fn size(&self, d: &Digest) -> Result<u64> {
        Ok(fs::metadata(self.path(d))
            .map_err(io_err(format!("stat blob {d}")))?
            .len())
    }

    /// Every blob digest present, and the temp files of writers.
    pub fn list(&self) -> Result<(Vec<Digest>, Vec<PathBuf>)> {
        let mut blobs = Vec::new();
        let mut temps = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err(format!("list {}", self.dir.display())))? {
            let e = e.map_err(io_err("list blobs"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                temps.push(e.path());
            } else if let Ok(d) = format!("sha256:{name}").parse() {
                blobs.push(d);
            }
        }
        Ok((blobs, temps))
    }

    /// Delete blob `d` (absent is fine).
    pub fn remove(&self, d: &Digest) -> Result<()> {
        match fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("remove blob {d}"))(e))
            }
            _ => Ok(()),
        }
    }
}

impl Blobs {
    /// The store's directory of partly downloaded blobs (`partial/`, beside `blobs/`): kept
    /// across processes so an interrupted download resumes where it stopped.
    fn partial_dir(&self) -> PathBuf {
        let root = self
            .dir
            .parent()
            .and_then(|p| p.parent())
            .unwrap_or(&self.dir);
        root.join("partial")
    }

    /// The partly downloaded blob `d`, created empty if there is none, locked for this process
    /// (a second download of the same blob waits here for the first, then finds it present).
    pub fn partial(&self, d: &Digest) -> Result<Partial> {
        let dir = self.partial_dir();
        private::create(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = dir.join(d.hex());
        let lock = Lock::exclusive(&path)?;
        Ok(Partial { path, lock })
    }

    /// Remove the partial downloads that nobody is writing and nobody wrote to for `age`
    /// (pulls given up on: an interrupted pull resumed within that time keeps its bytes);
    /// how many.
    pub fn remove_stale_partials(&self, age: std::time::Duration) -> Result<u64> {
        let dir = self.partial_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(format!("list {}", dir.display()))(e)),
        };
        let mut removed = 0;
        for e in rd.flatten() {
            let stale = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|idle| idle > age);
            if !stale {
                continue;
            }
            // Held by a pull that is downloading it: not stale, whatever its time says.
            if let Some(_free) = Lock::try_existing(&e.path())? {
                let _ = fs::remove_file(e.path());
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Make the finished partial download `p`, whose content the caller verified to hash to
    /// `d`, the blob `d` (fsynced, renamed into place, pinned).
    pub fn commit_partial(&self, p: Partial, d: &Digest) -> Result<()> {
        p.lock
            .file()
            .sync_all()
            .map_err(io_err(format!("fsync {}", p.path.display())))?;
        let dest = self.path(d);
        self.pins.locked(|pin| {
            fs::rename(&p.path, &dest).map_err(io_err(format!("rename to {}", dest.display())))?;
            pin.blob(d)
        })
    }
}

/// A blob being downloaded, kept under `partial/` between attempts; its file is locked while
/// this value lives.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    lock: Lock,
}

impl Partial {
    /// The file (opened for reading and writing).
    pub fn file(&self) -> &File {
        self.lock.file()
    }

    /// How many bytes it has.
    pub fn len(&self) -> Result<u64> {
        Ok(self
            .file()
            .metadata()
            .map_err(io_err(format!("stat {}", self.path.display())))?
            .len())
    }

    /// Whether it has no bytes yet.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Drop what it holds: its bytes were bad, or the server will not resume.
    pub fn truncate(&self) -> Result<()> {
        self.file()
            .set_len(0)
            .map_err(io_err(format!("truncate {}", self.path.display())))
    }

    /// Remove it (its content was bad).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for Partial {
    /// An empty partial file is not worth keeping (nothing was fetched before an error).
    fn drop(&mut self) {
        if self.lock.file().metadata().is_ok_and(|m| m.len() == 0) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A blob being written: hashed as it goes, renamed to its digest (and pinned) by
/// [`BlobWriter::commit`], deleted if dropped uncommitted.
pub struct BlobWriter {
    out: Option<DigestWriter<BufWriter<File>>>,
    temp: PathBuf,
    dir: PathBuf,
    pins: Pins,
}

impl BlobWriter {
    /// Finish: flush, fsync, check against `expected` if given, rename into place and pin.
    /// Returns the digest and size.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let out = self.out.take().expect("commit once");
        let (digest, len, buf) = out.finish();
        let file = buf
            .into_inner()
            .map_err(|e| io_err("flush blob")(e.into_error()))?;
        file.sync_all().map_err(io_err("fsync blob"))?;
        drop(file);
        if let Some(exp) = expected {
            if exp != &digest {
                let _ = fs::remove_file(&self.temp);
                return Err(Error::DigestMismatch {
                    what: "blob".into(),
                    expected: exp.clone(),
                    found: digest,
                });
            }
        }
        let dest = self.dir.join(digest.hex());
        self.pins.locked(|p| {
            fs::rename(&self.temp, &dest)
                .map_err(io_err(format!("rename to {}", dest.display())))?;
            p.blob(&digest)
        })?;
        Ok((digest, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Reads `inner` and, at end of input, fails with `InvalidData` unless what was read hashes to
/// the expected digest: a truncated or corrupt blob can never be taken for a good one.
pub struct VerifyingReader<R> {
    inner: Option<DigestReader<R>>,
    expected: Digest,
}

impl<R: Read> VerifyingReader<R> {
    /// Verify `inner` against `expected`.
    pub fn new(inner: R, expected: Digest) -> Self {
        VerifyingReader {
            inner: Some(DigestReader::new(inner)),
            expected,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0);
        };
        let n = inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let (found, _) = self.inner.take().expect("present").finish();
            if found != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "content does not match its digest: expected {}, found {found}",
                        self.expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_mismatch() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("blobs/sha256")).unwrap();
        let b = Blobs::new(t.path().join("blobs/sha256"), Pins::new(t.path()));
        let d = b.put(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(b.read(&d).unwrap(), b"hello");
        // Corrupt it: the read must fail with a mismatch naming the blob.
        fs::write(b.path(&d), b"hellO").unwrap();
        assert!(matches!(b.read(&d), Err(Error::DigestMismatch { .. })));
        let mut s = String::new();
        let err = b.verifying_reader(&d).unwrap().read_to_string(&mut s);
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A writer with the wrong expected digest leaves nothing behind.
        let mut w = b.writer().unwrap();
        w.write_all(b"x").unwrap();
        assert!(w.commit(Some(&Digest::of(b"y"))).is_err());
        let (blobs, temps) = b.list().unwrap();
        assert_eq!((blobs.len(), temps.len()), (1, 0));
        // Partial downloads: kept while fresh or held, removed once stale and free.
        let held = b.partial(&Digest::of(b"held")).unwrap();
        held.file().write_all(b"part").unwrap();
        let free = b.partial(&Digest::of(b"free")).unwrap();
        free.file().write_all(b"part").unwrap();
        drop(free);
        let empty = b.partial(&Digest::of(b"empty")).unwrap();
        drop(empty);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        let partial = t.path().join("partial");
        let names = || {
            let mut v: Vec<String> = fs::read_dir(&partial)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let mut expected = vec![
            Digest::of(b"held").hex().to_string(),
            Digest::of(b"free").hex().to_string(),
        ];
        expected.sort();
        assert_eq!(names(), expected, "an empty partial file is not kept");
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(b.remove_stale_partials(hour).unwrap(), 0, "fresh ones stay");
        for n in names() {
            File::options()
                .write(true)
                .open(partial.join(n))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert_eq!(b.remove_stale_partials(hour).unwrap(), 1);
        assert_eq!(names(), vec![Digest::of(b"held").hex().to_string()]);
        drop(held);
        // A dropped writer leaves nothing either.
        let mut w = b.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(b.list().unwrap().1.len(), 0);
        assert!(matches!(
            b.read(&Digest::of(b"nope")),
            Err(Error::MissingBlob(_))
        ));
    }
}
