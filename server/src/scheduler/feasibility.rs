//! Feasibility: whether a node can take a container at all. A node is
//! feasible if it is ready, active, holds the image, meets every
//! constraint and has the reserved memory and CPU free.

use std::collections::HashMap;

use berth_proto::records::{Availability, Container, ContainerSpec, Node, NodeStatus};

use crate::state::status::Status;

/// One placement constraint, as `--constraint` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// `node.labels.K==V` (operator labels over agent labels).
    LabelEq(String, String),
    /// `node.labels.K!=V`: also holds on a node without the label.
    LabelNe(String, String),
    /// `node.hostname==H` (the node's name).
    HostEq(String),
    /// `node.hostname!=H`.
    HostNe(String),
}

impl Constraint {
    /// Parses `node.labels.K==V`, `node.labels.K!=V`, `node.hostname==H`,
    /// `node.hostname!=H` (also `node.name`, as in Swarm); the error says
    /// what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (lhs, rhs, eq) = if let Some((l, r)) = s.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = s.split_once("!=") {
            (l, r, false)
        } else {
            return Err(format!(
                "invalid constraint {s:?}: use node.labels.KEY==VALUE, node.labels.KEY!=VALUE, node.hostname==NAME or node.hostname!=NAME"
            ));
        };
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        if rhs.is_empty() {
            return Err(format!(
                "invalid constraint {s:?}: no value after the operator"
            ));
        }
        if let Some(key) = lhs.strip_prefix("node.labels.") {
            if key.is_empty() {
                return Err(format!("invalid constraint {s:?}: no label key"));
            }
            return Ok(if eq {
                Constraint::LabelEq(key.into(), rhs.into())
            } else {
                Constraint::LabelNe(key.into(), rhs.into())
            });
        }
        if lhs == "node.hostname" || lhs == "node.name" {
            return Ok(if eq {
                Constraint::HostEq(rhs.into())
            } else {
                Constraint::HostNe(rhs.into())
            });
        }
        Err(format!(
            "invalid constraint {s:?}: unknown attribute {lhs:?} (use node.labels.KEY or node.hostname)"
        ))
    }

    /// True if the node meets the constraint.
    pub fn holds(&self, node: &Node) -> bool {
        let label = |k: &str| node.labels.get(k).or_else(|| node.agent_labels.get(k));
        match self {
            Constraint::LabelEq(k, v) => label(k) == Some(v),
            Constraint::LabelNe(k, v) => label(k) != Some(v),
            Constraint::HostEq(h) => node.name == *h,
            Constraint::HostNe(h) => node.name != *h,
        }
    }
}

/// What a container asks of a node. Tasks of one service ask the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Demand {
    pub image: String,
    pub memory_bytes: u64,
    pub nano_cpus: u64,
    pub constraints: Vec<Constraint>,
    /// The service it belongs to, for spreading a service's tasks.
    pub service: String,
    pub binpack: bool,
}

impl Demand {
    /// The demand of a container spec; a constraint that does not parse
    /// is an error (the api refuses such specs before they are committed).
    pub fn of(spec: &ContainerSpec, service: &str) -> Result<Self, String> {
        Ok(Self {
            image: spec.image.clone(),
            memory_bytes: reserved_memory(spec),
            nano_cpus: reserved_cpus(spec),
            constraints: spec
                .constraints
                .iter()
                .map(|c| Constraint::parse(c))
                .collect::<Result<_, _>>()?,
            service: service.to_string(),
            binpack: spec.placement_strategy == "binpack",
        })
    }
}

/// The memory a spec reserves: --reserve-memory, else --memory.
pub fn reserved_memory(spec: &ContainerSpec) -> u64 {
    if spec.reserve_memory_bytes > 0 {
        spec.reserve_memory_bytes
    } else {
        spec.memory_bytes
    }
}

/// The CPU a spec reserves, in billionths of a CPU: --reserve-cpus, else --cpus.
pub fn reserved_cpus(spec: &ContainerSpec) -> u64 {
    if spec.reserve_nano_cpus > 0 {
        spec.reserve_nano_cpus
    } else {
        spec.nano_cpus
    }
}

/// A node as the planner sees it: its record and what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node: Node,
    pub reserved_memory: u64,
    pub reserved_cpus: u64,
    /// Containers placed here that have not finished.
    pub containers: usize,
    /// Of those, how many belong to each service.
    pub per_service: HashMap<String, usize>,
}

impl NodeView {
    /// Views of every node, with the usage of the containers placed on them.
    pub fn build(nodes: &[Node], containers: &[Container]) -> Vec<NodeView> {
        let mut views: Vec<NodeView> = nodes
            .iter()
            .map(|n| NodeView {
                node: n.clone(),
                reserved_memory: 0,
                reserved_cpus: 0,
                containers: 0,
                per_service: HashMap::new(),
            })
            .collect();
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        for c in containers {
            if c.node.is_empty() || !occupies(c) {
                continue;
            }
            if let Some(&i) = index.get(c.node.as_str()) {
                let spec = c.spec.clone().unwrap_or_default();
                views[i].add(&spec, &c.service);
            }
        }
        views
    }

