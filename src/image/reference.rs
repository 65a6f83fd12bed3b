//! Image references as people type them: `name`, `name:tag`, `name@sha256:…`, a full image ID
//! (`sha256:…`) or a short image-ID prefix.

use super::digest::Digest;
use super::{Error, Result};

/// The tag a name without one gets.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `name[:tag]`, normalised to `name:tag`. May also be an image-ID prefix: resolution tries
    /// the name first, as docker does.
    Tagged {
        /// Repository name.
        name: String,
        /// Tag.
        tag: String,
    },
    /// `name@sha256:…`: the manifest with this digest.
    Digested {
        /// Repository name (informational).
        name: String,
        /// Manifest digest.
        digest: Digest,
    },
    /// `sha256:…`: a full image ID (config digest).
    Id(Digest),
}

impl Reference {
    /// Parse `s`.
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| Error::BadReference(format!("{s:?}: {why}"));
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.starts_with("sha256:") {
            return Ok(Reference::Id(s.parse()?));
        }
        if let Some((name, digest)) = s.split_once('@') {
            validate_name(name).map_err(|w| bad(&w))?;
            return Ok(Reference::Digested {
                name: name.to_string(),
                digest: digest.parse()?,
            });
        }
        let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, DEFAULT_TAG),
        };
        validate_name(name).map_err(|w| bad(&w))?;
        validate_tag(tag).map_err(|w| bad(&w))?;
        Ok(Reference::Tagged {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The `name:tag` form for tagged references.
    pub fn tagged(&self) -> Option<String> {
        match self {
            Reference::Tagged { name, tag } => Some(format!("{name}:{tag}")),
            _ => None,
        }
    }
}

/// Parse a reference that names a tag to create (`tag`, `build -t`, `import`, `commit`).
pub fn parse_tag(s: &str) -> Result<String> {
    Reference::parse(s)?
        .tagged()
        .ok_or_else(|| Error::BadReference(format!("{s:?}: expected NAME[:TAG]")))
}

/// Split a stored `name:tag` ref into its parts.
pub fn split_tagged(r: &str) -> (&str, &str) {
    let last_slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    match r[last_slash..].rfind(':') {
        Some(i) => (&r[..last_slash + i], &r[last_slash + i + 1..]),
        None => (r, ""),
    }
}

/// Docker's repository-name grammar: lower-case path components of `[a-z0-9]` joined by `.`,
/// `_`, `__` or `-`, separated by `/`; the first component may be a registry host with a port.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("the name must have 1 to 255 characters".into());
    }
    for (i, comp) in name.split('/').enumerate() {
        let host_like = i == 0 && name.contains('/') && (comp.contains('.') || comp.contains(':'));
        let comp = if host_like {
            // registry[:port]
            match comp.split_once(':') {
                Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
                Some(_) => return Err(format!("bad registry port in {comp:?}")),
                None => comp,
            }
        } else {
            comp
        };
        let ok_char = |c: u8| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'.' | b'_' | b'-')
                || (host_like && c.is_ascii_uppercase())
        };
        let b = comp.as_bytes();
        if b.is_empty()
            || !b.iter().all(|&c| ok_char(c))
            || !b[0].is_ascii_alphanumeric()
            || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return Err(format!(
                "{comp:?} is not a valid name component (lower-case letters, digits, '.', '_', '-')"
            ));
        }
    }
    Ok(())
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let b = tag.as_bytes();
    if b.is_empty()
        || b.len() > 128
        || !(b[0].is_ascii_alphanumeric() || b[0] == b'_')
        || !b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(format!("{tag:?} is not a valid tag"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(s: &str) -> String {
        Reference::parse(s).unwrap().tagged().unwrap()
    }

    #[test]
    fn names_and_tags() {
        assert_eq!(tagged("busybox"), "busybox:latest");
        assert_eq!(tagged("busybox:1.36"), "busybox:1.36");
        assert_eq!(tagged("my/app-x_y.z:v1"), "my/app-x_y.z:v1");
        assert_eq!(tagged("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(tagged("localhost:5000/app:2"), "localhost:5000/app:2");
        assert_eq!(
            split_tagged("localhost:5000/app:2"),
            ("localhost:5000/app", "2")
        );
        for bad in [
            "", "Busybox", "a:", "a:b:c", "-a", "a/", "a//b", "a b", "a:.x", "../x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digests_and_ids() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(
            Reference::parse(&format!("app@sha256:{hex}")).unwrap(),
            Reference::Digested { .. }
        ));
        assert!(matches!(
            Reference::parse(&format!("sha256:{hex}")).unwrap(),
            Reference::Id(_)
        ));
        assert!(Reference::parse("app@sha256:abc").is_err());
        assert!(parse_tag(&format!("sha256:{hex}")).is_err());
        // A short hex string parses as a name; the store then also tries it as an ID prefix.
        assert_eq!(tagged("e3b0c442"), "e3b0c442:latest");
    }
}
