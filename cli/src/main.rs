//! berth: the command line of a berth cluster. It speaks to any server of
//! the cluster, the way the docker CLI speaks to dockerd.

mod attach;
mod build;
mod config;
mod connect;
mod containers;
mod events;
mod format;
mod images;
mod logs;
mod nodes;
mod output;
mod sent_context;
mod services;

use clap::{Parser, Subcommand};

/// Run and manage containers on a berth cluster, as you would with Docker.
#[derive(Debug, Parser)]
#[command(name = "berth", version)]
struct Cli {
    /// Cluster server address(es), HOST:PORT, comma-separated (default:
    /// the credential's endpoints).
    #[arg(short = 'H', long, env = "BERTH_HOST", global = true)]
    host: Option<String>,
    /// The admin credential file (the admin.conf a cluster's first server
    /// writes in its data dir). Default: $BERTH_CONFIG_DIR/config, that is
    /// ~/.berth/config.
    #[arg(long, env = "BERTH_CONFIG", global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and start a container from an image.
    Run(containers::RunArgs),
    /// Create a container without starting it.
    Create(containers::RunArgs),
    /// Start created or stopped containers.
    Start(containers::StartArgs),
    /// Stop running containers: SIGTERM (or the image's stop signal), then SIGKILL after -t seconds.
    Stop(containers::StopArgs),
    /// Stop and start containers again.
    Restart(containers::StopArgs),
    /// Send a signal to running containers.
    Kill(containers::KillArgs),
    /// Show the client's and the server's versions.
    Version {
        /// Print through a Go template ('{{.Server.Version}}').
        #[arg(short = 'f', long)]
        format: Option<String>,
    },
    /// Show the processes of a running container.
    Top { container: String },
    /// Make an image of a container's changes (on the container's node).
    Commit(containers::CommitArgs),
    /// Build an image from a Dockerfile and a context directory (on a node
    /// that holds its base images; the image lands there).
    Build(build::BuildArgs),
    /// List what a container changed over its image: A (added), C (changed), D (deleted).
    Diff { container: String },
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Attach to a running container: your terminal and input (-i or -t;
    /// Ctrl+P Ctrl+Q detaches), or its output from now on.
    Attach(containers::AttachArgs),
    /// Freeze every process of running containers.
    Pause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Thaw paused containers.
    Unpause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to stop and print their exit codes.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show containers' state and configuration as JSON.
    Inspect {
        /// Print each container through a Go template ('{{.State.Running}}',
        /// '{{json .Config}}') instead of the JSON.
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    Ps(containers::PsArgs),
    /// Print a container's output.
    Logs(containers::LogsArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// Make an image from a rootfs tarball, on every ready node.
    Import(images::ImportArgs),
    /// List images and the nodes that hold them.
    Images(images::ImagesArgs),
    /// Load images from a docker save archive or an OCI layout tar, on every ready node.
    Load(images::LoadArgs),
    /// Save images to one archive (an OCI layout that docker load also reads).
    Save(images::SaveArgs),
    /// Give an image another reference.
    Tag(images::TagArgs),
    /// Remove images.
    Rmi(images::RmiArgs),
    /// Show how an image was built, layer by layer.
    History(images::HistoryArgs),
    /// Write a container's filesystem as a tar archive.
    Export(images::ExportArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Events of containers, images and nodes; follows new ones (until --until).
    Events(events::EventsArgs),
    /// Manage the cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services: replicated tasks the cluster keeps running.
    #[command(subcommand)]
    Service(services::ServiceCommand),
    /// The control plane: Raft members, leader, term, indexes; join tokens.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Name, list and switch the clusters this CLI knows (their credentials).
    #[command(subcommand)]
    Context(ContextCommand),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Show images' configuration and metadata as JSON.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// List images (as `berth images`).
    Ls(images::ImagesArgs),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Each member's id and address, which one leads, term, indexes, lag.
    Status,
    /// Write a consistent copy of the cluster's state to a file
    /// (`berth-server --bootstrap --restore FILE` starts a new cluster from it).
    Backup {
        #[arg(short = 'o', long = "output")]
        output: String,
    },
    /// Remove a member (alive or dead) from the control plane; its
    /// certificate is revoked.
    Leave {
        /// The member's id (from `berth cluster status`).
        id: u64,
    },
    /// Show the cluster's CA and how far a rotation has come.
    Ca {
        /// Replace the CA with a new one, with no downtime: the old one is
        /// trusted until every server and node holds a certificate of the
        /// new one (agents and servers renew by themselves; an admin
        /// credential renews when the CLI next uses it).
        #[arg(long)]
        rotate: bool,
    },
    /// Print the token a new agent or server joins with
    /// (`berth-agent --token T`, `berth-server --join H:P --token T`).
    JoinToken {
        /// agent or server.
        #[arg(value_parser = ["agent", "server"])]
        role: String,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token first: the old one is refused from then on.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContextCommand {
    /// List the known clusters; * marks the current one.
    Ls,
    /// Keep a credential file (a server's admin.conf) under a name.
    Import {
        name: String,
        file: std::path::PathBuf,
    },
    /// Make the named cluster the current one (~/.berth/config).
    Use { name: String },
    /// Forget a named cluster.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes: status, availability, containers, resources, labels.
    Ls {
        /// Print through a Go template (fields: ID, Hostname, Status,
        /// Availability, Containers, CPUs, Memory, Cgroup, Kernel, Labels).
        #[arg(long)]
        format: Option<String>,
    },
    /// Show nodes as JSON.
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability (active, pause, drain) or labels.
    Update {
        /// active: takes containers; pause: keeps what it runs, takes
        /// nothing new; drain: its service tasks and --reschedule
        /// containers move to other nodes.
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
        /// Add or change a label (KEY=VALUE).
        #[arg(long)]
        label_add: Vec<String>,
        /// Remove a label (KEY).
        #[arg(long)]
        label_rm: Vec<String>,
        node: String,
    },
    /// Remove nodes that are down (--force: also a ready one).
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY-) labels of a node.
    Label {
        node: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

/// Errors the CLI reports: one line, and the exit code Docker would give.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    /// The cluster refused or failed a request.
    #[error("{0}")]
    Api(String),
    /// `run` could not run the container (Docker exits 125).
    #[error("{0}")]
    Run(String),
    /// The container ran, or tried to, and ended with this code.
    #[error("{message}")]
    Exit { code: i32, message: String },
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn api(s: tonic::Status) -> Self {
        CliError::Api(status_text(&s))
    }

    pub fn run(s: tonic::Status) -> Self {
        CliError::Run(status_text(&s))
    }

    fn exit_code(&self) -> i32 {
        match self {
            CliError::Run(_) => 125,
            CliError::Exit { code, .. } => *code,
            _ => 1,
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    match s.code() {
        tonic::Code::Unavailable if s.message().contains("transport") || s.message().is_empty() => {
            format!("the berth cluster stopped answering: {}", s.message())
        }
        _ => s.message().to_string(),
    }
}

async fn dispatch(cli: Cli) -> Result<i32, CliError> {
    if let Command::Context(cmd) = &cli.command {
        return context(cmd);
    }
    let conf_path = config::path(cli.config.as_deref());
    let conf = config::load(&conf_path).map_err(connect::ConnectError::from)?;
    let target = connect::Target::new(cli.host.as_deref(), &conf)?;
    let mut client = connect::connect(&target).await?;
    // A credential near its end, or of a CA the cluster has rotated away
    // from, is renewed (and written back) before the command.
    connect::renew_if_due(&target, &conf_path, &conf, connect::ca_moved(&conf)).await;
    match cli.command {
        Command::Run(a) => containers::run(&mut client, a).await,
        Command::Ps(a) => containers::ps(&mut client, a).await,
        Command::Create(a) => containers::create(&mut client, a).await,
        Command::Start(a) => containers::start(&mut client, a).await,
        Command::Stop(a) => containers::stop(&mut client, a, false).await,
        Command::Restart(a) => containers::stop(&mut client, a, true).await,
        Command::Kill(a) => containers::kill(&mut client, a).await,
        Command::Wait { containers: list } => containers::wait(&mut client, list).await,
        Command::Pause { containers: list } => containers::pause(&mut client, list, true).await,
        Command::Attach(a) => containers::attach_verb(&mut client, a).await,
        Command::Exec(a) => containers::exec(&mut client, a).await,
        Command::Top { container } => containers::top(&mut client, &container).await,
        Command::Version { format } => nodes::version(&mut client, format.as_deref()).await,
        Command::Commit(a) => containers::commit(&mut client, a).await,
        Command::Build(a) => build::build(&mut client, a).await,
        Command::Diff { container } => containers::diff(&mut client, &container).await,
        Command::Unpause { containers: list } => containers::pause(&mut client, list, false).await,
        Command::Inspect {
            format,
            containers: list,
        } => containers::inspect(&mut client, list, format.as_deref()).await,
        Command::Logs(a) => containers::logs(&mut client, a).await,
        Command::Rm(a) => containers::rm(&mut client, a).await,
        Command::Import(a) => images::import(&mut client, a).await,
        Command::Images(a) => images::images(&mut client, a).await,
        Command::Load(a) => images::load(&mut client, a).await,
        Command::Save(a) => images::save(&mut client, a).await,
        Command::Tag(a) => images::tag(&mut client, a).await,
        Command::Rmi(a) => images::rmi(&mut client, a).await,
        Command::History(a) => images::history(&mut client, a).await,
        Command::Export(a) => images::export(&mut client, a).await,
        Command::Image(ImageCommand::Inspect { images: list }) => {
            images::inspect(&mut client, list).await
        }
        Command::Image(ImageCommand::Ls(a)) => images::images(&mut client, a).await,
        Command::Node(NodeCommand::Ls { format }) => {
            nodes::ls(&mut client, format.as_deref()).await
        }
        Command::Node(NodeCommand::Inspect { nodes: list }) => {
            nodes::inspect(&mut client, &list).await
        }
        Command::Node(NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            node,
        }) => nodes::update(&mut client, &node, availability, &label_add, &label_rm).await,
        Command::Node(NodeCommand::Rm { force, nodes: list }) => {
            nodes::rm(&mut client, &list, force).await
        }
        Command::Service(cmd) => services::dispatch(&mut client, cmd).await,
        Command::Node(NodeCommand::Label { node, labels }) => {
            nodes::label(&mut client, &node, &labels).await
        }
        Command::Events(a) => events::events(&mut client, a).await,
        Command::Cluster(ClusterCommand::Status) => nodes::cluster_status(&mut client).await,
        Command::Cluster(ClusterCommand::Leave { id }) => {
            nodes::cluster_leave(&mut client, id).await
        }
        Command::Cluster(ClusterCommand::Backup { output }) => {
            nodes::cluster_backup(&mut client, &output).await
        }
        Command::Cluster(ClusterCommand::JoinToken {
            role,
            quiet,
            rotate,
        }) => nodes::join_token(&mut client, &role, quiet, rotate, &target).await,
        Command::Cluster(ClusterCommand::Ca { rotate }) => {
            let code = nodes::cluster_ca(&mut client, rotate).await?;
            if rotate {
                // This credential moves to the new CA at once: the
                // rotation may end before this CLI is used again.
                let conf = config::load(&conf_path).map_err(connect::ConnectError::from)?;
                connect::renew_if_due(&target, &conf_path, &conf, true).await;
            }
            Ok(code)
        }
        Command::Context(_) => unreachable!("contexts are handled before connecting"),
    }
}

/// `berth context ...`: files only, no connection.
fn context(cmd: &ContextCommand) -> Result<i32, CliError> {
    let fail = |e: config::ConfigError| CliError::Usage(e.to_string());
    match cmd {
        ContextCommand::Ls => {
            println!("{:<20} {:<8} ENDPOINTS", "NAME", "CURRENT");
            for (name, endpoints, current) in config::list().map_err(fail)? {
                let mark = if current { "*" } else { "" };
                println!("{name:<20} {mark:<8} {}", endpoints.join(","));
            }
        }
        ContextCommand::Import { name, file } => {
            config::import(name, file).map_err(fail)?;
            println!("{name}");
        }
        ContextCommand::Use { name } => {
            config::use_context(name).map_err(fail)?;
            println!("{name}");
        }
        ContextCommand::Rm { name } => {
            config::remove(name).map_err(fail)?;
            println!("{name}");
        }
    }
    Ok(0)
}

fn main() {
    // SAFETY: restoring SIGPIPE's default disposition installs no handler
    // code. Rust ignores SIGPIPE, which turns `berth ps | head` into a
    // panic; a command-line tool should end quietly instead.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // A wrong flag or argument exits 125, as Docker's CLI does (clap's
    // own would be 2); help and version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
