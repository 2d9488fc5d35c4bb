//! Node verbs: `berth node ls`.

use berth_proto::cluster::{cluster_client::ClusterClient, ListNodesRequest};
use tonic::transport::Channel;

use crate::output::{human_size, table};
use crate::CliError;

pub async fn ls(client: &mut ClusterClient<Channel>) -> Result<i32, CliError> {
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner()
        .nodes;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.status.clone(),
                n.cpus.to_string(),
                human_size(n.memory_bytes),
                n.cgroup_version.clone(),
                n.kernel.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "STATUS", "CPUS", "MEMORY", "CGROUP", "KERNEL"],
        &rows,
    );
    Ok(0)
}
