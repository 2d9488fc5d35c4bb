//! A cluster of real processes: berth-servers and berth-agents, each with
//! its own data directory (and agents with their own node names), driven
//! through the berth CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The address the server listens on inside the sandbox's own loopback.
pub const SERVER_ADDR: &str = "127.0.0.1:7420";

/// What a CLI command did.
#[derive(Debug, Clone)]
pub struct CommandResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CommandResult {
    /// Fails unless the command exited 0.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.code != 0 {
            bail!(
                "command failed with {}: {}{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// One server and one agent, stopped when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    server: Option<Child>,
    agent: Option<Child>,
    addr: String,
    /// Further servers (ids 2, 3, ...) of a multi-server cluster.
    extra: Vec<(String, Option<Child>)>,
    /// Flags added to every later start of the (first) server.
    server_flags: Vec<String>,
    /// Members start with no --id: the cluster gives them theirs, and
    /// their data dirs keep it.
    ids_from_cluster: bool,
    /// Further agents (node2, node3, ...): name, flags, process.
    agents: Vec<(String, Vec<String>, Option<Child>)>,
    /// Test hosts, when the cluster runs on them: the server on host
    /// "srv", each named agent on a host of its name, the CLI on "cli".
    net: Option<crate::net::TestNet>,
}

/// The directory holding the workspace's binaries: the test binary lives in
/// target/<profile>/deps, the binaries one level up.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // A test binary lives in target/<profile>/deps, a benchmark binary in
    // target/<profile>: look beside the executable, then one level up.
    let here = exe.parent().context("locating the target directory")?;
    let candidates = [
        here.to_path_buf(),
        here.parent().unwrap_or(here).to_path_buf(),
    ];
    for dir in &candidates {
        if ["berth", "berth-server", "berth-agent"]
            .iter()
            .all(|b| dir.join(b).exists())
        {
            return Ok(dir.clone());
        }
    }
    bail!(
        "the berth binaries are missing beside {}: build them first (cargo build --workspace --bins)",
        exe.display()
    )
}

