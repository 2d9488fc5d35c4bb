//! Layer snapshots and overlay mounts. Each layer is unpacked once per diff
//! id into `snapshots/<hex>`, with OCI whiteouts turned into overlayfs ones;
//! a container's rootfs is an overlay of its image's snapshots plus its own
//! upper dir.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors of unpacking layers and mounting rootfs.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the layer is not a readable tar archive: {}", chain(.0))]
    Tar(std::io::Error),
    #[error("layer entry {0:?} has an absolute path")]
    AbsolutePath(PathBuf),
    #[error("layer entry {0:?} climbs out of the layer with ..")]
    ParentPath(PathBuf),
    #[error("layer entry {0:?} is a device node, which images may not carry")]
    DeviceNode(PathBuf),
    #[error("layer entry {entry:?} links to {target:?}, outside the layer")]
    LinkEscape { entry: PathBuf, target: PathBuf },
    #[error("layer entry {0:?} would be written outside the layer (through a symlink)")]
    Escape(PathBuf),
    #[error("layer entry {entry:?} sets the extended attribute {name:?}, which is the host's (trusted.*) to set")]
    Xattr { entry: PathBuf, name: String },
    #[error("invalid diff id {0:?}")]
    BadDiffId(String),
    #[error("mounting the overlay at {target}: {source}")]
    Mount { target: PathBuf, source: nix::Error },
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
}

/// An error with its causes, for messages that must name the real cause.
fn chain(e: &std::io::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of unpacked layers.
pub struct Snapshots {
    root: PathBuf,
    unpacking: std::sync::Mutex<()>,
}

impl Snapshots {
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        // Only root may walk into the layers: they hold images' setuid
        // binaries, which no other user of the host may run from here.
        fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err(root))?;
        Ok(Self {
            root: root.to_path_buf(),
            unpacking: std::sync::Mutex::new(()),
        })
    }

    /// Where the layer with this diff id is (or would be) unpacked.
    pub fn path(&self, diff_id: &str) -> Result<PathBuf, SnapshotError> {
        let hex = diff_id
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| SnapshotError::BadDiffId(diff_id.to_string()))?;
        Ok(self.root.join(hex))
    }

    /// Unpacks an uncompressed layer tar once: a layer already unpacked is
    /// reused. A layer that fails leaves nothing behind. Returns the
    /// layer's directory and whether this call made it.
    pub fn unpack(&self, diff_id: &str, tar: impl Read) -> Result<(PathBuf, bool), SnapshotError> {
        let dst = self.path(diff_id)?;
        // One unpack at a time: two of the same layer must not share a
        // directory, and a check of one must not race the other's symlinks.
        let _guard = self.unpacking.lock().unwrap_or_else(|p| p.into_inner());
        if dst.exists() {
            return Ok((dst, false));
        }
        // A directory of its own, private to root while it fills.
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.root)
            .map_err(io_err(&self.root))?;
        unpack_layer(tar, tmp.path())?;
        let tmp = tmp.keep();
        if let Err(e) = fs::rename(&tmp, &dst) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err(&dst)(e));
        }
        // The layer root holds the image's /; tempdirs are made 0700.
        let _ = fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        Ok((dst, true))
    }
}

