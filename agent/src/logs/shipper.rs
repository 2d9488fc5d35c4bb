//! Ships each container's log to the cluster under closed acknowledgement
//! (DESIGN.md invariant 7). One task per container reads the bundle's log
//! file (never the shim's pipe, so a slow cluster never blocks a
//! container: only its disk does), sends batches in order with at most a
//! window of them unanswered, and goes on from the first sequence number
//! the cluster says it lacks: after every answer, reconnect, restart or
//! leader change. The position the cluster last acknowledged is kept in
//! the bundle (`log-acked`). A node-wide rate bounds what all of them send.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::reader::LogReader;
use crate::orders::{LogAck, LogBatch, Report};
use crate::runtime::bundle;

/// How log shipping is paced.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    /// The most lines in one batch.
    pub batch_lines: usize,
    /// About the most bytes in one batch.
    pub batch_bytes: usize,
    /// The most batches sent and not yet answered, per container.
    pub window: usize,
    /// Bytes per second for all of this node's containers together.
    pub rate_bytes: u64,
}

impl Default for ShipConfig {
    fn default() -> Self {
        Self {
            batch_lines: 512,
            batch_bytes: 64 * 1024,
            window: 4,
            rate_bytes: 1 << 20,
        }
    }
}

/// What a container's shipper is told.
#[derive(Debug)]
enum Control {
    Ack(LogAck),
    /// Ship again from this sequence number (a new session began).
    Rewind(u64),
    /// New lines or an exit may be there.
    Wake,
    /// The container is being removed: stop at once.
    Stop,
}

/// The shippers of this node's containers.
pub struct Shippers {
    cfg: ShipConfig,
    outbox: mpsc::UnboundedSender<Report>,
    running: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Control>)>>,
    rate: RateLimit,
    /// How many last lines the cluster keeps of each container (0: not
    /// known yet, never skip).
    tail_lines: std::sync::atomic::AtomicU64,
}

