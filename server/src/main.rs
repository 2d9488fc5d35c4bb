//! berth-server: one member of a berth cluster's control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_proto::agent::agent_session_server::AgentSessionServer;
use berth_proto::cluster::cluster_server::ClusterServer;
use berth_proto::cluster::join_server::JoinServer;
use berth_proto::raft::raft_server::RaftServer;
use berth_server::api::ClusterService;
use berth_server::nodes::session::SessionService;
use berth_server::raft::network::RaftService;
use berth_server::raft::{self, RaftConfig};
use berth_server::{App, AppConfig};
use clap::Parser;

/// mimalloc instead of glibc's malloc: the server allocates and frees many
/// small buffers per request (gRPC frames, records, Raft messages), and in
/// profiles glibc's malloc and free took about a fifth of its CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A berth-server: stores the cluster's desired state in Raft (openraft on
/// rocksdb), schedules containers onto agents, and answers the berth CLI.
#[derive(Debug, Parser)]
#[command(name = "berth-server", version)]
struct Args {
    /// Where the Raft log and state live; reused on later starts.
    #[arg(long, default_value = "/var/lib/berth/server")]
    data_dir: PathBuf,
    /// The address to listen on for the CLI, agents and other servers.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// The address others reach this server at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Start a new one-member cluster if the data dir holds none.
    #[arg(long)]
    bootstrap: bool,
    /// Start a new cluster from a `berth cluster backup` file (with
    /// --bootstrap, on an empty data dir).
    #[arg(long, requires = "bootstrap")]
    restore: Option<PathBuf>,
    /// Join the cluster of the server at HOST:PORT (any member; the leader
    /// is found from it). The cluster gives the server its id, unless
    /// --id names one.
    #[arg(long, conflicts_with = "bootstrap")]
    join: Option<String>,
    /// The cluster's server join token (`berth cluster join-token
    /// server`), for the first start with --join: the server checks the
    /// cluster's CA against it, gets its certificate and id, and keeps
    /// them in the data dir (later starts need no token).
    #[arg(
        long,
        env = "BERTH_TOKEN",
        hide_env_values = true,
        conflicts_with = "bootstrap"
    )]
    token: Option<String>,
    /// A file holding the join token (instead of --token).
    #[arg(long, conflicts_with_all = ["token", "bootstrap"])]
    token_file: Option<PathBuf>,
    /// This member's Raft node id. Kept in the data dir from the first
    /// start on (`server-id`): later starts need none, and one that
    /// contradicts the data dir is refused. Without it, a bootstrap is 1
    /// and a joiner gets the next free id from the cluster.
    #[arg(long)]
    id: Option<u64>,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Lower bound of the Raft election timeout. A follower stands for
    /// election after the leader lease plus a random timeout between the
    /// two bounds without a heartbeat (300 to 400 ms by default), or as
    /// soon as the lease ends if the leader's port refuses connections.
    #[arg(long, default_value_t = 100)]
    election_min_ms: u64,
    /// Upper bound of the Raft election timeout; also the leader lease,
    /// during which a follower refuses to vote for another.
    #[arg(long, default_value_t = 200)]
    election_max_ms: u64,
    /// Build a Raft snapshot and compact the log every this many entries.
    #[arg(long, env = "BERTH_SNAPSHOT_LOGS", default_value_t = 5000)]
    snapshot_logs: u64,
    /// The size of a Raft log segment file (in DIR/raft-log), zero-filled
    /// when created; compaction deletes whole segments, so the log on disk
    /// is at most about one segment more than what a snapshot keeps.
    #[arg(long, env = "BERTH_LOG_SEGMENT_BYTES", default_value_t = 8 << 20,
          value_parser = clap::value_parser!(u64).range(4096..))]
    log_segment_bytes: u64,
    /// An agent silent for longer than this is marked Down.
    #[arg(long, default_value_t = 2000)]
    node_ttl_ms: u64,
    /// A node Down for longer than this is lost: its containers that
    /// cannot move are shown Dead until it comes back (`rm -f` clears them).
    #[arg(long, default_value_t = 60_000)]
    node_lost_ms: u64,
    /// A node Down for longer than this has its movable containers
    /// (service tasks, `run --reschedule`) placed on other nodes. The
    /// agent's lease (berth-agent --lease-ms) must be shorter than
    /// --node-ttl-ms plus this, so that the old copies have stopped.
    #[arg(long, default_value_t = 1000)]
    reschedule_after_ms: u64,
    /// A service task that ended is started again after this long.
    #[arg(long, default_value_t = 1000)]
    restart_delay_ms: u64,
    /// How long the certificates the cluster signs are valid, in days;
    /// each is signed again when a third of this is left.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3650))]
    cert_days: u64,
    /// The same as a duration with a unit (30s, 10m, 12h, 90d), for short
    /// lives (tests of renewal); overrides --cert-days. At least 30s.
    #[arg(long, value_parser = parse_validity, conflicts_with = "cert_days")]
    cert_validity: Option<Duration>,
    /// The cluster keeps the last lines of each container's log, for
    /// `berth logs` once its node is gone: at least this many lines, or
    /// --log-tail-bytes, whichever is reached first. (While the node
    /// lives, its agent's log file is the full record.)
    #[arg(long, env = "BERTH_LOG_TAIL_LINES", default_value_t = 10_000)]
    log_tail_lines: u64,
    /// The bytes of each container's log the cluster keeps (see
    /// --log-tail-lines).
    #[arg(long, env = "BERTH_LOG_TAIL_BYTES", default_value_t = 1 << 20)]
    log_tail_bytes: u64,
    /// Run at this nice value, from -20 (first) to 19, rather than the
    /// one the server was started with: below zero, the control plane's
    /// heartbeats and votes wait less for a CPU behind the host's other
    /// work (builds, containers), as etcd's operators do with renice.
    /// Below zero needs root (CAP_SYS_NICE).
    #[arg(long, env = "BERTH_SERVER_NICE",
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: Option<i32>,
}

