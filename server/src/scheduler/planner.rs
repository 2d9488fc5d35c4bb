//! The planner: from one view of the replicated state (containers, nodes,
//! services) and the time, the steps that bring the actual state toward
//! the desired one. It is a pure function, so every rule here has a unit
//! test; the reconciler carries the steps out.

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_proto::records::{
    Container, ContainerSpec, ContainerState, DesiredState, Node, NodeStatus, Service,
    SCHEMA_VERSION,
};

use super::feasibility::{self, Demand, NodeView};
use super::ranking;
use crate::state::status::Status;

/// The replicated state the planner looks at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub containers: Vec<Container>,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    /// The leader's clock, in ms since the epoch.
    pub now_ms: i64,
}

/// The timing rules of the planner.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// A movable container's node must be Down this long before the
    /// container is placed elsewhere.
    pub reschedule_after_ms: i64,
    /// A service task that ended is started again after this long.
    pub restart_delay_ms: i64,
}

/// What a node should be told to do with a placed container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    Run,
    Create,
    Stop,
}

/// What the node of a placed container that it has not reported yet
/// (Pending) must be sent: the run, or for a container created stopped
/// (`berth create`) only its creation. None for any other container.
pub fn first_delivery(c: &Container) -> Option<Delivery> {
    if c.state() != ContainerState::Pending || c.node.is_empty() {
        return None;
    }
    match c.desired() {
        DesiredState::DesiredRunning => Some(Delivery::Run),
        DesiredState::DesiredStopped => Some(Delivery::Create),
        _ => None,
    }
}

/// One step toward the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Commit a new task of a service: Pending, placed already when a node
    /// fits (its placement is in the same commit), or with the reason.
    CreateTask(Box<Container>),
    /// Commit a placement of a Pending container on `node`.
    Place {
        id: String,
        node: String,
        generation: u64,
    },
    /// Record why these Pending containers cannot be placed.
    Unplaceable(Vec<(String, String)>),
    /// Take the container off its node: the node deletes its copy first
    /// (if `evict` and the node is reachable), then the container is
    /// committed Pending and unplaced at the next generation, with `spec`
    /// (and its service version) if it changes.
    Unplace {
        container: Box<Container>,
        evict: bool,
        spec: Option<Box<(ContainerSpec, u64)>>,
        why: &'static str,
    },
    /// Delete the container from its node, then its record.
    Remove(Box<Container>),
    /// Tell the container's node to run, create or stop it.
    Deliver {
        container: Box<Container>,
        action: Delivery,
    },
    /// Record a service's update state.
    UpdateState {
        service: String,
        version: u64,
        state: &'static str,
        message: String,
        rollback: bool,
    },
}

/// True if the cluster may move the container to another node.
pub fn movable(c: &Container) -> bool {
    !c.service.is_empty() || c.spec.as_ref().is_some_and(|s| s.reschedule)
}

