//! `import`: a rootfs tarball (plain or gzip) becomes a one-layer image.

use std::io::Read;

use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

use super::{format_rfc3339, parse_digest, ImageError, ImageStore, ImageSummary};
use crate::snapshot::Snapshots;

/// The most bytes a decompressed rootfs may have.
pub const MAX_ROOTFS_BYTES: u64 = 16 << 30;

/// The PATH every imported image gets, as Docker's.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn spec_err(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageError + '_ {
    move |source| ImageError::Spec {
        what: what.to_string(),
        source,
    }
}

/// Imports a rootfs tarball as `reference`, returning the new image.
pub fn import_rootfs(
    store: &ImageStore,
    snapshots: &Snapshots,
    reference: &str,
    data: &[u8],
    now_ms: i64,
) -> Result<ImageSummary, ImageError> {
    let tar = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .take(MAX_ROOTFS_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| ImageError::Archive(format!("the gzip stream is damaged: {e}")))?;
        if out.len() as u64 > MAX_ROOTFS_BYTES {
            return Err(ImageError::Archive(format!(
                "the rootfs is larger than {MAX_ROOTFS_BYTES} bytes uncompressed"
            )));
        }
        out
    } else {
        data.to_vec()
    };
    if tar.len() < 512 {
        return Err(ImageError::Archive(
            "the rootfs tarball is empty or truncated".into(),
        ));
    }
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    // Unpack first: an archive that is refused leaves no blob behind.
    snapshots.unpack(&diff_id, tar.as_slice())?;
    let layer_digest = store.put_blob(&tar)?;
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
                .diff_ids(vec![diff_id.clone()])
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
    let config_digest = store.put_blob(&config_json)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(parse_digest(&config_digest)?)
                .size(config_json.len() as u64)
                .build()
                .map_err(spec_err("config descriptor"))?,
        )
        .layers(vec![DescriptorBuilder::default()
            .media_type(MediaType::ImageLayer)
            .digest(parse_digest(&layer_digest)?)
            .size(tar.len() as u64)
            .build()
            .map_err(spec_err("layer descriptor"))?])
        .build()
        .map_err(spec_err("manifest"))?;
    let manifest_json =
        serde_json::to_vec(&manifest).map_err(|e| ImageError::Archive(e.to_string()))?;
    let manifest_digest = store.put_blob(&manifest_json)?;
    store.set_ref(
        reference,
        DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(parse_digest(&manifest_digest)?)
            .size(manifest_json.len() as u64)
            .build()
            .map_err(spec_err("manifest descriptor"))?,
    )?;
    Ok(ImageSummary {
        id: config_digest,
        tags: vec![reference.to_string()],
        size: tar.len() as u64,
        created_ms: now_ms,
    })
}
