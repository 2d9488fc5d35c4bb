//! The supervisor: turns assignments into containers on this node and
//! reports what they do. It prepares a bundle (overlay rootfs, config.json),
//! starts a shim for it, and relays the shim's frames to the cluster as
//! transitions and log chunks.
//!
//! One operation per file: `run.rs` (create, start, restart by policy),
//! `signal.rs` (stop, kill, pause), `remove.rs` (removal and stale copies,
//! with `trash.rs`, which deletes removed bundles off the removal's path),
//! `resume.rs` (after a registration), `attach.rs` (attachments and
//! execs), `image_ops.rs` (image operations), and `fencing.rs`, the one
//! generation check. This file holds the state they share and the
//! dispatch of assignments. `host.rs` is its access to the host (mounts,
//! shims, processes, the freezer), behind a trait so that `tests.rs` can
//! test it with a fake.

mod attach;
pub mod fencing;
pub mod host;
mod image_ops;
mod remove;
mod resume;
mod run;
mod signal;
#[cfg(test)]
mod tests;
mod trash;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::{self, image_request};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Mutex};

use crate::image::{import, load, save, ImageError, ImageStore, ImageSummary};
use crate::orders::{
    Assignment, AttachOutput, ContainerState, ImageReply, LocalCopy, LogLine, Order, Report,
    RunSpec, Transition,
};
use crate::runtime::cgroups::{Cgroup, Layout, Limits};
use crate::runtime::frame::Frame;
use crate::runtime::shim::CGROUP_ROOT;
use crate::runtime::spec::{self, ContainerConfig, NetworkMode};
use crate::runtime::{bundle, RuntimeError};
use crate::snapshot::{self, Snapshots};

use crate::logs::shipper::{self, ShipConfig, Shippers};
use host::Host;

/// A file in a bundle that says a user stopped the container.
const STOPPED_MARK: &str = "stopped";

/// Where the supervisor keeps its state, and how it starts shims.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub data_dir: PathBuf,
    /// How long the agent's lease on its movable containers lasts after
    /// the heartbeat the leader last answered was sent.
    pub lease: Duration,
    /// How container logs are shipped to the cluster.
    pub ship: ShipConfig,
    /// When each container's log file is rotated.
    pub log_rotation: crate::runtime::shim::Rotation,
    /// What an image archive or layer may cost this host.
    pub archive_limits: crate::image::limits::ArchiveLimits,
}

/// Errors of preparing a container.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another berth-agent is using the data dir {0} (its lock file is held)")]
    Locked(PathBuf),
}

/// What the agent records of a container in its bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub generation: u64,
    pub image_id: String,
    /// The image's layers, bottom first: kept while the container exists.
    #[serde(default)]
    pub diff_ids: Vec<String>,
    /// The image's STOPSIGNAL, if it has one.
    #[serde(default)]
    pub stop_signal: Option<i32>,
    /// The restart policy (no, always, unless-stopped, on-failure[:N]).
    #[serde(default)]
    pub restart: String,
}

/// The node's containers and images.
pub struct Supervisor {
    cfg: SupervisorConfig,
    /// An exclusive lock on the data dir, held while the agent runs.
    _lock: nix::fcntl::Flock<fs::File>,
    images: ImageStore,
    snapshots: Snapshots,
    host: Arc<dyn Host>,
    outbox: mpsc::UnboundedSender<Report>,
    /// Containers with a task relaying their shim.
    live: Mutex<HashSet<String>>,
    /// The newest generation seen of each container.
    generations: fencing::Generations,
    /// The lease the shims of movable containers watch.
    pub lease: crate::runtime::lease::Lease,
    /// The shippers of the containers' logs.
    shippers: Arc<Shippers>,
    /// Where removed bundles wait for their deletion.
    trash: trash::Trash,
    /// The build contexts this node keeps for their next build.
    kept_contexts: crate::build::kept::Kept,
    /// The images the cluster was told of last.
    reported_images: std::sync::Mutex<Option<Vec<ImageSummary>>>,
    /// Removals under way, one lock per container.
    removals: std::sync::Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    /// Containers whose run or create order is being carried out, from
    /// before its generation is checked until it is done: a log read that
    /// comes first waits for them (`live` is taken only later, by the
    /// task that makes the container).
    starting: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// Bumped whenever a container is made, starts or ends: the log reads
    /// that follow a container look at its files again at once.
    activity: tokio::sync::watch::Sender<u64>,
}

