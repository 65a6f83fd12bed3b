//! `strata commit`: a container's writable layer becomes one more layer on top of its image's.

use crate::image::{self, config, pack::PackOptions, Image, Store};

use super::state::Paths;
use super::Container;

/// Make a new image from `container`: its image's layers plus its upper directory as a new
/// layer (overlay whiteouts become OCI `.wh.` entries). Tagged `tag` (`name:tag`) if given,
/// else kept untagged. A running container is committed as its upper is at this moment.
pub fn commit(
    store: &Store,
    container: &Container,
    tag: Option<&str>,
    message: Option<&str>,
) -> image::Result<Image> {
    let base = store.resolve_pinned(&container.state.image).map_err(|e| match e {
        image::Error::NoSuchImage(_) | image::Error::BadReference(_) => image::Error::Invalid(format!(
            "container {} was not created from an image of the store ({}), or that image was removed",
            container.state.name, container.state.image
        )),
        e => e,
    })?;
    let root = container
        .dir()
        .parent()
        .and_then(|p| p.parent())
        .unwrap_or(container.dir());
    let upper = Paths::new(root, &container.state.id).upper();
    let layer = store.layer_from_dir(
        &upper,
        PackOptions {
            clamp_mtime: config::source_date_epoch(),
            skip_empty_top_dirs: super::RUNTIME_MOUNT_POINTS,
        },
    )?;
    let mut cfg = base.config.clone();
    let created = config::created_now();
    config::push_layer(
        &mut cfg,
        layer.diff_id.as_str(),
        &format!("strata commit {}", container.state.name),
        &created,
    )?;
    if let Some(m) = message {
        let mut h = cfg.history().clone().unwrap_or_default();
        if let Some(last) = h.last_mut() {
            last.set_comment(Some(m.to_string()));
        }
        cfg.set_history(Some(h));
    }
    let mut layers = base.layers()?;
    layers.push(layer);
    let img = store.write_image(&cfg, &layers)?;
    match tag {
        Some(t) => store.tag(&img, t)?,
        None => store.add_untagged(&img)?,
    }
    Ok(img)
}
