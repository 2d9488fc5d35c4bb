//! Fast failover when the leader's process is gone.
//!
//! openraft lets a follower stand for election only after the leader lease
//! (the election timeout's upper bound) *plus* a random election timeout of
//! silence, so that a leader that is merely slow is not deposed. When the
//! leader's process has died (kill -9, a crash, a stop) while its host
//! lives on, the host's kernel refuses connections to its port at once. A
//! follower that has missed two heartbeats asks the leader's address; a
//! refused connection says that no leader listens there, so the follower
//! stands as soon as the other followers' lease has run out, and does not
//! wait the random timeout on top.
//!
//! A leader that is slow, cut off, or on a dead host accepts the
//! connection or lets it time out; then nothing here acts and openraft's
//! own timer decides, as without this module. The election starts with a
//! pre-vote round, which leaves the term alone unless a majority would
//! grant the vote: a live leader that only looked dead (a firewall that
//! rejects, an advertised address that does not reach it) keeps its term,
//! and a follower whose lease still runs refuses, after which openraft's
//! timer decides.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use super::BerthRaft;

/// Timing of the fast failover; see the module documentation.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// This member's Raft node id.
    pub node_id: u64,
    /// The leader's heartbeat interval: two missed ones start a probe.
    pub heartbeat: Duration,
    /// How long a follower refuses votes after it last heard its leader
    /// (openraft's leader lease, the election timeout's upper bound).
    pub lease: Duration,
}

/// When this member last heard a leader, written by the Raft transport on
/// every AppendEntries it receives (heartbeats are AppendEntries too).
#[derive(Debug)]
pub struct Contact {
    last: Mutex<(Option<u64>, Instant)>,
}

impl Default for Contact {
    fn default() -> Self {
        Self {
            last: Mutex::new((None, Instant::now())),
        }
    }
}

impl Contact {
    /// Records a message from `leader`, now.
    pub fn heard(&self, leader: u64) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (Some(leader), Instant::now());
    }

    fn last(&self) -> (Option<u64>, Instant) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the watch over the leader (call within tokio).
pub fn spawn(raft: BerthRaft, contact: Arc<Contact>, cfg: FailoverConfig) {
    tokio::spawn(watch(raft, contact, cfg));
}

/// Slack for the other followers, which heard the last heartbeat a little
/// after this one did.
const LEASE_MARGIN: Duration = Duration::from_millis(15);

async fn watch(raft: BerthRaft, contact: Arc<Contact>, cfg: FailoverConfig) {
    let mut handled: Option<Instant> = None;
    loop {
        tokio::time::sleep(cfg.heartbeat / 2).await;
        let m = crate::raft::metrics(&raft);
        let (heard, at) = contact.last();
        let (Some(leader), ServerState::Follower) = (m.current_leader, m.state) else {
            continue;
        };
        // Only a silence of the leader this member follows, once each.
        if heard != Some(leader) || at.elapsed() < cfg.heartbeat * 2 || handled == Some(at) {
            continue;
        }
        handled = Some(at);
        let membership = m.membership_config.membership();
        let Some(addr) = membership.get_node(&leader).map(|n| n.addr.clone()) else {
            continue;
        };
        let mut survivors: Vec<u64> = membership.voter_ids().filter(|id| *id != leader).collect();
        survivors.sort_unstable();
        let Some(rank) = survivors.iter().position(|id| *id == cfg.node_id) else {
            continue;
        };
        if !refused(&addr, cfg.heartbeat).await {
            continue;
        }
        // The survivors stand one after another, lowest id first, so that
        // they do not split the vote; the next one stands only if the
        // first has not become leader by then.
        let stand_at = at + cfg.lease + LEASE_MARGIN + cfg.heartbeat * rank as u32;
        tracing::info!(
            leader,
            %addr,
            in_ms = stand_at.saturating_duration_since(Instant::now()).as_millis() as u64,
            "the leader's address refuses connections; standing for election when the lease ends"
        );
        tokio::time::sleep_until(stand_at).await;
        let still_silent = contact.last().1 == at;
        let still_follower = crate::raft::metrics(&raft).state == ServerState::Follower;
        if still_silent && still_follower {
            if let Err(e) = raft.trigger().elect(true).await {
                tracing::warn!(error = %e, "could not start an election");
            }
        }
    }
}

/// True if `addr` refuses a TCP connection: nothing listens there.
async fn refused(addr: &str, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_refused_and_an_open_one_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert!(!refused(&open, Duration::from_secs(1)).await);
        drop(listener);
        assert!(refused(&open, Duration::from_secs(1)).await);
    }

    #[test]
    fn contact_keeps_the_last_leader_heard() {
        let c = Contact::default();
        assert_eq!(c.last().0, None);
        c.heard(3);
        let (who, at) = c.last();
        assert_eq!(who, Some(3));
        assert!(at.elapsed() < Duration::from_secs(1));
    }
}
