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
    }
}

fn spec_to_wire(s: &records::ContainerSpec) -> cluster::ContainerSpec {
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
        size_rw: None,
    }
}

pub fn log_to_wire(l: &records::LogLine) -> cluster::LogEntry {
    cluster::LogEntry {
        seq: l.seq,
        stream: if l.stream() == records::LogStream::Stderr {
            "stderr".into()
        } else {
            "stdout".into()
        },
        time_ns: l.time_ns,
        line: l.line.clone(),
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
    }
}
