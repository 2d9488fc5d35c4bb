//! The build context, and COPY and ADD from it (or from a stage or image).
//!
//! The context arrives as a tar stream; it is checked against the store's
//! archive limits as it streams and unpacked by the same code that unpacks
//! layers (no absolute paths, no `..`, nothing written through a symlink,
//! no device nodes) into the build's private work dir.
//!
//! Sources are resolved inside their root with openat2(2) and
//! RESOLVE_IN_ROOT (so a symlink in the context or in a stage is followed
//! as Docker follows it, scoped to that root, and never to the host), and
//! destinations inside the step's rootfs likewise. Below a source, nothing
//! is followed: symlinks are copied as symlinks, and each file is written
//! with O_NOFOLLOW into a directory already opened inside the rootfs.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use super::{BuildError, Source};
use crate::image::limits::{ArchiveLimits, Checked, DiskGuard, ScanLimits};
use crate::runtime::inroot::{fd_path, Make, Root};

/// One COPY or ADD, with its words already substituted.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// ADD: local tar archives are unpacked.
    pub add: bool,
    /// The sources as written, relative to their root.
    pub sources: Vec<String>,
    /// The destination, absolute (WORKDIR already applied); a trailing `/`
    /// makes it a directory.
    pub dest: String,
    /// `--chown=USER[:GROUP]`.
    pub chown: Option<String>,
    /// `--chmod=MODE` (octal).
    pub chmod: Option<u32>,
    /// The context, or an earlier stage's or an image's layers.
    pub source: Source,
    /// The Dockerfile line, for errors.
    pub line: usize,
}

/// Unpacks the context's tar stream into `dir`, checked against `limits`
/// as it streams (its total size, its entries, its headers) and against the
/// free space of `dir`'s filesystem.
pub fn unpack(src: impl Read, dir: &Path, limits: &ArchiveLimits) -> Result<(), BuildError> {
    fs::create_dir_all(dir).map_err(|e| BuildError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // A context may come compressed, as Docker's may (gzip or zstd).
    let mut src = BufReader::new(src);
    let head = std::io::BufRead::fill_buf(&mut src)
        .map_err(|e| BuildError::Context(e.to_string()))?
        .to_vec();
    let src: Box<dyn Read> = match crate::image::layer::Compression::detect(&head) {
        crate::image::layer::Compression::None => Box::new(src),
        crate::image::layer::Compression::Gzip => Box::new(flate2::read::GzDecoder::new(src)),
        crate::image::layer::Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(src)
                .map_err(|e| BuildError::Context(format!("zstd: {e}")))?,
        ),
    };
    let mut checked = Checked::new(src, context_limits(limits), dir, limits.min_free_bytes);
    let unpacked = crate::snapshot::unpack_layer(&mut checked, dir);
    if let Some(limit) = checked.refused() {
        return Err(BuildError::Context(limit.to_string()));
    }
    unpacked.map_err(|e| {
        BuildError::Context(
            e.to_string()
                .replace("layer entry", "entry")
                .replace("the layer", "the context"),
        )
    })
}

/// The real path of `path` (relative to the context, as a Dockerfile names
/// it), resolved inside the context.
pub fn inside(ctx: &Path, path: &str) -> Result<PathBuf, String> {
    let rel = relative(path).ok_or_else(|| outside(path))?;
    let root = Root::open(ctx).map_err(|e| e.to_string())?;
    let fd = root
        .find(&rel)
        .map_err(|_| format!("{path} not found in the build context"))?;
    fs::read_link(fd_path(&fd)).map_err(|e| e.to_string())
}

/// The most bytes of a Dockerfile or a .dockerignore read from a context.
pub const MAX_CONTROL_FILE: u64 = 16 << 20;

