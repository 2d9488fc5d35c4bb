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

/// A one-layer OCI archive whose layer blob is `blob` as given (a bomb
/// cannot be held uncompressed, so its diff id is not the config's: each
/// case is refused before that is checked).
fn oci_with_blob(blob: Vec<u8>, media: &str) -> Vec<u8> {
    let mut o = Oci::new(vec![blob]);
    o.layers[0].1 = media.into();
    o.describe().archive()
}

/// A tar header as a hostile tool writes it.
fn raw_header(kind: tar::EntryType, path: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_path(path).unwrap();
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h
}

/// `count` files of `each` zero bytes, zstd-compressed as they are made:
/// the result is a few KiB however much it unpacks to.
fn zstd_zero_files(count: usize, each: u64) -> Vec<u8> {
    use std::io::Write;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for i in 0..count {
        let h = raw_header(tar::EntryType::Regular, &format!("f{i}"), each);
        enc.write_all(h.as_bytes()).unwrap();
        let mut left = each;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            enc.write_all(&zeros[..n]).unwrap();
            left -= n as u64;
        }
        let pad = (512 - each % 512) % 512;
        enc.write_all(&zeros[..pad as usize]).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap()
}

fn blobs(root: &Path) -> usize {
    entries(&root.join("images/blobs/sha256"))
}

