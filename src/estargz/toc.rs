//! The TOC document (`stargz.index.json`) as written on the wire: field names and omission
//! rules as stargz-snapshotter writes them, so TOCs interoperate both ways. Nothing here is
//! trusted: [`super::index`] checks it before anything is served from it.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The whole TOC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Toc {
    /// Format version (1).
    pub version: u32,
    /// One entry per tar entry (except the TOC itself) and per extra chunk of a large file.
    pub entries: Vec<TocEntry>,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// One TOC entry. Numbers that must not be negative are still read as signed, so a negative
/// one is a clear error of the index rather than a JSON error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    /// Path in the tar.
    pub name: String,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed size of a regular file.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub size: i64,
    /// Modification time, RFC 3339 in UTC.
    #[serde(rename = "modtime", default, skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    /// Target of a symlink or hard link.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Permission and mode bits.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub mode: i64,
    /// Owner.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub uid: u32,
    /// Group.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub gid: u32,
    /// Owner's name (informational).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    /// Group's name (informational).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    /// Blob offset of the gzip member holding this file's or chunk's data.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub offset: i64,
    /// Offset of the data inside the uncompressed member (several chunks may share one).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub inner_offset: i64,
    /// Major number of a device.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub dev_major: u32,
    /// Minor number of a device.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub dev_minor: u32,
    /// Extended attributes (values base64 on the wire, as Go encodes byte slices).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "xattr_values"
    )]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Digest of a regular file's whole contents.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Offset of this chunk in the file.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub chunk_offset: i64,
    /// Size of this chunk; zero for the last (or only) chunk of a file.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub chunk_size: i64,
    /// Digest of this chunk's uncompressed bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
}

/// Extended attribute values as base64 strings.
mod xattr_values {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        m: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let enc: BTreeMap<&String, String> = m
            .iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        enc.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let enc = BTreeMap::<String, String>::deserialize(d)?;
        enc.into_iter()
            .map(|(k, v)| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map(|v| (k, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reference_field_names() {
        let json = r#"{"version":1,"entries":[
            {"name":"bin/","type":"dir","modtime":"2019-08-20T10:30:43Z","mode":16877,"NumLink":0},
            {"name":"bin/busybox","type":"reg","size":833104,"modtime":"2019-06-12T17:52:45Z",
             "mode":493,"offset":126,"chunkSize":4194304,"chunkDigest":"sha256:aa",
             "digest":"sha256:bb","xattrs":{"user.a":"aGk="},"uid":1,"gid":2,
             "userName":"u","groupName":"g","innerOffset":5},
            {"name":"bin/busybox","type":"chunk","offset":9000,"chunkOffset":4194304,
             "chunkDigest":"sha256:cc"},
            {"name":"dev/null","type":"char","devMajor":1,"devMinor":3,"linkName":""}]}"#;
        let toc: Toc = serde_json::from_str(json).unwrap();
        let e = &toc.entries[1];
        assert_eq!((e.size, e.offset, e.inner_offset), (833104, 126, 5));
        assert_eq!((e.uid, e.gid, e.chunk_size), (1, 2, 4194304));
        assert_eq!(e.xattrs["user.a"], b"hi");
        assert_eq!(toc.entries[2].chunk_offset, 4194304);
        assert_eq!((toc.entries[3].dev_major, toc.entries[3].dev_minor), (1, 3));
        let again: Toc = serde_json::from_slice(&serde_json::to_vec(&toc).unwrap()).unwrap();
        assert_eq!(again, toc);
        let out = serde_json::to_string(&toc.entries[2]).unwrap();
        assert!(out.contains("\"chunkOffset\":4194304") && !out.contains("size"));
    }
}
