//! The supervisor's decisions, tested on a fake host: fencing by
//! generation, restart policies, the grace period of a stop, kill and
//! removal, pause, and stale copies. The image store and the bundles are
//! real files in a temporary directory; mounts, shims and processes are
//! the fake's.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::net::UnixStream as StdStream;
use std::sync::Mutex as StdMutex;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use super::host::{Host, Shim};
use super::*;
use crate::snapshot::SnapshotError;

/// How a fake container's process behaves.
#[derive(Debug, Clone, Copy)]
enum Program {
    /// Prints two lines and exits with this code.
    Exits(i32),
    /// Runs until a signal ends it; SIGTERM does unless it is ignored.
    Runs { ignores_term: bool },
}

struct FakeProc {
    bundle: PathBuf,
    frames: Option<StdStream>,
    ended: Option<oneshot::Sender<()>>,
    ignores_term: bool,
}

#[derive(Default)]
struct FakeState {
    next_pid: i32,
    /// The program each container runs, by id (default: runs).
    programs: HashMap<String, Program>,
    procs: HashMap<i32, FakeProc>,
    /// Every signal sent, in order, with the pid it went to.
    signals: Vec<(i32, Signal)>,
    /// Freeze requests, in order.
    freezes: Vec<(String, bool)>,
    mounted: HashSet<PathBuf>,
    started: Vec<String>,
}

/// A host whose processes are entries in a table: a shim "runs" until
/// its container's program ends or a signal ends it, and writes the
/// bundle's pid and exit files as the real shim does.
#[derive(Default)]
struct FakeHost {
    state: StdMutex<FakeState>,
}

impl FakeHost {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn set_program(&self, id: &str, p: Program) {
        self.lock().programs.insert(id.to_string(), p);
    }

    fn signals(&self) -> Vec<Signal> {
        self.lock().signals.iter().map(|(_, s)| *s).collect()
    }

    fn starts(&self, id: &str) -> usize {
        self.lock().started.iter().filter(|s| *s == id).count()
    }

    /// Ends process `pid` with `code`, as its shim would report it.
    fn finish(state: &mut FakeState, pid: i32, code: i32) {
        let Some(mut p) = state.procs.remove(&pid) else {
            return;
        };
        let _ = fs::write(bundle::exit(&p.bundle), code.to_string());
        if let Some(mut f) = p.frames.take() {
            let exit = Frame::Exit {
                code,
                error: None,
                oom_killed: false,
            };
            let _ = f.write_all(exit.to_line().as_bytes());
        }
        if let Some(tx) = p.ended.take() {
            let _ = tx.send(());
        }
    }
}

impl Host for FakeHost {
    fn mount_rootfs(&self, _lowers: &[PathBuf], dir: &Path) -> Result<(), SnapshotError> {
        fs::create_dir_all(bundle::rootfs(dir)).map_err(|source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        self.lock().mounted.insert(dir.to_path_buf());
        Ok(())
    }

    fn unmount_rootfs(&self, dir: &Path) {
        self.lock().mounted.remove(dir);
    }

    fn start_shim(&self, dir: &Path) -> Result<Shim, String> {
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut st = self.lock();
        st.next_pid += 1;
        let pid = 100_000 + st.next_pid;
        st.started.push(id.clone());
        let program = st.programs.get(&id).copied().unwrap_or(Program::Runs {
            ignores_term: false,
        });
        fs::write(bundle::pid(dir), pid.to_string()).map_err(|e| e.to_string())?;
        let (mut ours, theirs) = StdStream::pair().map_err(|e| e.to_string())?;
        theirs.set_nonblocking(true).map_err(|e| e.to_string())?;
        let reader = tokio::net::UnixStream::from_std(theirs).map_err(|e| e.to_string())?;
        // The output goes to the log file, as the real shim writes it.
        let next = crate::logs::reader::next_after_last(dir).unwrap_or(1);
        let mut log = String::new();
        for (i, text) in ["one", "two"].iter().enumerate() {
            log.push_str(&Frame::log(next + i as u64, "stdout", 0, text.as_bytes()).to_line());
        }
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bundle::log(dir))
            .and_then(|mut f| f.write_all(log.as_bytes()))
            .map_err(|e| e.to_string())?;
        ours.write_all(Frame::Start { pid }.to_line().as_bytes())
            .map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        st.procs.insert(
            pid,
            FakeProc {
                bundle: dir.to_path_buf(),
                frames: Some(ours),
                ended: Some(tx),
                ignores_term: matches!(program, Program::Runs { ignores_term: true }),
            },
        );
        if let Program::Exits(code) = program {
            Self::finish(&mut st, pid, code);
        }
        Ok(Shim {
            frames: tokio::io::BufReader::new(Box::pin(reader)),
            ended: Box::pin(async move {
                let _ = rx.await;
            }),
        })
    }

