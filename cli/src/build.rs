//! `berth build`: sends a build context (a directory, less what its
//! `.dockerignore` leaves out, or a tar on standard input) to the cluster
//! as a stream of pieces, and prints the build's progress as it comes.
//! The context is tarred as it is sent: no more than a few pieces of it
//! are in memory at once.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use berth_proto::cluster::{cluster_client::ClusterClient, BuildChunk, BuildOptions};
use berth_proto::dockerignore::Patterns;
use clap::Args;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::CliError;

/// The size of each piece of the context sent to the cluster.
const CHUNK: usize = 1 << 20;

/// `berth build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name and optionally a tag, NAME[:TAG] (more than one may be given).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile). A path outside the
    /// context is sent along with it.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,
    /// A build-time variable, KEY=VALUE (KEY alone takes it from the
    /// environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Do not use the layer cache.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// The build stage to stop after.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Print only the image ID on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// RUN's network: none (the default; berth's RUN has no network) or host.
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Build on this node (default: one that holds the base images).
    #[arg(long)]
    pub node: Option<String>,
    /// The context: a directory, or - for a tar archive (or a lone
    /// Dockerfile) on standard input.
    pub context: String,
}

pub async fn build(client: &mut ClusterClient<Channel>, args: BuildArgs) -> Result<i32, CliError> {
    // The first try sends only what changed since the last build of this
    // directory; if the node kept no copy of it, the second sends it all.
    match build_once(client, &args, true).await? {
        Some(code) => Ok(code),
        None => build_once(client, &args, false)
            .await?
            .ok_or_else(|| CliError::Api("the node asked for the whole context twice".into())),
    }
}

/// One build; None if the node keeps no copy of the context the upload
/// changed (nothing was built).
async fn build_once(
    client: &mut ClusterClient<Channel>,
    args: &BuildArgs,
    incremental: bool,
) -> Result<Option<i32>, CliError> {
    let failed: Failure = Default::default();
    let (dockerfile_name, dockerfile_text, pieces, upload) = if args.context == "-" {
        let (n, t, p) = stdin_context(args.file.as_deref(), failed.clone())?;
        (n, t, p, Upload::default())
    } else {
        dir_context(
            &args.context,
            args.file.as_deref(),
            failed.clone(),
            incremental,
        )?
    };
    let mut build_args = Vec::new();
    for a in &args.build_args {
        if a.contains('=') {
            build_args.push(a.clone());
        } else if let Ok(v) = std::env::var(a) {
            build_args.push(format!("{a}={v}"));
        }
    }
    let options = BuildOptions {
        tags: args.tags.clone(),
        dockerfile: dockerfile_name,
        build_args,
        no_cache: args.no_cache,
        target: args.target.clone().unwrap_or_default(),
        network: args.network.clone(),
        base_images: dockerfile_text
            .as_deref()
            .map(base_images)
            .unwrap_or_default(),
        node: args.node.clone().unwrap_or_default(),
        context_key: upload.key.clone().unwrap_or_default(),
        context_base: upload.plan.base.clone().unwrap_or_default(),
        context_removed: upload.plan.removed.clone(),
    };
    let mut options = Some(options);
    let stream = pieces.map(move |data| BuildChunk {
        options: options.take(),
        data,
    });
    let resp = client.build_image(stream).await;
    if let Some(why) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(CliError::Usage(why));
    }
    let mut replies = resp.map_err(CliError::api)?.into_inner();
    let mut out = std::io::stdout().lock();
    let mut image = String::new();
    let mut token = String::new();
    let mut announced = args.quiet || upload.key.is_none();
    loop {
        match replies.message().await {
            Ok(Some(r)) if r.context_base_unknown => {
                if let Some(key) = &upload.key {
                    crate::sent_context::forget(key);
                }
                return Ok(None);
            }
            Ok(Some(r)) => {
                if !announced {
                    // As Docker's classic builder says it, once sent.
                    let _ = writeln!(out, "{}", upload.announcement());
                    announced = true;
                }
                if !args.quiet && !r.progress.is_empty() {
                    let _ = out.write_all(&r.progress);
                    let _ = out.flush();
                }
                if !r.image_id.is_empty() {
                    image = r.image_id;
                }
                if !r.context_token.is_empty() {
                    token = r.context_token;
                }
            }
            Ok(None) => break,
            Err(s) => {
                let _ = out.flush();
                // The node no longer keeps the copy it took for the build.
                if let Some(key) = &upload.key {
                    crate::sent_context::forget(key);
                }
                return Err(CliError::api(s));
            }
        }
    }
    if let Some(key) = &upload.key {
        if token.is_empty() {
            crate::sent_context::forget(key);
        } else {
            crate::sent_context::save(
                key,
                &crate::sent_context::Record {
                    token,
                    entries: upload.entries,
                },
            );
        }
    }
    if let Some(why) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(CliError::Usage(why));
    }
    if image.is_empty() {
        return Err(CliError::Api("the build ended without an image".into()));
    }
    if args.quiet {
        let _ = writeln!(out, "{image}");
    }
    Ok(Some(0))
}