fn main() {
    let args = Args::parse();
    // No transparent huge pages for this process (prctl PR_SET_THP_DISABLE).
    // With them, the allocator's fresh memory faults in 2 MiB at a time,
    // each zeroed on the spot: a stall of the one thread that runs
    // everything, which doubled the 99th-percentile write latency under
    // load (docs/benchmarks.md). Failing to set it costs only speed.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("berth-server: warning: cannot disable transparent huge pages: {e}");
    }
    // Before any thread starts, so that every one (the runtime's, the
    // blocking pool's, rocksdb's) inherits it: on Linux a nice value
    // belongs to a thread, and a new thread takes its creator's.
    if let Some(nice) = args.nice {
        if let Err(e) = set_nice(nice) {
            eprintln!("berth-server: error: cannot run at nice {nice}: {e}");
            std::process::exit(1);
        }
    }
    // One thread runs the server's tasks. Its work is a chain of short
    // steps handed from task to task (gRPC, the Raft core, replication,
    // the state machine): on one thread a hand-off is a queue push, where
    // across threads it is a wake-up of another CPU, and on this class of
    // VM that wake-up was a fifth of a write's latency (docs/benchmarks.md).
    // The leader's log fsync has a thread of its own (raft/wal.rs), and
    // what reads every row (snapshots, backups) runs on the blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = rt
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(real_main(args)));
    if let Err(e) = result {
        // One line naming the cause, whatever RUST_BACKTRACE says.
        eprintln!("berth-server: error: {}", berth_proto::one_line(e.as_ref()));
        std::process::exit(1);
    }
}

