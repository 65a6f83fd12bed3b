//! eStargz images in the store: converting an image's layers to eStargz (`strata convert
//! --estargz`), with the TOC digest in each layer descriptor's annotations and the new diff
//! IDs in the config.

use std::collections::BTreeMap;
use std::io::BufReader;

use crate::estargz::{self as esgz, writer};

use super::store::{decompressed, LAYER_GZIP};
use super::{Digest, Error, Image, LayerDesc, Result, Store};

/// Whether `layer` is already eStargz: its descriptor names a TOC digest and its blob ends in
/// an eStargz footer.
fn is_estargz(store: &Store, layer: &LayerDesc) -> bool {
    if layer.toc_digest().is_none() {
        return false;
    }
    let Ok(src) = esgz::FileSource::open(&store.blobs().path(&layer.digest)) else {
        return false;
    };
    esgz::reader::read_toc(&src, None).is_ok()
}

/// Convert one layer to an eStargz blob in the store.
pub fn convert_layer(
    store: &Store,
    layer: &LayerDesc,
    opts: &writer::Options,
) -> Result<LayerDesc> {
    let what = format!("layer {}", layer.digest);
    // The writer stops at the tar's end, before a verifying reader would have checked the
    // digest: check it first, so a corrupt blob is never converted into a valid-looking one.
    store.blobs().verify(&layer.digest)?;
    let open = || -> std::io::Result<Box<dyn std::io::Read>> {
        let blob = store
            .blobs()
            .open_blob(&layer.digest)
            .map_err(std::io::Error::other)?;
        decompressed(BufReader::with_capacity(1 << 20, blob), &what).map_err(std::io::Error::other)
    };
    let mut out = store.blobs().writer()?;
    let written = writer::convert(open, &mut out, opts).map_err(|source| Error::Estargz {
        what: what.clone(),
        source,
    })?;
    let (digest, size) = out.commit(None)?;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        esgz::TOC_DIGEST_ANNOTATION.to_string(),
        written.toc_digest.to_string(),
    );
    annotations.insert(
        esgz::UNCOMPRESSED_SIZE_ANNOTATION.to_string(),
        written.uncompressed_size.to_string(),
    );
    Ok(LayerDesc {
        digest,
        diff_id: written.diff_id.as_str().parse::<Digest>()?,
        size,
        media_type: LAYER_GZIP.to_string(),
        annotations,
    })
}

/// A new image: `image` with every layer in eStargz form (layers that already are stay as
/// they are) and the config's diff IDs updated; not tagged yet.
pub fn convert_image(store: &Store, image: &Image, opts: &writer::Options) -> Result<Image> {
    let mut layers = Vec::new();
    for layer in image.layers()? {
        if is_estargz(store, &layer) {
            layers.push(layer);
        } else {
            layers.push(convert_layer(store, &layer, opts)?);
        }
    }
    let mut config = image.config.clone();
    let mut rootfs = config.rootfs().clone();
    rootfs.set_diff_ids(layers.iter().map(|l| l.diff_id.to_string()).collect());
    config.set_rootfs(rootfs);
    store.write_image(&config, &layers)
}
