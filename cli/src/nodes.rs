//! Node verbs: `berth node ls|inspect|update|rm|label`, and the cluster verbs.

use berth_proto::cluster::{cluster_client::ClusterClient, ListNodesRequest};
use tonic::transport::Channel;

use crate::output::{human_size, table};
use crate::CliError;

/// A node's labels, K=V sorted and comma-separated: the agent's, with
/// the operator's of the same key in their place.
fn labels_of(n: &berth_proto::cluster::NodeInfo) -> String {
    let mut l: Vec<String> = n
        .agent_labels
        .iter()
        .filter(|(k, _)| !n.labels.contains_key(*k))
        .chain(n.labels.iter())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    l.sort();
    l.join(",")
}

pub async fn ls(
    client: &mut ClusterClient<Channel>,
    format: Option<&str>,
) -> Result<i32, CliError> {
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner()
        .nodes;
    let format = crate::format::Format::parse(format);
    if format != crate::format::Format::Default {
        let values: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "ID": n.name, "Hostname": n.name,
                    "Status": crate::output::title_case(&n.status),
                    "Availability": crate::output::title_case(&n.availability),
                    "Containers": n.containers.to_string(), "CPUs": n.cpus.to_string(),
                    "Memory": human_size(n.memory_bytes), "Cgroup": n.cgroup_version,
                    "Kernel": n.kernel, "Labels": labels_of(n),
                })
            })
            .collect();
        crate::format::print(
            &format,
            &values,
            &[
                ("ID", "ID"),
                ("Hostname", "HOSTNAME"),
                ("Status", "STATUS"),
                ("Availability", "AVAILABILITY"),
                ("Containers", "CONTAINERS"),
                ("CPUs", "CPUS"),
                ("Memory", "MEMORY"),
                ("Cgroup", "CGROUP"),
                ("Kernel", "KERNEL"),
                ("Labels", "LABELS"),
            ],
        )?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.status.clone(),
                n.availability.clone(),
                n.containers.to_string(),
                n.cpus.to_string(),
                human_size(n.memory_bytes),
                n.cgroup_version.clone(),
                n.kernel.clone(),
                labels_of(n),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATUS",
            "AVAILABILITY",
            "CONTAINERS",
            "CPUS",
            "MEMORY",
            "CGROUP",
            "KERNEL",
            "LABELS",
        ],
        &rows,
    );
    Ok(0)
}

