//! Container verbs: run, ps, logs, rm.

use std::time::Duration;

use berth_proto::cluster::{
    cluster_client::ClusterClient, ContainerInfo, ContainerRef, ContainerSpec,
    CreateContainerRequest, ListContainersRequest, RemoveContainerRequest,
};
use clap::Args;
use tonic::transport::Channel;

use crate::output::{ago, human_duration, now_ms, table, truncate};
use crate::CliError;

/// `berth run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and send yours to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a terminal (with -i: a shell you can use;
    /// Ctrl+P Ctrl+Q detaches and leaves it running).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// A name for the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// The working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// The container's host name (default: the short id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// none (own network namespace with loopback only) or host.
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Memory limit (bytes, or with a k, m or g suffix); over it, the
    /// kernel's OOM killer ends the container.
    #[arg(short = 'm', long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// How many CPUs the container may use (for example 0.5).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// The most processes and threads the container may have.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Run as USER[:GROUP] (names from the image's /etc/passwd, or numbers).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Replace the image's entrypoint ("" clears it); the image's command is dropped too.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Mount HOST_PATH:DEST[:ro] or a named volume NAME:DEST[:ro].
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// A resource limit of the process, NAME=SOFT[:HARD] (for example
    /// nofile=1024:2048, nproc=64, core=0); may be repeated.
    #[arg(long = "ulimit", value_parser = parse_ulimit)]
    pub ulimits: Vec<String>,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// A label of the container, KEY=VALUE (or KEY for an empty value);
    /// may be repeated. `ps --filter label=KEY[=VALUE]` selects by them.
    #[arg(short = 'l', long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// The keys that detach from the container's terminal, Docker's form
    /// (default ctrl-p,ctrl-q).
    #[arg(long, value_parser = crate::attach::DetachKeys::parse)]
    pub detach_keys: Option<crate::attach::DetachKeys>,
    /// Send the SIGINT and SIGTERM this client gets to the container
    /// (without a terminal; --sig-proxy=false lets them end the client).
    #[arg(long, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub sig_proxy: bool,
    /// Let the cluster run the container on another node when its node is
    /// lost. Its node's agent then stops it when cut off from the cluster
    /// (see docs/operations.md, "Movable containers").
    #[arg(long)]
    pub reschedule: bool,
    /// The image to run, NAME[:TAG].
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// What a container may do (run, create, service create).
#[derive(Debug, Args, Clone, Default)]
pub struct SecurityArgs {
    /// Give the container every capability and every device, without a
    /// seccomp filter or masked paths (Docker's --privileged).
    #[arg(long)]
    pub privileged: bool,
    /// Add a capability (NET_ADMIN, CAP_SYS_TIME, or ALL); may be repeated.
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop a capability (or ALL); may be repeated.
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Give the container a host device, HOST[:CONTAINER][:PERMISSIONS]
    /// with permissions of r, w and m (default rwm); may be repeated.
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// seccomp=unconfined (no filter), seccomp=PROFILE.json (a profile in
    /// Docker's format), or no-new-privileges; may be repeated.
    #[arg(long = "security-opt", value_parser = parse_security_opt)]
    pub security_opt: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Mount a tmpfs at PATH, PATH[:OPTIONS] (for example
    /// /run:size=64m,mode=1777; default noexec,nosuid,nodev); may be repeated.
    #[arg(long = "tmpfs", value_parser = parse_tmpfs)]
    pub tmpfs: Vec<String>,
}

impl SecurityArgs {
    /// Puts the flags into a spec.
    pub fn apply(&self, spec: &mut ContainerSpec) {
        spec.privileged = self.privileged;
        spec.cap_add = self.cap_add.clone();
        spec.cap_drop = self.cap_drop.clone();
        spec.devices = self.devices.clone();
        spec.security_opt = self.security_opt.clone();
        spec.read_only = self.read_only;
        spec.tmpfs = self.tmpfs.clone();
    }
}

/// Where the scheduler may place a container (run, create, service create).
#[derive(Debug, Args, Clone, Default)]
pub struct PlacementArgs {
    /// Only on nodes where this holds: node.labels.KEY==VALUE,
    /// node.labels.KEY!=VALUE, node.hostname==NAME, node.hostname!=NAME;
    /// may be repeated (all must hold).
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Memory to reserve on the node (default: --memory).
    #[arg(long, value_parser = parse_bytes)]
    pub reserve_memory: Option<u64>,
    /// CPUs to reserve on the node (default: --cpus).
    #[arg(long, value_parser = parse_cpus)]
    pub reserve_cpus: Option<u64>,
    /// spread (the default: the node with the fewest containers) or
    /// binpack (the fullest node that fits).
    #[arg(long, value_parser = ["spread", "binpack"])]
    pub placement_strategy: Option<String>,
}

/// The container spec `run` and `create` send.
fn spec_from(args: &RunArgs) -> ContainerSpec {
    let mut spec = ContainerSpec {
        image: args.image.clone(),
        cmd: args.command.clone(),
        env: args.env.clone(),
        hostname: args.hostname.clone().unwrap_or_default(),
        workdir: args.workdir.clone().unwrap_or_default(),
        network: args.network.clone(),
        auto_remove: args.rm,
        memory_bytes: args.memory.unwrap_or(0),
        nano_cpus: args.cpus.unwrap_or(0),
        pids_limit: args.pids_limit.unwrap_or(0),
        user: args.user.clone().unwrap_or_default(),
        entrypoint: args.entrypoint.clone().into_iter().collect(),
        entrypoint_set: args.entrypoint.is_some(),
        volumes: args.volumes.clone(),
        restart: args.restart.clone(),
        tty: args.tty,
        stdin_open: args.interactive,
        ulimits: args.ulimits.clone(),
        constraints: args.placement.constraints.clone(),
        reserve_memory_bytes: args.placement.reserve_memory.unwrap_or(0),
        reserve_nano_cpus: args.placement.reserve_cpus.unwrap_or(0),
        reschedule: args.reschedule,
        placement_strategy: args
            .placement
            .placement_strategy
            .clone()
            .unwrap_or_default(),
        labels: args.labels.iter().cloned().collect(),
        ..Default::default()
    };
    args.security.apply(&mut spec);
    spec
}

/// A `--label`: KEY=VALUE, or KEY alone for an empty value, as Docker's.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        return Err(format!("invalid label {s:?}: use KEY=VALUE"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Reads a --security-opt: a seccomp profile named by its file is sent as
/// its text, as Docker's CLI sends it; the server checks the rest.
fn parse_security_opt(s: &str) -> Result<String, String> {
    match s.split_once(['=', ':']) {
        Some(("seccomp", path)) if path != "unconfined" && !path.trim_start().starts_with('{') => {
            let json = std::fs::read_to_string(path)
                .map_err(|e| format!("opening seccomp profile ({path}) failed: {e}"))?;
            let opt = format!("seccomp={json}");
            berth_proto::security::SecurityOpt::parse(&opt).map_err(|e| format!("{path}: {e}"))?;
            Ok(opt)
        }
        _ => {
            berth_proto::security::SecurityOpt::parse(s)?;
            Ok(s.to_string())
        }
    }
}

/// Checks a --tmpfs value as the agent will read it.
fn parse_tmpfs(s: &str) -> Result<String, String> {
    berth_proto::security::Tmpfs::parse(s)?;
    Ok(s.to_string())
}

/// Checks a --ulimit value as the agent will read it.
fn parse_ulimit(s: &str) -> Result<String, String> {
    berth_proto::ulimit::parse(s).map(|_| s.to_string())
}

/// Creates and starts a container; attached, prints its output and returns
/// its exit code.
pub async fn run(client: &mut ClusterClient<Channel>, args: RunArgs) -> Result<i32, CliError> {
    if (args.interactive || args.tty) && !args.detach {
        return run_attached(client, args).await;
    }
    let created = client
        .create_container(CreateContainerRequest {
            name: args.name.clone().unwrap_or_default(),
            spec: Some(spec_from(&args)),
            start: true,
            attached: !args.detach,
        })
        .await
        .map_err(CliError::run)?
        .into_inner();
    if !created.pending_reason.is_empty() {
        eprintln!(
            "berth: container {} is pending: {} (it starts once a node fits)",
            created.name, created.pending_reason
        );
    }
    if args.detach {
        println!("{}", created.id);
        return Ok(0);
    }
    let opts = crate::logs::LogOptions {
        follow: true,
        ..Default::default()
    };
    let proxy = args.sig_proxy.then_some(created.id.as_str());
    let waited = follow_and_wait_with(client, &created.id, &opts, proxy).await?;
    if args.rm {
        // The cluster removes it too (--rm is carried out by the cluster,
        // whatever happens to this client): either may come first.
        match client
            .remove_container(RemoveContainerRequest {
                name_or_id: created.id.clone(),
                force: true,
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(CliError::api(s)),
        }
    }
    if !waited.error.is_empty() {
        return Err(CliError::Exit {
            code: waited.exit_code,
            message: waited.error,
        });
    }
    Ok(waited.exit_code)
}

/// Prints a container's output until it ends (resuming across a broken
/// stream), then waits for its exit.
pub async fn follow_and_wait(
    client: &mut ClusterClient<Channel>,
    id: &str,
) -> Result<berth_proto::cluster::WaitResponse, CliError> {
    let opts = crate::logs::LogOptions {
        follow: true,
        ..Default::default()
    };
    // Docker's sig-proxy: SIGINT and SIGTERM the attached client gets go
    // to the container (which is not on a terminal of this client's).
    follow_and_wait_with(client, id, &opts, Some(id)).await
}

/// Prints the output `opts` asks for until the container ends, then waits
/// for its exit; with `proxy`, SIGINT and SIGTERM meanwhile are sent to
/// that container rather than ending this client.
pub async fn follow_and_wait_with(
    client: &mut ClusterClient<Channel>,
    id: &str,
    opts: &crate::logs::LogOptions,
    proxy: Option<&str>,
) -> Result<berth_proto::cluster::WaitResponse, CliError> {
    let forwarder = proxy.map(|target| {
        let target = target.to_string();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "INT",
                    _ = term.recv() => "TERM",
                };
                if let Ok(mut c) = crate::connect::reconnect().await {
                    let _ = c
                        .kill_container(berth_proto::cluster::KillContainerRequest {
                            name_or_id: target.clone(),
                            signal: name.into(),
                        })
                        .await;
                }
            }
        })
    });
    let printed = crate::logs::print(client, id, opts).await;
    if let Some(f) = forwarder {
        f.abort();
    }
    printed?;
    let began = std::time::Instant::now();
    loop {
        match client
            .wait_container(ContainerRef {
                name_or_id: id.to_string(),
            })
            .await
        {
            Ok(w) => return Ok(w.into_inner()),
            Err(s) if crate::logs::resumable(&s) && began.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(c) = crate::connect::reconnect().await {
                    *client = c;
                }
            }
            Err(s) => return Err(CliError::api(s)),
        }
    }
}

