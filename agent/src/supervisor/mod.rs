//! The supervisor: turns assignments into containers on this node and
//! reports what they do. It prepares a bundle (overlay rootfs, config.json),
//! starts a shim for it, and relays the shim's frames to the cluster as
//! transitions and log chunks.

pub mod fencing;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::{
    self, agent_message, image_request, Action, AgentMessage, Assign, LocalContainer,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, Mutex};

use crate::image::{import, load, save, ImageError, ImageStore};
use crate::runtime::cgroups::{Cgroup, Layout, Limits};
use crate::runtime::frame::Frame;
use crate::runtime::shim::CGROUP_ROOT;
use crate::runtime::spec::{self, ContainerConfig, NetworkMode};
use crate::runtime::{bundle, RuntimeError};
use crate::snapshot::{self, Snapshots};

/// A file in a bundle that says a user stopped the container.
const STOPPED_MARK: &str = "stopped";

/// The most log lines sent in one chunk.
const CHUNK_LINES: usize = 256;

/// Where the supervisor keeps its state, and how it starts shims.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub data_dir: PathBuf,
    /// The executable whose `shim` subcommand runs a container.
    pub shim_exe: PathBuf,
    /// How long the agent's lease on its movable containers lasts after
    /// the heartbeat the leader last answered was sent.
    pub lease: Duration,
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

/// Log lines of a bundle's log file from sequence number `from`, reading
/// from byte `offset`; returns them with the offset after the last complete
/// line.
pub fn read_log_from(dir: &Path, from: u64, offset: u64) -> (Vec<agent::LogLine>, u64) {
    use std::io::{BufRead, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(bundle::log(dir)) else {
        return (Vec::new(), offset);
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset);
    }
    let mut reader = std::io::BufReader::new(f);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) if !line.ends_with('\n') => {
                // A line the shim is still writing: read it next time.
                let _ = n;
                break;
            }
            Ok(n) => pos += n as u64,
        }
        if let Ok(Frame::Log {
            seq,
            stream,
            time_ns,
            line,
        }) = serde_json::from_str::<Frame>(line.trim_end())
        {
            if seq >= from {
                out.push(agent::LogLine {
                    seq,
                    stream,
                    time_ns,
                    line: line.into_bytes(),
                });
            }
        }
    }
    (out, pos)
}

