//! The CLI-facing gRPC service (cluster.proto). Wire types are converted
//! here and go no further in.

pub mod build;
pub mod convert;
pub mod forward;
pub mod images;
pub mod lifecycle;
pub mod logs;
pub mod membership;
pub mod names;
pub mod services;

use std::collections::BTreeMap;
use std::pin::Pin;

use berth_proto::cluster::{self, cluster_server::Cluster};
use berth_proto::records::{self, command::Op, ContainerState, DesiredState, SCHEMA_VERSION};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{now_ms, App, AppError};
use crate::scheduler;
use crate::state::status::Status as CStatus;

/// The Cluster service of cluster.proto.
pub struct ClusterService {
    app: App,
}

impl ClusterService {
    pub fn new(app: App) -> Self {
        Self { app }
    }

    fn find(&self, name_or_id: &str) -> Result<records::Container, Status> {
        self.app
            .state
            .find_container(name_or_id)
            .map_err(|e| to_status(e.into()))?
            .ok_or_else(|| Status::not_found(format!("No such container: {name_or_id}")))
    }

    /// Asks the node that holds a container for an operation on it (top,
    /// diff, commit): the answer's JSON.
    async fn call_node(
        &self,
        c: &records::Container,
        op: berth_proto::agent::image_request::Op,
    ) -> Result<String, Status> {
        if c.node.is_empty() {
            return Err(Status::failed_precondition(format!(
                "container {} has not been created on a node yet",
                c.name
            )));
        }
        self.app
            .nodes
            .image_call(&c.node, op, &[])
            .await
            .map_err(Status::failed_precondition)
    }
}

/// What a wait answers for a container its --rm removed: the exit code
/// and error of its last `die` event, found by its full id, if the events
/// still hold it.
fn removed_wait(app: &App, id: &str) -> Option<cluster::WaitResponse> {
    let (exit_code, error) = last_exit(app, id)?;
    Some(cluster::WaitResponse {
        exit_code,
        state: "removed".into(),
        error,
    })
}

/// The exit code and error of a container's last `die` event, if the
/// events still hold it.
fn last_exit(app: &App, id: &str) -> Option<(i32, String)> {
    let mut from = 0;
    let mut found = None;
    loop {
        let batch = app.state.events(from, 1024).ok()?;
        let Some(last) = batch.last() else {
            return found;
        };
        from = last.seq + 1;
        for e in &batch {
            if e.actor == id && e.action == "die" {
                found = e
                    .attributes
                    .get("exitCode")
                    .and_then(|c| c.parse().ok())
                    .map(|code| (code, e.attributes.get("error").cloned().unwrap_or_default()));
            }
        }
    }
}

/// Converts and checks a container spec from the wire, as `run`, `create`
/// and services share it: an image (normalized), a known network, valid
/// volumes, ulimits, constraints and placement strategy.
pub fn check_spec(spec: cluster::ContainerSpec) -> Result<records::ContainerSpec, Status> {
    let mut spec = convert::spec_from_wire(spec);
    if spec.image.is_empty() {
        return Err(Status::invalid_argument("no image given"));
    }
    if !spec.network.is_empty() && spec.network != "none" && spec.network != "host" {
        return Err(Status::invalid_argument(format!(
            "unknown network {:?}: use none or host",
            spec.network
        )));
    }
    spec.image = names::normalize_image(&spec.image);
    for v in &spec.volumes {
        names::check_volume(v).map_err(Status::invalid_argument)?;
    }
    for u in &spec.ulimits {
        berth_proto::ulimit::parse(u).map_err(Status::invalid_argument)?;
    }
    check_security(&mut spec)?;
    check_placement(&spec)?;
    if spec.labels.len() > 1000
        || spec.labels.iter().any(|(k, v)| {
            k.is_empty() || k.len() > 255 || v.len() > 4096 || k.contains('\0') || v.contains('\0')
        })
    {
        return Err(Status::invalid_argument(
            "labels: at most 1000, each KEY=VALUE with a key of 1 to 255 bytes and a value of at most 4096",
        ));
    }
    Ok(spec)
}

