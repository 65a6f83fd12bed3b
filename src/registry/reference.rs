//! Registry references in docker's grammar and normalisation: `alpine` is
//! `docker.io/library/alpine:latest`, `host:port/a/b:tag`, `name@sha256:…`, `name:tag@sha256:…`.

use std::fmt;

use super::{Error, Result};
use crate::image::reference::validate_name;
use crate::image::Digest;

/// docker hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host docker hub's registry API answers on.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A fully qualified reference to an image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host, with its port if any (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path in the registry (`library/alpine`).
    pub repository: String,
    /// Tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<String>,
    /// Manifest digest (wins over the tag when both are given, as in docker).
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parse and normalise `s`.
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| Error::BadReference(format!("{s:?}: {why}"));
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the digest must be sha256: and 64 hex digits"))?,
                ),
            ),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let b = t.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 128
                && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad(&format!("{t:?} is not a valid tag")));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.bytes().any(|b| b.is_ascii_uppercase()) && registry == DOCKER_HUB {
            return Err(bad("upper-case letters in the name"));
        }
        validate_name(&format!("{registry}/{repository}")).map_err(|w| bad(&w))?;
        let tag = match (&tag, &digest) {
            (None, None) => Some(crate::image::reference::DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) to talk to: docker hub's API lives on another host than its name.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest if there is one, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => crate::image::reference::DEFAULT_TAG.to_string(),
        }
    }

    /// The name as docker shows it: `alpine` for `docker.io/library/alpine`, `user/app` for
    /// `docker.io/user/app`, the full name for other registries.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix("library/") {
                Some(n) if !n.contains('/') => n.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// The store tag (`familiar_name:tag`) a pull of this reference records, if it has a tag.
    pub fn store_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{t}", self.familiar_name()))
    }

    /// The same repository at another tag or digest.
    pub fn with_digest(&self, d: &Digest) -> Reference {
        Reference {
            digest: Some(d.clone()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The registry a `login`/`logout` argument names: a host, `host:port`, or a URL
/// (`https://host/v1/` as docker writes them); docker hub's names all become `docker.io`.
pub fn registry_host(s: &str) -> Result<String> {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or_default();
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(Error::BadReference(format!("{s:?}: not a registry host")));
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(full("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(full("index.docker.io/user/app:1"), "docker.io/user/app:1");
        assert_eq!(full("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5100/a/b:v2"), "localhost:5100/a/b:v2");
        assert_eq!(full("quay.io/org/x"), "quay.io/org/x:latest");
        assert_eq!(
            full(&format!("alpine@sha256:{HEX}")),
            format!("docker.io/library/alpine@sha256:{HEX}")
        );
        let r = Reference::parse(&format!("127.0.0.1:5100/app:1@sha256:{HEX}")).unwrap();
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(r.store_tag().unwrap(), "127.0.0.1:5100/app:1");
        assert_eq!(
            Reference::parse("alpine").unwrap().store_tag().unwrap(),
            "alpine:latest"
        );
        assert_eq!(
            Reference::parse("user/app:2").unwrap().store_tag().unwrap(),
            "user/app:2"
        );
        assert_eq!(
            Reference::parse("alpine").unwrap().api_host(),
            "registry-1.docker.io"
        );
        for bad in [
            "",
            "Alpine",
            "a:",
            "a@sha256:12",
            "a//b",
            "-a",
            "host:port/x",
            "a:b:c",
            "a b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn login_hosts() {
        assert_eq!(
            registry_host("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(registry_host("localhost:5100").unwrap(), "localhost:5100");
        assert_eq!(registry_host("quay.io").unwrap(), "quay.io");
        assert!(registry_host("").is_err());
        assert!(registry_host("a b").is_err());
    }
}
