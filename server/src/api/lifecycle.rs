//! Lifecycle verbs on placed containers: start, stop, kill. The status type
//! decides what is legal; the node's agent does the work and reports the
//! transitions, which the verbs wait for where Docker's do.

use std::time::Duration;

use berth_proto::records::{self, ContainerState, DesiredState};
use tonic::Status;

use crate::app::App;
use crate::nodes::assignment;
use crate::state::status::Status as CStatus;

fn node_unreachable(c: &records::Container) -> Status {
    Status::unavailable(format!(
        "node {} of container {} is not connected",
        c.node, c.name
    ))
}

/// Waits until `done` holds for the container (or `limit` passes) and
/// returns it.
async fn wait_for(
    app: &App,
    id: &str,
    limit: Duration,
    done: impl Fn(&records::Container) -> bool,
) -> Result<records::Container, Status> {
    let mut changes = app.state.subscribe();
    let wait = async {
        loop {
            changes.borrow_and_update();
            let c = app
                .state
                .container(id)
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("No such container: {id}")))?;
            if done(&c) {
                return Ok(c);
            }
            changes
                .changed()
                .await
                .map_err(|_| Status::unavailable("the server is shutting down"))?;
        }
    };
    tokio::time::timeout(limit, wait).await.map_err(|_| {
        Status::deadline_exceeded(format!("container {id} did not change state in {limit:?}"))
    })?
}

/// Records that a container can no longer run nor be cleaned up, and why.
pub async fn mark_dead(app: &App, c: &records::Container, why: &str) {
    let op = records::command::Op::Transition(records::RecordTransition {
        id: c.id.clone(),
        node: c.node.clone(),
        generation: c.generation,
        to: ContainerState::Dead as i32,
        exit_code: c.exit_code,
        at_ms: crate::app::now_ms(),
        error: why.to_string(),
        image_id: String::new(),
        oom_killed: c.oom_killed,
    });
    if let Err(e) = app.write(op).await {
        tracing::warn!(id = %c.id, "could not mark the container dead: {e}");
    }
}

/// Starts a created or exited container (a running one is left as it is)
/// and returns once it runs or has ended.
pub async fn start(app: &App, c: records::Container) -> Result<records::Container, Status> {
    CStatus(c.state())
        .check_start(&c.name)
        .map_err(Status::failed_precondition)?;
    if c.state() == ContainerState::Running {
        return Ok(c);
    }
    let asked = crate::app::now_ms();
    let c = set_desired(app, &c, DesiredState::DesiredRunning, 0, 0).await?;
    // A container not placed yet is the reconciler's to place and start;
    // a placed one is started on its node now.
    if !c.node.is_empty() && !app.nodes.send(&c.node, assignment::run(&c)).await {
        return Err(node_unreachable(&c));
    }
    wait_started(app, &c.id, asked).await
}

/// Commits what the user wants of a container.
pub async fn set_desired(
    app: &App,
    c: &records::Container,
    desired: DesiredState,
    stop_signal: i32,
    stop_timeout_s: u32,
) -> Result<records::Container, Status> {
    app.write(records::command::Op::Desired(records::SetDesired {
        id: c.id.clone(),
        desired: desired as i32,
        stop_signal,
        stop_timeout_s,
    }))
    .await
    .map_err(super::to_status)?
    .container
    .ok_or_else(|| Status::internal("the desired state was committed without its container"))
}

/// Waits until the container has started, or ended, since `asked` (ms),
/// or the scheduler has said why it cannot place it (then it is returned
/// Pending, with the reason; it starts once a node fits).
pub async fn wait_started(app: &App, id: &str, asked: i64) -> Result<records::Container, Status> {
    wait_for(app, id, Duration::from_secs(60), |now| {
        now.started_at_ms >= asked
            || now.finished_at_ms >= asked
            || (now.state() == ContainerState::Pending && !now.pending_reason.is_empty())
    })
    .await
}

/// Waits until the container is placed on a node (or has started or
/// ended since `asked`, ms), or the scheduler has said why it cannot place
/// it.
pub async fn wait_placed(app: &App, id: &str, asked: i64) -> Result<records::Container, Status> {
    wait_for(app, id, Duration::from_secs(60), |now| {
        !now.node.is_empty()
            || now.started_at_ms >= asked
            || now.finished_at_ms >= asked
            || !now.pending_reason.is_empty()
    })
    .await
}

