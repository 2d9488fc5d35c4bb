//! `import`: a rootfs tarball (plain or gzip) becomes a one-layer image.

use oci_spec::image::{
    Arch, ConfigBuilder, HistoryBuilder, ImageConfigurationBuilder, Os, RootFsBuilder,
};

use super::layer::{self, Expected};
use super::{format_rfc3339, load, ImageError, ImageStore, ImageSummary};
use crate::snapshot::Snapshots;

/// The PATH every imported image gets, as Docker's.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn spec_err(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageError + '_ {
    move |source| ImageError::Spec {
        what: what.to_string(),
        source,
    }
}

/// Imports a rootfs tarball as `reference`, returning the new image. The
/// tarball goes through the same layer ingest as `load` (streamed, gzip or
/// zstd or plain, checked, unpacked once) and the image is recorded the
/// same way.
pub fn import_rootfs(
    store: &ImageStore,
    snapshots: &Snapshots,
    reference: &str,
    data: impl std::io::Read,
    now_ms: i64,
) -> Result<ImageSummary, ImageError> {
    let _writing = store.write_lock();
    let staging = store.staging_dir()?;
    let expected = Expected {
        what: "the rootfs tarball".into(),
        ..Default::default()
    };
    let mut progress = layer::Progress::default();
    let layer = layer::ingest(
        store,
        snapshots,
        data,
        &expected,
        staging.path(),
        &mut progress,
    )?;
    if layer.size < 512 {
        let _ = store.undo_unpacked(snapshots, &progress.unpacked);
        return Err(ImageError::Archive(
            "the rootfs tarball is empty or truncated".into(),
        ));
    }
    let created = format_rfc3339(now_ms);
    let config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec![DEFAULT_PATH.to_string()])
                .build()
                .map_err(spec_err("config"))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer.diff_id.clone()])
                .build()
                .map_err(spec_err("rootfs"))?,
        )
        .history(vec![HistoryBuilder::default()
            .created(created)
            .created_by("berth import")
            .comment("Imported from tarball")
            .build()
            .map_err(spec_err("history"))?])
        .build()
        .map_err(spec_err("config"))?;
    let config_json =
        serde_json::to_vec(&config).map_err(|e| ImageError::Archive(e.to_string()))?;
    load::commit_image(
        store,
        &config_json,
        &config,
        &[layer],
        &[reference.to_string()],
    )
}
