//! Hostile and broken image archives: each is refused with an error that
//! names what is wrong, writes nothing outside the store, and loses none of
//! the images already there. Runs as root (layers keep their ownership and
//! whiteouts are device nodes).

use std::path::Path;

use berth_agent::image::load::load_archive;
use berth_agent::image::ImageStore;
use berth_agent::snapshot::Snapshots;
use berth_chaos::images::{
    digest, gzip, image_config, oci_archive, whiteout_base_layer, whiteout_layer, OciImage,
    TarBuilder,
};
use serde_json::{json, Value};

/// The pieces of a one-image OCI layout, editable before they are written.
struct Oci {
    layers: Vec<(Vec<u8>, String)>,
    config: Value,
    manifest: Value,
    index: Value,
    /// Extra archive entries, added after the layout.
    extra: Vec<(String, Vec<u8>)>,
}

impl Oci {
    fn new(layers: Vec<Vec<u8>>) -> Self {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        let config: Value = serde_json::from_slice(&image_config(&diff_ids, &["sh"])).unwrap();
        Self {
            layers: layers
                .into_iter()
                .map(|l| (l, "application/vnd.oci.image.layer.v1.tar".to_string()))
                .collect(),
            config,
            manifest: json!({}),
            index: json!({}),
            extra: Vec::new(),
        }
    }

    /// Fills in the manifest and index from the layers and config.
    fn describe(mut self) -> Self {
        let config = serde_json::to_vec(&self.config).unwrap();
        self.manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": self.layers.iter().map(|(l, m)| json!({"mediaType": m, "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&self.manifest).unwrap();
        self.index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "hostile:latest"},
        }]});
        self
    }

    /// Writes the archive; the manifest and config are stored under the
    /// digests the index and manifest name (so edits to them after
    /// `describe` make digest mismatches).
    fn archive(&self) -> Vec<u8> {
        let mut t = TarBuilder::new();
        t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        t.file("index.json", &serde_json::to_vec(&self.index).unwrap());
        let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let manifest = serde_json::to_vec(&self.manifest).unwrap();
        let manifest_name = self.index["manifests"][0]["digest"]
            .as_str()
            .unwrap_or("")
            .to_string();
        t.file(&blob(&manifest_name), &manifest);
        let config = serde_json::to_vec(&self.config).unwrap();
        let config_name = self.manifest["config"]["digest"]
            .as_str()
            .unwrap_or("")
            .to_string();
        t.file(&blob(&config_name), &config);
        for (i, (l, _)) in self.layers.iter().enumerate() {
            let name = self.manifest["layers"][i]["digest"]
                .as_str()
                .unwrap_or("")
                .to_string();
            // A name that climbs out is for the loader to refuse, not the archive.
            if !name.contains("..") {
                t.file(&blob(&name), l);
            }
        }
        for (name, data) in &self.extra {
            t.file(name, data);
        }
        t.finish()
    }
}

/// A docker save archive of one image, with its layer at `layer_path`.
fn docker_archive(layer: &[u8], layer_path: &str, config_name: Option<&str>) -> Vec<u8> {
    let config = image_config(&[digest(layer)], &["sh"]);
    let config_path = config_name
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}.json", digest(&config).trim_start_matches("sha256:")));
    let manifest =
        json!([{"Config": config_path, "RepoTags": ["hostile:latest"], "Layers": [layer_path]}]);
    let mut t = TarBuilder::new();
    t.file("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    t.file(&config_path, &config);
    if !layer_path.contains("..") && !layer_path.starts_with('/') {
        t.file(layer_path, layer);
    }
    t.finish()
}

fn plain_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc/")
        .file("etc/hostname", b"hostile\n")
        .finish()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: ImageStore,
    snapshots: Snapshots,
    outside: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("agent");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let store = ImageStore::open(&root.join("images")).unwrap();
    let snapshots = Snapshots::open(&root.join("snapshots")).unwrap();
    // An image already there, which no refused archive may disturb.
    let base = oci_archive(&[OciImage {
        reference: "base:1".into(),
        layers: vec![TarBuilder::new()
            .dir("bin/")
            .file("bin/tool", b"tool")
            .finish()],
        gzip: false,
    }]);
    load_archive(&store, &snapshots, base.as_slice()).unwrap();
    Fixture {
        _dir: dir,
        store,
        snapshots,
        outside,
        root,
    }
}

