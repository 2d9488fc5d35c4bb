//! What the CLI remembers of a build context it sent, so that the next
//! build of the same directory sends only what changed (BuildKit's local
//! context transfer works the same way): the node keeps the context after
//! a build and answers with a token; the CLI records the token and each
//! entry's fingerprint (kind, mode, size, times, inode, link target) in
//! `~/.berth/build-cache/KEY.json`. Next time, an entry whose fingerprint
//! is the same is not sent, and the entries that are gone (or changed
//! kind) are named for the node to delete.
//!
//! An entry touched within [`RACY`] of the scan is sent again next time
//! whatever its fingerprint: a file written twice within one tick of the
//! file system's clock keeps its times (git's "racy" entries).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// How recent a change makes an entry racy.
pub const RACY: Duration = Duration::from_secs(2);

/// The most paths, and bytes of paths, an incremental context deletes;
/// beyond, the whole context is sent (the cluster's bounds are higher).
pub const MAX_REMOVED: usize = 32_768;
pub const MAX_REMOVED_BYTES: usize = 1 << 20;

/// Names the CLI gives a Dockerfile it sends from outside the context.
pub const EXTRA_NAMES: [&str; 2] = [".dockerfile.outside", ".dockerfile.stdin"];

/// One entry of a context as it was when scanned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// 'f' file, 'd' directory, 'l' symlink.
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub dev: u64,
    pub ino: u64,
    pub link: Option<String>,
    /// Changed too recently to be trusted unchanged next time.
    #[serde(default)]
    pub racy: bool,
}

impl Fingerprint {
    /// The fingerprint of an entry scanned at `scanned`; None for what a
    /// context does not hold (sockets, fifos, devices).
    pub fn of(path: &Path, meta: &fs::Metadata, scanned: SystemTime) -> Option<Self> {
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            'f'
        } else if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else {
            return None;
        };
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        let mtime_ns = ns(meta.mtime(), meta.mtime_nsec());
        let ctime_ns = ns(meta.ctime(), meta.ctime_nsec());
        let since = scanned
            .checked_sub(RACY)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Some(Self {
            kind,
            mode: meta.mode(),
            size: meta.len(),
            mtime_ns,
            ctime_ns,
            dev: meta.dev(),
            ino: meta.ino(),
            link: (kind == 'l')
                .then(|| fs::read_link(path).ok())
                .flatten()
                .map(|t| t.to_string_lossy().into_owned()),
            racy: mtime_ns >= since || ctime_ns >= since,
        })
    }

    /// True if an entry with this fingerprint now was `before` when last
    /// sent, and so need not be sent again.
    fn unchanged_since(&self, before: &Fingerprint) -> bool {
        !before.racy
            && Fingerprint {
                racy: false,
                ..self.clone()
            } == *before
    }
}

/// What the CLI recorded of the context it last sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// The node's token for the copy it kept.
    pub token: String,
    /// Each entry sent, by its path in the context.
    pub entries: BTreeMap<String, Fingerprint>,
}

/// How this upload is made.
#[derive(Debug, Default)]
pub struct Plan {
    /// The kept copy this upload changes; None: the whole context.
    pub base: Option<String>,
    /// The paths the node deletes from its copy first.
    pub removed: Vec<String>,
    /// The entries not sent (unchanged since the last upload).
    pub unchanged: std::collections::HashSet<String>,
}

/// The key of a context: its directory (as given, made absolute and
/// canonical) and the cluster (its CA's digest).
pub fn key(dir: &Path, cluster: &str) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mut h = Sha256::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(cluster.as_bytes());
    Some(hex::encode(h.finalize()))
}

fn path_of(key: &str) -> PathBuf {
    crate::config::config_dir()
        .join("build-cache")
        .join(format!("{key}.json"))
}

/// The record of the last upload of the context `key`, if any.
pub fn load(key: &str) -> Option<Record> {
    let text = fs::read(path_of(key)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Records an upload; a record that cannot be written only means that the
/// next build sends the whole context.
pub fn save(key: &str, record: &Record) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = path_of(key);
    let Some(dir) = path.parent() else { return };
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(record).ok().and_then(|bytes| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ok()?;
        std::io::Write::write_all(&mut f, &bytes).ok()
    });
    if written.is_some() {
        // Not a rename over the old record: ext4 writes a file that
        // replaces another by a rename out at once (auto_da_alloc), which
        // costs more than the rest of a cached build's bookkeeping. The
        // record is only a cache; losing it to a crash in between costs
        // one whole upload.
        let _ = fs::remove_file(&path);
        let _ = fs::rename(&tmp, &path);
    } else {
        let _ = fs::remove_file(&tmp);
    }
}