/// `berth ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default: only running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Print only the container ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Do not cut ids and commands short.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show the size of each container's writable layer.
    #[arg(short = 's', long)]
    pub size: bool,
    /// Only containers matching KEY=VALUE: name, id, status, ancestor,
    /// node, exited, label (label=KEY or label=KEY=VALUE); several of one
    /// key: any; of different keys: all.
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Show the N containers created last, in any state.
    #[arg(short = 'n', long = "last", value_name = "N")]
    pub last: Option<usize>,
    /// Show the container created last, in any state.
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Print through a Go template: '{{.Names}}', '{{json .}}', or
    /// 'table {{.ID}}\t{{.Names}}\t{{.Node}}' (fields: ID, Image, Command,
    /// CreatedAt, RunningFor, Ports, State, Status, Size, Names, Labels,
    /// Mounts, Networks, LocalVolumes, Node).
    #[arg(long)]
    pub format: Option<String>,
}

/// The column names of `ps --format 'table ...'`, as Docker's.
const PS_HEADERS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Ports", "PORTS"),
    ("State", "STATE"),
    ("Status", "STATUS"),
    ("Size", "SIZE"),
    ("Names", "NAMES"),
    ("Labels", "LABELS"),
    ("Mounts", "MOUNTS"),
    ("Networks", "NETWORKS"),
    ("LocalVolumes", "LOCAL VOLUMES"),
    ("Node", "NODE"),
];

