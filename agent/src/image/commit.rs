//! `commit` and `diff`: a container's upper dir (what it changed over its
//! image) becomes a new layer, with overlayfs whiteouts (0/0 character
//! devices, the opaque xattr) turned back into OCI ones (`.wh.NAME`,
//! `.wh..wh..opq`); the new image's config is the parent's, with the
//! layer's diff id, a history entry, the author and comment, and the
//! Dockerfile-style changes (`-c 'CMD ["sh"]'`) applied. `diff` lists the
//! same changes as Docker's A/C/D lines.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::layer::{self, Expected, Ingested, Progress};
use super::{format_rfc3339, load, ImageError, ImageStore, ImageSummary};
use crate::snapshot::Snapshots;

/// What a commit makes its image from.
#[derive(Debug, Clone)]
pub struct CommitInput<'a> {
    /// The container's upper dir.
    pub upper: &'a Path,
    /// The parent's unpacked layers, and the container's mount
    /// destinations: mount points the runtime made are left out.
    pub lowers: &'a [PathBuf],
    pub mounts: &'a [PathBuf],
    /// The container's id, recorded in the config (Docker's `container`).
    pub container_id: &'a str,
    /// The image the container runs: the new image's parent.
    pub parent_id: &'a str,
    /// The parent's layers, bottom first.
    pub parent_diff_ids: &'a [String],
    /// The container's command, for the history's `created_by`.
    pub created_by: String,
    pub author: &'a str,
    pub comment: &'a str,
    /// Dockerfile instructions applied to the config.
    pub changes: &'a [String],
    /// The reference to name the image by, if any.
    pub reference: Option<&'a str>,
    pub now_ms: i64,
}

/// One line of `diff`: A (added), C (changed) or D (deleted), and the
/// path as the container sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    #[serde(rename = "Kind")]
    pub kind: char,
    #[serde(rename = "Path")]
    pub path: String,
}

/// The changes a container made over its image's layers (`lowers`, any
/// order), sorted by path as Docker lists them. The mount points the
/// runtime made for `mounts` (/proc, /dev, volumes) are not changes, as
/// Docker's init layer keeps them out.
pub fn diff(
    upper: &Path,
    lowers: &[PathBuf],
    mounts: &[PathBuf],
) -> Result<Vec<Change>, ImageError> {
    let mut out = Vec::new();
    let skip = made_mount_points(upper, lowers, mounts);
    walk(upper, Path::new(""), &skip, &mut |rel, meta| {
        let path = format!("/{}", rel.display());
        let in_lower = lowers
            .iter()
            .any(|l| fs::symlink_metadata(l.join(rel)).is_ok());
        let kind = if is_whiteout(meta) {
            'D'
        } else if in_lower {
            'C'
        } else {
            'A'
        };
        out.push(Change { kind, path });
        Ok(())
    })
    .map_err(|source| ImageError::Io {
        path: upper.to_path_buf(),
        source,
    })?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Makes the image: the upper dir as a layer over the parent's, and the
/// parent's config with this commit's history, author, comment and
/// changes.
pub fn commit(
    store: &ImageStore,
    snapshots: &Snapshots,
    input: &CommitInput,
) -> Result<ImageSummary, ImageError> {
    let mut config: Value = serde_json::from_slice(&store.get_blob(input.parent_id)?)
        .map_err(|e| ImageError::Archive(format!("the parent's config: {e}")))?;
    apply_changes(&mut config, input.changes)?;
    let _writing = store.write_lock();
    let mut progress = Progress::default();
    let skip = made_mount_points(input.upper, input.lowers, input.mounts);
    let new = ingest_upper(
        store,
        snapshots,
        input.upper,
        &skip,
        &format!("the changes of container {}", input.container_id),
        &mut progress,
    )?;
    let mut layers: Vec<Ingested> = Vec::new();
    for d in input.parent_diff_ids {
        let size = store
            .blob_path(d)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0);
        layers.push(Ingested {
            diff_id: d.clone(),
            size,
        });
    }
    let created = format_rfc3339(input.now_ms);
    let obj = config
        .as_object_mut()
        .ok_or_else(|| ImageError::Archive("the parent's config is not an object".into()))?;
    obj.insert("created".into(), json!(created));
    obj.insert("parent".into(), json!(input.parent_id));
    obj.insert("container".into(), json!(input.container_id));
    if input.author.is_empty() {
        obj.remove("author");
    } else {
        obj.insert("author".into(), json!(input.author));
    }
    obj.insert("comment".into(), json!(input.comment));
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let diff_ids: Vec<String> = input
        .parent_diff_ids
        .iter()
        .cloned()
        .chain([new.diff_id.clone()])
        .collect();
    rootfs["diff_ids"] = json!(diff_ids);
    let mut entry = Map::new();
    entry.insert("created".into(), json!(created));
    entry.insert("created_by".into(), json!(input.created_by));
    if !input.author.is_empty() {
        entry.insert("author".into(), json!(input.author));
    }
    if !input.comment.is_empty() {
        entry.insert("comment".into(), json!(input.comment));
    }
    match obj.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(Value::Object(entry)),
        None => {
            obj.insert("history".into(), json!([Value::Object(entry)]));
        }
    }
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| ImageError::Archive(e.to_string()))?;
    let parsed = oci_spec::image::ImageConfiguration::from_reader(config_bytes.as_slice())
        .map_err(|source| ImageError::Spec {
            what: "the committed config".into(),
            source,
        })?;
    layers.push(new);
    let refs: Vec<String> = input
        .reference
        .map(|r| vec![load::normalize_reference(r)])
        .unwrap_or_default();
    let made = load::commit_image(store, &config_bytes, &parsed, &layers, &refs);
    if made.is_err() {
        let _ = store.undo_unpacked(snapshots, &progress.unpacked);
    }
    made
}

