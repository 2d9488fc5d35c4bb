//! Service verbs: `berth service create|ls|ps|inspect|scale|update|rollback|rm`.

use std::time::Duration;

use berth_proto::cluster::{
    cluster_client::ClusterClient, ContainerSpec, CreateServiceRequest, ListServicesRequest,
    ServiceInfo, ServiceRef, ServiceSpec, UpdateServiceRequest,
};
use clap::{Args, Subcommand};
use tonic::transport::Channel;

use crate::containers::{parse_bytes, parse_cpus, status_text, PlacementArgs};
use crate::output::{now_ms, table};
use crate::CliError;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service: REPLICAS tasks of IMAGE that the cluster keeps running.
    Create(Box<CreateArgs>),
    /// List services.
    Ls {
        /// Print through a Go template (fields: ID, Name, Mode, Replicas,
        /// Image, Ports).
        #[arg(long)]
        format: Option<String>,
    },
    /// List the tasks of a service, with their nodes.
    Ps { service: String },
    /// Show a service as JSON.
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Set the number of replicas: SERVICE=REPLICAS...
    Scale {
        #[arg(required = true)]
        scales: Vec<String>,
        /// Return at once instead of waiting for the tasks to run.
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Change a service; a new image, environment or command replaces its
    /// tasks in rolling batches.
    Update(UpdateArgs),
    /// Go back to the service's spec before its last update.
    Rollback {
        service: String,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Print the output of every task of a service, each line after its
    /// task's NAME.N@NODE.
    Logs(ServiceLogsArgs),
    /// Remove services and their tasks.
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// `berth service logs`.
#[derive(Debug, Args)]
pub struct ServiceLogsArgs {
    #[command(flatten)]
    pub flags: crate::containers::LogFlags,
    pub service: String,
}

/// `berth service create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The service's name; its tasks are NAME.1, NAME.2, ...
    #[arg(long)]
    pub name: String,
    /// How many tasks run.
    #[arg(long, default_value_t = 1)]
    pub replicas: u64,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// The working directory inside the tasks.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Run as USER[:GROUP].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// none or host.
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Memory limit of each task (512m, 1g).
    #[arg(long = "limit-memory", alias = "memory", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// CPU limit of each task (0.5).
    #[arg(long = "limit-cpu", alias = "cpus", value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// The most processes each task may have.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    #[command(flatten)]
    pub security: crate::containers::SecurityArgs,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// When an ended task starts again: any (the default), on-failure, none.
    #[arg(long, default_value = "any", value_parser = ["any", "on-failure", "none"])]
    pub restart_condition: String,
    /// Tasks replaced at once by an update.
    #[arg(long, default_value_t = 1)]
    pub update_parallelism: u32,
    /// The wait between update batches (10s, 500ms).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub update_delay: u64,
    /// stop-first: a task's old container stops before its new one starts.
    #[arg(long, default_value = "stop-first")]
    pub update_order: String,
    /// What a failed update does: pause (the default) or rollback.
    #[arg(long, default_value = "pause", value_parser = ["pause", "rollback"])]
    pub update_failure_action: String,
    /// Return at once instead of waiting for the tasks to run.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The image of the tasks, NAME[:TAG].
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `berth service update`.
#[derive(Debug, Args, Default)]
pub struct UpdateArgs {
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Add or replace an environment variable (KEY=VALUE).
    #[arg(long)]
    pub env_add: Vec<String>,
    /// Remove an environment variable (KEY).
    #[arg(long)]
    pub env_rm: Vec<String>,
    /// Replace the command (split on spaces).
    #[arg(long)]
    pub args: Option<String>,
    #[arg(long)]
    pub constraint_add: Vec<String>,
    #[arg(long)]
    pub constraint_rm: Vec<String>,
    #[arg(long)]
    pub update_parallelism: Option<u32>,
    #[arg(long, value_parser = parse_duration)]
    pub update_delay: Option<u64>,
    #[arg(long)]
    pub update_order: Option<String>,
    #[arg(long, value_parser = ["pause", "rollback"])]
    pub update_failure_action: Option<String>,
    /// Go back to the spec before the last update.
    #[arg(long)]
    pub rollback: bool,
    #[arg(short = 'd', long)]
    pub detach: bool,
    pub service: String,
}

/// Parses 10s, 500ms, 2m, or a number of seconds, into ms.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}: use 500ms, 10s, 2m or 1h");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return Err(bad()),
    };
    if !ms.is_finite() || ms < 0.0 {
        return Err(bad());
    }
    Ok(ms as u64)
}

