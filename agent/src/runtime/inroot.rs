//! Paths inside a container's rootfs, resolved by the kernel: every
//! component of a mount destination is opened with openat2(2) and
//! RESOLVE_IN_ROOT, so a symlink (an absolute one, `..`, or one swapped in
//! by another container through a shared volume between a check and the
//! mount) is followed as the container would see it and never leads out.
//! What is missing is made one component at a time relative to the
//! directory already opened. The mount then goes onto the opened
//! descriptor's /proc/self/fd path, which names that very inode.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Errors of resolving a path inside a root.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    #[error("{0} climbs out with ..")]
    ParentDir(PathBuf),
    #[error("{0}: too many levels of symlinks")]
    Loop(PathBuf),
    /// The kernel has no openat2 (before Linux 5.6).
    #[error("openat2 is not available")]
    Unsupported,
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
}

/// What to make at a destination that is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Make {
    Dir,
    /// An empty file (a bind mount of a file goes onto a file).
    File,
}

/// A container's rootfs, held open.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    pub fn open(path: &Path) -> Result<Self, InRootError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| InRootError::Sys {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: open(2) just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens `dest` (a path as the container names it) inside the root as
    /// an O_PATH descriptor, making it (and the directories above it) where
    /// missing. A `..` in `dest` itself is refused.
    pub fn open_dest(&self, dest: &Path, make: Make) -> Result<OwnedFd, InRootError> {
        if dest.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(InRootError::ParentDir(dest.to_path_buf()));
        }
        self.resolve(&relative(dest), make, 0)
    }

    /// Opens `path` (as the container names it) inside the root as an
    /// O_PATH descriptor, following symlinks as the container would and
    /// making nothing. A `..` in `path` itself is refused.
    pub fn find(&self, path: &Path) -> Result<OwnedFd, InRootError> {
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(InRootError::ParentDir(path.to_path_buf()));
        }
        self.at(&relative(path))
    }

    fn resolve(&self, rel: &Path, make: Make, hops: usize) -> Result<OwnedFd, InRootError> {
        match self.at(rel) {
            Err(InRootError::Sys {
                source: nix::Error::ENOENT,
                ..
            }) => {}
            other => return other,
        }
        let parts: Vec<Component> = rel.components().collect();
        let mut dir = self.at(Path::new("."))?;
        let mut prefix = PathBuf::new();
        for (i, part) in parts.iter().enumerate() {
            prefix.push(part.as_os_str());
            match self.at(&prefix) {
                Ok(fd) => {
                    dir = fd;
                    continue;
                }
                Err(InRootError::Sys {
                    source: nix::Error::ENOENT,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
            let name = part.as_os_str();
            let last = i + 1 == parts.len();
            match create(&dir, name, if last { make } else { Make::Dir }) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(source) => {
                    return Err(InRootError::Sys {
                        op: "creating",
                        path: self.path.join(&prefix),
                        source,
                    })
                }
            }
            match self.at(&prefix) {
                Ok(fd) => dir = fd,
                Err(InRootError::Sys {
                    source: nix::Error::ENOENT,
                    ..
                }) => {
                    // A symlink to nothing yet: make its target, inside.
                    if hops >= 40 {
                        return Err(InRootError::Loop(rel.to_path_buf()));
                    }
                    let target =
                        nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name).map_err(|source| {
                            InRootError::Sys {
                                op: "reading the symlink",
                                path: self.path.join(&prefix),
                                source,
                            }
                        })?;
                    let target = Path::new(&target);
                    let mut next = if target.is_absolute() {
                        relative(target)
                    } else {
                        prefix.parent().unwrap_or(Path::new("")).join(target)
                    };
                    for rest in &parts[i + 1..] {
                        next.push(rest.as_os_str());
                    }
                    return self.resolve(&next, make, hops + 1);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(dir)
    }

    /// Opens a path relative to the root, resolved inside it.
    fn at(&self, rel: &Path) -> Result<OwnedFd, InRootError> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // openat2(2) with RESOLVE_IN_ROOT: the kernel resolves every
        // component as if the root were /, so no symlink or `..` leaves it.
        match openat2(self.fd.as_raw_fd(), rel, how) {
            // SAFETY: openat2 just returned this descriptor; nothing else
            // owns it.
            Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(nix::Error::ENOSYS) => Err(InRootError::Unsupported),
            Err(source) => Err(InRootError::Sys {
                op: "opening",
                path: self.path.join(rel),
                source,
            }),
        }
    }
}

/// The path through which an opened descriptor is mounted on: the kernel
/// follows it to the descriptor's own inode.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn relative(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect()
}

/// Makes one missing component in an opened directory; a name that exists
/// (a dangling symlink among them) is EEXIST and left as it is.
fn create(dir: &OwnedFd, name: &OsStr, make: Make) -> Result<(), nix::Error> {
    match make {
        // mkdirat(2) never follows a symlink at the name.
        Make::Dir => {
            nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755))
        }
        Make::File => {
            // openat(2) with O_CREAT|O_EXCL|O_NOFOLLOW: made here, never
            // through a link.
            let fd = nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
            // SAFETY: openat just returned it; closing it here is its end.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The real path an opened destination names.
    fn real(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(fd_path(fd)).unwrap()
    }

    #[test]
    fn destinations_resolve_and_are_made_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let r = dir.path().join("root");
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An image's links: absolute ones start again at the root, `..`
        // stops at it, and a link to a missing place makes it inside.
        symlink("/etc", r.join("abs")).unwrap();
        symlink("../../../../etc", r.join("rel")).unwrap();
        symlink(&outside, r.join("host")).unwrap();
        symlink("/made/here", r.join("dangling")).unwrap();
        let root = Root::open(&r).unwrap();
        let r = r.canonicalize().unwrap();
        let at = |p: &str, m: Make| real(&root.open_dest(Path::new(p), m).unwrap());
        assert_eq!(at("/abs/x", Make::Dir), r.join("etc/x"));
        assert_eq!(at("/rel/y", Make::Dir), r.join("etc/y"));
        assert_eq!(
            at("/host/z", Make::Dir),
            r.join(outside.strip_prefix("/").unwrap()).join("z")
        );
        assert_eq!(at("/dangling/w", Make::Dir), r.join("made/here/w"));
        assert_eq!(at("/a/b/file", Make::File), r.join("a/b/file"));
        assert!(r.join("a/b/file").is_file());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(matches!(
            root.open_dest(Path::new("/../etc"), Make::Dir),
            Err(InRootError::ParentDir(_))
        ));
        symlink("loop", r.join("loop")).unwrap();
        assert!(root.open_dest(Path::new("/loop/x"), Make::Dir).is_err());
    }
}
