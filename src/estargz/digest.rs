//! SHA-256 digests as eStargz writes them (`sha256:` and 64 lowercase hex digits): the TOC's
//! digest, and each chunk's. Kept here rather than borrowed from `image` so the format stays a
//! leaf that the union can use.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::{Error, Result};

/// A validated `sha256:<64 hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(String);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(h: Sha256) -> Sha256Digest {
        let sum = h.finalize();
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in sum {
            s.push_str(&format!("{b:02x}"));
        }
        Sha256Digest(s)
    }

    /// Parse `s`, which must be `sha256:` and 64 lowercase hex digits (anything else could
    /// name a path outside the cache or never match).
    pub fn parse(s: &str) -> Result<Sha256Digest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::BadToc(format!("unsupported digest {s:?}")))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::BadToc(format!("malformed digest {s:?}")));
        }
        Ok(Sha256Digest(s.to_string()))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The whole `sha256:…` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Fail with [`Error::DigestMismatch`] unless `bytes` have this digest.
    pub fn verify(&self, bytes: &[u8], what: impl FnOnce() -> String) -> Result<()> {
        let found = Sha256Digest::of(bytes);
        if &found == self {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                what: what(),
                expected: self.clone(),
                found,
            })
        }
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_canonical_sha256() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::parse(d.as_str()).unwrap(), d);
        for bad in [
            "sha512:ba7816bf",
            "sha256:../../etc/passwd",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(Sha256Digest::parse(bad).is_err(), "{bad}");
        }
        assert!(d.verify(b"abc", || "x".into()).is_ok());
        assert!(matches!(
            d.verify(b"abd", || "x".into()),
            Err(Error::DigestMismatch { .. })
        ));
    }
}