fn staged(root: &Path) -> usize {
    std::fs::read_dir(root.join("images/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The store's archive quotas: each bomb is refused with an error that
/// names the limit it passed (and the agent flag that sets it), and
/// leaves no layer, blob or staged file behind.
#[test]
fn archive_bombs_are_refused_naming_the_limit() {
    use berth_agent::image::limits::ArchiveLimits;
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("agent");
    let limits = ArchiveLimits {
        max_layer_bytes: 8 * MIB,
        max_image_bytes: 12 * MIB,
        max_entries: 10_000,
        max_sparse_bytes: 8 * MIB,
        ..Default::default()
    };
    // The header and layer-count limits are the defaults.
    assert_eq!(limits.max_header_bytes, MIB);
    assert_eq!(limits.max_layers, 125);
    let store = ImageStore::open_with(&root.join("images"), limits).unwrap();
    let snapshots = Snapshots::open(&root.join("snapshots")).unwrap();
    let base = oci_archive(&[OciImage {
        reference: "base:1".into(),
        layers: vec![plain_layer()],
        gzip: false,
    }]);
    load_archive(&store, &snapshots, base.as_slice()).unwrap();

    let tar_media = "application/vnd.oci.image.layer.v1.tar";
    let zstd_media = "application/vnd.oci.image.layer.v1.tar+zstd";
    let gzip_media = "application/vnd.oci.image.layer.v1.tar+gzip";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a GNU long-name header announcing a 4 GiB name",
            oci_with_blob(
                raw_header(tar::EntryType::GNULongName, "././@LongLink", 4 << 30)
                    .as_bytes()
                    .to_vec(),
                tar_media,
            ),
            "a GNU long-name header of 4294967296 bytes passes the limit of 1048576 bytes on such headers (berth-agent --max-archive-header)",
        ),
        (
            "a GNU long-link header of 2 MiB, body and all",
            {
                let mut t = raw_header(tar::EntryType::GNULongLink, "././@LongLink", 2 * MIB)
                    .as_bytes()
                    .to_vec();
                t.extend(std::iter::repeat_n(b'a', 2 * MIB as usize));
                oci_with_blob(t, tar_media)
            },
            "GNU long-link header of 2097152 bytes passes the limit",
        ),
        (
            "a PAX header of 64 MiB in the archive itself",
            {
                let mut t = raw_header(tar::EntryType::XHeader, "PaxHeaders/x", 64 * MIB)
                    .as_bytes()
                    .to_vec();
                t.extend_from_slice(&[b'9'; 4096]);
                t
            },
            "the archive: a PAX header of 67108864 bytes passes the limit",
        ),
        (
            "a PAX global header of 2 MiB",
            oci_with_blob(
                raw_header(tar::EntryType::XGlobalHeader, "pax_global_header", 2 * MIB)
                    .as_bytes()
                    .to_vec(),
                tar_media,
            ),
            "a PAX global header of 2097152 bytes passes the limit",
        ),
        (
            "a zstd bomb: 400 MiB of zeros in files of 4 MiB",
            oci_with_blob(zstd_zero_files(100, 4 * MIB), zstd_media),
            "it unpacks to more than 8388608 bytes, the limit per layer (berth-agent --max-layer-size)",
        ),
        (
            "a gzip bomb: one file announcing 1 GiB",
            {
                let mut t = raw_header(tar::EntryType::Regular, "big", 1 << 30)
                    .as_bytes()
                    .to_vec();
                t.extend(std::iter::repeat_n(0u8, MIB as usize));
                oci_with_blob(gzip(&t), gzip_media)
            },
            "it unpacks to more than 8388608 bytes, the limit per layer",
        ),
        (
            "a PAX size record that makes a small entry 1 TiB",
            {
                let record = "22 size=1099511627776\n";
                let mut t = raw_header(tar::EntryType::XHeader, "PaxHeaders/f", record.len() as u64)
                    .as_bytes()
                    .to_vec();
                t.extend_from_slice(record.as_bytes());
                t.resize(1024, 0);
                t.extend_from_slice(raw_header(tar::EntryType::Regular, "f", 0).as_bytes());
                t.resize(t.len() + 1024, 0);
                oci_with_blob(t, tar_media)
            },
            "it unpacks to more than 8388608 bytes, the limit per layer",
        ),
        (
            "millions of empty files (here 10,001 past a limit of 10,000)",
            oci_with_blob(zstd_zero_files(10_001, 0), zstd_media),
            "it holds more than 10000 entries, the limit (berth-agent --max-layer-entries)",
        ),
        (
            "a sparse file claiming 1 PiB",
            {
                let mut h = raw_header(tar::EntryType::GNUSparse, "sparse", 0);
                h.as_gnu_mut().unwrap().set_real_size(1 << 50);
                h.set_cksum();
                let mut t = h.as_bytes().to_vec();
                t.resize(t.len() + 1024, 0);
                oci_with_blob(t, tar_media)
            },
            "the sparse file \"sparse\" claims 1125899906842624 bytes, past the limit of 8388608 bytes on a sparse file's size (berth-agent --max-sparse-size)",
        ),
        (
            "126 layers, one past Docker's 125",
            Oci::new(
                (0..126)
                    .map(|i| TarBuilder::new().file(&format!("l{i}"), b"x").finish())
                    .collect(),
            )
            .describe()
            .archive(),
            "has 126 layers, more than the limit of 125 (berth-agent --max-image-layers)",
        ),
        (
            "two layers of 7 MiB, each allowed, 14 MiB together past the image's 12",
            {
                let layer = |name: &str| {
                    TarBuilder::new()
                        .file(name, &vec![1u8; 7 * MIB as usize])
                        .finish()
                };
                let (a, b) = (layer("a"), layer("b"));
                let mut o = Oci::new(vec![a.clone(), b.clone()]);
                o.layers[0] = (zstd::encode_all(a.as_slice(), 3).unwrap(), zstd_media.into());
                o.layers[1] = (zstd::encode_all(b.as_slice(), 3).unwrap(), zstd_media.into());
                o.describe().archive()
            },
            "the image unpacks to more than 12582912 bytes, the limit per image (berth-agent --max-image-size)",
        ),
    ];
    assert!(cases.len() >= 8);
    let snapshots_before = entries(&root.join("snapshots"));
    let blobs_before = blobs(&root);
    for (what, archive, expected) in cases {
        let err = match load_archive(&store, &snapshots, archive.as_slice()) {
            Ok(images) => panic!("{what}: accepted as {images:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected),
            "{what}: the error {err:?} does not say {expected:?}"
        );
        let images = store.list().unwrap();
        assert_eq!(images.len(), 1, "{what}: the images changed: {images:?}");
        assert_eq!(
            entries(&root.join("snapshots")),
            snapshots_before,
            "{what}: left a layer"
        );
        assert_eq!(blobs(&root), blobs_before, "{what}: left a blob");
        assert_eq!(staged(&root), 0, "{what}: left a staged file");
    }
    // The image that was there is whole, and an image within the limits
    // still loads.
    let base = store.resolve("base:1").unwrap();
    let snap = snapshots.path(&base.diff_ids[0]).unwrap();
    assert_eq!(
        std::fs::read(snap.join("etc/hostname")).unwrap(),
        b"hostile\n"
    );
    let fits = Oci::new(vec![TarBuilder::new()
        .file("fits", &vec![2u8; 6 * MIB as usize])
        .finish()])
    .describe()
    .archive();
    load_archive(&store, &snapshots, fits.as_slice()).unwrap();
}

/// The free space of the store's filesystem is checked as an archive is
/// staged and before a layer is unpacked: on a 32 MiB filesystem, an image
/// that would leave less than the reserve free is refused, naming it, and
/// the filesystem is as empty afterwards as before.
#[test]
fn an_image_that_would_fill_the_disk_is_refused() {
    use berth_agent::image::limits::{free_bytes, ArchiveLimits};
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let fs_root = dir.path().join("small");
    std::fs::create_dir(&fs_root).unwrap();
    // A filesystem of its own, so that the host's free space is not used.
    nix::mount::mount(
        Some("tmpfs"),
        &fs_root,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=32m,mode=0700"),
    )
    .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&fs_root);
    let limits = ArchiveLimits {
        min_free_bytes: 4 * MIB,
        ..Default::default()
    };
    let store = ImageStore::open_with(&fs_root.join("images"), limits).unwrap();
    let snapshots = Snapshots::open(&fs_root.join("snapshots")).unwrap();
    let free_before = free_bytes(&fs_root).unwrap();

    // A layer of 20 MiB of zeros, a few KiB compressed: it stages, but its
    // unpacked copy would not fit beside its tar with 4 MiB to spare.
    let layer = TarBuilder::new()
        .file("zeros", &vec![0u8; 20 * MIB as usize])
        .finish();
    let mut o = Oci::new(vec![layer.clone()]);
    o.layers[0] = (
        zstd::encode_all(layer.as_slice(), 3).unwrap(),
        "application/vnd.oci.image.layer.v1.tar+zstd".into(),
    );
    let err = load_archive(&store, &snapshots, o.describe().archive().as_slice())
        .unwrap_err()
        .to_string();
    let needed = format!(
        "unpacking needs {} more and keeps 4194304 free (berth-agent --min-free-space)",
        layer.len()
    );
    assert!(err.contains(&needed), "{err}");
    assert!(err.starts_with("layer sha256:"), "{err}");

    // An archive of 40 MiB that does not compress: refused while it is
    // staged, before the filesystem is full.
    let noise: Vec<u8> = (0..40 * MIB as usize / 8)
        .flat_map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes())
        .collect();
    let archive = Oci::new(vec![TarBuilder::new().file("noise", &noise).finish()])
        .describe()
        .archive();
    let err = load_archive(&store, &snapshots, archive.as_slice())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("the archive: "), "{err}");
    assert!(
        err.contains("keeps 4194304 free (berth-agent --min-free-space)"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(staged(&fs_root), 0);
    let free_after = free_bytes(&fs_root).unwrap();
    assert!(
        free_after + 64 * 1024 >= free_before,
        "the filesystem lost {} bytes",
        free_before - free_after
    );
}