/// The steps for one snapshot, in the order they should be carried out.
pub fn plan(s: &Snapshot, cfg: &PlanConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    let nodes: HashMap<&str, &Node> = s.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let services: HashMap<&str, &Service> =
        s.services.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut to_place: Vec<&Container> = Vec::new();
    let mut new_tasks: Vec<Container> = Vec::new();

    // Services: a task per slot, no task beyond the replicas.
    for svc in &s.services {
        let tasks: Vec<&Container> = s
            .containers
            .iter()
            .filter(|c| c.service == svc.name && c.desired() != DesiredState::DesiredRemoved)
            .collect();
        let slots: HashSet<u32> = tasks.iter().map(|c| c.slot).collect();
        for slot in 1..=svc.replicas as u32 {
            if !slots.contains(&slot) {
                new_tasks.push(new_task(svc, slot, s.now_ms));
            }
        }
        steps.extend(update_steps(svc, &tasks, s.now_ms));
    }

    for c in &s.containers {
        let state = c.state();
        let finished = Status(state).is_finished();
        let node = nodes.get(c.node.as_str()).copied();
        // Removals: asked for, --rm after the end, tasks no service wants.
        let orphan = !c.service.is_empty()
            && services
                .get(c.service.as_str())
                .is_none_or(|svc| c.slot as u64 > svc.replicas);
        let auto_removed =
            c.service.is_empty() && c.spec.as_ref().is_some_and(|s| s.auto_remove) && finished;
        if c.desired() == DesiredState::DesiredRemoved || orphan || auto_removed {
            steps.push(Step::Remove(Box::new(c.clone())));
            continue;
        }
        if !c.node.is_empty() && movable(c) && c.desired() == DesiredState::DesiredRunning {
            // The node is gone for good (node rm), or Down for long enough
            // that its lease has stopped the container there.
            let lost = match node {
                None => true,
                Some(n) => {
                    n.status() != NodeStatus::Ready
                        && s.now_ms - n.updated_at_ms >= cfg.reschedule_after_ms
                }
            };
            if lost {
                steps.push(Step::Unplace {
                    container: Box::new(c.clone()),
                    evict: false,
                    spec: None,
                    why: "its node is lost",
                });
                continue;
            }
            let draining = node.is_some_and(|n| {
                n.availability() == berth_proto::records::Availability::Drain
                    && n.status() == NodeStatus::Ready
            });
            if draining && !finished {
                steps.push(Step::Unplace {
                    container: Box::new(c.clone()),
                    evict: true,
                    spec: None,
                    why: "its node is draining",
                });
                continue;
            }
        }
        // A service task that ended starts again, by its restart condition.
        if !c.service.is_empty()
            && finished
            && c.desired() == DesiredState::DesiredRunning
            && !c.node.is_empty()
        {
            let svc = services.get(c.service.as_str());
            let condition = svc.map(|v| v.restart_condition.as_str()).unwrap_or("any");
            let again = match condition {
                "none" => false,
                "on-failure" => c.exit_code != 0 || !c.error.is_empty(),
                _ => true,
            };
            if again && s.now_ms - c.finished_at_ms >= cfg.restart_delay_ms {
                steps.push(Step::Unplace {
                    container: Box::new(c.clone()),
                    evict: true,
                    spec: None,
                    why: "its task ended",
                });
            }
            continue;
        }
        match (state, c.node.is_empty(), c.desired()) {
            (ContainerState::Pending, true, DesiredState::DesiredRunning)
            | (ContainerState::Pending, true, DesiredState::DesiredStopped) => to_place.push(c),
            (ContainerState::Pending, false, _) => {
                if let Some(action) = first_delivery(c) {
                    steps.push(Step::Deliver {
                        container: Box::new(c.clone()),
                        action,
                    })
                }
            }
            (
                ContainerState::Running | ContainerState::Paused,
                false,
                DesiredState::DesiredStopped,
            ) => steps.push(Step::Deliver {
                container: Box::new(c.clone()),
                action: Delivery::Stop,
            }),
            _ => {}
        }
    }

    // New tasks are placed in the same pass and created placed (one
    // commit each, the placement in it), after the containers waiting.
    to_place.extend(new_tasks.iter());
    let placed = place(&s.nodes, &s.containers, &to_place);
    let new_ids: HashMap<&str, usize> = new_tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut created: Vec<Option<Container>> = new_tasks.iter().cloned().map(Some).collect();
    for step in placed {
        match step {
            Step::Place {
                id,
                node,
                generation,
            } if new_ids.contains_key(id.as_str()) => {
                if let Some(t) = created[new_ids[id.as_str()]].as_mut() {
                    t.node = node;
                    t.generation = generation;
                }
            }
            Step::Unplaceable(list) => {
                let mut old = Vec::new();
                for (id, why) in list {
                    match new_ids.get(id.as_str()) {
                        Some(&i) => {
                            if let Some(t) = created[i].as_mut() {
                                t.pending_reason = why;
                            }
                        }
                        None => old.push((id, why)),
                    }
                }
                if !old.is_empty() {
                    steps.push(Step::Unplaceable(old));
                }
            }
            other => steps.push(other),
        }
    }
    steps.extend(
        created
            .into_iter()
            .flatten()
            .map(|t| Step::CreateTask(Box::new(t))),
    );
    steps
}