pub async fn dispatch(
    client: &mut ClusterClient<Channel>,
    cmd: ServiceCommand,
) -> Result<i32, CliError> {
    match cmd {
        ServiceCommand::Create(a) => create(client, *a).await,
        ServiceCommand::Ls { format } => ls(client, format.as_deref()).await,
        ServiceCommand::Ps { service } => ps(client, &service).await,
        ServiceCommand::Inspect { services } => inspect(client, services).await,
        ServiceCommand::Scale { scales, detach } => scale(client, scales, detach).await,
        ServiceCommand::Update(a) => update(client, a).await,
        ServiceCommand::Rollback { service, detach } => {
            let a = UpdateArgs {
                rollback: true,
                detach,
                service,
                ..Default::default()
            };
            update(client, a).await
        }
        ServiceCommand::Logs(a) => logs(client, a).await,
        ServiceCommand::Rm { services } => rm(client, services).await,
    }
}

async fn create(client: &mut ClusterClient<Channel>, a: CreateArgs) -> Result<i32, CliError> {
    let mut task = ContainerSpec {
        image: a.image.clone(),
        cmd: a.command.clone(),
        env: a.env.clone(),
        workdir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        network: a.network.clone(),
        memory_bytes: a.memory.unwrap_or(0),
        nano_cpus: a.cpus.unwrap_or(0),
        pids_limit: a.pids_limit.unwrap_or(0),
        constraints: a.placement.constraints.clone(),
        reserve_memory_bytes: a.placement.reserve_memory.unwrap_or(0),
        reserve_nano_cpus: a.placement.reserve_cpus.unwrap_or(0),
        placement_strategy: a.placement.placement_strategy.clone().unwrap_or_default(),
        ..Default::default()
    };
    a.security.apply(&mut task);
    let info = client
        .create_service(CreateServiceRequest {
            spec: Some(ServiceSpec {
                name: a.name.clone(),
                task: Some(task),
                replicas: a.replicas,
                restart_condition: a.restart_condition.clone(),
                update_parallelism: a.update_parallelism,
                update_delay_ms: a.update_delay,
                update_order: a.update_order.clone(),
                update_failure_action: a.update_failure_action.clone(),
            }),
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    println!("{}", short(&info.id));
    if !a.detach {
        converge(client, &a.name).await?;
    }
    Ok(0)
}

/// Waits until the service's tasks all run its current version, printing
/// progress as `docker service create` does, and why tasks wait.
async fn converge(client: &mut ClusterClient<Channel>, name: &str) -> Result<(), CliError> {
    let mut last = String::new();
    loop {
        let info = get(client, name).await?;
        let want = info.spec.as_ref().map(|s| s.replicas).unwrap_or(0);
        let tasks = client
            .service_tasks(ServiceRef { name: name.into() })
            .await
            .map_err(CliError::api)?
            .into_inner()
            .tasks;
        let current: Vec<_> = tasks
            .iter()
            .filter(|t| {
                t.service_version == info.version
                    && t.desired != "removed"
                    && u64::from(t.slot) <= want
            })
            .collect();
        let running = current.iter().filter(|t| t.state == "running").count() as u64;
        let reasons: Vec<String> = current
            .iter()
            .filter(|t| !t.pending_reason.is_empty())
            .map(|t| format!("{}: {}", t.name, t.pending_reason))
            .collect();
        let mut line = format!("overall progress: {running} out of {want} tasks");
        if let Some(r) = reasons.first() {
            line.push_str(&format!(" (waiting: {r})"));
        }
        if info.update_state == "paused" {
            eprintln!("{line}");
            return Err(CliError::Api(info.update_message));
        }
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        let extra = tasks
            .iter()
            .any(|t| t.service_version != info.version && t.state == "running");
        let updating = matches!(info.update_state.as_str(), "updating" | "rolling_back");
        if running == want && !extra && tasks.len() as u64 == want && !updating {
            eprintln!("verify: Service {name} converged");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(client: &mut ClusterClient<Channel>, name: &str) -> Result<ServiceInfo, CliError> {
    Ok(client
        .inspect_service(ServiceRef { name: name.into() })
        .await
        .map_err(CliError::api)?
        .into_inner())
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

async fn ls(client: &mut ClusterClient<Channel>, format: Option<&str>) -> Result<i32, CliError> {
    let services = client
        .list_services(ListServicesRequest {})
        .await
        .map_err(CliError::api)?
        .into_inner()
        .services;
    let format = crate::format::Format::parse(format);
    if format != crate::format::Format::Default {
        let values: Vec<serde_json::Value> = services
            .iter()
            .map(|s| {
                let spec = s.spec.clone().unwrap_or_default();
                serde_json::json!({
                    "ID": short(&s.id), "Name": spec.name, "Mode": "replicated",
                    "Replicas": format!("{}/{}", s.running, spec.replicas),
                    "Image": spec.task.map(|t| t.image).unwrap_or_default(), "Ports": "",
                })
            })
            .collect();
        crate::format::print(
            &format,
            &values,
            &[
                ("ID", "ID"),
                ("Name", "NAME"),
                ("Mode", "MODE"),
                ("Replicas", "REPLICAS"),
                ("Image", "IMAGE"),
                ("Ports", "PORTS"),
            ],
        )?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            vec![
                short(&s.id),
                spec.name.clone(),
                "replicated".into(),
                format!("{}/{}", s.running, spec.replicas),
                spec.task.map(|t| t.image).unwrap_or_default(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE"], &rows);
    Ok(0)
}

async fn logs(client: &mut ClusterClient<Channel>, args: ServiceLogsArgs) -> Result<i32, CliError> {
    let opts = crate::containers::log_options(&args.flags)?;
    let tasks = client
        .service_tasks(ServiceRef {
            name: args.service.clone(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner()
        .tasks;
    let tasks = tasks
        .into_iter()
        .map(|t| {
            let node = if t.node.is_empty() {
                "-".to_string()
            } else {
                t.node.clone()
            };
            (t.id, format!("{}@{node}", t.name))
        })
        .collect();
    crate::logs::print_service(client, tasks, &opts).await?;
    Ok(0)
}

async fn ps(client: &mut ClusterClient<Channel>, name: &str) -> Result<i32, CliError> {
    let tasks = client
        .service_tasks(ServiceRef { name: name.into() })
        .await
        .map_err(CliError::api)?
        .into_inner()
        .tasks;
    let now = now_ms();
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                short(&t.id),
                t.name.clone(),
                t.spec.clone().map(|s| s.image).unwrap_or_default(),
                t.node.clone(),
                capitalized(&t.desired),
                status_text(t, now),
                t.error.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
        ],
        &rows,
    );
    Ok(0)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

async fn inspect(client: &mut ClusterClient<Channel>, names: Vec<String>) -> Result<i32, CliError> {
    let mut all = Vec::new();
    for n in &names {
        let s = get(client, n).await?;
        let spec = s.spec.clone().unwrap_or_default();
        let task = spec.task.clone().unwrap_or_default();
        let task_json = |t: &ContainerSpec| {
            serde_json::json!({
                "Image": t.image,
                "Command": t.cmd,
                "Env": t.env,
                "Constraints": t.constraints,
                "ReserveMemory": t.reserve_memory_bytes,
                "ReserveNanoCpus": t.reserve_nano_cpus,
                "LimitMemory": t.memory_bytes,
                "LimitNanoCpus": t.nano_cpus,
                "PlacementStrategy": t.placement_strategy,
            })
        };
        all.push(serde_json::json!({
            "ID": s.id,
            "Version": s.version,
            "CreatedAtMs": s.created_at_ms,
            "UpdatedAtMs": s.updated_at_ms,
            "Spec": {
                "Name": spec.name,
                "Replicas": spec.replicas,
                "TaskTemplate": task_json(&task),
                "RestartCondition": if spec.restart_condition.is_empty() { "any".to_string() } else { spec.restart_condition.clone() },
                "UpdateConfig": {
                    "Parallelism": spec.update_parallelism.max(1),
                    "DelayMs": spec.update_delay_ms,
                    "Order": if spec.update_order.is_empty() { "stop-first".to_string() } else { spec.update_order.clone() },
                    "FailureAction": if spec.update_failure_action.is_empty() { "pause".to_string() } else { spec.update_failure_action.clone() },
                },
            },
            "PreviousSpec": s.previous_task.as_ref().map(task_json),
            "UpdateStatus": {
                "State": s.update_state,
                "Message": s.update_message,
            },
            "RunningTasks": s.running,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    Ok(0)
}

async fn scale(
    client: &mut ClusterClient<Channel>,
    scales: Vec<String>,
    detach: bool,
) -> Result<i32, CliError> {
    let mut parsed = Vec::new();
    for s in &scales {
        let (name, n) = s
            .split_once('=')
            .and_then(|(n, r)| r.parse::<u64>().ok().map(|r| (n.to_string(), r)))
            .ok_or_else(|| CliError::Usage(format!("invalid scale {s:?}: use SERVICE=REPLICAS")))?;
        parsed.push((name, n));
    }
    for (name, n) in parsed {
        client
            .update_service(UpdateServiceRequest {
                name: name.clone(),
                replicas: Some(n),
                ..Default::default()
            })
            .await
            .map_err(CliError::api)?;
        println!("{name} scaled to {n}");
        if !detach {
            converge(client, &name).await?;
        }
    }
    Ok(0)
}

async fn update(client: &mut ClusterClient<Channel>, a: UpdateArgs) -> Result<i32, CliError> {
    let (cmd, cmd_set) = match &a.args {
        Some(s) => (s.split_whitespace().map(str::to_string).collect(), true),
        None => (Vec::new(), false),
    };
    let info = client
        .update_service(UpdateServiceRequest {
            name: a.service.clone(),
            image: a.image.clone(),
            replicas: a.replicas,
            env_add: a.env_add.clone(),
            env_rm: a.env_rm.clone(),
            cmd,
            cmd_set,
            update_parallelism: a.update_parallelism,
            update_delay_ms: a.update_delay,
            update_order: a.update_order.clone(),
            update_failure_action: a.update_failure_action.clone(),
            constraint_add: a.constraint_add.clone(),
            constraint_rm: a.constraint_rm.clone(),
            rollback: a.rollback,
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    println!("{}", a.service);
    if !a.detach {
        converge(client, &a.service).await?;
        let now = get(client, &a.service).await?;
        if now.update_state == "rolled_back" && info.update_state != "rolling_back" {
            return Err(CliError::Api(format!(
                "the update failed and was rolled back: {}",
                now.update_message
            )));
        }
    }
    Ok(0)
}

async fn rm(client: &mut ClusterClient<Channel>, names: Vec<String>) -> Result<i32, CliError> {
    let mut code = 0;
    for n in &names {
        match client.remove_service(ServiceRef { name: n.clone() }).await {
            Ok(_) => println!("{n}"),
            Err(s) => {
                eprintln!("berth: error: {}", s.message());
                code = 1;
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_docker_writes_them() {
        assert_eq!(parse_duration("10s"), Ok(10_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2m"), Ok(120_000));
        assert_eq!(parse_duration("3"), Ok(3000));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