/// How a directory context is sent, and what is recorded of it.
#[derive(Default)]
struct Upload {
    /// The context's key (None: not kept, as for a tar on stdin).
    key: Option<String>,
    plan: crate::sent_context::Plan,
    /// Every entry of the context as scanned, for the record.
    entries: std::collections::BTreeMap<String, crate::sent_context::Fingerprint>,
    /// Bytes sent.
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Upload {
    /// Docker's "Sending build context" line, with what was not sent.
    fn announcement(&self) -> String {
        let sent = self.sent.load(std::sync::atomic::Ordering::Acquire);
        let mut line = format!("Sending build context to the cluster  {}", human_size(sent));
        if !self.plan.unchanged.is_empty() {
            line.push_str(&format!(
                " ({} unchanged entries kept on the node)",
                self.plan.unchanged.len()
            ));
        }
        line
    }
}

/// A size as Docker's units.HumanSize prints it: four significant
/// digits, decimal units (`2.048kB`, `64.02MB`).
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let text = format!("{v:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{}", units[i])
}

/// What went wrong reading the context, if anything (the piece stream
/// then ends early, and the agent refuses the cut context).
type Failure = crate::images::ReadFailure;

type Pieces = tokio_stream::wrappers::ReceiverStream<Vec<u8>>;

/// A writer that sends what it is given, by the piece, down a channel.
struct PieceWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.sent
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::AcqRel);
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(piece)
            .map_err(|_| std::io::Error::other("the cluster stopped reading the context"))
    }
}

