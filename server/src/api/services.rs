//! Services: the api commits a service's desired state (its spec and
//! replicas) and returns; the reconciler creates, places, replaces and
//! removes the tasks.

use berth_proto::cluster;
use berth_proto::records::{self, command::Op, SCHEMA_VERSION};
use tonic::Status;

use super::{check_spec, convert, names, to_status};
use crate::app::{now_ms, App};
use crate::scheduler::planner;

/// Checks a service's spec and commits it as a new service.
pub async fn create(app: &App, spec: cluster::ServiceSpec) -> Result<cluster::ServiceInfo, Status> {
    if !names::valid_name(&spec.name) || spec.name.contains('.') {
        return Err(Status::invalid_argument(format!(
            "invalid service name {:?}: use [a-zA-Z0-9][a-zA-Z0-9_-] (no dots: tasks are named NAME.SLOT)",
            spec.name
        )));
    }
    let task = check_task(spec.task.clone().unwrap_or_default())?;
    crate::scheduler::check_image(app, &task.image).map_err(to_status)?;
    check_restart_condition(&spec.restart_condition)?;
    let update = update_config(&spec)?;
    let now = now_ms();
    let svc = records::Service {
        schema: SCHEMA_VERSION,
        id: names::new_id(),
        name: spec.name.clone(),
        spec: Some(task),
        replicas: spec.replicas,
        version: 1,
        created_at_ms: now,
        updated_at_ms: now,
        restart_condition: spec.restart_condition.clone(),
        update: Some(update),
        previous_spec: None,
        update_state: String::new(),
        update_message: String::new(),
    };
    let r = app
        .write(Op::Service(records::PutService {
            service: Some(svc),
            expect_version: 0,
            create: true,
        }))
        .await
        .map_err(to_status)?;
    info(app, &r.service.unwrap_or_default()).await
}

/// Applies an update (scale, image, env, command, update settings,
/// constraints) or a rollback, as one new version of the service.
pub async fn update(
    app: &App,
    req: cluster::UpdateServiceRequest,
) -> Result<cluster::ServiceInfo, Status> {
    let mut svc = find(app, &req.name)?;
    let expect = svc.version;
    let before = svc.spec.clone().unwrap_or_default();
    let mut task = before.clone();
    if req.rollback {
        let prev = svc.previous_spec.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "service {} has no previous spec to roll back to",
                svc.name
            ))
        })?;
        task = prev;
    }
    if let Some(image) = &req.image {
        task.image = names::normalize_image(image);
        crate::scheduler::check_image(app, &task.image).map_err(to_status)?;
    }
    for k in &req.env_rm {
        task.env.retain(|e| e.split('=').next() != Some(k.as_str()));
    }
    for e in &req.env_add {
        let key = e.split('=').next().unwrap_or_default();
        task.env.retain(|x| x.split('=').next() != Some(key));
        task.env.push(e.clone());
    }
    if req.cmd_set {
        task.cmd = req.cmd.clone();
    }
    for c in &req.constraint_rm {
        task.constraints.retain(|x| x != c);
    }
    for c in &req.constraint_add {
        if !task.constraints.contains(c) {
            task.constraints.push(c.clone());
        }
    }
    let task = check_task(convert::spec_to_wire(&task))?;
    let mut update = svc.update.clone().unwrap_or_default();
    if let Some(p) = req.update_parallelism {
        update.parallelism = p;
    }
    if let Some(d) = req.update_delay_ms {
        update.delay_ms = d;
    }
    if let Some(o) = &req.update_order {
        update.order = o.clone();
    }
    if let Some(a) = &req.update_failure_action {
        update.failure_action = a.clone();
    }
    check_update(&update)?;
    svc.update = Some(update);
    if let Some(r) = req.replicas {
        svc.replicas = r;
    }
    if task != before {
        // A new version: the reconciler replaces the tasks in batches.
        svc.previous_spec = Some(before);
        svc.spec = Some(task);
        svc.version += 1;
        svc.update_state = if req.rollback {
            "rolling_back".into()
        } else {
            "updating".into()
        };
        svc.update_message.clear();
    }
    svc.updated_at_ms = now_ms();
    let r = app
        .write(Op::Service(records::PutService {
            service: Some(svc),
            expect_version: expect,
            create: false,
        }))
        .await
        .map_err(to_status)?;
    info(app, &r.service.unwrap_or_default()).await
}