impl Snapshots {
    /// Deletes every unpacked layer whose diff id `keep` rejects.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64
                && name.bytes().all(|b| b.is_ascii_hexdigit())
                && !keep(&format!("sha256:{name}"))
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Checks that an archive path stays inside the directory it unpacks into.
fn check_relative(path: &Path) -> Result<(), SnapshotError> {
    for c in path.components() {
        match c {
            Component::ParentDir => return Err(SnapshotError::ParentPath(path.to_path_buf())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(SnapshotError::AbsolutePath(path.to_path_buf()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Directories already checked to lie inside the layer, so that each is
/// resolved once. Any symlink unpacked may change what a path resolves to,
/// so unpacking one empties the cache.
struct CheckedDirs {
    real_root: PathBuf,
    checked: std::collections::HashMap<PathBuf, PathBuf>,
}

impl CheckedDirs {
    fn new(root: &Path) -> Result<Self, SnapshotError> {
        Ok(Self {
            real_root: root.canonicalize().map_err(io_err(root))?,
            checked: std::collections::HashMap::new(),
        })
    }

    /// The real directory an entry lands in, created if missing, after
    /// checking that symlinks already unpacked do not lead it outside.
    fn parent(&mut self, rel: &Path) -> Result<PathBuf, SnapshotError> {
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if let Some(real) = self.checked.get(&parent_rel) {
            return Ok(real.clone());
        }
        // Walk down one component at a time, creating what is missing and
        // following no symlink: an entry is never written through a link,
        // even one that stays inside the layer (image tools do not write
        // such entries).
        let mut dir = self.real_root.clone();
        for c in parent_rel.components() {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SnapshotError::Escape(rel.to_path_buf()))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    // A file where a directory is wanted: a later entry replaces it.
                    fs::remove_file(&dir).map_err(io_err(&dir))?;
                    fs::create_dir(&dir).map_err(io_err(&dir))?;
                }
                Err(_) => fs::create_dir(&dir).map_err(io_err(&dir))?,
            }
        }
        self.checked.insert(parent_rel, dir.clone());
        Ok(dir)
    }

    fn forget(&mut self) {
        self.checked.clear();
    }
}

/// Unpacks one layer tar into `root`, refusing hostile entries and turning
/// OCI whiteouts into overlayfs whiteouts.
pub fn unpack_layer(tar: impl Read, root: &Path) -> Result<(), SnapshotError> {
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    // Extended attributes are applied here, filtered (see xattrs_of).
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut dirs = CheckedDirs::new(root)?;
    for entry in archive.entries().map_err(SnapshotError::Tar)? {
        let mut entry = entry.map_err(SnapshotError::Tar)?;
        let path = entry.path().map_err(SnapshotError::Tar)?.into_owned();
        check_relative(&path)?;
        let Some(name) = path.file_name().map(|n| n.to_owned()) else {
            // "." or an empty name: the root itself.
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() {
            return Err(SnapshotError::DeviceNode(path));
        }
        let xattrs = xattrs_of(&mut entry, &path)?;
        let parent = dirs.parent(&path)?;
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(SnapshotError::ParentPath(path));
            }
            if hidden == b".wh..opq" {
                set_opaque(&parent)?;
            } else {
                let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
                let _ = fs::remove_dir_all(&target);
                let _ = fs::remove_file(&target);
                whiteout(&target)?;
            }
            continue;
        }
        let dest = parent.join(&name);
        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(SnapshotError::Tar)?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let escape = || SnapshotError::LinkEscape {
                entry: path.clone(),
                target: target.clone(),
            };
            if check_relative(&target).is_err() {
                return Err(escape());
            }
            let target_name = target.file_name().ok_or_else(escape)?;
            let source = dirs
                .parent(&target)
                .map_err(|_| escape())?
                .join(target_name);
            // A hardlink to a symlink would let the link stand in for a
            // file outside the layer.
            if fs::symlink_metadata(&source)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(true)
            {
                return Err(escape());
            }
            let _ = fs::remove_file(&dest);
            fs::hard_link(&source, &dest).map_err(io_err(&dest))?;
            continue;
        }
        if kind.is_symlink() {
            dirs.forget();
        }
        // What is already at the path: a symlink is always replaced (so that
        // nothing is written or chmod'ed through it), a directory only by
        // an entry that is not one (a later layer entry replaces an earlier
        // one; a directory entry keeps the content and sets the metadata).
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(&dest).map_err(io_err(&dest))?,
            Ok(m) if m.is_dir() && !kind.is_dir() => {
                fs::remove_dir_all(&dest).map_err(io_err(&dest))?
            }
            _ => {}
        }
        entry.unpack(&dest).map_err(SnapshotError::Tar)?;
        for (name, value) in xattrs {
            set_xattr(&dest, &name, &value)?;
        }
    }
    Ok(())
}

/// The extended attributes a layer entry carries (PAX `SCHILY.xattr.*`)
/// that may land on the host's disk: `user.*` and `security.capability`
/// (file capabilities, which images such as ping's use). A `trusted.*` one
/// is refused: overlayfs reads trusted.overlay.* (opaque, redirect,
/// metacopy) from its layers, and an image must not steer the overlay.
/// Others (security.selinux and the like) are the host's and dropped.
fn xattrs_of<R: Read>(
    entry: &mut tar::Entry<R>,
    path: &Path,
) -> Result<Vec<(String, Vec<u8>)>, SnapshotError> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions().map_err(SnapshotError::Tar)? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(SnapshotError::Tar)?;
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if name.starts_with("trusted.") {
            return Err(SnapshotError::Xattr {
                entry: path.to_path_buf(),
                name: name.to_string(),
            });
        }
        if name.starts_with("user.") || name == "security.capability" {
            out.push((name.to_string(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

/// Sets an extended attribute on a path, not through a symlink.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), SnapshotError> {
    let sys = |source| SnapshotError::Sys {
        op: "lsetxattr",
        path: path.to_path_buf(),
        source,
    };
    let p = CString::new(path.as_os_str().as_bytes()).map_err(|_| sys(nix::Error::EINVAL))?;
    let n = CString::new(name).map_err(|_| sys(nix::Error::EINVAL))?;
    // SAFETY: lsetxattr(2) reads the two NUL-terminated strings and the
    // value buffer for its length; all outlive the call. The l- variant
    // acts on a symlink itself, never on what it points to.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(sys(nix::Error::last()))
    }
}

/// Marks a directory opaque for overlayfs: lower layers' content under it
/// is hidden.
fn set_opaque(dir: &Path) -> Result<(), SnapshotError> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| SnapshotError::Escape(dir.to_path_buf()))?;
    // SAFETY: setxattr(2) reads the NUL-terminated path and the value
    // buffer for the given length; both outlive the call. The trusted.*
    // namespace is what overlayfs reads for opaque directories.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(SnapshotError::Sys {
            op: "setxattr",
            path: dir.to_path_buf(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// Creates an overlayfs whiteout: a 0/0 character device.
fn whiteout(path: &Path) -> Result<(), SnapshotError> {
    // mknod(2) of a 0/0 character device is how overlayfs records that a
    // lower file is deleted.
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(|source| SnapshotError::Sys {
        op: "mknod",
        path: path.to_path_buf(),
        source,
    })
}

/// Mounts an overlay of `lowers` (top-most first) with `upper` and `work`
/// at `target`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), SnapshotError> {
    for d in [upper, work, target] {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // redirect_dir=off (and with it metacopy off, whatever the kernel's
    // defaults): a renamed or copied-up lower entry lands in the upper dir
    // whole, so that the upper dir alone is what the container changed
    // (commit and diff read it).
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},redirect_dir=off",
        upper.display(),
        work.display()
    );
    // mount(2) of overlayfs: the kernel merges the read-only snapshots
    // under the container's writable upper dir.
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|source| SnapshotError::Mount {
        target: target.to_path_buf(),
        source,
    })
}