/// Checks the isolation options and writes capabilities in the kernel's
/// spelling, so that the agent and `inspect` read one form.
fn check_security(spec: &mut records::ContainerSpec) -> Result<(), Status> {
    use berth_proto::security::{capability, DeviceMapping, SecurityOpt};
    for caps in [&mut spec.cap_add, &mut spec.cap_drop] {
        for c in caps.iter_mut() {
            *c = capability(c).map_err(Status::invalid_argument)?;
        }
    }
    for d in &spec.devices {
        DeviceMapping::parse(d).map_err(Status::invalid_argument)?;
    }
    for o in &spec.security_opt {
        SecurityOpt::parse(o).map_err(Status::invalid_argument)?;
    }
    for t in &spec.tmpfs {
        berth_proto::security::Tmpfs::parse(t).map_err(Status::invalid_argument)?;
    }
    Ok(())
}

/// Checks what the scheduler will read of a spec: its constraints and
/// placement strategy.
fn check_placement(spec: &records::ContainerSpec) -> Result<(), Status> {
    for c in &spec.constraints {
        scheduler::feasibility::Constraint::parse(c).map_err(Status::invalid_argument)?;
    }
    if !matches!(spec.placement_strategy.as_str(), "" | "spread" | "binpack") {
        return Err(Status::invalid_argument(format!(
            "unknown placement strategy {:?}: use spread or binpack",
            spec.placement_strategy
        )));
    }
    Ok(())
}