/// Makes the upper dir `upper` (but for `skip`) a layer of the store, as
/// `commit` does; the caller holds the store's write lock.
pub fn ingest_upper(
    store: &ImageStore,
    snapshots: &Snapshots,
    upper: &Path,
    skip: &[PathBuf],
    what: &str,
    progress: &mut Progress,
) -> Result<Ingested, ImageError> {
    let staging = store.staging_dir()?;
    let tar_path = staging.path().join("layer.tar");
    {
        let f = fs::File::create(&tar_path).map_err(|source| ImageError::Io {
            path: tar_path.clone(),
            source,
        })?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        b.follow_symlinks(false);
        layer_tar(upper, skip, &mut b).map_err(|source| ImageError::Io {
            path: upper.to_path_buf(),
            source,
        })?;
        b.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|source| ImageError::Io {
                path: tar_path.clone(),
                source,
            })?;
    }
    let f = fs::File::open(&tar_path).map_err(|source| ImageError::Io {
        path: tar_path.clone(),
        source,
    })?;
    layer::ingest(
        store,
        snapshots,
        std::io::BufReader::new(f),
        &Expected {
            what: what.to_string(),
            ..Default::default()
        },
        staging.path(),
        progress,
    )
}

/// True if `upper` holds no change but for `skip`.
pub fn upper_is_empty(upper: &Path, skip: &[PathBuf]) -> bool {
    fs::read_dir(upper)
        .map(|mut d| {
            d.all(|e| {
                e.map(|e| skip.contains(&PathBuf::from(e.file_name())))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(true)
}

/// Writes the upper dir as an OCI layer: whiteouts and opaque dirs become
/// `.wh.` entries; other device nodes, sockets and overlay bookkeeping are
/// left out (an image carries no device node: `load` refuses them).
pub fn layer_tar<W: Write>(
    upper: &Path,
    skip: &[PathBuf],
    b: &mut tar::Builder<W>,
) -> std::io::Result<()> {
    walk(upper, Path::new(""), skip, &mut |rel, meta| {
        let full = upper.join(rel);
        let ft = meta.file_type();
        if is_whiteout(meta) {
            let name = rel.file_name().unwrap_or_default().to_string_lossy();
            let wh = rel.with_file_name(format!(".wh.{name}"));
            return empty(b, &wh, meta);
        }
        if ft.is_char_device() || ft.is_block_device() || ft.is_socket() {
            return Ok(());
        }
        b.append_path_with_name(&full, rel)?;
        if ft.is_dir() && is_opaque(&full) {
            empty(b, &rel.join(".wh..wh..opq"), meta)?;
        }
        Ok(())
    })
}

/// An empty regular file entry (a whiteout), owned as `meta` is.
fn empty<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    meta: &fs::Metadata,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    b.append_data(&mut h, path, std::io::empty())
}

/// Visits every entry under `root` (depth first, names sorted), parents
/// before their children, but for those in `skip` (relative paths) and
/// what is below them.
fn walk(
    root: &Path,
    rel: &Path,
    skip: &[PathBuf],
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        if skip.contains(&child) {
            continue;
        }
        let meta = fs::symlink_metadata(root.join(&child))?;
        visit(&child, &meta)?;
        if meta.is_dir() {
            walk(root, &child, skip, visit)?;
        }
    }
    Ok(())
}

/// The mount destinations (and the directories above them) that the
/// image lacks and the runtime made in the upper dir, relative: an empty
/// directory or file made to mount on.
pub fn made_mount_points(upper: &Path, lowers: &[PathBuf], mounts: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        let rel: PathBuf = m
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        let mut p = PathBuf::new();
        for c in rel.components() {
            p.push(c);
            let in_lower = lowers
                .iter()
                .any(|l| fs::symlink_metadata(l.join(&p)).is_ok());
            let made = fs::symlink_metadata(upper.join(&p)).is_ok();
            if !in_lower && made && !out.contains(&p) {
                out.push(p.clone());
                break;
            }
        }
    }
    out
}

/// overlayfs records a deleted lower file as a 0/0 character device.
fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// overlayfs marks a directory that hides the lower ones' content.
fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut v = [0u8; 4];
    // SAFETY: lgetxattr(2) reads the NUL-terminated path and name and
    // writes at most the buffer's length into it; both outlive the call.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// Applies `commit -c` changes (Dockerfile instructions) to an image
/// config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME,
/// STOPSIGNAL, ONBUILD.
pub fn apply_changes(config: &mut Value, changes: &[String]) -> Result<(), ImageError> {
    let bad = |c: &str, why: &str| ImageError::Change {
        change: c.to_string(),
        why: why.to_string(),
    };
    if !config.is_object() {
        *config = json!({});
    }
    let cfg = config
        .as_object_mut()
        .map(|o| o.entry("config").or_insert_with(|| json!({})))
        .ok_or_else(|| bad("", "the config is not an object"))?;
    if !cfg.is_object() {
        *cfg = json!({});
    }
    for change in changes {
        let trimmed = change.trim();
        let (word, rest) = trimmed
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((trimmed, ""));
        let word = word.to_ascii_uppercase();
        if rest.is_empty() {
            return Err(bad(change, &format!("{word} needs an argument")));
        }
        match word.as_str() {
            "CMD" | "ENTRYPOINT" => {
                let key = if word == "CMD" { "Cmd" } else { "Entrypoint" };
                cfg[key] = json!(command(rest));
            }
            "ENV" => {
                let env = cfg["Env"].as_array().cloned().unwrap_or_default();
                let mut env: Vec<String> = env
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                for (k, v) in pairs(rest).map_err(|why| bad(change, &why))? {
                    env.retain(|e| e.split('=').next() != Some(k.as_str()));
                    env.push(format!("{k}={v}"));
                }
                cfg["Env"] = json!(env);
            }
            "LABEL" => {
                let labels = obj(cfg, "Labels");
                for (k, v) in pairs(rest).map_err(|why| bad(change, &why))? {
                    labels.insert(k, json!(v));
                }
            }
            "EXPOSE" => {
                let ports = obj(cfg, "ExposedPorts");
                for p in rest.split_whitespace() {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                        return Err(bad(change, &format!("{p} is not a port")));
                    }
                    ports.insert(format!("{port}/{proto}"), json!({}));
                }
            }
            "VOLUME" => {
                let paths: Vec<String> = match serde_json::from_str::<Vec<String>>(rest) {
                    Ok(v) => v,
                    Err(_) => rest.split_whitespace().map(str::to_string).collect(),
                };
                let vols = obj(cfg, "Volumes");
                for p in paths {
                    vols.insert(p, json!({}));
                }
            }
            "USER" => cfg["User"] = json!(rest),
            "WORKDIR" => cfg["WorkingDir"] = json!(rest),
            "STOPSIGNAL" => cfg["StopSignal"] = json!(rest),
            "ONBUILD" => {
                let mut onbuild = cfg["OnBuild"].as_array().cloned().unwrap_or_default();
                onbuild.push(json!(rest));
                cfg["OnBuild"] = json!(onbuild);
            }
            other => {
                return Err(bad(
                    change,
                    &format!(
                        "{other} is not an instruction commit takes (CMD, ENTRYPOINT, ENV, \
                         EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL)"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// The object at `key` of a config, made if missing.
fn obj<'a>(cfg: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !cfg[key].is_object() {
        cfg[key] = json!({});
    }
    cfg[key].as_object_mut().expect("just made an object")
}

/// A CMD or ENTRYPOINT: the exec form (a JSON array) as written, the
/// shell form under `/bin/sh -c`, as Docker reads them.
fn command(rest: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(v) => v,
        Err(_) => vec!["/bin/sh".into(), "-c".into(), rest.into()],
    }
}

/// `K=V K2="V 2"` pairs, or the legacy `K V` form of one.
pub(crate) fn pairs(rest: &str) -> Result<Vec<(String, String)>, String> {
    // The old form, `KEY value with spaces`, when the first word has no `=`.
    let first = rest.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{rest:?} gives no value"))?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    while chars.peek().is_some() {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        // The key, quotes removed (`"quoted key"=value`).
        let mut key = String::new();
        let mut key_quote: Option<char> = None;
        for c in chars.by_ref() {
            match (key_quote, c) {
                (None, '=') => break,
                (None, '"' | '\'') => key_quote = Some(c),
                (Some(q), c) if c == q => key_quote = None,
                (_, c) => key.push(c),
            }
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, '\\') => {
                    chars.next();
                    if let Some(n) = chars.peek() {
                        value.push(*n);
                    }
                }
                (_, c) => value.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return Err(format!("an unclosed quote in {rest:?}"));
        }
        out.push((key.trim().to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_as_dockerfile_instructions() {
        let mut c = json!({"config": {"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"]}});
        apply_changes(
            &mut c,
            &[
                r#"CMD ["echo", "hi"]"#.into(),
                "ENTRYPOINT /bin/run --fast".into(),
                r#"ENV A=2 B="two words""#.into(),
                "env C 3".into(),
                "EXPOSE 80 53/udp".into(),
                "LABEL team=infra".into(),
                "USER nobody".into(),
                "WORKDIR /srv".into(),
                "VOLUME /data".into(),
                "STOPSIGNAL SIGINT".into(),
            ],
        )
        .unwrap();
        let cfg = &c["config"];
        assert_eq!(cfg["Cmd"], json!(["echo", "hi"]));
        assert_eq!(
            cfg["Entrypoint"],
            json!(["/bin/sh", "-c", "/bin/run --fast"])
        );
        assert_eq!(
            cfg["Env"],
            json!(["PATH=/bin", "A=2", "B=two words", "C=3"])
        );
        assert_eq!(cfg["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(cfg["Labels"], json!({"team": "infra"}));
        assert_eq!(cfg["User"], "nobody");
        assert_eq!(cfg["WorkingDir"], "/srv");
        assert_eq!(cfg["Volumes"], json!({"/data": {}}));
        assert_eq!(cfg["StopSignal"], "SIGINT");
        for bad in ["RUN rm -rf /", "EXPOSE http", "CMD", "ENV A=\"open"] {
            let err = apply_changes(&mut c, &[bad.into()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