/// Places each container on the best feasible node, counting every
/// placement against its node before the next, so that one pass spreads.
/// Containers that ask the same share a heap of their feasible nodes by
/// rank; a node's rank changes only when it takes a container, so a
/// popped entry is checked against the node's rank now and pushed back if
/// it moved: a pass costs about P log N, not P times N.
pub fn place(nodes: &[Node], containers: &[Container], pending: &[&Container]) -> Vec<Step> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut views = NodeView::build(nodes, containers);
    let mut steps = Vec::new();
    let mut unplaceable = Vec::new();
    let mut heaps: HashMap<Demand, BinaryHeap<Reverse<(ranking::RankKey, usize)>>> = HashMap::new();
    for c in pending {
        let Some(spec) = c.spec.as_ref() else {
            unplaceable.push((c.id.clone(), "the container has no spec".into()));
            continue;
        };
        let demand = match Demand::of(spec, &c.service) {
            Ok(d) => d,
            Err(why) => {
                unplaceable.push((c.id.clone(), why));
                continue;
            }
        };
        let heap = heaps.entry(demand.clone()).or_insert_with(|| {
            views
                .iter()
                .enumerate()
                .filter(|(_, v)| feasibility::check(v, &demand).is_ok())
                .map(|(i, v)| Reverse((ranking::rank(v, &demand), i)))
                .collect()
        });
        let mut chosen = None;
        while let Some(Reverse((key, i))) = heap.pop() {
            // Full now (this pass placed others here): out for good.
            if feasibility::check(&views[i], &demand).is_err() {
                continue;
            }
            let now = ranking::rank(&views[i], &demand);
            if now != key {
                heap.push(Reverse((now, i)));
                continue;
            }
            chosen = Some(i);
            break;
        }
        match chosen {
            Some(i) => {
                views[i].add(spec, &c.service);
                heap.push(Reverse((ranking::rank(&views[i], &demand), i)));
                steps.push(Step::Place {
                    id: c.id.clone(),
                    node: views[i].node.name.clone(),
                    generation: c.generation + 1,
                });
            }
            None => {
                // Only when nothing fits: each node's refusal, for the reason.
                let refusals: Vec<(String, feasibility::Refusal)> = views
                    .iter()
                    .filter_map(|v| {
                        feasibility::check(v, &demand)
                            .err()
                            .map(|r| (v.node.name.clone(), r))
                    })
                    .collect();
                let why = feasibility::explain(&demand, &refusals);
                if c.pending_reason != why {
                    unplaceable.push((c.id.clone(), why));
                }
            }
        }
    }
    if !unplaceable.is_empty() {
        steps.push(Step::Unplaceable(unplaceable));
    }
    steps
}

/// A new, unplaced task of `svc` for `slot`.
pub fn new_task(svc: &Service, slot: u32, now_ms: i64) -> Container {
    let mut spec = svc.spec.clone().unwrap_or_default();
    let id = crate::api::names::new_id();
    if spec.hostname.is_empty() {
        spec.hostname = id[..12].to_string();
    }
    Container {
        schema: SCHEMA_VERSION,
        name: format!("{}.{slot}", svc.name),
        id,
        spec: Some(spec),
        state: ContainerState::Pending as i32,
        desired: DesiredState::DesiredRunning as i32,
        created_at_ms: now_ms,
        log_next_seq: 1,
        service: svc.name.clone(),
        slot,
        service_version: svc.version,
        ..Default::default()
    }
}