/// Stops a running container: its stop signal, then SIGKILL after
/// `timeout_s`. Returns once it has stopped; a container that is not
/// running is returned as it is, as Docker does.
pub async fn stop(
    app: &App,
    c: records::Container,
    timeout_s: u32,
) -> Result<records::Container, Status> {
    let running = CStatus(c.state()).is_running();
    // Stopped by the user: no restart policy, no reconciler brings it
    // back; the reconciler sends the stop to its node.
    let c = set_desired(app, &c, DesiredState::DesiredStopped, 0, timeout_s).await?;
    if !running {
        return Ok(c);
    }
    if !app.nodes.is_connected(&c.node).await {
        return Err(node_unreachable(&c));
    }
    wait_for(
        app,
        &c.id,
        Duration::from_secs(timeout_s as u64 + 30),
        |now| CStatus(now.state()).is_finished(),
    )
    .await
}

/// Sends a signal to a running container.
pub async fn kill(
    app: &App,
    c: records::Container,
    signal: i32,
) -> Result<records::Container, Status> {
    CStatus(c.state())
        .check_kill(&c.name)
        .map_err(Status::failed_precondition)?;
    if !app.nodes.send(&c.node, assignment::kill(&c, signal)).await {
        return Err(node_unreachable(&c));
    }
    if signal == 9 {
        return wait_for(app, &c.id, Duration::from_secs(30), |now| {
            CStatus(now.state()).is_finished()
        })
        .await;
    }
    Ok(c)
}

/// Pauses (freezes) a running container, or unpauses a paused one, and
/// returns once the node reports the new state.
pub async fn pause(
    app: &App,
    c: records::Container,
    paused: bool,
) -> Result<records::Container, Status> {
    let (need, why) = if paused {
        (
            ContainerState::Running,
            format!("container {} is not running", c.name),
        )
    } else {
        (
            ContainerState::Paused,
            format!("container {} is not paused", c.name),
        )
    };
    if c.state() != need {
        return Err(Status::failed_precondition(why));
    }
    if !app.nodes.send(&c.node, assignment::pause(&c, paused)).await {
        return Err(node_unreachable(&c));
    }
    let want = if paused {
        ContainerState::Paused
    } else {
        ContainerState::Running
    };
    wait_for(app, &c.id, Duration::from_secs(30), |now| {
        now.state() == want || CStatus(now.state()).is_finished()
    })
    .await
}

/// Waits until the node has created the container (or failed to), or the
/// scheduler has said why it cannot place it.
pub async fn wait_created(app: &App, id: &str) -> Result<records::Container, Status> {
    wait_for(app, id, Duration::from_secs(60), |now| {
        now.state() != ContainerState::Pending
            || !now.error.is_empty()
            || !now.pending_reason.is_empty()
    })
    .await
}

/// Attaches a client to a container's terminal or stdio through its node:
/// starts it first if asked (its process waits for this attachment), then
/// relays input to the node and returns the output stream, which ends when
/// the container's side does.
pub async fn attach(
    app: &App,
    c: records::Container,
    start: berth_proto::cluster::AttachStart,
    inbound: tonic::Streaming<berth_proto::cluster::AttachInput>,
) -> Result<OutputReceiver, Status> {
    let spec = c.spec.clone().unwrap_or_default();
    if start.start {
        CStatus(c.state())
            .check_start(&c.name)
            .map_err(Status::failed_precondition)?;
        if c.node.is_empty() {
            return Err(Status::failed_precondition(format!(
                "container {} is not created on a node yet",
                c.name
            )));
        }
    } else if c.state() != ContainerState::Running && c.state() != ContainerState::Paused {
        return Err(Status::failed_precondition(
            "You cannot attach to a stopped container, start it first",
        ));
    }
    if !spec.tty && !spec.stdin_open {
        return Err(Status::failed_precondition(format!(
            "container {} was started without -i or -t: use berth logs -f",
            c.name
        )));
    }
    let c = if start.start {
        set_desired(app, &c, DesiredState::DesiredRunning, 0, 0).await?
    } else {
        c
    };
    let (stream_id, rx) = open_stream(app, &c, start.size.unwrap_or_default(), None).await?;
    if start.start && !app.nodes.send(&c.node, assignment::run_attached(&c)).await {
        return Err(node_unreachable(&c));
    }
    relay_input(app, &c.node, &c.id, stream_id, inbound);
    Ok(rx)
}

