//! The reconcile loop: on the leader only, woken by applied commits, by
//! node sessions and acknowledgements, and by a tick for the rules that
//! depend on time. Each pass reads the replicated state off the server's
//! one thread, plans, and carries the steps out; a pass waits for its
//! commits, so the next one sees them and never places a container twice.

use std::time::Duration;

use berth_proto::agent::{image_request, RemoveContainerOp};
use berth_proto::records::{self, command::Op, NodeStatus};

use super::planner::{self, Delivery, PlanConfig, Snapshot, Step};
use crate::app::{now_ms, App, AppError};
use crate::nodes::assignment;

/// How often a pass runs when nothing wakes the loop (for time rules:
/// reschedule delays, restart delays, resends).
const TICK: Duration = Duration::from_millis(200);

/// The longest pause after a pass. The pause is the pass's own time, up
/// to this: while commits stream in, the loop spends at most about half
/// its time in passes (a busy loop of cheap passes is not possible), yet a
/// cheap pass is followed at once. A fixed 5 ms pause had delayed the
/// placement of a `run` that came just after another pass by up to 5 ms.
const MAX_GAP: Duration = Duration::from_millis(5);

/// The most pending reasons one command sets.
const REASONS_PER_COMMAND: usize = 256;

/// Starts the loop; it runs for the life of the server and acts only
/// while this server leads.
pub fn spawn(app: App) {
    tokio::spawn(run(app));
}

async fn run(app: App) {
    // Log chunks do not wake it: they change nothing it plans from.
    let mut changes = app.state.subscribe_changes();
    let mut leading_term: Option<u64> = None;
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = app.scheduler.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        changes.borrow_and_update();
        let m = crate::raft::metrics(&app.raft);
        if m.current_leader != Some(m.id) {
            if leading_term.take().is_some() {
                app.scheduler.forget_sent();
            }
            continue;
        }
        if leading_term != Some(m.current_term) {
            // A new term: the state must hold every commit of earlier
            // leaders before it is planned from (a read index).
            if app.linearize().await.is_err() {
                continue;
            }
            app.scheduler.forget_sent();
            leading_term = Some(m.current_term);
            tracing::info!(term = m.current_term, "reconciler: leading");
        }
        let began = std::time::Instant::now();
        if let Err(e) = pass(&app).await {
            tracing::warn!("reconciler pass: {e}");
        }
        tokio::time::sleep(began.elapsed().min(MAX_GAP)).await;
    }
}

