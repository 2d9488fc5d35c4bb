//! Test images built from what the machine has: a busybox rootfs from
//! Debian's busybox-static.

use std::path::Path;

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// A header with every numeric field set (root-owned, epoch mtime).
fn new_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The busybox rootfs as an uncompressed layer tar, in memory.
pub fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("busybox.tar");
    busybox_rootfs_tar(&p)?;
    Ok(std::fs::read(p)?)
}

/// Writes a rootfs tarball holding a static busybox, a link for each of its
/// applets, and minimal /etc files.
pub fn busybox_rootfs_tar(out: &Path) -> anyhow::Result<()> {
    let busybox = std::fs::read(BUSYBOX)
        .map_err(|e| anyhow::anyhow!("{BUSYBOX}: {e} (install Debian's busybox-static)"))?;
    let list = std::process::Command::new(BUSYBOX).arg("--list").output()?;
    anyhow::ensure!(list.status.success(), "busybox --list failed");
    let mut b = tar::Builder::new(std::fs::File::create(out)?);
    let dir = |b: &mut tar::Builder<std::fs::File>, p: &str, mode: u32| -> anyhow::Result<()> {
        let mut h = new_header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, p, std::io::empty())?;
        Ok(())
    };
    let file = |b: &mut tar::Builder<std::fs::File>,
                p: &str,
                mode: u32,
                data: &[u8]|
     -> anyhow::Result<()> {
        let mut h = new_header();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, p, data)?;
        Ok(())
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        dir(&mut b, d, mode)?;
    }
    file(&mut b, "bin/busybox", 0o755, &busybox)?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut h = new_header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    b.finish()?;
    Ok(())
}

/// Builds layer tars entry by entry, including entries a well-behaved tool
/// would refuse to write (for hostile-archive tests).
pub struct TarBuilder {
    inner: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> Self {
        Self {
            inner: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(
        &mut self,
        kind: tar::EntryType,
        path: &str,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut h = new_header();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        // Written raw, as a hostile tool would: set_path refuses "..".
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.inner.append(&h, data).expect("appending to a Vec");
        self
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.raw(tar::EntryType::Directory, path, "", 0o755, &[])
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.raw(tar::EntryType::Regular, path, "", 0o644, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(tar::EntryType::Symlink, path, target, 0o777, &[])
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(tar::EntryType::Link, path, target, 0o644, &[])
    }

    /// A file preceded by a PAX header carrying extended attributes
    /// (`SCHILY.xattr.NAME`), as GNU tar and Docker write them.
    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let ext: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.inner
            .append_pax_extensions(ext.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("appending to a Vec");
        self.file(path, data)
    }

    pub fn char_device(&mut self, path: &str) -> &mut Self {
        self.raw(tar::EntryType::Char, path, "", 0o666, &[])
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.inner, tar::Builder::new(Vec::new()));
        b.into_inner().expect("finishing a Vec")
    }
}

/// A layer with /data (files a and b) and /etc/motd, for whiteout tests.
pub fn whiteout_base_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("data/")
        .file("data/a", b"a")
        .file("data/b", b"b")
        .dir("etc/")
        .file("etc/motd", b"hello")
        .finish()
}

/// The layer above [`whiteout_base_layer`]: a plain whiteout of /etc/motd
/// and an opaque /data that holds only a new file.
pub fn whiteout_layer() -> Vec<u8> {
    TarBuilder::new()
        .file("etc/.wh.motd", b"")
        .dir("data/")
        .file("data/.wh..wh..opq", b"")
        .file("data/new", b"new")
        .finish()
}

/// The sha256 digest of bytes, `sha256:<hex>`.
pub fn digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Gzips bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("writing to a Vec");
    e.finish().expect("finishing a Vec")
}

/// An image config for layers with these diff ids, running `cmd`.
pub fn image_config(diff_ids: &[String], cmd: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "created": "2026-11-29T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| serde_json::json!({"created": "2026-11-29T00:00:00Z", "created_by": "berth test"})).collect::<Vec<_>>(),
    }))
    .expect("serializing a config")
}

/// One image of an OCI layout archive: its layers (uncompressed tars) and
/// its reference.
pub struct OciImage {
    pub reference: String,
    pub layers: Vec<Vec<u8>>,
    pub gzip: bool,
}

/// Writes an OCI image layout holding these images as a tar archive. Blobs
/// shared between images are stored once.
pub fn oci_archive(images: &[OciImage]) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let add = |blobs: &mut Vec<(String, Vec<u8>)>, data: Vec<u8>| -> (String, u64) {
        let d = digest(&data);
        let len = data.len() as u64;
        if !blobs.iter().any(|(x, _)| *x == d) {
            blobs.push((d.clone(), data));
        }
        (d, len)
    };
    let mut manifests = Vec::new();
    for img in images {
        let diff_ids: Vec<String> = img.layers.iter().map(|l| digest(l)).collect();
        let mut layer_descs = Vec::new();
        for l in &img.layers {
            let (data, media) = if img.gzip {
                (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
            } else {
                (l.clone(), "application/vnd.oci.image.layer.v1.tar")
            };
            let (d, size) = add(&mut blobs, data);
            layer_descs.push(serde_json::json!({"mediaType": media, "digest": d, "size": size}));
        }
        let (cd, csize) = add(&mut blobs, image_config(&diff_ids, &["sh"]));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
            "layers": layer_descs,
        }))
        .expect("serializing a manifest");
        let (md, msize) = add(&mut blobs, manifest);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": img.reference},
        }));
    }
    let index =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .expect("serializing an index");
    let mut t = TarBuilder::new();
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    t.file("index.json", &index);
    t.dir("blobs/");
    t.dir("blobs/sha256/");
    for (d, data) in &blobs {
        t.file(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            data,
        );
    }
    t.finish()
}
