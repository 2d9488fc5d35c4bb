//! Image verbs: import, images.

use std::io::Read;

use berth_proto::cluster::{cluster_client::ClusterClient, ImportChunk, ListImagesRequest};
use clap::Args;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::output::{ago, human_size, now_ms, table};
use crate::CliError;

/// The size of each piece of a tarball sent to the cluster.
const CHUNK: usize = 1 << 20;

/// `berth import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A rootfs tarball (plain or gzip); - reads standard input.
    pub file: String,
    /// The name to give the image, REPOSITORY[:TAG].
    pub reference: String,
    /// Import on this node only (default: every ready node).
    #[arg(long)]
    pub node: Option<String>,
}

pub async fn import(
    client: &mut ClusterClient<Channel>,
    args: ImportArgs,
) -> Result<i32, CliError> {
    let (pieces, failed) = pieces_of(Some(args.file.as_str()))?;
    let (reference, node) = (
        args.reference.clone(),
        args.node.clone().unwrap_or_default(),
    );
    let mut first = true;
    let stream = pieces.map(move |data| {
        let chunk = ImportChunk {
            data,
            reference: if first {
                reference.clone()
            } else {
                String::new()
            },
            node: if first { node.clone() } else { String::new() },
        };
        first = false;
        chunk
    });
    let resp = client.import_image(stream).await;
    read_failure(&failed)?;
    let resp = resp.map_err(CliError::api)?.into_inner();
    println!("{}", resp.image_id);
    Ok(0)
}

/// `berth images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print only the image ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print through a Go template: '{{.Repository}}:{{.Tag}}',
    /// '{{json .}}', 'table {{.ID}}\t{{.Nodes}}' (fields: ID, Repository,
    /// Tag, Digest, CreatedSince, CreatedAt, Size, VirtualSize,
    /// SharedSize, UniqueSize, Containers, Nodes).
    #[arg(long)]
    pub format: Option<String>,
}

/// The column names of `images --format 'table ...'`, as Docker's.
const IMAGE_HEADERS: &[(&str, &str)] = &[
    ("ID", "IMAGE ID"),
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("Digest", "DIGEST"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
    ("VirtualSize", "SIZE"),
    ("SharedSize", "SHARED SIZE"),
    ("UniqueSize", "UNIQUE SIZE"),
    ("Containers", "CONTAINERS"),
    ("Nodes", "NODES"),
];

pub async fn images(
    client: &mut ClusterClient<Channel>,
    args: ImagesArgs,
) -> Result<i32, CliError> {
    let list = client
        .list_images(ListImagesRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner()
        .images;
    let short = |id: &str| {
        id.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    if args.quiet {
        for i in &list {
            println!("{}", short(&i.id));
        }
        return Ok(0);
    }
    let now = now_ms();
    // A row for each tag of each image (`<none>` for an untagged one).
    let tagged: Vec<(&berth_proto::cluster::ImageInfo, String, String)> = list
        .iter()
        .flat_map(|i| {
            let tags = if i.tags.is_empty() {
                vec!["<none>:<none>".to_string()]
            } else {
                i.tags.clone()
            };
            tags.into_iter().map(move |t| {
                let (repo, tag) = split_tag(&t);
                (i, repo, tag)
            })
        })
        .collect();
    let format = crate::format::Format::parse(args.format.as_deref());
    if format != crate::format::Format::Default {
        let values: Vec<serde_json::Value> = tagged
            .iter()
            .map(|(i, repo, tag)| {
                serde_json::json!({
                    "ID": short(&i.id),
                    "Repository": repo,
                    "Tag": tag,
                    "Digest": "<none>",
                    "CreatedSince": ago(now, i.created_ms),
                    "CreatedAt": crate::output::go_time(i.created_ms),
                    "Size": human_size(i.size),
                    "VirtualSize": human_size(i.size),
                    "SharedSize": "N/A",
                    "UniqueSize": "N/A",
                    "Containers": "N/A",
                    "Nodes": i.nodes.join(","),
                })
            })
            .collect();
        crate::format::print(&format, &values, IMAGE_HEADERS)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = tagged
        .into_iter()
        .map(|(i, repo, tag)| {
            vec![
                repo,
                tag,
                short(&i.id),
                ago(now, i.created_ms),
                human_size(i.size),
                i.nodes.join(","),
            ]
        })
        .collect();
    table(
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "NODES"],
        &rows,
    );
    Ok(0)
}

/// A reference's repository and tag (`<none>` without one).
fn split_tag(t: &str) -> (String, String) {
    match t.rfind(':') {
        Some(p) if !t[p..].contains('/') => (t[..p].to_string(), t[p + 1..].to_string()),
        _ => (t.to_string(), "<none>".to_string()),
    }
}

/// Why reading an upload stopped part-way, if it did.
pub type ReadFailure = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// A file, or standard input for `-` or no file, as a stream of pieces
/// read on a thread of its own: a few pieces are in memory at a time,
/// however large the archive. At least one piece (maybe empty) comes.
fn pieces_of(
    file: Option<&str>,
) -> Result<(impl tokio_stream::Stream<Item = Vec<u8>>, ReadFailure), CliError> {
    let (name, reader): (String, Box<dyn std::io::Read + Send>) = match file {
        None | Some("-") => ("standard input".into(), Box::new(std::io::stdin())),
        Some(f) => (
            f.to_string(),
            Box::new(std::fs::File::open(f).map_err(|e| CliError::Usage(format!("{f}: {e}")))?),
        ),
    };
    let failed: ReadFailure = Default::default();
    let pieces = pieces_from(name, reader, failed.clone());
    Ok((pieces, failed))
}

/// Reads `reader` (named `name` in errors) as a stream of pieces on a
/// thread of its own; a read error is kept in `failure` and ends the
/// stream. At least one piece (maybe empty) comes.
pub fn pieces_from(
    name: String,
    mut reader: Box<dyn std::io::Read + Send>,
    failure: ReadFailure,
) -> tokio_stream::wrappers::ReceiverStream<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut sent = false;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("reading {name}: {e}"));
                        return;
                    }
                }
            }
            buf.truncate(filled);
            if filled == 0 && sent {
                return;
            }
            sent = true;
            let last = filled < CHUNK;
            if tx.blocking_send(buf).is_err() || last {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The read error that cut an upload short, reported as the cause.
fn read_failure(failed: &ReadFailure) -> Result<(), CliError> {
    match failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(why) => Err(CliError::Usage(why)),
        None => Ok(()),
    }
}

