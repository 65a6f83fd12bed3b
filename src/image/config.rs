//! Image configs as strata writes them: platform, `rootfs.diff_ids` and `history` kept in step.

use oci_spec::image::{
    Arch, ConfigBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, Os,
    RootFsBuilder,
};

use super::archive::host_arch;
use super::{Error, Result};

/// The time to record as "created": `SOURCE_DATE_EPOCH` when set (reproducible builds), else
/// now; RFC 3339 in UTC.
pub fn created_now() -> String {
    let t = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .unwrap_or_else(std::time::SystemTime::now);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `SOURCE_DATE_EPOCH`, if set: file times in new layers are clamped to it.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// An empty config for this machine's platform (what `FROM scratch` starts from).
pub fn empty() -> Result<ImageConfiguration> {
    ImageConfigurationBuilder::default()
        .architecture(Arch::from(host_arch()))
        .os(Os::Linux)
        .config(ConfigBuilder::default().build().map_err(spec_err)?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(Vec::<String>::new())
                .build()
                .map_err(spec_err)?,
        )
        .history(Vec::new())
        .build()
        .map_err(spec_err)
}

fn spec_err(e: oci_spec::OciSpecError) -> Error {
    Error::Invalid(format!("image config: {e}"))
}

/// Record a new layer with digest `diff_id` made by `created_by`.
pub fn push_layer(
    config: &mut ImageConfiguration,
    diff_id: &str,
    created_by: &str,
    created: &str,
) -> Result<()> {
    let mut rootfs = config.rootfs().clone();
    let mut ids = rootfs.diff_ids().clone();
    ids.push(diff_id.to_string());
    rootfs.set_diff_ids(ids);
    config.set_rootfs(rootfs);
    push_history(config, created_by, created, false)
}

/// Record a history entry; `empty_layer` for instructions that only change the config.
pub fn push_history(
    config: &mut ImageConfiguration,
    created_by: &str,
    created: &str,
    empty_layer: bool,
) -> Result<()> {
    let mut b = HistoryBuilder::default()
        .created(created.to_string())
        .created_by(created_by.to_string());
    if empty_layer {
        b = b.empty_layer(true);
    }
    let mut h = config.history().clone().unwrap_or_default();
    h.push(b.build().map_err(spec_err)?);
    config.set_history(Some(h));
    config.set_created(Some(created.to_string()));
    Ok(())
}