/// Milliseconds since the Unix epoch, for report times.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Supervisor {
    /// Opens (or makes) the data dir and takes its lock; reports go to
    /// `outbox`.
    pub fn open(
        cfg: SupervisorConfig,
        host: Arc<dyn Host>,
        outbox: mpsc::UnboundedSender<Report>,
    ) -> Result<Self, SupervisorError> {
        // Root only, from the data dir down: the containers' rootfs and
        // upper dirs hold images' setuid binaries and their bundles the
        // containers' secrets, which no other user of the host may reach
        // (the CVE-2021-41091 class).
        fs::create_dir_all(&cfg.data_dir)
            .and_then(|_| private_dir(&cfg.data_dir))
            .map_err(|source| SupervisorError::Io {
                path: cfg.data_dir.clone(),
                source,
            })?;
        let lock_path = cfg.data_dir.join("lock");
        let lock_file = fs::File::create(&lock_path).map_err(|source| SupervisorError::Io {
            path: lock_path.clone(),
            source,
        })?;
        // flock(2): two agents on one data dir would run every container
        // twice and corrupt each other's bundles.
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| SupervisorError::Locked(cfg.data_dir.clone()))?;
        // Builds do not outlive the agent that ran them.
        crate::build::clean_up(&cfg.data_dir.join("builds"));
        let images =
            ImageStore::open_with(&cfg.data_dir.join("images"), cfg.archive_limits.clone())?;
        let snapshots = Snapshots::open(&cfg.data_dir.join("snapshots"))?;
        let containers = cfg.data_dir.join("containers");
        fs::create_dir_all(&containers)
            .and_then(|_| private_dir(&containers))
            .map_err(|source| SupervisorError::Io {
                path: containers.clone(),
                source,
            })?;
        let trash = trash::Trash::open(&cfg.data_dir).map_err(|source| SupervisorError::Io {
            path: cfg.data_dir.join(trash::DIR),
            source,
        })?;
        let contexts = cfg.data_dir.join("contexts");
        let kept_contexts =
            crate::build::kept::Kept::open(&contexts).map_err(|source| SupervisorError::Io {
                path: contexts.clone(),
                source,
            })?;
        let lease = crate::runtime::lease::Lease::new(&cfg.data_dir, cfg.lease);
        let shippers = Arc::new(Shippers::new(cfg.ship.clone(), outbox.clone()));
        let mut me = Self {
            cfg,
            _lock: lock,
            images,
            snapshots,
            host,
            outbox,
            live: Mutex::new(HashSet::new()),
            generations: fencing::Generations::default(),
            lease,
            shippers,
            trash,
            kept_contexts,
            reported_images: Default::default(),
            removals: Default::default(),
            activity: tokio::sync::watch::Sender::new(0),
            starting: Arc::default(),
        };
        me.generations =
            fencing::Generations::new(me.local_metas().into_iter().map(|m| (m.id, m.generation)));
        Ok(me)
    }

    fn bundle_dir(&self, id: &str) -> Option<PathBuf> {
        // Ids come from the cluster; only plain hex names a directory.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.cfg.data_dir.join("containers").join(id))
    }

    fn send(&self, report: Report) {
        let _ = self.outbox.send(report);
    }

    /// Wakes the log reads that follow containers of this node.
    fn touch(&self) {
        self.activity.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn transition(&self, id: &str, generation: u64, to: ContainerState) {
        self.send(Report::Transition(Transition::now(id, generation, to)));
    }

    /// Reports that a container ended (or never ran, with `error`).
    fn exited(
        &self,
        id: &str,
        generation: u64,
        code: i32,
        error: Option<String>,
        oom_killed: bool,
    ) {
        self.send(Report::Transition(Transition {
            exit_code: code,
            error,
            oom_killed,
            ..Transition::now(id, generation, ContainerState::Exited)
        }));
    }

    /// The images this node holds, as the cluster sees them; remembered as
    /// what the cluster was told last (the registration sends them).
    pub fn images(&self) -> Vec<ImageSummary> {
        let now = self.images.list().unwrap_or_default();
        *self
            .reported_images
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(now.clone());
        now
    }

    /// Tells the cluster of the images if they changed since it was told
    /// last: a cached rebuild changes nothing, and its answer need not
    /// wait for a commit of the same inventory.
    fn report_images(&self) {
        let now = self.images.list().unwrap_or_default();
        let mut last = self
            .reported_images
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_ref() != Some(&now) {
            *last = Some(now.clone());
            self.send(Report::Images(now));
        }
    }

    fn local_metas(&self) -> Vec<Meta> {
        let dir = self.cfg.data_dir.join("containers");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| read_meta(&e.path()))
            .collect()
    }

    /// Every container this node holds on disk, for registration.
    pub fn local_containers(&self) -> Vec<LocalCopy> {
        let dir = self.cfg.data_dir.join("containers");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let b = e.path();
            let Some(meta) = read_meta(&b) else { continue };
            let (state, exit_code) = match fs::read_to_string(bundle::exit(&b)) {
                Ok(code) => (ContainerState::Exited, code.trim().parse().unwrap_or(255)),
                Err(_) if !bundle::pid(&b).exists() => (ContainerState::Created, 0),
                Err(_) if self.host.alive(&b) => (ContainerState::Running, 0),
                Err(_) => (ContainerState::Exited, 255),
            };
            out.push(LocalCopy {
                container: meta.id,
                generation: meta.generation,
                state,
                exit_code,
            });
        }
        out
    }

    /// Acts on an assignment from the leader, unless it is older than one
    /// already seen of the same container (invariant 3).
    pub async fn assign(self: Arc<Self>, a: Assignment) {
        let _starting = matches!(a.order, Order::Run { .. })
            .then(|| Starting::new(&self.starting, &a.container));
        if let fencing::Verdict::Stale { newest } =
            self.generations.check(&a.container, a.generation)
        {
            tracing::info!(
                id = %a.container,
                generation = a.generation,
                newest,
                "dropping a stale assignment"
            );
            return;
        }
        match &a.order {
            Order::Run { spec, start } => {
                let (spec, start) = (spec.clone(), *start);
                self.run(&a, &spec, start).await
            }
            Order::Remove => {
                if let Err(e) = self.remove(&a.container).await {
                    tracing::warn!(id = %a.container, "{e}");
                }
            }
            Order::Stop { signal, grace } => self.stop(&a, *signal, *grace).await,
            Order::Kill { signal } => {
                if matches!(signal, 2 | 9 | 15) {
                    if let Some(dir) = self.bundle_dir(&a.container) {
                        let _ = fs::write(dir.join(STOPPED_MARK), "");
                    }
                }
                self.signal(&a.container, *signal)
            }
            Order::Pause => self.freeze(&a, true),
            Order::Unpause => self.freeze(&a, false),
        }
    }

    /// Ships a container's log from where the cluster last acknowledged
    /// it (a new copy: from where the cluster's log of it stands), or wakes
    /// its shipper.
    fn ship(&self, id: &str, generation: u64, dir: &Path) {
        let from = shipper::acked(dir)
            .or_else(|| {
                fs::read_to_string(bundle::log_start(dir))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
            .unwrap_or(1);
        self.shippers.start(id, generation, dir, from);
    }

    /// How many last lines of each container the cluster keeps (from the
    /// registration): a shipper further behind skips to them.
    pub fn set_log_tail(&self, lines: u64) {
        self.shippers.set_tail(lines);
    }

    /// Hands the cluster's answer to a log batch to its shipper.
    pub fn log_ack(&self, id: &str, ack: crate::orders::LogAck) {
        self.shippers.ack(id, ack);
    }

    /// Answers a read of a container's log from this node's file.
    pub async fn read_logs(
        &self,
        req: crate::orders::ReadLogs,
        out: mpsc::Sender<Vec<LogLine>>,
    ) -> Result<(), String> {
        let dir = self
            .bundle_dir(&req.container)
            .ok_or_else(|| format!("No such container on this node: {}", req.container))?;
        // A follower (berth run) may ask before the container is made
        // here: it waits while the assignment is on its way or the
        // container is being made, not once making it has failed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut wake = self.activity.subscribe();
        while req.follow && !bundle::meta(&dir).exists() {
            let making = self.live.lock().await.contains(&req.container)
                || Starting::holds(&self.starting, &req.container);
            if (self.generations.knows(&req.container) && !making)
                || tokio::time::Instant::now() > deadline
            {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = wake.changed() => {}
            }
        }
        crate::logs::serve::serve(&dir, &req, &out, wake)
            .await
            .map_err(|e| e.to_string())
    }

    /// True while a container's first process runs (asked of its shim,
    /// runtime/process.rs).
    fn running(&self, dir: &Path) -> bool {
        !bundle::exit(dir).exists() && bundle::pid(dir).exists() && self.host.alive(dir)
    }
}

/// A container's entry in `starting`, for as long as its order is being
/// carried out (orders of one container may overlap, hence the count).
struct Starting {
    set: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    id: String,
}

impl Starting {
    fn new(set: &Arc<std::sync::Mutex<HashMap<String, usize>>>, id: &str) -> Self {
        *set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        Self {
            set: set.clone(),
            id: id.to_string(),
        }
    }

    fn holds(set: &std::sync::Mutex<HashMap<String, usize>>, id: &str) -> bool {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = set.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                set.remove(&self.id);
            }
        }
    }
}

