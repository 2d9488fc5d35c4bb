//! The image store: a content-addressed blob store (sha256) laid out as an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), with
//! references kept as `org.opencontainers.image.ref.name` annotations in
//! the index. Manifests and configs are oci-spec types.
//!
//! Vocabulary: a *blob* is stored bytes named by their digest; a *layer* is
//! a tar blob; its *diff id* is the digest of its uncompressed tar; an
//! *image id* is the digest of its config, as Docker shows it.

pub mod commit;
pub mod import;
pub mod layer;
pub mod limits;
pub mod load;
pub mod save;
pub mod upload;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType,
};
use sha2::{Digest as _, Sha256};

/// The annotation that names a manifest in index.json.
pub const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("No such image: {0}")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid image metadata in {what}: {}", spec_cause(.source))]
    Spec {
        what: String,
        source: oci_spec::OciSpecError,
    },
    #[error("blob {digest} does not match its content (found {actual})")]
    DigestMismatch { digest: String, actual: String },
    #[error("invalid digest {0:?}")]
    BadDigest(String),
    #[error("bad archive: {0}")]
    Archive(String),
    /// A `commit --change` that is not an instruction commit takes.
    #[error("invalid --change {change:?}: {why}")]
    Change { change: String, why: String },
    #[error("unpacking a layer: {0}")]
    Unpack(#[from] crate::snapshot::SnapshotError),
    /// An archive passed one of the store's [`limits::ArchiveLimits`].
    #[error("{what}: {source}")]
    Limit {
        what: String,
        source: limits::LimitError,
    },
}

/// An oci-spec error with its cause ("serde failed" alone names nothing).
fn spec_cause(e: &oci_spec::OciSpecError) -> String {
    match e {
        oci_spec::OciSpecError::SerDe(inner) => format!("malformed JSON: {inner}"),
        other => other.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a runtime needs of an image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The config digest, `sha256:<hex>`.
    pub id: String,
    pub config: ImageConfiguration,
    /// Diff ids of the layers, bottom first.
    pub diff_ids: Vec<String>,
    /// The digest of the image's manifest in this store.
    pub manifest_digest: String,
    /// The manifest's layer descriptors, bottom first.
    pub layers: Vec<Descriptor>,
    /// Every reference that names this image here.
    pub refs: Vec<String>,
}

/// One image as the agent reports it to the cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImageSummary {
    pub id: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub created_ms: i64,
}

/// Where the build cache's entries live, in the store.
const BUILD_CACHE: &str = "build-cache";

/// How many build cache entries are kept in memory (a few MiB of configs
/// at most); past that the memory starts again empty.
const MAX_REMEMBERED_STEPS: usize = 4096;

/// An OCI image layout on disk.
pub struct ImageStore {
    root: PathBuf,
    limits: limits::ArchiveLimits,
    writing: std::sync::Mutex<()>,
    /// Layers a build in progress has made and not yet named in an image:
    /// gc keeps them.
    pinned: std::sync::Mutex<Vec<String>>,
    /// Build cache entries read or written since the agent started (cache
    /// key to config digest and config).
    cached_steps: std::sync::Mutex<HashMap<String, (String, serde_json::Value)>>,
}

