//! Conversion between cluster.proto wire types and the persisted records.

use berth_proto::cluster;
use berth_proto::records::{self, Container};

use crate::state::status::state_name;

pub fn spec_from_wire(s: cluster::ContainerSpec) -> records::ContainerSpec {
    records::ContainerSpec {
        image: s.image,
        cmd: s.cmd,
        env: s.env,
        hostname: s.hostname,
        workdir: s.workdir,
        network: s.network,
        auto_remove: s.auto_remove,
        memory_bytes: s.memory_bytes,
        nano_cpus: s.nano_cpus,
        pids_limit: s.pids_limit,
        user: s.user.clone(),
        entrypoint: s.entrypoint.clone(),
        entrypoint_set: s.entrypoint_set,
        volumes: s.volumes.clone(),
        restart: s.restart.clone(),
        tty: s.tty,
        stdin_open: s.stdin_open,
        ulimits: s.ulimits.clone(),
        constraints: s.constraints,
        reserve_memory_bytes: s.reserve_memory_bytes,
        reserve_nano_cpus: s.reserve_nano_cpus,
        reschedule: s.reschedule,
        placement_strategy: s.placement_strategy,
        privileged: s.privileged,
        cap_add: s.cap_add,
        cap_drop: s.cap_drop,
        devices: s.devices,
        security_opt: s.security_opt,
        read_only: s.read_only,
        tmpfs: s.tmpfs,
        labels: s.labels,
    }
}

pub fn spec_to_wire(s: &records::ContainerSpec) -> cluster::ContainerSpec {
    cluster::ContainerSpec {
        image: s.image.clone(),
        cmd: s.cmd.clone(),
        env: s.env.clone(),
        hostname: s.hostname.clone(),
        workdir: s.workdir.clone(),
        network: s.network.clone(),
        auto_remove: s.auto_remove,
        memory_bytes: s.memory_bytes,
        nano_cpus: s.nano_cpus,
        pids_limit: s.pids_limit,
        user: s.user.clone(),
        entrypoint: s.entrypoint.clone(),
        entrypoint_set: s.entrypoint_set,
        volumes: s.volumes.clone(),
        restart: s.restart.clone(),
        tty: s.tty,
        stdin_open: s.stdin_open,
        ulimits: s.ulimits.clone(),
        constraints: s.constraints.clone(),
        reserve_memory_bytes: s.reserve_memory_bytes,
        reserve_nano_cpus: s.reserve_nano_cpus,
        reschedule: s.reschedule,
        placement_strategy: s.placement_strategy.clone(),
        privileged: s.privileged,
        cap_add: s.cap_add.clone(),
        cap_drop: s.cap_drop.clone(),
        devices: s.devices.clone(),
        security_opt: s.security_opt.clone(),
        read_only: s.read_only,
        tmpfs: s.tmpfs.clone(),
        labels: s.labels.clone(),
    }
}

pub fn container_to_wire(c: &Container) -> cluster::ContainerInfo {
    cluster::ContainerInfo {
        id: c.id.clone(),
        name: c.name.clone(),
        spec: c.spec.as_ref().map(spec_to_wire),
        state: state_name(c.state()).to_string(),
        node: c.node.clone(),
        exit_code: c.exit_code,
        created_at_ms: c.created_at_ms,
        started_at_ms: c.started_at_ms,
        finished_at_ms: c.finished_at_ms,
        error: c.error.clone(),
        generation: c.generation,
        image_id: c.image_id.clone(),
        history: c
            .history
            .iter()
            .map(|t| {
                format!(
                    "{}>{}@{}({})",
                    state_name(t.from()),
                    state_name(t.to()),
                    t.at_ms,
                    t.exit_code
                )
            })
            .collect(),
        oom_killed: c.oom_killed,
        log_first_seq: c
            .log_chunks
            .first()
            .map(|m| m.first_seq)
            .unwrap_or(c.log_next_seq),
        log_next_seq: c.log_next_seq,
        size_rw: None,
        pending_reason: c.pending_reason.clone(),
        service: c.service.clone(),
        slot: c.slot,
        service_version: c.service_version,
        desired: match c.desired() {
            records::DesiredState::DesiredRunning => "running",
            records::DesiredState::DesiredStopped => "stopped",
            records::DesiredState::DesiredRemoved => "removed",
            records::DesiredState::Unspecified => "",
        }
        .into(),
    }
}

pub fn service_to_wire(s: &records::Service, running: u64, placed: u64) -> cluster::ServiceInfo {
    let u = s.update.clone().unwrap_or_default();
    cluster::ServiceInfo {
        id: s.id.clone(),
        spec: Some(cluster::ServiceSpec {
            name: s.name.clone(),
            task: s.spec.as_ref().map(spec_to_wire),
            replicas: s.replicas,
            restart_condition: s.restart_condition.clone(),
            update_parallelism: u.parallelism,
            update_delay_ms: u.delay_ms,
            update_order: u.order,
            update_failure_action: u.failure_action,
        }),
        version: s.version,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        running,
        placed,
        update_state: s.update_state.clone(),
        update_message: s.update_message.clone(),
        previous_task: s.previous_spec.as_ref().map(spec_to_wire),
    }
}

/// The name the CLI shows for a node availability.
pub fn availability_name(a: records::Availability) -> &'static str {
    match a {
        records::Availability::Active => "active",
        records::Availability::Pause => "pause",
        records::Availability::Drain => "drain",
    }
}

/// A line of the cluster's log tail as the agents send lines, so that
/// api/logs.rs handles both sources alike.
pub fn log_from_record(l: records::LogLine) -> berth_proto::agent::LogLine {
    berth_proto::agent::LogLine {
        seq: l.seq,
        stream: if l.stream() == records::LogStream::Stderr {
            "stderr".into()
        } else {
            "stdout".into()
        },
        time_ns: l.time_ns,
        line: l.line.into(),
    }
}

pub fn node_to_wire(n: &records::Node) -> cluster::NodeInfo {
    cluster::NodeInfo {
        name: n.name.clone(),
        status: match n.status() {
            records::NodeStatus::Ready => "ready".into(),
            records::NodeStatus::Down => "down".into(),
            records::NodeStatus::Unspecified => "unknown".into(),
        },
        kernel: n.kernel.clone(),
        cgroup_version: n.cgroup_version.clone(),
        cpus: n.cpus,
        memory_bytes: n.memory_bytes,
        labels: n.labels.clone(),
        availability: availability_name(n.availability()).into(),
        agent_labels: n.agent_labels.clone(),
        containers: 0,
        reserved_memory_bytes: 0,
        reserved_nano_cpus: 0,
        updated_at_ms: n.updated_at_ms,
    }
}

/// A node with what is placed on it.
pub fn node_with_usage(n: &records::Node, containers: &[Container]) -> cluster::NodeInfo {
    let mut info = node_to_wire(n);
    let view = crate::scheduler::feasibility::NodeView::build(std::slice::from_ref(n), containers)
        .remove(0);
    info.containers = view.containers as u32;
    info.reserved_memory_bytes = view.reserved_memory;
    info.reserved_nano_cpus = view.reserved_cpus;
    info
}