/// Maps a core error to the gRPC status the CLI shows.
pub fn to_status(e: AppError) -> Status {
    match &e {
        AppError::NotLeader(_) => {
            let mut s = Status::unavailable(e.to_string());
            s.metadata_mut().insert(
                forward::NOT_LEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            s
        }
        AppError::Raft(_) => Status::unavailable(e.to_string()),
        AppError::Refused(why) if why.starts_with("No such") => Status::not_found(why.clone()),
        AppError::Refused(why) if why.starts_with("Conflict") => {
            Status::already_exists(why.clone())
        }
        AppError::Refused(why) => Status::failed_precondition(why.clone()),
        AppError::Invalid(_) => Status::invalid_argument(e.to_string()),
        AppError::State(_) => Status::internal(e.to_string()),
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<cluster::LogEntries, Status>> + Send>>;
type DataStream = Pin<Box<dyn Stream<Item = Result<cluster::DataChunk, Status>> + Send>>;
type BuildStream = Pin<Box<dyn Stream<Item = Result<cluster::BuildOutput, Status>> + Send>>;
type AttachStream = Pin<Box<dyn Stream<Item = Result<cluster::AttachOutput, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<cluster::EventInfo, Status>> + Send>>;

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn create_container(
        &self,
        req: Request<cluster::CreateContainerRequest>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        let req = req.into_inner();
        let mut spec = check_spec(req.spec.unwrap_or_default())?;
        names::check_restart(&spec.restart).map_err(Status::invalid_argument)?;
        if spec.auto_remove && !matches!(spec.restart.as_str(), "" | "no") {
            return Err(Status::invalid_argument(
                "conflicting options: --restart and --rm",
            ));
        }
        let generated = req.name.is_empty();
        if !generated && !names::valid_name(&req.name) {
            return Err(Status::invalid_argument(format!(
                "Invalid container name ({}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                req.name
            )));
        }
        scheduler::check_image(&self.app, &spec.image).map_err(to_status)?;
        let id = names::new_id();
        if spec.hostname.is_empty() {
            spec.hostname = id[..12].to_string();
        }
        let mut container = records::Container {
            schema: SCHEMA_VERSION,
            id,
            name: req.name.clone(),
            spec: Some(spec),
            state: ContainerState::Pending as i32,
            desired: if req.start {
                DesiredState::DesiredRunning as i32
            } else {
                DesiredState::DesiredStopped as i32
            },
            created_at_ms: now_ms(),
            log_next_seq: 1,
            ..Default::default()
        };
        // A generated name that is taken (here, or by a create racing this
        // one) is drawn again; a name the user chose is their conflict.
        let mut attempt = 0;
        let created = loop {
            if generated {
                container.name = names::new_name(attempt);
                let taken = self
                    .app
                    .state
                    .find_container(&container.name)
                    .map_err(|e| to_status(e.into()))?
                    .is_some_and(|c| c.name == container.name);
                if taken && attempt + 1 < names::NAME_ATTEMPTS {
                    attempt += 1;
                    continue;
                }
            }
            match self
                .app
                .write(Op::Create(records::CreateContainer {
                    container: Some(container.clone()),
                }))
                .await
            {
                Ok(r) => {
                    let c = r.container.unwrap_or_default();
                    if req.attached {
                        self.app.scheduler.hold_for_client(&c.id);
                    }
                    break c;
                }
                Err(AppError::Refused(why))
                    if generated
                        && names::is_name_conflict(&why)
                        && attempt + 1 < names::NAME_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(to_status(e)),
            }
        };
        // The reconciler places it. As `docker run -d`, answer once it
        // runs (or has ended); as `docker create`, once the node has
        // created it; an attached run, once it is placed; any, once the
        // scheduler says why it cannot place it yet (it stays Pending, and
        // runs once a node fits).
        let asked = created.created_at_ms;
        let placed = if req.start && req.attached {
            // An attached run reads the output from here on: it is
            // answered once the container is placed, so that its read is
            // under way while the node starts the container (the node
            // holds a read that comes before the container is made).
            lifecycle::wait_placed(&self.app, &created.id, asked).await?
        } else if req.start {
            lifecycle::wait_started(&self.app, &created.id, asked).await?
        } else {
            lifecycle::wait_created(&self.app, &created.id).await?
        };
        Ok(Response::new(convert::container_to_wire(&placed)))
    }

    async fn list_containers(
        &self,
        req: Request<cluster::ListContainersRequest>,
    ) -> Result<Response<cluster::ListContainersResponse>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        let req = req.into_inner();
        let mut containers: Vec<cluster::ContainerInfo> = self
            .app
            .containers()
            .await
            .map_err(to_status)?
            .iter()
            .filter(|c| {
                req.all || !CStatus(c.state()).is_finished() && c.state() != ContainerState::Created
            })
            .map(convert::container_to_wire)
            .collect();
        if req.size {
            images::fill_sizes(&self.app, &mut containers).await;
        }
        Ok(Response::new(cluster::ListContainersResponse {
            containers,
        }))
    }

    async fn get_container(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        let c = self.find(&req.into_inner().name_or_id)?;
        Ok(Response::new(convert::container_to_wire(&c)))
    }

    async fn remove_container(
        &self,
        req: Request<cluster::RemoveContainerRequest>,
    ) -> Result<Response<cluster::RemoveContainerResponse>, Status> {
        let req = req.into_inner();
        let c = self.find(&req.name_or_id)?;
        // The cluster's own removal (--rm) does not race this one.
        let _hold = self.app.scheduler.hold(&c.id);
        if CStatus(c.state()).is_running() && !req.force {
            return Err(Status::failed_precondition(format!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                c.id
            )));
        }
        // The node deletes what it holds first; if it cannot, the
        // container is Dead (as Docker's), and only `rm -f` drops its
        // record. A node that is away deletes it when it registers again.
        let mut warning = String::new();
        if !c.node.is_empty() && self.app.nodes.is_connected(&c.node).await {
            let removal = self
                .app
                .nodes
                .image_call(
                    &c.node,
                    berth_proto::agent::image_request::Op::RemoveContainer(
                        berth_proto::agent::RemoveContainerOp {
                            container_id: c.id.clone(),
                        },
                    ),
                    &[],
                )
                .await;
            if let Err(why) = removal {
                if !req.force || c.state() != ContainerState::Dead {
                    lifecycle::mark_dead(&self.app, &c, &why).await;
                    return Err(Status::internal(format!(
                        "{why} (the container is now Dead; `berth rm -f {}` drops it)",
                        c.name
                    )));
                }
                warning = format!(
                    "{why}; the record is dropped and node {} tries again when it next registers",
                    c.node
                );
            }
        }
        self.app
            .write(Op::Remove(records::RemoveContainer {
                id: c.id.clone(),
                at_ms: now_ms(),
            }))
            .await
            .map_err(to_status)?;
        Ok(Response::new(cluster::RemoveContainerResponse {
            id: c.id,
            warning,
        }))
    }

    async fn start_container(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        let c = self.find(&req.into_inner().name_or_id)?;
        let c = lifecycle::start(&self.app, c).await?;
        Ok(Response::new(convert::container_to_wire(&c)))
    }

    type BuildImageStream = BuildStream;

    async fn build_image(
        &self,
        req: Request<Streaming<cluster::BuildChunk>>,
    ) -> Result<Response<BuildStream>, Status> {
        let rx = build::build(&self.app, req.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_container(
        &self,
        req: Request<cluster::CommitRequest>,
    ) -> Result<Response<cluster::CommitResponse>, Status> {
        let req = req.into_inner();
        let c = self.find(&req.container)?;
        if req.changes.len() > 256 || req.changes.iter().any(|ch| ch.len() > 64 * 1024) {
            return Err(Status::invalid_argument(
                "too many or too long --change values",
            ));
        }
        let reference = if req.reference.is_empty() {
            String::new()
        } else {
            names::normalize_image(&req.reference)
        };
        let json = self
            .call_node(
                &c,
                berth_proto::agent::image_request::Op::Commit(berth_proto::agent::CommitOp {
                    container_id: c.id.clone(),
                    reference,
                    author: req.author,
                    message: req.message,
                    changes: req.changes,
                    pause: req.pause,
                }),
            )
            .await?;
        let made: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        Ok(Response::new(cluster::CommitResponse {
            image_id: made["id"].as_str().unwrap_or_default().to_string(),
            node: c.node.clone(),
        }))
    }

    async fn diff_container(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<cluster::DiffResponse>, Status> {
        let c = self.find(&req.into_inner().name_or_id)?;
        let json = self
            .call_node(
                &c,
                berth_proto::agent::image_request::Op::Diff(berth_proto::agent::DiffOp {
                    container_id: c.id.clone(),
                }),
            )
            .await?;
        let changes: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
        Ok(Response::new(cluster::DiffResponse {
            changes: changes
                .iter()
                .map(|ch| cluster::DiffChange {
                    kind: ch["Kind"].as_str().unwrap_or_default().to_string(),
                    path: ch["Path"].as_str().unwrap_or_default().to_string(),
                })
                .collect(),
        }))
    }

    async fn top(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<cluster::TopResponse>, Status> {
        let c = self.find(&req.into_inner().name_or_id)?;
        if c.state() != ContainerState::Running && c.state() != ContainerState::Paused {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                c.name
            )));
        }
        let json = self
            .call_node(
                &c,
                berth_proto::agent::image_request::Op::Top(berth_proto::agent::TopOp {
                    container_id: c.id.clone(),
                }),
            )
            .await?;
        let rows: Vec<Vec<String>> = serde_json::from_str(&json).unwrap_or_default();
        Ok(Response::new(cluster::TopResponse {
            titles: ["PID", "PPID", "UID", "TIME", "CMD"]
                .iter()
                .map(|t| t.to_string())
                .collect(),
            rows: rows
                .into_iter()
                .map(|cells| cluster::TopRow { cells })
                .collect(),
        }))
    }

    async fn stop_container(
        &self,
        req: Request<cluster::StopContainerRequest>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        let req = req.into_inner();
        let c = self.find(&req.name_or_id)?;
        let c = lifecycle::stop(&self.app, c, req.timeout_s.unwrap_or(10)).await?;
        Ok(Response::new(convert::container_to_wire(&c)))
    }

    async fn kill_container(
        &self,
        req: Request<cluster::KillContainerRequest>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        let req = req.into_inner();
        let c = self.find(&req.name_or_id)?;
        let signal = if req.signal.is_empty() {
            9
        } else {
            names::parse_signal(&req.signal).ok_or_else(|| {
                Status::invalid_argument(format!("invalid signal: {}", req.signal))
            })?
        };
        let c = lifecycle::kill(&self.app, c, signal).await?;
        Ok(Response::new(convert::container_to_wire(&c)))
    }

    async fn restart_container(
        &self,
        req: Request<cluster::StopContainerRequest>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        let req = req.into_inner();
        let c = self.find(&req.name_or_id)?;
        let c = lifecycle::stop(&self.app, c, req.timeout_s.unwrap_or(10)).await?;
        let c = lifecycle::start(&self.app, c).await?;
        Ok(Response::new(convert::container_to_wire(&c)))
    }

    async fn pause_container(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        let c = self.find(&req.into_inner().name_or_id)?;
        let c = lifecycle::pause(&self.app, c, true).await?;
        Ok(Response::new(convert::container_to_wire(&c)))
    }

    async fn unpause_container(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<cluster::ContainerInfo>, Status> {
        let c = self.find(&req.into_inner().name_or_id)?;
        let c = lifecycle::pause(&self.app, c, false).await?;
        Ok(Response::new(convert::container_to_wire(&c)))
    }

    type AttachStream = AttachStream;

    async fn attach(
        &self,
        req: Request<Streaming<cluster::AttachInput>>,
    ) -> Result<Response<AttachStream>, Status> {
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(cluster::AttachInput {
                msg: Some(cluster::attach_input::Msg::Start(s)),
            }) => s,
            _ => {
                return Err(Status::invalid_argument(
                    "an attachment begins with AttachStart",
                ))
            }
        };
        let c = self.find(&start.name_or_id)?;
        let rx = lifecycle::attach(&self.app, c, start, inbound).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExecStream = AttachStream;

    async fn exec(
        &self,
        req: Request<Streaming<cluster::AttachInput>>,
    ) -> Result<Response<AttachStream>, Status> {
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(cluster::AttachInput {
                msg: Some(cluster::attach_input::Msg::Exec(s)),
            }) => s,
            _ => return Err(Status::invalid_argument("an exec begins with ExecStart")),
        };
        let c = self.find(&start.name_or_id)?;
        let rx = lifecycle::exec(&self.app, c, start, inbound).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        req: Request<cluster::LogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let req = req.into_inner();
        let c = self.find(&req.name_or_id)?;
        let (tx, rx) = mpsc::channel(8);
        // While a client follows the output, the cluster's --rm waits.
        let hold = req.follow.then(|| self.app.scheduler.hold(&c.id));
        let app = self.app.clone();
        tokio::spawn(async move {
            let _hold = hold;
            logs::stream(app, c.id, req, tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn wait_container(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<cluster::WaitResponse>, Status> {
        let name_or_id = req.into_inner().name_or_id;
        let c = match self.find(&name_or_id) {
            Ok(c) => c,
            // Removed already (its --rm, once its output was read).
            Err(s) if s.code() == tonic::Code::NotFound => {
                return removed_wait(&self.app, &name_or_id)
                    .ok_or(s)
                    .map(Response::new)
            }
            Err(s) => return Err(s),
        };
        // While a client waits, the cluster's --rm waits too.
        let _hold = self.app.scheduler.hold(&c.id);
        let mut changes = self.app.state.subscribe();
        loop {
            changes.borrow_and_update();
            let Some(now) = self
                .app
                .state
                .container(&c.id)
                .map_err(|e| to_status(e.into()))?
            else {
                return removed_wait(&self.app, &c.id)
                    .ok_or_else(|| Status::not_found(format!("No such container: {}", c.id)))
                    .map(Response::new);
            };
            if CStatus(now.state()).is_finished() {
                return Ok(Response::new(cluster::WaitResponse {
                    exit_code: now.exit_code,
                    state: CStatus(now.state()).name().to_string(),
                    error: now.error,
                }));
            }
            changes
                .changed()
                .await
                .map_err(|_| Status::unavailable("the server is shutting down"))?;
        }
    }

    async fn import_image(
        &self,
        req: Request<Streaming<cluster::ImportChunk>>,
    ) -> Result<Response<cluster::ImportResponse>, Status> {
        let mut stream = req.into_inner();
        // The first piece names the image and the node; the archive
        // follows, forwarded to the nodes piece by piece.
        let first = stream.message().await?.unwrap_or_default();
        if first.reference.is_empty() {
            return Err(Status::invalid_argument("no image reference given"));
        }
        let reference = names::normalize_image(&first.reference);
        let targets = images::upload_targets(&self.app, &first.node).await?;
        let (loaded, nodes) = images::upload_streamed(
            &self.app,
            &targets,
            images::import_op(&reference),
            first.data,
            &mut stream,
            |c| c.data,
        )
        .await?;
        let image_id = loaded.first().map(|i| i.id.clone()).unwrap_or_default();
        Ok(Response::new(cluster::ImportResponse { image_id, nodes }))
    }

    async fn load_images(
        &self,
        req: Request<Streaming<cluster::UploadChunk>>,
    ) -> Result<Response<cluster::LoadImagesResponse>, Status> {
        let mut stream = req.into_inner();
        let first = stream.message().await?.unwrap_or_default();
        let targets = images::upload_targets(&self.app, &first.node).await?;
        let (images, nodes) = images::upload_streamed(
            &self.app,
            &targets,
            images::load_op(),
            first.data,
            &mut stream,
            |c| c.data,
        )
        .await?;
        Ok(Response::new(cluster::LoadImagesResponse { images, nodes }))
    }

    type SaveImagesStream = DataStream;

    async fn save_images(
        &self,
        req: Request<cluster::SaveImagesRequest>,
    ) -> Result<Response<DataStream>, Status> {
        let rx = images::save(&self.app, req.into_inner().references).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn tag_image(
        &self,
        req: Request<cluster::TagImageRequest>,
    ) -> Result<Response<cluster::TagImageResponse>, Status> {
        let req = req.into_inner();
        let nodes = images::tag(&self.app, &req.source, &req.target).await?;
        Ok(Response::new(cluster::TagImageResponse { nodes }))
    }

    async fn remove_images(
        &self,
        req: Request<cluster::RemoveImagesRequest>,
    ) -> Result<Response<cluster::RemoveImagesResponse>, Status> {
        let req = req.into_inner();
        let mut out = cluster::RemoveImagesResponse::default();
        for r in &req.references {
            let (untagged, deleted) = images::remove(&self.app, r, req.force).await?;
            out.untagged.extend(untagged);
            out.deleted.extend(deleted);
        }
        Ok(Response::new(out))
    }

    async fn inspect_image(
        &self,
        req: Request<cluster::ImageRef>,
    ) -> Result<Response<cluster::InspectImageResponse>, Status> {
        let json = images::inspect(&self.app, &req.into_inner().reference).await?;
        Ok(Response::new(cluster::InspectImageResponse { json }))
    }

    type ExportContainerStream = DataStream;

    async fn export_container(
        &self,
        req: Request<cluster::ContainerRef>,
    ) -> Result<Response<DataStream>, Status> {
        let c = self.find(&req.into_inner().name_or_id)?;
        let rx = images::export(&self.app, &c).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_images(
        &self,
        _req: Request<cluster::ListImagesRequest>,
    ) -> Result<Response<cluster::ListImagesResponse>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        let mut by_id: BTreeMap<String, cluster::ImageInfo> = BTreeMap::new();
        for n in self.app.state.nodes().map_err(|e| to_status(e.into()))? {
            for i in &n.images {
                let e = by_id
                    .entry(i.id.clone())
                    .or_insert_with(|| cluster::ImageInfo {
                        id: i.id.clone(),
                        size: i.size,
                        created_ms: i.created_ms,
                        ..Default::default()
                    });
                for t in &i.tags {
                    if !e.tags.contains(t) {
                        e.tags.push(t.clone());
                    }
                }
                e.nodes.push(n.name.clone());
            }
        }
        Ok(Response::new(cluster::ListImagesResponse {
            images: by_id.into_values().collect(),
        }))
    }

    async fn join_cluster(
        &self,
        req: Request<cluster::JoinRequest>,
    ) -> Result<Response<cluster::ClusterStatus>, Status> {
        let req = req.into_inner();
        if req.reserve_id {
            return Ok(Response::new(
                membership::reserve_id(&self.app, &req.addr, 0).await?,
            ));
        }
        Ok(Response::new(
            membership::join(&self.app, req.id, &req.addr).await?,
        ))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        req: Request<cluster::EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let state = self.app.state.clone();
        tokio::spawn(async move {
            let mut changes = state.subscribe();
            let mut next = 0u64;
            loop {
                changes.borrow_and_update();
                let batch = match state.events(next, 512) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                for e in &batch {
                    next = e.seq + 1;
                    if e.time_ms < req.since_ms {
                        continue;
                    }
                    let info = cluster::EventInfo {
                        seq: e.seq,
                        time_ms: e.time_ms,
                        kind: e.kind.clone(),
                        action: e.action.clone(),
                        actor: e.actor.clone(),
                        attributes: e.attributes.clone(),
                    };
                    if tx.send(Ok(info)).await.is_err() {
                        return;
                    }
                }
                if !batch.is_empty() {
                    continue;
                }
                if !req.follow {
                    return;
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type BackupStream = DataStream;

    async fn backup(
        &self,
        _req: Request<cluster::BackupRequest>,
    ) -> Result<Response<DataStream>, Status> {
        // Current as of now: a read index first, then one rocksdb snapshot.
        self.app.linearize().await.map_err(to_status)?;
        // Off the server's one thread: it reads every row.
        let state = self.app.state.clone();
        let bytes = tokio::task::spawn_blocking(move || state.backup())
            .await
            .map_err(|e| Status::internal(format!("the backup task failed: {e}")))?
            .map_err(|e| to_status(e.into()))?;
        let chunks: Vec<Result<cluster::DataChunk, Status>> = bytes
            .chunks(1 << 20)
            .map(|c| Ok(cluster::DataChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn leave_cluster(
        &self,
        req: Request<cluster::LeaveRequest>,
    ) -> Result<Response<cluster::ClusterStatus>, Status> {
        Ok(Response::new(
            membership::leave(&self.app, req.into_inner().id).await?,
        ))
    }

    async fn get_cluster_status(
        &self,
        _req: Request<cluster::ClusterStatusRequest>,
    ) -> Result<Response<cluster::ClusterStatus>, Status> {
        Ok(Response::new(membership::status(&self.app)))
    }

    async fn label_node(
        &self,
        req: Request<cluster::LabelNodeRequest>,
    ) -> Result<Response<cluster::LabelNodeResponse>, Status> {
        let req = req.into_inner();
        for k in req.set.keys().chain(req.remove.iter()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Status::invalid_argument(format!("invalid label key {k:?}")));
            }
        }
        self.app
            .write(Op::NodeLabels(records::SetNodeLabels {
                name: req.node.clone(),
                set: req.set,
                remove: req.remove,
            }))
            .await
            .map_err(to_status)?;
        Ok(Response::new(cluster::LabelNodeResponse { node: req.node }))
    }

    async fn list_nodes(
        &self,
        _req: Request<cluster::ListNodesRequest>,
    ) -> Result<Response<cluster::ListNodesResponse>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        let containers = self.app.containers().await.map_err(to_status)?;
        let nodes = self
            .app
            .state
            .nodes()
            .map_err(|e| to_status(e.into()))?
            .iter()
            .map(|n| convert::node_with_usage(n, &containers))
            .collect();
        Ok(Response::new(cluster::ListNodesResponse { nodes }))
    }

    async fn update_node(
        &self,
        req: Request<cluster::UpdateNodeRequest>,
    ) -> Result<Response<cluster::NodeInfo>, Status> {
        let req = req.into_inner();
        let node = self
            .app
            .state
            .node(&req.node)
            .map_err(|e| to_status(e.into()))?
            .ok_or_else(|| Status::not_found(format!("No such node: {}", req.node)))?;
        for k in req.label_add.keys().chain(req.label_rm.iter()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Status::invalid_argument(format!("invalid label key {k:?}")));
            }
        }
        let availability = match req.availability.as_str() {
            "" => None,
            "active" => Some(records::Availability::Active),
            "pause" => Some(records::Availability::Pause),
            "drain" => Some(records::Availability::Drain),
            other => {
                return Err(Status::invalid_argument(format!(
                    "invalid availability {other:?}: use active, pause or drain"
                )))
            }
        };
        if let Some(a) = availability {
            self.app
                .write(Op::NodeAvailability(records::SetNodeAvailability {
                    name: node.name.clone(),
                    availability: a as i32,
                }))
                .await
                .map_err(to_status)?;
        }
        if !req.label_add.is_empty() || !req.label_rm.is_empty() {
            self.app
                .write(Op::NodeLabels(records::SetNodeLabels {
                    name: node.name.clone(),
                    set: req.label_add,
                    remove: req.label_rm,
                }))
                .await
                .map_err(to_status)?;
        }
        let containers = self.app.containers().await.map_err(to_status)?;
        let node = self
            .app
            .state
            .node(&node.name)
            .map_err(|e| to_status(e.into()))?
            .ok_or_else(|| Status::not_found(format!("No such node: {}", req.node)))?;
        Ok(Response::new(convert::node_with_usage(&node, &containers)))
    }

    async fn remove_node(
        &self,
        req: Request<cluster::RemoveNodeRequest>,
    ) -> Result<Response<cluster::RemoveNodeResponse>, Status> {
        let req = req.into_inner();
        let node = self
            .app
            .state
            .node(&req.node)
            .map_err(|e| to_status(e.into()))?
            .ok_or_else(|| Status::not_found(format!("No such node: {}", req.node)))?;
        if node.status() == records::NodeStatus::Ready && !req.force {
            return Err(Status::failed_precondition(format!(
                "node {} is ready: stop its agent first (or drain it), or remove it with --force",
                node.name
            )));
        }
        // Its movable containers are placed elsewhere by the reconciler;
        // the others stay as records until removed.
        self.app
            .write(Op::RemoveNode(records::RemoveNode {
                name: node.name.clone(),
            }))
            .await
            .map_err(to_status)?;
        // The removal revoked its certificate; a session still open ends.
        self.app.nodes.disconnect(&node.name).await;
        Ok(Response::new(cluster::RemoveNodeResponse {
            node: node.name,
        }))
    }

    async fn create_service(
        &self,
        req: Request<cluster::CreateServiceRequest>,
    ) -> Result<Response<cluster::ServiceInfo>, Status> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("no service spec given"))?;
        Ok(Response::new(services::create(&self.app, spec).await?))
    }

    async fn list_services(
        &self,
        _req: Request<cluster::ListServicesRequest>,
    ) -> Result<Response<cluster::ListServicesResponse>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        let containers = self.app.containers().await.map_err(to_status)?;
        let counts = scheduler::planner::task_counts(&containers);
        let services = self
            .app
            .state
            .services()
            .map_err(|e| to_status(e.into()))?
            .iter()
            .map(|s| {
                let (running, placed) = counts.get(&s.name).copied().unwrap_or((0, 0));
                convert::service_to_wire(s, running, placed)
            })
            .collect();
        Ok(Response::new(cluster::ListServicesResponse { services }))
    }

    async fn inspect_service(
        &self,
        req: Request<cluster::ServiceRef>,
    ) -> Result<Response<cluster::ServiceInfo>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        let svc = services::find(&self.app, &req.into_inner().name)?;
        Ok(Response::new(services::info(&self.app, &svc).await?))
    }

    async fn update_service(
        &self,
        req: Request<cluster::UpdateServiceRequest>,
    ) -> Result<Response<cluster::ServiceInfo>, Status> {
        Ok(Response::new(
            services::update(&self.app, req.into_inner()).await?,
        ))
    }

    async fn remove_service(
        &self,
        req: Request<cluster::ServiceRef>,
    ) -> Result<Response<cluster::ServiceInfo>, Status> {
        Ok(Response::new(
            services::remove(&self.app, &req.into_inner().name).await?,
        ))
    }

    async fn service_tasks(
        &self,
        req: Request<cluster::ServiceRef>,
    ) -> Result<Response<cluster::ServiceTasksResponse>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        let tasks = services::tasks(&self.app, &req.into_inner().name).await?;
        Ok(Response::new(cluster::ServiceTasksResponse { tasks }))
    }

    async fn get_ca_status(
        &self,
        _req: Request<cluster::CaStatusRequest>,
    ) -> Result<Response<cluster::CaStatus>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        Ok(Response::new(
            crate::pki::rotation::status(&self.app).await?,
        ))
    }

    async fn rotate_ca(
        &self,
        _req: Request<cluster::CaStatusRequest>,
    ) -> Result<Response<cluster::CaStatus>, Status> {
        Ok(Response::new(
            crate::pki::rotation::rotate(&self.app).await?,
        ))
    }

    async fn join_token(
        &self,
        req: Request<cluster::JoinTokenRequest>,
    ) -> Result<Response<cluster::JoinTokenResponse>, Status> {
        self.app.linearize().await.map_err(to_status)?;
        Ok(Response::new(
            crate::pki::enroll::join_token(&self.app, req.into_inner()).await?,
        ))
    }
}
