//! Manifests as registries serve them: OCI image manifests and indexes, Docker schema 2
//! manifests and manifest lists. Kept as the exact bytes served (their digest is the
//! registry's), read for what strata needs: the config, the layers, an index's platforms.

use oci_spec::image::ImageIndex;

use super::client::{registry_message, Client};
use super::reference::Reference;
use super::{Error, Result};
use crate::image::archive::host_arch;
use crate::image::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest or index accepted (the distribution spec's suggested limit is 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its exact bytes.
    pub bytes: Vec<u8>,
    /// Their digest (checked against what was asked for or announced).
    pub digest: Digest,
    /// Its media type (from the document, else from `Content-Type`).
    pub media_type: String,
}

impl Fetched {
    /// Whether it is an index or manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }
}

/// The platform an image is wanted for: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// GOARCH name (`amd64`).
    pub arch: String,
    /// Variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            arch: host_arch().into(),
            variant: None,
        }
    }

    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty();
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(Error::Invalid(format!(
                "invalid platform {s:?}: expected OS/ARCH[/VARIANT]"
            ))),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The value of `Accept` for manifests: every type strata reads (registry 2.8 answers 404 to
/// an OCI manifest asked for without it).
pub fn accept() -> String {
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ")
}

/// The media type a manifest document names, if it names one.
fn declared_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let h: Head = serde_json::from_slice(bytes).ok()?;
    h.media_type
        .or_else(|| h.manifests.map(|_| OCI_INDEX.to_string()))
}

/// Fetch the manifest `r` names (its digest, else its tag) and check its digest: against the
/// one asked for, else against the `Docker-Content-Digest` the registry announced.
pub fn fetch(client: &Client, r: &Reference) -> Result<Fetched> {
    let what = format!("{r}: get manifest");
    let url = client.url(&format!(
        "/v2/{}/manifests/{}",
        r.repository,
        r.manifest_ref()
    ));
    let scope = format!("repository:{}:pull", r.repository);
    let mut resp = client.send(&what, &scope, |auth| {
        let mut req = client.agent().get(&url).header("Accept", accept());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call()
    })?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_MANIFEST + 1)
        .read_to_vec();
    let body = match body {
        Ok(b) => b,
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            return Err(Error::Invalid(format!(
                "{what}: the manifest is larger than {} MiB",
                MAX_MANIFEST >> 20
            )))
        }
        Err(e) => return Err(super::client::transport(&what, e)),
    };
    if !(200..300).contains(&status) {
        return Err(Error::Registry {
            what,
            status,
            message: registry_message(status, &body),
        });
    }
    if body.len() as u64 > MAX_MANIFEST {
        return Err(Error::Invalid(format!(
            "{what}: the manifest is larger than {} MiB",
            MAX_MANIFEST >> 20
        )));
    }
    let digest = Digest::of(&body);
    let announced = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    if let Some(expected) = r.digest.clone().or(announced) {
        if expected != digest {
            return Err(Error::DigestMismatch {
                what: format!("{r}: manifest"),
                expected,
                found: digest,
            });
        }
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let media_type = declared_type(&body)
        .or(content_type)
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    if ![OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].contains(&media_type.as_str()) {
        return Err(Error::Invalid(format!(
            "{r}: unsupported manifest type {media_type} (schema 1 and others are not pulled)"
        )));
    }
    Ok(Fetched {
        bytes: body,
        digest,
        media_type,
    })
}

/// The digest of the manifest for `want` in the index `index`, or an error listing the
/// platforms it has.
pub fn select(index: &Fetched, want: &Platform, reference: &str) -> Result<Digest> {
    let idx: ImageIndex = serde_json::from_slice(&index.bytes)
        .map_err(|e| Error::Invalid(format!("{reference}: bad image index: {e}")))?;
    let mut available = Vec::new();
    let mut fallback = None;
    for m in idx.manifests() {
        let Some(p) = m.platform() else { continue };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        let variant = p.variant().clone().filter(|v| !v.is_empty());
        available.push(match &variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
        if os != want.os || arch != want.arch {
            continue;
        }
        let digest: Digest = m
            .digest()
            .to_string()
            .parse()
            .map_err(|e| Error::Invalid(format!("{reference}: {e}")))?;
        match (&want.variant, &variant) {
            (Some(w), Some(v)) if w == v => return Ok(digest),
            (Some(_), _) => {}
            (None, _) => {
                // The first of a matching os/arch (docker takes the best variant; the host's
                // variant is not known here).
                return Ok(digest);
            }
        }
        if variant.is_none() && fallback.is_none() {
            fallback = Some(digest);
        }
    }
    if let Some(d) = fallback {
        return Ok(d);
    }
    available.dedup();
    Err(Error::NoPlatform {
        reference: reference.to_string(),
        wanted: want.to_string(),
        available: if available.is_empty() {
            "no platforms listed".into()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> Fetched {
        Fetched {
            bytes: json.as_bytes().to_vec(),
            digest: Digest::of(json.as_bytes()),
            media_type: OCI_INDEX.into(),
        }
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn platform_selection() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{A}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{B}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let i = index(&json);
        let p = |s| Platform::parse(s).unwrap();
        assert_eq!(select(&i, &p("linux/amd64"), "x").unwrap().as_str(), B);
        assert_eq!(select(&i, &p("linux/arm64"), "x").unwrap().as_str(), A);
        assert_eq!(select(&i, &p("linux/arm64/v8"), "x").unwrap().as_str(), A);
        let err = select(&i, &p("linux/s390x"), "x").unwrap_err().to_string();
        assert!(err.contains("linux/arm64/v8, linux/amd64"), "{err}");
        assert!(err.contains("linux/s390x"), "{err}");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
        assert_eq!(declared_type(json.as_bytes()).unwrap(), OCI_INDEX);
        assert_eq!(
            declared_type(format!(r#"{{"mediaType":"{DOCKER_LIST}"}}"#).as_bytes()).unwrap(),
            DOCKER_LIST
        );
    }
}
