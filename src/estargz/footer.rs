//! The 51-byte eStargz footer: an empty gzip member whose extra field (subfield `SG`) holds
//! the TOC's offset as 16 hex digits followed by `STARGZ`. Being a valid (empty) gzip member,
//! it leaves the blob a valid gzip stream.

use super::{Error, Result};

/// Size of the footer.
pub const FOOTER_SIZE: usize = 51;

/// gzip header: magic, deflate, FEXTRA set, no mtime, no extra flags, OS "unknown".
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff];
/// Length of the extra field: subfield id (2), subfield length (2), payload (22).
const XLEN: u16 = 26;
/// Length of the subfield payload: 16 hex digits and `STARGZ`.
const SUBFIELD_LEN: u16 = 22;
/// An empty final stored deflate block (BFINAL=1, LEN=0, NLEN=0xffff).
const EMPTY_DEFLATE: [u8; 5] = [1, 0, 0, 0xff, 0xff];

/// The footer of a blob whose TOC starts (its gzip member) at `toc_offset`.
pub fn encode(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut out = [0u8; FOOTER_SIZE];
    out[..10].copy_from_slice(&HEADER);
    out[10..12].copy_from_slice(&XLEN.to_le_bytes());
    out[12] = b'S';
    out[13] = b'G';
    out[14..16].copy_from_slice(&SUBFIELD_LEN.to_le_bytes());
    out[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    out[38..43].copy_from_slice(&EMPTY_DEFLATE);
    // CRC-32 and size of the empty payload: both zero (already).
    out
}

/// The TOC offset a footer holds; an error unless `footer` is exactly an eStargz footer.
pub fn decode(footer: &[u8]) -> Result<u64> {
    let bad = |why: &str| Error::NotEstargz(format!("footer: {why}"));
    if footer.len() != FOOTER_SIZE {
        return Err(bad("too short"));
    }
    if footer[..4] != HEADER[..4] {
        return Err(bad("not a gzip member with an extra field"));
    }
    if u16::from_le_bytes([footer[10], footer[11]]) != XLEN
        || &footer[12..14] != b"SG"
        || u16::from_le_bytes([footer[14], footer[15]]) != SUBFIELD_LEN
        || &footer[32..38] != b"STARGZ"
    {
        return Err(bad("no STARGZ subfield"));
    }
    if footer[38..43] != EMPTY_DEFLATE || footer[43..] != [0; 8] {
        return Err(bad("not an empty gzip member"));
    }
    let hex = std::str::from_utf8(&footer[16..32]).map_err(|_| bad("offset is not hex"))?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("offset is not hex"));
    }
    u64::from_str_radix(hex, 16).map_err(|_| bad("offset is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_and_is_an_empty_gzip_member() {
        let f = encode(0x1234_5678_9abc);
        assert_eq!(decode(&f).unwrap(), 0x1234_5678_9abc);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn rejects_other_bytes() {
        let f = encode(7);
        for i in [0, 3, 12, 14, 20, 33, 40, 50] {
            let mut g = f;
            g[i] ^= 0x40;
            assert!(decode(&g).is_err(), "byte {i}");
        }
        assert!(decode(&f[1..]).is_err());
    }
}
