//! Opening an eStargz blob through a [`BlobSource`]: read the footer, fetch and check the TOC,
//! build the [`Index`]; then read single chunks, each checked against its digest before it is
//! returned.

use std::io::{self, Read};

use flate2::read::GzDecoder;

use super::cache::ChunkCache;
use super::footer::{self, FOOTER_SIZE};
use super::index::{Chunk, Index};
use super::source::BlobSource;
use super::toc::Toc;
use super::{io_err, Error, Result, Sha256Digest, TOC_NAME};

/// Largest TOC accepted (uncompressed JSON).
pub const MAX_TOC: u64 = 256 << 20;

/// An opened eStargz blob.
pub struct Reader<S> {
    source: S,
    index: Index,
    toc_digest: Sha256Digest,
}

impl<S> std::fmt::Debug for Reader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("toc_digest", &self.toc_digest)
            .field("inodes", &self.index.len())
            .finish()
    }
}

/// Read the footer and TOC of the blob in `source`: the TOC, its digest and its offset.
/// With `expected`, a TOC with another digest is refused before it is parsed.
pub fn read_toc(
    source: &dyn BlobSource,
    expected: Option<&Sha256Digest>,
) -> Result<(Toc, Sha256Digest, u64)> {
    let what = source.describe();
    let size = source.size().map_err(io_err(format!("size of {what}")))?;
    if size < FOOTER_SIZE as u64 {
        return Err(Error::NotEstargz(format!("{what}: only {size} bytes")));
    }
    let foot = source
        .read_range(size - FOOTER_SIZE as u64, FOOTER_SIZE as u64)
        .map_err(io_err(format!("read the footer of {what}")))?;
    let toc_offset = footer::decode(&foot)?;
    let toc_end = size - FOOTER_SIZE as u64;
    if toc_offset >= toc_end {
        return Err(Error::BadToc(format!(
            "TOC offset {toc_offset} is past the end of the blob ({size} bytes)"
        )));
    }
    if toc_end - toc_offset > MAX_TOC {
        return Err(Error::BadToc(format!(
            "{} compressed bytes",
            toc_end - toc_offset
        )));
    }
    let member = source
        .read_range(toc_offset, toc_end - toc_offset)
        .map_err(io_err(format!("read the TOC of {what}")))?;
    let json = toc_json(&member)?;
    let digest = Sha256Digest::of(&json);
    if let Some(e) = expected {
        if e != &digest {
            return Err(Error::DigestMismatch {
                what: format!("TOC of {what}"),
                expected: e.clone(),
                found: digest,
            });
        }
    }
    let toc: Toc =
        serde_json::from_slice(&json).map_err(|e| Error::BadToc(format!("{what}: {e}")))?;
    Ok((toc, digest, toc_offset))
}

/// The TOC JSON inside its gzip member (a tar entry named [`TOC_NAME`]).
fn toc_json(member: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: String| Error::BadToc(why);
    let gz = GzDecoder::new(member).take(MAX_TOC + 4096);
    let mut ar = tar::Archive::new(gz);
    let mut entries = ar.entries().map_err(|e| bad(format!("TOC tar: {e}")))?;
    let mut entry = entries
        .next()
        .ok_or_else(|| bad("no TOC entry".into()))?
        .map_err(|e| bad(format!("TOC tar: {e}")))?;
    let path = entry.path_bytes();
    if &*path != TOC_NAME.as_bytes() {
        return Err(bad(format!(
            "TOC entry is named {:?}",
            String::from_utf8_lossy(&path)
        )));
    }
    let len = entry.size();
    if len > MAX_TOC {
        return Err(bad(format!("TOC of {len} bytes")));
    }
    let mut json = Vec::with_capacity(len as usize);
    entry
        .read_to_end(&mut json)
        .map_err(|e| bad(format!("TOC data: {e}")))?;
    if json.len() as u64 != len {
        return Err(bad("TOC is truncated".into()));
    }
    Ok(json)
}

/// The bytes of `chunk` from its gzip member (`member` holds the blob bytes from
/// `chunk.member` to `chunk.member_end`), checked against the chunk's digest.
pub fn decode_chunk(member: &[u8], chunk: &Chunk) -> Result<Vec<u8>> {
    let mut gz = GzDecoder::new(member);
    let short = |e: io::Error| Error::Io {
        what: format!("decompress the chunk at {}", chunk.member),
        source: e,
    };
    io::copy(&mut (&mut gz).take(chunk.inner), &mut io::sink()).map_err(short)?;
    let mut out = vec![0u8; chunk.size as usize];
    gz.read_exact(&mut out).map_err(short)?;
    chunk.digest.verify(&out, || {
        format!("chunk at {}+{} of the blob", chunk.member, chunk.inner)
    })?;
    Ok(out)
}

