//! Long jobs of the server (building, installing and sending snapshots)
//! on threads of their own at a lower CPU priority. On a loaded machine
//! such a job and the server's one runtime thread compete for the same
//! CPUs; at equal priority the job took a fair share of the time the
//! runtime thread needed for heartbeats and votes, and the cluster held
//! elections while a snapshot was written. At nice +10 the kernel gives
//! the runtime thread about nine tenths of a CPU they share, and the job
//! still has every idle cycle.

/// How much nicer than the server a background job runs.
pub const NICER_BY: i32 = 10;

/// Why a background job gave no result.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("cannot start the thread for {job}: {source}")]
    Spawn {
        job: &'static str,
        source: std::io::Error,
    },
    #[error("the thread for {job} panicked")]
    Panicked { job: &'static str },
}

/// Runs `f` on a thread of its own named `job`, [`NICER_BY`] nicer than
/// the server, and waits for its result without holding the runtime.
pub async fn run<T, F>(job: &'static str, f: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(job.into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        })
        .map_err(|source| BackgroundError::Spawn { job, source })?;
    rx.await.map_err(|_| BackgroundError::Panicked { job })
}

/// Makes the calling thread [`NICER_BY`] nicer. On Linux a nice value
/// belongs to a thread, so the rest of the server keeps its own.
fn lower_priority() {
    // SAFETY: nice(2) takes an integer and touches no memory. Raising a
    // nice value needs no privilege; should it fail all the same, the job
    // runs at the server's priority, which costs only latency.
    unsafe {
        libc::nice(NICER_BY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        // SAFETY: getpriority takes plain integers; PRIO_PROCESS 0 is the
        // calling thread on Linux. A nice of -1 is never set here, so the
        // errno dance for a -1 result is not needed.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_job_runs_nicer_than_its_caller_and_returns_its_result() {
        let caller = own_nice();
        let (nice, answer) = run("test-job", || (own_nice(), 42)).await.unwrap();
        assert_eq!(answer, 42);
        assert_eq!(nice, (caller + NICER_BY).min(19));
        assert_eq!(own_nice(), caller, "the caller's priority is its own");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_is_an_error_naming_it() {
        let e = run("doomed-job", || -> u8 { panic!("on purpose") })
            .await
            .unwrap_err();
        assert!(matches!(e, BackgroundError::Panicked { job: "doomed-job" }));
    }
}