/// Reads a small file of the context (the Dockerfile, .dockerignore),
/// resolved inside the context: it must be a regular file (not a fifo, not
/// a link out), of at most [`MAX_CONTROL_FILE`] bytes. `Ok(None)` when it
/// does not exist.
pub fn read_control_file(ctx: &Path, path: &str) -> Result<Option<String>, String> {
    let rel = relative(path).ok_or_else(|| outside(path))?;
    let root = Root::open(ctx).map_err(|e| e.to_string())?;
    let Ok(fd) = root.find(&rel) else {
        return Ok(None);
    };
    let at = fd_path(&fd);
    let meta = fs::metadata(&at).map_err(|e| format!("{path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    if meta.len() > MAX_CONTROL_FILE {
        return Err(format!(
            "{path} is {} bytes, more than the {MAX_CONTROL_FILE} a build reads",
            meta.len()
        ));
    }
    let mut text = String::new();
    File::open(&at)
        .map_err(|e| format!("{path}: {e}"))?
        .take(MAX_CONTROL_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(Some(text))
}

/// Removes the file `path` of the context, its directory resolved inside
/// the context and its last component not followed (a symlink there is
/// removed, not what it names).
pub fn remove_in(ctx: &Path, path: &str) -> Result<(), String> {
    let rel = relative(path).ok_or_else(|| outside(path))?;
    let Some(name) = rel.file_name() else {
        return Ok(());
    };
    let parent = rel.parent().unwrap_or(Path::new(""));
    let root = Root::open(ctx).map_err(|e| e.to_string())?;
    let Ok(dir) = root.find(parent) else {
        return Ok(());
    };
    let dir = fs::read_link(fd_path(&dir)).map_err(|e| e.to_string())?;
    match fs::remove_file(dir.join(name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

/// Deletes the entry `path` of the context, whatever it is (a directory
/// with all it holds), for an incremental context: its directory resolved
/// inside the context, its last component not followed. A path that is
/// not there is no error.
pub fn remove_entry(ctx: &Path, path: &str) -> Result<(), String> {
    let rel = relative(path).ok_or_else(|| outside(path))?;
    let Some(name) = rel.file_name() else {
        return Err(format!("{path}: not an entry of the context"));
    };
    let parent = rel.parent().unwrap_or(Path::new(""));
    let root = Root::open(ctx).map_err(|e| e.to_string())?;
    let Ok(dir) = root.find(parent) else {
        return Ok(());
    };
    let dir = fs::read_link(fd_path(&dir)).map_err(|e| e.to_string())?;
    let at = dir.join(name);
    let removed = match fs::symlink_metadata(&at) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        // remove_dir_all follows no symlink below the directory.
        Ok(m) if m.is_dir() => fs::remove_dir_all(&at),
        Ok(_) => fs::remove_file(&at),
    };
    removed.map_err(|e| format!("{path}: {e}"))
}

/// Copies what `spec` names from `src_root` (the context, or a stage's
/// rootfs) into `rootfs`, with Docker's rules:
/// - a file lands at the destination, or in it when the destination ends
///   with `/` or is a directory already;
/// - a directory's content (not the directory itself) lands in the
///   destination;
/// - wildcards match with Go's filepath.Match syntax; more than one source
///   needs a destination that ends with `/`;
/// - what is copied belongs to root (or to `--chown`), keeps its mode (or
///   takes `--chmod`) and its modification time;
/// - ADD unpacks a local tar archive (plain, gzip or zstd) into the
///   destination, keeping the archive's owners.
pub fn copy(
    src_root: &Path,
    rootfs: &Path,
    spec: &CopySpec,
    limits: &ArchiveLimits,
) -> Result<(), BuildError> {
    let err = |why: String| BuildError::Step {
        line: spec.line,
        why,
    };
    let src = Root::open(src_root).map_err(|e| err(e.to_string()))?;
    let dst = Root::open(rootfs).map_err(|e| err(e.to_string()))?;
    let owner = match &spec.chown {
        None => (0, 0),
        Some(c) => chown_ids(rootfs, c).map_err(err)?,
    };
    let items = expand(&src, spec).map_err(err)?;
    let dest_is_dir = spec.dest.ends_with('/');
    if items.len() > 1 && !dest_is_dir {
        return Err(err(format!(
            "When using {} with more than one source file, the destination must be a directory and end with a /",
            if spec.add { "ADD" } else { "COPY" }
        )));
    }
    let dest = Path::new(spec.dest.trim_end_matches('/'));
    let dest = if dest.as_os_str().is_empty() {
        Path::new("/")
    } else {
        dest
    };
    let w = Writer {
        owner,
        chmod: spec.chmod,
        line: spec.line,
        disk: RefCell::new(DiskGuard::new(rootfs, limits.min_free_bytes)),
    };
    for rel in items {
        let fd = src
            .find(&rel)
            .map_err(|_| err(not_found(spec, &rel.to_string_lossy())))?;
        let path = fd_path(&fd);
        let meta = fs::metadata(&path).map_err(|e| err(format!("{}: {e}", rel.display())))?;
        if meta.is_dir() {
            let into = make_dir(&dst, dest, &w)?;
            w.copy_tree(&path, &into)?;
            continue;
        }
        if spec.add {
            if let Some(kind) = archive_kind(&path).map_err(err)? {
                let into = make_dir(&dst, dest, &w)?;
                let file = File::open(&path).map_err(|e| err(e.to_string()))?;
                return_if_err(unpack_archive(file, kind, &into, limits), spec.line)?;
                continue;
            }
        }
        let name = rel
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_else(|| "file".into());
        let existing_dir = dst
            .find(dest)
            .ok()
            .and_then(|fd| fs::metadata(fd_path(&fd)).ok())
            .is_some_and(|m| m.is_dir());
        let (dir, name) = if dest_is_dir || existing_dir {
            (make_dir(&dst, dest, &w)?, name)
        } else {
            let parent = dest.parent().unwrap_or(Path::new("/"));
            let file_name = dest
                .file_name()
                .ok_or_else(|| err(format!("invalid destination {}", spec.dest)))?
                .to_owned();
            (make_dir(&dst, parent, &w)?, file_name)
        };
        if meta.file_type().is_file() {
            // The source is the resolved descriptor's path: a magic link
            // to follow.
            w.copy_file(&path, &meta, &dir, &name, true)?;
        }
    }
    Ok(())
}

/// A digest of what `spec`'s sources hold in the context (paths, types,
/// modes, contents and link targets, not times), for the build cache: an
/// edited source changes it.
pub fn digest_sources(root: &Path, spec: &CopySpec) -> Result<String, String> {
    let src = Root::open(root).map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    for rel in expand(&src, spec)? {
        let fd = src
            .find(&rel)
            .map_err(|_| not_found(spec, &rel.to_string_lossy()))?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        digest_tree(&fd_path(&fd), Path::new(""), &mut h, true)
            .map_err(|e| format!("{}: {e}", rel.display()))?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The limits a context is held to: an image's, since it may hold as much.
fn context_limits(limits: &ArchiveLimits) -> ScanLimits {
    limits.archive()
}

/// How files are written: their owner, the mode `--chmod` gives, the
/// Dockerfile line for errors.
struct Writer {
    owner: (u32, u32),
    chmod: Option<u32>,
    line: usize,
    /// The free space of the rootfs's filesystem, which each file written
    /// is counted against (hard links in a context cost nothing to send
    /// but are copied as files).
    disk: RefCell<DiskGuard>,
}

impl Writer {
    fn err(&self, why: String) -> BuildError {
        BuildError::Step {
            line: self.line,
            why,
        }
    }

    /// Copies the content of the directory at `src` into the opened
    /// directory `dst`, following no symlink on either side.
    fn copy_tree(&self, src: &Path, dst: &OwnedFd) -> Result<(), BuildError> {
        let entries = fs::read_dir(src).map_err(|e| self.err(format!("{}: {e}", src.display())))?;
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let from = src.join(&name);
            let meta = fs::symlink_metadata(&from)
                .map_err(|e| self.err(format!("{}: {e}", from.display())))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                let sub = self.dir_in(dst, &name)?;
                self.copy_tree(&from, &sub)?;
                self.finish(&fd_path(&sub), &meta, false)?;
            } else if ft.is_file() {
                self.copy_file(&from, &meta, dst, &name, false)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&from)
                    .map_err(|e| self.err(format!("{}: {e}", from.display())))?;
                let at = fd_path(dst).join(&name);
                self.clear(&at, false)?;
                std::os::unix::fs::symlink(&target, &at)
                    .map_err(|e| self.err(format!("{}: {e}", at.display())))?;
                self.finish(&at, &meta, true)?;
            }
            // Sockets, fifos and device nodes are not copied, as Docker's
            // builder does not copy devices from a context.
        }
        Ok(())
    }

    /// Writes one file named `name` into the opened directory `dir`;
    /// `from` is followed only when `resolved` (a descriptor's path).
    fn copy_file(
        &self,
        from: &Path,
        meta: &fs::Metadata,
        dir: &OwnedFd,
        name: &std::ffi::OsStr,
        resolved: bool,
    ) -> Result<(), BuildError> {
        let at = fd_path(dir).join(name);
        self.clear(&at, true)?;
        let mut input = fs::OpenOptions::new()
            .read(true)
            .custom_flags(if resolved { 0 } else { libc::O_NOFOLLOW })
            .open(from)
            .map_err(|e| self.err(format!("{}: {e}", from.display())))?;
        // O_NOFOLLOW: a symlink at the destination is never written through
        // (clear just removed any; one raced in makes this fail).
        let mut output = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&at)
            .map_err(|e| self.err(format!("writing {}: {e}", name.to_string_lossy())))?;
        self.disk
            .borrow_mut()
            .write(meta.len())
            .map_err(|e| self.err(format!("copying {}: {e}", name.to_string_lossy())))?;
        std::io::copy(&mut input, &mut output)
            .map_err(|e| self.err(format!("copying {}: {e}", from.display())))?;
        output
            .flush()
            .map_err(|e| self.err(format!("writing {}: {e}", name.to_string_lossy())))?;
        self.finish_file(&output, meta)
    }

    /// A subdirectory `name` of the opened directory `dir`, made if
    /// missing (replacing a file or a symlink), opened without following.
    fn dir_in(&self, dir: &OwnedFd, name: &std::ffi::OsStr) -> Result<OwnedFd, BuildError> {
        let at = fd_path(dir).join(name);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&at).map_err(|e| self.err(format!("{}: {e}", at.display())))?;
                make_one_dir(&at).map_err(|e| self.err(e))?;
            }
            Err(_) => make_one_dir(&at).map_err(|e| self.err(e))?,
        }
        open_dir_nofollow(&at).map_err(|e| self.err(e))
    }

    /// Makes room for a file (or a symlink) at `at`: removes a symlink or
    /// a file there, and a directory only when `file` is false.
    fn clear(&self, at: &Path, file: bool) -> Result<(), BuildError> {
        match fs::symlink_metadata(at) {
            Ok(m) if m.is_dir() => {
                if file {
                    return Err(self.err(format!(
                        "cannot overwrite directory {} with non-directory",
                        at.file_name().unwrap_or_default().to_string_lossy()
                    )));
                }
                fs::remove_dir_all(at).map_err(|e| self.err(format!("{}: {e}", at.display())))
            }
            Ok(_) => fs::remove_file(at).map_err(|e| self.err(format!("{}: {e}", at.display()))),
            Err(_) => Ok(()),
        }
    }

    /// The owner, mode and times of a written file, set through its
    /// descriptor.
    fn finish_file(&self, f: &File, meta: &fs::Metadata) -> Result<(), BuildError> {
        std::os::unix::fs::fchown(f, Some(self.owner.0), Some(self.owner.1))
            .map_err(|e| self.err(format!("chown: {e}")))?;
        // After the chown, which clears setuid bits.
        let mode = self.chmod.unwrap_or(meta.mode() & 0o7777);
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| self.err(format!("chmod: {e}")))?;
        f.set_times(
            fs::FileTimes::new()
                .set_modified(mtime(meta))
                .set_accessed(mtime(meta)),
        )
        .map_err(|e| self.err(format!("setting times: {e}")))
    }

    /// The owner, mode and times of a directory or a symlink at `at`,
    /// which names it without following it.
    fn finish(&self, at: &Path, meta: &fs::Metadata, symlink: bool) -> Result<(), BuildError> {
        if symlink {
            std::os::unix::fs::lchown(at, Some(self.owner.0), Some(self.owner.1))
                .map_err(|e| self.err(format!("chown {}: {e}", at.display())))?;
            let t = nix::sys::time::TimeSpec::from_duration(
                mtime(meta).duration_since(UNIX_EPOCH).unwrap_or_default(),
            );
            // utimensat(2) with AT_SYMLINK_NOFOLLOW: the link's own times.
            return nix::sys::stat::utimensat(
                None,
                at,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| self.err(format!("setting times of {}: {e}", at.display())));
        }
        let f = File::open(at).map_err(|e| self.err(format!("{}: {e}", at.display())))?;
        self.finish_file(&f, meta)
    }
}

