//! `berth exec`: a process started in a running container's namespaces and
//! cgroup by a shim of its own (`berth-agent exec-shim`), which owns its
//! stdio (a pty or pipes), serves one attachment socket like the
//! container's shim, and writes the exit code next to it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::unistd::{pipe2, ForkResult};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::{attach, bundle, users, RuntimeError};

/// What to run, as the agent writes it for the exec shim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub workdir: String,
    pub tty: bool,
    pub interactive: bool,
}

/// The files of one exec in a bundle.
pub fn config_path(b: &Path, id: &str) -> PathBuf {
    b.join(format!("exec-{id}.json"))
}
pub fn socket_name(id: &str) -> String {
    format!("exec-{id}.sock")
}
pub fn exit_path(b: &Path, id: &str) -> PathBuf {
    b.join(format!("exec-{id}.exit"))
}

fn sys(op: &str) -> impl FnOnce(nix::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Sys {
        op: op.to_string(),
        source,
    }
}

/// Runs one exec to its end; returns the process's exit code (126 or 127
/// when it could not run, as Docker).
pub fn main(b: &Path, id: &str) -> i32 {
    // The bundle, held open: after setns into the container's mount
    // namespace its host path means nothing, but this handle still does.
    let dir = match File::open(b) {
        Ok(d) => d,
        Err(_) => return 126,
    };
    let code = match run(b, id) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exec: {e}");
            126
        }
    };
    let at = |name: String| -> Option<OwnedFd> {
        nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name.as_str(),
            OFlag::O_CREAT
                | OFlag::O_WRONLY
                | OFlag::O_TRUNC
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .ok()
        // SAFETY: openat returned a new descriptor that nothing else owns.
        .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    if let Some(fd) = at(format!("exec-{id}.exit")) {
        let _ = nix::unistd::write(&fd, code.to_string().as_bytes());
    }
    for name in [socket_name(id), format!("exec-{id}.json")] {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    code
}

fn run(b: &Path, id: &str) -> Result<i32, RuntimeError> {
    let cfg: ExecConfig =
        serde_json::from_slice(&fs::read(config_path(b, id)).map_err(|source| {
            RuntimeError::Io {
                path: config_path(b, id),
                source,
            }
        })?)
        .map_err(|e| RuntimeError::Invalid(format!("exec config: {e}")))?;
    if cfg.cmd.is_empty() {
        return Err(RuntimeError::Invalid("no command given to exec".into()));
    }
    let spec = Spec::load(bundle::config(b))?;
    // The container's init, through the pidfd its shim holds: its pid is
    // read off the pidfd, and the namespaces opened below are checked to
    // be its own once they are open.
    let not_running = || RuntimeError::Invalid("the container is not running".into());
    let init = super::process::Process::open(b).ok_or_else(not_running)?;
    let pid = init.pid().ok_or_else(not_running)?;
    // Without -u, the process runs as the container's own user, as
    // Docker's exec does.
    let (uid, gid) = match (cfg.user.is_empty(), spec.process().as_ref()) {
        (true, Some(p)) => (p.user().uid(), p.user().gid()),
        _ => users::resolve(&bundle::rootfs(b), &cfg.user)?,
    };

    // Stdio: a pty made in the container's devpts by the process itself
    // (its master comes back over a socket pair), or one pipe for output
    // and one for input.
    let mut console: Option<(OwnedFd, OwnedFd)> = None;
    let (child_in, child_out, mut input, mut output): (
        Option<OwnedFd>,
        Option<OwnedFd>,
        Option<Arc<attach::Input>>,
        Option<OwnedFd>,
    ) = if cfg.tty {
        console = Some(super::console::channel()?);
        (None, None, None, None)
    } else {
        let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        let stdin = if cfg.interactive {
            Some(File::from(in_w))
        } else {
            None
        };
        (
            Some(in_r),
            Some(out_w),
            Some(Arc::new(attach::Input {
                stdin: Mutex::new(stdin),
                pty: None,
            })),
            Some(out_r),
        )
    };
    let (_dir, short) = attach::short_socket_path(b).map_err(|source| RuntimeError::Io {
        path: b.into(),
        source,
    })?;
    let sock = short.with_file_name(socket_name(id));
    let _ = fs::remove_file(b.join(socket_name(id)));
    let listener =
        std::os::unix::net::UnixListener::bind(&sock).map_err(|source| RuntimeError::Io {
            path: b.join(socket_name(id)),
            source,
        })?;
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;

    let cgroup = super::shim::container_cgroup(&spec).map(|(cg, _)| cg);
    // The container's namespaces, opened now and joined by the forked
    // child: a process that has joined a pid namespace can start no thread,
    // and this shim needs threads to serve its attachment.
    let mut namespaces = Vec::new();
    for (ns, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let f = File::open(format!("/proc/{pid}/ns/{ns}")).map_err(|source| RuntimeError::Io {
            path: format!("/proc/{pid}/ns/{ns}").into(),
            source,
        })?;
        namespaces.push((f, flag));
    }
    // Still there after the opens: the pid named it throughout (a pid is
    // not given again before its process is reaped), so the namespaces
    // are the container's.
    if !init.alive() {
        return Err(not_running());
    }
    let env: Vec<String> = spec
        .process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default()
        .into_iter()
        .chain(cfg.env.iter().cloned())
        .collect();
    let cwd = if cfg.workdir.is_empty() {
        spec.process()
            .as_ref()
            .map(|p| p.cwd().clone())
            .unwrap_or_else(|| "/".into())
    } else {
        PathBuf::from(&cfg.workdir)
    };
    let keep: Vec<u32> = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default()
        .iter()
        .filter_map(super::spec::capability_number)
        .collect();
    let confine = Confinement {
        keep,
        seccomp: super::shim::seccomp_filter(&spec, b)?,
        no_new_privileges: spec
            .process()
            .as_ref()
            .and_then(|p| p.no_new_privileges())
            .unwrap_or(false),
    };

    // SAFETY: this process is single-threaded (no thread has been started),
    // so the child may run ordinary code until it execs.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            // The child must not hold the write end of its own go pipe, nor
            // the shim's end of the console pair.
            drop(go_w);
            let console_child = console.map(|(ours, theirs)| {
                drop(ours);
                theirs
            });
            // Into the container's cgroup while /sys/fs/cgroup is still the
            // host's (the shim itself stays out of it); the process forked
            // below inherits it, and its limits.
            if let Some(cg) = &cgroup {
                if cg.join_self().is_err() {
                    std::process::exit(126);
                }
            }
            for (f, flag) in &namespaces {
                // setns(2): this (single-threaded) child joins the
                // container's namespace; its own child lands in the pid one.
                if nix::sched::setns(f, *flag).is_err() {
                    std::process::exit(126);
                }
            }
            // SAFETY: still single-threaded; the grandchild execs.
            match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    let stdio = Stdio {
                        stdin: child_in.as_ref(),
                        stdout: child_out.as_ref(),
                        console: console_child.as_ref(),
                        go: &go_r,
                    };
                    let code = child(&cfg, &stdio, &cwd, &env, &confine, uid, gid);
                    std::process::exit(code);
                }
                Ok(ForkResult::Parent { child: grandchild }) => {
                    drop((child_in, child_out, console_child, go_r));
                    let code = super::shim::wait_exit(grandchild).unwrap_or(126);
                    std::process::exit(code);
                }
                Err(_) => std::process::exit(126),
            }
        }
        ForkResult::Parent { child: pid } => {
            drop((child_in, child_out, go_r));
            if let Some((ours, theirs)) = console {
                drop(theirs);
                // The terminal's master, from the process; without it (its
                // setup failed) the exit code below says so.
                if let Ok(Some(master)) = super::console::receive(&ours) {
                    input = Some(attach::Input::from_pty(&master).map_err(|source| {
                        RuntimeError::Io {
                            path: "pty".into(),
                            source,
                        }
                    })?);
                    output = Some(master);
                }
            }
            let input = input.unwrap_or_else(|| {
                Arc::new(attach::Input {
                    stdin: Mutex::new(None),
                    pty: None,
                })
            });
            let clients = attach::Clients::default();
            attach::accept_first(&listener, &clients, &input, Duration::from_secs(15));
            let _ = nix::unistd::write(&go_w, &[1]);
            drop(go_w);
            {
                let clients = clients.clone();
                let input = input.clone();
                std::thread::spawn(move || attach::accept_loop(listener, clients, input));
            }
            if let Some(output) = output {
                let mut out = File::from(output);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match out.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => clients.broadcast(&buf[..n]),
                    }
                }
            }
            super::shim::wait_exit(pid)
        }
    }
}

