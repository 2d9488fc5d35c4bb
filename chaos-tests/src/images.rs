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