/// Removes a service; the reconciler removes its tasks.
pub async fn remove(app: &App, name: &str) -> Result<cluster::ServiceInfo, Status> {
    let svc = find(app, name)?;
    let info = info(app, &svc).await?;
    app.write(Op::RemoveService(records::RemoveService {
        name: svc.name.clone(),
    }))
    .await
    .map_err(to_status)?;
    Ok(info)
}

/// A service by name or id (or a unique id prefix).
pub fn find(app: &App, name: &str) -> Result<records::Service, Status> {
    if let Some(s) = app.state.service(name).map_err(|e| to_status(e.into()))? {
        return Ok(s);
    }
    let all = app.state.services().map_err(|e| to_status(e.into()))?;
    let mut by_id = all
        .into_iter()
        .filter(|s| !name.is_empty() && s.id.starts_with(name));
    match (by_id.next(), by_id.next()) {
        (Some(s), None) => Ok(s),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "the id prefix {name} matches more than one service"
        ))),
        _ => Err(Status::not_found(format!("service {name} not found"))),
    }
}

/// The tasks of a service, by slot.
pub async fn tasks(app: &App, name: &str) -> Result<Vec<cluster::ContainerInfo>, Status> {
    let svc = find(app, name)?;
    let mut tasks: Vec<records::Container> = app
        .containers()
        .await
        .map_err(to_status)?
        .into_iter()
        .filter(|c| c.service == svc.name)
        .collect();
    tasks.sort_by_key(|c| c.slot);
    Ok(tasks.iter().map(convert::container_to_wire).collect())
}

/// A service as the CLI shows it, with how many tasks run.
pub async fn info(app: &App, svc: &records::Service) -> Result<cluster::ServiceInfo, Status> {
    let containers = app.containers().await.map_err(to_status)?;
    let (running, placed) = planner::task_counts(&containers)
        .get(&svc.name)
        .copied()
        .unwrap_or((0, 0));
    Ok(convert::service_to_wire(svc, running, placed))
}

fn check_task(task: cluster::ContainerSpec) -> Result<records::ContainerSpec, Status> {
    let mut task = check_spec(task)?;
    if task.auto_remove {
        return Err(Status::invalid_argument(
            "--rm is not for services: the cluster keeps their tasks",
        ));
    }
    if task.tty || task.stdin_open {
        return Err(Status::invalid_argument(
            "service tasks take no terminal or stdin (-t, -i)",
        ));
    }
    // Tasks restart by the service's restart condition, not the engine's.
    task.restart.clear();
    Ok(task)
}

fn check_restart_condition(c: &str) -> Result<(), Status> {
    if matches!(c, "" | "any" | "on-failure" | "none") {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid restart condition {c:?}: use any, on-failure or none"
        )))
    }
}

fn update_config(spec: &cluster::ServiceSpec) -> Result<records::UpdateConfig, Status> {
    let u = records::UpdateConfig {
        parallelism: spec.update_parallelism,
        delay_ms: spec.update_delay_ms,
        order: spec.update_order.clone(),
        failure_action: spec.update_failure_action.clone(),
    };
    check_update(&u)?;
    Ok(u)
}

fn check_update(u: &records::UpdateConfig) -> Result<(), Status> {
    // start-first would run a task's new version beside its old one; a
    // task is one container at one place, so berth replaces stop-first.
    if !matches!(u.order.as_str(), "" | "stop-first") {
        return Err(Status::invalid_argument(format!(
            "update order {:?} is not supported: berth updates stop-first (a task is one container, never two at once)",
            u.order
        )));
    }
    if !matches!(u.failure_action.as_str(), "" | "pause" | "rollback") {
        return Err(Status::invalid_argument(format!(
            "invalid update failure action {:?}: use pause or rollback",
            u.failure_action
        )));
    }
    Ok(())
}