/// Opens (making what is missing, owned by `w`'s owner) the directory
/// `dir` inside the rootfs.
fn make_dir(dst: &Root, dir: &Path, w: &Writer) -> Result<OwnedFd, BuildError> {
    // Docker gives the directories it makes for a destination the COPY's
    // owner: find the first missing one, then chown each made.
    let mut missing = Vec::new();
    let mut p = dir.to_path_buf();
    while dst.find(&p).is_err() {
        missing.push(p.clone());
        if !p.pop() {
            break;
        }
    }
    let fd = dst
        .open_dest(dir, Make::Dir)
        .map_err(|e| w.err(format!("{}: {e}", dir.display())))?;
    for m in missing.iter().rev() {
        if let Ok(fd) = dst.find(m) {
            if let Ok(f) = File::open(fd_path(&fd)) {
                let _ = std::os::unix::fs::fchown(&f, Some(w.owner.0), Some(w.owner.1));
            }
        }
    }
    Ok(fd)
}

fn make_one_dir(at: &Path) -> Result<(), String> {
    // mkdir(2) never follows a symlink at its last component.
    fs::create_dir(at).map_err(|e| format!("{}: {e}", at.display()))
}

fn open_dir_nofollow(at: &Path) -> Result<OwnedFd, String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(at)
        .map_err(|e| format!("{}: {e}", at.display()))?;
    Ok(OwnedFd::from(f))
}