/// Mounts a read-only overlay of `lowers` (top-most first, at least two)
/// at `target`: a container's merged filesystem without touching it.
pub fn mount_readonly(lowers: &[PathBuf], target: &Path) -> Result<(), SnapshotError> {
    fs::create_dir_all(target).map_err(io_err(target))?;
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // mount(2) of overlayfs with lower layers only is read-only by nature.
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .map_err(|source| SnapshotError::Mount {
        target: target.to_path_buf(),
        source,
    })
}

/// Unmounts a rootfs if it is mounted; a path that is not a mount point is
/// fine.
pub fn unmount(target: &Path) -> Result<(), SnapshotError> {
    // umount2(2) with MNT_DETACH: the rootfs goes even if a straggling
    // process still holds it open.
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(SnapshotError::Sys {
            op: "umount",
            path: target.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header() -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = header();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..": write the raw name as a hostile tool would.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = header();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        let ln = &mut h.as_old_mut().linkname;
        ln[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    #[test]
    fn user_xattrs_are_kept_and_host_ones_dropped() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let layer = tar_with(|b| {
            b.append_pax_extensions([
                ("SCHILY.xattr.user.note", &b"kept"[..]),
                (
                    "SCHILY.xattr.security.selinux",
                    &b"system_u:object_r:etc_t:s0"[..],
                ),
            ])
            .unwrap();
            file(b, "etc/conf", b"x");
        });
        unpack_layer(layer.as_slice(), dir.path()).unwrap();
        let path = CString::new(dir.path().join("etc/conf").as_os_str().as_bytes()).unwrap();
        let get = |name: &str| -> Option<Vec<u8>> {
            let n = CString::new(name).unwrap();
            let mut buf = [0u8; 64];
            // SAFETY: lgetxattr(2) writes at most buf.len() bytes into buf.
            let len = unsafe {
                libc::lgetxattr(
                    path.as_ptr(),
                    n.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            (len >= 0).then(|| buf[..len as usize].to_vec())
        };
        assert_eq!(get("user.note").as_deref(), Some(&b"kept"[..]));
        assert_eq!(get("security.selinux"), None);
    }

    #[test]
    fn a_plain_layer_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(|b| {
            file(b, "bin/hello", b"hi");
            link(b, tar::EntryType::Symlink, "bin/sh", "/bin/hello");
        });
        unpack_layer(layer.as_slice(), dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("bin/hello")).unwrap(), b"hi");
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/hello")
        );
    }

    #[test]
    fn hostile_entries_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().display().to_string();
        type Check = fn(&SnapshotError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            ("dotdot", tar_with(|b| file(b, "../escape", b"x")), |e| {
                matches!(e, SnapshotError::ParentPath(_))
            }),
            (
                "absolute",
                tar_with(|b| file(b, "/tmp/berth-absolute-escape", b"x")),
                |e| matches!(e, SnapshotError::AbsolutePath(_)),
            ),
            (
                "symlink then write",
                tar_with(|b| {
                    link(b, tar::EntryType::Symlink, "out", &target);
                    file(b, "out/pwned", b"x");
                }),
                |e| matches!(e, SnapshotError::Escape(_)),
            ),
            (
                "hardlink outside",
                tar_with(|b| link(b, tar::EntryType::Link, "passwd", "../../etc/passwd")),
                |e| matches!(e, SnapshotError::LinkEscape { .. }),
            ),
            (
                "hardlink absolute",
                tar_with(|b| link(b, tar::EntryType::Link, "passwd", "/etc/passwd")),
                |e| matches!(e, SnapshotError::LinkEscape { .. }),
            ),
        ];
        for (what, layer, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("layer");
            fs::create_dir(&root).unwrap();
            let err = unpack_layer(layer.as_slice(), &root).expect_err(what);
            assert!(
                expected(&err),
                "{what} was refused for the wrong reason: {err}"
            );
            assert!(
                !outside.path().join("pwned").exists(),
                "{what} wrote outside"
            );
            assert!(!dir.path().join("escape").exists(), "{what} wrote outside");
        }
        assert!(!Path::new("/tmp/berth-absolute-escape").exists());
    }

    #[test]
    fn entries_replace_symlinks_instead_of_following_them() {
        let outside = tempfile::tempdir().unwrap();
        let target_file = outside.path().join("victim");
        fs::write(&target_file, b"original").unwrap();
        let out_dir = outside.path().display().to_string();
        let layer = tar_with(|b| {
            link(
                b,
                tar::EntryType::Symlink,
                "f",
                &target_file.display().to_string(),
            );
            file(b, "f", b"replaced");
            link(b, tar::EntryType::Symlink, "d", &out_dir);
            let mut h = header();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o777);
            h.set_size(0);
            h.as_old_mut().name[..2].copy_from_slice(b"d/");
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(layer.as_slice(), dir.path()).unwrap();
        assert_eq!(fs::read(&target_file).unwrap(), b"original");
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"replaced");
        assert!(fs::symlink_metadata(dir.path().join("d")).unwrap().is_dir());
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(
            fs::metadata(outside.path()).unwrap().permissions().mode() & 0o777,
            0o777
        );
    }

    #[test]
    fn device_nodes_are_refused() {
        let layer = tar_with(|b| {
            let mut h = header();
            h.set_path("dev/sda").unwrap();
            h.set_entry_type(tar::EntryType::Block);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(layer.as_slice(), dir.path()).unwrap_err();
        assert!(matches!(err, SnapshotError::DeviceNode(_)), "{err}");
    }
}
