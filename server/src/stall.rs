//! A watch on the server's one runtime thread. Heartbeats, votes and
//! agent sessions all wait on that thread, so when it is held up the
//! cluster sees a slow or silent member. This task wakes every
//! [`TICK`] and, when it wakes much later than asked, says for how long
//! the thread was held and where the time went: running (a step of work
//! that did not yield), waiting for a CPU (the machine is loaded), or
//! neither (the thread was blocked in a system call).

use std::time::{Duration, Instant};

/// How often the watch wakes.
pub const TICK: Duration = Duration::from_millis(20);

/// A wake-up this late is reported.
pub const REPORTED: Duration = Duration::from_millis(150);

/// How long a long loop on the runtime thread runs before it lets the
/// other tasks in ([`Slicer`]).
pub const SLICE: Duration = Duration::from_millis(5);

/// Runs for the life of the server, on the runtime thread it watches.
pub async fn watch() {
    // Opened here, on the runtime thread: /proc/thread-self names the
    // thread that opens it, and each sample re-reads the open file.
    let stats = std::fs::File::open("/proc/thread-self/schedstat").ok();
    let mut before = Sample::now(stats.as_ref());
    loop {
        tokio::time::sleep(TICK).await;
        let now = Sample::now(stats.as_ref());
        let held = now.at.saturating_duration_since(before.at);
        if held >= TICK + REPORTED {
            tracing::warn!(
                held_ms = held.as_millis() as u64,
                running_ms = now.run_ns.saturating_sub(before.run_ns) / 1_000_000,
                waiting_for_cpu_ms = now.wait_ns.saturating_sub(before.wait_ns) / 1_000_000,
                "the server's runtime thread did not get to its timers in time"
            );
        }
        before = now;
    }
}

/// The thread's clock and scheduler counters at one moment.
struct Sample {
    at: Instant,
    /// Nanoseconds the thread has run on a CPU.
    run_ns: u64,
    /// Nanoseconds the thread has waited in a run queue.
    wait_ns: u64,
}

/// Lets the runtime's other tasks run once a long loop on its thread has
/// run for a [`SLICE`]: a loop over ready work never returns Pending, and
/// heartbeats and votes would wait for its end. Call `step` once an item.
pub struct Slicer {
    since: Instant,
}

impl Slicer {
    pub fn new() -> Self {
        Self {
            since: Instant::now(),
        }
    }

    /// Yields to the runtime if this slice is used up.
    pub async fn step(&mut self) {
        if self.since.elapsed() >= SLICE {
            tokio::task::yield_now().await;
            self.since = Instant::now();
        }
    }
}

impl Default for Slicer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sample {
    fn now(stats: Option<&std::fs::File>) -> Self {
        let (run_ns, wait_ns) = stats.and_then(schedstat).unwrap_or((0, 0));
        Self {
            at: Instant::now(),
            run_ns,
            wait_ns,
        }
    }
}

/// A thread's time on a CPU and in a run queue, from its open
/// /proc/<pid>/task/<tid>/schedstat ("run_ns wait_ns timeslices"), read
/// again from the start. None where the kernel does not keep scheduler
/// statistics.
fn schedstat(stats: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 128];
    let n = stats.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_its_running_time() {
        // Spins until the counter shows 30 ms on a CPU (however loaded the
        // machine is, that comes), or fails after ten seconds.
        let stats = std::fs::File::open("/proc/thread-self/schedstat")
            .expect("/proc/thread-self/schedstat is readable");
        let (run0, _) = schedstat(&stats).expect("it holds two counters");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for _ in 0..10_000 {
                std::hint::spin_loop();
            }
            let (run, _) = schedstat(&stats).expect("schedstat was readable a moment ago");
            if run - run0 >= 30_000_000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ten seconds of spinning showed only {} ns on a CPU",
                run - run0
            );
        }
    }
}