/// Sets the calling thread's nice value (and so that of every thread it
/// starts after).
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory; a
    // PRIO_PROCESS of 0 is the calling thread on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn real_main(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft warns of every failed heartbeat: twenty lines a
                // second for each member that is down, which buried the
                // rest of the log. Replication and election errors still
                // show.
                .unwrap_or_else(|_| "info,openraft=warn,openraft::core::heartbeat=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Everything the server writes (its keys, the state with the CA's
    // key, the Raft log) is its own: umask 077, and the data dir 0700.
    // umask(2) sets only this process's file creation mask (nix's
    // wrapper is safe); it cannot fail.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.data_dir)
            .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
        std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (0700)", args.data_dir.display()))?;
    }
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.to_string());
    let mut hosts = vec![
        berth_server::pki::host_of(&advertise),
        args.listen.ip().to_string(),
    ];
    hosts.dedup();
    let setup = |id: u64| berth_server::pki::setup::SetupConfig {
        data_dir: args.data_dir.clone(),
        id,
        hosts: hosts.clone(),
        validity: cert_validity(&args),
        admin: args
            .bootstrap
            .then(|| (args.data_dir.join("admin.conf"), vec![advertise.clone()])),
    };
    let mut id = match berth_server::member_id::resolve(&args.data_dir, args.id)? {
        berth_server::member_id::Known::Id(id) => Some(id),
        berth_server::member_id::Known::AskTheCluster => None,
    };
    // Credentials before anything listens: the server serves TLS only.
    if !berth_server::tls::Credentials::present(&args.data_dir) {
        if args.bootstrap {
            let cfg = setup(*id.get_or_insert(1));
            tokio::task::spawn_blocking(move || {
                berth_server::pki::setup::bootstrap_credentials(&cfg)
            })
            .await
            .context("making the cluster's CA")??;
        } else if let Some(seed) = &args.join {
            let token = join_token(&args)?;
            let given = enroll(&args.data_dir, seed, &token, &advertise, id.unwrap_or(0)).await?;
            id = Some(given);
        } else {
            anyhow::bail!(
                "{} holds no credentials: start a new cluster with --bootstrap, or join one with \
                 --join HOST:PORT --token TOKEN (berth cluster join-token server)",
                args.data_dir.join("tls").display()
            );
        }
    }
    let id = match id {
        Some(id) => id,
        // Credentials but no id file: the certificate names the id.
        None => berth_server::tls::Credentials::load(&args.data_dir)?
            .server_id()
            .context("reading this server's id from its certificate")?,
    };
    berth_server::member_id::store(&args.data_dir, id)?;
    let tls = berth_server::tls::ServerTls::load(&args.data_dir)
        .context("loading this server's TLS credentials")?;
    let cfg = RaftConfig {
        node_id: id,
        advertise: advertise.clone(),
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_min_ms,
        election_max_ms: args.election_max_ms,
        snapshot_logs: args.snapshot_logs,
        log_segment_bytes: args.log_segment_bytes,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let backup = match &args.restore {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("reading the backup {}", p.display()))?)
        }
        None => None,
    };
    let (raft, state) = raft::start(
        &args.data_dir,
        &cfg,
        args.bootstrap,
        backup.as_deref(),
        tls.clone(),
    )
    .await
    .with_context(|| format!("cannot start raft in {}", args.data_dir.display()))?;
    let app = App::new(
        raft.clone(),
        state,
        AppConfig {
            node_ttl: Duration::from_millis(args.node_ttl_ms),
            node_lost: Duration::from_millis(args.node_lost_ms),
            scheduler: berth_server::scheduler::SchedulerConfig {
                reschedule_after: Duration::from_millis(args.reschedule_after_ms),
                restart_delay: Duration::from_millis(args.restart_delay_ms),
                ..Default::default()
            },
            log_tail: berth_server::app::LogTail {
                lines: args.log_tail_lines,
                bytes: args.log_tail_bytes,
            },
        },
    );
    let _ = app.tls.set(tls.clone());
    tokio::spawn(berth_server::stall::watch());
    tokio::spawn(berth_server::nodes::liveness::run(app.clone()));
    tokio::spawn(berth_server::pki::rotation::finish_when_done(app.clone()));
    tokio::spawn(berth_server::pki::setup::run(
        app.clone(),
        setup(id),
        tls.clone(),
    ));
    berth_server::scheduler::reconciler::spawn(app.clone());
    let contact = Arc::new(raft::failover::Contact::default());
    raft::failover::spawn(
        raft.clone(),
        contact.clone(),
        raft::failover::FailoverConfig {
            node_id: id,
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            lease: Duration::from_millis(args.election_max_ms),
        },
    );
    // A server whose store already belongs to a cluster rejoins by itself:
    // its membership is in its log.
    let member_already = app.state.has_membership().unwrap_or(false);
    if let (Some(seed), false) = (args.join.clone(), member_already) {
        tokio::spawn(join(seed, id, advertise.clone(), tls.clone()));
    }
    tracing::info!(listen = %args.listen, %advertise, id, "berth-server serving");
    // TLS on every connection (handshakes side by side), each with the
    // identity its certificate proved, for the authorization layer.
    let incoming = tls.clone().incoming(listener);
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    // The same message limits on every service and every client
    // (berth_proto::limits).
    use berth_proto::limits::MAX_MESSAGE;
    let serve = tonic::transport::Server::builder()
        .layer(berth_server::auth::AuthorizeLayer::new(app.clone()))
        .add_service(berth_server::api::forward::LeaderForward::new(
            ClusterServer::new(ClusterService::new(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            app.clone(),
            tls.clone(),
        ))
        .add_service(berth_server::api::forward::LeaderForward::new(
            JoinServer::new(berth_server::pki::enroll::JoinService::new(
                app.clone(),
                cert_validity(&args),
            )),
            app.clone(),
            tls.clone(),
        ))
        .add_service(
            AgentSessionServer::new(SessionService::new(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RaftServer::new(RaftService::new(
                raft.clone(),
                berth_server::raft::faults::Faults::from_env(&args.data_dir),
                contact,
                berth_server::raft::snapshot_dir(&args.data_dir),
            ))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, async {
            shutdown_signal().await;
            hand_over(&raft).await;
            let _ = stopping.send(());
        });
    // Agent sessions and followed logs are streams that do not end by
    // themselves: after a stop they get a moment to finish, then are cut
    // (agents then find the new leader).
    tokio::select! {
        served = serve => served.context("serving gRPC")?,
        _ = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(STREAMS_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::info!("streams still open; closing them"),
    }
    raft.shutdown().await.ok();
    Ok(())
}

/// Asks the cluster at `seed` to take this server in, following the
/// leader's address, until it answers.
async fn join(seed: String, id: u64, advertise: String, tls: Arc<berth_server::tls::ServerTls>) {
    use berth_proto::cluster::cluster_client::ClusterClient;
    let req = berth_proto::cluster::JoinRequest {
        id,
        addr: advertise,
        reserve_id: false,
    };
    let mut target = seed;
    loop {
        let result = async {
            let channel = berth_proto::transport::endpoint(&target)
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(3))
                .connect_with_connector(berth_proto::transport::Connector::new(tls.client()))
                .await
                .map_err(|e| berth_proto::one_line(&e))?;
            ClusterClient::new(channel)
                .join_cluster(req.clone())
                .await
                .map_err(|s| s.message().to_string())
        }
        .await;
        match result {
            Ok(s) => {
                let s = s.into_inner();
                tracing::info!(leader = ?s.leader_id, members = s.members.len(), "joined the cluster");
                return;
            }
            Err(e) => {
                if let Some(leader) = e
                    .split("the leader is at ")
                    .nth(1)
                    .map(|l| l.trim_end_matches(')').to_string())
                {
                    if !leader.is_empty() {
                        target = leader;
                    }
                }
                tracing::info!(%target, "joining: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How long the certificates the cluster signs are valid.
fn cert_validity(args: &Args) -> Duration {
    args.cert_validity
        .unwrap_or(Duration::from_secs(args.cert_days * 24 * 3600))
}

/// A duration of --cert-validity: a number and s, m, h or d.
fn parse_validity(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s, m, h or d (30s, 10m, 90d)"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    if !(30..=3650 * 86_400).contains(&secs) {
        return Err(format!("{s:?}: a validity is between 30s and 3650d"));
    }
    Ok(Duration::from_secs(secs))
}

/// The join token of --token, --token-file or BERTH_TOKEN.
fn join_token(args: &Args) -> anyhow::Result<String> {
    if let Some(t) = args.token.as_deref().filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    if let Some(p) = &args.token_file {
        let t = std::fs::read_to_string(p)
            .with_context(|| format!("reading the join token from {}", p.display()))?;
        return Ok(t.trim().to_string());
    }
    anyhow::bail!(
        "joining a cluster for the first time needs its server join token: --token TOKEN, \
         --token-file FILE or BERTH_TOKEN (`berth cluster join-token server` prints it)"
    )
}

/// Gets this server's certificate and id from the cluster at `seed` with a
/// join token, and keeps them in the data dir. The cluster's CA is the one
/// the token names, checked in the handshake before the token is sent.
/// Servers that do not answer yet are asked again; a refusal ends it.
async fn enroll(
    data_dir: &std::path::Path,
    seed: &str,
    token_text: &str,
    advertise: &str,
    want_id: u64,
) -> anyhow::Result<u64> {
    use berth_proto::cluster::join_client::JoinClient;
    use berth_server::pki::{JoinToken, Role};
    let token: JoinToken = token_text.parse()?;
    if token.role != Role::Server {
        anyhow::bail!(
            "this is an {} join token: a server joins with the server token \
             (`berth cluster join-token server`)",
            token.role
        );
    }
    let (key_pem, csr_pem) = berth_proto::transport::new_key_and_request()?;
    let (tls, pinned) = berth_proto::transport::pinned_by_digest(&token.ca_digest)?;
    let req = berth_proto::cluster::EnrollRequest {
        token: token_text.to_string(),
        csr_pem,
        name: String::new(),
        addr: advertise.to_string(),
        server_id: want_id,
    };
    loop {
        let channel = berth_proto::transport::endpoint(seed)?
            .connect_timeout(Duration::from_secs(3))
            .connect_with_connector(berth_proto::transport::Connector::new(tls.clone()))
            .await;
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                let why = berth_proto::one_line(&e);
                if why.contains("join token names") {
                    anyhow::bail!("{seed}: {why}");
                }
                tracing::info!(%seed, "enrolling: {why}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match JoinClient::new(channel).enroll(req.clone()).await {
            Ok(r) => {
                let r = r.into_inner();
                let trusted = if r.trusted_pem.is_empty() {
                    pinned.ca_pem().unwrap_or_default()
                } else {
                    r.trusted_pem
                };
                berth_server::pki::setup::keep_enrolled(data_dir, &key_pem, &r.cert_pem, &trusted)?;
                tracing::info!(
                    id = r.server_id,
                    "the cluster gave this server its certificate and id"
                );
                return Ok(r.server_id);
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tracing::info!(%seed, "enrolling: {}", s.message());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => anyhow::bail!("the cluster refused this server: {}", s.message()),
        }
    }
}

/// How long open streams may go on after a stop.
const STREAMS_GRACE: Duration = Duration::from_secs(1);

/// On a stop, a leader hands its leadership to the voter that holds the
/// most of its log, and waits (up to a second) for it to lead, so that
/// writes pause for a hand-off instead of an election. It keeps serving
/// meanwhile, forwarding to the new leader once there is one.
async fn hand_over(raft: &raft::BerthRaft) {
    let m = raft::metrics(raft);
    if m.current_leader != Some(m.id) {
        return;
    }
    let voters: std::collections::BTreeSet<u64> =
        m.membership_config.membership().voter_ids().collect();
    let Some(to) = m.replication.as_ref().and_then(|repl| {
        repl.iter()
            .filter(|(id, _)| **id != m.id && voters.contains(id))
            .max_by_key(|(_, matched)| matched.map(|l| l.index))
            .map(|(id, _)| *id)
    }) else {
        return;
    };
    if raft.trigger().transfer_leader(to).await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        let leader = raft::metrics(raft).current_leader;
        if leader.is_some() && leader != Some(m.id) {
            tracing::info!(to = leader, "handed the leadership over");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::warn!(
        to,
        "no member took the leadership within a second; stopping anyway"
    );
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
