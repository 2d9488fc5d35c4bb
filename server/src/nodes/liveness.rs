//! Liveness, on the leader and in its memory (invariant 4): a node whose
//! agent stops heartbeating for the TTL is committed Down; a node Down for
//! longer than `node_lost` has its containers that cannot move shown Dead.
//! (Movable ones are the reconciler's: it places them elsewhere.)

use berth_proto::records::{ContainerState, Node, NodeStatus};

use super::session::{down_since, mark_down};
use crate::app::{now_ms, App};
use crate::scheduler::planner::movable;

/// Runs for the life of the server; acts while it leads.
pub async fn run(app: App) {
    let period = app.config.node_ttl / 4;
    let started = std::time::Instant::now();
    let mut leading_since: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(period).await;
        for (node, session_id, last) in app.nodes.expire(app.config.node_ttl).await {
            tracing::warn!(%node, session_id, "agent missed its heartbeat TTL; marking it down");
            mark_down(&app, &node, down_since(&app, last)).await;
        }
        let metrics = crate::raft::metrics(&app.raft);
        if metrics.current_leader == Some(metrics.id) && cut_off(&app, &metrics).await {
            // Cut off from the majority: the agents must find the real leader.
            let n = app.nodes.drop_all().await;
            if n > 0 {
                tracing::warn!(
                    sessions = n,
                    "no majority has answered this leader for half a TTL; dropping agent sessions"
                );
            }
            continue;
        }
        // Agents need a moment to find a new leader: a TTL after this
        // server started leading, not after it started.
        if metrics.current_leader != Some(metrics.id) {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(std::time::Instant::now);
        if started.elapsed() < app.config.node_ttl || since.elapsed() < app.config.node_ttl {
            continue;
        }
        let Ok(nodes) = app.state.nodes() else {
            continue;
        };
        for n in &nodes {
            if n.status() == NodeStatus::Ready && !app.nodes.is_connected(&n.name).await {
                tracing::warn!(node = %n.name, "no session from a ready node; marking it down");
                // No heartbeat here since this server began leading (a TTL
                // ago at least); its lease ran from before that.
                mark_down(&app, &n.name, now_ms()).await;
            }
        }
        mark_lost_containers_dead(&app, &nodes).await;
    }
}

/// Whether this leader has heard from no majority for half a TTL (the
/// last time a quorum acknowledged it, as Raft tracks it from heartbeat
/// and append answers). One slow answer is not enough: a member held up
/// for a moment (a loaded machine, a snapshot being written) used to fail
/// a one-second read-index check, and dropping every session for it made
/// each such moment a round of re-registrations. Half a TTL still leaves
/// the agents of a leader that is really cut off half a TTL to reach the
/// new one before it marks them Down. A leader no quorum has answered yet
/// asks for a read index instead; a lone voter is never cut off.
async fn cut_off(app: &App, metrics: &crate::raft::Metrics) -> bool {
    // The only voter is its own quorum (and no answer ever renews the
    // time Raft records for it).
    let mut voters = metrics.membership_config.membership().voter_ids();
    if voters.next() == Some(metrics.id) && voters.next().is_none() {
        return false;
    }
    match &metrics.last_quorum_acked {
        Some(at) => {
            use openraft::async_runtime::Instant as _;
            at.elapsed() >= app.config.node_ttl / 2
        }
        None => !app.is_effective_leader().await,
    }
}

/// Containers of a node Down for longer than `node_lost` can neither run
/// nor be cleaned up: they become Dead (and come back to life if the node
/// returns and reports them). Movable containers are left to the
/// reconciler, which has placed them elsewhere long before.
async fn mark_lost_containers_dead(app: &App, nodes: &[Node]) {
    let now = now_ms();
    let lost_ms = app.config.node_lost.as_millis() as i64;
    let lost: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.status() == NodeStatus::Down && now - n.updated_at_ms >= lost_ms)
        .collect();
    if lost.is_empty() {
        return;
    }
    let Ok(containers) = app.containers().await else {
        return;
    };
    for c in containers {
        let Some(n) = lost.iter().find(|n| n.name == c.node) else {
            continue;
        };
        if c.state() == ContainerState::Dead || movable(&c) {
            continue;
        }
        tracing::warn!(id = %c.id, node = %n.name, "the container's node is lost; marking it dead");
        let why = format!(
            "node {} is lost: down since {} ms ago",
            n.name,
            now - n.updated_at_ms
        );
        crate::api::lifecycle::mark_dead(app, &c, &why).await;
    }
}
