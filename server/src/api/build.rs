//! `build`: the context streams from the client through this server to
//! the agent of one node, which builds there; its progress streams back.
//! The node is one that holds the images the Dockerfile starts from (the
//! client reads them from its FROM lines), so that the build finds them,
//! and the image lands where the scheduler's image locality then places
//! containers of it.

use berth_proto::agent::{image_request::Op, BuildOp};
use berth_proto::cluster::{self, BuildOutput};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::images::{names_image, send_pieces, upload_targets};
use super::names::{check_reference, normalize_image};
use crate::app::App;

/// The most tags, build args and base images one build may name.
const MAX_LIST: usize = 256;
/// The longest single option value.
const MAX_VALUE: usize = 64 * 1024;
/// The most paths an incremental context may delete from its kept copy,
/// and their total length (the client sends the whole context beyond).
const MAX_REMOVED: usize = 65_536;
const MAX_REMOVED_BYTES: usize = 2 << 20;

/// Starts a build: checks the options, picks the node, streams the
/// context to it, and returns the stream of its progress and result.
pub async fn build(
    app: &App,
    mut stream: Streaming<cluster::BuildChunk>,
) -> Result<mpsc::Receiver<Result<BuildOutput, Status>>, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the build sent nothing"))?;
    let options = first
        .options
        .ok_or_else(|| Status::invalid_argument("the first build chunk carries no options"))?;
    let op = check(&options)?;
    let node = choose_node(app, &options).await?;
    let upload = app
        .nodes
        .upload_start(&node, Op::Build(op))
        .await
        .map_err(Status::unavailable)?;
    let uploads = vec![(node.clone(), upload)];
    let refused = send_pieces(app, &uploads, first.data, &mut stream, |c| c.data).await;
    let (_, upload) = uploads.into_iter().next().expect("one upload");
    // The end, after a refusal too: the agent then refuses the cut context.
    if let Err(e) = app.nodes.upload_send(&upload, &[], true).await {
        return Err(Status::unavailable(e));
    }
    if let Some(s) = refused {
        return Err(s);
    }
    let mut replies = upload.into_replies();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(r) = replies.recv().await {
            if !r.data.is_empty()
                && tx
                    .send(Ok(BuildOutput {
                        progress: r.data,
                        ..Default::default()
                    }))
                    .await
                    .is_err()
            {
                // The client left; the build goes on and lands anyway.
                continue;
            }
            if r.last {
                let out = if !r.error.is_empty() {
                    Err(Status::failed_precondition(r.error))
                } else {
                    let made: serde_json::Value = serde_json::from_str(&r.json).unwrap_or_default();
                    Ok(BuildOutput {
                        image_id: made["id"].as_str().unwrap_or_default().to_string(),
                        node: node.clone(),
                        context_token: made["context_token"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        context_base_unknown: made["context_base_unknown"] == true,
                        ..Default::default()
                    })
                };
                let _ = tx.send(out).await;
                return;
            }
        }
        let _ = tx
            .send(Err(Status::unavailable(format!(
                "node {node} disconnected during the build"
            ))))
            .await;
    });
    Ok(rx)
}

/// The agent's operation for checked options.
fn check(o: &cluster::BuildOptions) -> Result<BuildOp, Status> {
    let bad = |why: String| Err(Status::invalid_argument(why));
    if o.tags.len() > MAX_LIST || o.build_args.len() > MAX_LIST || o.base_images.len() > MAX_LIST {
        return bad(format!(
            "a build names at most {MAX_LIST} tags, build args and base images"
        ));
    }
    let too_long = |v: &String| v.len() > MAX_VALUE;
    if o.build_args.iter().any(too_long) || o.tags.iter().any(too_long) || o.dockerfile.len() > 4096
    {
        return bad("a build option is too long".into());
    }
    let mut tags = Vec::new();
    for t in &o.tags {
        check_reference(t).map_err(Status::invalid_argument)?;
        tags.push(normalize_image(t));
    }
    for a in &o.build_args {
        let key = a.split_once('=').map_or(a.as_str(), |(k, _)| k);
        if key.is_empty() || key.contains(char::is_whitespace) {
            return bad(format!("invalid --build-arg {a:?}: give KEY=VALUE"));
        }
    }
    let hex_of = |v: &str, len: usize| v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit());
    if !o.context_key.is_empty() && !hex_of(&o.context_key, 64) {
        return bad(format!(
            "invalid context key {:?}: 64 hex digits",
            o.context_key
        ));
    }
    if !o.context_base.is_empty() && (o.context_key.is_empty() || !hex_of(&o.context_base, 32)) {
        return bad(format!(
            "invalid context base {:?}: 32 hex digits, with a context key",
            o.context_base
        ));
    }
    if o.context_base.is_empty() && !o.context_removed.is_empty() {
        return bad("paths to remove are given without a context base".into());
    }
    let removed_bytes: usize = o.context_removed.iter().map(String::len).sum();
    if o.context_removed.len() > MAX_REMOVED || removed_bytes > MAX_REMOVED_BYTES {
        return bad(format!(
            "an incremental context removes at most {MAX_REMOVED} paths of {MAX_REMOVED_BYTES} bytes in all: send the whole context"
        ));
    }
    if o.context_removed
        .iter()
        .any(|p| p.is_empty() || p.len() > 4096 || p.contains('\0'))
    {
        return bad("a path to remove from the context is empty, too long or holds a NUL".into());
    }
    let network = match o.network.as_str() {
        "" | "none" | "default" => "none",
        "host" => "host",
        other => {
            return bad(format!(
                "network mode {other:?} is not supported for a build: use none or host"
            ))
        }
    };
    Ok(BuildOp {
        tags,
        dockerfile: o.dockerfile.clone(),
        build_args: o.build_args.clone(),
        no_cache: o.no_cache,
        target: o.target.clone(),
        network: network.to_string(),
        context_key: o.context_key.clone(),
        context_base: o.context_base.clone(),
        context_removed: o.context_removed.clone(),
    })
}

/// The node to build on: the one asked for, else the connected node that
/// holds the most of the base images (the first such, by name).
async fn choose_node(app: &App, o: &cluster::BuildOptions) -> Result<String, Status> {
    if !o.node.is_empty() {
        return upload_targets(app, &o.node).await.map(|_| o.node.clone());
    }
    let nodes = app
        .state
        .nodes()
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut best: Option<(usize, String)> = None;
    for n in nodes {
        if !app.nodes.is_connected(&n.name).await {
            continue;
        }
        let held = o
            .base_images
            .iter()
            .filter(|b| n.images.iter().any(|i| names_image(i, b)))
            .count();
        if best.as_ref().is_none_or(|(h, _)| held > *h) {
            best = Some((held, n.name.clone()));
        }
    }
    best.map(|(_, n)| n).ok_or_else(|| {
        Status::failed_precondition("no node of the cluster is connected to build on")
    })
}
