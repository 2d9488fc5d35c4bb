//! Kept build contexts. After a build whose client names its context (a
//! key), the node keeps the unpacked context under that key with a fresh
//! token; the client's next build of it sends only what changed since
//! (the entries that differ, and the paths to delete) against that token,
//! as BuildKit's local context transfer sends only what changed. At most
//! [`MAX_KEPT`] contexts are kept; the least recently built goes first.
//!
//! A kept copy is a directory named by its key and its token
//! (`KEY.TOKEN`), so that a build takes it with one rename of that name and
//! gives it back with another: no file of the store's own is read, written
//! or deleted on the path of a cached build (each such file cost an ext4
//! inode, made and deleted, at about 0.1 ms apiece here). Two builds of one
//! copy never share it: the second finds the name gone and is asked for
//! the whole context. Only a build that succeeded gives the copy back, under
//! a new token: its client learns the token from the build's answer, and a
//! client that learns none sends the whole context next time.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The most contexts a node keeps.
pub const MAX_KEPT: usize = 4;

/// The kept contexts of one node, in a directory of the data dir.
#[derive(Debug)]
pub struct Kept {
    dir: PathBuf,
}

impl Kept {
    /// Opens (or makes) the store of kept contexts at `dir`, root's alone.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        crate::supervisor::private_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Moves the context kept under `key` with `token` to `to` (which must
    /// not exist, on the same filesystem): false if there is no such copy.
    pub fn take(&self, key: &str, token: &str, to: &Path) -> std::io::Result<bool> {
        let Some(name) = entry_name(key, token) else {
            return Ok(false);
        };
        // The rename claims it: a second build of the same copy finds it
        // gone.
        match fs::rename(self.dir.join(name), to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Keeps the context at `tree` under `key` (moving it), in place of any
    /// copy kept under that key, and returns its new token. The oldest
    /// copies beyond [`MAX_KEPT`] are deleted, and so is anything else in
    /// the store.
    pub fn keep(&self, key: &str, tree: &Path) -> std::io::Result<String> {
        let token = new_token()?;
        let name = entry_name(key, &token).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{key:?} is not a context key"),
            )
        })?;
        fs::rename(tree, self.dir.join(&name))?;
        self.evict(key, &name);
        Ok(token)
    }

    /// Deletes the other copies of `key`, what is not a copy, and the
    /// copies beyond [`MAX_KEPT`], the least recently kept first (a
    /// rename sets a directory's change time).
    fn evict(&self, key: &str, newest: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept: Vec<(i64, i64, PathBuf)> = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let copy_of = name
                .split_once('.')
                .filter(|(k, t)| entry_name(k, t).is_some())
                .map(|(k, _)| k);
            let stale = match copy_of {
                None => true,
                Some(k) => k == key && name != newest,
            };
            if stale {
                // A build may have taken it meanwhile: then it is not here.
                let _ = fs::remove_dir_all(e.path());
                continue;
            }
            let (secs, nanos) = fs::symlink_metadata(e.path())
                .map(|m| (m.ctime(), m.ctime_nsec()))
                .unwrap_or((0, 0));
            kept.push((secs, nanos, e.path()));
        }
        if kept.len() <= MAX_KEPT {
            return;
        }
        kept.sort_by_key(|k| std::cmp::Reverse((k.0, k.1)));
        for (_, _, path) in kept.into_iter().skip(MAX_KEPT) {
            let _ = fs::remove_dir_all(path);
        }
    }
}

/// The name of the copy of `key` with `token`, if both are what the store
/// names copies by (a key of letters and digits, a token of 32 hex
/// digits): nothing else can name a path.
fn entry_name(key: &str, token: &str) -> Option<String> {
    let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric());
    let token_ok = token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit());
    (key_ok && token_ok).then(|| format!("{key}.{token}"))
}

/// 16 random bytes, in hex.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ab";

    fn tree_in(dir: &Path, body: &str) -> PathBuf {
        let tree = dir.join("context");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/f"), body).unwrap();
        tree
    }

    #[test]
    fn a_kept_context_is_taken_back_only_with_its_token_and_only_once() {
        let data = tempfile::tempdir().unwrap();
        let kept = Kept::open(&data.path().join("contexts")).unwrap();
        let work = data.path().join("work");
        fs::create_dir_all(&work).unwrap();
        let token = kept.keep(KEY, &tree_in(&work, "one")).unwrap();
        assert_eq!(token.len(), 32);
        let to = work.join("again");
        assert!(!kept
            .take(KEY, "0123456789abcdef0123456789abcdef", &to)
            .unwrap());
        assert!(!kept.take("cd", &token, &to).unwrap());
        assert!(kept.take(KEY, &token, &to).unwrap());
        assert_eq!(fs::read_to_string(to.join("sub/f")).unwrap(), "one");
        // Taken: a second build of the same copy is asked for it whole.
        let other = work.join("other");
        assert!(!kept.take(KEY, &token, &other).unwrap());
    }

    #[test]
    fn a_new_copy_replaces_the_old_and_the_oldest_beyond_the_bound_go() {
        let data = tempfile::tempdir().unwrap();
        let kept = Kept::open(&data.path().join("contexts")).unwrap();
        let work = data.path().join("work");
        fs::create_dir_all(&work).unwrap();
        let first = kept.keep(KEY, &tree_in(&work, "one")).unwrap();
        let second = kept.keep(KEY, &tree_in(&work, "two")).unwrap();
        assert_ne!(first, second);
        let to = work.join("t");
        assert!(!kept.take(KEY, &first, &to).unwrap());
        assert!(kept.take(KEY, &second, &to).unwrap());
        assert_eq!(fs::read_to_string(to.join("sub/f")).unwrap(), "two");
        // What an older agent kept (KEY/token, KEY/tree) is not a copy.
        fs::create_dir_all(data.path().join("contexts/ab/tree")).unwrap();
        for i in 0..MAX_KEPT + 2 {
            let key = format!("k{i}");
            let tree = tree_in(&work.join(&key), "x");
            kept.keep(&key, &tree).unwrap();
        }
        let left: Vec<String> = fs::read_dir(data.path().join("contexts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), MAX_KEPT, "{left:?}");
        assert!(!left.iter().any(|n| n == "ab"), "{left:?}");
        assert!(
            left.iter().any(|n| n.starts_with("k5.")),
            "the newest stays: {left:?}"
        );
    }
}