/// Writes a download to a file, or to standard output unless that is a
/// terminal.
async fn write_download(
    mut stream: tonic::Streaming<berth_proto::cluster::DataChunk>,
    output: Option<&str>,
) -> Result<(), CliError> {
    use std::io::{IsTerminal, Write};
    let mut out: Box<dyn Write> = match output {
        Some(path) if path != "-" => Box::new(
            std::fs::File::create(path).map_err(|e| CliError::Usage(format!("{path}: {e}")))?,
        ),
        _ => {
            if std::io::stdout().is_terminal() {
                return Err(CliError::Usage(
                    "refusing to write an archive to a terminal: use -o FILE or redirect the output".into(),
                ));
            }
            Box::new(std::io::stdout().lock())
        }
    };
    while let Some(chunk) = stream.message().await.map_err(CliError::api)? {
        out.write_all(&chunk.data)
            .map_err(|e| CliError::Usage(format!("writing the archive: {e}")))?;
    }
    out.flush()
        .map_err(|e| CliError::Usage(format!("writing the archive: {e}")))?;
    Ok(())
}

/// `berth load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this archive (docker save or OCI layout tar) instead of standard input.
    #[arg(short = 'i', long = "input")]
    pub input: Option<String>,
    /// Load on this node only (default: every ready node).
    #[arg(long)]
    pub node: Option<String>,
    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub async fn load(client: &mut ClusterClient<Channel>, args: LoadArgs) -> Result<i32, CliError> {
    let (pieces, failed) = pieces_of(args.input.as_deref())?;
    let node = args.node.clone().unwrap_or_default();
    let mut first = true;
    let stream = pieces.map(move |data| {
        let chunk = berth_proto::cluster::UploadChunk {
            data,
            node: if first { node.clone() } else { String::new() },
        };
        first = false;
        chunk
    });
    let resp = client.load_images(stream).await;
    read_failure(&failed)?;
    let resp = resp.map_err(CliError::api)?.into_inner();
    if !args.quiet {
        for i in &resp.images {
            if i.tags.is_empty() {
                println!("Loaded image ID: {}", i.id);
            }
            for t in &i.tags {
                println!("Loaded image: {t}");
            }
        }
    }
    Ok(0)
}