/// True if a container passes every filter key (any value of a key).
pub fn matches_filters(c: &ContainerInfo, filters: &[String]) -> Result<bool, CliError> {
    let mut by_key: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("bad filter {f:?}: use KEY=VALUE")))?;
        by_key.entry(k).or_default().push(v);
    }
    for (key, values) in by_key {
        let spec = c.spec.clone().unwrap_or_default();
        let ok = values.iter().any(|v| match key {
            "name" => c.name.contains(v),
            "id" => c.id.starts_with(v),
            "status" => c.state == *v,
            "ancestor" => {
                spec.image == *v || spec.image == format!("{v}:latest") || c.image_id.contains(v)
            }
            "node" => c.node == *v,
            "exited" => c.state == "exited" && v.parse::<i32>().ok() == Some(c.exit_code),
            // label=KEY or label=KEY=VALUE.
            "label" => match v.split_once('=') {
                Some((k, want)) => spec.labels.get(k).is_some_and(|have| have == want),
                None => spec.labels.contains_key(*v),
            },
            _ => false,
        });
        if ![
            "name", "id", "status", "ancestor", "node", "exited", "label",
        ]
        .contains(&key)
        {
            return Err(CliError::Usage(format!(
                "unknown filter {key:?}: use name, id, status, ancestor, node, exited or label"
            )));
        }
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The STATUS column of `ps`.
pub fn status_text(c: &ContainerInfo, now: i64) -> String {
    match c.state.as_str() {
        "running" => format!("Up {}", human_duration(now - c.started_at_ms)),
        "paused" => format!("Up {} (Paused)", human_duration(now - c.started_at_ms)),
        "exited" => format!("Exited ({}) {}", c.exit_code, ago(now, c.finished_at_ms)),
        "created" => "Created".into(),
        "pending" if !c.pending_reason.is_empty() => format!("Pending: {}", c.pending_reason),
        "pending" => "Pending".into(),
        "dead" => "Dead".into(),
        other => other.to_string(),
    }
}

pub async fn ps(client: &mut ClusterClient<Channel>, args: PsArgs) -> Result<i32, CliError> {
    let format = crate::format::Format::parse(args.format.as_deref());
    let last = if args.latest { Some(1) } else { args.last };
    let list = client
        .list_containers(ListContainersRequest {
            all: args.all || last.is_some(),
            size: args.size,
        })
        .await
        .map_err(CliError::api)?
        .into_inner()
        .containers;
    let mut list = list;
    let mut kept = Vec::with_capacity(list.len());
    for c in list.drain(..) {
        if matches_filters(&c, &args.filter)? {
            kept.push(c);
        }
    }
    let mut list = kept;
    if let Some(n) = last {
        // Newest last in the listing: keep the last N.
        let drop = list.len().saturating_sub(n);
        list.drain(..drop);
    }
    if args.quiet {
        for c in list.iter().rev() {
            println!(
                "{}",
                if args.no_trunc {
                    &c.id[..]
                } else {
                    &c.id[..12.min(c.id.len())]
                }
            );
        }
        return Ok(0);
    }
    let now = now_ms();
    let values: Vec<serde_json::Value> = list
        .iter()
        .rev()
        .map(|c| ps_value(c, now, args.no_trunc))
        .collect();
    if crate::format::print(&format, &values, PS_HEADERS)? {
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = values
        .iter()
        .map(|v| {
            let mut row: Vec<String> = [
                "ID",
                "Image",
                "Command",
                "RunningFor",
                "Status",
                "Ports",
                "Names",
            ]
            .iter()
            .map(|k| v[*k].as_str().unwrap_or_default().to_string())
            .collect();
            if args.size {
                row.push(v["Size"].as_str().unwrap_or("-").to_string());
            }
            row
        })
        .collect();
    // Docker's columns, NAMES last (but for SIZE); the node is in
    // `--format '{{.Node}}'` and `inspect`.
    let mut header = vec![
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ];
    if args.size {
        header.push("SIZE");
    }
    table(&header, &rows);
    Ok(0)
}

/// A command line as Docker's list shows it: an argument with a space or
/// a quote in it is single-quoted.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A container as `ps --format` sees it: Docker's fields, as strings.
fn ps_value(c: &ContainerInfo, now: i64, no_trunc: bool) -> serde_json::Value {
    let spec = c.spec.clone().unwrap_or_default();
    let command = format!("\"{}\"", shell_words(&spec.cmd));
    serde_json::json!({
        "ID": if no_trunc { c.id.clone() } else { c.id.chars().take(12).collect() },
        "Image": spec.image,
        "Command": if no_trunc { command } else { truncate(&command, 20) },
        "CreatedAt": crate::output::go_time(c.created_at_ms),
        "RunningFor": ago(now, c.created_at_ms),
        "Ports": "",
        "State": c.state,
        "Status": status_text(c, now),
        "Size": c.size_rw.map(crate::output::human_size).unwrap_or_else(|| "0B".into()),
        "Names": c.name,
        // Docker's form: k=v pairs, comma-separated, sorted by key.
        "Labels": spec.labels.iter().collect::<std::collections::BTreeMap<_, _>>().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        "Mounts": spec.volumes.iter().filter_map(|v| v.split(':').next()).collect::<Vec<_>>().join(","),
        "Networks": spec.network,
        "LocalVolumes": spec.volumes.iter().filter(|v| !v.starts_with('/')).count().to_string(),
        // Docker's CLI (from 25) has the platform when the daemon gives
        // it; an engine of one architecture per node gives none.
        "Platform": serde_json::Value::Null,
        "Node": c.node,
    })
}

/// `berth logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub flags: LogFlags,
    /// The container's name or id.
    pub container: String,
}

/// The flags of `logs` and `service logs`.
#[derive(Debug, Args)]
pub struct LogFlags {
    /// Keep printing new lines until the container (every task) has exited.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print each line's time (RFC 3339, nanoseconds) before it.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Only the last N lines (of each task; "all" for every line).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Only lines written since this time: RFC 3339 (2026-01-02T15:04:05Z),
    /// Unix seconds, or a duration before now (1h30m, 42m, 10s).
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines written until this time (the same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
}

pub async fn logs(client: &mut ClusterClient<Channel>, args: LogsArgs) -> Result<i32, CliError> {
    let opts = log_options(&args.flags)?;
    crate::logs::print(client, &args.container, &opts).await?;
    Ok(0)
}

/// The options of `logs` and `service logs`, from their flags.
pub fn log_options(f: &LogFlags) -> Result<crate::logs::LogOptions, CliError> {
    let tail = match f.tail.as_str() {
        "all" => None,
        n => Some(
            n.parse::<u64>()
                .map_err(|_| CliError::Usage(format!("invalid --tail {n:?}: a number or all")))?,
        ),
    };
    let now_ns = crate::output::now_ms() * 1_000_000;
    let time = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| crate::logs::parse_time(s, now_ns))
            .transpose()
            .map_err(|e| CliError::Usage(format!("--{flag}: {e}")))
    };
    Ok(crate::logs::LogOptions {
        follow: f.follow,
        timestamps: f.timestamps,
        tail,
        since_ns: time("since", &f.since)?,
        until_ns: time("until", &f.until)?,
    })
}