/// Decode `chunks` (in blob order, none before `start`) from `stream`, which yields the blob's
/// bytes from offset `start`: each gzip member is read as it arrives, its chunks verified, and
/// each given to `each` with its bytes before the next member is read. Bytes between members
/// are read and dropped.
pub fn stream_chunks<'c, E: From<Error>>(
    stream: &mut dyn Read,
    start: u64,
    chunks: impl IntoIterator<Item = &'c Chunk>,
    mut each: impl FnMut(&'c Chunk, Vec<u8>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut pos = start;
    let mut member: (u64, Vec<u8>) = (u64::MAX, Vec::new());
    for c in chunks {
        if c.member != member.0 {
            if c.member < pos || c.member_end < c.member {
                return Err(Error::BadToc(format!(
                    "the chunk at {} is out of order in the stream (at {pos})",
                    c.member
                ))
                .into());
            }
            let what = || format!("read the blob at {}", c.member);
            let gap = c.member - pos;
            let skipped =
                io::copy(&mut (&mut *stream).take(gap), &mut io::sink()).map_err(io_err(what()))?;
            let len = c.member_end - c.member;
            let mut buf = Vec::with_capacity(len as usize);
            (&mut *stream)
                .take(len)
                .read_to_end(&mut buf)
                .map_err(io_err(what()))?;
            if skipped != gap || buf.len() as u64 != len {
                return Err(io_err(what())(io::Error::from(io::ErrorKind::UnexpectedEof)).into());
            }
            pos = c.member_end;
            member = (c.member, buf);
        }
        let data = decode_chunk(&member.1, c)?;
        each(c, data)?;
    }
    Ok(())
}

impl<S: BlobSource> Reader<S> {
    /// Open the blob in `source`; with `expected`, its TOC must have that digest (the
    /// descriptor's [`super::TOC_DIGEST_ANNOTATION`]: always give it when serving a layer).
    pub fn open(source: S, expected: Option<&Sha256Digest>) -> Result<Reader<S>> {
        let (toc, toc_digest, toc_offset) = read_toc(&source, expected)?;
        let index = Index::from_toc(&toc, toc_offset)?;
        Ok(Reader {
            source,
            index,
            toc_digest,
        })
    }

    /// The checked TOC.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The digest of the TOC JSON.
    pub fn toc_digest(&self) -> &Sha256Digest {
        &self.toc_digest
    }

    /// The blob source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Fetch the member holding `chunk` and return its verified bytes.
    pub fn read_chunk(&self, chunk: &Chunk) -> Result<Vec<u8>> {
        let member = self
            .source
            .read_range(chunk.member, chunk.member_end - chunk.member)
            .map_err(io_err(format!(
                "read {} bytes at {} of {}",
                chunk.member_end - chunk.member,
                chunk.member,
                self.source.describe()
            )))?;
        decode_chunk(&member, chunk)
    }

