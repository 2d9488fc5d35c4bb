//! Raft membership and status: joining a server, and what `berth cluster
//! status` shows.

use std::collections::BTreeSet;

use berth_proto::cluster;
use berth_proto::records::command::Op;
use openraft::{BasicNode, ServerState};
use tonic::Status;

use crate::app::App;

/// The cluster as this server sees it.
pub fn status(app: &App) -> cluster::ClusterStatus {
    let m = crate::raft::metrics(&app.raft);
    let ca = app.ca_view();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let leader_addr = m
        .current_leader
        .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
        .unwrap_or_default();
    let last = m.last_log_index.unwrap_or(0);
    let members = membership
        .nodes()
        .map(|(id, node)| cluster::Member {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            leader: m.current_leader == Some(*id),
            lag: m
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .map(|matched| last.saturating_sub(matched.map(|l| l.index).unwrap_or(0))),
        })
        .collect();
    cluster::ClusterStatus {
        id: m.id,
        leader_id: m.current_leader,
        leader_addr,
        term: m.current_term,
        last_log_index: last,
        committed: committed_index(&m, &voters),
        applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        members,
        snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: m.purged.map(|l| l.index).unwrap_or(0),
        reserved_id: 0,
        ca_digest: ca.renew_to,
        ca_rotating: ca.rotating,
        version: env!("CARGO_PKG_VERSION").to_string(),
        state: match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
        .to_string(),
    }
}

/// Gives a server about to join an id of its own, through Raft: no two
/// joiners get the same one, whichever server leads when they ask, and
/// none gets the id of a member, past or present, the leader knows.
pub async fn reserve_id(
    app: &App,
    addr: &str,
    exact: u64,
) -> Result<cluster::ClusterStatus, Status> {
    require_leader(app)?;
    let m = crate::raft::metrics(&app.raft);
    let highest = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .max()
        .unwrap_or(0);
    let res = app
        .write(Op::ReserveServerId(berth_proto::records::ReserveServerId {
            floor: highest.saturating_add(1),
            addr: addr.to_string(),
            exact,
        }))
        .await
        .map_err(crate::api::to_status)?;
    tracing::info!(id = res.server_id, %addr, "a server id was given to a joining server");
    let mut st = status(app);
    st.reserved_id = res.server_id;
    Ok(st)
}

/// Adds a server: a learner first, brought up to date, then a voter. Only
/// the leader changes membership; another server names the leader.
pub async fn join(app: &App, id: u64, addr: &str) -> Result<cluster::ClusterStatus, Status> {
    require_leader(app)?;
    if addr.is_empty() {
        return Err(Status::invalid_argument(
            "a joining server needs an address",
        ));
    }
    if id == 0 {
        return Err(Status::invalid_argument(
            "a joining server needs an id: ask for one first (reserve_id)",
        ));
    }
    let node = BasicNode {
        addr: addr.to_string(),
    };
    app.raft
        .add_learner(id, node, true)
        .await
        .map_err(|e| Status::unavailable(format!("adding {id} as a learner: {e}")))?;
    let m = crate::raft::metrics(&app.raft);
    let mut voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    if voters.insert(id) {
        app.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Status::unavailable(format!("making {id} a voter: {e}")))?;
    }
    Ok(status(app))
}

/// Membership changes and server ids are the leader's: another server
/// names the leader, for the caller to ask it.
fn require_leader(app: &App) -> Result<(), Status> {
    let st = status(app);
    if st.leader_id != Some(st.id) {
        return Err(Status::unavailable(format!(
            "this server is not the leader (the leader is at {})",
            st.leader_addr
        )));
    }
    Ok(())
}

/// The highest index a majority of voters holds, as the leader sees it; a
/// follower knows only what it has applied, a lower bound.
fn committed_index(m: &crate::raft::Metrics, voters: &BTreeSet<u64>) -> u64 {
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let Some(repl) = &m.replication else {
        return applied;
    };
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|v| {
            if *v == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                repl.get(v).copied().flatten().map(|l| l.index).unwrap_or(0)
            }
        })
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[voters.len() / 2].max(applied)
}

/// Removes a member from the cluster (it may be dead). Only the leader
/// changes membership, and a cluster keeps at least one voter.
pub async fn leave(app: &App, id: u64) -> Result<cluster::ClusterStatus, Status> {
    require_leader(app)?;
    let m = crate::raft::metrics(&app.raft);
    let mut voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    if !voters.remove(&id) {
        return Err(Status::not_found(format!("no member {id} in the cluster")));
    }
    if voters.is_empty() {
        return Err(Status::failed_precondition("the last member cannot leave"));
    }
    app.raft
        .change_membership(voters, false)
        .await
        .map_err(|e| Status::unavailable(format!("removing {id}: {e}")))?;
    // A server that left cannot come back with its certificate.
    app.write(Op::RevokeCert(berth_proto::records::RevokeCert {
        role: "server".into(),
        name: id.to_string(),
    }))
    .await
    .map_err(crate::api::to_status)?;
    Ok(status(app))
}