/// Tars a context directory, less what `.dockerignore` excludes, on a
/// thread of its own; returns the Dockerfile's name in the context, its
/// text, and the pieces.
fn dir_context(
    dir: &str,
    file: Option<&str>,
    failed: Failure,
    incremental: bool,
) -> Result<(String, Option<String>, Pieces, Upload), CliError> {
    let root = PathBuf::from(dir);
    let meta = fs::metadata(&root)
        .map_err(|e| CliError::Usage(format!("unable to prepare context: {dir}: {e}")))?;
    if !meta.is_dir() {
        return Err(CliError::Usage(format!(
            "unable to prepare context: {dir} is not a directory (give a directory, or - for a tar on standard input)"
        )));
    }
    // The Dockerfile: inside the context, by its path there; outside, sent
    // along under a name of its own (as Docker's CLI does).
    let (df_name, df_path, extra) = match file {
        None => ("Dockerfile".to_string(), root.join("Dockerfile"), None),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| {
                CliError::Usage(format!("reading the Dockerfile from standard input: {e}"))
            })?;
            let name = ".dockerfile.stdin".to_string();
            (
                name.clone(),
                PathBuf::new(),
                Some((name, text.into_bytes())),
            )
        }
        Some(f) => {
            let p = PathBuf::from(f);
            let real = p
                .canonicalize()
                .map_err(|e| CliError::Usage(format!("the Dockerfile {f}: {e}")))?;
            let real_root = root
                .canonicalize()
                .map_err(|e| CliError::Usage(format!("{dir}: {e}")))?;
            match real.strip_prefix(&real_root) {
                Ok(rel) => (rel.to_string_lossy().into_owned(), real.clone(), None),
                Err(_) => {
                    let body = fs::read(&real)
                        .map_err(|e| CliError::Usage(format!("the Dockerfile {f}: {e}")))?;
                    let name = ".dockerfile.outside".to_string();
                    (name.clone(), real.clone(), Some((name, body)))
                }
            }
        }
    };
    let text = match &extra {
        Some((_, body)) => String::from_utf8_lossy(body).into_owned(),
        None => fs::read_to_string(&df_path).map_err(|e| {
            CliError::Usage(format!(
                "unable to prepare context: the Dockerfile {}: {e}",
                df_path.display()
            ))
        })?,
    };
    let ignore = match fs::read_to_string(root.join(".dockerignore")) {
        Ok(t) => Patterns::parse(&t).map_err(|e| CliError::Usage(format!(".dockerignore: {e}")))?,
        Err(_) => Patterns::default(),
    };
    let always = [df_name.clone(), ".dockerignore".to_string()];
    // The scan first: the options, sent first, name what the node deletes.
    let walk = Walk {
        root: &root,
        ignore: &ignore,
        always: &always,
    };
    let scanned_at = std::time::SystemTime::now();
    let mut found = Vec::new();
    walk.scan(Path::new(""), &mut found)
        .map_err(|e| CliError::Usage(format!("unable to prepare context: {e}")))?;
    let mut upload = Upload {
        key: crate::connect::cluster_identity()
            .and_then(|cluster| crate::sent_context::key(&root, &cluster)),
        ..Default::default()
    };
    for (rel, path, meta) in &found {
        if let Some(f) = crate::sent_context::Fingerprint::of(path, meta, scanned_at) {
            upload.entries.insert(rel.clone(), f);
        }
    }
    if incremental {
        let before = upload.key.as_deref().and_then(crate::sent_context::load);
        if let Some(plan) = before.and_then(|b| crate::sent_context::plan(&upload.entries, &b)) {
            upload.plan = plan;
        }
    }
    let unchanged = upload.plan.unchanged.clone();
    let sent = upload.sent.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut w = PieceWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            sent,
        };
        let result = (|| -> Result<(), String> {
            let mut tar = tar::Builder::new(&mut w);
            tar.follow_symlinks(false);
            for (rel, path, meta) in &found {
                if !unchanged.contains(rel) {
                    entry(&mut tar, Path::new(rel), path, meta)?;
                }
            }
            if let Some((name, body)) = &extra {
                append_file(&mut tar, name, body)
                    .map_err(|e| format!("adding the Dockerfile: {e}"))?;
            }
            tar.finish().map_err(|e| e.to_string())
        })();
        let result = result.and_then(|()| w.flush().map_err(|e| e.to_string()));
        if let Err(why) = result {
            *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("sending the build context: {why}"));
        }
    });
    Ok((df_name, Some(text), Pieces::new(rx), upload))
}

/// Adds a file that is not on disk (a Dockerfile from elsewhere) to a
/// context, owned by root, mode 0644.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    tar.append_data(&mut h, name, body)
}

/// The walk of a context directory.
struct Walk<'a> {
    root: &'a Path,
    ignore: &'a Patterns,
    /// Paths sent whatever `.dockerignore` says (the build needs them).
    always: &'a [String],
}

/// An entry found by the scan: its path in the context, on disk, and its
/// metadata.
type Found = (String, PathBuf, fs::Metadata);

impl Walk<'_> {
    /// Lists the entries to send below `rel`, in the order they are sent
    /// (a directory before what it holds, names sorted).
    fn scan(&self, rel: &Path, out: &mut Vec<Found>) -> Result<(), String> {
        let here = self.root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&here)
            .map_err(|e| format!("{}: {e}", here.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let sub = rel.join(&name);
            let sub_str = sub.to_string_lossy().replace('\\', "/");
            let path = self.root.join(&sub);
            let meta =
                fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let excluded = self.ignore.excluded(&sub_str) && !self.always.contains(&sub_str);
            let kind = meta.file_type();
            if meta.is_dir() {
                if !excluded {
                    out.push((sub_str.clone(), path.clone(), meta));
                }
                // An excluded directory may still hold what an exception
                // puts back.
                if !excluded || self.ignore.has_exceptions() {
                    self.scan(&sub, out)?;
                }
                continue;
            }
            // Sockets, fifos and devices are not part of a context.
            if !excluded && (kind.is_file() || kind.is_symlink()) {
                out.push((sub_str, path, meta));
            }
        }
        Ok(())
    }
}