fn mtime(meta: &fs::Metadata) -> SystemTime {
    let secs = meta.mtime();
    let nanos = meta.mtime_nsec().clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH
    }
}

/// `USER[:GROUP]` of `--chown`, by the rootfs's own passwd and group
/// files. As Docker does, a missing group is the user's name (or number)
/// looked up as a group.
fn chown_ids(rootfs: &Path, spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, spec),
    };
    if user.is_empty() || group.is_empty() {
        return Err(format!("invalid --chown={spec}: give USER or USER:GROUP"));
    }
    let uid = match user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            crate::runtime::users::resolve(rootfs, user)
                .map_err(|e| format!("--chown={spec}: {e}"))?
                .0
        }
    };
    let gid = match group.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            crate::runtime::users::resolve(rootfs, &format!("0:{group}"))
                .map_err(|e| format!("--chown={spec}: {e}"))?
                .1
        }
    };
    Ok((uid, gid))
}

/// A source path as relative components, or None when it climbs out of
/// its root.
fn relative(path: &str) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

fn outside(path: &str) -> String {
    format!("forbidden path outside the build context: {path}")
}

fn not_found(spec: &CopySpec, path: &str) -> String {
    match &spec.source {
        Source::Context => {
            format!("file not found in build context or excluded by .dockerignore: {path}")
        }
        Source::Layers(_, id) => format!(
            "{path} not found in {}",
            id.strip_prefix("sha256:")
                .map_or(id.as_str(), |h| &h[..h.len().min(12)])
        ),
    }
}

fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The sources a spec names, relative to the root: each as written, or
/// the paths its wildcards match (sorted). A remote URL, a path outside
/// the root, or a pattern that matches nothing is an error.
fn expand(src: &Root, spec: &CopySpec) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for s in &spec.sources {
        if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@") {
            return Err(format!(
                "{} of a remote URL is not supported: {s}; fetch it beforehand and send it in the context",
                if spec.add { "ADD" } else { "COPY" }
            ));
        }
        // Docker refuses climbing out only for the context; a stage's
        // root stops `..` at itself.
        let rel = match relative(s) {
            Some(r) => r,
            None if matches!(spec.source, Source::Context) => return Err(outside(s)),
            None => PathBuf::new(),
        };
        if !has_magic(&rel.to_string_lossy()) {
            src.find(&rel).map_err(|_| not_found(spec, s))?;
            out.push(rel);
            continue;
        }
        let pattern = glob::Pattern::new(&rel.to_string_lossy())
            .map_err(|e| format!("the pattern {s:?} is not valid: {}", e.msg))?;
        // Walk from the directory before the first wildcard, as deep as
        // the pattern reaches.
        let comps: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let fixed: PathBuf = comps.iter().take_while(|c| !has_magic(c)).collect();
        let depth = if comps.iter().any(|c| c == "**") {
            usize::MAX
        } else {
            comps.len()
        };
        let Ok(start) = src.find(&fixed) else {
            return Err(not_found(spec, s));
        };
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut found = Vec::new();
        walk(&fd_path(&start), &fixed, depth, &mut |rel: &Path| {
            if pattern.matches_path_with(rel, opts) {
                found.push(rel.to_path_buf());
            }
        });
        if found.is_empty() {
            return Err(not_found(spec, s));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Calls `f` with every path below `dir` (named `rel`), to `depth`
/// components, following no symlink.
fn walk(dir: &Path, rel: &Path, depth: usize, f: &mut dyn FnMut(&Path)) {
    if rel.components().count() >= depth {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let sub = rel.join(e.file_name());
        f(&sub);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), &sub, depth, f);
        }
    }
}

