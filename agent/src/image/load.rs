//! `load`: images from an archive, either as `docker save` writes them
//! (manifest.json, config JSON, layer tars) or as an OCI image layout
//! (oci-layout, index.json, blobs/sha256). Nothing in the archive is
//! trusted: paths stay inside it, every digest, size and diff id is
//! checked, and a refused archive leaves nothing in the store but blobs
//! it already had.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageConfiguration, ImageIndex, ImageManifest,
    ImageManifestBuilder, MediaType,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::layer::{self, Expected, Progress};
use super::limits::{ArchiveLimits, Checked, LimitError};
use super::{parse_digest, ImageError, ImageStore, ImageSummary};
use crate::snapshot::Snapshots;

/// The most bytes a JSON file of an archive (manifest, config, index) may have.
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// How many symlinks in a row an archive path may go through.
const MAX_LINK_HOPS: usize = 8;

/// Loads every image of an archive and returns them.
pub fn load_archive(
    store: &ImageStore,
    snapshots: &Snapshots,
    src: impl Read,
) -> Result<Vec<ImageSummary>, ImageError> {
    let _writing = store.write_lock();
    let staging = store.staging_dir()?;
    let staged = Staged::extract(src, staging.path(), store.limits())?;
    let mut progress = Progress::default();
    let loaded = if staged.exists("manifest.json")? {
        load_docker(store, snapshots, &staged, staging.path(), &mut progress)
    } else if staged.exists("index.json")? {
        load_oci(store, snapshots, &staged, staging.path(), &mut progress)
    } else {
        Err(ImageError::Archive(
            "not an image archive: it has neither manifest.json (docker save) nor index.json (an OCI layout)".into(),
        ))
    };
    if loaded.is_err() {
        // The images named before the failure stay; the layers unpacked
        // for the one that failed go.
        let _ = store.undo_unpacked(snapshots, &progress.unpacked);
    }
    loaded
}

fn archive_err(msg: impl Into<String>) -> ImageError {
    ImageError::Archive(msg.into())
}

