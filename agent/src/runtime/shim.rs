//! The per-container shim: a process of its own (`berth-agent shim`) that
//! creates the container's namespaces, owns its stdio and exit status, and
//! outlives the agent. It reports to the agent in frames on its stdout and
//! keeps every log line in the bundle's log file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Pid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::attach;
use super::cgroups::{Cgroup, Layout, Limits};
use super::frame::{self, Frame};
use super::{bundle, console, init, process, RuntimeError};

/// The longest line kept whole; longer output is split.
pub const MAX_LINE: usize = 16 * 1024;

/// config.json annotation: keep the container's stdin open (run -i).
pub const ANNOTATION_STDIN_OPEN: &str = "org.berth.stdin-open";
/// The annotation naming the agent's lease file, for a movable container.
pub const ANNOTATION_LEASE: &str = "org.berth.lease";
/// A file in the bundle: hold this run's process until a client attaches.
pub const WAIT_ATTACH_MARK: &str = "wait-attach";

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The stack of the cloned init child (it runs ordinary Rust code).
const CHILD_STACK: usize = 8 << 20;

/// What the shim is started with.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    pub bundle: PathBuf,
}

/// Runs the shim to the end of its container. Call it before any other
/// thread exists: the container is cloned from this process.
/// The command that runs a bundle's container under a shim, as the
/// supervisor and a build's RUN start it: `SHIM_EXE shim --bundle DIR`,
/// its frames on a pipe from its stdout, its stderr in the bundle's
/// shim.log, in a process group of its own (a signal to the agent's group,
/// a Ctrl+C in its terminal, must not reach the container).
pub fn command(shim_exe: &Path, bundle: &Path) -> std::io::Result<std::process::Command> {
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    let shim_log = File::create(bundle.join("shim.log"))?;
    let mut c = std::process::Command::new(shim_exe);
    c.arg("shim")
        .arg("--bundle")
        .arg(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log)
        .process_group(0);
    Ok(c)
}