fn read_meta(b: &Path) -> Option<Meta> {
    serde_json::from_slice(&fs::read(bundle::meta(b)).ok()?).ok()
}

/// Where a container's config looks things up on this node.
pub struct ConfigPaths {
    /// The mounted rootfs, for users and groups by name.
    pub rootfs: PathBuf,
    /// Where named volumes live.
    pub volumes: PathBuf,
    /// The lease file, for a container the cluster may move.
    pub lease: Option<PathBuf>,
}

/// Merges a container spec with its image's defaults, as Docker does: the
/// image's entrypoint and env come first; a given command replaces the
/// image's; a given entrypoint replaces the image's and drops its command.
pub fn container_config(
    id: &str,
    spec: &RunSpec,
    image: &oci_spec::image::ImageConfiguration,
    paths: &ConfigPaths,
) -> Result<ContainerConfig, RuntimeError> {
    let ic = image.config().clone().unwrap_or_default();
    let mut args: Vec<String> = match &spec.entrypoint {
        Some(e) => e.iter().filter(|e| !e.is_empty()).cloned().collect(),
        None => ic.entrypoint().clone().unwrap_or_default(),
    };
    if !spec.cmd.is_empty() {
        args.extend(spec.cmd.iter().cloned());
    } else if spec.entrypoint.is_none() {
        args.extend(ic.cmd().clone().unwrap_or_default());
    }
    let mut env: Vec<String> = ic.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(import::DEFAULT_PATH.to_string());
    }
    env.push(format!("HOSTNAME={}", spec.hostname));
    for e in &spec.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let cwd = if spec.workdir.is_empty() {
        ic.working_dir().clone().unwrap_or_default()
    } else {
        spec.workdir.clone()
    };
    let user = if spec.user.is_empty() {
        ic.user().clone().unwrap_or_default()
    } else {
        spec.user.clone()
    };
    let (uid, gid) = crate::runtime::users::resolve(&paths.rootfs, &user)?;
    let mut mounts = Vec::new();
    for v in &spec.volumes {
        mounts.push(volume_mount(v, &paths.volumes)?);
    }
    Ok(ContainerConfig {
        args,
        env,
        cwd,
        hostname: spec.hostname.clone(),
        network: NetworkMode::parse(&spec.network)?,
        uid,
        gid,
        limits: Limits {
            memory_bytes: spec.memory_bytes,
            cpu_quota_us: spec
                .nano_cpus
                .map(|n| n * crate::runtime::cgroups::CPU_PERIOD_US / 1_000_000_000),
            pids: spec.pids_limit,
        },
        cgroup: cgroup_of(id).display().to_string(),
        mounts,
        stdio: spec::Stdio {
            tty: spec.tty,
            stdin_open: spec.stdin_open,
            wait_for_attach: spec.wait_for_attach,
        },
        rlimits: spec
            .ulimits
            .iter()
            .map(|u| berth_proto::ulimit::parse(u).map_err(RuntimeError::Invalid))
            .collect::<Result<_, _>>()?,
        lease: paths.lease.clone(),
        security: security_of(&spec.security)?,
    })
}

