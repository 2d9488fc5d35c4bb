//! Image operations of the Cluster service: import, load, save, tag, rmi,
//! inspect, and container export. The cluster keeps which node holds which
//! image (from the agents' inventories); the bytes live on the nodes, so
//! each operation goes to the agents that hold, or should hold, the image.

use std::collections::BTreeMap;

use berth_proto::agent::{
    image_request::Op, ExportOp, ImportOp, InspectOp, LoadOp, RemoveImageOp, SaveOp, SizesOp, TagOp,
};
use berth_proto::cluster::{self, DataChunk};
use berth_proto::records::{self, ContainerState};
use serde::Deserialize;
use tokio::sync::mpsc;
use tonic::Status;

use super::names::normalize_image;
use crate::app::App;

/// The largest upload (import or load) the cluster accepts.
pub const MAX_UPLOAD_BYTES: usize = 4 << 30;

/// One image as an agent describes it in a JSON result.
#[derive(Debug, Deserialize)]
struct AgentImage {
    id: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    created_ms: i64,
}

/// True if `reference` names `image`: a tag, the id, or an id prefix of at
/// least 12 hex digits.
pub fn names_image(image: &records::Image, reference: &str) -> bool {
    let bare = reference.trim_start_matches("sha256:");
    image.tags.iter().any(|t| *t == normalize_image(reference))
        || image.id == reference
        || (bare.len() >= 12
            && bare.bytes().all(|b| b.is_ascii_hexdigit())
            && image.id.trim_start_matches("sha256:").starts_with(bare))
}

/// The connected nodes that hold the image `reference`, with the image.
pub async fn holders(app: &App, reference: &str) -> Result<Vec<(String, records::Image)>, Status> {
    let nodes = app
        .state
        .nodes()
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut out = Vec::new();
    for n in nodes {
        if let Some(i) = n.images.iter().find(|i| names_image(i, reference)) {
            if app.nodes.is_connected(&n.name).await {
                out.push((n.name.clone(), i.clone()));
            }
        }
    }
    Ok(out)
}

/// The nodes an upload goes to: the one named, or every connected node.
pub async fn upload_targets(app: &App, node: &str) -> Result<Vec<String>, Status> {
    if !node.is_empty() {
        if app.nodes.is_connected(node).await {
            return Ok(vec![node.to_string()]);
        }
        return Err(Status::failed_precondition(format!(
            "node {node} is not connected"
        )));
    }
    let all = app.nodes.connected_names().await;
    if all.is_empty() {
        return Err(Status::failed_precondition(
            "no node of the cluster is ready to take images",
        ));
    }
    Ok(all)
}

/// Sends an upload to every target as its pieces arrive from the client
/// (the first piece already read, `first`), and merges what they loaded.
/// Nothing is kept here but the piece in hand; past MAX_UPLOAD_BYTES the
/// upload ends and is refused.
pub async fn upload_streamed<T>(
    app: &App,
    targets: &[String],
    op: Op,
    first: Vec<u8>,
    rest: &mut (impl futures::Stream<Item = Result<T, Status>> + Unpin),
    data_of: impl Fn(T) -> Vec<u8>,
) -> Result<(Vec<cluster::ImageInfo>, Vec<String>), Status> {
    let mut uploads = Vec::new();
    for n in targets {
        match app.nodes.upload_start(n, op.clone()).await {
            Ok(u) => uploads.push((n.clone(), u)),
            Err(e) => tracing::warn!("upload failed on {n}: {e}"),
        }
    }
    if uploads.is_empty() {
        return Err(Status::failed_precondition(
            "no node of the cluster took the upload",
        ));
    }
    let refused = send_pieces(app, &uploads, first, rest, data_of).await;
    // The end, for every node (after a refusal too: the node then refuses
    // the cut archive and keeps nothing).
    for (n, u) in &uploads {
        if let Err(e) = app.nodes.upload_send(u, &[], true).await {
            tracing::warn!("upload failed on {n}: {e}");
        }
    }
    let results = futures::future::join_all(
        uploads
            .into_iter()
            .map(|(n, u)| async move { (n, app.nodes.upload_finish(u).await) }),
    )
    .await;
    if let Some(s) = refused {
        return Err(s);
    }
    merge_loaded(results)
}

/// Sends an upload's pieces, as they arrive from the client (the first
/// already read), to every upload in `uploads`; the end is not sent. What
/// stopped it early, if anything: the client's error, or the size limit.
pub async fn send_pieces<T>(
    app: &App,
    uploads: &[(String, crate::nodes::Upload)],
    first: Vec<u8>,
    rest: &mut (impl futures::Stream<Item = Result<T, Status>> + Unpin),
    data_of: impl Fn(T) -> Vec<u8>,
) -> Option<Status> {
    use futures::StreamExt as _;
    let mut total = 0usize;
    let mut piece = Some(first);
    let mut refused: Option<Status> = None;
    while let Some(data) = piece.take() {
        total = total.saturating_add(data.len());
        if total > MAX_UPLOAD_BYTES {
            refused = Some(Status::resource_exhausted(format!(
                "the upload is larger than {MAX_UPLOAD_BYTES} bytes"
            )));
            break;
        }
        let following = match rest.next().await {
            None => None,
            Some(Ok(chunk)) => Some(data_of(chunk)),
            Some(Err(s)) => {
                refused = Some(s);
                None
            }
        };
        let last = following.is_none();
        for piece_of in data.chunks(crate::nodes::UPLOAD_CHUNK) {
            for (n, u) in uploads {
                if let Err(e) = app.nodes.upload_send(u, piece_of, false).await {
                    tracing::warn!("upload failed on {n}: {e}");
                }
            }
        }
        if last {
            break;
        }
        piece = following;
    }
    refused
}