    /// Counts a container placed here.
    pub fn add(&mut self, spec: &ContainerSpec, service: &str) {
        self.reserved_memory += reserved_memory(spec);
        self.reserved_cpus += reserved_cpus(spec);
        self.containers += 1;
        if !service.is_empty() {
            *self.per_service.entry(service.to_string()).or_default() += 1;
        }
    }

    pub fn free_memory(&self) -> u64 {
        self.node.memory_bytes.saturating_sub(self.reserved_memory)
    }

    pub fn free_cpus(&self) -> u64 {
        (self.node.cpus * 1_000_000_000).saturating_sub(self.reserved_cpus)
    }
}

/// True while a container holds (or is about to hold) its node's resources.
pub fn occupies(c: &Container) -> bool {
    !Status(c.state()).is_finished()
        && c.desired() != berth_proto::records::DesiredState::DesiredRemoved
}

/// Why one node cannot take a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    NotReady,
    Paused,
    Draining,
    NoImage,
    Constraint,
    Memory,
    Cpu,
}

/// Checks whether `view` can take `demand`.
pub fn check(view: &NodeView, demand: &Demand) -> Result<(), Refusal> {
    let n = &view.node;
    // The constraints first: they say what the node is, which a restart
    // of its agent does not change. Were readiness first, every pending
    // task's reason would flip between "not ready" and "not meeting the
    // constraints" each time the node went Down and came back, and with
    // 20,000 such tasks each flip was a write of 20,000 reasons.
    if !demand.constraints.iter().all(|c| c.holds(n)) {
        return Err(Refusal::Constraint);
    }
    if n.status() != NodeStatus::Ready {
        return Err(Refusal::NotReady);
    }
    match n.availability() {
        Availability::Active => {}
        Availability::Pause => return Err(Refusal::Paused),
        Availability::Drain => return Err(Refusal::Draining),
    }
    if !has_image(n, &demand.image) {
        return Err(Refusal::NoImage);
    }
    if demand.memory_bytes > view.free_memory() {
        return Err(Refusal::Memory);
    }
    if demand.nano_cpus > view.free_cpus() {
        return Err(Refusal::Cpu);
    }
    Ok(())
}

/// True if the node holds the image, by reference or id.
pub fn has_image(n: &Node, image: &str) -> bool {
    n.images
        .iter()
        .any(|i| i.id == image || i.tags.iter().any(|t| t == image))
}

/// Says why no node could take `demand`, from each node's refusal, in the
/// words a user reads in `ps` and `inspect`.
pub fn explain(demand: &Demand, refusals: &[(String, Refusal)]) -> String {
    if refusals.is_empty() {
        return "no node has joined the cluster yet".into();
    }
    let mut kinds: Vec<&Refusal> = refusals.iter().map(|(_, r)| r).collect();
    kinds.sort();
    kinds.dedup();
    let part = |r: &Refusal| -> String {
        let count = refusals.iter().filter(|(_, x)| x == r).count();
        let nodes = if count == 1 { "node" } else { "nodes" };
        match r {
            Refusal::NotReady => format!("{count} {nodes} not ready"),
            Refusal::Paused => format!("{count} {nodes} paused"),
            Refusal::Draining => format!("{count} {nodes} draining"),
            Refusal::NoImage => format!("{count} {nodes} without the image {}", demand.image),
            Refusal::Constraint => format!("{count} {nodes} not meeting the constraints"),
            Refusal::Memory => format!(
                "{count} {nodes} without {} of free memory",
                human_bytes(demand.memory_bytes)
            ),
            Refusal::Cpu => format!(
                "{count} {nodes} without {} free CPUs",
                demand.nano_cpus as f64 / 1e9
            ),
        }
    };
    if kinds.len() == 1 {
        return match kinds[0] {
            Refusal::Memory => format!(
                "no node has {} of free memory",
                human_bytes(demand.memory_bytes)
            ),
            Refusal::Cpu => format!("no node has {} free CPUs", demand.nano_cpus as f64 / 1e9),
            Refusal::NoImage => format!(
                "no node holds the image {} (use `berth import` or `berth load`)",
                demand.image
            ),
            Refusal::NotReady => "no node is ready".into(),
            Refusal::Constraint => "no node meets the constraints".into(),
            other => format!("no suitable node ({})", part(other)),
        };
    }
    format!(
        "no suitable node ({})",
        kinds.iter().map(|r| part(r)).collect::<Vec<_>>().join(", ")
    )
}