/// The steps of a rolling update: replace tasks of older versions in
/// batches of `parallelism`, the next batch once the last one runs and the
/// delay has passed; a task of the new version that fails stops the update
/// (pause) or rolls it back.
fn update_steps(svc: &Service, tasks: &[&Container], now_ms: i64) -> Vec<Step> {
    let mut steps = Vec::new();
    let stopped = matches!(svc.update_state.as_str(), "paused" | "rolled_back");
    let outdated: Vec<&&Container> = tasks
        .iter()
        .filter(|c| c.service_version < svc.version)
        .collect();
    let current: Vec<&&Container> = tasks
        .iter()
        .filter(|c| c.service_version == svc.version)
        .collect();
    let updating = matches!(svc.update_state.as_str(), "updating" | "rolling_back");
    if !updating {
        return steps;
    }
    // A task of the new version that failed since the update began.
    let failed = current
        .iter()
        .find(|c| Status(c.state()).is_finished() && (c.exit_code != 0 || !c.error.is_empty()));
    if let Some(f) = failed {
        if svc.update_state == "updating" {
            let cfg = svc.update.clone().unwrap_or_default();
            let message = format!(
                "update paused: task {} failed (exit code {}{})",
                f.name,
                f.exit_code,
                if f.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", f.error)
                }
            );
            let rollback = cfg.failure_action == "rollback" && svc.previous_spec.is_some();
            steps.push(Step::UpdateState {
                service: svc.name.clone(),
                version: svc.version,
                state: if rollback { "rolling_back" } else { "paused" },
                message,
                rollback,
            });
            return steps;
        }
    }
    if stopped {
        return steps;
    }
    if outdated.is_empty() {
        // Every task runs the new version: the update is done once they run.
        if current.iter().all(|c| c.state() == ContainerState::Running) {
            steps.push(Step::UpdateState {
                service: svc.name.clone(),
                version: svc.version,
                state: if svc.update_state == "rolling_back" {
                    "rolled_back"
                } else {
                    "completed"
                },
                message: String::new(),
                rollback: false,
            });
        }
        return steps;
    }
    let cfg = svc.update.clone().unwrap_or_default();
    let parallelism = cfg.parallelism.max(1) as usize;
    // Tasks of the new version not running yet are the batch in flight.
    let in_flight = current
        .iter()
        .filter(|c| c.state() != ContainerState::Running)
        .count();
    if in_flight > 0 {
        return steps;
    }
    // The delay counts from when the last replaced task started.
    let last_started = current.iter().map(|c| c.started_at_ms).max().unwrap_or(0);
    if last_started > 0 && now_ms - last_started < cfg.delay_ms as i64 {
        return steps;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let mut batch: Vec<&&Container> = outdated;
    batch.sort_by_key(|c| c.slot);
    for c in batch.into_iter().take(parallelism) {
        steps.push(Step::Unplace {
            container: Box::new((**c).clone()),
            evict: true,
            spec: Some(Box::new((spec.clone(), svc.version))),
            why: "its service is updating",
        });
    }
    steps
}

