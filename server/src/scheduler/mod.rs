//! The scheduler: a reconcile loop on the leader. The api commits desired
//! state only; the reconciler reads the replicated state, plans
//! ([`planner`]: feasibility, ranking, services, moves) and carries the
//! plan out: placements committed before any agent hears of them
//! (invariant 2), assignments sent until the agent acknowledges their
//! generation.

pub mod feasibility;
pub mod planner;
pub mod ranking;
pub mod reconciler;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Refuses an image no node of the cluster has ever reported (while any
/// node has joined): nothing could run it, as Docker's "No such image".
/// Whether a node that holds it is ready, or has room, is the planner's:
/// the container is accepted and waits, Pending with the reason.
pub fn check_image(app: &crate::App, image: &str) -> Result<(), crate::AppError> {
    let nodes = app.state.nodes()?;
    if nodes.is_empty() || nodes.iter().any(|n| feasibility::has_image(n, image)) {
        return Ok(());
    }
    Err(crate::AppError::Refused(format!(
        "No such image: {image} (no node holds it; use `berth import` or `berth load` first)"
    )))
}

/// Timing of the reconciler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A node Down this long has its movable containers placed elsewhere.
    pub reschedule_after: Duration,
    /// A service task that ended starts again after this long.
    pub restart_delay: Duration,
    /// An assignment not acknowledged in this time is sent again.
    pub resend_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            reschedule_after: Duration::from_millis(1000),
            restart_delay: Duration::from_millis(1000),
            resend_after: Duration::from_secs(2),
        }
    }
}

/// The reconciler's memory on the leader: what it sent, what is in
/// progress, and who waits on a container. None of it is replicated: a new
/// leader starts from the replicated state and sends again.
#[derive(Default)]
pub struct Scheduler {
    pub config: SchedulerConfig,
    /// Wakes the loop (a node's session changed, an ack came, a hold ended).
    pub wake: Notify,
    sent: Mutex<HashMap<String, Sent>>,
    busy: Mutex<HashSet<String>>,
    holds: Mutex<HashMap<String, usize>>,
    /// Holds taken at creation for a client that will follow the
    /// container: until it opens its own hold, or the deadline.
    handoffs: Mutex<HashMap<String, Instant>>,
}

/// How long a hold taken at creation waits for its client's streams.
pub const HANDOFF: Duration = Duration::from_secs(30);

/// An assignment sent to a node.
#[derive(Debug, Clone)]
struct Sent {
    node: String,
    generation: u64,
    action: planner::Delivery,
    at: Instant,
    acked: bool,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    /// Records that a node acknowledged an assignment of `generation`.
    pub fn acked(&self, node: &str, id: &str, generation: u64) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sent.get_mut(id) {
            if s.node == node && s.generation == generation {
                s.acked = true;
            }
        }
    }

    /// Forgets what was sent to a node (its session began again), so that
    /// the next pass sends it again.
    pub fn node_reconnected(&self, node: &str) {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.node != node);
        self.wake.notify_one();
    }

    /// Keeps the cluster from removing a new container (its --rm) until
    /// the client that created it takes a [`Scheduler::hold`] of its own,
    /// or [`HANDOFF`] passes (a client lost in between).
    pub fn hold_for_client(&self, id: &str) {
        self.handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), Instant::now() + HANDOFF);
    }

    /// Keeps the cluster from removing a container (its --rm) while a
    /// client reads its output or waits for its end; the guard lets go.
    pub fn hold(self: &std::sync::Arc<Self>, id: &str) -> Hold {
        self.handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        *self
            .holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        Hold {
            scheduler: self.clone(),
            id: id.to_string(),
        }
    }

    fn held(&self, id: &str) -> bool {
        let handoff = {
            let mut h = self.handoffs.lock().unwrap_or_else(|p| p.into_inner());
            match h.get(id) {
                Some(deadline) if *deadline > Instant::now() => true,
                Some(_) => {
                    h.remove(id);
                    false
                }
                None => false,
            }
        };
        handoff
            || self
                .holds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .is_some_and(|n| *n > 0)
    }

    /// True if the assignment must go (again): never sent at this
    /// generation, or not acknowledged in time.
    fn should_send(
        &self,
        node: &str,
        id: &str,
        generation: u64,
        action: planner::Delivery,
    ) -> bool {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        match sent.get(id) {
            Some(s) if s.node == node && s.generation == generation && s.action == action => {
                !s.acked && s.at.elapsed() >= self.config.resend_after
            }
            _ => true,
        }
    }

    fn record_sent(&self, node: &str, id: &str, generation: u64, action: planner::Delivery) {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.to_string(),
            Sent {
                node: node.to_string(),
                generation,
                action,
                at: Instant::now(),
                acked: false,
            },
        );
    }

    fn forget_sent(&self) {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Marks a container as having a step in progress; false if it has one.
    fn begin(&self, id: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
    }

    fn end(&self, id: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.wake.notify_one();
    }
}

/// A client reading or waiting on a container; see [`Scheduler::hold`].
pub struct Hold {
    scheduler: std::sync::Arc<Scheduler>,
    id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut holds = self
            .scheduler
            .holds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = holds.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.id);
            }
        }
        drop(holds);
        self.scheduler.wake.notify_one();
    }
}
