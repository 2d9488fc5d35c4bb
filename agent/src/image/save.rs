//! `save`: images to one archive that is both an OCI image layout
//! (oci-layout, index.json, blobs/sha256) and a `docker save` archive
//! (manifest.json, repositories), as Docker 25 and later write them.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use serde_json::json;

use super::{ImageError, ImageStore, REF_ANNOTATION};

/// Writes the images named by `refs` (references or ids) to `out`.
pub fn save_archive(
    store: &ImageStore,
    refs: &[String],
    out: impl Write,
) -> Result<(), ImageError> {
    let mut tar = tar::Builder::new(out);
    let io = |e: std::io::Error| ImageError::Archive(format!("writing the archive: {e}"));
    let mut blobs: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut index_manifests = Vec::new();
    let mut docker_manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in refs {
        let img = store.resolve(r)?;
        let manifest_size = store
            .open_blob(&img.manifest_digest)?
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        let named: Vec<String> = if img.refs.iter().any(|x| x == r) {
            vec![r.clone()]
        } else {
            Vec::new()
        };
        let mut desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest,
            "size": manifest_size,
        });
        if let Some(name) = named.first() {
            desc["annotations"] = json!({
                REF_ANNOTATION: name,
                "io.containerd.image.name": name,
            });
        }
        index_manifests.push(desc);
        let layer_paths: Vec<String> = img
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", l.digest().digest()))
            .collect();
        docker_manifest.push(json!({
            "Config": format!("blobs/sha256/{}", img.id.trim_start_matches("sha256:")),
            "RepoTags": named,
            "Layers": layer_paths,
        }));
        for name in &named {
            if let (Some((repo, tag)), Some(top)) = (name.rsplit_once(':'), img.diff_ids.last()) {
                repositories.entry(repo.to_string()).or_default().insert(
                    tag.to_string(),
                    top.trim_start_matches("sha256:").to_string(),
                );
            }
        }
        for d in std::iter::once(img.manifest_digest.clone())
            .chain(std::iter::once(img.id.clone()))
            .chain(img.layers.iter().map(|l| l.digest().to_string()))
        {
            if seen.insert(d.clone()) {
                blobs.push(d);
            }
        }
    }
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, dir, std::io::empty()).map_err(io)?;
    }
    append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    for d in &blobs {
        let mut f = store.open_blob(d)?;
        let len = f.metadata().map_err(io)?.len();
        let mut h = header(tar::EntryType::Regular, 0o644, len);
        let name = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        tar.append_data(&mut h, name, &mut f).map_err(io)?;
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_manifests,
    });
    append_bytes(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).unwrap_or_default(),
    )
    .map_err(io)?;
    append_bytes(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec(&docker_manifest).unwrap_or_default(),
    )
    .map_err(io)?;
    if !repositories.is_empty() {
        append_bytes(
            &mut tar,
            "repositories",
            &serde_json::to_vec(&repositories).unwrap_or_default(),
        )
        .map_err(io)?;
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)?;
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    tar.append_data(&mut h, name, data)
}