fn entries(p: &Path) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn hostile_archives_are_refused_and_change_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: layers keep their ownership and whiteouts are device nodes"
    );
    let f = fixture();
    let out = f.outside.display().to_string();
    let parent_escape = format!("../../../../../../..{out}/dotdot");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "archive entry with ..",
            TarBuilder::new().file(&parent_escape, b"x").finish(),
            "climbs out of the archive",
        ),
        (
            "archive entry with an absolute path",
            TarBuilder::new().file(&format!("{out}/abs"), b"x").finish(),
            "absolute path",
        ),
        (
            "archive symlink out of the archive",
            TarBuilder::new()
                .symlink("manifest.json", "../../../../../etc/passwd")
                .finish(),
            "symlink out of the archive",
        ),
        (
            "archive symlink to an absolute path",
            TarBuilder::new()
                .symlink("index.json", "/etc/passwd")
                .finish(),
            "symlink to the absolute path",
        ),
        (
            "archive hardlink out of the archive",
            TarBuilder::new()
                .hardlink("manifest.json", "../../etc/passwd")
                .finish(),
            "climbs out of the archive",
        ),
        (
            "archive device node",
            TarBuilder::new().char_device("manifest.json").finish(),
            "hold only files",
        ),
        (
            "archive symlink loop",
            TarBuilder::new()
                .symlink("manifest.json", "a")
                .symlink("a", "manifest.json")
                .finish(),
            "too many levels of links",
        ),
        (
            "not a tar archive",
            b"this is not an archive at all, just some bytes".repeat(20),
            "archive",
        ),
        (
            "layer entry with ..",
            Oci::new(vec![TarBuilder::new().file("../escape", b"x").finish()])
                .describe()
                .archive(),
            "climbs out of the layer",
        ),
        (
            "layer entry with an absolute path",
            Oci::new(vec![TarBuilder::new()
                .file(&format!("{out}/abs-layer"), b"x")
                .finish()])
            .describe()
            .archive(),
            "absolute path",
        ),
        (
            "layer symlink out, then a write through it",
            Oci::new(vec![TarBuilder::new()
                .symlink("out", &out)
                .file("out/pwned", b"x")
                .finish()])
            .describe()
            .archive(),
            "outside the layer",
        ),
        (
            "layer symlink out, then a directory made through it",
            Oci::new(vec![TarBuilder::new()
                .symlink("s", &out)
                .file("s/newdir/f", b"x")
                .finish()])
            .describe()
            .archive(),
            "outside the layer",
        ),
        (
            "layer entry setting a trusted.overlay xattr",
            Oci::new(vec![TarBuilder::new()
                .file_with_xattrs("etc/x", b"x", &[("trusted.overlay.redirect", b"/")])
                .finish()])
            .describe()
            .archive(),
            "trusted.overlay.redirect",
        ),
        (
            "a whiteout of .. (which would delete every layer)",
            Oci::new(vec![TarBuilder::new().file(".wh...", b"").finish()])
                .describe()
                .archive(),
            "climbs out of the layer",
        ),
        (
            "layer hardlink to a file outside",
            Oci::new(vec![TarBuilder::new()
                .hardlink("passwd", "../../../../etc/passwd")
                .finish()])
            .describe()
            .archive(),
            "outside the layer",
        ),
        (
            "layer device node",
            Oci::new(vec![TarBuilder::new().char_device("dev/kmem").finish()])
                .describe()
                .archive(),
            "device node",
        ),
        (
            "a blob that does not match its digest",
            {
                let mut o = Oci::new(vec![plain_layer()]).describe();
                // Same size, other bytes: only the digest can tell.
                o.layers[0].0 = TarBuilder::new()
                    .dir("etc/")
                    .file("etc/hostname", b"evil!!!\n")
                    .finish();
                o.archive()
            },
            "does not match",
        ),
        (
            "a config that does not match its digest",
            {
                let mut o = Oci::new(vec![plain_layer()]).describe();
                // Same size, other bytes.
                o.config["config"]["Cmd"] = json!(["rm"]);
                o.archive()
            },
            "does not match",
        ),
        (
            "docker manifest naming a layer outside the archive",
            docker_archive(&plain_layer(), "../../../../etc/passwd", None),
            "climbs out of the archive",
        ),
        (
            "docker config whose name is not its digest",
            docker_archive(
                &plain_layer(),
                "layer.tar",
                Some(&format!("{}.json", "ab".repeat(32))),
            ),
            "does not match",
        ),
        (
            "OCI manifest naming a blob by a path, not a digest",
            {
                let mut o = Oci::new(vec![plain_layer()]).describe();
                o.manifest["layers"][0]["digest"] = json!("sha256:../../../../../etc/passwd");
                let m = serde_json::to_vec(&o.manifest).unwrap();
                o.index["manifests"][0]["digest"] = json!(digest(&m));
                o.index["manifests"][0]["size"] = json!(m.len());
                o.archive()
            },
            "Invalid encoded value ../../",
        ),
        (
            "a truncated gzip layer",
            {
                let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
                let layer = TarBuilder::new().file("data", &big).finish();
                let mut gz = gzip(&layer);
                gz.truncate(gz.len() / 2);
                let mut o = Oci::new(vec![layer]);
                o.layers[0] = (gz, "application/vnd.oci.image.layer.v1.tar+gzip".into());
                o.describe().archive()
            },
            "damaged or truncated",
        ),
        (
            "a blob far beyond its declared size",
            {
                let big: Vec<u8> = vec![7u8; 1 << 20];
                let mut o = Oci::new(vec![TarBuilder::new().file("big", &big).finish()]).describe();
                o.manifest["layers"][0]["size"] = json!(1024);
                let m = serde_json::to_vec(&o.manifest).unwrap();
                o.index["manifests"][0]["digest"] = json!(digest(&m));
                o.index["manifests"][0]["size"] = json!(m.len());
                o.archive()
            },
            "larger than its declared size",
        ),
        (
            "a layer whose diff id is not the config's",
            {
                let mut o = Oci::new(vec![plain_layer()]);
                o.config["rootfs"]["diff_ids"] = json!([format!("sha256:{}", "cd".repeat(32))]);
                o.describe().archive()
            },
            "diff id",
        ),
        (
            "more layers than diff ids",
            {
                let mut o = Oci::new(vec![
                    plain_layer(),
                    TarBuilder::new().file("x", b"x").finish(),
                ]);
                o.config["rootfs"]["diff_ids"] = json!([digest(&plain_layer())]);
                o.describe().archive()
            },
            "diff ids",
        ),
        (
            "a layer of an unsupported media type",
            {
                let mut o = Oci::new(vec![plain_layer()]);
                o.layers[0].1 = "application/x-evil".into();
                o.describe().archive()
            },
            "unsupported media type",
        ),
    ];
    assert!(cases.len() >= 15);
    let snapshots_before = entries(&f.root.join("snapshots"));
    for (what, archive, expected) in cases {
        let err = match load_archive(&f.store, &f.snapshots, archive.as_slice()) {
            Ok(images) => panic!("{what}: accepted as {images:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected),
            "{what}: the error {err:?} does not say {expected:?}"
        );
        assert_eq!(entries(&f.outside), 0, "{what}: wrote outside the store");
        assert!(!Path::new("/etc/pwned").exists() && !Path::new("/escape").exists());
        let images = f.store.list().unwrap();
        assert_eq!(
            images.len(),
            1,
            "{what}: the store's images changed: {images:?}"
        );
        assert_eq!(images[0].tags, vec!["base:1".to_string()]);
        assert_eq!(
            entries(&f.root.join("snapshots")),
            snapshots_before,
            "{what}: left a snapshot"
        );
    }
    // The image that was there still works: its snapshot is whole.
    let base = f.store.resolve("base:1").unwrap();
    let snap = f.snapshots.path(&base.diff_ids[0]).unwrap();
    assert_eq!(std::fs::read(snap.join("bin/tool")).unwrap(), b"tool");
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_shared_layers_unpack_once() {
    let f = fixture();
    let base = whiteout_base_layer();
    let upper1 = whiteout_layer();
    let upper2 = TarBuilder::new().file("second", b"2").finish();
    let archive = oci_archive(&[
        OciImage {
            reference: "wh:1".into(),
            layers: vec![base.clone(), upper1.clone()],
            gzip: true,
        },
        OciImage {
            reference: "wh:2".into(),
            layers: vec![base.clone(), upper2],
            gzip: true,
        },
    ]);
    let loaded = load_archive(&f.store, &f.snapshots, archive.as_slice()).unwrap();
    assert_eq!(loaded.len(), 2);
    // One base snapshot for both images, plus the base image's and two uppers.
    assert_eq!(entries(&f.root.join("snapshots")), 4);
    let up = f.snapshots.path(&digest(&upper1)).unwrap();
    let motd = std::fs::symlink_metadata(up.join("etc/motd")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(
        motd.file_type().is_char_device() && motd.rdev() == 0,
        "etc/motd is not a whiteout"
    );
    let opaque = xattr(&up.join("data"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert!(!up.join("data/.wh..wh..opq").exists());
    // The shared base layer's blob is stored once.
    let blobs = std::fs::read_dir(f.root.join("images/blobs/sha256"))
        .unwrap()
        .count();
    // base image: layer, config, manifest; wh:1 and wh:2: shared base, two uppers, two configs, two manifests.
    assert_eq!(blobs, 3 + 7);
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: getxattr(2) writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn zstd_and_docker_media_types_load() {
    let f = fixture();
    let layer = TarBuilder::new()
        .dir("etc/")
        .file("etc/zstd", b"zstd layer")
        .finish();
    let mut o = Oci::new(vec![layer.clone()]);
    o.layers[0] = (
        zstd::encode_all(layer.as_slice(), 3).unwrap(),
        "application/vnd.oci.image.layer.v1.tar+zstd".into(),
    );
    let archive = o.describe().archive();
    let loaded = load_archive(&f.store, &f.snapshots, archive.as_slice()).unwrap();
    assert_eq!(loaded[0].tags, vec!["hostile:latest".to_string()]);
    let snap = f.snapshots.path(&digest(&layer)).unwrap();
    assert_eq!(std::fs::read(snap.join("etc/zstd")).unwrap(), b"zstd layer");

    let layer = TarBuilder::new()
        .file("docker", b"docker media type")
        .finish();
    let mut o = Oci::new(vec![layer.clone()]);
    o.layers[0] = (
        gzip(&layer),
        "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
    );
    let archive = o.describe().archive();
    load_archive(&f.store, &f.snapshots, archive.as_slice()).unwrap();
    let snap = f.snapshots.path(&digest(&layer)).unwrap();
    assert_eq!(
        std::fs::read(snap.join("docker")).unwrap(),
        b"docker media type"
    );
}
