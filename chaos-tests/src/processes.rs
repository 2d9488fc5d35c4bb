//! Counting real processes, for the checks that no more copies of a
//! container run than the cluster asked for: `ps` says what the cluster
//! believes, /proc says what runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many processes of this pid namespace run exactly this command line.
pub fn count(argv: &[&str]) -> usize {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            // A zombie has an empty command line; it runs nothing.
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want)
        })
        .count()
}

/// Samples [`count`] on a thread of its own until dropped or stopped,
/// keeping every change with the time it was seen.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<(Duration, usize)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling every `every`.
    pub fn start(argv: &[&str], every: Duration) -> Self {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (stop.clone(), history.clone());
        let thread = std::thread::spawn(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let began = Instant::now();
            let mut last = None;
            while !s.load(Ordering::Relaxed) {
                let n = count(&argv);
                if last != Some(n) {
                    h.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((began.elapsed(), n));
                    last = Some(n);
                }
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            history,
            thread: Some(thread),
        }
    }

    /// The most processes seen at once so far.
    pub fn max(&self) -> usize {
        self.history().iter().map(|(_, n)| *n).max().unwrap_or(0)
    }

    /// Every change seen: (time since the start, count).
    pub fn history(&self) -> Vec<(Duration, usize)> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