/// The container's capabilities, seccomp filter and no_new_privs, which every exec'd
/// process takes too.
struct Confinement {
    /// The capability numbers its bounding set keeps.
    keep: Vec<u32>,
    seccomp: Option<super::seccomp::Program>,
    no_new_privileges: bool,
}

/// Where the exec'd process's stdio come from.
struct Stdio<'a> {
    /// The pipes of a process without a terminal.
    stdin: Option<&'a OwnedFd>,
    stdout: Option<&'a OwnedFd>,
    /// With a terminal: the socket the pty master goes back over.
    console: Option<&'a OwnedFd>,
    /// One byte here once the exec shim is ready for output.
    go: &'a OwnedFd,
}

fn child(
    cfg: &ExecConfig,
    stdio: &Stdio,
    cwd: &Path,
    env: &[String],
    confine: &Confinement,
    uid: u32,
    gid: u32,
) -> i32 {
    let _ = nix::unistd::setsid();
    let mut pty_slave = None;
    let (stdin, stdout) = match (stdio.console, stdio.stdin, stdio.stdout) {
        (Some(sock), _, _) => {
            // This process is in the container's mount namespace already:
            // the pty comes from the container's own devpts.
            let Ok((master, slave)) = super::console::open(uid, gid) else {
                return 126;
            };
            if super::console::send(sock.as_raw_fd(), &master).is_err() {
                return 126;
            }
            drop(master);
            let fd = slave.as_raw_fd();
            pty_slave = Some(slave);
            (fd, fd)
        }
        (None, Some(i), Some(o)) => (i.as_raw_fd(), o.as_raw_fd()),
        _ => return 126,
    };
    for (fd, target) in [(stdin, 0), (stdout, 1), (stdout, 2)] {
        // dup2(2): the process's stdio are the pty slave or the pipes.
        if nix::unistd::dup2(fd, target).is_err() {
            return 126;
        }
    }
    drop(pty_slave);
    if cfg.tty {
        // SAFETY: TIOCSCTTY on stdin (the pty slave) for the new session.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }
    // Wait until the exec shim serves the attachment, so that no output
    // is lost.
    let mut byte = [0u8; 1];
    if nix::unistd::read(stdio.go.as_raw_fd(), &mut byte) != Ok(1) {
        return 126;
    }
    if nix::unistd::chdir(cwd).is_err() {
        eprintln!("exec: cannot chdir to {}", cwd.display());
        return 126;
    }
    for n in super::caps::all_numbers().filter(|n| !confine.keep.contains(n)) {
        // SAFETY: prctl(PR_CAPBSET_DROP) takes plain integers.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) };
    }
    // The container's own confinement, as its init took it: no_new_privs
    // if it asked, then its seccomp filter while still root.
    if confine.no_new_privileges && super::seccomp::set_no_new_privileges().is_err() {
        return 126;
    }
    if let Some(filter) = &confine.seccomp {
        if let Err(e) = filter.load() {
            eprintln!("exec: {e}");
            return 126;
        }
    }
    let g = nix::unistd::Gid::from_raw(gid);
    if nix::unistd::setgroups(&[g]).is_err()
        || nix::unistd::setgid(g).is_err()
        || nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).is_err()
    {
        return 126;
    }
    // SAFETY: resetting SIGPIPE to its default installs no handler code.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    for kv in env {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                std::env::set_var(k, v);
            }
        }
    }
    let Ok(args) = cfg
        .cmd
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return 126;
    };
    // umask(2): an exec'd process gets the container's default mask, as
    // the container's own process does (runtime/init.rs).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    eprintln!(
        "exec: \"{}\": {}",
        cfg.cmd[0],
        if err == nix::Error::ENOENT {
            "executable file not found in $PATH".to_string()
        } else {
            err.to_string()
        }
    );
    if err == nix::Error::ENOENT {
        127
    } else {
        126
    }
}