/// One entry, owned by root as Docker's CLI sends it, with its mode and
/// modification time. A file's header is made from the file as opened, so
/// that it holds what is sent if the file changed since the scan.
fn entry(
    tar: &mut tar::Builder<&mut PieceWriter>,
    rel: &Path,
    path: &Path,
    meta: &fs::Metadata,
) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let header = |meta: &fs::Metadata| {
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        h.set_uid(0);
        h.set_gid(0);
        let _ = h.set_username("");
        let _ = h.set_groupname("");
        h
    };
    let ft = meta.file_type();
    if ft.is_file() {
        let f = fs::File::open(path).map_err(err)?;
        let now = f.metadata().map_err(err)?;
        let mut h = header(&now);
        let len = now.len();
        tar.append_data(&mut h, rel, std::io::Read::take(f, len))
            .map_err(err)
    } else if ft.is_dir() {
        let mut h = header(meta);
        h.set_size(0);
        tar.append_data(&mut h, rel, std::io::empty()).map_err(err)
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(err)?;
        let mut h = header(meta);
        h.set_size(0);
        tar.append_link(&mut h, rel, target).map_err(err)
    } else {
        Ok(())
    }
}

/// A context on standard input: a tar (plain or compressed) as it is, or
/// a lone Dockerfile, which is sent as a context holding only it.
fn stdin_context(
    file: Option<&str>,
    failed: Failure,
) -> Result<(String, Option<String>, Pieces), CliError> {
    let mut stdin = std::io::stdin();
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match stdin.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CliError::Usage(format!("reading standard input: {e}"))),
        }
    }
    head.truncate(n);
    let is_archive = (n >= 262 && &head[257..262] == b"ustar")
        || head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if !is_archive {
        // A Dockerfile: read it whole (a Dockerfile is small) and send a
        // context of it alone.
        let mut text = head;
        stdin
            .take(16 << 20)
            .read_to_end(&mut text)
            .map_err(|e| CliError::Usage(format!("reading standard input: {e}")))?;
        let text = String::from_utf8(text).map_err(|_| {
            CliError::Usage("standard input is neither a tar archive nor a Dockerfile".into())
        })?;
        let mut tar = tar::Builder::new(Vec::new());
        append_file(&mut tar, "Dockerfile", text.as_bytes())
            .and_then(|()| tar.finish())
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let bytes = tar
            .into_inner()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let pieces = crate::images::pieces_from(
            "standard input".into(),
            Box::new(std::io::Cursor::new(bytes)),
            failed,
        );
        return Ok(("Dockerfile".into(), Some(text), pieces));
    }
    // The head already read goes first, then the rest of standard input.
    let rest = std::io::Cursor::new(head).chain(stdin);
    let pieces = crate::images::pieces_from("standard input".into(), Box::new(rest), failed);
    let name = file.unwrap_or("Dockerfile").to_string();
    Ok((name, None, pieces))
}

/// The images a Dockerfile's FROM lines name (not scratch, not an earlier
/// stage, not one that needs a variable), for the cluster to choose a node
/// that holds them.
fn base_images(text: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first().map(|w| w.eq_ignore_ascii_case("FROM")) != Some(true) {
            continue;
        }
        let rest: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let Some(image) = rest.first() else { continue };
        let lower = image.to_ascii_lowercase();
        let earlier_stage = stages.contains(&lower);
        if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("AS") {
            stages.push(rest[2].to_ascii_lowercase());
        }
        if lower == "scratch" || image.contains('$') || earlier_stage {
            continue;
        }
        if !out.contains(&image.to_string()) {
            out.push(image.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_skip_scratch_stages_and_variables() {
        let df = "ARG V=1\nFROM busybox AS build\nFROM --platform=linux/amd64 alpine:3\nFROM build\nFROM scratch\nFROM app:${V}\n";
        assert_eq!(base_images(df), vec!["busybox", "alpine:3"]);
    }
}
