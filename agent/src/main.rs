//! berth-agent: runs containers on one host for a berth cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_agent::runtime::shim::{self, ShimConfig};
use berth_agent::session::{self, HostFacts, SessionConfig};
use berth_agent::supervisor::host::RealHost;
use berth_agent::supervisor::{Supervisor, SupervisorConfig};
use clap::{Parser, Subcommand};

/// A berth-agent: registers this host with a berth cluster and runs the
/// containers the cluster places on it.
#[derive(Debug, Parser)]
#[command(name = "berth-agent", version)]
struct Args {
    /// Where images, layers and containers live on this host.
    #[arg(long, default_value = "/var/lib/berth/agent")]
    data_dir: PathBuf,
    /// Cluster server addresses, HOST:PORT, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7420")]
    server: Vec<String>,
    /// The node name (default: the host name). Several agents on one
    /// machine need different names and data dirs.
    #[arg(long)]
    name: Option<String>,
    /// The cluster's agent join token (`berth cluster join-token agent`),
    /// for the first start: the agent checks the cluster's CA against it,
    /// gets the node's certificate, and keeps it in DATA_DIR/tls (later
    /// starts need no token).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the join token (instead of --token).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// How often to tell the cluster this node is alive.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// A label of this node, KEY=VALUE, that placement constraints can
    /// name (node.labels.KEY==VALUE); may be repeated.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The lease on this node's movable containers (service tasks, `run
    /// --reschedule`): when no server has answered a heartbeat sent this
    /// long ago, their shims kill them, because the cluster may run them
    /// elsewhere. Keep it below the servers' --node-ttl-ms plus
    /// --reschedule-after-ms (2000 + 1000 by default).
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// Rotate each container's log file at this size (like Docker's
    /// json-file max-size; 0 never rotates). The file is the full record
    /// of a container's output while this node lives; the cluster keeps a
    /// tail of it.
    #[arg(long, default_value = "64m", value_parser = parse_size)]
    log_max_size: u64,
    /// How many log files of a container to keep, the current one
    /// included (like json-file max-file).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    log_max_file: u32,
    /// The most bytes of log lines per second this node ships to the
    /// cluster, all containers together (0: no limit). A container that
    /// writes faster is slowed in shipping only, never in running: its
    /// lines wait in its log file. The cluster keeps only a tail of each
    /// container (1 MiB by default), so a second at this rate ships it.
    #[arg(long, env = "BERTH_LOG_SHIP_RATE", default_value = "1m", value_parser = parse_size)]
    log_ship_rate: u64,
    /// The most bytes one image layer may unpack to (its uncompressed tar
    /// and the apparent sizes of its files).
    #[arg(long, default_value = "32g", value_parser = parse_size)]
    max_layer_size: u64,
    /// The most bytes all layers of one image, or one loaded archive, may
    /// unpack to.
    #[arg(long, default_value = "64g", value_parser = parse_size)]
    max_image_size: u64,
    /// The most layers one image may have (Docker's limit is 125).
    #[arg(long, default_value_t = 125, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_image_layers: u32,
    /// The most entries (files, directories, links) one layer may hold.
    #[arg(long, default_value_t = 1_000_000)]
    max_layer_entries: u64,
    /// The largest GNU long-name or PAX header an archive may carry (a
    /// tar reader holds each in memory).
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    max_archive_header: u64,
    /// The largest apparent size of a sparse file in a layer.
    #[arg(long, default_value = "32g", value_parser = parse_size)]
    max_sparse_size: u64,
    /// The space that must stay free on the filesystem of DATA_DIR while
    /// an image is loaded or imported: an image that would use it is
    /// refused.
    #[arg(long, default_value = "256m", value_parser = parse_size)]
    min_free_space: u64,
    /// Run N simulated nodes instead of this host: light nodes named
    /// NAME-1 ... NAME-N that register with --simulate-cpus and
    /// --simulate-memory, hold the image busybox:latest, and report the
    /// transitions of their assignments without running any process. For
    /// scale tests and benchmarks of the control plane.
    #[arg(long, value_name = "N")]
    simulate: Option<u32>,
    /// The CPUs each simulated node registers with.
    #[arg(long, default_value_t = 8, requires = "simulate")]
    simulate_cpus: u64,
    /// The memory each simulated node registers with, in GiB.
    #[arg(long, default_value_t = 32, requires = "simulate")]
    simulate_memory_gib: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one container's shim (started by the agent, not by hand).
    #[command(hide = true)]
    Shim {
        #[arg(long, required_unless_present = "bundle_from_stdin")]
        bundle: Option<PathBuf>,
        /// Wait for the bundle's path on stdin (a shim the agent starts
        /// ahead of the container it will run).
        #[arg(long, conflicts_with = "bundle")]
        bundle_from_stdin: bool,
    },
    /// Runs one exec in a container (started by the agent, not by hand).
    #[command(hide = true)]
    ExecShim {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        exec: String,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("invalid label {s:?}: use KEY=VALUE")),
    }
}