    fn start_exec_shim(&self, _dir: &Path, _exec: &str) -> Result<(), String> {
        Err("the fake host runs no exec".into())
    }

    fn alive(&self, bundle: &Path) -> bool {
        self.lock().procs.values().any(|p| p.bundle == bundle)
    }

    fn kill(&self, bundle: &Path, signal: Signal) -> Result<(), String> {
        let mut st = self.lock();
        let Some((&pid, p)) = st.procs.iter().find(|(_, p)| p.bundle == bundle) else {
            return Err(format!("kill({}): no such process", bundle.display()));
        };
        let ignores_term = p.ignores_term;
        st.signals.push((pid, signal));
        let ends = signal == Signal::SIGKILL
            || (matches!(signal, Signal::SIGTERM | Signal::SIGINT) && !ignores_term);
        if ends {
            Self::finish(&mut st, pid, 128 + signal as i32);
        }
        Ok(())
    }

    fn freeze(&self, id: &str, frozen: bool) -> Result<(), String> {
        self.lock().freezes.push((id.to_string(), frozen));
        Ok(())
    }
}

/// A supervisor on a fake host, with a small image "base" imported.
struct Rig {
    sup: Arc<Supervisor>,
    host: Arc<FakeHost>,
    reports: mpsc::UnboundedReceiver<Report>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(FakeHost::default());
        let (tx, reports) = mpsc::unbounded_channel();
        let sup = Supervisor::open(
            SupervisorConfig {
                data_dir: dir.path().join("agent"),
                lease: Duration::from_secs(2),
                ship: ShipConfig::default(),
                log_rotation: crate::runtime::shim::Rotation {
                    max_size: 0,
                    max_file: 1,
                },
                archive_limits: Default::default(),
            },
            host.clone(),
            tx,
        )
        .unwrap();
        import::import_rootfs(
            &sup.images,
            &sup.snapshots,
            "base",
            rootfs_tar().as_slice(),
            0,
        )
        .unwrap();
        Self {
            sup: Arc::new(sup),
            host,
            reports,
            _dir: dir,
        }
    }

    fn run(&self, id: &str, generation: u64, restart: &str) -> tokio::task::JoinHandle<()> {
        let a = Assignment {
            container: id.into(),
            name: format!("c-{id}"),
            generation,
            order: Order::Run {
                spec: Box::new(RunSpec {
                    image: "base".into(),
                    cmd: vec!["true".into()],
                    restart: restart.into(),
                    ..Default::default()
                }),
                start: true,
            },
        };
        tokio::spawn(self.sup.clone().assign(a))
    }

    async fn order(&self, id: &str, generation: u64, order: Order) {
        self.sup
            .clone()
            .assign(Assignment {
                container: id.into(),
                name: format!("c-{id}"),
                generation,
                order,
            })
            .await
    }

    /// The next transition reported, within 5 s.
    async fn next(&mut self) -> Transition {
        let deadline = Duration::from_secs(5);
        loop {
            match tokio::time::timeout(deadline, self.reports.recv()).await {
                Ok(Some(Report::Transition(t))) => return t,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the supervisor's outbox closed"),
                Err(_) => panic!("no transition within {deadline:?}"),
            }
        }
    }

    /// Every report sent so far, without waiting.
    fn drain(&mut self) -> Vec<Report> {
        std::iter::from_fn(|| self.reports.try_recv().ok()).collect()
    }
}