/// Merges what each node loaded; an error only if no node took it.
fn merge_loaded(
    results: Vec<(String, Result<String, String>)>,
) -> Result<(Vec<cluster::ImageInfo>, Vec<String>), Status> {
    let mut images: BTreeMap<String, cluster::ImageInfo> = BTreeMap::new();
    let mut nodes = Vec::new();
    let mut errors = Vec::new();
    for (node, result) in results {
        match result {
            Ok(json) => {
                let loaded: Vec<AgentImage> = serde_json::from_str(&json).unwrap_or_default();
                for i in loaded {
                    let e = images
                        .entry(i.id.clone())
                        .or_insert_with(|| cluster::ImageInfo {
                            id: i.id.clone(),
                            tags: i.tags.clone(),
                            size: i.size,
                            created_ms: i.created_ms,
                            nodes: Vec::new(),
                        });
                    e.nodes.push(node.clone());
                }
                nodes.push(node);
            }
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    if nodes.is_empty() {
        return Err(Status::invalid_argument(errors.join("; ")));
    }
    for e in &errors {
        tracing::warn!("upload failed on {e}");
    }
    Ok((images.into_values().collect(), nodes))
}

/// Streams a download (save, export) from one node to the caller.
pub async fn download(
    app: &App,
    node: &str,
    op: Op,
) -> Result<mpsc::Receiver<Result<DataChunk, Status>>, Status> {
    let mut replies = app
        .nodes
        .image_request(node, op, &[])
        .await
        .map_err(Status::unavailable)?;
    let (tx, rx) = mpsc::channel(16);
    let node = node.to_string();
    tokio::spawn(async move {
        while let Some(r) = replies.recv().await {
            if !r.data.is_empty() && tx.send(Ok(DataChunk { data: r.data })).await.is_err() {
                return;
            }
            if r.last {
                if !r.error.is_empty() {
                    let _ = tx.send(Err(Status::failed_precondition(r.error))).await;
                }
                return;
            }
        }
        let _ = tx
            .send(Err(Status::unavailable(format!(
                "node {node} disconnected during the transfer"
            ))))
            .await;
    });
    Ok(rx)
}

/// Saves images from a node that holds all of them.
pub async fn save(
    app: &App,
    references: Vec<String>,
) -> Result<mpsc::Receiver<Result<DataChunk, Status>>, Status> {
    if references.is_empty() {
        return Err(Status::invalid_argument("no image given"));
    }
    let mut candidates: Option<Vec<String>> = None;
    for r in &references {
        let names: Vec<String> = holders(app, r).await?.into_iter().map(|(n, _)| n).collect();
        if names.is_empty() {
            return Err(Status::not_found(format!(
                "No such image: {}",
                normalize_image(r)
            )));
        }
        candidates = Some(match candidates {
            None => names,
            Some(c) => c.into_iter().filter(|n| names.contains(n)).collect(),
        });
    }
    let node = candidates
        .unwrap_or_default()
        .into_iter()
        .next()
        .ok_or_else(|| Status::failed_precondition("no single node holds all of these images"))?;
    let refs = references
        .iter()
        .map(|r| {
            if r.starts_with("sha256:") || looks_like_id(r) {
                r.clone()
            } else {
                normalize_image(r)
            }
        })
        .collect();
    download(app, &node, Op::Save(SaveOp { references: refs })).await
}

fn looks_like_id(r: &str) -> bool {
    r.len() >= 12 && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Tags an image on every node that holds it.
pub async fn tag(app: &App, source: &str, target: &str) -> Result<Vec<String>, Status> {
    if target.is_empty() {
        return Err(Status::invalid_argument("no target reference given"));
    }
    let holders = holders(app, source).await?;
    if holders.is_empty() {
        return Err(Status::not_found(format!(
            "No such image: {}",
            normalize_image(source)
        )));
    }
    // Each node tags its own image: an import made on two nodes a second
    // apart has two ids (the config records its creation time).
    let mut nodes = Vec::new();
    for (n, image) in &holders {
        let op = Op::Tag(TagOp {
            source: image.id.clone(),
            target: normalize_image(target),
        });
        app.nodes
            .image_call(n, op, &[])
            .await
            .map_err(|e| Status::failed_precondition(format!("{n}: {e}")))?;
        nodes.push(n.clone());
    }
    Ok(nodes)
}

/// Removes an image reference (or an image, by id) on every node holding
/// it. Refused while a container uses the image, unless forced; a running
/// container's image is never removed.
pub async fn remove(
    app: &App,
    reference: &str,
    force: bool,
) -> Result<(Vec<String>, Vec<String>), Status> {
    let holders = holders(app, reference).await?;
    let Some((_, image)) = holders.first().cloned() else {
        return Err(Status::not_found(format!(
            "No such image: {}",
            normalize_image(reference)
        )));
    };
    let short = image
        .id
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect::<String>();
    let containers = app
        .state
        .containers()
        .map_err(|e| Status::internal(e.to_string()))?;
    // An image made on each node apart (an import) has an id per node.
    let ids: Vec<&str> = holders.iter().map(|(_, i)| i.id.as_str()).collect();
    let users: Vec<&records::Container> = containers
        .iter()
        .filter(|c| {
            ids.contains(&c.image_id.as_str())
                || (c.image_id.is_empty()
                    && c.spec
                        .as_ref()
                        .is_some_and(|s| image.tags.contains(&s.image)))
        })
        .collect();
    // Untagging one of several tags deletes nothing: always allowed.
    let only_untag =
        image.tags.len() > 1 && image.tags.iter().any(|t| *t == normalize_image(reference));
    let running = users
        .iter()
        .find(|c| matches!(c.state(), ContainerState::Running | ContainerState::Paused));
    if let (Some(running), false) = (running, only_untag) {
        return Err(Status::failed_precondition(format!(
            "conflict: unable to delete {short} (cannot be forced) - image is being used by running container {}",
            &running.id[..12]
        )));
    }
    if let (Some(user), false, false) = (users.first(), force, only_untag) {
        return Err(Status::failed_precondition(format!(
            "conflict: unable to remove repository reference \"{reference}\" (must force) - container {} is using its referenced image {short}",
            &user.id[..12]
        )));
    }
    let by_tag = image.tags.iter().any(|t| *t == normalize_image(reference));
    let mut untagged = Vec::new();
    let mut deleted = Vec::new();
    for (n, held) in &holders {
        let target = if by_tag {
            normalize_image(reference)
        } else {
            held.id.clone()
        };
        let json = app
            .nodes
            .image_call(n, Op::Remove(RemoveImageOp { reference: target }), &[])
            .await
            .map_err(|e| Status::failed_precondition(format!("{n}: {e}")))?;
        #[derive(Deserialize)]
        struct Removed {
            #[serde(default)]
            untagged: Vec<String>,
            deleted: Option<String>,
        }
        if let Ok(r) = serde_json::from_str::<Removed>(&json) {
            for u in r.untagged {
                if !untagged.contains(&u) {
                    untagged.push(u);
                }
            }
            if let Some(d) = r.deleted {
                if !deleted.contains(&d) {
                    deleted.push(d);
                }
            }
        }
    }
    Ok((untagged, deleted))
}

/// The image's metadata from a node that holds it, with every holder.
pub async fn inspect(app: &App, reference: &str) -> Result<String, Status> {
    let holders = holders(app, reference).await?;
    let Some((node, image)) = holders.first() else {
        return Err(Status::not_found(format!(
            "No such image: {}",
            normalize_image(reference)
        )));
    };
    let json = app
        .nodes
        .image_call(
            node,
            Op::Inspect(InspectOp {
                reference: image.id.clone(),
            }),
            &[],
        )
        .await
        .map_err(Status::failed_precondition)?;
    let mut v: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| Status::internal(e.to_string()))?;
    v["Nodes"] = serde_json::json!(holders.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    Ok(v.to_string())
}

/// A container's filesystem, from its node.
pub async fn export(
    app: &App,
    container: &records::Container,
) -> Result<mpsc::Receiver<Result<DataChunk, Status>>, Status> {
    if container.node.is_empty() {
        return Err(Status::failed_precondition(format!(
            "container {} has not been created on a node yet",
            container.name
        )));
    }
    download(
        app,
        &container.node,
        Op::Export(ExportOp {
            container_id: container.id.clone(),
        }),
    )
    .await
}

/// The operations for uploads.
pub fn import_op(reference: &str) -> Op {
    Op::Import(ImportOp {
        reference: reference.to_string(),
    })
}

pub fn load_op() -> Op {
    Op::Load(LoadOp {})
}

/// Fills in each container's writable-layer size from its node (`ps
/// --size`); a node that does not answer leaves its containers without one.
pub async fn fill_sizes(app: &App, containers: &mut [cluster::ContainerInfo]) {
    let mut nodes: Vec<String> = containers
        .iter()
        .map(|c| c.node.clone())
        .filter(|n| !n.is_empty())
        .collect();
    nodes.sort();
    nodes.dedup();
    for node in nodes {
        let Ok(json) = app
            .nodes
            .image_call(&node, Op::Sizes(SizesOp {}), &[])
            .await
        else {
            continue;
        };
        let sizes: std::collections::HashMap<String, u64> =
            serde_json::from_str(&json).unwrap_or_default();
        for c in containers.iter_mut().filter(|c| c.node == node) {
            c.size_rw = sizes.get(&c.id).copied();
        }
    }
}