/// Normalizes an archive path: no root, no `..`, no `.`.
fn normalize(path: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(archive_err(format!(
                    "{} climbs out of the archive with ..",
                    path.display()
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(archive_err(format!(
                    "{} is an absolute path",
                    path.display()
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(archive_err(format!(
            "{:?} names no file",
            path.display().to_string()
        )));
    }
    Ok(out)
}

/// Resolves a symlink target relative to the link's directory, refusing
/// anything that leaves the archive.
fn resolve_link(link: &Path, target: &Path) -> Result<PathBuf, ImageError> {
    if target.is_absolute() {
        return Err(archive_err(format!(
            "{} is a symlink to the absolute path {}",
            link.display(),
            target.display()
        )));
    }
    let mut out: Vec<std::ffi::OsString> = link
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(archive_err(format!(
                        "{} is a symlink out of the archive ({})",
                        link.display(),
                        target.display()
                    )));
                }
            }
            _ => {
                return Err(archive_err(format!(
                    "{} has a strange symlink target",
                    link.display()
                )))
            }
        }
    }
    Ok(out.iter().collect())
}

/// Refuses an image with more layers than the store allows.
fn check_layer_count(limits: &ArchiveLimits, what: &str, count: usize) -> Result<(), ImageError> {
    if count > limits.max_layers {
        return Err(ImageError::Limit {
            what: what.to_string(),
            source: LimitError::Layers {
                count,
                limit: limits.max_layers,
            },
        });
    }
    Ok(())
}

/// An archive extracted into a staging directory: regular files only, with
/// links kept as a map rather than made on disk.
struct Staged {
    root: PathBuf,
    links: HashMap<PathBuf, PathBuf>,
}

impl Staged {
    /// Extracts an archive, checked against `limits` as it streams.
    fn extract(src: impl Read, root: &Path, limits: &ArchiveLimits) -> Result<Self, ImageError> {
        let mut archive = tar::Archive::new(Checked::new(
            src,
            limits.archive(),
            root,
            limits.min_free_bytes,
        ));
        let staged = Self::extract_from(&mut archive, root);
        // A refusal of the check reaches the tar reader as an I/O error;
        // the typed refusal is the one to report.
        match archive.into_inner().refused() {
            Some(source) => Err(ImageError::Limit {
                what: "the archive".into(),
                source,
            }),
            None => staged,
        }
    }

    fn extract_from<R: Read>(
        archive: &mut tar::Archive<R>,
        root: &Path,
    ) -> Result<Self, ImageError> {
        let mut links = HashMap::new();
        let entries = archive
            .entries()
            .map_err(|e| archive_err(format!("not a readable tar archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| archive_err(format!("not a readable tar archive: {e}")))?;
            let raw = entry
                .path()
                .map_err(|e| archive_err(format!("an entry has an unreadable path: {e}")))?
                .into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            let path = normalize(&raw)?;
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| archive_err(format!("{}: {e}", raw.display())))?
                    .ok_or_else(|| archive_err(format!("{} is a link to nothing", raw.display())))?
                    .into_owned();
                let resolved = if kind.is_symlink() {
                    resolve_link(&path, &target)?
                } else {
                    normalize(&target)?
                };
                links.insert(path, resolved);
                continue;
            }
            if !kind.is_file() {
                return Err(archive_err(format!(
                    "{} is a {:?} entry; image archives hold only files, directories and links",
                    raw.display(),
                    kind
                )));
            }
            let dest = root.join(&path);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| archive_err(format!("staging {}: {e}", raw.display())))?;
            }
            let mut f = File::create(&dest)
                .map_err(|e| archive_err(format!("staging {}: {e}", raw.display())))?;
            std::io::copy(&mut entry, &mut f).map_err(|e| {
                archive_err(format!("{} is truncated or unreadable: {e}", raw.display()))
            })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            links,
        })
    }

    /// Follows links to the real staged path of an archive path.
    fn real(&self, name: &str) -> Result<PathBuf, ImageError> {
        let mut path = normalize(Path::new(name))?;
        for _ in 0..MAX_LINK_HOPS {
            match self.links.get(&path) {
                Some(next) => path = next.clone(),
                None => return Ok(self.root.join(path)),
            }
        }
        Err(archive_err(format!("{name}: too many levels of links")))
    }

    /// True if the archive has this file; a link that loops or leaves the
    /// archive is an error, not a missing file.
    fn exists(&self, name: &str) -> Result<bool, ImageError> {
        Ok(self.real(name)?.is_file())
    }

    fn open(&self, name: &str) -> Result<File, ImageError> {
        let p = self.real(name)?;
        File::open(&p).map_err(|_| archive_err(format!("the archive has no file {name}")))
    }

    /// Reads a small file whole.
    fn read_json(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut buf = Vec::new();
        self.open(name)?
            .take(MAX_JSON_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| archive_err(format!("{name}: {e}")))?;
        if buf.len() as u64 > MAX_JSON_BYTES {
            return Err(archive_err(format!(
                "{name} is larger than {MAX_JSON_BYTES} bytes"
            )));
        }
        Ok(buf)
    }

    /// The archive path of an OCI blob, after checking its digest's form.
    fn blob_name(digest: &str) -> Result<String, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                archive_err(format!("{digest:?} is not a sha256 digest naming a blob"))
            })?;
        Ok(format!("blobs/sha256/{hex}"))
    }

    /// Reads a small blob and checks its size and digest.
    fn read_blob(&self, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let name = Self::blob_name(d.digest().as_ref())?;
        let data = self.read_json(&name)?;
        if data.len() as u64 != d.size() {
            return Err(archive_err(format!(
                "blob {} is {} bytes, but its descriptor declares {}",
                d.digest(),
                data.len(),
                d.size()
            )));
        }
        let actual = sha256(&data);
        if actual != d.digest().as_ref() {
            return Err(ImageError::DigestMismatch {
                digest: d.digest().to_string(),
                actual,
            });
        }
        Ok(data)
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A reference as the cluster spells it: `busybox` is `busybox:latest`, and
/// Docker Hub's default prefixes are dropped.
pub fn normalize_reference(r: &str) -> String {
    let r = r
        .strip_prefix("docker.io/library/")
        .or_else(|| r.strip_prefix("docker.io/"))
        .unwrap_or(r);
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') || r.contains('@') {
        r.to_string()
    } else {
        format!("{r}:latest")
    }
}

