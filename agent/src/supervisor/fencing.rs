//! Fencing on the agent's side (invariant 3): the newest generation seen
//! of each container. An assignment older than that is dropped; one that
//! is newer than the copy on disk means the cluster placed the container
//! here afresh, and the old copy goes first.

use std::collections::HashMap;
use std::sync::Mutex;

/// What to do with an assignment, by its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Older than one already seen: drop it.
    Stale { newest: u64 },
    /// The newest: act on it.
    Current,
}

/// The newest generation seen per container.
#[derive(Debug, Default)]
pub struct Generations {
    newest: Mutex<HashMap<String, u64>>,
}

impl Generations {
    /// Seeds the table with the generations of the copies on disk.
    pub fn new(local: impl IntoIterator<Item = (String, u64)>) -> Self {
        Self {
            newest: Mutex::new(local.into_iter().collect()),
        }
    }

    /// The one generation check: records `generation` if it is the newest
    /// of `id`, and says whether the assignment stands.
    pub fn check(&self, id: &str, generation: u64) -> Verdict {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = newest.entry(id.to_string()).or_insert(generation);
        if generation < *seen {
            return Verdict::Stale { newest: *seen };
        }
        *seen = generation;
        Verdict::Current
    }

    /// True if an assignment of `id` has been seen.
    pub fn knows(&self, id: &str) -> bool {
        self.newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Forgets a container the node no longer holds.
    pub fn forget(&self, id: &str) {
        self.newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_assignments_are_dropped_and_newer_ones_stand() {
        let g = Generations::new([("a".to_string(), 3)]);
        assert_eq!(g.check("a", 2), Verdict::Stale { newest: 3 });
        assert_eq!(g.check("a", 3), Verdict::Current);
        assert_eq!(g.check("a", 5), Verdict::Current);
        assert_eq!(g.check("a", 4), Verdict::Stale { newest: 5 });
        assert_eq!(g.check("b", 1), Verdict::Current);
        g.forget("a");
        assert_eq!(g.check("a", 1), Verdict::Current);
    }
}