/// `berth rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill and remove a running container.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Names or ids of containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Removes each container; like Docker, goes on past failures and exits 1
/// if any failed.
pub async fn rm(client: &mut ClusterClient<Channel>, args: RmArgs) -> Result<i32, CliError> {
    let force = args.force;
    Ok(for_each(
        client,
        &args.containers,
        |mut client, name_or_id| async move {
            let r = client
                .remove_container(RemoveContainerRequest { name_or_id, force })
                .await?
                .into_inner();
            if !r.warning.is_empty() {
                eprintln!("berth: warning: {}", r.warning);
            }
            Ok(())
        },
    )
    .await)
}

/// Runs `call` for each named container, as Docker's verbs that take
/// several do: prints the name when the call succeeds and the error when it
/// fails, goes on past failures, and returns 1 if any failed.
async fn for_each<F, Fut>(client: &ClusterClient<Channel>, names: &[String], mut call: F) -> i32
where
    F: FnMut(ClusterClient<Channel>, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = false;
    for name in names {
        match call(client.clone(), name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(status) => {
                eprintln!("berth: error: {}", status.message());
                failed = true;
            }
        }
    }
    i32::from(failed)
}

/// `berth create`: as `run`, without starting the container.
pub async fn create(client: &mut ClusterClient<Channel>, args: RunArgs) -> Result<i32, CliError> {
    let created = client
        .create_container(CreateContainerRequest {
            name: args.name.clone().unwrap_or_default(),
            spec: Some(spec_from(&args)),
            start: false,
            attached: false,
        })
        .await
        .map_err(CliError::run)?
        .into_inner();
    println!("{}", created.id);
    Ok(0)
}

