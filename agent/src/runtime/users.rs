//! Users and groups by name, looked up in the container's own /etc/passwd
//! and /etc/group (never the host's).

use std::fs;
use std::path::Path;

use super::RuntimeError;

/// Reads a file of the rootfs, refusing one that a symlink leads outside.
fn read_inside(rootfs: &Path, rel: &str) -> Option<String> {
    let path = rootfs.join(rel);
    let real = path.canonicalize().ok()?;
    let root = rootfs.canonicalize().ok()?;
    if !real.starts_with(&root) || !real.is_file() {
        return None;
    }
    // A passwd file is small; an image may not make the agent read a huge one.
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(fs::File::open(real).ok()?, 1 << 20),
        &mut text,
    )
    .ok()?;
    Some(text)
}

/// Finds a name (or takes a number) in a passwd- or group-style file:
/// returns the id and, for passwd, the primary group.
fn lookup(file: Option<&str>, who: &str) -> Option<(u32, Option<u32>)> {
    if let Ok(n) = who.parse::<u32>() {
        let gid = file.and_then(|f| {
            f.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|p| p.len() > 3 && p[2] == who)
                .and_then(|p| p[3].parse().ok())
        });
        return Some((n, gid));
    }
    file?.lines().find_map(|l| {
        let p: Vec<&str> = l.split(':').collect();
        (p.len() > 2 && p[0] == who)
            .then(|| (p[2].parse().ok(), p.get(3).and_then(|g| g.parse().ok())))
            .and_then(|(id, g)| id.map(|id| (id, g)))
    })
}

/// Resolves `USER[:GROUP]` (names or numbers) to a uid and gid, as
/// `docker run -u` does; empty is root.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<(u32, u32), RuntimeError> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_inside(rootfs, "etc/passwd");
    let (uid, primary) = lookup(passwd.as_deref(), user).ok_or_else(|| {
        RuntimeError::Invalid(format!(
            "unable to find user {user}: no matching entries in passwd file"
        ))
    })?;
    let gid = match group {
        Some(g) => {
            let groups = read_inside(rootfs, "etc/group");
            lookup(groups.as_deref(), g)
                .map(|(id, _)| id)
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                })?
        }
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_from_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65533::/:/bin/false\n",
        )
        .unwrap();
        fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve(root.path(), "").unwrap(), (0, 0));
        assert_eq!(resolve(root.path(), "nobody").unwrap(), (65534, 65533));
        assert_eq!(resolve(root.path(), "nobody:staff").unwrap(), (65534, 50));
        assert_eq!(resolve(root.path(), "1000:1000").unwrap(), (1000, 1000));
        assert_eq!(resolve(root.path(), "1000").unwrap(), (1000, 0));
        assert!(resolve(root.path(), "ghost")
            .unwrap_err()
            .to_string()
            .contains("unable to find user ghost"));
    }

    #[test]
    fn a_passwd_symlinked_out_of_the_rootfs_is_not_read() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("passwd"), "alice:x:7:7::/:/bin/sh\n").unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(resolve(root.path(), "alice").is_err());
    }
}