/// One pass: read, plan, act.
pub async fn pass(app: &App) -> Result<(), AppError> {
    let began = std::time::Instant::now();
    let state = app.state.clone();
    let cfg = PlanConfig {
        reschedule_after_ms: app.scheduler.config.reschedule_after.as_millis() as i64,
        restart_delay_ms: app.scheduler.config.restart_delay.as_millis() as i64,
    };
    let (steps, nodes) = tokio::task::spawn_blocking(move || {
        let snapshot = Snapshot {
            containers: state.containers()?,
            nodes: state.nodes()?,
            services: state.services()?,
            now_ms: now_ms(),
        };
        let steps = planner::plan(&snapshot, &cfg);
        Ok::<_, crate::state::StateError>((steps, snapshot.nodes))
    })
    .await
    .map_err(|e| AppError::Raft(format!("the planning task failed: {e}")))??;
    let planned = began.elapsed();
    // The nodes' session streams, taken once for every assignment of the pass.
    let senders = app.nodes.senders().await;
    let count = steps.len();
    let mut writes = Vec::new();
    let mut slicer = crate::stall::Slicer::new();
    for step in steps {
        // A pass of thousands of steps (a service's new tasks) is carried
        // out in slices, the runtime's other tasks in between.
        slicer.step().await;
        match step {
            Step::CreateTask(c) => writes.push(Op::Create(records::CreateContainer {
                container: Some(*c),
            })),
            Step::Place {
                id,
                node,
                generation,
            } => writes.push(Op::Place(records::PlaceContainer {
                id,
                node,
                generation,
                spec: None,
                service_version: 0,
            })),
            Step::Unplaceable(list) => {
                // In commands of a bounded size, which the batcher packs
                // into entries: a service of 20,000 tasks that cannot be
                // placed is not one entry that every member applies in
                // one go without yielding.
                let mut list = list.into_iter().peekable();
                while list.peek().is_some() {
                    let (ids, reasons) = list.by_ref().take(REASONS_PER_COMMAND).unzip();
                    writes.push(Op::PendingReason(records::SetPendingReason {
                        ids,
                        reasons,
                    }));
                }
            }
            Step::Unplace {
                container,
                evict,
                spec,
                why,
            } => unplace(app, *container, evict, spec, why),
            Step::Remove(c) => remove(app, *c, &nodes).await,
            Step::Deliver { container, action } => deliver(app, &senders, &container, action),
            Step::UpdateState {
                service,
                version,
                state,
                message,
                rollback,
            } => writes.push(update_state(
                app, &service, version, state, message, rollback,
            )?),
        }
    }
    let sent = began.elapsed();
    let n_writes = writes.len();
    let results = app.write_all(writes).await;
    if count > 0 {
        tracing::debug!(
            steps = count,
            writes = n_writes,
            planned_ms = planned.as_millis() as u64,
            sent_ms = (sent - planned).as_millis() as u64,
            committed_ms = (began.elapsed() - sent).as_millis() as u64,
            "reconciler pass"
        );
    }
    for r in results {
        match r {
            // A placement committed in this pass is delivered at once, not
            // by the next pass (after a pause): a `run` waits on it. Later
            // passes send it again only if it is not acknowledged.
            Ok(res) => {
                if let Some(c) = &res.container {
                    if let Some(action) = planner::first_delivery(c) {
                        deliver(app, &senders, c, action);
                    }
                }
            }
            // Another pass or a user got there first: the next pass sees it.
            Err(AppError::Refused(why)) => tracing::debug!("reconciler: refused: {why}"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends a node the assignment a container needs, unless it was sent at
/// this generation and acknowledged (or is not yet due again). Never
/// waits: a node whose stream is full gets it on a later pass.
fn deliver(
    app: &App,
    senders: &std::collections::HashMap<
        String,
        tokio::sync::mpsc::Sender<berth_proto::agent::ServerMessage>,
    >,
    c: &records::Container,
    action: Delivery,
) {
    let Some(tx) = senders.get(&c.node) else {
        return;
    };
    if !app
        .scheduler
        .should_send(&c.node, &c.id, c.generation, action)
    {
        return;
    }
    let msg = match action {
        Delivery::Run => assignment::run(c),
        Delivery::Create => assignment::create(c),
        Delivery::Stop => assignment::stop(c, c.stop_signal, c.stop_timeout_s),
    };
    if tx.try_send(msg).is_ok() {
        app.scheduler
            .record_sent(&c.node, &c.id, c.generation, action);
    }
}

/// Takes a container off its node, in a task of its own: the node deletes
/// its copy first when asked to (`evict`) and reachable, then the
/// container is committed unplaced at the next generation, which fences
/// any copy left behind (invariant 3).
fn unplace(
    app: &App,
    c: records::Container,
    evict: bool,
    spec: Option<Box<(records::ContainerSpec, u64)>>,
    why: &'static str,
) {
    if !app.scheduler.begin(&c.id) {
        return;
    }
    let app = app.clone();
    tokio::spawn(async move {
        let result = async {
            if evict && app.nodes.is_connected(&c.node).await {
                remove_on_node(&app, &c).await?;
            }
            let (spec, service_version) = match spec.map(|b| *b) {
                Some((mut s, v)) => {
                    // A task keeps its host name across versions.
                    if s.hostname.is_empty() {
                        s.hostname = c
                            .spec
                            .as_ref()
                            .map(|o| o.hostname.clone())
                            .unwrap_or_default();
                    }
                    (Some(s), v)
                }
                None => (None, c.service_version),
            };
            app.write(Op::Place(records::PlaceContainer {
                id: c.id.clone(),
                node: String::new(),
                generation: c.generation + 1,
                spec,
                service_version,
            }))
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(id = %c.id, name = %c.name, from = %c.node, "moving: {why}"),
            Err(e) => tracing::warn!(id = %c.id, name = %c.name, "cannot move it ({why}): {e}"),
        }
        app.scheduler.end(&c.id);
    });
}

/// Removes a container: from its node first (if it has one that is
/// connected), then its record. A node that is down or gone deletes its
/// copy when it registers again (the container is then stale). Waits
/// while a client reads its output or waits for it.
async fn remove(app: &App, c: records::Container, nodes: &[records::Node]) {
    if app.scheduler.held(&c.id) {
        return;
    }
    let connected = !c.node.is_empty() && app.nodes.is_connected(&c.node).await;
    let away = c.node.is_empty()
        || nodes
            .iter()
            .find(|n| n.name == c.node)
            .is_none_or(|n| n.status() != NodeStatus::Ready);
    if !connected && !away {
        // Ready but not (yet) connected here: wait for its session.
        return;
    }
    if !app.scheduler.begin(&c.id) {
        return;
    }
    let app = app.clone();
    tokio::spawn(async move {
        let result = async {
            if connected {
                remove_on_node(&app, &c).await?;
            }
            app.write(Op::Remove(records::RemoveContainer {
                id: c.id.clone(),
                at_ms: now_ms(),
            }))
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
        .await;
        match result {
            Ok(()) => {}
            // A client's `rm` that began first removed it.
            Err(_) if app.state.container(&c.id).is_ok_and(|now| now.is_none()) => {}
            Err(e) => tracing::warn!(id = %c.id, name = %c.name, "cannot remove it: {e}"),
        }
        app.scheduler.end(&c.id);
    });
}

async fn remove_on_node(app: &App, c: &records::Container) -> Result<(), String> {
    app.nodes
        .image_call(
            &c.node,
            image_request::Op::RemoveContainer(RemoveContainerOp {
                container_id: c.id.clone(),
            }),
            &[],
        )
        .await
        .map(|_| ())
}

/// The write that records a service's update state (and, to roll back,
/// puts the previous spec back as a new version).
fn update_state(
    app: &App,
    service: &str,
    version: u64,
    state: &str,
    message: String,
    rollback: bool,
) -> Result<Op, AppError> {
    let mut svc = app
        .state
        .service(service)?
        .ok_or_else(|| AppError::Refused(format!("service {service} not found")))?;
    if svc.version != version {
        return Err(AppError::Refused(format!(
            "service {service} changed meanwhile"
        )));
    }
    svc.update_state = state.to_string();
    svc.update_message = message;
    svc.updated_at_ms = now_ms();
    if rollback {
        if let Some(prev) = svc.previous_spec.take() {
            svc.previous_spec = svc.spec.replace(prev);
            svc.version += 1;
        }
    }
    Ok(Op::Service(records::PutService {
        service: Some(svc),
        expect_version: version,
        create: false,
    }))
}