/// The command of a shim started ahead of its container: it waits for
/// the bundle's path on stdin ([`await_bundle`]), and loads under
/// SCHED_IDLE until then.
pub fn warm_command(shim_exe: &Path) -> std::io::Result<std::process::Command> {
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    let mut c = std::process::Command::new(shim_exe);
    c.arg("shim")
        .arg("--bundle-from-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before its exec and
    // makes one async-signal-safe syscall, sched_setscheduler(2), on a
    // sched_param on its own stack; it allocates nothing and takes no lock.
    unsafe {
        c.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

/// For a shim started ahead: reads the bundle's path (one line) from
/// stdin, then makes its stderr the bundle's shim.log and its stdin
/// /dev/null, as [`command`] would have. None if stdin ends first (the
/// agent is gone) or the path is not an absolute one.
pub fn await_bundle() -> Option<PathBuf> {
    use std::io::BufRead as _;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    let bundle = PathBuf::from(line.trim_end_matches('\n'));
    if !bundle.is_absolute() {
        return None;
    }
    let shim_log = File::create(bundle.join("shim.log")).ok()?;
    let null = File::open("/dev/null").ok()?;
    // dup2(2): the container's shim writes its own errors to the bundle,
    // and reads nothing more from the agent.
    nix::unistd::dup2(shim_log.as_raw_fd(), 2).ok()?;
    nix::unistd::dup2(null.as_raw_fd(), 0).ok()?;
    // The agent started it under SCHED_IDLE to load; the container (which
    // inherits the policy) and its shim run under the normal one.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param for the length of
    // the call; 0 is this (single-threaded) process. Root may leave
    // SCHED_IDLE.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } != 0 {
        eprintln!(
            "berth-agent shim: cannot leave SCHED_IDLE: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    Some(bundle)
}

pub fn main(cfg: ShimConfig) -> i32 {
    let mut out = FrameWriter::new(&cfg.bundle);
    match run(&cfg, &mut out) {
        Ok(code) => code,
        Err(e) => {
            out.write(&Frame::Exit {
                code: 125,
                error: Some(e.to_string()),
                oom_killed: false,
            });
            let _ = fs::write(bundle::exit(&cfg.bundle), "125");
            125
        }
    }
}

/// Writes frames to the agent (stdout) and log lines to the log file,
/// which it rotates by size and count (`bundle::log_rotation`). Log lines
/// go to the file only: the agent ships them from there, so a slow agent
/// or cluster never holds the container's output back.
struct FrameWriter {
    stdout: std::io::Stdout,
    log: Option<std::io::BufWriter<File>>,
    path: PathBuf,
    size: u64,
    rotation: Rotation,
    next_seq: u64,
    /// Where each line is encoded before it is written.
    scratch: Vec<u8>,
}

/// Whole lines of one stream, as one read of the container's output
/// brought them: `data` holds them one after another, and `ends` where each
/// one ends. One message a read, not one a line, so that the reader and
/// the writer meet once per read.
struct Block {
    stream: &'static str,
    data: Vec<u8>,
    ends: Vec<u32>,
}

/// When the log file is rotated: at `max_size` bytes (0: never), keeping
/// `max_file` files in all (the current one included), as Docker's
/// json-file max-size and max-file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub max_file: u32,
}

impl Rotation {
    /// Reads a bundle's rotation file (`MAX_SIZE MAX_FILE`); none means
    /// no rotation.
    pub fn read(b: &Path) -> Self {
        let text = fs::read_to_string(bundle::log_rotation(b)).unwrap_or_default();
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        match (it.next().flatten(), it.next().flatten()) {
            (Some(max_size), Some(max_file)) => Self {
                max_size,
                max_file: max_file.clamp(1, 1000) as u32,
            },
            _ => Self {
                max_size: 0,
                max_file: 1,
            },
        }
    }

    /// The text of a rotation file.
    pub fn to_file(self) -> String {
        format!("{} {}\n", self.max_size, self.max_file)
    }
}

impl FrameWriter {
    fn new(b: &Path) -> Self {
        let path = bundle::log(b);
        let log = open_log(&path);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // A restarted container goes on from the last sequence number; a
        // new bundle from where the cluster's log of the container stands.
        let next_seq = crate::logs::reader::next_after_last(b)
            .or_else(|| {
                fs::read_to_string(bundle::log_start(b))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
            .unwrap_or(1);
        Self {
            stdout: std::io::stdout(),
            log,
            path,
            size,
            rotation: Rotation::read(b),
            next_seq,
            scratch: Vec::with_capacity(4096),
        }
    }

    fn write(&mut self, f: &Frame) {
        let line = f.to_line();
        // The agent may be gone: its pipe breaking must not stop the shim.
        let _ = self.stdout.write_all(line.as_bytes());
        let _ = self.stdout.flush();
    }

    /// Writes out what is buffered: before the exit is reported, and
    /// whenever the container pauses its output.
    fn flush(&mut self) {
        if let Some(log) = &mut self.log {
            let _ = log.flush();
        }
    }

    /// Logs each line of a block, all with the time it came.
    fn log_block(&mut self, block: &Block) {
        let time_ns = now_ns();
        let mut start = 0;
        for &end in &block.ends {
            self.log_line(block.stream, time_ns, &block.data[start..end as usize]);
            start = end as usize;
        }
    }

    fn log_line(&mut self, stream: &'static str, time_ns: i64, bytes: &[u8]) {
        self.scratch.clear();
        frame::encode_log(&mut self.scratch, self.next_seq, stream, time_ns, bytes);
        self.next_seq += 1;
        let len = self.scratch.len() as u64;
        if self.rotation.max_size > 0 && self.size + len > self.rotation.max_size {
            self.rotate();
        }
        if let Some(log) = &mut self.log {
            let _ = log.write_all(&self.scratch);
            self.size += len;
        }
    }

    /// log.jsonl becomes log.jsonl.1 (and each older one moves up by one;
    /// the oldest beyond max-file goes), and a new log.jsonl begins.
    fn rotate(&mut self) {
        self.flush();
        self.log = None;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let keep = self.rotation.max_file.saturating_sub(1);
        if keep == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::remove_file(bundle::rotated_log(dir, keep));
            for n in (1..keep).rev() {
                let _ = fs::rename(bundle::rotated_log(dir, n), bundle::rotated_log(dir, n + 1));
            }
            let _ = fs::rename(&self.path, bundle::rotated_log(dir, 1));
        }
        self.log = open_log(&self.path);
        self.size = 0;
    }
}

fn open_log(path: &Path) -> Option<std::io::BufWriter<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Root only: a container's output may hold its secrets.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .ok()
        .map(|f| std::io::BufWriter::with_capacity(64 * 1024, f))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn sys(op: &str) -> impl FnOnce(nix::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Sys {
        op: op.to_string(),
        source,
    }
}

fn clone_flags(spec: &Spec) -> CloneFlags {
    let mut flags = CloneFlags::empty();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in namespaces {
        flags |= match ns.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            // Made by the child once it is in its cgroup (init.rs).
            LinuxNamespaceType::Cgroup => CloneFlags::empty(),
            _ => CloneFlags::empty(),
        };
    }
    flags
}

fn run(cfg: &ShimConfig, out: &mut FrameWriter) -> Result<i32, RuntimeError> {
    let b = &cfg.bundle;
    let spec = Spec::load(bundle::config(b))?;
    if !clone_flags(&spec).contains(CloneFlags::CLONE_NEWNS) {
        return Err(RuntimeError::Invalid(
            "config.json must ask for a mount namespace".into(),
        ));
    }
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let annotations = spec.annotations().clone().unwrap_or_default();
    let stdin_open =
        terminal || annotations.get(ANNOTATION_STDIN_OPEN).map(String::as_str) == Some("true");
    // The agent asks for this run to wait for its first attachment (run
    // -it) with a marker file, so that a later plain start does not wait.
    let wait_for_attach = fs::remove_file(b.join(WAIT_ATTACH_MARK)).is_ok();

    // The container's stdio: a pty (run -t), or pipes, with stdin a pipe
    // the shim writes (run -i) or /dev/null.
    let (sync_r, sync_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let mut outputs: Vec<(&'static str, OwnedFd)> = Vec::new();
    let mut child_fds: Vec<OwnedFd> = Vec::new();
    // With a terminal, the pty is made inside the container (in its own
    // devpts) and its master arrives over this socket pair once the child
    // has mounted /dev/pts.
    let mut console: Option<OwnedFd> = None;
    let mut console_child: Option<OwnedFd> = None;
    let (stdin_fd, stdout_fd, stderr_fd, mut input) = if terminal {
        let (ours, theirs) = console::channel()?;
        console = Some(ours);
        console_child = Some(theirs);
        (-1, -1, -1, None)
    } else {
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        outputs.push(("stdout", out_r));
        outputs.push(("stderr", err_r));
        let (stdin_fd, input) = if stdin_open {
            let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
            let fd = in_r.as_raw_fd();
            child_fds.push(in_r);
            (
                fd,
                Some(Arc::new(attach::Input {
                    stdin: Mutex::new(Some(File::from(in_w))),
                    pty: None,
                })),
            )
        } else {
            let devnull: OwnedFd = File::open("/dev/null")
                .map_err(|source| RuntimeError::Io {
                    path: "/dev/null".into(),
                    source,
                })?
                .into();
            let fd = devnull.as_raw_fd();
            child_fds.push(devnull);
            (fd, None)
        };
        let (o, e) = (out_w.as_raw_fd(), err_w.as_raw_fd());
        child_fds.push(out_w);
        child_fds.push(err_w);
        (stdin_fd, o, e, input)
    };
    let clients = attach::Clients::default();
    // Clients attach through a socket in the bundle when the container
    // takes input (a terminal implies it).
    let listener = if stdin_open {
        let path = attach::socket_path(b);
        let _ = fs::remove_file(&path);
        let (_dir, short) = attach::short_socket_path(b).map_err(|source| RuntimeError::Io {
            path: path.clone(),
            source,
        })?;
        Some(
            std::os::unix::net::UnixListener::bind(&short)
                .map_err(|source| RuntimeError::Io { path, source })?,
        )
    } else {
        None
    };
    let cgroup = container_cgroup(&spec);
    if let Some((cg, limits)) = &cgroup {
        cg.create(limits, &device_policy(&spec)?)
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    }
    // Compiled here, loaded by the child as its last step before exec.
    let filter = seccomp_filter(&spec, b)?;
    let ctx = init::InitContext {
        spec: &spec,
        seccomp: filter.as_ref(),
        bundle: b,
        cgroup: cgroup.as_ref().map(|(cg, _)| cg),
        stdin: stdin_fd,
        stdout: stdout_fd,
        stderr: stderr_fd,
        sync: sync_w.as_raw_fd(),
        go: go_r.as_raw_fd(),
        console: console_child.as_ref().map(|c| c.as_raw_fd()),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: clone(2) without CLONE_VM gives the child its own copy of
    // this (single-threaded) process, like fork; the callback runs on the
    // given stack, which lives until the child execs or exits. SIGCHLD
    // makes the child reapable with waitpid.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| init::run(&ctx)),
            &mut stack,
            clone_flags(&spec),
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(sys("clone"))?;
    drop((child_fds, sync_w, go_r, console_child));
    // The child moves itself into its cgroup as its first step; if that
    // fails, it never runs, and the sync pipe below says why.
    // The terminal's master, from the child; none if its setup failed, and
    // then the sync pipe below says why.
    if let Some(sock) = console.take() {
        if let Some(master) = console::receive(&sock).map_err(sys("receiving the terminal"))? {
            input = Some(
                attach::Input::from_pty(&master).map_err(|source| RuntimeError::Io {
                    path: "pty".into(),
                    source,
                })?,
            );
            outputs.push(("stdout", master));
        }
    }
    if let (Some(listener), Some(input)) = (&listener, &input) {
        if wait_for_attach {
            attach::accept_first(listener, &clients, input, Duration::from_secs(60));
        }
    }
    let _ = nix::unistd::write(&go_w, &[1]);
    drop(go_w);

    let mut failure = String::new();
    let _ = File::from(sync_r).read_to_string(&mut failure);
    if !failure.is_empty() {
        let code = wait_exit(pid)?;
        if let Some((cg, _)) = &cgroup {
            cg.remove();
        }
        clients.broadcast(format!("{failure}\r\n").as_bytes());
        out.write(&Frame::Exit {
            code,
            error: Some(failure),
            oom_killed: false,
        });
        let _ = fs::write(bundle::exit(b), code.to_string());
        let _ = fs::remove_file(attach::socket_path(b));
        return Ok(code);
    }
    // The child is unreaped, so its pid is still its own: the pidfd names
    // it, and everyone who signals the container asks for a copy on the
    // control socket (runtime/process.rs) before the start is reported.
    let pidfd = process::pidfd_open(pid.as_raw()).map_err(sys("pidfd_open"))?;
    process::serve(
        b,
        pidfd.try_clone().map_err(|source| RuntimeError::Io {
            path: process::control_path(b),
            source,
        })?,
    )
    .map_err(|source| RuntimeError::Io {
        path: process::control_path(b),
        source,
    })?;
    let _ = fs::write(bundle::pid(b), pid.as_raw().to_string());
    out.write(&Frame::Start { pid: pid.as_raw() });
    // A movable container dies with its agent's lease (runtime/lease.rs).
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(lease) = annotations.get(ANNOTATION_LEASE) {
        let (lease, ended, bundle) = (PathBuf::from(lease), ended.clone(), b.to_path_buf());
        std::thread::spawn(move || watch_lease(&lease, &pidfd, &ended, &bundle));
    }
    if let (Some(listener), Some(input)) = (listener, input) {
        let clients = clients.clone();
        std::thread::spawn(move || attach::accept_loop(listener, clients, input));
    }

    // Bounded: output waits in the pipe (and the container with it) while
    // the log file takes what came before, so the shim's memory stays
    // small and a kill is not held up by a backlog.
    let (tx, rx) = mpsc::sync_channel::<Block>(OUTPUT_QUEUE);
    let readers: Vec<_> = outputs
        .into_iter()
        .map(|(stream, fd)| {
            let tx = tx.clone();
            let clients = clients.clone();
            std::thread::spawn(move || read_output(stream, File::from(fd), &clients, tx))
        })
        .collect();
    drop(tx);
    // Lines are written in batches; whatever is buffered goes out as soon
    // as the container pauses its output. The writer yields the CPUs as
    // the readers do (runtime/yielding.rs) until they have ended; the
    // container's exit is then reported at the shim's own priority.
    let mut yielding = super::yielding::Yielding::start();
    loop {
        let block = match rx.try_recv() {
            Ok(b) => b,
            Err(mpsc::TryRecvError::Empty) => {
                out.flush();
                match rx.recv() {
                    Ok(b) => b,
                    Err(_) => break,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        out.log_block(&block);
        yielding.tick(block.data.len());
    }
    yielding.end();
    out.flush();
    for r in readers {
        let _ = r.join();
    }
    let code = wait_exit(pid)?;
    ended.store(true, std::sync::atomic::Ordering::Release);
    process::unserve(b);
    let _ = fs::remove_file(attach::socket_path(b));
    let oom_killed = cgroup.as_ref().is_some_and(|(cg, _)| cg.oom_killed());
    if let Some((cg, _)) = &cgroup {
        cg.remove();
    }
    if oom_killed {
        let _ = fs::write(b.join("oom"), "");
    }
    let _ = fs::write(bundle::exit(b), code.to_string());
    out.write(&Frame::Exit {
        code,
        error: None,
        oom_killed,
    });
    Ok(code)
}

/// Kills the container once the agent's lease has run out (checked every
/// [`lease::CHECK_EVERY`]), leaving a marker in the bundle that says why.
fn watch_lease(
    lease: &Path,
    pidfd: &OwnedFd,
    ended: &std::sync::atomic::AtomicBool,
    bundle: &Path,
) {
    while !ended.load(std::sync::atomic::Ordering::Acquire) {
        if super::lease::expired(lease) {
            let _ = fs::write(bundle.join(super::lease::EXPIRED_MARK), "");
            // SIGKILL to the container's init ends its whole pid namespace.
            let _ = process::pidfd_signal(pidfd, libc::SIGKILL);
            return;
        }
        std::thread::sleep(super::lease::CHECK_EVERY);
    }
}

/// Reads a stream of the container's output until EOF (or, for a pty,
/// EIO once the container is gone): every piece goes at once to attached
/// clients, and whole lines (at most [`MAX_LINE`] bytes) to the log.
fn read_output(
    stream: &'static str,
    mut f: File,
    clients: &attach::Clients,
    tx: mpsc::SyncSender<Block>,
) {
    // A container that floods waits on its pipe rather than the control
    // plane waiting for a CPU (runtime/yielding.rs).
    let mut yielding = super::yielding::Yielding::start();
    let mut buf = vec![0u8; 16 * 1024];
    // The start of a line whose end has not come yet.
    let mut partial = Vec::new();
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        yielding.tick(n);
        clients.broadcast(&buf[..n]);
        partial.extend_from_slice(&buf[..n]);
        let (block, rest) = split_lines(stream, &partial, MAX_LINE);
        partial.drain(..rest);
        if !block.ends.is_empty() && tx.send(block).is_err() {
            return;
        }
    }
    if !partial.is_empty() {
        let ends = vec![partial.len() as u32];
        let _ = tx.send(Block {
            stream,
            data: partial,
            ends,
        });
    }
}

/// The blocks of output between the threads that read it and the one that
/// writes the log: at most about 128 KiB, so that what is left to write
/// when the container ends (before its exit is reported) is small.
const OUTPUT_QUEUE: usize = 8;

/// The whole lines at the start of `pending` (each ends with a newline, or
/// is cut at `max_line` bytes), and how many bytes they take.
fn split_lines(stream: &'static str, pending: &[u8], max_line: usize) -> (Block, usize) {
    let mut ends = Vec::new();
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        let window = &rest[..rest.len().min(max_line)];
        match window.iter().position(|b| *b == b'\n') {
            Some(i) => start += i + 1,
            None if rest.len() >= max_line => start += max_line,
            None => break,
        }
        ends.push(start as u32);
    }
    let block = Block {
        stream,
        data: pending[..start].to_vec(),
        ends,
    };
    (block, start)
}

/// Waits for the container's first process; a signal death is 128 + signal,
/// as shells and Docker report it.
pub fn wait_exit(pid: Pid) -> Result<i32, RuntimeError> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys("waitpid")(e)),
        }
    }
}

/// The device policy of config.json (runtime/devices.rs).
pub fn device_policy(spec: &Spec) -> Result<super::devices::Policy, RuntimeError> {
    let rules = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    super::devices::Policy::from_spec(&rules)
}

/// The seccomp program of config.json's filter, if it has one: the one
/// the agent saved in the bundle, or compiled here.
pub fn seccomp_filter(
    spec: &Spec,
    bundle: &Path,
) -> Result<Option<super::seccomp::Program>, RuntimeError> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Ok(Some(super::seccomp::program_for(bundle, s)?)),
        None => Ok(None),
    }
}

/// The cgroup and limits config.json asks for, if it names a cgroup.
pub fn container_cgroup(spec: &Spec) -> Option<(Cgroup, Limits)> {
    let linux = spec.linux().as_ref()?;
    let path = linux.cgroups_path().as_ref()?;
    let res = linux.resources().as_ref();
    let limits = Limits {
        memory_bytes: res
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| l as u64),
        cpu_quota_us: res
            .and_then(|r| r.cpu().as_ref())
            .and_then(|c| c.quota())
            .filter(|q| *q > 0)
            .map(|q| q as u64),
        pids: res
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit())
            .filter(|l| *l > 0),
    };
    let layout = Layout::detect(Path::new(CGROUP_ROOT));
    Some((Cgroup::new(layout, path), limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pending: &[u8], max: usize) -> (Vec<&[u8]>, usize) {
        let (block, used) = split_lines("stdout", pending, max);
        let mut out = Vec::new();
        let mut start = 0;
        for &end in &block.ends {
            out.push(&pending[start..end as usize]);
            start = end as usize;
        }
        assert_eq!(&block.data[..], &pending[..used]);
        (out, used)
    }

    #[test]
    fn output_splits_into_whole_lines_and_long_lines_are_cut() {
        assert_eq!(lines(b"a\nbc\nd", 8), (vec![&b"a\n"[..], b"bc\n"], 5));
        assert_eq!(lines(b"partial", 8), (vec![], 0));
        // At the limit a line is cut, its newline counted in it.
        assert_eq!(
            lines(b"abcdefghij\n", 4),
            (vec![&b"abcd"[..], b"efgh", b"ij\n"], 11)
        );
        assert_eq!(lines(b"abcdefghij", 4), (vec![&b"abcd"[..], b"efgh"], 8));
        assert_eq!(lines(b"abc\n", 4), (vec![&b"abc\n"[..]], 4));
        assert_eq!(lines(b"", 4), (vec![], 0));
    }
}