/// A one-layer rootfs with an /etc/passwd, as a tar.
fn rootfs_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(passwd.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "etc/passwd", &passwd[..]).unwrap();
    b.into_inner().unwrap()
}

fn transitions(reports: Vec<Report>) -> Vec<Transition> {
    reports
        .into_iter()
        .filter_map(|r| match r {
            Report::Transition(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn states(ts: &[Transition]) -> Vec<(ContainerState, i32)> {
    ts.iter().map(|t| (t.to, t.exit_code)).collect()
}

#[tokio::test]
async fn a_run_reports_its_life_and_on_failure_restarts_as_often_as_allowed() {
    use ContainerState::*;
    let mut rig = Rig::new();
    rig.host.set_program("aa01", Program::Exits(3));
    rig.run("aa01", 1, "on-failure:2").await.unwrap();
    let mut ts = Vec::new();
    while let Ok(r) = rig.reports.try_recv() {
        match r {
            Report::Transition(t) => ts.push(t),
            // Shipped from the log file (logs/shipper.rs has its tests).
            Report::Logs(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Created once, then three runs: the first and two restarts.
    assert_eq!(
        states(&ts),
        [
            (Created, 0),
            (Running, 0),
            (Exited, 3),
            (Running, 0),
            (Exited, 3),
            (Running, 0),
            (Exited, 3)
        ]
    );
    assert!(ts[0]
        .image_id
        .as_deref()
        .is_some_and(|i| i.starts_with("sha256:")));
    assert!(ts.iter().all(|t| t.generation == 1));
    assert_eq!(rig.host.starts("aa01"), 3);
    // Each run's rootfs was mounted and let go again.
    assert!(rig.host.lock().mounted.is_empty());
}

#[tokio::test]
async fn an_older_generation_is_dropped_and_a_newer_one_replaces_the_copy() {
    use ContainerState::*;
    let mut rig = Rig::new();
    let first = rig.run("bb02", 2, "no");
    assert_eq!(
        (rig.next().await.to, rig.next().await.to),
        (Created, Running)
    );
    // A stop from an older placement is dropped: nothing is signalled.
    rig.order(
        "bb02",
        1,
        Order::Stop {
            signal: None,
            grace: Duration::from_secs(1),
        },
    )
    .await;
    assert!(rig.host.signals().is_empty());
    // Placed here again at generation 3: the old copy is killed and goes,
    // and the new one starts afresh.
    let second = rig.run("bb02", 3, "no");
    let old_exit = rig.next().await;
    assert_eq!((old_exit.to, old_exit.generation), (Exited, 2));
    let created = rig.next().await;
    let running = rig.next().await;
    assert_eq!(
        [
            (created.to, created.generation),
            (running.to, running.generation)
        ],
        [(Created, 3), (Running, 3)]
    );
    assert_eq!(rig.host.signals(), [Signal::SIGKILL]);
    first.await.unwrap();
    // Generation 2 is now older than what the node has seen: dropped.
    rig.run("bb02", 2, "no").await.unwrap();
    assert!(transitions(rig.drain()).is_empty());
    assert_eq!(rig.host.starts("bb02"), 2);
    rig.order("bb02", 3, Order::Remove).await;
    second.await.unwrap();
    assert!(!rig.sup.bundle_dir("bb02").unwrap().exists());
}

#[tokio::test]
async fn stop_sends_the_stop_signal_then_sigkill_after_the_grace_period() {
    use ContainerState::*;
    let mut rig = Rig::new();
    rig.host
        .set_program("cc03", Program::Runs { ignores_term: true });
    let run = rig.run("cc03", 1, "always");
    assert_eq!(
        (rig.next().await.to, rig.next().await.to),
        (Created, Running)
    );
    let began = std::time::Instant::now();
    rig.order(
        "cc03",
        1,
        Order::Stop {
            signal: None,
            grace: Duration::from_millis(300),
        },
    )
    .await;
    let waited = began.elapsed();
    assert_eq!(rig.host.signals(), [Signal::SIGTERM, Signal::SIGKILL]);
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let exit = rig.next().await;
    assert_eq!((exit.to, exit.exit_code), (Exited, 137));
    // A user's stop: "always" does not bring it back.
    run.await.unwrap();
    assert_eq!(rig.host.starts("cc03"), 1);
    assert!(transitions(rig.drain()).is_empty());
}

#[tokio::test]
async fn kill_ends_the_container_for_good_and_pause_freezes_it() {
    use ContainerState::*;
    let mut rig = Rig::new();
    let run = rig.run("dd04", 1, "unless-stopped");
    assert_eq!(
        (rig.next().await.to, rig.next().await.to),
        (Created, Running)
    );
    rig.order("dd04", 1, Order::Pause).await;
    assert_eq!(rig.next().await.to, Paused);
    rig.order("dd04", 1, Order::Unpause).await;
    assert_eq!(rig.next().await.to, Running);
    assert_eq!(
        rig.host.lock().freezes,
        [("dd04".to_string(), true), ("dd04".to_string(), false)]
    );
    rig.order("dd04", 1, Order::Kill { signal: 9 }).await;
    let exit = rig.next().await;
    assert_eq!((exit.to, exit.exit_code), (Exited, 137));
    run.await.unwrap();
    assert_eq!(rig.host.starts("dd04"), 1);
    let local = rig.sup.local_containers();
    assert_eq!(
        local
            .iter()
            .map(|l| (l.container.as_str(), l.state, l.exit_code))
            .collect::<Vec<_>>(),
        [("dd04", Exited, 137)]
    );
}

#[tokio::test]
async fn stale_copies_go_unless_the_node_holds_a_newer_one() {
    use ContainerState::*;
    let mut rig = Rig::new();
    for id in ["ee05", "ff06"] {
        rig.order(
            id,
            2,
            Order::Run {
                spec: Box::new(RunSpec {
                    image: "base".into(),
                    cmd: vec!["true".into()],
                    ..Default::default()
                }),
                start: false,
            },
        )
        .await;
        let t = rig.next().await;
        assert_eq!(t.to, Created, "{t:?}");
    }
    let ee = rig.run("ee05", 2, "no");
    assert_eq!(rig.next().await.to, Running);
    let copy = |id: &str, generation| LocalCopy {
        container: id.into(),
        generation,
        state: Running,
        exit_code: 0,
    };
    // ee05 at generation 2 is stale; ff06's copy (2) is newer than the
    // stale generation named (1), so it stays.
    rig.sup
        .remove_stale(vec![copy("ee05", 2), copy("ff06", 1)])
        .await;
    ee.await.unwrap();
    let killed = transitions(rig.drain());
    assert_eq!(
        killed
            .iter()
            .map(|t| (t.container.as_str(), t.to, t.generation))
            .collect::<Vec<_>>(),
        [("ee05", Exited, 2)]
    );
    assert!(!rig.sup.bundle_dir("ee05").unwrap().exists());
    assert!(rig.sup.bundle_dir("ff06").unwrap().exists());
    assert_eq!(rig.host.signals(), [Signal::SIGKILL]);
    // Forgotten with its copy: the cluster may place ee05 here again at
    // any generation.
    rig.run("ee05", 1, "no");
    let t = rig.next().await;
    assert_eq!((t.to, t.generation), (Created, 1));
}

#[tokio::test]
async fn a_malformed_id_names_no_directory() {
    let mut rig = Rig::new();
    rig.run("../../etc", 1, "no").await.unwrap();
    assert!(rig.drain().is_empty());
    assert_eq!(rig.host.lock().started.len(), 0);
}