/// A run's isolation options resolved on this node: the capabilities it
/// keeps, its devices, and its seccomp filter resolved for those
/// capabilities, this architecture and this kernel.
fn security_of(s: &crate::orders::Security) -> Result<spec::Security, RuntimeError> {
    use crate::runtime::{devices, seccomp};
    use berth_proto::security::{self as sec, DeviceMapping, SecurityOpt};
    let names = |v: &[String]| -> Result<Vec<String>, RuntimeError> {
        v.iter()
            .map(|c| sec::capability(c).map_err(RuntimeError::Invalid))
            .collect()
    };
    let capabilities =
        sec::effective_capabilities(s.privileged, &names(&s.cap_add)?, &names(&s.cap_drop)?);
    let mut profile = (!s.privileged).then(seccomp::default::profile);
    let mut no_new_privileges = false;
    for o in &s.security_opt {
        match SecurityOpt::parse(o).map_err(RuntimeError::Invalid)? {
            SecurityOpt::SeccompUnconfined => profile = None,
            SecurityOpt::SeccompProfile(json) => {
                profile = Some(sec::seccomp::Profile::parse(&json).map_err(RuntimeError::Invalid)?)
            }
            SecurityOpt::NoNewPrivileges(on) => no_new_privileges = on,
        }
    }
    let seccomp = profile
        .map(|p| seccomp::resolve(&p, &capabilities, &seccomp::Node::this()))
        .transpose()?;
    let (mut nodes, mut policy) = if s.privileged {
        (devices::host_devices(), devices::Policy::AllowAll)
    } else {
        (
            Vec::new(),
            devices::Policy::Allowlist(devices::docker_defaults()),
        )
    };
    for d in &s.devices {
        let m = DeviceMapping::parse(d).map_err(RuntimeError::Invalid)?;
        let (node, allowed) = devices::mapped(&m)?;
        nodes.retain(|n| n.path() != node.path());
        nodes.push(node);
        if let devices::Policy::Allowlist(list) = &mut policy {
            list.push(allowed);
        }
    }
    Ok(spec::Security {
        privileged: s.privileged,
        capabilities,
        devices: nodes,
        device_policy: policy,
        seccomp,
        no_new_privileges,
        read_only: s.read_only,
        tmpfs: s
            .tmpfs
            .iter()
            .map(|t| sec::Tmpfs::parse(t).map_err(RuntimeError::Invalid))
            .collect::<Result<_, _>>()?,
    })
}

