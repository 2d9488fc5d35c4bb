//! The CPU priority of the shim's threads that move a container's output
//! (the readers of its pipes and the writer of its log).
//!
//! They run under SCHED_IDLE: whenever anything else on the host wants a
//! CPU (a server, the agent, another container), it gets one at once, and
//! a container that floods waits on its full pipe instead. A lower nice
//! value is not enough for that: under the kernel's EEVDF scheduler a
//! waking server still waited behind a niced shim for up to a slice, which
//! put the control plane's p99 at about three times its idle figure during
//! a flood (docs/benchmarks.md, Logs).
//!
//! A thread begins at its own priority and yields only once it has moved
//! [`BUSY_BYTES`] of output: a container that prints a few lines and
//! ends (most of them) has its last lines and its exit handled at once,
//! rather than after whatever else wants the CPUs at that moment (about
//! 1 ms of every `berth run --rm busybox true` on the development VM). A
//! flood passes that mark within its first reads.
//!
//! SCHED_IDLE alone could starve a container's output on a host whose
//! CPUs are kept busy (its weight is 3 against a normal task's 1,024), and
//! a container blocked on stdout stops. So each thread watches how long it
//! waited for a CPU (the run delay in /proc/thread-self/schedstat): after a
//! window of [`WINDOW`] in which it waited more than [`STARVED`] of the
//! time (a thread that yields but is not starved waits less: in a flood on
//! two cores it waited about half the time), it runs at nice
//! [`FALLBACK_NICE`] under SCHED_OTHER for [`FALLBACK`], and then yields
//! again.

use std::time::{Duration, Instant};

/// How much output a thread moves at its own priority before it yields.
pub const BUSY_BYTES: u64 = 64 * 1024;

/// How often a thread looks at its run delay.
pub const WINDOW: Duration = Duration::from_millis(100);

/// The share of a window, in tenths, spent waiting for a CPU that counts
/// as starved. Under SCHED_IDLE beside a busy normal task a thread gets
/// about 0.3% of a CPU, so it waits nearly all the time.
pub const STARVED: u32 = 9;

/// How long a starved thread runs at [`FALLBACK_NICE`] before it yields
/// again.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// The nice value of a thread that was starved under SCHED_IDLE.
pub const FALLBACK_NICE: i32 = 10;

/// One output thread's priority. Made on the thread it governs; call
/// [`Yielding::tick`] after each piece of work.
pub struct Yielding {
    tid: libc::pid_t,
    nice: i32,
    idle: bool,
    /// Output moved before the thread began to yield; None once it has.
    before_yielding: Option<u64>,
    window_start: Instant,
    delay_at_start: Option<u64>,
    fallback_until: Option<Instant>,
}