impl Cluster {
    /// Starts a fresh server and agent, waits for the node to be ready, and
    /// imports a busybox image.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_at(SERVER_ADDR)
    }

    /// As [`Cluster::start`], with the server on `addr` (benchmarks run on
    /// the host's loopback, where another port may be taken).
    pub fn start_at(addr: &str) -> anyhow::Result<Self> {
        let mut c = Self::unstarted(addr)?;
        c.start_server(true)?;
        c.start_agent()?;
        c.wait_for_ready_node()?;
        c.import_busybox()?;
        Ok(c)
    }

    /// A cluster with nothing started yet, its scratch directory under
    /// /var/tmp (or BERTH_BENCH_TMP, for benchmarks on tmpfs).
    fn unstarted(addr: &str) -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir_in(
                std::env::var("BERTH_BENCH_TMP").unwrap_or_else(|_| "/var/tmp".into()),
            )?,
            bin: bin_dir()?,
            server: None,
            agent: None,
            addr: addr.to_string(),
            extra: Vec::new(),
            server_flags: Vec::new(),
            ids_from_cluster: false,
            agents: Vec::new(),
            net: None,
        })
    }

    /// As [`Cluster::start_nodes`], with every process on a test host of
    /// its own (a network namespace on a shared bridge, net.rs): the
    /// server on "srv", each agent on a host named as its node, the CLI on
    /// "cli". [`Cluster::cut`] and [`Cluster::heal`] cut links.
    pub fn start_on_test_hosts(
        server_flags: &[&str],
        nodes: &[(&str, &[&str])],
    ) -> anyhow::Result<Self> {
        let mut net = crate::net::TestNet::new()?;
        let srv = net.add_host("srv", 1)?;
        net.add_host("cli", 2)?;
        for (i, (name, _)) in nodes.iter().enumerate() {
            net.add_host(name, 10 + i as u8)?;
        }
        let mut c = Self::unstarted(&format!("{srv}:7420"))?;
        c.net = Some(net);
        c.server_flags = server_flags.iter().map(|f| f.to_string()).collect();
        c.start_server(true)?;
        for (name, flags) in nodes {
            c.add_agent(name, flags)?;
        }
        c.ready_with_busybox(nodes.iter().map(|(n, _)| *n))?;
        Ok(c)
    }

    /// Cuts test host `host` off from every other (both ways).
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        self.net
            .as_ref()
            .context("the cluster is not on test hosts")?
            .cut(host)
    }

    /// Joins a cut test host again.
    pub fn heal_host(&self, host: &str) -> anyhow::Result<()> {
        self.net
            .as_ref()
            .context("the cluster is not on test hosts")?
            .heal(host)
    }

    /// A command for the CLI: on the "cli" test host when there are hosts.
    pub fn cli_command(&self) -> Command {
        let bin = self.bin.join("berth");
        let mut cmd = match &self.net {
            Some(_) => crate::net::TestNet::command("cli", &bin),
            None => Command::new(bin),
        };
        cmd.env("BERTH_CONFIG", self.admin_conf());
        // The CLI's own files (what it recorded of build contexts it sent)
        // stay with the cluster, out of the user's ~/.berth.
        cmd.env("BERTH_CONFIG_DIR", self.cli_dir());
        cmd
    }

    /// The CLI's own directory for this cluster (BERTH_CONFIG_DIR).
    pub fn cli_dir(&self) -> PathBuf {
        self.dir.path().join("cli")
    }

    /// The admin credential the first server wrote at its bootstrap.
    pub fn admin_conf(&self) -> PathBuf {
        self.dir.path().join("server").join("admin.conf")
    }

    /// The cluster's join token for `role` (agent or server).
    pub fn join_token(&self, role: &str) -> anyhow::Result<String> {
        let r = self
            .berth(&["cluster", "join-token", role, "-q"])
            .ok()
            .with_context(|| format!("getting the {role} join token"))?;
        Ok(r.stdout.trim().to_string())
    }

    /// `--token T` for a process whose data dir holds no credentials yet.
    fn token_flag(&self, data: &Path, role: &str) -> anyhow::Result<Vec<String>> {
        if data.join("tls").join("cert.pem").exists() {
            return Ok(Vec::new());
        }
        Ok(vec!["--token".to_string(), self.join_token(role)?])
    }

    /// A gRPC client of the Cluster API at `addr`, with the admin
    /// credential.
    pub async fn client(
        &self,
        addr: &str,
    ) -> anyhow::Result<
        berth_proto::cluster::cluster_client::ClusterClient<tonic::transport::Channel>,
    > {
        let tls = admin_tls(&self.admin_conf())?;
        client_at(addr, &tls).await
    }

    /// The admin TLS configuration of this cluster.
    pub fn admin_tls(&self) -> anyhow::Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
        admin_tls(&self.admin_conf())
    }

    /// Starts one server (with these flags) and agents named `nodes` (the
    /// first is node1), waits until every node is ready, and imports busybox
    /// on all of them.
    pub fn start_nodes(server_flags: &[&str], nodes: &[(&str, &[&str])]) -> anyhow::Result<Self> {
        let mut c = Self::unstarted(SERVER_ADDR)?;
        c.server_flags = server_flags.iter().map(|f| f.to_string()).collect();
        c.start_server(true)?;
        for (name, flags) in nodes {
            c.add_agent(name, flags)?;
        }
        c.ready_with_busybox(nodes.iter().map(|(n, _)| *n))?;
        Ok(c)
    }

    /// Waits until every named node is ready, then imports busybox on all.
    fn ready_with_busybox<'a>(&self, nodes: impl Iterator<Item = &'a str>) -> anyhow::Result<()> {
        let names: Vec<&str> = nodes.collect();
        self.wait_until(Duration::from_secs(30), "every node to be ready", |c| {
            names.iter().all(|n| c.node_ready(n))
        })?;
        self.import_busybox()
    }

    /// Starts an agent named `name` with its own data dir (and these flags).
    pub fn add_agent(&mut self, name: &str, flags: &[&str]) -> anyhow::Result<()> {
        self.agents.push((
            name.to_string(),
            flags.iter().map(|f| f.to_string()).collect(),
            None,
        ));
        self.start_named_agent(name)
    }

    /// Starts (again) the agent named `name`, on its data dir.
    pub fn start_named_agent(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self
            .agents
            .iter()
            .position(|(n, _, _)| n == name)
            .with_context(|| format!("no agent named {name}"))?;
        let data = self.dir.path().join(format!("agent-{name}"));
        let servers = self.all_addrs();
        let mut args = vec![
            "--data-dir".to_string(),
            data.to_string_lossy().into_owned(),
            "--server".to_string(),
            servers,
            "--name".to_string(),
            name.to_string(),
        ];
        args.extend(self.token_flag(&data, "agent")?);
        args.extend(self.agents[i].1.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self.spawn_on(
            Some(name),
            "berth-agent",
            &args,
            &format!("agent-{name}.log"),
        )?;
        self.agents[i].2 = Some(child);
        Ok(())
    }

    /// kill -9 of the agent named `name`, and waits until it is gone (its
    /// shims live on, as they would after a crash).
    pub fn kill_named_agent(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some((_, _, child)) = self.agents.iter_mut().find(|(n, _, _)| n == name) {
            if let Some(mut a) = child.take() {
                a.kill()?;
                a.wait()?;
            }
        }
        Ok(())
    }

    /// The data dir of the agent named `name`.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{name}"))
    }

    /// True if `berth node ls` shows the node ready.
    pub fn node_ready(&self, name: &str) -> bool {
        self.node_status(name).as_deref() == Some("ready")
    }

    /// The node's status as `berth node ls` shows it.
    pub fn node_status(&self, name: &str) -> Option<String> {
        let r = self.berth(&["node", "ls"]);
        r.stdout.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(name)).then(|| cols.next().unwrap_or_default().to_string())
        })
    }

    /// Imports the busybox image, built from busybox-static, on every node.
    fn import_busybox(&self) -> anyhow::Result<()> {
        let tar = self.dir.path().join("busybox.tar");
        crate::images::busybox_rootfs_tar(&tar)?;
        self.berth(&["import", tar.to_str().unwrap_or_default(), "busybox"])
            .ok()
            .context("importing busybox")?;
        Ok(())
    }

    /// The cluster's scratch directory (data dirs and logs live under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&self, name: &str, args: &[&str], log: &str) -> anyhow::Result<Child> {
        self.spawn_on(None, name, args, log)
    }

    /// Starts a process, on test host `host` if there is one.
    fn spawn_on(
        &self,
        host: Option<&str>,
        name: &str,
        args: &[&str],
        log: &str,
    ) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))?;
        let mut cmd = match (host, &self.net) {
            (Some(h), Some(_)) => crate::net::TestNet::command(h, &self.bin.join(name)),
            _ => Command::new(self.bin.join(name)),
        };
        cmd.args(args)
            // The Raft fault layer (raft/faults.rs) answers to partition().
            .env("BERTH_FAULTS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))
    }

    /// Starts the server on its data dir (bootstrapping on the first start).
    pub fn start_server(&mut self, bootstrap: bool) -> anyhow::Result<()> {
        let data = self.dir.path().join("server");
        let addr = self.addr.clone();
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            &addr,
        ];
        if bootstrap {
            args.push("--bootstrap");
        }
        args.extend(self.server_flags.iter().map(String::as_str));
        self.server = Some(self.spawn_on(Some("srv"), "berth-server", &args, "server.log")?);
        if bootstrap {
            let conf = self.admin_conf();
            self.wait_until(Duration::from_secs(30), "the admin credential", |_| {
                conf.exists()
            })?;
        }
        Ok(())
    }

    /// kill -9 of the server, and a start on the same data dir with these
    /// flags added (for example a shorter `--node-lost-ms`).
    pub fn restart_server_with(&mut self, flags: &[&str]) -> anyhow::Result<()> {
        self.kill_server()?;
        self.server_flags = flags.iter().map(|f| f.to_string()).collect();
        self.start_server(false)?;
        self.wait_for_ready_node()
    }

    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let data = self.dir.path().join("agent");
        let servers = self.all_addrs();
        let token = self.token_flag(&data, "agent")?;
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--server",
            &servers,
            "--name",
            "node1",
        ];
        args.extend(token.iter().map(String::as_str));
        self.agent = Some(self.spawn("berth-agent", &args, "agent.log")?);
        Ok(())
    }

    /// kill -9 of the server, and waits until it is gone.
    pub fn kill_server(&mut self) -> anyhow::Result<()> {
        if let Some(mut s) = self.server.take() {
            s.kill()?;
            s.wait()?;
        }
        Ok(())
    }

    /// Starts a cluster of `n` servers (ids 1 to n on ports 7420 and up,
    /// the others joining the first) and one agent that knows them all.
    pub fn start_servers(n: usize) -> anyhow::Result<Self> {
        Self::start_servers_at(n, 7420)
    }

    /// As [`Cluster::start_servers`], on ports from `base_port` up.
    pub fn start_servers_at(n: usize, base_port: u16) -> anyhow::Result<Self> {
        let mut c = Self::unstarted(&format!("127.0.0.1:{base_port}"))?;
        c.start_server(true)?;
        for id in 2..=n {
            let addr = format!("127.0.0.1:{}", base_port as usize + id - 1);
            c.extra.push((addr, None));
            c.start_member(id)?;
        }
        c.wait_until(Duration::from_secs(30), "every server to join", |c| {
            let s = c.berth(&["cluster", "status"]).stdout;
            s.lines()
                .skip(2)
                .filter(|l| l.contains("voter") || l.contains("leader"))
                .count()
                == n
        })?;
        c.start_agent()?;
        c.wait_for_ready_node()?;
        c.import_busybox()?;
        Ok(c)
    }

    /// Starts `n` servers, none of them given an --id: the first
    /// bootstraps (and is 1), the others join one at a time and get theirs
    /// from the cluster (2, 3, ... in the order they join). No agent.
    pub fn start_servers_without_ids(n: usize, base_port: u16) -> anyhow::Result<Self> {
        let mut c = Self::unstarted(&format!("127.0.0.1:{base_port}"))?;
        c.ids_from_cluster = true;
        c.start_server(true)?;
        for id in 2..=n {
            let addr = format!("127.0.0.1:{}", base_port as usize + id - 1);
            c.extra.push((addr.clone(), None));
            c.start_member(id)?;
            let member = (id.to_string(), addr);
            c.wait_until(Duration::from_secs(30), "the server to join", |c| {
                c.members().contains(&member)
            })?;
        }
        Ok(c)
    }

    /// The members `berth cluster status` lists: (id, address), in its
    /// order.
    pub fn members(&self) -> Vec<(String, String)> {
        self.berth(&["cluster", "status"])
            .stdout
            .lines()
            .skip(2)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), f.get(1)?.to_string()))
            })
            .collect()
    }

    /// Starts `n` servers and agents named `nodes` (node1 first, with no
    /// flags), waits until every node is ready, and imports busybox on all.
    pub fn start_servers_with_nodes(n: usize, nodes: &[&str]) -> anyhow::Result<Self> {
        let mut c = Self::start_servers(n)?;
        for name in nodes.iter().filter(|n| **n != "node1") {
            c.add_agent(name, &[])?;
        }
        c.ready_with_busybox(nodes.iter().copied())?;
        Ok(c)
    }

    /// A number from the first line of `berth cluster status` ("applied",
    /// "snapshot", "purged", ...).
    pub fn status_field(status: &str, name: &str) -> Option<u64> {
        status
            .lines()
            .next()?
            .split(&format!("{name}: "))
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The id of the member that leads now, from `berth cluster status`.
    pub fn leader(&self) -> Option<usize> {
        let s = self.berth(&["cluster", "status"]).stdout;
        s.lines()
            .next()?
            .strip_prefix("leader: ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Every server address, comma-separated, as BERTH_HOST takes them.
    pub fn all_addrs(&self) -> String {
        std::iter::once(self.addr.clone())
            .chain(self.extra.iter().map(|(a, _)| a.clone()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts server `id` (2 and up) on its data dir, joining the first.
    pub fn start_member(&mut self, id: usize) -> anyhow::Result<()> {
        let data = self.dir.path().join(format!("server{id}"));
        let addr = self.extra[id - 2].0.clone();
        let first = self.addr.clone();
        let id_s = id.to_string();
        let token = self.token_flag(&data, "server")?;
        let mut args = vec![
            "--data-dir",
            data.to_str().unwrap_or_default(),
            "--listen",
            &addr,
            "--join",
            &first,
        ];
        args.extend(token.iter().map(String::as_str));
        if !self.ids_from_cluster {
            args.extend(["--id", &id_s]);
        }
        let child = self.spawn("berth-server", &args, &format!("server{id}.log"))?;
        self.extra[id - 2].1 = Some(child);
        Ok(())
    }

    /// Adds server `id` (the next id) to a running cluster: it joins.
    pub fn add_member(&mut self, id: usize) -> anyhow::Result<()> {
        let base: usize = self
            .addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(7420);
        self.extra
            .push((format!("127.0.0.1:{}", base + id - 1), None));
        self.start_member(id)
    }

    /// kill -9 of server `id` (1 is the first), and waits until it is gone.
    pub fn kill_member(&mut self, id: usize) -> anyhow::Result<()> {
        if id == 1 {
            return self.kill_server();
        }
        if let Some(mut s) = self.extra[id - 2].1.take() {
            s.kill()?;
            s.wait()?;
        }
        Ok(())
    }

    /// Stops server `id` as an operator would (SIGTERM), and waits until it
    /// has exited (at most ten seconds, then kill -9).
    pub fn stop_member(&mut self, id: usize) -> anyhow::Result<()> {
        let child = if id == 1 {
            self.server.take()
        } else {
            self.extra[id - 2].1.take()
        };
        let Some(mut child) = child else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                anyhow::bail!("server {id} did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The data dir of member `id` (1 is the first server).
    pub fn server_dir(&self, id: usize) -> PathBuf {
        if id == 1 {
            self.dir.path().join("server")
        } else {
            self.dir.path().join(format!("server{id}"))
        }
    }

    /// The address of server `id`.
    pub fn member_addr(&self, id: usize) -> String {
        if id == 1 {
            self.addr.clone()
        } else {
            self.extra[id - 2].0.clone()
        }
    }

    /// Cuts server `id` off from every other server (both ways) through
    /// the servers' Raft fault layer; `heal` undoes every cut.
    pub fn partition(&self, id: usize, members: usize) -> anyhow::Result<()> {
        let others: Vec<String> = (1..=members)
            .filter(|m| *m != id)
            .map(|m| m.to_string())
            .collect();
        std::fs::write(
            self.server_dir(id).join("faults"),
            format!("blocked: {}\n", others.join(",")),
        )?;
        for m in (1..=members).filter(|m| *m != id) {
            std::fs::write(
                self.server_dir(m).join("faults"),
                format!("blocked: {id}\n"),
            )?;
        }
        Ok(())
    }

    /// Removes every cut made by [`Cluster::partition`].
    pub fn heal(&self, members: usize) -> anyhow::Result<()> {
        for m in 1..=members {
            let _ = std::fs::remove_file(self.server_dir(m).join("faults"));
        }
        Ok(())
    }

    /// Makes `n` small writes (labels `fill=K` on node1), each its own
    /// entry, so that the log grows by them: for a test waiting on a
    /// snapshot, where how many entries earlier writes made depends on
    /// how much the server batched them. Failures are ignored.
    pub fn fill_writes(&self, n: usize) {
        for k in 0..n {
            let _ = self.berth(&[
                "node",
                "update",
                "--label-add",
                &format!("fill={k}"),
                "node1",
            ]);
        }
    }

    /// Runs the CLI, killing it after `limit` (then the code is -1).
    pub fn berth_within(&self, args: &[&str], limit: Duration) -> CommandResult {
        let child = self
            .cli_command()
            .args(args)
            .env("BERTH_HOST", self.all_addrs())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            return CommandResult {
                code: -1,
                stdout: String::new(),
                stderr: "cannot run berth".into(),
            };
        };
        // The pipes are read while it runs: a large output must not fill
        // them and stop it.
        let read = |p: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = p {
                    let _ = p.read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = read(child.stdout.take().map(|p| Box::new(p) as _));
        let err = read(child.stderr.take().map(|p| Box::new(p) as _));
        let start = Instant::now();
        let code = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s.code().unwrap_or(-1),
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return CommandResult {
                        code: -1,
                        stdout: out.join().unwrap_or_default(),
                        stderr: "timed out".into(),
                    };
                }
            }
        };
        CommandResult {
            code,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }

    /// kill -9 of the agent, and waits until it is gone.
    pub fn kill_agent(&mut self) -> anyhow::Result<()> {
        if let Some(mut a) = self.agent.take() {
            a.kill()?;
            a.wait()?;
        }
        Ok(())
    }

    /// Starts the CLI in the background, its output going to `stdout`
    /// and `stderr`.
    pub fn berth_spawn(
        &self,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> std::io::Result<Child> {
        self.cli_command()
            .args(args)
            .env("BERTH_HOST", self.all_addrs())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
    }

    /// Runs the CLI and returns its stdout as bytes (it must succeed).
    pub fn berth_bytes(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let o = self
            .cli_command()
            .args(args)
            .env("BERTH_HOST", self.all_addrs())
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(o.stdout)
    }

    /// Runs the berth CLI against this cluster.
    pub fn berth(&self, args: &[&str]) -> CommandResult {
        let out = self
            .cli_command()
            .args(args)
            .env("BERTH_HOST", self.all_addrs())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => CommandResult {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => CommandResult {
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot run berth: {e}"),
            },
        }
    }

    /// Runs the berth CLI on a new pseudo-terminal, as a user at a terminal.
    pub fn berth_pty(&self, args: &[&str]) -> anyhow::Result<PtySession> {
        let pty = nix::pty::openpty(None, None)?;
        let slave = std::fs::File::from(pty.slave);
        let child = self
            .cli_command()
            .args(args)
            .env("BERTH_HOST", self.all_addrs())
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave))
            .spawn()?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut master = std::fs::File::from(pty.master);
        let writer = master.try_clone()?;
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        Ok(PtySession {
            child,
            writer,
            output,
        })
    }

    /// Polls `berth node ls` until the node is ready (30 s at most).
    pub fn wait_for_ready_node(&self) -> anyhow::Result<()> {
        self.wait_until(Duration::from_secs(30), "node1 to be ready", |c| {
            c.node_ready("node1")
        })
    }

    /// Polls a condition every 50 ms until it holds or `limit` passes.
    pub fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        cond: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if cond(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out after {limit:?} waiting for {what}\n{}",
            self.logs()
        )
    }

    /// The server's and the agent's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
                format!("--- {n}\n{text}\n")
            })
            .collect()
    }
}