impl ImageStore {
    /// Opens the layout at `root` with the default archive limits,
    /// creating an empty one if needed.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Self::open_with(root, limits::ArchiveLimits::default())
    }

    /// Opens the layout at `root`; archives loaded into it are held to
    /// `limits`.
    pub fn open_with(root: &Path, limits: limits::ArchiveLimits) -> Result<Self, ImageError> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&layout))?;
        }
        let store = Self {
            root: root.to_path_buf(),
            limits,
            writing: std::sync::Mutex::new(()),
            pinned: std::sync::Mutex::new(Vec::new()),
            cached_steps: Default::default(),
        };
        if !store.index_path().exists() {
            let index = ImageIndexBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageIndex)
                .manifests(Vec::<Descriptor>::new())
                .build()
                .map_err(|source| ImageError::Spec {
                    what: "index.json".into(),
                    source,
                })?;
            store.write_index(&index)?;
        }
        Ok(store)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The path of a blob, after checking that the digest is a sha256 one
    /// whose hex cannot name anything outside the blob directory.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ImageError::BadDigest(digest.to_string()))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// Stores bytes as a blob and returns its digest. Writing is atomic: a
    /// temporary file renamed into place.
    pub fn put_blob(&self, data: &[u8]) -> Result<String, ImageError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let path = self.blob_path(&digest)?;
        if path.exists() {
            return Ok(digest);
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(digest)
    }

    /// Reads a blob and checks it against its digest.
    pub fn get_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        let data = fs::read(&path).map_err(io_err(&path))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(data)
    }

    pub fn read_index(&self) -> Result<ImageIndex, ImageError> {
        ImageIndex::from_file(self.index_path()).map_err(|source| ImageError::Spec {
            what: "index.json".into(),
            source,
        })
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), ImageError> {
        let path = self.index_path();
        let tmp = path.with_extension("json.tmp");
        index.to_file(&tmp).map_err(|source| ImageError::Spec {
            what: "index.json".into(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Points `reference` at the manifest `desc`, moving it off any other.
    pub fn set_ref(&self, reference: &str, mut desc: Descriptor) -> Result<(), ImageError> {
        let mut index = self.read_index()?;
        let named: Vec<&Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d).as_deref() == Some(reference))
            .collect();
        if let [only] = named.as_slice() {
            if only.digest() == desc.digest() {
                // Already so (a rebuild of the same image): nothing to write.
                return Ok(());
            }
        }
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d).as_deref() != Some(reference))
            .cloned()
            .collect();
        let mut ann = HashMap::new();
        ann.insert(REF_ANNOTATION.to_string(), reference.to_string());
        desc.set_annotations(Some(ann));
        manifests.push(desc);
        index.set_manifests(manifests);
        self.write_index(&index)
    }

    /// Finds an image by reference (`name:tag`) or by id (full or a prefix
    /// of at least 12 hex digits, with or without `sha256:`).
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let index = self.read_index()?;
        let bare = reference.trim_start_matches("sha256:");
        let by_id = |config_digest: &str| {
            bare.len() >= 12
                && bare.bytes().all(|b| b.is_ascii_hexdigit())
                && config_digest
                    .trim_start_matches("sha256:")
                    .starts_with(bare)
        };
        // A reference wins over an id prefix that happens to match.
        let mut found = index
            .manifests()
            .iter()
            .find(|d| ref_name(d).as_deref() == Some(reference))
            .map(|d| d.digest().to_string());
        if found.is_none() {
            for d in index.manifests() {
                let manifest = self.manifest(d.digest())?;
                if by_id(manifest.config().digest().as_ref()) {
                    found = Some(d.digest().to_string());
                    break;
                }
            }
        }
        let Some(manifest_digest) = found else {
            return Err(ImageError::NotFound(reference.to_string()));
        };
        let manifest = self.manifest(&parse_digest(&manifest_digest)?)?;
        let config_digest = manifest.config().digest().to_string();
        let config = self.config(&config_digest)?;
        let diff_ids = config.rootfs().diff_ids().clone();
        let refs = index
            .manifests()
            .iter()
            .filter(|d| d.digest().as_ref() == manifest_digest)
            .filter_map(ref_name)
            .collect();
        Ok(ResolvedImage {
            id: config_digest,
            config,
            diff_ids,
            manifest_digest,
            layers: manifest.layers().clone(),
            refs,
        })
    }

    /// Records a manifest under each of `refs`; with none, as an untagged
    /// image (unless the manifest is already in the index).
    pub fn add_manifest(&self, desc: Descriptor, refs: &[String]) -> Result<(), ImageError> {
        if refs.is_empty() {
            let mut index = self.read_index()?;
            if index
                .manifests()
                .iter()
                .any(|d| d.digest() == desc.digest())
            {
                return Ok(());
            }
            let mut manifests = index.manifests().clone();
            manifests.push(desc);
            index.set_manifests(manifests);
            return self.write_index(&index);
        }
        for r in refs {
            self.set_ref(r, desc.clone())?;
        }
        Ok(())
    }

    /// Gives the image `source` the extra reference `target`.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let _writing = self.write_lock();
        let img = self.resolve(source)?;
        let index = self.read_index()?;
        let desc = index
            .manifests()
            .iter()
            .find(|d| d.digest().as_ref() == img.manifest_digest)
            .cloned()
            .ok_or_else(|| ImageError::NotFound(source.to_string()))?;
        self.set_ref(target, desc)
    }

    /// Removes a reference; an image left with none is deleted, and so are
    /// blobs and snapshots nothing uses any more. `reference` may also be
    /// an image id, which removes every reference to it. Snapshots named in
    /// `keep_diff_ids` (used by containers) stay. Returns what was untagged
    /// and the id if the image was deleted.
    pub fn remove(
        &self,
        reference: &str,
        snapshots: &crate::snapshot::Snapshots,
        keep_diff_ids: &[String],
    ) -> Result<(Vec<String>, Option<String>), ImageError> {
        let _writing = self.write_lock();
        let img = self.resolve(reference)?;
        let mut index = self.read_index()?;
        let is_ref = img.refs.iter().any(|r| r == reference);
        let untagged: Vec<String> = if is_ref {
            vec![reference.to_string()]
        } else {
            img.refs.clone()
        };
        let manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| {
                let same = d.digest().as_ref() == img.manifest_digest;
                !(same
                    && (!is_ref
                        || ref_name(d).as_deref() == Some(reference)
                        || ref_name(d).is_none()))
            })
            .cloned()
            .collect();
        let still_there = manifests
            .iter()
            .any(|d| d.digest().as_ref() == img.manifest_digest);
        index.set_manifests(manifests);
        self.write_index(&index)?;
        if still_there {
            return Ok((untagged, None));
        }
        self.gc_locked(snapshots, keep_diff_ids)?;
        Ok((untagged, Some(img.id)))
    }

    /// Deletes blobs no manifest in the index reaches, and snapshots of
    /// layers no image nor `keep_diff_ids` uses.
    pub fn gc(
        &self,
        snapshots: &crate::snapshot::Snapshots,
        keep_diff_ids: &[String],
    ) -> Result<(), ImageError> {
        let _writing = self.write_lock();
        self.gc_locked(snapshots, keep_diff_ids)
    }

    fn gc_locked(
        &self,
        snapshots: &crate::snapshot::Snapshots,
        keep_diff_ids: &[String],
    ) -> Result<(), ImageError> {
        let index = self.read_index()?;
        let mut live_blobs = std::collections::HashSet::new();
        let mut live_layers: std::collections::HashSet<String> =
            keep_diff_ids.iter().cloned().collect();
        for d in index.manifests() {
            live_blobs.insert(d.digest().digest().to_string());
            let m = self.manifest(d.digest())?;
            live_blobs.insert(m.config().digest().digest().to_string());
            for l in m.layers() {
                live_blobs.insert(l.digest().digest().to_string());
            }
            if let Ok(c) = self.config(m.config().digest().as_ref()) {
                live_layers.extend(c.rootfs().diff_ids().iter().cloned());
            }
        }
        live_layers.extend(
            self.pinned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        // A build cache entry lives while every layer it names does; its
        // config blob with it. What is kept in memory is read again.
        self.cached_steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let cache = self.root.join(BUILD_CACHE);
        for e in fs::read_dir(&cache).into_iter().flatten().flatten() {
            let id = fs::read_to_string(e.path()).unwrap_or_default();
            let alive = self
                .config(id.trim())
                .map(|c| {
                    c.rootfs()
                        .diff_ids()
                        .iter()
                        .all(|d| live_layers.contains(d))
                })
                .unwrap_or(false);
            if alive {
                live_blobs.insert(id.trim().trim_start_matches("sha256:").to_string());
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && !live_blobs.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
        snapshots.retain(|diff_id| live_layers.contains(diff_id));
        Ok(())
    }

    /// The image a build step made before, by the step's cache key: its
    /// config digest and config, if every layer it names is still here.
    /// The layers found are pinned for the build, which lists them in
    /// `pinned` (and unpins them when it ends): gc cannot take them before
    /// the build's image names them, and a layer already in `pinned` is
    /// not looked for again. An entry is read from disk once; later hits
    /// come from memory, which gc empties when it deletes entries.
    pub fn cache_get(
        &self,
        key: &str,
        snapshots: &crate::snapshot::Snapshots,
        pinned: &mut Vec<String>,
    ) -> Option<(String, serde_json::Value)> {
        let remembered = self
            .cached_steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let (id, config) = match remembered {
            Some(hit) => hit,
            None => {
                let id = fs::read_to_string(self.root.join(BUILD_CACHE).join(key)).ok()?;
                let id = id.trim().to_string();
                let config: serde_json::Value =
                    serde_json::from_slice(&self.get_blob(&id).ok()?).ok()?;
                self.remember_step(key, &id, &config);
                (id, config)
            }
        };
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()?
            .iter()
            .map(|d| d.as_str())
            .collect::<Option<_>>()?;
        // Looked for and pinned under the write lock, which gc holds while
        // it deletes: a layer found here is still here when it is pinned.
        let _writing = self.write_lock();
        if !self.blob_path(&id).is_ok_and(|p| p.exists()) {
            return None;
        }
        let mut found = Vec::new();
        for d in diff_ids {
            if pinned.iter().any(|p| p == d) || found.contains(&d) {
                continue;
            }
            let here = snapshots.path(d).is_ok_and(|p| p.exists())
                && self.blob_path(d).is_ok_and(|p| p.exists());
            if !here {
                return None;
            }
            found.push(d);
        }
        for d in found {
            self.pin(d);
            pinned.push(d.to_string());
        }
        Some((id, config))
    }

    /// Records the image (config digest `id`, config `config`) a build
    /// step made under its key.
    pub fn cache_put(
        &self,
        key: &str,
        id: &str,
        config: &serde_json::Value,
    ) -> Result<(), ImageError> {
        let dir = self.root.join(BUILD_CACHE);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(key);
        fs::write(&path, id).map_err(io_err(&path))?;
        self.remember_step(key, id, config);
        Ok(())
    }

    /// Keeps a build cache entry in memory, for [`Self::cache_get`].
    fn remember_step(&self, key: &str, id: &str, config: &serde_json::Value) {
        let mut steps = self.cached_steps.lock().unwrap_or_else(|p| p.into_inner());
        if steps.len() >= MAX_REMEMBERED_STEPS {
            steps.clear();
        }
        steps.insert(key.to_string(), (id.to_string(), config.clone()));
    }

    /// Keeps layers from gc until they are unpinned (a build's layers
    /// before its image names them).
    pub fn pin(&self, diff_id: &str) {
        self.pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(diff_id.to_string());
    }

    /// Ends one pin of each of `diff_ids`.
    pub fn unpin(&self, diff_ids: &[String]) {
        let mut p = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        for d in diff_ids {
            if let Some(i) = p.iter().position(|x| x == d) {
                p.swap_remove(i);
            }
        }
    }

    /// What archives loaded into this store may cost.
    pub fn limits(&self) -> &limits::ArchiveLimits {
        &self.limits
    }

    /// Held while an image is written into the store (load, import) or
    /// layers are deleted from it (gc): a layer one load has unpacked but
    /// not yet named is not another's to delete.
    pub(crate) fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the layers a failed load unpacked (`unpacked`, by diff id)
    /// that no image in the index uses: a refused archive leaves the store
    /// as it was. The caller holds the write lock.
    pub(crate) fn undo_unpacked(
        &self,
        snapshots: &crate::snapshot::Snapshots,
        unpacked: &[String],
    ) -> Result<(), ImageError> {
        if unpacked.is_empty() {
            return Ok(());
        }
        let index = self.read_index()?;
        let mut used = std::collections::HashSet::new();
        for d in index.manifests() {
            let m = self.manifest(d.digest())?;
            for l in m.layers() {
                used.insert(l.digest().to_string());
            }
            if let Ok(c) = self.config(m.config().digest().as_ref()) {
                used.extend(c.rootfs().diff_ids().iter().cloned());
            }
        }
        for diff_id in unpacked.iter().filter(|d| !used.contains(*d)) {
            if let Ok(path) = snapshots.path(diff_id) {
                let _ = fs::remove_dir_all(path);
            }
            if let Ok(path) = self.blob_path(diff_id) {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// A directory for staging work inside the store (same filesystem as
    /// the blobs, so that finished files are renamed into place).
    pub fn staging_dir(&self) -> Result<tempfile::TempDir, ImageError> {
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        tempfile::tempdir_in(&tmp).map_err(io_err(&tmp))
    }

    /// Moves a file whose sha256 is `digest` into the blob store.
    pub fn put_blob_file(&self, file: &Path, digest: &str) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            let _ = fs::remove_file(file);
            return Ok(());
        }
        fs::rename(file, &path).map_err(io_err(&path))
    }

    /// Opens a blob for reading, unverified (callers that need the content
    /// whole use [`ImageStore::get_blob`]).
    pub fn open_blob(&self, digest: &str) -> Result<fs::File, ImageError> {
        let path = self.blob_path(digest)?;
        fs::File::open(&path).map_err(io_err(&path))
    }

    pub fn manifest(&self, digest: &Digest) -> Result<ImageManifest, ImageError> {
        let data = self.get_blob(digest.as_ref())?;
        ImageManifest::from_reader(data.as_slice()).map_err(|source| ImageError::Spec {
            what: format!("manifest {digest}"),
            source,
        })
    }

    pub fn config(&self, digest: &str) -> Result<ImageConfiguration, ImageError> {
        let data = self.get_blob(digest)?;
        ImageConfiguration::from_reader(data.as_slice()).map_err(|source| ImageError::Spec {
            what: format!("config {digest}"),
            source,
        })
    }

    /// An image's config and metadata as `docker image inspect` shows them.
    pub fn inspect(&self, reference: &str) -> Result<serde_json::Value, ImageError> {
        let img = self.resolve(reference)?;
        let config = serde_json::to_value(&img.config).unwrap_or_default();
        // What oci-spec does not keep: a committed image's parent and
        // comment, as Docker's config records them.
        let raw: serde_json::Value = self
            .get_blob(&img.id)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // Docker's config fields, with its empty values, under what the
        // image's config holds (the raw blob: oci-spec drops Docker's own
        // fields, Healthcheck, OnBuild and Shell among them).
        let mut cfg = serde_json::json!({
            "Hostname": "", "Domainname": "", "User": "",
            "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
            "Tty": false, "OpenStdin": false, "StdinOnce": false,
            "Env": null, "Cmd": null, "Image": "", "Volumes": null,
            "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": null,
        });
        if let (Some(c), Some(raw_cfg)) = (cfg.as_object_mut(), raw["config"].as_object()) {
            for (k, v) in raw_cfg {
                c.insert(k.clone(), v.clone());
            }
        }
        let size = img.layers.iter().map(|l| l.size()).sum::<u64>();
        let text = |key: &str| {
            raw.get(key)
                .and_then(|p| p.as_str())
                .unwrap_or("")
                .to_string()
        };
        Ok(serde_json::json!({
            "Id": img.id,
            "RepoTags": img.refs,
            "RepoDigests": [],
            "Parent": text("parent"),
            "Comment": text("comment"),
            "Created": config.get("created"),
            "Container": text("container"),
            "DockerVersion": text("docker_version"),
            "Author": text("author"),
            "Config": cfg,
            "Architecture": config.get("architecture"),
            "Os": config.get("os"),
            "Size": size,
            "VirtualSize": size,
            "GraphDriver": {"Name": "overlayfs", "Data": null},
            "RootFS": {"Type": "layers", "Layers": img.diff_ids},
            "History": config.get("history"),
            "LayerSizes": img.layers.iter().map(|l| l.size()).collect::<Vec<_>>(),
        }))
    }

    /// Every image, with all its references.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let index = self.read_index()?;
        let mut out: Vec<ImageSummary> = Vec::new();
        for d in index.manifests() {
            let manifest = self.manifest(d.digest())?;
            let id = manifest.config().digest().to_string();
            let size = manifest.layers().iter().map(|l| l.size()).sum::<u64>();
            let created_ms = self
                .config(&id)
                .ok()
                .and_then(|c| c.created().clone())
                .and_then(|c| parse_rfc3339_ms(&c))
                .unwrap_or(0);
            let tag = ref_name(d);
            match out.iter_mut().find(|s| s.id == id) {
                Some(s) => s.tags.extend(tag),
                None => out.push(ImageSummary {
                    id,
                    tags: tag.into_iter().collect(),
                    size,
                    created_ms,
                }),
            }
        }
        Ok(out)
    }
}

/// Parses a `sha256:<hex>` digest.
pub fn parse_digest(d: &str) -> Result<Digest, ImageError> {
    Digest::from_str(d).map_err(|_| ImageError::BadDigest(d.to_string()))
}

/// The reference a descriptor of index.json carries, if any.
pub fn ref_name(d: &Descriptor) -> Option<String> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_ANNOTATION).cloned())
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Formats milliseconds since the epoch as RFC 3339 UTC, to the second.
pub fn format_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let ms = 1_764_400_000_000;
        assert_eq!(parse_rfc3339_ms(&format_rfc3339(ms)), Some(ms));
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn blob_paths_refuse_what_is_not_a_sha256_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert!(store.blob_path("sha256:../../etc/passwd").is_err());
        assert!(store.blob_path("md5:abcd").is_err());
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(store.get_blob(&d).unwrap(), b"hello");
        std::fs::write(store.blob_path(&d).unwrap(), b"tampered").unwrap();
        assert!(matches!(
            store.get_blob(&d),
            Err(ImageError::DigestMismatch { .. })
        ));
    }
}