impl Yielding {
    /// Governs the calling thread, which keeps its priority until it has
    /// moved [`BUSY_BYTES`]; then it goes under SCHED_IDLE. Where the run
    /// delay cannot be read (a kernel without schedstat), it takes
    /// [`FALLBACK_NICE`] for good instead, since it could not tell that it
    /// was starved.
    pub fn start() -> Self {
        let tid = nix::unistd::gettid().as_raw();
        // SAFETY: getpriority takes plain integers; a PRIO_PROCESS of a
        // thread id reads that one thread's nice value.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        Yielding {
            tid,
            nice,
            idle: false,
            before_yielding: Some(0),
            // Both read when the thread begins to yield.
            window_start: Instant::now(),
            delay_at_start: None,
            fallback_until: None,
        }
    }

    /// Counts `bytes` of output moved; once [`BUSY_BYTES`] have been, the
    /// thread yields. After that, checks once a [`WINDOW`] has passed
    /// whether the thread was starved, and changes its priority if so (or
    /// back once its [`FALLBACK`] is over). Costs a clock read between
    /// windows.
    pub fn tick(&mut self, bytes: usize) {
        if let Some(moved) = &mut self.before_yielding {
            *moved += bytes as u64;
            if *moved < BUSY_BYTES {
                return;
            }
            self.before_yielding = None;
            self.window_start = Instant::now();
            self.delay_at_start = run_delay();
            // Where the run delay cannot be read, the thread takes
            // FALLBACK_NICE for good instead.
            self.set_idle(self.delay_at_start.is_some());
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= WINDOW {
            if let Some(delay) = run_delay() {
                self.end_window(now, delay);
            }
        }
    }

    /// Gives the thread back the policy and nice value it had before
    /// [`Yielding::start`].
    pub fn end(mut self) {
        self.set_policy(false, self.nice);
    }

    /// Whether the thread is under SCHED_IDLE now.
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// Ends the window at `now`, when the thread's run delay is `delay`.
    fn end_window(&mut self, now: Instant, delay: u64) {
        let Some(start) = self.delay_at_start else {
            return;
        };
        let elapsed = now.duration_since(self.window_start);
        let waited = Duration::from_nanos(delay.saturating_sub(start));
        if self.idle && waited > elapsed * STARVED / 10 {
            self.set_idle(false);
            self.fallback_until = Some(now + FALLBACK);
        } else if !self.idle && self.fallback_until.is_some_and(|t| now >= t) {
            self.set_idle(true);
            self.fallback_until = None;
        }
        self.window_start = now;
        self.delay_at_start = Some(delay);
    }

    fn set_idle(&mut self, idle: bool) {
        self.set_policy(idle, FALLBACK_NICE);
    }

    /// SCHED_IDLE, or SCHED_OTHER at `nice`.
    fn set_policy(&mut self, idle: bool, nice: i32) {
        let param = libc::sched_param { sched_priority: 0 };
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        // SAFETY: sched_setscheduler reads the sched_param we pass for the
        // length of the call; on Linux a thread id names that one thread.
        // The shim is root, so it may leave SCHED_IDLE again (an
        // unprivileged thread could too, within RLIMIT_NICE). A failure
        // leaves the thread's policy as it was.
        let ok = unsafe { libc::sched_setscheduler(self.tid, policy, &param) } == 0;
        if !idle {
            // SAFETY: setpriority takes plain integers; a PRIO_PROCESS of a
            // thread id sets that one thread's nice value.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, self.tid as libc::id_t, nice) };
        }
        self.idle = idle && ok;
    }
}

/// The calling thread's time spent waiting on a run queue, in
/// nanoseconds: the second field of /proc/thread-self/schedstat.
fn run_delay() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy the kernel reports for the calling thread.
    fn policy() -> i32 {
        // SAFETY: sched_getscheduler takes a plain id; 0 is the caller.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_thread_yields_falls_back_when_starved_and_yields_again() {
        std::thread::spawn(|| {
            // SAFETY: getpriority takes plain integers; 0 is the caller.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let mut y = Yielding::start();
            assert!(!y.is_idle(), "a thread yields only once it is busy");
            assert_eq!(policy(), libc::SCHED_OTHER);
            y.tick(BUSY_BYTES as usize - 1);
            assert!(!y.is_idle());
            y.tick(1);
            assert!(
                y.is_idle(),
                "schedstat is readable here, so a busy thread yields"
            );
            assert_eq!(policy(), libc::SCHED_IDLE);
            let t0 = y.window_start;
            let d0 = y.delay_at_start.unwrap();
            // A window in which it waited less than STARVED of the time
            // (as under a flood): no change.
            let t1 = t0 + WINDOW;
            y.end_window(t1, d0 + WINDOW.as_nanos() as u64 * 8 / 10);
            assert!(y.is_idle());
            // One in which it waited nearly all the time: it falls back.
            let t2 = t1 + WINDOW;
            let d2 = d0 + WINDOW.as_nanos() as u64 * 8 / 10 + WINDOW.as_nanos() as u64 * 95 / 100;
            y.end_window(t2, d2);
            assert!(!y.is_idle(), "a starved thread falls back");
            assert_eq!(policy(), libc::SCHED_OTHER);
            // SAFETY: getpriority takes plain integers; 0 is the caller.
            assert_eq!(
                unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) },
                FALLBACK_NICE
            );
            // It stays so until its fallback is over, then yields again.
            let t3 = t2 + FALLBACK / 2;
            y.end_window(t3, d2);
            assert!(!y.is_idle());
            y.end_window(t2 + FALLBACK, d2);
            assert!(y.is_idle());
            assert_eq!(policy(), libc::SCHED_IDLE);
            // At its end the thread is as it was.
            y.end();
            assert_eq!(policy(), libc::SCHED_OTHER);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, nice);
        })
        .join()
        .unwrap();
    }
}
