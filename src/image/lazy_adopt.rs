//! A lazy layer whose files are all here becomes an ordinary extracted layer of the store:
//! its directory moves to `layers/sha256/DIFFID`, where every image with that diff ID finds
//! it, so it must be what that diff ID says. The TOC does not hold the tar's headers, so the
//! diff ID can only be checked against the blob's own bytes: the blob streams through here
//! once (from the registry, at the next pull of the image), its digest and its diff ID are
//! computed as they pass, and the tar's TOC entry must be the TOC the directory was made
//! from (the one the descriptor's digest names). Only then is the blob kept and the directory
//! moved; anything else leaves the lazy layer as it was.
//!
//! The directory is moved, not copied, and a symbolic link takes its place (`lazy/HEX/root ->
//! ../../layers/sha256/DIFFID`), so containers that list the old path as a lower directory
//! (and daemons that have it open) keep working.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::digest::DigestReader;
use super::store::decompressed;
use super::{io_err, Digest, Error, LayerDesc, Result, Store};
use crate::estargz::TOC_NAME;

/// Whether `layer` has a lazy directory whose files are all here (and no extracted one);
/// it is then pinned for this process (garbage collection leaves it to the adoption).
pub fn ready(store: &Store, layer: &LayerDesc) -> bool {
    let Ok(Some(spec)) = super::lazy::pin_existing(store, layer) else {
        return false;
    };
    let root = spec.with_file_name("root");
    let is_link = std::fs::symlink_metadata(&root).is_ok_and(|m| m.file_type().is_symlink());
    if is_link
        || store
            .root()
            .join("layers/sha256")
            .join(layer.diff_id.hex())
            .is_dir()
    {
        return false;
    }
    matches!(super::lazy::local_bytes(&root), Ok((have, total)) if have == total)
}

/// Check the blob of `layer` as it streams from `blob` (raw, compressed) against the layer's
/// digest, diff ID and TOC digest; then run `verified` (given the blob's digest: a pull
/// commits the blob there) and move the lazy directory under `layers/`. Its new path.
pub fn adopt_stream(
    store: &Store,
    layer: &LayerDesc,
    blob: impl Read,
    verified: impl FnOnce(&Digest) -> Result<()>,
) -> Result<PathBuf> {
    let what = format!("layer {}", layer.digest);
    let toc: Digest = layer
        .toc_digest()
        .ok_or_else(|| Error::Invalid(format!("{what} is not eStargz")))?
        .parse()?;
    let spec = super::lazy::existing(store, layer)
        .ok_or_else(|| Error::Invalid(format!("{what} has no lazy directory")))?;
    let root = spec.with_file_name("root");
    let mut raw = DigestReader::new(blob);
    let checked = (|| -> Result<(Digest, usize)> {
        let mut tar = DigestReader::new(decompressed(
            io::BufReader::with_capacity(1 << 20, &mut raw),
            &what,
        )?);
        let tar_err = |e: io::Error| Error::Tar {
            what: format!("read {what}"),
            source: e,
        };
        let mut tocs = 0;
        {
            let mut ar = tar::Archive::new(&mut tar);
            for entry in ar.entries().map_err(tar_err)? {
                let mut entry = entry.map_err(tar_err)?;
                if &*entry.path_bytes() != TOC_NAME.as_bytes() {
                    continue;
                }
                let mut json = Vec::new();
                (&mut entry)
                    .take(crate::estargz::reader::MAX_TOC + 1)
                    .read_to_end(&mut json)
                    .map_err(tar_err)?;
                let found = Digest::of(&json);
                if found != toc {
                    return Err(Error::DigestMismatch {
                        what: format!("the TOC inside {what}"),
                        expected: toc.clone(),
                        found,
                    });
                }
                tocs += 1;
            }
        }
        io::copy(&mut tar, &mut io::sink()).map_err(tar_err)?;
        Ok((tar.finish().0, tocs))
    })();
    // The blob's digest is over all of it, whatever the decoder read.
    let drained = io::copy(&mut raw, &mut io::sink());
    let (blob_digest, _) = raw.finish();
    if blob_digest != layer.digest {
        // A stream that broke is the cause, not the digest.
        if let Err(e) = drained {
            return Err(io_err(format!("read {what}"))(e));
        }
        return Err(Error::DigestMismatch {
            what: what.clone(),
            expected: layer.digest.clone(),
            found: blob_digest,
        });
    }
    let (diff_id, tocs) = checked?;
    if diff_id != layer.diff_id {
        return Err(Error::DigestMismatch {
            what: format!("uncompressed {what}"),
            expected: layer.diff_id.clone(),
            found: diff_id,
        });
    }
    if tocs != 1 {
        return Err(Error::Invalid(format!(
            "{what}: {tocs} TOC entries in its tar (one expected)"
        )));
    }
    verified(&blob_digest)?;
    sync_dir(&root)?;
    let dest = store.root().join("layers/sha256").join(layer.diff_id.hex());
    let rel = Path::new("../../layers/sha256").join(layer.diff_id.hex());
    store.pins().locked(|p| {
        if !dest.is_dir() {
            std::fs::rename(&root, &dest).map_err(io_err(format!(
                "move {} to {}",
                root.display(),
                dest.display()
            )))?;
            std::os::unix::fs::symlink(&rel, &root)
                .map_err(io_err(format!("link {}", root.display())))?;
        }
        p.layer(&layer.diff_id)
    })?;
    Ok(dest)
}