/// Stores a config and a manifest of uncompressed layers for an image whose
/// layers are ingested, and names it.
pub(crate) fn commit_image(
    store: &ImageStore,
    config_bytes: &[u8],
    config: &ImageConfiguration,
    layers: &[layer::Ingested],
    refs: &[String],
) -> Result<ImageSummary, ImageError> {
    let spec_err = |what: &str| {
        let what = what.to_string();
        move |source| ImageError::Spec { what, source }
    };
    let config_digest = store.put_blob(config_bytes)?;
    let layer_descs = layers
        .iter()
        .map(|l| {
            DescriptorBuilder::default()
                .media_type(MediaType::ImageLayer)
                .digest(parse_digest(&l.diff_id)?)
                .size(l.size)
                .build()
                .map_err(spec_err("layer descriptor"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(parse_digest(&config_digest)?)
                .size(config_bytes.len() as u64)
                .build()
                .map_err(spec_err("config descriptor"))?,
        )
        .layers(layer_descs)
        .build()
        .map_err(spec_err("manifest"))?;
    let manifest_json = serde_json::to_vec(&manifest).map_err(|e| archive_err(e.to_string()))?;
    let manifest_digest = store.put_blob(&manifest_json)?;
    let desc = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(parse_digest(&manifest_digest)?)
        .size(manifest_json.len() as u64)
        .build()
        .map_err(spec_err("manifest descriptor"))?;
    store.add_manifest(desc, refs)?;
    Ok(ImageSummary {
        id: config_digest,
        tags: refs.to_vec(),
        size: layers.iter().map(|l| l.size).sum(),
        created_ms: config
            .created()
            .as_deref()
            .and_then(super::parse_rfc3339_ms)
            .unwrap_or(0),
    })
}

fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfiguration, ImageError> {
    ImageConfiguration::from_reader(bytes).map_err(|source| ImageError::Spec {
        what: what.to_string(),
        source,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The 64-hex digest a docker archive path names, if it names one
/// (`<hex>.json`, `blobs/sha256/<hex>`).
fn hex_in_name(name: &str) -> Option<String> {
    let file = name.rsplit('/').next()?;
    let stem = file.strip_suffix(".json").unwrap_or(file);
    (stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit())).then(|| stem.to_string())
}

fn load_docker(
    store: &ImageStore,
    snapshots: &Snapshots,
    staged: &Staged,
    staging: &Path,
    progress: &mut Progress,
) -> Result<Vec<ImageSummary>, ImageError> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&staged.read_json("manifest.json")?)
            .map_err(|e| archive_err(format!("manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(archive_err("manifest.json lists no image"));
    }
    let mut out = Vec::new();
    for entry in entries {
        let config_bytes = staged.read_json(&entry.config)?;
        let digest = sha256(&config_bytes);
        if let Some(hex) = hex_in_name(&entry.config) {
            if digest != format!("sha256:{hex}") {
                return Err(ImageError::DigestMismatch {
                    digest: format!("sha256:{hex}"),
                    actual: digest,
                });
            }
        }
        let config = parse_config(&config_bytes, &entry.config)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != entry.layers.len() {
            return Err(archive_err(format!(
                "{} lists {} layers, but its config has {} diff ids",
                entry.config,
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        check_layer_count(store.limits(), &entry.config, entry.layers.len())?;
        let mut layers = Vec::new();
        progress.image_bytes = 0;
        for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
            let expected = Expected {
                what: path.clone(),
                digest: path
                    .starts_with("blobs/sha256/")
                    .then(|| hex_in_name(path).map(|h| format!("sha256:{h}")))
                    .flatten(),
                size: None,
                diff_id: Some(diff_id.clone()),
            };
            layers.push(layer::ingest(
                store,
                snapshots,
                staged.open(path)?,
                &expected,
                staging,
                progress,
            )?);
        }
        let refs: Vec<String> = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| normalize_reference(t))
            .collect();
        out.push(commit_image(store, &config_bytes, &config, &layers, &refs)?);
    }
    Ok(out)
}

fn is_manifest(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageManifest)
        || m.to_string() == "application/vnd.docker.distribution.manifest.v2+json"
}

fn is_index(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageIndex)
        || m.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn is_layer(m: &MediaType) -> bool {
    matches!(
        m,
        MediaType::ImageLayer
            | MediaType::ImageLayerGzip
            | MediaType::ImageLayerZstd
            | MediaType::ImageLayerNonDistributable
            | MediaType::ImageLayerNonDistributableGzip
            | MediaType::ImageLayerNonDistributableZstd
    ) || m.to_string() == "application/vnd.docker.image.rootfs.diff.tar.gzip"
}

fn load_oci(
    store: &ImageStore,
    snapshots: &Snapshots,
    staged: &Staged,
    staging: &Path,
    progress: &mut Progress,
) -> Result<Vec<ImageSummary>, ImageError> {
    let index =
        ImageIndex::from_reader(staged.read_json("index.json")?.as_slice()).map_err(|source| {
            ImageError::Spec {
                what: "index.json".into(),
                source,
            }
        })?;
    if index.manifests().is_empty() {
        return Err(archive_err("index.json lists no image"));
    }
    let mut out = Vec::new();
    for desc in index.manifests() {
        let annotations = desc.annotations().clone().unwrap_or_default();
        let refs: Vec<String> = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get(super::REF_ANNOTATION))
            .map(|r| vec![normalize_reference(r)])
            .unwrap_or_default();
        let manifest_desc = pick_manifest(staged, desc, 0)?;
        out.push(load_oci_manifest(
            store,
            snapshots,
            staged,
            staging,
            &manifest_desc,
            &refs,
            progress,
        )?);
    }
    Ok(out)
}

/// Follows nested indexes to the linux/amd64 manifest (or the only one).
fn pick_manifest(
    staged: &Staged,
    desc: &Descriptor,
    depth: usize,
) -> Result<Descriptor, ImageError> {
    if is_manifest(desc.media_type()) {
        return Ok(desc.clone());
    }
    if !is_index(desc.media_type()) || depth > 4 {
        return Err(archive_err(format!(
            "index.json names {} of media type {}, which is not an image manifest",
            desc.digest(),
            desc.media_type()
        )));
    }
    let nested = ImageIndex::from_reader(staged.read_blob(desc)?.as_slice()).map_err(|source| {
        ImageError::Spec {
            what: format!("index {}", desc.digest()),
            source,
        }
    })?;
    let chosen = nested
        .manifests()
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            })
        })
        .or_else(|| nested.manifests().first())
        .ok_or_else(|| archive_err(format!("index {} lists no manifest", desc.digest())))?;
    pick_manifest(staged, chosen, depth + 1)
}

fn load_oci_manifest(
    store: &ImageStore,
    snapshots: &Snapshots,
    staged: &Staged,
    staging: &Path,
    desc: &Descriptor,
    refs: &[String],
    progress: &mut Progress,
) -> Result<ImageSummary, ImageError> {
    let manifest =
        ImageManifest::from_reader(staged.read_blob(desc)?.as_slice()).map_err(|source| {
            ImageError::Spec {
                what: format!("manifest {}", desc.digest()),
                source,
            }
        })?;
    let config_bytes = staged.read_blob(manifest.config())?;
    let config = parse_config(
        &config_bytes,
        &format!("config {}", manifest.config().digest()),
    )?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(archive_err(format!(
            "manifest {} lists {} layers, but its config has {} diff ids",
            desc.digest(),
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    check_layer_count(
        store.limits(),
        &format!("manifest {}", desc.digest()),
        manifest.layers().len(),
    )?;
    let mut layers = Vec::new();
    progress.image_bytes = 0;
    for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
        if !is_layer(l.media_type()) {
            return Err(archive_err(format!(
                "layer {} has the unsupported media type {}",
                l.digest(),
                l.media_type()
            )));
        }
        let name = Staged::blob_name(l.digest().as_ref())?;
        let expected = Expected {
            what: l.digest().to_string(),
            digest: Some(l.digest().to_string()),
            size: Some(l.size()),
            diff_id: Some(diff_id.clone()),
        };
        layers.push(layer::ingest(
            store,
            snapshots,
            staged.open(&name)?,
            &expected,
            staging,
            progress,
        )?);
    }
    commit_image(store, &config_bytes, &config, &layers, refs)
}
