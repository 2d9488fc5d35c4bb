//! Builders of the assignments the leader sends to agents.

use berth_proto::agent::{self, server_message, Action, Assign, ServerMessage};
use berth_proto::records::Container;

/// "Create and start this container" for the node it is placed on.
pub fn run(c: &Container) -> ServerMessage {
    let spec = c.spec.clone().unwrap_or_default();
    ServerMessage {
        msg: Some(server_message::Msg::Assign(Assign {
            container_id: c.id.clone(),
            name: c.name.clone(),
            generation: c.generation,
            action: Action::Run as i32,
            spec: Some(agent::ContainerSpec {
                image: spec.image,
                cmd: spec.cmd,
                env: spec.env,
                hostname: spec.hostname,
                workdir: spec.workdir,
                network: spec.network,
            }),
        })),
    }
}

/// "Kill this container if it runs and delete what you hold of it."
pub fn remove(id: &str, generation: u64) -> ServerMessage {
    ServerMessage {
        msg: Some(server_message::Msg::Assign(Assign {
            container_id: id.to_string(),
            generation,
            action: Action::Remove as i32,
            ..Default::default()
        })),
    }
}