/// `berth node inspect NODE...`.
pub async fn inspect(
    client: &mut ClusterClient<Channel>,
    names: &[String],
) -> Result<i32, CliError> {
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner()
        .nodes;
    let mut out = Vec::new();
    for name in names {
        let n = nodes
            .iter()
            .find(|n| &n.name == name)
            .ok_or_else(|| CliError::Api(format!("No such node: {name}")))?;
        out.push(serde_json::json!({
            "Name": n.name,
            "Status": {"State": n.status, "UpdatedAtMs": n.updated_at_ms},
            "Spec": {"Availability": n.availability, "Labels": n.labels},
            "Description": {
                "Hostname": n.name,
                "Kernel": n.kernel,
                "CgroupVersion": n.cgroup_version,
                "Resources": {"NanoCPUs": n.cpus * 1_000_000_000, "MemoryBytes": n.memory_bytes},
                "EngineLabels": n.agent_labels,
            },
            "Reserved": {"NanoCPUs": n.reserved_nano_cpus, "MemoryBytes": n.reserved_memory_bytes},
            "Containers": n.containers,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(0)
}

/// `berth node update [--availability A] [--label-add K=V]... [--label-rm K]... NODE`.
pub async fn update(
    client: &mut ClusterClient<Channel>,
    node: &str,
    availability: Option<String>,
    label_add: &[String],
    label_rm: &[String],
) -> Result<i32, CliError> {
    let mut add = std::collections::HashMap::new();
    for l in label_add {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        add.insert(k.to_string(), v.to_string());
    }
    client
        .update_node(berth_proto::cluster::UpdateNodeRequest {
            node: node.to_string(),
            availability: availability.unwrap_or_default(),
            label_add: add,
            label_rm: label_rm.to_vec(),
        })
        .await
        .map_err(CliError::api)?;
    println!("{node}");
    Ok(0)
}

/// `berth node rm [-f] NODE...`.
pub async fn rm(
    client: &mut ClusterClient<Channel>,
    names: &[String],
    force: bool,
) -> Result<i32, CliError> {
    for n in names {
        client
            .remove_node(berth_proto::cluster::RemoveNodeRequest {
                node: n.clone(),
                force,
            })
            .await
            .map_err(CliError::api)?;
        println!("{n}");
    }
    Ok(0)
}

/// `berth cluster status`.
pub async fn cluster_status(client: &mut ClusterClient<Channel>) -> Result<i32, CliError> {
    let s = client
        .get_cluster_status(berth_proto::cluster::ClusterStatusRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner();
    let leader = s
        .leader_id
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "leader: {leader}   term: {}   last log index: {}   committed: {}   applied: {}   snapshot: {}   purged: {}",
        s.term, s.last_log_index, s.committed, s.applied, s.snapshot_index, s.purged_index
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                if m.leader {
                    "leader".into()
                } else if m.voter {
                    "voter".into()
                } else {
                    "learner".into()
                },
                m.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["ID", "ADDRESS", "ROLE", "LAG"], &rows);
    Ok(0)
}

/// `berth cluster leave`.
pub async fn cluster_leave(client: &mut ClusterClient<Channel>, id: u64) -> Result<i32, CliError> {
    client
        .leave_cluster(berth_proto::cluster::LeaveRequest { id })
        .await
        .map_err(CliError::api)?;
    cluster_status(client).await
}

/// `berth cluster ca [--rotate]`.
pub async fn cluster_ca(
    client: &mut ClusterClient<Channel>,
    rotate: bool,
) -> Result<i32, CliError> {
    let req = berth_proto::cluster::CaStatusRequest {};
    let st = if rotate {
        client.rotate_ca(req).await
    } else {
        client.get_ca_status(req).await
    }
    .map_err(CliError::api)?
    .into_inner();
    println!("CA:       sha256:{}", st.ca_digest);
    if st.rotating {
        println!(
            "rotating: {}/{} servers and {}/{} nodes hold a certificate of this CA",
            st.servers_done, st.servers, st.nodes_done, st.nodes
        );
        if !st.waiting.is_empty() {
            println!("waiting:  {}", st.waiting.join(", "));
        }
    } else {
        println!(
            "servers:  {}/{} on this CA; nodes: {}/{}",
            st.servers_done, st.servers, st.nodes_done, st.nodes
        );
    }
    Ok(0)
}

/// `berth cluster join-token agent|server [-q] [--rotate]`.
pub async fn join_token(
    client: &mut ClusterClient<Channel>,
    role: &str,
    quiet: bool,
    rotate: bool,
    target: &crate::connect::Target,
) -> Result<i32, CliError> {
    let token = client
        .join_token(berth_proto::cluster::JoinTokenRequest {
            role: role.to_string(),
            rotate,
        })
        .await
        .map_err(CliError::api)?
        .into_inner()
        .token;
    if quiet {
        println!("{token}");
        return Ok(0);
    }
    let servers = target.addrs.join(",");
    if rotate {
        println!("The {role} join token was rotated: the old one is refused from now on.\n");
    }
    match role {
        "server" => println!(
            "To add a server to this cluster, run on its host:\n\n    berth-server --join {} --token {token} --listen ADDR:PORT\n",
            target.addrs.first().cloned().unwrap_or_default()
        ),
        _ => println!(
            "To add a node to this cluster, run on its host:\n\n    berth-agent --server {servers} --token {token}\n"
        ),
    }
    Ok(0)
}

/// `berth cluster backup -o FILE`.
pub async fn cluster_backup(
    client: &mut ClusterClient<Channel>,
    output: &str,
) -> Result<i32, CliError> {
    let mut stream = client
        .backup(berth_proto::cluster::BackupRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(CliError::api)? {
        data.extend_from_slice(&chunk.data);
    }
    // Written whole, then renamed: a backup file is never half a backup.
    // Readable by its owner only: it holds the cluster's CA key.
    berth_proto::credential::write_private(std::path::Path::new(output), &data, 0o600)
        .map_err(|e| CliError::Usage(format!("{output}: {e}")))?;
    println!("{} bytes written to {output}", data.len());
    Ok(0)
}

/// `berth node label NODE KEY=VALUE... KEY-...`.
pub async fn label(
    client: &mut ClusterClient<Channel>,
    node: &str,
    labels: &[String],
) -> Result<i32, CliError> {
    let mut set = std::collections::HashMap::new();
    let mut remove = Vec::new();
    for l in labels {
        if let Some((k, v)) = l.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = l.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            return Err(CliError::Usage(format!(
                "bad label {l:?}: use KEY=VALUE to set, KEY- to remove"
            )));
        }
    }
    client
        .label_node(berth_proto::cluster::LabelNodeRequest {
            node: node.to_string(),
            set,
            remove,
        })
        .await
        .map_err(CliError::api)?;
    ls(client, None).await
}

/// `berth version`: the client's and the server's versions, as Docker's
/// `version` prints them (Client and Server sections, or a template).
pub async fn version(
    client: &mut ClusterClient<Channel>,
    format: Option<&str>,
) -> Result<i32, CliError> {
    let status = client
        .get_cluster_status(berth_proto::cluster::ClusterStatusRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner();
    let v = serde_json::json!({
        "Client": {
            "Version": env!("CARGO_PKG_VERSION"),
            "Os": std::env::consts::OS,
            "Arch": std::env::consts::ARCH,
        },
        "Server": {
            "Version": status.version,
            "Leader": status.leader_addr,
            "Members": status.members.len(),
        },
    });
    if let Some(f) = format {
        println!(
            "{}",
            crate::format::render(&crate::format::unescape(f), &v)?
        );
        return Ok(0);
    }
    println!("Client:");
    println!(
        " Version:           {}",
        v["Client"]["Version"].as_str().unwrap_or("")
    );
    println!(
        " OS/Arch:           {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!();
    println!("Server: berth");
    println!(" Version:           {}", status.version);
    println!(" Leader:            {}", status.leader_addr);
    println!(" Members:           {}", status.members.len());
    Ok(0)
}