/// What a client reads from an attachment or an exec.
type OutputReceiver =
    tokio::sync::mpsc::Receiver<Result<berth_proto::cluster::AttachOutput, Status>>;

/// Opens an attachment to `c` on its node (an exec when `exec` is set):
/// its stream id, and what the node will send on it.
async fn open_stream(
    app: &App,
    c: &records::Container,
    size: berth_proto::cluster::Resize,
    exec: Option<berth_proto::agent::ExecSpec>,
) -> Result<(u64, OutputReceiver), Status> {
    use berth_proto::agent::{server_message, AttachOpen, ServerMessage};
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stream_id = app.nodes.open_attachment(&c.node, tx).await;
    let open = ServerMessage {
        msg: Some(server_message::Msg::AttachOpen(AttachOpen {
            stream_id,
            container_id: c.id.clone(),
            rows: size.rows,
            cols: size.cols,
            exec,
        })),
    };
    if !app.nodes.send(&c.node, open).await {
        return Err(node_unreachable(c));
    }
    Ok((stream_id, rx))
}

/// Relays a client's input (stdin, resizes, the end of stdin) to the node
/// holding an attachment; when the client goes away, tells the node to drop
/// the attachment and leave the container.
fn relay_input(
    app: &App,
    node: &str,
    container: &str,
    stream_id: u64,
    mut inbound: tonic::Streaming<berth_proto::cluster::AttachInput>,
) {
    use berth_proto::agent::{server_message, AttachData, ServerMessage};
    use berth_proto::cluster::attach_input::Msg;
    let nodes = app.nodes.clone();
    let node = node.to_string();
    // While a client is attached, the cluster's --rm waits.
    let hold = app.scheduler.hold(container);
    tokio::spawn(async move {
        let _hold = hold;
        let send = |d: AttachData| {
            let nodes = nodes.clone();
            let node = node.clone();
            async move {
                nodes
                    .send(
                        &node,
                        ServerMessage {
                            msg: Some(server_message::Msg::AttachInput(d)),
                        },
                    )
                    .await
            }
        };
        loop {
            let d = match inbound.message().await {
                Ok(Some(m)) => match m.msg {
                    Some(Msg::Stdin(data)) => AttachData {
                        stream_id,
                        data,
                        ..Default::default()
                    },
                    Some(Msg::Resize(r)) => AttachData {
                        stream_id,
                        rows: r.rows,
                        cols: r.cols,
                        ..Default::default()
                    },
                    Some(Msg::CloseStdin(_)) => AttachData {
                        stream_id,
                        close: true,
                        ..Default::default()
                    },
                    _ => continue,
                },
                // The client went away (detached, or gone): the container stays.
                _ => {
                    send(AttachData {
                        stream_id,
                        detach: true,
                        ..Default::default()
                    })
                    .await;
                    return;
                }
            };
            if !send(d).await {
                return;
            }
        }
    });
}

/// Runs a process in a running container through its node and attaches
/// the client to it; the output stream's last message carries its exit code.
pub async fn exec(
    app: &App,
    c: records::Container,
    start: berth_proto::cluster::ExecStart,
    inbound: tonic::Streaming<berth_proto::cluster::AttachInput>,
) -> Result<OutputReceiver, Status> {
    use berth_proto::agent::ExecSpec;
    if c.state() != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            c.name
        )));
    }
    if start.cmd.is_empty() {
        return Err(Status::invalid_argument("no command given to exec"));
    }
    let exec = ExecSpec {
        cmd: start.cmd,
        env: start.env,
        user: start.user,
        workdir: start.workdir,
        tty: start.tty,
        interactive: start.interactive,
    };
    let size = start.size.unwrap_or_default();
    let (stream_id, rx) = open_stream(app, &c, size, Some(exec)).await?;
    relay_input(app, &c.node, &c.id, stream_id, inbound);
    Ok(rx)
}
