//! Image verbs: import, images.

use berth_proto::cluster::{cluster_client::ClusterClient, ImportChunk, ListImagesRequest};
use clap::Args;
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
    let data = if args.file == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| CliError::Usage(format!("reading standard input: {e}")))?;
        buf
    } else {
        std::fs::read(&args.file).map_err(|e| CliError::Usage(format!("{}: {e}", args.file)))?
    };
    let mut chunks: Vec<ImportChunk> = data
        .chunks(CHUNK)
        .map(|c| ImportChunk {
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(ImportChunk::default());
    }
    chunks[0].reference = args.reference.clone();
    chunks[0].node = args.node.clone().unwrap_or_default();
    let resp = client
        .import_image(tokio_stream::iter(chunks))
        .await
        .map_err(CliError::api)?
        .into_inner();
    println!("{}", resp.image_id);
    Ok(0)
}

/// `berth images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print only the image ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

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
    let mut rows = Vec::new();
    for i in &list {
        let tags = if i.tags.is_empty() {
            vec!["<none>:<none>".to_string()]
        } else {
            i.tags.clone()
        };
        for t in tags {
            let (repo, tag) = match t.rfind(':') {
                Some(p) if !t[p..].contains('/') => (t[..p].to_string(), t[p + 1..].to_string()),
                _ => (t.clone(), "<none>".to_string()),
            };
            rows.push(vec![
                repo,
                tag,
                short(&i.id),
                ago(now, i.created_ms),
                human_size(i.size),
                i.nodes.join(","),
            ]);
        }
    }
    table(
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "NODES"],
        &rows,
    );
    Ok(0)
}
