//! `strata import`: a root filesystem (a tar, possibly gzip-compressed, or a directory) becomes
//! a one-layer image.

use std::fs::File;
use std::path::Path;

use super::pack::PackOptions;
use super::store::{Image, Store};
use super::{config, io_err, Result};

/// Import `source` as a one-layer image tagged `tag` (`name:tag`).
pub fn import(store: &Store, source: &Path, tag: &str) -> Result<Image> {
    let layer = if source.is_dir() {
        store.layer_from_dir(
            source,
            PackOptions {
                clamp_mtime: config::source_date_epoch(),
                ..Default::default()
            },
        )?
    } else {
        let f = File::open(source).map_err(io_err(format!("open {}", source.display())))?;
        store.layer_from_tar(f, &source.display().to_string())?
    };
    // Extract now: a tar that escapes its root or is corrupt fails here, before any tag.
    store.extracted(&layer)?;
    let created = config::created_now();
    let mut cfg = config::empty()?;
    config::push_layer(
        &mut cfg,
        layer.diff_id.as_str(),
        &format!("strata import {}", source.display()),
        &created,
    )?;
    let image = store.write_image(&cfg, &[layer])?;
    store.tag(&image, tag)?;
    Ok(image)
}