/// The ids of the containers every agent under `dir` holds.
fn container_ids(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_dir(e.path().join("containers")).ok())
        .flat_map(|ids| {
            ids.flatten()
                .map(|i| i.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Ends the containers of every agent under `dir` once their agents are
/// gone, and removes their cgroups, which the shims would have removed:
/// test after test, they would pile up on the host otherwise.
fn end_containers(dir: &Path) {
    const CONTROLLERS: [&str; 5] = ["pids", "memory", "cpu", "freezer", "devices"];
    let ids = container_ids(dir);
    for id in &ids {
        for procs in [
            format!("/sys/fs/cgroup/pids/berth/{id}/cgroup.procs"),
            format!("/sys/fs/cgroup/berth/{id}/cgroup.procs"),
        ] {
            for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for id in &ids {
        let mut dirs: Vec<String> = CONTROLLERS
            .iter()
            .map(|c| format!("/sys/fs/cgroup/{c}/berth/{id}"))
            .collect();
        dirs.push(format!("/sys/fs/cgroup/berth/{id}"));
        for d in dirs {
            // rmdir(2) of a cgroup succeeds once no process is left in it.
            while std::path::Path::new(&d).exists()
                && std::fs::remove_dir(&d).is_err()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Thaws the frozen containers of every agent under `dir`: a paused
/// container's processes cannot die of the SIGKILL that ends the test's
/// pid namespace until they are thawed, and the test would wait forever.
fn thaw_containers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ids) = std::fs::read_dir(e.path().join("containers")) else {
            continue;
        };
        for id in ids.flatten() {
            let id = id.file_name();
            let id = id.to_string_lossy();
            let _ = std::fs::write(
                format!("/sys/fs/cgroup/freezer/berth/{id}/freezer.state"),
                "THAWED",
            );
            let _ = std::fs::write(format!("/sys/fs/cgroup/berth/{id}/cgroup.freeze"), "0");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        thaw_containers(self.dir.path());
        for (_, _, child) in &mut self.agents {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for (_, child) in &mut self.extra {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for c in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        end_containers(self.dir.path());
        unmount_under(self.dir.path());
    }
}

/// Detaches every mount under `dir` (container root filesystems, an
/// agent's overlay mounts), deepest first, so that the temporary dir can
/// be removed when it drops: a mount point left in place made its removal
/// fail with EBUSY, and the dir stayed behind on the host after the test's
/// mount namespace ended.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<std::path::PathBuf> = info
        .lines()
        // The fifth field is the mount point (octal escapes aside, which
        // the paths of a test's dirs do not have).
        .filter_map(|l| l.split(' ').nth(4))
        .map(std::path::PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        // umount2 with MNT_DETACH: the mount goes at once, even if a
        // process killed a moment ago still holds a file in it.
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The berth CLI running on a pseudo-terminal.
pub struct PtySession {
    child: Child,
    writer: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl PtySession {
    /// Types bytes at the terminal.
    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Everything the terminal has shown so far, as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until the terminal shows `text` (10 s at most).
    pub fn expect(&self, text: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.screen().contains(text) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the terminal never showed {text:?}; it shows {:?}",
            self.screen()
        )
    }

    /// Waits for the CLI to end (10 s at most) and returns its exit code.
    pub fn wait(&mut self) -> anyhow::Result<i32> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        bail!("berth did not end; the terminal shows {:?}", self.screen())
    }
}

/// The TLS configuration of an admin credential file (admin.conf).
pub fn admin_tls(
    path: &Path,
) -> anyhow::Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let conf: berth_proto::credential::AdminConf = serde_json::from_str(&text)?;
    Ok(berth_proto::transport::client_config(&conf.credentials())?)
}

/// A Cluster API client at `addr` over TLS with `tls`.
pub async fn client_at(
    addr: &str,
    tls: &std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> anyhow::Result<berth_proto::cluster::cluster_client::ClusterClient<tonic::transport::Channel>>
{
    let channel = berth_proto::transport::endpoint(addr)?
        .connect_timeout(Duration::from_secs(3))
        .connect_with_connector(berth_proto::transport::Connector::new(tls.clone()))
        .await?;
    Ok(
        berth_proto::cluster::cluster_client::ClusterClient::new(channel)
            .max_decoding_message_size(berth_proto::limits::MAX_MESSAGE)
            .max_encoding_message_size(berth_proto::limits::MAX_MESSAGE),
    )
}

/// Connects to whichever of `addrs` leads now, with its Raft id.
pub async fn leader_client(
    addrs: &[String],
    tls: &std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> Option<(
    u64,
    berth_proto::cluster::cluster_client::ClusterClient<tonic::transport::Channel>,
)> {
    use berth_proto::cluster::ClusterStatusRequest;
    for a in addrs {
        let Ok(mut c) = client_at(a, tls).await else {
            continue;
        };
        let Ok(s) = c.get_cluster_status(ClusterStatusRequest {}).await else {
            continue;
        };
        let s = s.into_inner();
        if s.leader_id == Some(s.id) {
            return Some((s.id, c));
        }
    }
    None
}

/// Sets one label of `node` through the API (one Raft commit): the write
/// the control-plane tests and bench-raft load the cluster with. True if
/// the cluster acknowledged it.
pub async fn set_label(
    client: &mut berth_proto::cluster::cluster_client::ClusterClient<tonic::transport::Channel>,
    node: &str,
    key: String,
    value: String,
) -> bool {
    let mut set = std::collections::HashMap::new();
    set.insert(key, value);
    client
        .label_node(berth_proto::cluster::LabelNodeRequest {
            node: node.into(),
            set,
            remove: vec![],
        })
        .await
        .is_ok()
}