/// Bytes in binary units, as the CLI prints them ("100000 GiB").
pub fn human_bytes(b: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if b >= GIB && b.is_multiple_of(GIB) {
        format!("{} GiB", b / GIB)
    } else if b >= GIB {
        format!("{:.1} GiB", b as f64 / GIB as f64)
    } else if b >= MIB {
        format!("{} MiB", b / MIB)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::records::Image;

    fn node(name: &str, mem_gib: u64) -> Node {
        Node {
            name: name.into(),
            status: NodeStatus::Ready as i32,
            cpus: 2,
            memory_bytes: mem_gib << 30,
            images: vec![Image {
                id: "sha256:b".into(),
                tags: vec!["busybox:latest".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn view(n: Node) -> NodeView {
        NodeView::build(&[n], &[]).remove(0)
    }

    #[test]
    fn constraints_parse_and_hold() {
        let mut n = node("n1", 1);
        n.labels.insert("zone".into(), "a".into());
        n.agent_labels.insert("disk".into(), "ssd".into());
        n.agent_labels.insert("zone".into(), "b".into());
        let c = |s: &str| Constraint::parse(s).unwrap().holds(&n);
        assert!(c("node.labels.zone==a"), "operator labels win");
        assert!(c("node.labels.disk==ssd"));
        assert!(!c("node.labels.disk!=ssd"));
        assert!(c("node.labels.gpu!=yes"));
        assert!(c("node.hostname==n1"));
        assert!(c("node.hostname!=n2"));
        assert!(!c("node.hostname!=n1"));
        for bad in [
            "zone=a",
            "node.labels.==a",
            "node.cpu==2",
            "node.labels.a==",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_for_each_reason() {
        let d = Demand {
            image: "busybox:latest".into(),
            memory_bytes: 512 << 20,
            ..Default::default()
        };
        assert_eq!(check(&view(node("a", 1)), &d), Ok(()));
        assert_eq!(check(&view(node("a", 0)), &d), Err(Refusal::Memory));
        let mut down = node("a", 1);
        down.status = NodeStatus::Down as i32;
        assert_eq!(check(&view(down.clone()), &d), Err(Refusal::NotReady));
        // A node the constraints rule out says so whether it is up or
        // down: the reason does not change with its agent's restarts.
        let elsewhere = Demand {
            constraints: vec![Constraint::parse("node.labels.nowhere==yes").unwrap()],
            ..d.clone()
        };
        assert_eq!(check(&view(down), &elsewhere), Err(Refusal::Constraint));
        assert_eq!(
            check(&view(node("a", 1)), &elsewhere),
            Err(Refusal::Constraint)
        );
        let mut drain = node("a", 1);
        drain.availability = Availability::Drain as i32;
        assert_eq!(check(&view(drain), &d), Err(Refusal::Draining));
        let other = Demand {
            image: "nginx:latest".into(),
            ..Default::default()
        };
        assert_eq!(check(&view(node("a", 1)), &other), Err(Refusal::NoImage));
        let cpu = Demand {
            image: "busybox:latest".into(),
            nano_cpus: 3_000_000_000,
            ..Default::default()
        };
        assert_eq!(check(&view(node("a", 1)), &cpu), Err(Refusal::Cpu));
    }

    #[test]
    fn reservations_count_against_capacity() {
        let spec = ContainerSpec {
            image: "busybox:latest".into(),
            memory_bytes: 600 << 20,
            ..Default::default()
        };
        let mut v = view(node("a", 1));
        v.add(&spec, "");
        let d = Demand::of(&spec, "").unwrap();
        assert_eq!(
            check(&v, &d),
            Err(Refusal::Memory),
            "1 GiB holds one 600 MiB"
        );
        // A reservation below the limit is what counts.
        let small = ContainerSpec {
            reserve_memory_bytes: 100 << 20,
            ..spec.clone()
        };
        assert_eq!(check(&v, &Demand::of(&small, "").unwrap()), Ok(()));
    }

    #[test]
    fn explains_in_a_users_words() {
        let d = Demand {
            image: "busybox:latest".into(),
            memory_bytes: 100000 << 30,
            ..Default::default()
        };
        let one = explain(
            &d,
            &[("a".into(), Refusal::Memory), ("b".into(), Refusal::Memory)],
        );
        assert_eq!(one, "no node has 100000 GiB of free memory");
        let mixed = explain(
            &d,
            &[
                ("a".into(), Refusal::Memory),
                ("b".into(), Refusal::NotReady),
            ],
        );
        assert!(mixed.contains("1 node not ready"), "{mixed}");
        assert!(mixed.contains("1 node without 100000 GiB"), "{mixed}");
        assert_eq!(explain(&d, &[]), "no node has joined the cluster yet");
    }
}