impl Shippers {
    pub fn new(cfg: ShipConfig, outbox: mpsc::UnboundedSender<Report>) -> Self {
        let rate = RateLimit::new(cfg.rate_bytes);
        Self {
            cfg,
            outbox,
            running: Mutex::new(HashMap::new()),
            rate,
            tail_lines: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Ships the log of container `id` (copy `generation`, bundle `dir`)
    /// from sequence `from`, unless a shipper of that copy runs already
    /// (then it is woken).
    pub fn start(self: &Arc<Self>, id: &str, generation: u64, dir: &Path, from: u64) {
        let mut running = self.lock();
        if let Some((g, tx)) = running.get(id) {
            if *g == generation && tx.send(Control::Wake).is_ok() {
                return;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        running.insert(id.to_string(), (generation, tx.clone()));
        drop(running);
        let ship = Ship {
            id: id.to_string(),
            generation,
            dir: dir.to_path_buf(),
            from,
        };
        let me = self.clone();
        tokio::spawn(async move {
            ship.run(&me, rx).await;
            let mut running = me.lock();
            if running
                .get(&ship.id)
                .is_some_and(|(_, t)| t.same_channel(&tx))
            {
                running.remove(&ship.id);
            }
        });
    }

    /// Sets how many last lines the cluster keeps of each container.
    pub fn set_tail(&self, lines: u64) {
        self.tail_lines
            .store(lines, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hands the cluster's answer to the container's shipper.
    pub fn ack(&self, id: &str, ack: LogAck) {
        if let Some((_, tx)) = self.lock().get(id) {
            let _ = tx.send(Control::Ack(ack));
        }
    }

    /// After a registration: every shipper goes on from where the cluster
    /// stands (`next` by container; a container it does not name keeps its
    /// own acknowledged position).
    pub fn rewind_all(&self, next: &HashMap<String, u64>) {
        for (id, (_, tx)) in self.lock().iter() {
            if let Some(n) = next.get(id) {
                let _ = tx.send(Control::Rewind(*n));
            }
        }
    }

    /// Stops the container's shipper (its bundle is going away).
    pub fn stop(&self, id: &str) {
        if let Some((_, tx)) = self.lock().remove(id) {
            let _ = tx.send(Control::Stop);
        }
    }

    /// True while the container's log is being shipped.
    pub fn is_running(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::UnboundedSender<Control>)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The position the cluster last acknowledged for a bundle, if recorded.
pub fn acked(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(bundle::log_acked(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct Ship {
    id: String,
    generation: u64,
    dir: PathBuf,
    from: u64,
}

impl Ship {
    async fn run(&self, shippers: &Shippers, mut rx: mpsc::UnboundedReceiver<Control>) {
        let cfg = &shippers.cfg;
        let mut reader = LogReader::open(&self.dir, self.from);
        // Batches sent and not yet answered: (first, last) sequence numbers.
        let mut inflight: VecDeque<(u64, u64)> = VecDeque::new();
        let mut acked = self.from;
        let mut idle = Duration::from_millis(5);
        // When the shipper last looked how far behind it is.
        let mut last_look = Instant::now() - Duration::from_secs(1);
        loop {
            // Every answer first: they open the window and may rewind.
            while let Ok(c) = rx.try_recv() {
                if !self.control(c, &mut reader, &mut inflight, &mut acked) {
                    return;
                }
            }
            if inflight.len() < cfg.window {
                let dir = self.dir.clone();
                // Far behind (a flood, or a long time cut off): the cluster
                // keeps only a tail, so only the last lines are shipped,
                // and the lines before stay in the node's file.
                let tail = shippers
                    .tail_lines
                    .load(std::sync::atomic::Ordering::Relaxed);
                let mut skip_to = None;
                if tail > 0 && last_look.elapsed() >= Duration::from_secs(1) {
                    last_look = Instant::now();
                    let end = super::reader::next_after_last(&self.dir).unwrap_or(0);
                    if end > reader.next_seq() + 2 * tail {
                        let to = end - tail;
                        reader.rewind(to);
                        skip_to = Some(to);
                    }
                }
                let (lines, r) = {
                    let (max_lines, max_bytes) = (cfg.batch_lines, cfg.batch_bytes);
                    // File reads and JSON decoding off the async threads.
                    let mut r = reader;
                    let res = tokio::task::spawn_blocking(move || {
                        let lines = r.read(max_lines, max_bytes);
                        (lines, r)
                    })
                    .await;
                    match res {
                        Ok((lines, r)) => (lines, r),
                        Err(_) => return,
                    }
                };
                reader = r;
                let lines = match lines {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(id = %self.id, "reading {}: {e}", dir.display());
                        Vec::new()
                    }
                };
                if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
                    let (first, last) = (first.seq, last.seq);
                    let bytes: usize = lines.iter().map(|l| l.line.len()).sum();
                    shippers.rate.take(bytes as u64).await;
                    let sent = shippers.outbox.send(Report::Logs(LogBatch {
                        container: self.id.clone(),
                        generation: self.generation,
                        lines,
                        skip_to: skip_to.filter(|s| *s == first),
                    }));
                    if sent.is_err() {
                        return;
                    }
                    inflight.push_back((first, last));
                    idle = Duration::from_millis(5);
                    continue;
                }
                // Everything shipped and answered, and the container is
                // over: this shipper's work is done.
                if inflight.is_empty()
                    && acked >= reader.next_seq()
                    && bundle::exit(&self.dir).exists()
                {
                    // One more look: the shim writes the exit file after
                    // its last line.
                    let mut again = LogReader::open(&self.dir, reader.next_seq());
                    if again.read(1, 1).map(|l| l.is_empty()).unwrap_or(true) {
                        return;
                    }
                }
            }
            // Nothing to send, or the window is full: wait for an answer,
            // or look at the file again a little later.
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => if !self.control(c, &mut reader, &mut inflight, &mut acked) { return },
                    None => return,
                },
                _ = tokio::time::sleep(idle) => {
                    idle = (idle * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Acts on one control message; false when shipping is over.
    fn control(
        &self,
        c: Control,
        reader: &mut LogReader,
        inflight: &mut VecDeque<(u64, u64)>,
        acked: &mut u64,
    ) -> bool {
        match c {
            Control::Wake => true,
            Control::Stop => false,
            Control::Rewind(next) => {
                inflight.clear();
                reader.rewind(next);
                self.record(acked, next);
                true
            }
            Control::Ack(a) => {
                if a.stop {
                    return false;
                }
                let answered = inflight.iter().position(|(f, _)| *f == a.chunk_first_seq);
                let Some(i) = answered else {
                    // The answer to a batch of an earlier window (sent
                    // before a rewind): it only moves the position.
                    if a.next_seq > *acked {
                        self.record(acked, a.next_seq);
                    }
                    return true;
                };
                let (_, last) = inflight[i];
                inflight.drain(..=i);
                self.record(acked, a.next_seq.max(*acked));
                if a.next_seq <= last {
                    // The cluster lacks lines before this batch's end (it
                    // took none of a batch that would leave a gap): ship
                    // again from the first it lacks.
                    inflight.clear();
                    reader.rewind(a.next_seq);
                }
                true
            }
        }
    }

    fn record(&self, acked: &mut u64, next: u64) {
        if *acked != next {
            *acked = next;
            let _ = std::fs::write(bundle::log_acked(&self.dir), next.to_string());
        }
    }
}

/// A token bucket: at most `rate` bytes a second, with a burst of one
/// second's worth.
struct RateLimit {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            state: Mutex::new((rate as f64, Instant::now())),
        }
    }

    async fn take(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.rate as f64;
            st.0 = (st.0 + refill).min(self.rate as f64);
            st.1 = now;
            st.0 -= bytes as f64;
            if st.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-st.0 / self.rate as f64)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_lines(dir: &Path, seqs: std::ops::RangeInclusive<u64>) {
        super::super::reader::append_numbered(&bundle::log(dir), seqs)
    }

    async fn batch(rx: &mut mpsc::UnboundedReceiver<Report>) -> Option<(u64, u64)> {
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Some(Report::Logs(b))) => Some((b.lines[0].seq, b.lines.last().unwrap().seq)),
            _ => None,
        }
    }

    fn ack(next: u64, first: u64) -> LogAck {
        LogAck {
            next_seq: next,
            chunk_first_seq: first,
            stop: false,
        }
    }

    #[tokio::test]
    async fn batches_go_in_order_within_the_window_and_a_gap_rewinds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_lines(d, 1..=10);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Arc::new(Shippers::new(
            ShipConfig {
                batch_lines: 2,
                batch_bytes: 1 << 20,
                window: 2,
                rate_bytes: 0,
            },
            tx,
        ));
        s.start("ab", 1, d, 1);
        // Two batches, then the window is full.
        assert_eq!(batch(&mut rx).await, Some((1, 2)));
        assert_eq!(batch(&mut rx).await, Some((3, 4)));
        assert_eq!(batch(&mut rx).await, None);
        s.ack("ab", ack(3, 1));
        assert_eq!(batch(&mut rx).await, Some((5, 6)));
        // The cluster lost 3..4 (say, a leader change): it answers with
        // 3, and shipping goes on from 3.
        s.ack("ab", ack(3, 3));
        assert_eq!(batch(&mut rx).await, Some((3, 4)));
        assert_eq!(batch(&mut rx).await, Some((5, 6)));
        assert_eq!(batch(&mut rx).await, None);
        assert_eq!(acked(d), Some(3));
        // A registration says where the cluster stands.
        s.rewind_all(&HashMap::from([("ab".to_string(), 9)]));
        assert_eq!(batch(&mut rx).await, Some((9, 10)));
        assert_eq!(batch(&mut rx).await, None);
        assert_eq!(acked(d), Some(9));
        // The container ends with everything answered: the shipper ends.
        std::fs::write(bundle::exit(d), "0").unwrap();
        s.ack("ab", ack(11, 9));
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.is_running("ab") {
            assert!(Instant::now() < deadline, "the shipper did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(acked(d), Some(11));
    }

    #[tokio::test]
    async fn a_shipper_far_behind_skips_to_the_tail_the_cluster_keeps() {
        let dir = tempfile::tempdir().unwrap();
        write_lines(dir.path(), 1..=10);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Arc::new(Shippers::new(ShipConfig::default(), tx));
        s.set_tail(2);
        s.start("ef", 1, dir.path(), 1);
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Report::Logs(b))) => {
                assert_eq!(b.skip_to, Some(9));
                assert_eq!(b.lines.iter().map(|l| l.seq).collect::<Vec<_>>(), [9, 10]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stop_ends_the_shipper_of_a_stale_copy() {
        let dir = tempfile::tempdir().unwrap();
        write_lines(dir.path(), 1..=3);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Arc::new(Shippers::new(ShipConfig::default(), tx));
        s.start("cd", 1, dir.path(), 1);
        assert_eq!(batch(&mut rx).await, Some((1, 3)));
        s.ack(
            "cd",
            LogAck {
                next_seq: 1,
                chunk_first_seq: 1,
                stop: true,
            },
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.is_running("cd") {
            assert!(Instant::now() < deadline, "the shipper did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