/// The node's containers and images.
pub struct Supervisor {
    cfg: SupervisorConfig,
    /// An exclusive lock on the data dir, held while the agent runs.
    _lock: nix::fcntl::Flock<fs::File>,
    images: ImageStore,
    snapshots: Snapshots,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    /// Containers with a task relaying their shim.
    live: Mutex<HashSet<String>>,
    /// The newest generation seen of each container.
    generations: fencing::Generations,
    /// The lease the shims of movable containers watch.
    pub lease: crate::runtime::lease::Lease,
    /// Removals under way, one lock per container.
    removals: std::sync::Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Supervisor {
    pub fn open(
        cfg: SupervisorConfig,
        outbox: mpsc::UnboundedSender<AgentMessage>,
    ) -> Result<Self, SupervisorError> {
        fs::create_dir_all(&cfg.data_dir).map_err(|source| SupervisorError::Io {
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
        let images = ImageStore::open(&cfg.data_dir.join("images"))?;
        let snapshots = Snapshots::open(&cfg.data_dir.join("snapshots"))?;
        let containers = cfg.data_dir.join("containers");
        fs::create_dir_all(&containers).map_err(|source| SupervisorError::Io {
            path: containers.clone(),
            source,
        })?;
        let lease = crate::runtime::lease::Lease::new(&cfg.data_dir, cfg.lease);
        let mut me = Self {
            cfg,
            _lock: lock,
            images,
            snapshots,
            outbox,
            live: Mutex::new(HashSet::new()),
            generations: fencing::Generations::default(),
            lease,
            removals: Default::default(),
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

    fn send(&self, msg: agent_message::Msg) {
        let _ = self.outbox.send(AgentMessage { msg: Some(msg) });
    }

    fn transition(
        &self,
        id: &str,
        generation: u64,
        to: &str,
        exit_code: i32,
        error: String,
        image_id: String,
    ) {
        self.send(agent_message::Msg::Transition(agent::Transition {
            container_id: id.to_string(),
            generation,
            to: to.to_string(),
            at_ms: now_ms(),
            exit_code,
            error,
            image_id,
            oom_killed: false,
        }));
    }

    /// Reports that a container ended.
    fn exited(&self, id: &str, generation: u64, code: i32, error: String, oom_killed: bool) {
        self.send(agent_message::Msg::Transition(agent::Transition {
            container_id: id.to_string(),
            generation,
            to: "exited".to_string(),
            at_ms: now_ms(),
            exit_code: code,
            error,
            image_id: String::new(),
            oom_killed,
        }));
    }

    /// The images this node holds, as the cluster sees them.
    pub fn images(&self) -> Vec<agent::Image> {
        self.images
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|i| agent::Image {
                id: i.id,
                tags: i.tags,
                size: i.size,
                created_ms: i.created_ms,
            })
            .collect()
    }

    /// Carries out an image operation and answers it through the outbox:
    /// downloads as data pieces, then one last reply with the result as
    /// JSON or the error. Operations that change the images send the new
    /// inventory first, so the cluster knows of it when the answer comes.
    pub async fn image_op(self: Arc<Self>, request_id: u64, op: image_request::Op, data: Vec<u8>) {
        let me = self.clone();
        let changes_images = !matches!(
            op,
            image_request::Op::Save(_)
                | image_request::Op::Inspect(_)
                | image_request::Op::Export(_)
                | image_request::Op::RemoveContainer(_)
        );
        let result = match op {
            // Removal waits for the process to die: it runs here, not on a
            // blocking thread.
            image_request::Op::RemoveContainer(r) => {
                self.remove(&r.container_id).await.map(|()| None)
            }
            op => tokio::task::spawn_blocking(move || me.image_op_blocking(request_id, op, data))
                .await
                .unwrap_or_else(|e| Err(format!("the image task failed: {e}"))),
        };
        if changes_images {
            self.send(agent_message::Msg::Images(agent::ImageInventory {
                images: self.images(),
            }));
        }
        let (json, error) = match result {
            Ok(v) => (v.map(|v| v.to_string()).unwrap_or_default(), String::new()),
            Err(e) => (String::new(), e),
        };
        self.send(agent_message::Msg::ImageReply(agent::ImageReply {
            request_id,
            data: Vec::new(),
            last: true,
            error,
            json,
        }));
    }

    fn image_op_blocking(
        &self,
        request_id: u64,
        op: image_request::Op,
        data: Vec<u8>,
    ) -> Result<Option<serde_json::Value>, String> {
        let err = |e: ImageError| e.to_string();
        let to_json = |v: &dyn erased::Json| v.json();
        match op {
            image_request::Op::Import(i) => {
                let s = import::import_rootfs(
                    &self.images,
                    &self.snapshots,
                    &i.reference,
                    &data,
                    now_ms(),
                )
                .map_err(err)?;
                Ok(Some(to_json(&vec![s])))
            }
            image_request::Op::Load(_) => {
                let loaded = load::load_archive(&self.images, &self.snapshots, data.as_slice())
                    .map_err(err)?;
                Ok(Some(to_json(&loaded)))
            }
            image_request::Op::Save(s) => {
                let mut w = ChunkWriter::new(request_id, self.outbox.clone());
                save::save_archive(&self.images, &s.references, &mut w).map_err(err)?;
                w.finish();
                Ok(None)
            }
            image_request::Op::Tag(t) => {
                self.images.tag(&t.source, &t.target).map_err(err)?;
                Ok(None)
            }
            image_request::Op::Remove(r) => {
                let keep: Vec<String> = self
                    .local_metas()
                    .into_iter()
                    .flat_map(|m| m.diff_ids)
                    .collect();
                let (untagged, deleted) = self
                    .images
                    .remove(&r.reference, &self.snapshots, &keep)
                    .map_err(err)?;
                Ok(Some(
                    serde_json::json!({"untagged": untagged, "deleted": deleted}),
                ))
            }
            image_request::Op::Inspect(i) => {
                Ok(Some(self.images.inspect(&i.reference).map_err(err)?))
            }
            image_request::Op::RemoveContainer(_) => {
                Err("container removal is not an image operation".into())
            }
            image_request::Op::Top(t) => {
                let dir = self
                    .bundle_dir(&t.container_id)
                    .filter(|d| d.exists())
                    .ok_or_else(|| format!("No such container on this node: {}", t.container_id))?;
                if self.running_pid(&dir).is_none() {
                    return Err(format!("container {} is not running", t.container_id));
                }
                let cg = Cgroup::new(
                    Layout::detect(Path::new(CGROUP_ROOT)),
                    &cgroup_of(&t.container_id),
                );
                Ok(Some(to_json(&top_rows(&cg.pids()))))
            }
            image_request::Op::Sizes(_) => {
                let sizes: std::collections::HashMap<String, u64> = self
                    .local_metas()
                    .into_iter()
                    .filter_map(|m| {
                        let dir = self.bundle_dir(&m.id)?;
                        Some((m.id, dir_size(&bundle::upper(&dir))))
                    })
                    .collect();
                Ok(Some(to_json(&sizes)))
            }
            image_request::Op::Export(e) => {
                let mut w = ChunkWriter::new(request_id, self.outbox.clone());
                self.export(&e.container_id, &mut w)?;
                w.finish();
                Ok(None)
            }
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

    /// Writes a container's merged filesystem as a tar stream.
    fn export(&self, id: &str, out: &mut dyn std::io::Write) -> Result<(), String> {
        let dir = self
            .bundle_dir(id)
            .filter(|d| d.exists())
            .ok_or_else(|| format!("No such container on this node: {id}"))?;
        let meta = read_meta(&dir).ok_or_else(|| format!("container {id} has no metadata"))?;
        let running = self.running_pid(&dir).is_some();
        // A running container is frozen while it is read, so that it cannot
        // swap a file for a symlink under the walk; the walk reads a
        // read-only overlay of its own, never the container's mount.
        let cg = Cgroup::new(Layout::detect(Path::new(CGROUP_ROOT)), &cgroup_of(id));
        if running {
            cg.freeze(true)
                .map_err(|e| format!("freezing {id} for the export: {e}"))?;
        }
        let staging = self.images.staging_dir().map_err(|e| e.to_string())?;
        let root = staging.path().join("rootfs");
        let mut lowers = vec![bundle::upper(&dir)];
        for d in meta.diff_ids.iter().rev() {
            lowers.push(self.snapshots.path(d).map_err(|e| e.to_string())?);
        }
        let mounted = snapshot::mount_readonly(&lowers, &root).map_err(|e| e.to_string());
        let result = mounted.and_then(|()| {
            (|| {
                let mut tar = tar::Builder::new(out);
                tar.follow_symlinks(false);
                tar.append_dir_all(".", &root)?;
                tar.finish()
            })()
            .map_err(|e| e.to_string())
        });
        let _ = snapshot::unmount(&root);
        if running {
            let _ = cg.freeze(false);
        }
        result.map_err(|e| format!("exporting {id}: {e}"))
    }

    /// Every container this node holds on disk, for registration.
    pub fn local_containers(&self) -> Vec<LocalContainer> {
        let dir = self.cfg.data_dir.join("containers");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let b = e.path();
            let Some(meta) = read_meta(&b) else { continue };
            let (state, exit_code) = match fs::read_to_string(bundle::exit(&b)) {
                Ok(code) => ("exited", code.trim().parse().unwrap_or(255)),
                Err(_) => match fs::read_to_string(bundle::pid(&b)) {
                    Ok(pid) if Path::new(&format!("/proc/{}", pid.trim())).exists() => {
                        ("running", 0)
                    }
                    Ok(_) => ("exited", 255),
                    Err(_) => ("created", 0),
                },
            };
            out.push(LocalContainer {
                id: meta.id,
                generation: meta.generation,
                state: state.to_string(),
                exit_code,
            });
        }
        out
    }

    /// Acts on an assignment from the leader, unless it is older than one
    /// already seen of the same container (invariant 3).
    pub async fn assign(self: Arc<Self>, a: Assign) {
        if let fencing::Verdict::Stale { newest } =
            self.generations.check(&a.container_id, a.generation)
        {
            tracing::info!(
                id = %a.container_id,
                generation = a.generation,
                newest,
                "dropping a stale assignment"
            );
            return;
        }
        match a.action() {
            Action::Run => self.run(a, true).await,
            Action::Create => self.run(a, false).await,
            Action::Remove => {
                if let Err(e) = self.remove(&a.container_id).await {
                    tracing::warn!(id = %a.container_id, "{e}");
                }
            }
            Action::Stop => self.stop(&a).await,
            Action::Kill => {
                if matches!(a.signal, 2 | 9 | 15) {
                    if let Some(dir) = self.bundle_dir(&a.container_id) {
                        let _ = fs::write(dir.join(STOPPED_MARK), "");
                    }
                }
                self.signal(&a.container_id, a.signal)
            }
            Action::Pause => self.freeze(&a, true),
            Action::Unpause => self.freeze(&a, false),
            Action::Unspecified => {
                tracing::warn!(id = %a.container_id, "assignment without an action")
            }
        }
    }

    /// The host pid of a container's first process while it runs.
    fn running_pid(&self, dir: &Path) -> Option<i32> {
        if bundle::exit(dir).exists() {
            return None;
        }
        let pid: i32 = fs::read_to_string(bundle::pid(dir))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Relays one attachment between the cluster and the container's shim:
    /// waits for the shim's socket (a container started with it appears a
    /// moment later), then copies output out and input in until either side
    /// ends.
    pub async fn attach(
        self: Arc<Self>,
        open: agent::AttachOpen,
        mut input: mpsc::UnboundedReceiver<agent::AttachData>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream_id = open.stream_id;
        let out = |data: Vec<u8>, close: bool| {
            self.send(agent_message::Msg::AttachOutput(agent::AttachData {
                stream_id,
                data,
                close,
                ..Default::default()
            }))
        };
        let Some(dir) = self.bundle_dir(&open.container_id) else {
            return out(Vec::new(), true);
        };
        // An exec gets a shim of its own, and a socket of its own.
        // Unique on this node even across server restarts (which reuse
        // stream ids).
        let exec_id = open
            .exec
            .as_ref()
            .map(|_| format!("{stream_id}-{}", now_ms()));
        if let (Some(spec), Some(id)) = (&open.exec, &exec_id) {
            if self.running_pid(&dir).is_none() {
                return out(b"the container is not running\r\n".to_vec(), true);
            }
            let cfg = crate::runtime::exec::ExecConfig {
                cmd: spec.cmd.clone(),
                env: spec.env.clone(),
                user: spec.user.clone(),
                workdir: spec.workdir.clone(),
                tty: spec.tty,
                interactive: spec.interactive,
            };
            let path = crate::runtime::exec::config_path(&dir, id);
            if fs::write(&path, serde_json::to_vec(&cfg).unwrap_or_default()).is_err()
                || tokio::process::Command::new(&self.cfg.shim_exe)
                    .arg("exec-shim")
                    .arg("--bundle")
                    .arg(&dir)
                    .arg("--exec")
                    .arg(id)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .is_err()
            {
                return out(b"cannot start the exec\r\n".to_vec(), true);
            }
        }
        let sock_name = match &exec_id {
            Some(id) => crate::runtime::exec::socket_name(id),
            None => "attach.sock".to_string(),
        };
        let sock = dir.join(&sock_name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let conn = loop {
            // The socket's own path may be too long for a socket address.
            let attempt = match crate::runtime::attach::short_socket_path(&dir) {
                Ok((_dir, short)) => {
                    tokio::net::UnixStream::connect(short.with_file_name(&sock_name)).await
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(c) => break c,
                Err(_)
                    if tokio::time::Instant::now() < deadline && !bundle::exit(&dir).exists() =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::warn!(id = %open.container_id, "cannot attach to {}: {e}", sock.display());
                    return out(
                        b"the container takes no attachment (start it with -i or -t)\r\n".to_vec(),
                        true,
                    );
                }
            }
        };
        let (mut rd, mut wr) = conn.into_split();
        if open.rows > 0 && open.cols > 0 {
            let _ = wr
                .write_all(&crate::runtime::attach::resize_frame(
                    open.rows as u16,
                    open.cols as u16,
                ))
                .await;
        }
        let writer = tokio::spawn(async move {
            while let Some(d) = input.recv().await {
                if d.detach {
                    break;
                }
                let frame = if d.rows > 0 && d.cols > 0 {
                    crate::runtime::attach::resize_frame(d.rows as u16, d.cols as u16)
                } else if d.close {
                    crate::runtime::attach::frame(crate::runtime::attach::CLOSE_STDIN, &[])
                } else {
                    crate::runtime::attach::frame(crate::runtime::attach::STDIN, &d.data)
                };
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out(buf[..n].to_vec(), false),
                },
                _ = async { while !writer.is_finished() { tokio::time::sleep(Duration::from_millis(50)).await } } => break,
            }
        }
        writer.abort();
        let exit_code = match &exec_id {
            Some(id) => {
                // The exec shim writes its code as it ends.
                let path = crate::runtime::exec::exit_path(&dir, id);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !path.exists() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let code = fs::read_to_string(&path)
                    .ok()
                    .and_then(|c| c.trim().parse().ok());
                let _ = fs::remove_file(&path);
                code
            }
            None => None,
        };
        self.send(agent_message::Msg::AttachOutput(agent::AttachData {
            stream_id,
            close: true,
            exit_code,
            ..Default::default()
        }));
    }

    /// Sends a signal to a running container's first process.
    fn signal(&self, id: &str, signal: i32) {
        let Some(dir) = self.bundle_dir(id) else {
            return;
        };
        let Some(pid) = self.running_pid(&dir) else {
            tracing::info!(%id, "signal for a container that does not run");
            return;
        };
        let Ok(sig) = nix::sys::signal::Signal::try_from(signal) else {
            tracing::warn!(%id, signal, "not a signal");
            return;
        };
        // kill(2) to the container's init: from outside its pid namespace
        // the signal arrives if init handles it (SIGKILL always does).
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            tracing::warn!(%id, "kill({pid}, {sig}): {e}");
        }
    }

    /// Pauses (freezes) or unpauses a running container through its
    /// cgroup's freezer, and reports the new state.
    fn freeze(&self, a: &Assign, frozen: bool) {
        let Some(dir) = self.bundle_dir(&a.container_id) else {
            return;
        };
        if self.running_pid(&dir).is_none() {
            return;
        }
        let cg = Cgroup::new(
            Layout::detect(Path::new(CGROUP_ROOT)),
            &cgroup_of(&a.container_id),
        );
        match cg.freeze(frozen) {
            Ok(()) => self.transition(
                &a.container_id,
                a.generation,
                if frozen { "paused" } else { "running" },
                0,
                String::new(),
                String::new(),
            ),
            Err(e) => tracing::warn!(id = %a.container_id, "freezer: {e}"),
        }
    }

    /// Sends the stop signal, then SIGKILL once the grace period is over.
    async fn stop(&self, a: &Assign) {
        let Some(dir) = self.bundle_dir(&a.container_id) else {
            return;
        };
        // Stopped by a user: no restart policy brings it back.
        let _ = fs::write(dir.join(STOPPED_MARK), "");
        let meta = read_meta(&dir);
        let signal = if a.signal != 0 {
            a.signal
        } else {
            meta.as_ref()
                .and_then(|m| m.stop_signal)
                .unwrap_or(nix::sys::signal::Signal::SIGTERM as i32)
        };
        // A frozen container cannot act on a signal: thaw it first.
        let _ = Cgroup::new(
            Layout::detect(Path::new(CGROUP_ROOT)),
            &cgroup_of(&a.container_id),
        )
        .freeze(false);
        self.signal(&a.container_id, signal);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_s as u64);
        while tokio::time::Instant::now() < deadline {
            if self.running_pid(&dir).is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.running_pid(&dir).is_some() {
            tracing::info!(id = %a.container_id, "grace period over; sending SIGKILL");
            self.signal(&a.container_id, nix::sys::signal::Signal::SIGKILL as i32);
        }
    }

    /// Creates the container if this node does not hold it, and with
    /// `start` starts it (again, if it has exited).
    async fn run(self: Arc<Self>, a: Assign, start: bool) {
        let Some(dir) = self.bundle_dir(&a.container_id) else {
            tracing::warn!(id = %a.container_id, "refusing an assignment with a malformed id");
            return;
        };
        // A copy of an older generation is not this placement: the cluster
        // placed the container here afresh, and the old copy goes first.
        if read_meta(&dir).is_some_and(|m| m.generation < a.generation) {
            tracing::info!(id = %a.container_id, generation = a.generation, "replacing an older copy");
            if let Err(e) = self.remove(&a.container_id).await {
                tracing::warn!(id = %a.container_id, "cannot replace the older copy: {e}");
                return;
            }
        }
        // Another task may hold the container: a relay (then it runs, and
        // there is nothing to do), or a create that is finishing (then this
        // start waits for it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.live.lock().await.insert(a.container_id.clone()) {
                break;
            }
            if self.running_pid(&dir).is_some() || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.clone().run_inner(&a, &dir, start).await;
        self.live.lock().await.remove(&a.container_id);
    }

    async fn run_inner(self: Arc<Self>, a: &Assign, dir: &Path, start: bool) {
        let id = &a.container_id;
        let fail = |e: String| {
            tracing::warn!(%id, "cannot start the container: {e}");
            let _ = snapshot::unmount(&bundle::rootfs(dir));
            self.transition(id, a.generation, "exited", 125, e, String::new());
        };
        if !dir.exists() {
            let me = self.clone();
            let (a2, d2) = (a.clone(), dir.to_path_buf());
            let prepared = tokio::task::spawn_blocking(move || me.prepare(&a2, &d2))
                .await
                .unwrap_or_else(|e| {
                    Err(SupervisorError::Io {
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            match prepared {
                Ok(image_id) => {
                    self.transition(id, a.generation, "created", 0, String::new(), image_id)
                }
                Err(e) => return fail(e.to_string()),
            }
        } else if self.running_pid(dir).is_some() {
            return;
        } else if bundle::exit(dir).exists() {
            if !start {
                return;
            }
            // A restart: the rootfs went with the last run.
            if let Err(e) = self.remount(dir) {
                return fail(e);
            }
            let _ = fs::remove_file(bundle::exit(dir));
            let _ = fs::remove_file(bundle::pid(dir));
        }
        if !start {
            return;
        }
        let _ = fs::remove_file(dir.join(STOPPED_MARK));
        let _ = fs::remove_file(dir.join(crate::runtime::lease::EXPIRED_MARK));
        if a.spec.as_ref().is_some_and(|s| s.wait_for_attach) {
            let _ = fs::write(dir.join(crate::runtime::shim::WAIT_ATTACH_MARK), "");
        }
        let mut restarts = 0u32;
        loop {
            let began = std::time::Instant::now();
            let code = match self.clone().start_shim(a, dir).await {
                Ok(code) => code,
                Err(e) => return fail(e),
            };
            // The restart policy, unless a user stopped it or the lease
            // did (the cluster may run it elsewhere now).
            let policy = read_meta(dir).map(|m| m.restart).unwrap_or_default();
            if dir.join(STOPPED_MARK).exists()
                || dir.join(crate::runtime::lease::EXPIRED_MARK).exists()
                || !should_restart(&policy, code, restarts)
            {
                return;
            }
            // Docker's backoff: 100 ms doubling to a minute; a run of 10 s
            // or more starts it over.
            if began.elapsed() >= Duration::from_secs(10) {
                restarts = 0;
            }
            let delay = Duration::from_millis(100 * (1u64 << restarts.min(10)))
                .min(Duration::from_secs(60));
            restarts += 1;
            tokio::time::sleep(delay).await;
            if dir.join(STOPPED_MARK).exists() || !dir.exists() {
                return;
            }
            tracing::info!(%id, restarts, "restarting by policy {policy}");
            if let Err(e) = self.remount(dir) {
                return fail(e);
            }
            let _ = fs::remove_file(bundle::exit(dir));
            let _ = fs::remove_file(bundle::pid(dir));
        }
    }

    /// Mounts an existing container's rootfs again from its recorded layers.
    fn remount(&self, dir: &Path) -> Result<(), String> {
        let meta = read_meta(dir).ok_or("the container has no metadata")?;
        let lowers = meta
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.snapshots.path(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let _ = snapshot::unmount(&bundle::rootfs(dir));
        snapshot::mount_overlay(
            &lowers,
            &bundle::upper(dir),
            &bundle::work(dir),
            &bundle::rootfs(dir),
        )
        .map_err(|e| e.to_string())
    }

    /// After a (re)registration, before anything else: stops and deletes
    /// the local copies the cluster no longer places here (removed, moved,
    /// or placed here again at a newer generation).
    pub async fn remove_stale(&self, stale: Vec<LocalContainer>) {
        for l in stale {
            let Some(dir) = self.bundle_dir(&l.id) else {
                continue;
            };
            // A copy newer than the stale one named is not this one.
            if read_meta(&dir).is_some_and(|m| m.generation > l.generation) {
                continue;
            }
            tracing::info!(id = %l.id, generation = l.generation, "removing a stale copy");
            match self.remove(&l.id).await {
                Ok(()) => self.generations.forget(&l.id),
                Err(e) => tracing::warn!(id = %l.id, "cannot remove a stale copy: {e}"),
            }
        }
    }

    /// After a (re)registration: resends every log line the cluster has not
    /// committed, and follows the containers that run without a relay (they
    /// outlived an earlier agent) to their end.
    pub async fn resume(self: Arc<Self>, log_next_seq: std::collections::HashMap<String, u64>) {
        for meta in self.local_metas() {
            let Some(&next) = log_next_seq.get(&meta.id) else {
                continue;
            };
            let Some(dir) = self.bundle_dir(&meta.id) else {
                continue;
            };
            let relayed = self.live.lock().await.contains(&meta.id);
            if relayed || self.running_pid(&dir).is_none() {
                let (lines, _) = read_log_from(&dir, next, 0);
                self.send_lines(&meta.id, meta.generation, lines);
                continue;
            }
            if self.live.lock().await.insert(meta.id.clone()) {
                tokio::spawn(self.clone().follow(meta, dir, next));
            }
        }
    }

    fn send_lines(&self, id: &str, generation: u64, lines: Vec<agent::LogLine>) {
        for chunk in lines.chunks(CHUNK_LINES) {
            self.send(agent_message::Msg::Logs(agent::LogChunk {
                container_id: id.to_string(),
                generation,
                lines: chunk.to_vec(),
            }));
        }
    }

    /// Follows a container whose shim this agent did not start: its log
    /// file for new lines, its exit file for the end.
    async fn follow(self: Arc<Self>, meta: Meta, dir: PathBuf, mut next: u64) {
        tracing::info!(id = %meta.id, "re-attached to a running container");
        let mut offset = 0u64;
        loop {
            let exited = bundle::exit(&dir).exists();
            let (lines, new_offset) = read_log_from(&dir, next, offset);
            offset = new_offset;
            if let Some(last) = lines.last() {
                next = last.seq + 1;
            }
            self.send_lines(&meta.id, meta.generation, lines);
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let code = fs::read_to_string(bundle::exit(&dir))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(255);
        let _ = snapshot::unmount(&bundle::rootfs(&dir));
        self.exited(
            &meta.id,
            meta.generation,
            code,
            String::new(),
            dir.join("oom").exists(),
        );
        self.live.lock().await.remove(&meta.id);
    }

    /// Resolves the image, mounts the rootfs and writes config.json.
    fn prepare(&self, a: &Assign, dir: &Path) -> Result<String, SupervisorError> {
        let spec = a.spec.clone().unwrap_or_default();
        let image = self.images.resolve(&spec.image)?;
        let lowers = image
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.snapshots.path(d))
            .collect::<Result<Vec<_>, _>>()?;
        for l in &lowers {
            if !l.exists() {
                return Err(SupervisorError::Io {
                    path: l.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "layer snapshot missing",
                    ),
                });
            }
        }
        fs::create_dir_all(dir).map_err(|source| SupervisorError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let result = self.prepare_bundle(a, &spec, &image, &lowers, dir);
        if result.is_err() {
            // Nothing half-made stays: a later start creates it afresh.
            let _ = snapshot::unmount(&bundle::rootfs(dir));
            let _ = fs::remove_dir_all(dir);
        }
        result.map(|()| image.id)
    }

    fn prepare_bundle(
        &self,
        a: &Assign,
        spec: &agent::ContainerSpec,
        image: &crate::image::ResolvedImage,
        lowers: &[PathBuf],
        dir: &Path,
    ) -> Result<(), SupervisorError> {
        let meta = Meta {
            id: a.container_id.clone(),
            name: a.name.clone(),
            generation: a.generation,
            image_id: image.id.clone(),
            diff_ids: image.diff_ids.clone(),
            stop_signal: image
                .config
                .config()
                .as_ref()
                .and_then(|c| c.stop_signal().clone())
                .and_then(|s| parse_signal(&s)),
            restart: spec.restart.clone(),
        };
        fs::write(
            bundle::meta(dir),
            serde_json::to_vec(&meta).unwrap_or_default(),
        )
        .map_err(|source| SupervisorError::Io {
            path: bundle::meta(dir),
            source,
        })?;
        snapshot::mount_overlay(
            lowers,
            &bundle::upper(dir),
            &bundle::work(dir),
            &bundle::rootfs(dir),
        )?;
        let cfg = container_config(
            &a.container_id,
            spec,
            &image.config,
            &ConfigPaths {
                rootfs: bundle::rootfs(dir),
                volumes: self.cfg.data_dir.join("volumes"),
                lease: spec.movable.then(|| self.lease.path().to_path_buf()),
            },
        )?;
        spec::save(&spec::build(&cfg)?, dir)?;
        Ok(())
    }

    /// Starts the shim and relays its frames until the container ends.
    async fn start_shim(self: Arc<Self>, a: &Assign, dir: &Path) -> Result<i32, String> {
        let shim_log = fs::File::create(dir.join("shim.log")).map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(&self.cfg.shim_exe)
            .arg("shim")
            .arg("--bundle")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            // Its own process group: a signal to the agent's group (a
            // Ctrl+C in its terminal) must not reach the containers.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start the shim {}: {e}", self.cfg.shim_exe.display()))?;
        let stdout = child.stdout.take().ok_or("the shim has no stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut batch = Vec::new();
        let mut exit: Option<(i32, Option<String>, bool)> = None;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            match serde_json::from_str::<Frame>(line.trim_end()) {
                Ok(Frame::Start { .. }) => self.transition(
                    &a.container_id,
                    a.generation,
                    "running",
                    0,
                    String::new(),
                    String::new(),
                ),
                Ok(Frame::Log {
                    seq,
                    stream,
                    time_ns,
                    line,
                }) => batch.push(agent::LogLine {
                    seq,
                    stream,
                    time_ns,
                    line: line.into_bytes(),
                }),
                Ok(Frame::Exit {
                    code,
                    error,
                    oom_killed,
                }) => exit = Some((code, error, oom_killed)),
                Err(e) => tracing::warn!(id = %a.container_id, "unreadable shim frame: {e}"),
            }
            if !batch.is_empty() && (reader.buffer().is_empty() || batch.len() >= CHUNK_LINES) {
                self.send_logs(a, &mut batch);
            }
        }
        self.send_logs(a, &mut batch);
        let _ = child.wait().await;
        let _ = snapshot::unmount(&bundle::rootfs(dir));
        let (code, error, oom_killed) = exit.unwrap_or_else(|| {
            (
                fs::read_to_string(bundle::exit(dir))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(255),
                Some("the shim ended without reporting an exit".to_string()),
                dir.join("oom").exists(),
            )
        });
        self.exited(
            &a.container_id,
            a.generation,
            code,
            error.unwrap_or_default(),
            oom_killed,
        );
        Ok(code)
    }

    fn send_logs(&self, a: &Assign, batch: &mut Vec<agent::LogLine>) {
        if batch.is_empty() {
            return;
        }
        self.send(agent_message::Msg::Logs(agent::LogChunk {
            container_id: a.container_id.clone(),
            generation: a.generation,
            lines: std::mem::take(batch),
        }));
    }

    /// Kills the container if it runs and deletes its bundle; the error
    /// says what could not be done.
    async fn remove(&self, id: &str) -> Result<(), String> {
        let Some(dir) = self.bundle_dir(id) else {
            return Ok(());
        };
        // One removal of a container at a time: a second one (the cluster's
        // --rm beside the client's) waits for the first, then finds nothing.
        let lock = {
            let mut locks = self.removals.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        let _removing = lock.lock().await;
        let result = self.remove_locked(id, &dir).await;
        self.removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        result
    }

    async fn remove_locked(&self, id: &str, dir: &Path) -> Result<(), String> {
        let dir = dir.to_path_buf();
        if !dir.exists() {
            return Ok(());
        }
        // No restart policy brings back what is being removed.
        let _ = fs::write(dir.join(STOPPED_MARK), "");
        if !bundle::exit(&dir).exists() {
            let _ =
                Cgroup::new(Layout::detect(Path::new(CGROUP_ROOT)), &cgroup_of(id)).freeze(false);
            if let Some(pid) = fs::read_to_string(bundle::pid(&dir))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // kill(2): SIGKILL to the container's init ends its whole
                // pid namespace.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                for _ in 0..250 {
                    if bundle::exit(&dir).exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !bundle::exit(&dir).exists() {
                    return Err(format!(
                        "cannot remove container {id}: its process (pid {pid}) did not die within 5 s of SIGKILL"
                    ));
                }
            }
        }
        let _ = snapshot::unmount(&bundle::rootfs(&dir));
        fs::remove_dir_all(&dir).map_err(|e| {
            format!(
                "unable to remove filesystem for {id}: {}: {e}",
                dir.display()
            )
        })
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
    spec: &agent::ContainerSpec,
    image: &oci_spec::image::ImageConfiguration,
    paths: &ConfigPaths,
) -> Result<ContainerConfig, RuntimeError> {
    let ic = image.config().clone().unwrap_or_default();
    let mut args: Vec<String> = if spec.entrypoint_set {
        spec.entrypoint
            .iter()
            .filter(|e| !e.is_empty())
            .cloned()
            .collect()
    } else {
        ic.entrypoint().clone().unwrap_or_default()
    };
    if !spec.cmd.is_empty() {
        args.extend(spec.cmd.iter().cloned());
    } else if !spec.entrypoint_set {
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
            memory_bytes: (spec.memory_bytes > 0).then_some(spec.memory_bytes),
            cpu_quota_us: (spec.nano_cpus > 0)
                .then(|| spec.nano_cpus * crate::runtime::cgroups::CPU_PERIOD_US / 1_000_000_000),
            pids: (spec.pids_limit > 0).then_some(spec.pids_limit),
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
    })
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

/// One row per process: pid, parent pid, uid, CPU seconds, command line.
fn top_rows(pids: &[i32]) -> Vec<Vec<String>> {
    // SAFETY: sysconf(_SC_CLK_TCK) only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut rows = Vec::new();
    for pid in pids {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command in stat is in parentheses and may hold spaces.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        let ppid = f.get(1).copied().unwrap_or("0").to_string();
        let cpu: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let cmd = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        rows.push(vec![
            pid.to_string(),
            ppid,
            uid,
            format!("{:.2}", cpu / ticks),
            cmd,
        ]);
    }
    rows
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

/// Serializes any serde value to JSON (a helper for the image operations).
mod erased {
    pub trait Json {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

/// A writer that sends what is written to the cluster as ImageReply
/// pieces of about 1 MiB.
struct ChunkWriter {
    request_id: u64,
    outbox: mpsc::UnboundedSender<AgentMessage>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    const PIECE: usize = 1 << 20;

    fn new(request_id: u64, outbox: mpsc::UnboundedSender<AgentMessage>) -> Self {
        Self {
            request_id,
            outbox,
            buf: Vec::with_capacity(Self::PIECE),
        }
    }

    fn send_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
        self.outbox
            .send(AgentMessage {
                msg: Some(agent_message::Msg::ImageReply(agent::ImageReply {
                    request_id: self.request_id,
                    data,
                    ..Default::default()
                })),
            })
            .map_err(|_| std::io::Error::other("the agent is shutting down"))
    }

    fn finish(mut self) {
        let _ = self.send_buf();
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::PIECE {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