/// `berth start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach to the container's output and exit with its code.
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Attach your stdin too (and your terminal, for a container made with -t).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Names or ids of containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn start(client: &mut ClusterClient<Channel>, args: StartArgs) -> Result<i32, CliError> {
    if args.interactive {
        let [c] = args.containers.as_slice() else {
            return Err(CliError::Usage("start -i takes one container".into()));
        };
        let info = client
            .get_container(ContainerRef {
                name_or_id: c.clone(),
            })
            .await
            .map_err(CliError::api)?
            .into_inner();
        let tty = info.spec.as_ref().is_some_and(|s| s.tty);
        return match crate::attach::attach(
            client,
            &info.id,
            true,
            tty,
            &crate::attach::AttachOptions::default(),
        )
        .await?
        {
            crate::attach::AttachEnd::Detached => Ok(0),
            crate::attach::AttachEnd::Ended(_) => Ok(client
                .wait_container(ContainerRef {
                    name_or_id: info.id,
                })
                .await
                .map_err(CliError::api)?
                .into_inner()
                .exit_code),
        };
    }
    let mut failed = false;
    for c in &args.containers {
        match client
            .start_container(ContainerRef {
                name_or_id: c.clone(),
            })
            .await
        {
            Ok(info) => {
                let info = info.into_inner();
                if args.attach {
                    let w = follow_and_wait(client, &info.id).await?;
                    return Ok(w.exit_code);
                }
                println!("{c}");
            }
            Err(status) => {
                eprintln!("berth: error: {}", status.message());
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// `berth stop` and `berth restart`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for the container to stop before killing it.
    #[arg(short = 't', long = "time")]
    pub time: Option<u32>,
    /// Names or ids of containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn stop(
    client: &mut ClusterClient<Channel>,
    args: StopArgs,
    restart: bool,
) -> Result<i32, CliError> {
    let timeout_s = args.time;
    Ok(for_each(
        client,
        &args.containers,
        |mut client, name_or_id| async move {
            let req = berth_proto::cluster::StopContainerRequest {
                name_or_id,
                timeout_s,
            };
            if restart {
                client.restart_container(req).await?;
            } else {
                client.stop_container(req).await?;
            }
            Ok(())
        },
    )
    .await)
}

/// `berth kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// The signal to send (a name such as USR1 or SIGTERM, or a number).
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub signal: String,
    /// Names or ids of containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn kill(client: &mut ClusterClient<Channel>, args: KillArgs) -> Result<i32, CliError> {
    let signal = args.signal;
    Ok(
        for_each(client, &args.containers, |mut client, name_or_id| {
            let signal = signal.clone();
            async move {
                client
                    .kill_container(berth_proto::cluster::KillContainerRequest {
                        name_or_id,
                        signal,
                    })
                    .await?;
                Ok(())
            }
        })
        .await,
    )
}

/// `berth wait`: prints each container's exit code once it has stopped.
pub async fn wait(
    client: &mut ClusterClient<Channel>,
    containers: Vec<String>,
) -> Result<i32, CliError> {
    for c in &containers {
        let w = client
            .wait_container(ContainerRef {
                name_or_id: c.clone(),
            })
            .await
            .map_err(CliError::api)?
            .into_inner();
        println!("{}", w.exit_code);
    }
    Ok(0)
}

/// `berth inspect`: containers as JSON.
pub async fn inspect(
    client: &mut ClusterClient<Channel>,
    containers: Vec<String>,
    format: Option<&str>,
) -> Result<i32, CliError> {
    let mut all = Vec::new();
    for c in &containers {
        let i = client
            .get_container(ContainerRef {
                name_or_id: c.clone(),
            })
            .await
            .map_err(CliError::api)?
            .into_inner();
        let spec = i.spec.clone().unwrap_or_default();
        all.push(serde_json::json!({
            "Id": i.id,
            "Created": docker_time(i.created_at_ms),
            "Path": spec.cmd.first().cloned().unwrap_or_default(),
            "Args": spec.cmd.iter().skip(1).collect::<Vec<_>>(),
            "Name": format!("/{}", i.name),
            "Image": i.image_id,
            "RestartCount": 0,
            "Node": i.node,
            "Generation": i.generation,
            "State": {
                // Docker's states, and berth's own "pending" while the
                // scheduler has no node for it.
                "Status": i.state,
                "Running": i.state == "running" || i.state == "paused",
                "Paused": i.state == "paused",
                "Restarting": false,
                "OOMKilled": i.oom_killed,
                "Dead": i.state == "dead",
                "Pid": 0,
                "ExitCode": i.exit_code,
                "Error": i.error,
                "StartedAt": docker_time(i.started_at_ms),
                "FinishedAt": docker_time(i.finished_at_ms),
                "StartedAtMs": i.started_at_ms,
                "FinishedAtMs": i.finished_at_ms,
                "PendingReason": i.pending_reason,
                "Desired": i.desired,
            },
            "Mounts": [],
            "LogTail": {
                "FirstSeq": i.log_first_seq,
                "NextSeq": i.log_next_seq,
            },
            "Service": if i.service.is_empty() { serde_json::Value::Null } else { serde_json::json!({
                "Name": i.service,
                "Slot": i.slot,
                "Version": i.service_version,
            }) },
            "Config": {
                "Hostname": if spec.hostname.is_empty() { i.id.chars().take(12).collect() } else { spec.hostname.clone() },
                "User": spec.user,
                "Tty": spec.tty,
                "OpenStdin": spec.stdin_open,
                "Env": spec.env,
                "Cmd": if spec.cmd.is_empty() { serde_json::Value::Null } else { serde_json::json!(spec.cmd) },
                "Image": spec.image,
                "WorkingDir": spec.workdir,
                "Entrypoint": if spec.entrypoint_set { serde_json::json!(spec.entrypoint) } else { serde_json::Value::Null },
                "Labels": spec.labels,
            },
            "HostConfig": {
                "NetworkMode": spec.network,
                "AutoRemove": spec.auto_remove,
                "Memory": spec.memory_bytes,
                "NanoCpus": spec.nano_cpus,
                "PidsLimit": spec.pids_limit,
                "Reschedule": spec.reschedule,
                "Privileged": spec.privileged,
                "CapAdd": if spec.cap_add.is_empty() { serde_json::Value::Null } else { serde_json::json!(spec.cap_add) },
                "CapDrop": if spec.cap_drop.is_empty() { serde_json::Value::Null } else { serde_json::json!(spec.cap_drop) },
                "Devices": spec.devices.iter().filter_map(|d| berth_proto::security::DeviceMapping::parse(d).ok()).map(|d| serde_json::json!({
                    "PathOnHost": d.host,
                    "PathInContainer": d.container,
                    "CgroupPermissions": d.permissions,
                })).collect::<Vec<_>>(),
                "ReadonlyRootfs": spec.read_only,
                "Tmpfs": spec.tmpfs.iter().filter_map(|t| berth_proto::security::Tmpfs::parse(t).ok()).map(|t| (t.path, serde_json::Value::String(t.options.join(",")))).collect::<serde_json::Map<_, _>>(),
                "SecurityOpt": if spec.security_opt.is_empty() { serde_json::Value::Null } else { serde_json::json!(spec.security_opt) },
                "Ulimits": spec.ulimits.iter().filter_map(|u| berth_proto::ulimit::parse(u).ok()).map(|u| serde_json::json!({
                    "Name": u.name,
                    "Soft": u.soft as i64,
                    "Hard": u.hard as i64,
                })).collect::<Vec<_>>(),
            },
            "Placement": {
                "Constraints": spec.constraints,
                "ReserveMemory": spec.reserve_memory_bytes,
                "ReserveNanoCpus": spec.reserve_nano_cpus,
                "Strategy": if spec.placement_strategy.is_empty() { "spread".to_string() } else { spec.placement_strategy.clone() },
            },
            "History": i.history,
        }));
    }
    if let Some(f) = format {
        for v in &all {
            println!("{}", crate::format::render(&crate::format::unescape(f), v)?);
        }
        return Ok(0);
    }
    println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    Ok(0)
}

/// A time as Docker's inspect writes it (RFC 3339 with nanoseconds), and
/// Go's zero time for one that has not happened.
pub fn docker_time(ms: i64) -> String {
    if ms <= 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_default()
}

/// Parses a size as Docker's -m takes it: 512, 64k, 128m, 1g (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use a number with an optional k, m or g"))?;
    if n <= 0.0 {
        return Err(format!("invalid size {s:?}: it must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

/// Parses --cpus into nano-CPUs, as Docker's NanoCpus.
pub fn parse_cpus(s: &str) -> Result<u64, String> {
    let n: f64 = s
        .parse()
        .map_err(|_| format!("invalid --cpus {s:?}: use a number such as 0.5"))?;
    if n <= 0.0 {
        return Err(format!("invalid --cpus {s:?}: it must be positive"));
    }
    Ok((n * 1e9) as u64)
}

/// `berth pause` and `berth unpause`.
pub async fn pause(
    client: &mut ClusterClient<Channel>,
    containers: Vec<String>,
    paused: bool,
) -> Result<i32, CliError> {
    Ok(
        for_each(client, &containers, |mut client, name_or_id| async move {
            let r = ContainerRef { name_or_id };
            if paused {
                client.pause_container(r).await?;
            } else {
                client.unpause_container(r).await?;
            }
            Ok(())
        })
        .await,
    )
}

/// `run -it`: creates the container, then starts it attached, so that its
/// first output (a shell's prompt) reaches this terminal.
async fn run_attached(client: &mut ClusterClient<Channel>, args: RunArgs) -> Result<i32, CliError> {
    let auto_remove = args.rm;
    let tty = args.tty;
    let detach_keys = args.detach_keys.clone();
    let code = create_quiet(client, args).await?;
    let id = code;
    let opts = crate::attach::AttachOptions {
        detach_keys: detach_keys.unwrap_or_default(),
        no_stdin: false,
    };
    match crate::attach::attach(client, &id, true, tty, &opts).await? {
        crate::attach::AttachEnd::Detached => Ok(0),
        crate::attach::AttachEnd::Ended(_) => {
            let waited = client
                .wait_container(ContainerRef {
                    name_or_id: id.clone(),
                })
                .await
                .map_err(CliError::api)?
                .into_inner();
            if auto_remove {
                let _ = client
                    .remove_container(RemoveContainerRequest {
                        name_or_id: id,
                        force: true,
                    })
                    .await;
            }
            if !waited.error.is_empty() {
                return Err(CliError::Exit {
                    code: waited.exit_code,
                    message: waited.error,
                });
            }
            Ok(waited.exit_code)
        }
    }
}

/// Creates a container as `berth create` does and returns its id.
async fn create_quiet(
    client: &mut ClusterClient<Channel>,
    args: RunArgs,
) -> Result<String, CliError> {
    let created = client
        .create_container(CreateContainerRequest {
            name: args.name.clone().unwrap_or_default(),
            spec: Some(spec_from(&args)),
            start: false,
            attached: true,
        })
        .await
        .map_err(CliError::run)?
        .into_inner();
    if !created.error.is_empty() {
        return Err(CliError::Run(created.error));
    }
    Ok(created.id)
}

/// `berth attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The keys that detach from a terminal, Docker's form (ctrl-p,ctrl-q).
    #[arg(long, value_parser = crate::attach::DetachKeys::parse)]
    pub detach_keys: Option<crate::attach::DetachKeys>,
    /// Send none of your input.
    #[arg(long)]
    pub no_stdin: bool,
    /// Send the SIGINT and SIGTERM this client gets to the container (not
    /// with a terminal, where Ctrl+C is input).
    #[arg(long, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub sig_proxy: bool,
    pub container: String,
}

pub async fn attach_verb(
    client: &mut ClusterClient<Channel>,
    args: AttachArgs,
) -> Result<i32, CliError> {
    let container = args.container.as_str();
    let info = client
        .get_container(ContainerRef {
            name_or_id: container.to_string(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    let tty = info.spec.as_ref().is_some_and(|s| s.tty);
    let stdin_open = info.spec.as_ref().is_some_and(|s| s.stdin_open);
    if info.state != "running" && info.state != "paused" {
        return Err(CliError::Api(
            "You cannot attach to a stopped container, start it first".into(),
        ));
    }
    if !tty && !stdin_open {
        // Nothing to send it: its output from now on, stdout and stderr
        // apart, until it ends (Ctrl+C ends only this client), as Docker's
        // attach shows a detached container's.
        let opts = crate::logs::LogOptions {
            follow: true,
            tail: Some(0),
            ..Default::default()
        };
        let proxy = args.sig_proxy.then_some(info.id.as_str());
        let waited = follow_and_wait_with(client, &info.id, &opts, proxy).await?;
        return Ok(waited.exit_code);
    }
    let opts = crate::attach::AttachOptions {
        detach_keys: args.detach_keys.clone().unwrap_or_default(),
        no_stdin: args.no_stdin,
    };
    match crate::attach::attach(client, &info.id, false, tty, &opts).await? {
        crate::attach::AttachEnd::Detached => Ok(0),
        crate::attach::AttachEnd::Ended(_) => {
            let waited = client
                .wait_container(ContainerRef {
                    name_or_id: info.id,
                })
                .await
                .map_err(CliError::api)?
                .into_inner();
            Ok(waited.exit_code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpus_parse_like_docker() {
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert!(parse_cpus("-1").is_err());
    }
}

/// `berth exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and send yours to the process.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the process a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Run as USER[:GROUP].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// The container's name or id.
    pub container: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Runs a process in a running container and exits with its code.
pub async fn exec(client: &mut ClusterClient<Channel>, args: ExecArgs) -> Result<i32, CliError> {
    let start = berth_proto::cluster::ExecStart {
        name_or_id: args.container,
        cmd: args.command,
        env: args.env,
        user: args.user.unwrap_or_default(),
        workdir: args.workdir.unwrap_or_default(),
        tty: args.tty,
        interactive: args.interactive,
        size: None,
    };
    match crate::attach::exec(client, start).await? {
        crate::attach::AttachEnd::Detached => Ok(0),
        crate::attach::AttachEnd::Ended(code) => Ok(code.unwrap_or(0)),
    }
}

/// `berth top`.
/// `berth commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The author (for example "Jane Doe <jane@example.com>").
    #[arg(short = 'a', long)]
    pub author: Option<String>,
    /// A Dockerfile instruction applied to the image's config (CMD,
    /// ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR,
    /// STOPSIGNAL); may be repeated.
    #[arg(short = 'c', long = "change")]
    pub changes: Vec<String>,
    /// The commit message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Freeze the container while its changes are read (--pause=false
    /// reads them while it runs).
    #[arg(short = 'p', long, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub pause: bool,
    pub container: String,
    /// The name of the new image, REPOSITORY[:TAG] (default: untagged).
    pub reference: Option<String>,
}

pub async fn commit(client: &mut ClusterClient<Channel>, a: CommitArgs) -> Result<i32, CliError> {
    let r = client
        .commit_container(berth_proto::cluster::CommitRequest {
            container: a.container,
            reference: a.reference.unwrap_or_default(),
            author: a.author.unwrap_or_default(),
            message: a.message.unwrap_or_default(),
            changes: a.changes,
            pause: a.pause,
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    println!("{}", r.image_id);
    Ok(0)
}

pub async fn diff(client: &mut ClusterClient<Channel>, container: &str) -> Result<i32, CliError> {
    let r = client
        .diff_container(ContainerRef {
            name_or_id: container.to_string(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    for c in r.changes {
        println!("{} {}", c.kind, c.path);
    }
    Ok(0)
}

pub async fn top(client: &mut ClusterClient<Channel>, container: &str) -> Result<i32, CliError> {
    let t = client
        .top(ContainerRef {
            name_or_id: container.to_string(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    let titles: Vec<&str> = t.titles.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = t.rows.into_iter().map(|r| r.cells).collect();
    table(&titles, &rows);
    Ok(0)
}
