//! Builders of the assignments the leader sends to agents.

use berth_proto::agent::{self, server_message, Action, Assign, ServerMessage};
use berth_proto::records::Container;

/// "Create and start this container" for the node it is placed on.
pub fn run(c: &Container) -> ServerMessage {
    with_action(c, Action::Run, 0, 0)
}

/// "Start this container, holding its process until it is attached."
pub fn run_attached(c: &Container) -> ServerMessage {
    let mut m = with_action(c, Action::Run, 0, 0);
    if let Some(berth_proto::agent::server_message::Msg::Assign(a)) = &mut m.msg {
        if let Some(s) = &mut a.spec {
            s.wait_for_attach = true;
        }
    }
    m
}

/// "Create this container; do not start it."
pub fn create(c: &Container) -> ServerMessage {
    with_action(c, Action::Create, 0, 0)
}

/// "Stop this container: `signal` (0 for its stop signal), SIGKILL after
/// `timeout_s`."
pub fn stop(c: &Container, signal: i32, timeout_s: u32) -> ServerMessage {
    with_action(c, Action::Stop, signal, timeout_s)
}

/// "Send this signal to the container now."
pub fn kill(c: &Container, signal: i32) -> ServerMessage {
    with_action(c, Action::Kill, signal, 0)
}

/// "Freeze (or thaw) the container's processes."
pub fn pause(c: &Container, paused: bool) -> ServerMessage {
    with_action(
        c,
        if paused {
            Action::Pause
        } else {
            Action::Unpause
        },
        0,
        0,
    )
}

fn with_action(c: &Container, action: Action, signal: i32, timeout_s: u32) -> ServerMessage {
    let spec = c.spec.clone().unwrap_or_default();
    ServerMessage {
        msg: Some(server_message::Msg::Assign(Assign {
            container_id: c.id.clone(),
            name: c.name.clone(),
            generation: c.generation,
            action: action as i32,
            signal,
            timeout_s,
            log_first_seq: c.log_next_seq.max(1),
            spec: Some(agent::ContainerSpec {
                image: spec.image,
                cmd: spec.cmd,
                env: spec.env,
                hostname: spec.hostname,
                workdir: spec.workdir,
                network: spec.network,
                memory_bytes: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                pids_limit: spec.pids_limit,
                user: spec.user,
                entrypoint: spec.entrypoint,
                entrypoint_set: spec.entrypoint_set,
                volumes: spec.volumes,
                restart: spec.restart,
                tty: spec.tty,
                stdin_open: spec.stdin_open,
                wait_for_attach: false,
                ulimits: spec.ulimits,
                movable: crate::scheduler::planner::movable(c),
                privileged: spec.privileged,
                cap_add: spec.cap_add,
                cap_drop: spec.cap_drop,
                devices: spec.devices,
                security_opt: spec.security_opt,
                read_only: spec.read_only,
                tmpfs: spec.tmpfs,
            }),
        })),
    }
}