fn digest_tree(path: &Path, rel: &Path, h: &mut Sha256, top: bool) -> std::io::Result<()> {
    // The top is the resolved source itself (its fd path); below it,
    // nothing is followed.
    let meta = if top {
        fs::metadata(path)?
    } else {
        fs::symlink_metadata(path)?
    };
    h.update(rel.as_os_str().as_encoded_bytes());
    h.update(format!("\0{:o}\0", meta.mode()).as_bytes());
    let ft = meta.file_type();
    if ft.is_symlink() {
        h.update(fs::read_link(path)?.as_os_str().as_encoded_bytes());
    } else if ft.is_file() {
        h.update(meta.len().to_le_bytes());
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(if top { 0 } else { libc::O_NOFOLLOW })
            .open(path)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    } else if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            digest_tree(&path.join(&n), &rel.join(&n), h, false)?;
        }
    }
    h.update([0]);
    Ok(())
}

/// The kinds of archive ADD unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveKind {
    Tar,
    Gzip,
    Zstd,
}

/// Whether the file at `path` is an archive ADD unpacks (by its first
/// bytes, as Docker decides). bzip2 and xz are refused by name rather
/// than copied as they are.
fn archive_kind(path: &Path) -> Result<Option<ArchiveKind>, String> {
    let mut head = [0u8; 512];
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..]).map_err(|e| e.to_string())?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = &head[..n];
    // A compressed file is an archive only if what it holds is a tar, as
    // Docker decides; otherwise it is copied as it is.
    let holds_tar = |kind: ArchiveKind| -> bool {
        let Ok(f) = File::open(path) else {
            return false;
        };
        let mut inner: Box<dyn Read> = match kind {
            ArchiveKind::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
            ArchiveKind::Zstd => match zstd::stream::read::Decoder::new(f) {
                Ok(d) => Box::new(d),
                Err(_) => return false,
            },
            ArchiveKind::Tar => return true,
        };
        let mut block = [0u8; 512];
        inner.read_exact(&mut block).is_ok() && &block[257..262] == b"ustar"
    };
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        holds_tar(ArchiveKind::Gzip).then_some(ArchiveKind::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        holds_tar(ArchiveKind::Zstd).then_some(ArchiveKind::Zstd)
    } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(format!(
            "{}: ADD unpacks plain, gzip and zstd tar archives; this one is bzip2 or xz: recompress it or COPY it",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Some(ArchiveKind::Tar)
    } else {
        None
    })
}

fn return_if_err(r: Result<(), String>, line: usize) -> Result<(), BuildError> {
    r.map_err(|why| BuildError::Step { line, why })
}

/// Unpacks a local archive into the opened directory `into`, held to a
/// layer's limits.
fn unpack_archive(
    file: File,
    kind: ArchiveKind,
    into: &OwnedFd,
    limits: &ArchiveLimits,
) -> Result<(), String> {
    let reader: Box<dyn Read> = match kind {
        ArchiveKind::Tar => Box::new(BufReader::new(file)),
        ArchiveKind::Gzip => Box::new(flate2::read::GzDecoder::new(BufReader::new(file))),
        ArchiveKind::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| format!("zstd: {e}"))?)
        }
    };
    let dir = fs::read_link(fd_path(into)).map_err(|e| e.to_string())?;
    let mut checked = Checked::new(reader, limits.layer(), &dir, limits.min_free_bytes);
    let unpacked = crate::snapshot::unpack_layer(&mut checked, &dir);
    if let Some(limit) = checked.refused() {
        return Err(format!("the archive: {limit}"));
    }
    unpacked.map_err(|e| format!("the archive: {e}"))
}