/// Forgets the record of `key` (the node no longer keeps that copy).
pub fn forget(key: &str) {
    let _ = fs::remove_file(path_of(key));
}

/// The plan of an upload of the entries `now` against the record of the
/// last upload: directories are always sent (a header each), other
/// entries only if they changed; what is gone, or changed kind, is
/// removed. None if the removals pass the bounds (send it whole).
pub fn plan(now: &BTreeMap<String, Fingerprint>, before: &Record) -> Option<Plan> {
    let mut plan = Plan {
        base: Some(before.token.clone()),
        ..Default::default()
    };
    let mut removed_bytes = 0;
    let mut removed_dir: Option<String> = None;
    for (path, old) in &before.entries {
        // Below a directory already removed: it goes with it.
        if let Some(d) = &removed_dir {
            if path.starts_with(d.as_str()) && path.as_bytes().get(d.len()) == Some(&b'/') {
                continue;
            }
        }
        let gone = match now.get(path) {
            None => true,
            Some(new) => new.kind != old.kind,
        };
        if gone {
            removed_bytes += path.len();
            plan.removed.push(path.clone());
            if old.kind == 'd' {
                removed_dir = Some(path.clone());
            }
        } else if let Some(new) = now.get(path) {
            if new.kind != 'd' && new.unchanged_since(old) {
                plan.unchanged.insert(path.clone());
            }
        }
    }
    // A Dockerfile from outside the context is sent each time, under a
    // name of the CLI's; the copy of an earlier build goes first.
    for name in EXTRA_NAMES {
        if !now.contains_key(name) {
            plan.removed.push(name.to_string());
        }
    }
    if plan.removed.len() > MAX_REMOVED || removed_bytes > MAX_REMOVED_BYTES {
        return None;
    }
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(kind: char, size: u64, mtime_ns: i128) -> Fingerprint {
        Fingerprint {
            kind,
            mode: 0o644,
            size,
            mtime_ns,
            ctime_ns: mtime_ns,
            dev: 1,
            ino: 2,
            link: None,
            racy: false,
        }
    }

    #[test]
    fn only_changed_entries_are_sent_and_gone_ones_removed() {
        let before = Record {
            token: "t".into(),
            entries: BTreeMap::from([
                ("a".into(), fp('f', 1, 10)),
                ("b".into(), fp('f', 1, 10)),
                ("d".into(), fp('d', 0, 10)),
                ("d/x".into(), fp('f', 1, 10)),
                ("d/y".into(), fp('f', 1, 10)),
                ("k".into(), fp('f', 1, 10)),
                (
                    "r".into(),
                    Fingerprint {
                        racy: true,
                        ..fp('f', 1, 10)
                    },
                ),
            ]),
        };
        let now = BTreeMap::from([
            ("a".to_string(), fp('f', 1, 10)),
            ("b".to_string(), fp('f', 2, 11)),
            ("k".to_string(), fp('d', 0, 12)),
            ("r".to_string(), fp('f', 1, 10)),
            ("new".to_string(), fp('f', 1, 13)),
        ]);
        let p = plan(&now, &before).unwrap();
        assert_eq!(p.base.as_deref(), Some("t"));
        // Unchanged: a only (b changed, r was racy, new is new, k changed
        // kind).
        assert_eq!(p.unchanged, ["a".to_string()].into_iter().collect());
        // d goes with what it held; k changed kind; the extra names always.
        assert_eq!(
            p.removed,
            vec!["d", "k", ".dockerfile.outside", ".dockerfile.stdin"]
        );
    }

    #[test]
    fn a_recent_change_makes_an_entry_racy() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "x").unwrap();
        let meta = fs::symlink_metadata(&f).unwrap();
        let now = SystemTime::now();
        assert!(Fingerprint::of(&f, &meta, now).unwrap().racy);
        let later = now + Duration::from_secs(60);
        assert!(!Fingerprint::of(&f, &meta, later).unwrap().racy);
    }

    #[test]
    fn too_many_removals_send_the_whole_context() {
        let entries = (0..MAX_REMOVED + 1)
            .map(|i| (format!("f{i}"), fp('f', 1, 1)))
            .collect();
        let before = Record {
            token: "t".into(),
            entries,
        };
        assert!(plan(&BTreeMap::new(), &before).is_none());
    }
}