/// A size in bytes: a number with an optional k, m or g (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use a number with k, m or g"))?;
    let shift = match unit.trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(format!("invalid size {s:?}: use a number with k, m or g")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn archive_limits(args: &Args) -> berth_agent::image::limits::ArchiveLimits {
    berth_agent::image::limits::ArchiveLimits {
        max_layer_bytes: args.max_layer_size,
        max_image_bytes: args.max_image_size,
        max_entries: args.max_layer_entries,
        max_header_bytes: args.max_archive_header,
        max_layers: args.max_image_layers as usize,
        max_sparse_bytes: args.max_sparse_size,
        min_free_bytes: args.min_free_space,
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(args) {
        // One line naming the cause, whatever RUST_BACKTRACE says.
        eprintln!("berth-agent: error: {}", berth_proto::one_line(e.as_ref()));
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Some(Command::Shim { bundle, .. }) => {
            // The shim clones the container from this process, so it must
            // stay single-threaded until then: no async runtime here.
            let bundle = match bundle {
                Some(b) => b.clone(),
                // The agent went away (or stopped) before it had a
                // container for this shim.
                None => match shim::await_bundle() {
                    Some(b) => b,
                    None => std::process::exit(0),
                },
            };
            std::process::exit(shim::main(ShimConfig { bundle }));
        }
        Some(Command::ExecShim { bundle, exec }) => {
            // Single-threaded for the same reason: it forks into the container.
            berth_agent::runtime::exec::main(bundle, exec);
            std::process::exit(0);
        }
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let node = match args.name.clone() {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .into_owned(),
    };
    if let Some(n) = args.simulate {
        return simulate(&args, &node, n);
    }
    let shim_exe = std::env::current_exe().context("finding the berth-agent executable")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (outbox_tx, outbox_rx) = tokio::sync::mpsc::unbounded_channel();
        let supervisor = Arc::new(
            Supervisor::open(
                SupervisorConfig {
                    data_dir: args.data_dir.clone(),
                    lease: Duration::from_millis(args.lease_ms),
                    ship: berth_agent::logs::shipper::ShipConfig {
                        rate_bytes: args.log_ship_rate,
                        ..Default::default()
                    },
                    log_rotation: berth_agent::runtime::shim::Rotation {
                        max_size: args.log_max_size,
                        max_file: args.log_max_file,
                    },
                    archive_limits: archive_limits(&args),
                },
                Arc::new(RealHost::new(shim_exe)),
                outbox_tx,
            )
            .with_context(|| format!("opening the agent's data dir {}", args.data_dir.display()))?,
        );
        tracing::info!(%node, servers = ?args.server, "berth-agent starting");
        let tls = berth_agent::credentials::AgentTls::open(credential_config(
            &args,
            args.data_dir.join("tls"),
            &node,
        )?)
        .await?;
        tokio::spawn(tls.clone().keep_renewed());
        let cfg = SessionConfig {
            tls,
            servers: args.server.clone(),
            node,
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            labels: args.labels.iter().cloned().collect(),
        };
        tokio::select! {
            refused = session::run(cfg, HostFacts::probe(), supervisor as Arc<dyn berth_agent::engine::Engine>, outbox_rx) => {
                return Err(anyhow::Error::from(refused));
            }
            _ = shutdown_signal() => tracing::info!("shutting down; containers keep running"),
        }
        Ok(())
    })
}

/// Runs `n` simulated nodes, each with a session of its own, until stopped.
fn simulate(args: &Args, name: &str, n: u32) -> anyhow::Result<()> {
    use berth_agent::simulate::SimNode;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        tracing::info!(nodes = n, servers = ?args.server, "simulating nodes");
        let facts = HostFacts {
            kernel: "simulated".into(),
            cgroup_version: "none".into(),
            cpus: args.simulate_cpus,
            memory_bytes: args.simulate_memory_gib << 30,
        };
        // Each simulated node has a certificate of its own, as a real one.
        let mut nodes = Vec::new();
        for i in 1..=n {
            let node = format!("{name}-{i}");
            let dir = args.data_dir.join("tls-sim").join(&node);
            let tls =
                berth_agent::credentials::AgentTls::open(credential_config(args, dir, &node)?)
                    .await?;
            nodes.push((node, tls));
        }
        for (node_name, tls) in nodes {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let node = Arc::new(SimNode::new(tx));
            let cfg = SessionConfig {
                tls,
                servers: args.server.clone(),
                node: node_name,
                heartbeat: Duration::from_millis(args.heartbeat_ms),
                labels: args.labels.iter().cloned().collect(),
            };
            tokio::spawn(session::run(cfg, facts.clone(), node, rx));
        }
        shutdown_signal().await;
        Ok(())
    })
}

/// Where the node's credentials live and how to get them.
fn credential_config(
    args: &Args,
    dir: PathBuf,
    node: &str,
) -> anyhow::Result<berth_agent::credentials::CredentialConfig> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the join token from {}", p.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    Ok(berth_agent::credentials::CredentialConfig {
        dir,
        node: node.to_string(),
        servers: args.server.clone(),
        token,
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults are the library's: one set of limits.
    #[test]
    fn archive_limit_flags_default_to_the_library_defaults() {
        let args = Args::parse_from(["berth-agent"]);
        assert_eq!(
            archive_limits(&args),
            berth_agent::image::limits::ArchiveLimits::default()
        );
        let args = Args::parse_from(["berth-agent", "--max-layer-size", "1g"]);
        assert_eq!(archive_limits(&args).max_layer_bytes, 1 << 30);
    }
}
