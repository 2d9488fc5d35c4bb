//! Conversion between openraft's types and their records.proto rows.

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::records::{self, SCHEMA_VERSION};
use openraft::{BasicNode, EntryPayload};

use super::{Entry, LogId, Membership, Request, StoredMembership, Vote};

/// A row that does not decode as the record it should be.
#[derive(Debug, thiserror::Error)]
#[error("corrupt raft record: {0}")]
pub struct CodecError(pub String);

pub fn log_id_to_record(id: &LogId) -> records::LogId {
    records::LogId {
        term: id.leader_id.term,
        leader_node: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_record(r: &records::LogId) -> LogId {
    log_id(r.term, r.leader_node, r.index)
}

/// The log id of entry `index`, proposed by leader `node` in `term`.
pub fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term,
            node_id: node,
        },
        index,
    )
}

pub fn membership_to_record(m: &Membership) -> records::Membership {
    records::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| records::NodeIdSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
    }
}

pub fn membership_from_record(r: &records::Membership) -> Result<Membership, CodecError> {
    let configs: Vec<BTreeSet<u64>> = r
        .configs
        .iter()
        .map(|s| s.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, BasicNode> = r
        .nodes
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    Membership::new(configs, nodes).map_err(|e| CodecError(format!("membership: {e}")))
}

pub fn stored_membership_to_record(m: &StoredMembership) -> records::StoredMembership {
    records::StoredMembership {
        schema: SCHEMA_VERSION,
        log_id: m.log_id().as_ref().map(log_id_to_record),
        membership: Some(membership_to_record(m.membership())),
    }
}

pub fn stored_membership_from_record(
    r: &records::StoredMembership,
) -> Result<StoredMembership, CodecError> {
    Ok(StoredMembership::new(
        r.log_id.as_ref().map(log_id_from_record),
        r.membership
            .as_ref()
            .map(membership_from_record)
            .transpose()?
            .unwrap_or_default(),
    ))
}

pub fn entry_to_record(e: &Entry) -> records::RaftEntry {
    let payload = match &e.payload {
        EntryPayload::Blank => records::raft_entry::Payload::Blank(records::Blank {}),
        EntryPayload::Normal(req) => records::raft_entry::Payload::Command(req.0.clone()),
        EntryPayload::Membership(m) => {
            records::raft_entry::Payload::Membership(membership_to_record(m))
        }
    };
    records::RaftEntry {
        schema: SCHEMA_VERSION,
        term: e.log_id.leader_id.term,
        leader_node: e.log_id.leader_id.node_id,
        index: e.log_id.index,
        payload: Some(payload),
    }
}

pub fn entry_from_record(r: records::RaftEntry) -> Result<Entry, CodecError> {
    let payload = match r.payload {
        Some(records::raft_entry::Payload::Blank(_)) => EntryPayload::Blank,
        Some(records::raft_entry::Payload::Command(c)) => EntryPayload::Normal(Request(c)),
        Some(records::raft_entry::Payload::Membership(m)) => {
            EntryPayload::Membership(membership_from_record(&m)?)
        }
        None => return Err(CodecError(format!("entry {} has no payload", r.index))),
    };
    Ok(Entry {
        log_id: log_id(r.term, r.leader_node, r.index),
        payload,
    })
}

pub fn vote_to_record(v: &Vote) -> records::Vote {
    records::Vote {
        schema: SCHEMA_VERSION,
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_record(r: &records::Vote) -> Vote {
    if r.committed {
        Vote::new_committed(r.term, r.node_id)
    } else {
        Vote::new(r.term, r.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_records() {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            1u64,
            BasicNode {
                addr: "127.0.0.1:7420".into(),
            },
        );
        let m = Membership::new(vec![BTreeSet::from([1u64])], nodes).unwrap();
        let entries: Vec<Entry> = vec![
            Entry {
                log_id: log_id(3, 1, 7),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(3, 1, 8),
                payload: EntryPayload::Normal(Request(records::Command {
                    schema: 1,
                    op: Some(records::command::Op::Remove(records::RemoveContainer {
                        id: "abc".into(),
                        at_ms: 5,
                    })),
                })),
            },
            Entry {
                log_id: log_id(4, 2, 9),
                payload: EntryPayload::Membership(m),
            },
        ];
        for e in entries {
            let back = entry_from_record(entry_to_record(&e)).unwrap();
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
    }

    #[test]
    fn votes_keep_their_commitment() {
        for v in [Vote::new(5, 2), Vote::new_committed(6, 3)] {
            assert_eq!(vote_from_record(&vote_to_record(&v)), v);
        }
    }
}
