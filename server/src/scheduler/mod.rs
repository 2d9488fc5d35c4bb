//! Placement: which node runs a container. Only the leader schedules, and a
//! placement is committed before any agent hears of it (invariant 2).

use berth_proto::records::{command::Op, Container, Node, NodeStatus, PlaceContainer};

use crate::app::{App, AppError};
use crate::nodes::assignment;

/// Why a container cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("no node of the cluster is ready to run containers")]
    NoReadyNode,
    #[error(
        "No such image: {0} (no ready node holds it; use `berth import` or `berth load` first)"
    )]
    NoSuchImage(String),
}

/// Picks the ready node that holds `image` and runs the fewest containers.
pub fn choose_node<'a>(
    nodes: &'a [Node],
    image: &str,
    running_on: impl Fn(&str) -> usize,
) -> Result<&'a Node, ScheduleError> {
    let ready: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.status() == NodeStatus::Ready)
        .collect();
    if ready.is_empty() {
        return Err(ScheduleError::NoReadyNode);
    }
    ready
        .into_iter()
        .filter(|n| {
            n.images
                .iter()
                .any(|i| i.tags.iter().any(|t| t == image) || i.id == image)
        })
        .min_by_key(|n| (running_on(&n.name), n.name.clone()))
        .ok_or_else(|| ScheduleError::NoSuchImage(image.to_string()))
}

/// Checks that some ready node could run `image`, before anything is committed.
pub fn check_feasible(app: &App, image: &str) -> Result<(), AppError> {
    let nodes = app.state.nodes()?;
    choose_node(&nodes, image, |_| 0)
        .map(|_| ())
        .map_err(|e| AppError::Refused(e.to_string()))
}

/// Places a committed container on a node, commits the placement with the
/// next generation, and sends the assignment to the node's agent: run it,
/// or with `start` false only create it.
pub async fn place(app: &App, container: &Container, start: bool) -> Result<Container, AppError> {
    let nodes = app.state.nodes()?;
    let all = app.state.containers()?;
    let node = choose_node(
        &nodes,
        &container
            .spec
            .as_ref()
            .map(|s| s.image.clone())
            .unwrap_or_default(),
        |name| {
            all.iter()
                .filter(|c| c.node == name && c.finished_at_ms == 0)
                .count()
        },
    )
    .map_err(|e| AppError::Refused(e.to_string()))?;
    let placed = app
        .write(Op::Place(PlaceContainer {
            id: container.id.clone(),
            node: node.name.clone(),
            generation: container.generation + 1,
        }))
        .await?
        .container
        .unwrap_or_default();
    let msg = if start {
        assignment::run(&placed)
    } else {
        assignment::create(&placed)
    };
    app.nodes.send(&placed.node, msg).await;
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::records::Image;

    fn node(name: &str, status: NodeStatus, images: &[&str]) -> Node {
        Node {
            name: name.into(),
            status: status as i32,
            images: images
                .iter()
                .map(|t| Image {
                    id: format!("sha256:{t}"),
                    tags: vec![t.to_string()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn picks_a_ready_node_holding_the_image() {
        let nodes = vec![
            node("a", NodeStatus::Down, &["busybox:latest"]),
            node("b", NodeStatus::Ready, &["alpine:latest"]),
            node("c", NodeStatus::Ready, &["busybox:latest"]),
        ];
        assert_eq!(
            choose_node(&nodes, "busybox:latest", |_| 0).unwrap().name,
            "c"
        );
    }

    #[test]
    fn prefers_the_least_loaded_node() {
        let nodes = vec![
            node("a", NodeStatus::Ready, &["busybox:latest"]),
            node("b", NodeStatus::Ready, &["busybox:latest"]),
        ];
        let load = |n: &str| if n == "a" { 3 } else { 1 };
        assert_eq!(
            choose_node(&nodes, "busybox:latest", load).unwrap().name,
            "b"
        );
    }

    #[test]
    fn says_what_is_missing() {
        let nodes = vec![node("a", NodeStatus::Ready, &["busybox:latest"])];
        assert_eq!(
            choose_node(&nodes, "nginx:latest", |_| 0).unwrap_err(),
            ScheduleError::NoSuchImage("nginx:latest".into())
        );
        assert_eq!(
            choose_node(&[], "x:latest", |_| 0).unwrap_err(),
            ScheduleError::NoReadyNode
        );
    }
}