/// How many tasks of each service run now, and how many are placed on
/// a node, by service name.
pub fn task_counts(containers: &[Container]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for c in containers.iter().filter(|c| !c.service.is_empty()) {
        let e = out.entry(c.service.clone()).or_default();
        if c.state() == ContainerState::Running {
            e.0 += 1;
        }
        if !c.node.is_empty() {
            e.1 += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::records::{Availability, Image};

    const CFG: PlanConfig = PlanConfig {
        reschedule_after_ms: 1000,
        restart_delay_ms: 500,
    };

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            status: NodeStatus::Ready as i32,
            cpus: 2,
            memory_bytes: 4 << 30,
            images: vec![Image {
                id: "sha256:b".into(),
                tags: vec!["busybox:latest".into()],
                ..Default::default()
            }],
            updated_at_ms: 0,
            ..Default::default()
        }
    }

    fn service(name: &str, replicas: u64) -> Service {
        Service {
            schema: SCHEMA_VERSION,
            id: "s1".into(),
            name: name.into(),
            spec: Some(ContainerSpec {
                image: "busybox:latest".into(),
                ..Default::default()
            }),
            replicas,
            version: 1,
            ..Default::default()
        }
    }

    /// Plans, then applies the plan's creates and placements to the
    /// snapshot as the reconciler's commits would, until nothing changes.
    fn settle(s: &mut Snapshot) {
        for _ in 0..10 {
            let steps = plan(s, &CFG);
            let mut changed = false;
            for step in steps {
                match step {
                    Step::CreateTask(mut c) => {
                        // Created placed: its node reports it running.
                        if !c.node.is_empty() {
                            c.set_state(ContainerState::Running);
                        }
                        s.containers.push(*c);
                        changed = true;
                    }
                    Step::Place {
                        id,
                        node,
                        generation,
                    } => {
                        let c = s.containers.iter_mut().find(|c| c.id == id).unwrap();
                        c.node = node;
                        c.generation = generation;
                        c.set_state(ContainerState::Running);
                        changed = true;
                    }
                    _ => {}
                }
            }
            if !changed {
                return;
            }
        }
    }

    fn per_node(s: &Snapshot) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in &s.containers {
            *m.entry(c.node.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn six_replicas_spread_two_per_node() {
        let mut s = Snapshot {
            nodes: vec![node("a"), node("b"), node("c")],
            services: vec![service("web", 6)],
            ..Default::default()
        };
        settle(&mut s);
        assert_eq!(s.containers.len(), 6);
        assert_eq!(
            per_node(&s).values().copied().collect::<Vec<_>>(),
            [2, 2, 2]
        );
        let mut names: Vec<&str> = s.containers.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["web.1", "web.2", "web.3", "web.4", "web.5", "web.6"]
        );
    }

    #[test]
    fn constraints_and_reservations_bound_placement() {
        let mut b = node("b");
        b.labels.insert("zone".into(), "east".into());
        let mut svc = service("db", 3);
        svc.spec.as_mut().unwrap().constraints = vec!["node.labels.zone==east".into()];
        let mut s = Snapshot {
            nodes: vec![node("a"), b, node("c")],
            services: vec![svc],
            ..Default::default()
        };
        settle(&mut s);
        assert!(s.containers.iter().all(|c| c.node == "b"));
        // 4 GiB nodes take two 1.5 GiB reservations each; the seventh waits.
        let mut svc = service("big", 7);
        svc.spec.as_mut().unwrap().reserve_memory_bytes = 1536 << 20;
        let mut s = Snapshot {
            nodes: vec![node("a"), node("b"), node("c")],
            services: vec![svc],
            ..Default::default()
        };
        settle(&mut s);
        let placed = s.containers.iter().filter(|c| !c.node.is_empty()).count();
        assert_eq!(placed, 6);
        // The seventh was created with the reason, and no later pass
        // writes it again.
        let waiting: Vec<&Container> = s.containers.iter().filter(|c| c.node.is_empty()).collect();
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            waiting[0].pending_reason,
            "no node has 1.5 GiB of free memory"
        );
        assert!(!plan(&s, &CFG)
            .iter()
            .any(|st| matches!(st, Step::Unplaceable(_))));
    }

    #[test]
    fn a_lost_node_moves_movable_containers_only_after_the_delay() {
        let mut s = Snapshot {
            nodes: vec![node("a"), node("b")],
            services: vec![service("web", 2)],
            ..Default::default()
        };
        settle(&mut s);
        let mut plain = new_task(&service("x", 1), 1, 0);
        plain.service.clear();
        plain.node = "a".into();
        plain.set_state(ContainerState::Running);
        s.containers.push(plain);
        s.nodes[0].status = NodeStatus::Down as i32;
        s.nodes[0].updated_at_ms = 10_000;
        s.now_ms = 10_500;
        assert!(!plan(&s, &CFG)
            .iter()
            .any(|st| matches!(st, Step::Unplace { .. })));
        s.now_ms = 11_000;
        let moved: Vec<String> = plan(&s, &CFG)
            .into_iter()
            .filter_map(|st| match st {
                Step::Unplace {
                    container, evict, ..
                } => {
                    assert!(!evict, "a lost node is not asked");
                    Some(container.name)
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "only the service task on a moves: {moved:?}"
        );
        assert!(moved[0].starts_with("web."));
    }

    #[test]
    fn drain_evicts_and_pause_keeps() {
        let mut s = Snapshot {
            nodes: vec![node("a"), node("b")],
            services: vec![service("web", 2)],
            ..Default::default()
        };
        settle(&mut s);
        s.nodes[0].availability = Availability::Pause as i32;
        assert!(!plan(&s, &CFG)
            .iter()
            .any(|st| matches!(st, Step::Unplace { .. })));
        s.nodes[0].availability = Availability::Drain as i32;
        let evicted = plan(&s, &CFG)
            .into_iter()
            .filter(|st| matches!(st, Step::Unplace { evict: true, .. }))
            .count();
        assert_eq!(evicted, 1);
    }

    #[test]
    fn scale_down_removes_the_highest_slots_and_rm_removes_all() {
        let mut s = Snapshot {
            nodes: vec![node("a")],
            services: vec![service("web", 3)],
            ..Default::default()
        };
        settle(&mut s);
        s.services[0].replicas = 1;
        let removed: Vec<String> = plan(&s, &CFG)
            .into_iter()
            .filter_map(|st| match st {
                Step::Remove(c) => Some(c.name),
                _ => None,
            })
            .collect();
        assert_eq!(removed.len(), 2);
        assert!(!removed.contains(&"web.1".to_string()));
        s.services.clear();
        let removed = plan(&s, &CFG)
            .into_iter()
            .filter(|st| matches!(st, Step::Remove(_)))
            .count();
        assert_eq!(removed, 3);
    }

    #[test]
    fn ended_tasks_restart_by_condition_and_auto_remove_goes() {
        let mut s = Snapshot {
            nodes: vec![node("a")],
            services: vec![service("web", 1)],
            ..Default::default()
        };
        settle(&mut s);
        let t = &mut s.containers[0];
        t.set_state(ContainerState::Exited);
        t.exit_code = 0;
        t.finished_at_ms = 1000;
        s.now_ms = 1200;
        assert!(!plan(&s, &CFG)
            .iter()
            .any(|st| matches!(st, Step::Unplace { .. })));
        s.now_ms = 1500;
        assert!(plan(&s, &CFG)
            .iter()
            .any(|st| matches!(st, Step::Unplace { .. })));
        s.services[0].restart_condition = "on-failure".into();
        assert!(!plan(&s, &CFG)
            .iter()
            .any(|st| matches!(st, Step::Unplace { .. })));
        // A plain container with --rm is removed once it ends.
        let mut rm = new_task(&service("x", 1), 1, 0);
        rm.service.clear();
        rm.spec.as_mut().unwrap().auto_remove = true;
        rm.node = "a".into();
        rm.set_state(ContainerState::Exited);
        let id = rm.id.clone();
        s.containers.push(rm);
        assert!(plan(&s, &CFG)
            .iter()
            .any(|st| matches!(st, Step::Remove(c) if c.id == id)));
    }

    #[test]
    fn a_rolling_update_goes_in_batches_and_a_failure_pauses_it() {
        let mut svc = service("web", 4);
        let mut s = Snapshot {
            nodes: vec![node("a"), node("b")],
            services: vec![svc.clone()],
            ..Default::default()
        };
        settle(&mut s);
        svc.version = 2;
        svc.previous_spec = svc.spec.clone();
        svc.spec.as_mut().unwrap().image = "busybox:2".into();
        svc.update_state = "updating".into();
        svc.update = Some(berth_proto::records::UpdateConfig {
            parallelism: 2,
            ..Default::default()
        });
        s.services = vec![svc];
        let batch: Vec<u32> = plan(&s, &CFG)
            .into_iter()
            .filter_map(|st| match st {
                Step::Unplace {
                    container,
                    spec: Some(new),
                    ..
                } => {
                    assert_eq!(new.0.image, "busybox:2");
                    assert_eq!(new.1, 2);
                    Some(container.slot)
                }
                _ => None,
            })
            .collect();
        assert_eq!(batch, [1, 2]);
        // Slot 1 runs the new version; slot 2 failed at it.
        for c in s.containers.iter_mut() {
            if c.slot <= 2 {
                c.service_version = 2;
                c.generation += 1;
            }
            if c.slot == 2 {
                c.set_state(ContainerState::Exited);
                c.exit_code = 1;
            }
        }
        let steps = plan(&s, &CFG);
        assert!(steps.iter().any(|st| matches!(
            st,
            Step::UpdateState {
                state: "paused",
                ..
            }
        )));
        assert!(!steps
            .iter()
            .any(|st| matches!(st, Step::Unplace { spec: Some(_), .. })));
    }
}
