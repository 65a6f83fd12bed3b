//! SHA-256 content digests (`sha256:<64 hex>`) and a writer that computes one while it writes.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::Error;

/// A validated `sha256:` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The 64 hex digits without the algorithm.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits: docker's short image ID.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    /// The whole `sha256:…` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in h.finalize() {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest, Error> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::BadDigest(s.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::BadDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Passes writes through to `inner` while hashing them and counting bytes.
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (Digest::from_hasher(self.hasher), self.len, self.inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it.
pub struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: io::Read> DigestReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and length of everything read so far.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.len)
    }
}

impl<R: io::Read> io::Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_and_abc() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (d, n, v) = w.finish();
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!((n, v.as_slice()), (3, &b"abc"[..]));
        assert_eq!(d.short(), "ba7816bf8f01");
    }

    #[test]
    fn parse_rejects_bad_digests() {
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!(
            "md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse::<Digest>()
                .is_err()
        );
        assert!(
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                .parse::<Digest>()
                .is_err()
        );
        assert!(
            "sha256:../../../../etc/passwd00000000000000000000000000000000000000000"
                .parse::<Digest>()
                .is_err()
        );
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d, Digest::of(b""));
    }
}
