//! Ranking: of the feasible nodes, which one takes a container. Spread
//! (the default) prefers the node with the fewest tasks of the same
//! service, then the fewest containers, then the most free memory;
//! binpack prefers the node with the least room left that still fits.

use super::feasibility::{Demand, NodeView};

/// A key that sorts the best node first. Ties go to the node listed first
/// (nodes are listed by name), so that plans are deterministic.
pub type RankKey = (u64, u64, u64);

/// The rank of a feasible node for `demand`: lower is better.
pub fn rank(view: &NodeView, demand: &Demand) -> RankKey {
    let same_service = if demand.service.is_empty() {
        0
    } else {
        view.per_service.get(&demand.service).copied().unwrap_or(0) as u64
    };
    if demand.binpack {
        let left = view.free_memory().saturating_sub(demand.memory_bytes);
        let cpus_left = view.free_cpus().saturating_sub(demand.nano_cpus);
        // Least room left first; among equals the busiest node.
        (left, cpus_left, u64::MAX - view.containers as u64)
    } else {
        (
            same_service,
            view.containers as u64,
            u64::MAX - view.free_memory(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::records::{ContainerSpec, Node, NodeStatus};

    fn view(name: &str, containers: usize, service_tasks: usize, mem_gib: u64) -> NodeView {
        let mut v = NodeView::build(
            &[Node {
                name: name.into(),
                status: NodeStatus::Ready as i32,
                cpus: 4,
                memory_bytes: mem_gib << 30,
                ..Default::default()
            }],
            &[],
        )
        .remove(0);
        for i in 0..containers {
            let service = if i < service_tasks { "web" } else { "" };
            v.add(&ContainerSpec::default(), service);
        }
        v
    }

    fn best<'a>(views: &'a [NodeView], d: &Demand) -> &'a str {
        &views
            .iter()
            .enumerate()
            .min_by_key(|(i, v)| (rank(v, d), *i))
            .unwrap()
            .1
            .node
            .name
    }

    #[test]
    fn spread_prefers_fewer_tasks_of_the_service_then_fewer_containers() {
        let d = Demand {
            service: "web".into(),
            ..Default::default()
        };
        let views = [view("a", 1, 1, 8), view("b", 3, 0, 8), view("c", 2, 0, 8)];
        assert_eq!(best(&views, &d), "c");
        let plain = Demand::default();
        assert_eq!(best(&views, &plain), "a");
    }

    #[test]
    fn binpack_fills_the_fullest_node_that_fits() {
        let d = Demand {
            binpack: true,
            memory_bytes: 1 << 30,
            ..Default::default()
        };
        let views = [view("a", 0, 0, 8), view("b", 0, 0, 2), view("c", 0, 0, 4)];
        assert_eq!(best(&views, &d), "b");
    }
}