/// Makes a directory root's alone (0700); a container sees its rootfs
/// through its own mount namespace, so no host path above it needs to be
/// open to its user.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// A `-v` volume as a bind mount: a host path (which must exist), or a
/// named volume under the agent's data dir (made on first use).
fn volume_mount(v: &str, volumes: &Path) -> Result<spec::BindMount, RuntimeError> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dest, readonly) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => {
            return Err(RuntimeError::Invalid(format!(
                "invalid volume {v:?}: use SOURCE:DEST[:ro]"
            )))
        }
    };
    let source = if src.starts_with('/') {
        let p = PathBuf::from(src);
        if !p.exists() {
            return Err(RuntimeError::Invalid(format!(
                "invalid mount config: bind source path does not exist: {src}"
            )));
        }
        p
    } else {
        if src.contains('/') || src.contains("..") {
            return Err(RuntimeError::Invalid(format!(
                "invalid volume name {src:?}"
            )));
        }
        let p = volumes.join(src).join("_data");
        fs::create_dir_all(&p).map_err(|source| RuntimeError::Io {
            path: p.clone(),
            source,
        })?;
        p
    };
    Ok(spec::BindMount {
        source,
        destination: dest.to_string(),
        readonly,
    })
}

/// True if the restart policy asks for another run after this exit.
pub fn should_restart(policy: &str, exit_code: i32, restarts: u32) -> bool {
    match policy.split_once(':') {
        None => match policy {
            "always" | "unless-stopped" => true,
            "on-failure" => exit_code != 0,
            _ => false,
        },
        Some(("on-failure", max)) => exit_code != 0 && restarts < max.parse::<u32>().unwrap_or(0),
        _ => false,
    }
}

/// A container's cgroup, relative to each hierarchy.
pub fn cgroup_of(id: &str) -> PathBuf {
    Path::new("berth").join(id)
}

/// Bytes of the regular files under a directory, as `ps --size` counts a
/// writable layer (hard links counted once).
pub fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// Parses an image's STOPSIGNAL ("SIGTERM", "TERM", "15").
fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}