/// `berth save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
    /// Images to save, by reference or id.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn save(client: &mut ClusterClient<Channel>, args: SaveArgs) -> Result<i32, CliError> {
    let stream = client
        .save_images(berth_proto::cluster::SaveImagesRequest {
            references: args.images.clone(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    write_download(stream, args.output.as_deref()).await?;
    Ok(0)
}

/// `berth export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
    /// The container's name or id.
    pub container: String,
}

pub async fn export(
    client: &mut ClusterClient<Channel>,
    args: ExportArgs,
) -> Result<i32, CliError> {
    let stream = client
        .export_container(berth_proto::cluster::ContainerRef {
            name_or_id: args.container.clone(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    write_download(stream, args.output.as_deref()).await?;
    Ok(0)
}

/// `berth tag`.
#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image, by reference or id.
    pub source: String,
    /// The new reference, REPOSITORY[:TAG].
    pub target: String,
}

pub async fn tag(client: &mut ClusterClient<Channel>, args: TagArgs) -> Result<i32, CliError> {
    client
        .tag_image(berth_proto::cluster::TagImageRequest {
            source: args.source,
            target: args.target,
        })
        .await
        .map_err(CliError::api)?;
    Ok(0)
}

/// `berth rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Remove even if stopped containers use the image.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Images, by reference or id.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Removes each image; goes on past failures and exits 1 if any failed.
pub async fn rmi(client: &mut ClusterClient<Channel>, args: RmiArgs) -> Result<i32, CliError> {
    let mut failed = false;
    for image in &args.images {
        match client
            .remove_images(berth_proto::cluster::RemoveImagesRequest {
                references: vec![image.clone()],
                force: args.force,
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                for u in &r.untagged {
                    println!("Untagged: {u}");
                }
                for d in &r.deleted {
                    println!("Deleted: {d}");
                }
            }
            Err(status) => {
                eprintln!("berth: error: {}", status.message());
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

async fn inspect_json(
    client: &mut ClusterClient<Channel>,
    image: &str,
) -> Result<serde_json::Value, CliError> {
    let json = client
        .inspect_image(berth_proto::cluster::ImageRef {
            reference: image.to_string(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner()
        .json;
    serde_json::from_str(&json)
        .map_err(|e| CliError::Api(format!("the cluster sent unreadable JSON: {e}")))
}

/// `berth image inspect`.
pub async fn inspect(
    client: &mut ClusterClient<Channel>,
    images: Vec<String>,
) -> Result<i32, CliError> {
    let mut all = Vec::new();
    for i in &images {
        all.push(inspect_json(client, i).await?);
    }
    println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    Ok(0)
}

/// `berth history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Do not cut the CREATED BY column short.
    #[arg(long)]
    pub no_trunc: bool,
    /// Print through a Go template (fields: ID, CreatedSince, CreatedAt,
    /// CreatedBy, Size, Comment).
    #[arg(long)]
    pub format: Option<String>,
    /// The image, by reference or id.
    pub image: String,
}

pub async fn history(
    client: &mut ClusterClient<Channel>,
    args: HistoryArgs,
) -> Result<i32, CliError> {
    let v = inspect_json(client, &args.image).await?;
    let entries = v["History"].as_array().cloned().unwrap_or_default();
    let mut sizes = v["LayerSizes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.as_u64().unwrap_or(0));
    let id: String = v["Id"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let now = now_ms();
    let mut rows: Vec<Vec<String>> = entries
        .iter()
        .map(|h| {
            let empty = h["empty_layer"].as_bool().unwrap_or(false);
            let size = if empty { 0 } else { sizes.next().unwrap_or(0) };
            let created = h["created"]
                .as_str()
                .and_then(crate::output::parse_rfc3339_ms)
                .map(|ms| ago(now, ms))
                .unwrap_or_else(|| "N/A".into());
            let by = h["created_by"].as_str().unwrap_or("").to_string();
            vec![
                "<missing>".to_string(),
                created,
                if args.no_trunc {
                    by
                } else {
                    crate::output::truncate(&by, 45)
                },
                human_size(size),
                h["comment"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first[0] = id;
    }
    let format = crate::format::Format::parse(args.format.as_deref());
    if format != crate::format::Format::Default {
        let created_at: Vec<String> = entries
            .iter()
            .rev()
            .map(|h| h["created"].as_str().unwrap_or("").to_string())
            .collect();
        let values: Vec<serde_json::Value> = rows
            .iter()
            .zip(created_at)
            .map(|(r, at)| {
                serde_json::json!({
                    "ID": r[0], "CreatedSince": r[1], "CreatedAt": at,
                    "CreatedBy": r[2], "Size": r[3], "Comment": r[4],
                })
            })
            .collect();
        crate::format::print(
            &format,
            &values,
            &[
                ("ID", "IMAGE"),
                ("CreatedSince", "CREATED"),
                ("CreatedAt", "CREATED AT"),
                ("CreatedBy", "CREATED BY"),
                ("Size", "SIZE"),
                ("Comment", "COMMENT"),
            ],
        )?;
        return Ok(0);
    }
    table(
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &rows,
    );
    Ok(0)
}