    /// The verified bytes of `chunk`, from `cache` when it has them, else fetched and cached.
    pub fn read_chunk_cached(&self, cache: &ChunkCache, chunk: &Chunk) -> Result<Vec<u8>> {
        cache.get_or_fetch(&chunk.digest, || self.read_chunk(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estargz::writer::tests::{sample_tar, MemSource};
    use crate::estargz::writer::{convert, Options};

    fn blob() -> (Vec<u8>, Sha256Digest) {
        let tar = sample_tar();
        let mut out = Vec::new();
        let w = convert(|| Ok(&tar[..]), &mut out, &Options::default()).unwrap();
        (out, w.toc_digest)
    }

    /// A source that counts the bytes read from it.
    struct Counting(MemSource, std::sync::atomic::AtomicU64);

    impl crate::estargz::BlobSource for Counting {
        fn size(&self) -> io::Result<u64> {
            self.0.size()
        }
        fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.1.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            self.0.read_range(offset, len)
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    #[test]
    fn the_cache_is_shared_by_layers_with_the_same_chunks() {
        let t = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(t.path()).unwrap();
        let (b, toc) = blob();
        let r1 = Reader::open(
            Counting(MemSource(b.clone()), Default::default()),
            Some(&toc),
        )
        .unwrap();
        // Another layer holding the same big file under another name and chunking.
        let mut other = tar::Builder::new(Vec::new());
        let big = {
            let ix = r1.index();
            let n = ix.node(ix.lookup_path("usr/lib/big.so").unwrap());
            let mut v = Vec::new();
            for c in &n.chunks {
                v.extend(r1.read_chunk(c).unwrap());
            }
            v
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        other
            .append_data(&mut h, "elsewhere/big.so", &big[..])
            .unwrap();
        let other = other.into_inner().unwrap();
        let mut b2 = Vec::new();
        let w2 = convert(|| Ok(&other[..]), &mut b2, &Options::default()).unwrap();
        let r2 = Reader::open(
            Counting(MemSource(b2), Default::default()),
            Some(&w2.toc_digest),
        )
        .unwrap();
        let n2 = r2
            .index()
            .node(r2.index().lookup_path("elsewhere/big.so").unwrap());
        assert_eq!(n2.chunks.len(), 1);
        let before = r2.source().1.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(r2.read_chunk_cached(&cache, &n2.chunks[0]).unwrap(), big);
        let fetched = r2.source().1.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(fetched > 0);
        // The first layer's reader with the default chunking has the same single chunk.
        let ix = r1.index();
        let n1 = ix.node(ix.lookup_path("usr/lib/big.so").unwrap());
        assert_eq!(n1.chunks[0].digest, n2.chunks[0].digest);
        let before = r1.source().1.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(r1.read_chunk_cached(&cache, &n1.chunks[0]).unwrap(), big);
        assert_eq!(
            r1.source().1.load(std::sync::atomic::Ordering::Relaxed),
            before
        );
        assert_eq!(cache.usage().unwrap().chunks, 1);
    }

    #[test]
    fn chunks_stream_from_one_read_skipping_gaps_and_a_short_stream_is_an_error() {
        let (b, toc) = blob();
        let r = Reader::open(MemSource(b.clone()), Some(&toc)).unwrap();
        // Every other chunk, from one stream of the blob's data: the ones between are read
        // and dropped.
        let chunks: Vec<&Chunk> = r.index().all_chunks().into_iter().step_by(2).collect();
        assert!(chunks.len() >= 2);
        let start = chunks[0].member;
        let end = chunks.last().unwrap().member_end;
        let mut stream = &b[start as usize..end as usize];
        let mut got = Vec::new();
        stream_chunks(&mut stream, start, chunks.iter().copied(), |c, bytes| {
            got.push((c.clone(), bytes));
            Ok::<(), Error>(())
        })
        .unwrap();
        assert_eq!(got.len(), chunks.len());
        for (c, bytes) in &got {
            assert_eq!(bytes, &r.read_chunk(c).unwrap());
        }
        // Cut short: the chunks before the cut arrive, then an error.
        let mut cut = &b[start as usize..(end - 1) as usize];
        let mut n = 0;
        let e = stream_chunks(&mut cut, start, chunks.iter().copied(), |_, _| {
            n += 1;
            Ok::<(), Error>(())
        });
        assert!(e.is_err());
        assert_eq!(n, chunks.len() - 1);
        // Out of order: refused.
        let mut whole = &b[start as usize..end as usize];
        let backwards = [chunks[1], chunks[0]];
        assert!(stream_chunks(&mut whole, start, backwards, |_, _| Ok::<(), Error>(())).is_err());
    }

    #[test]
    fn a_toc_with_another_digest_is_refused() {
        let (b, _) = blob();
        let other = Sha256Digest::of(b"another toc");
        match Reader::open(MemSource(b), Some(&other)) {
            Err(Error::DigestMismatch { expected, .. }) => assert_eq!(expected, other),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_corrupt_chunk_is_never_returned() {
        let (mut b, toc) = blob();
        let r = Reader::open(MemSource(b.clone()), Some(&toc)).unwrap();
        let ino = r.index().lookup_path("etc/hostname").unwrap();
        let chunk = r.index().node(ino).chunks[0].clone();
        assert_eq!(r.read_chunk(&chunk).unwrap(), b"strata\n");
        // Replace the chunk's member with a valid gzip member of other bytes.
        let mut evil = Vec::new();
        {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(&mut evil, flate2::Compression::fast());
            gz.write_all(b"evil!!!").unwrap();
            gz.finish().unwrap();
        }
        let span = (chunk.member_end - chunk.member) as usize;
        let start = chunk.member as usize;
        let mut member = evil;
        member.resize(span, 0);
        b[start..start + span].copy_from_slice(&member);
        let r = Reader::open(MemSource(b.clone()), Some(&toc)).unwrap();
        assert!(matches!(
            r.read_chunk(&chunk),
            Err(Error::DigestMismatch { .. })
        ));
        // Garbage instead of gzip: an error too.
        b[start..start + span].fill(0x55);
        let r = Reader::open(MemSource(b), Some(&toc)).unwrap();
        assert!(r.read_chunk(&chunk).is_err());
    }

    #[test]
    fn broken_blobs_are_clear_errors() {
        let (b, toc) = blob();
        // An ordinary gzip (no footer).
        let mut plain = Vec::new();
        {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(&mut plain, flate2::Compression::fast());
            gz.write_all(&sample_tar()).unwrap();
            gz.finish().unwrap();
        }
        assert!(matches!(
            Reader::open(MemSource(plain), None),
            Err(Error::NotEstargz(_))
        ));
        assert!(matches!(
            Reader::open(MemSource(b[..40].to_vec()), None),
            Err(Error::NotEstargz(_))
        ));
        // A footer pointing past the end.
        let mut past = b.clone();
        let n = past.len();
        past[n - 51..].copy_from_slice(&crate::estargz::footer::encode(n as u64));
        assert!(matches!(
            Reader::open(MemSource(past), None),
            Err(Error::BadToc(m)) if m.contains("past the end")
        ));
        // A footer pointing into file data: no TOC there.
        let mut wrong = b.clone();
        wrong[n - 51..].copy_from_slice(&crate::estargz::footer::encode(0));
        assert!(Reader::open(MemSource(wrong), Some(&toc)).is_err());
        // A truncated blob.
        let mut cut = b[..n / 2].to_vec();
        cut.extend_from_slice(&b[n - 51..]);
        assert!(Reader::open(MemSource(cut), Some(&toc)).is_err());
    }
}
