//! Kept build contexts. After a build whose client names its context (a
//! key), the node keeps the unpacked context under that key with a fresh
//! token; the client's next build of it sends only what changed since
//! (the entries that differ, and the paths to delete) against that token,
//! as BuildKit's local context transfer sends only what changed. At most
//! [`MAX_KEPT`] contexts are kept; the least recently built goes first.
//!
//! A build takes its copy out of the store by a rename, so that two builds
//! of one context never share a copy (the second finds none and is asked
//! for the whole context), and gives the copy back by another rename.
//! Only a build that succeeded gives it back: its client learns the new
//! token from the build's answer, and a client that learns none sends the
//! whole context next time.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The most contexts a node keeps.
pub const MAX_KEPT: usize = 4;

/// The file of a kept context that holds its token.
const TOKEN: &str = "token";
/// The directory of a kept context that holds the context.
const TREE: &str = "tree";

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
    /// `claim` is a scratch path beside `to`.
    pub fn take(&self, key: &str, token: &str, to: &Path, claim: &Path) -> std::io::Result<bool> {
        let entry = self.dir.join(key);
        if read_token(&entry).as_deref() != Some(token) {
            return Ok(false);
        }
        // The rename claims it: a second build of the same copy finds it
        // gone.
        match fs::rename(&entry, claim) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        // Another build may have put a newer copy in its place between
        // the read and the rename: that one is not the copy asked for.
        if read_token(claim).as_deref() != Some(token) {
            fs::remove_dir_all(claim)?;
            return Ok(false);
        }
        fs::rename(claim.join(TREE), to)?;
        fs::remove_dir_all(claim)?;
        Ok(true)
    }

    /// Keeps the context at `tree` under `key` (moving it; `staging` is a
    /// scratch path beside it), in place of any copy kept under that key,
    /// and returns its new token. The oldest copies beyond [`MAX_KEPT`]
    /// are deleted.
    pub fn keep(&self, key: &str, tree: &Path, staging: &Path) -> std::io::Result<String> {
        let token = new_token()?;
        fs::create_dir(staging)?;
        fs::write(staging.join(TOKEN), &token)?;
        fs::rename(tree, staging.join(TREE))?;
        let entry = self.dir.join(key);
        if entry.exists() {
            let old = staging.with_extension("replaced");
            if fs::rename(&entry, &old).is_ok() {
                fs::remove_dir_all(&old)?;
            }
        }
        fs::rename(staging, &entry)?;
        self.evict();
        Ok(token)
    }

    /// Deletes the copies beyond [`MAX_KEPT`], the least recently kept
    /// first.
    fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .map(|e| {
                let at = fs::metadata(e.path().join(TOKEN))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (at, e.path())
            })
            .collect();
        kept.sort_by_key(|k| std::cmp::Reverse(k.0));
        for (_, path) in kept.into_iter().skip(MAX_KEPT) {
            // A build may have taken it meanwhile: then it is not here.
            let _ = fs::remove_dir_all(path);
        }
    }
}

fn read_token(entry: &Path) -> Option<String> {
    fs::read_to_string(entry.join(TOKEN))
        .ok()
        .map(|t| t.trim().to_string())
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
        let token = kept
            .keep(KEY, &tree_in(&work, "one"), &work.join("keep"))
            .unwrap();
        assert_eq!(token.len(), 32);
        let to = work.join("again");
        assert!(!kept
            .take(
                KEY,
                "0123456789abcdef0123456789abcdef",
                &to,
                &work.join("c")
            )
            .unwrap());
        assert!(!kept.take("cd", &token, &to, &work.join("c")).unwrap());
        assert!(kept.take(KEY, &token, &to, &work.join("c")).unwrap());
        assert_eq!(fs::read_to_string(to.join("sub/f")).unwrap(), "one");
        // Taken: a second build of the same copy is asked for it whole.
        let other = work.join("other");
        assert!(!kept.take(KEY, &token, &other, &work.join("c2")).unwrap());
    }

    #[test]
    fn a_new_copy_replaces_the_old_and_the_oldest_beyond_the_bound_go() {
        let data = tempfile::tempdir().unwrap();
        let kept = Kept::open(&data.path().join("contexts")).unwrap();
        let work = data.path().join("work");
        fs::create_dir_all(&work).unwrap();
        let first = kept
            .keep(KEY, &tree_in(&work, "one"), &work.join("k1"))
            .unwrap();
        let second = kept
            .keep(KEY, &tree_in(&work, "two"), &work.join("k2"))
            .unwrap();
        assert_ne!(first, second);
        let to = work.join("t");
        assert!(!kept.take(KEY, &first, &to, &work.join("c")).unwrap());
        assert!(kept.take(KEY, &second, &to, &work.join("c")).unwrap());
        assert_eq!(fs::read_to_string(to.join("sub/f")).unwrap(), "two");
        for i in 0..MAX_KEPT + 2 {
            let key = format!("k{i}");
            let tree = tree_in(&work.join(&key), "x");
            kept.keep(&key, &tree, &work.join(format!("s{i}"))).unwrap();
        }
        let left = fs::read_dir(data.path().join("contexts")).unwrap().count();
        assert_eq!(left, MAX_KEPT);
    }
}