fn sync_dir(dir: &Path) -> Result<()> {
    let d = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(format!("open {}", dir.display()))(e.into()))?;
    rustix::fs::syncfs(&d).map_err(|e| io_err(format!("sync {}", dir.display()))(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estargz::writer::tests::sample_tar;
    use crate::estargz::writer::{convert, Options};

    /// An eStargz blob of the sample tar (`chunk_size` bytes per chunk), its TOC digest and
    /// its diff ID.
    fn blob(chunk_size: u64) -> (Vec<u8>, String, Digest) {
        let tar = sample_tar();
        let mut out = Vec::new();
        let opts = Options {
            chunk_size,
            ..Options::default()
        };
        let w = convert(|| Ok(&tar[..]), &mut out, &opts).unwrap();
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut plain)
            .unwrap();
        (out, w.toc_digest.to_string(), Digest::of(&plain))
    }

    fn desc(blob: &[u8], toc: &str, diff_id: Digest) -> LayerDesc {
        LayerDesc {
            digest: Digest::of(blob),
            diff_id,
            size: blob.len() as u64,
            media_type: super::super::store::LAYER_TAR.into(),
            annotations: [(
                crate::estargz::TOC_DIGEST_ANNOTATION.to_string(),
                toc.into(),
            )]
            .into(),
        }
    }

    #[test]
    fn only_a_blob_with_the_right_digest_diff_id_and_toc_is_adopted() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let (a, toc_a, diff_a) = blob(crate::estargz::CHUNK_SIZE);
        let (b, toc_b, diff_b) = blob(40);
        assert_ne!(toc_a, toc_b);
        // The lazy directory of A (made from a local copy of its blob, then removed).
        let good = desc(&a, &toc_a, diff_a.clone());
        store.blobs().put(&a).unwrap();
        let spec = super::super::lazy::prepare(&store, &good).unwrap();
        std::fs::remove_file(store.blobs().path(&good.digest)).unwrap();
        let root = spec.with_file_name("root");
        let layers = t.path().join("layers/sha256");
        let untouched = |what: &str| {
            assert!(
                std::fs::symlink_metadata(&root).unwrap().is_dir(),
                "{what}: the lazy directory moved"
            );
            assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0, "{what}");
        };
        let never = |_: &Digest| -> Result<()> { panic!("a bad blob was accepted") };

        // A diff ID the blob does not have (an image claiming another layer's diff ID).
        let forged = desc(&a, &toc_a, diff_b.clone());
        let e = adopt_stream(&store, &forged, &a[..], never).unwrap_err();
        assert!(e.to_string().contains("uncompressed"), "{e}");
        untouched("forged diff ID");
        // Bytes that are not the blob.
        let e = adopt_stream(&store, &good, &b[..], never).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        untouched("other bytes");
        // Another blob, with its own digest and diff ID, claiming A's TOC: its tar's TOC is
        // not the one the directory was made from.
        let other = desc(&b, &toc_a, diff_b);
        let e = adopt_stream(&store, &other, &b[..], never).unwrap_err();
        assert!(e.to_string().contains("the TOC inside"), "{e}");
        untouched("another TOC");
        // A truncated stream.
        let e = adopt_stream(&store, &good, &a[..a.len() / 2], never).unwrap_err();
        assert!(!e.to_string().is_empty());
        untouched("truncated");

        // The real blob: checked, handed over, and the directory moved under layers/.
        let mut handed = None;
        let dest = adopt_stream(&store, &good, &a[..], |d| {
            handed = Some(d.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(handed, Some(good.digest.clone()));
        assert_eq!(dest, layers.join(diff_a.hex()));
        assert!(dest.is_dir());
        assert!(std::fs::symlink_metadata(&root)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::canonicalize(&root).unwrap(),
            dest.canonicalize().unwrap()
        );
    }
}
