//! A container's first process, reached through a pidfd: the shim opens
//! one for its child before anything else may signal it, and hands a copy
//! to whoever asks on the bundle's control socket (root only). A pidfd
//! names that one process for as long as it is held: once the child has
//! been reaped, a signal through it fails with ESRCH rather than reaching
//! whatever process has the pid next. The agent's kill, stop, remove and
//! liveness checks and the exec shim's entry into the namespaces all go
//! through it, never through a pid read back from a file.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::bundle;

/// The control socket's name in a bundle.
pub const CONTROL_SOCKET: &str = "ctl.sock";

/// How long an asker waits for the shim's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The path of a bundle's control socket.
pub fn control_path(bundle: &Path) -> PathBuf {
    bundle.join(CONTROL_SOCKET)
}

/// Opens a pidfd for a process (pidfd_open(2)). For the shim's own,
/// unreaped child the pid is still that child's; for any other pid the
/// caller must check who it got before trusting it.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, nix::Error> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file
    // descriptor or -1; it reads no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the descriptor was just returned by the kernel and is owned
    // by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends a signal through a pidfd (0 only checks that the process is
/// still there, as kill(2) with 0 does).
pub fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> Result<(), nix::Error> {
    // SAFETY: pidfd_send_signal(2) with a pidfd we hold and no siginfo: the
    // signal reaches the process the pidfd names and no other.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Serves copies of `pidfd` on the bundle's control socket, from a thread
/// of the shim, until the shim exits. Only a root peer gets one.
pub fn serve(b: &Path, pidfd: OwnedFd) -> std::io::Result<()> {
    let path = control_path(b);
    let _ = std::fs::remove_file(&path);
    let (_dir, short) = short_path(b)?;
    let listener = UnixListener::bind(short)?;
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            if super::attach::peer_is_root(&c) {
                let _ = super::console::send(c.as_raw_fd(), &pidfd);
            }
        }
    });
    Ok(())
}

/// Stops answering (the child has been reaped): later askers find no
/// socket, and any pidfd handed out already fails with ESRCH.
pub fn unserve(b: &Path) {
    let _ = std::fs::remove_file(control_path(b));
}

/// A handle on a bundle's first process while it runs.
pub struct Process {
    pidfd: OwnedFd,
}

impl Process {
    /// The running first process of a bundle: from its shim, or, for a
    /// shim of an earlier build that has no control socket (or one that
    /// does not answer), from the pid file, pinned by a pidfd and then
    /// checked to be in the container's cgroup (so a pid used again by
    /// another process is never taken for the container's). None once it
    /// has exited.
    pub fn open(b: &Path) -> Option<Self> {
        if bundle::exit(b).exists() {
            return None;
        }
        // A shim that does not answer (killed, or stopped) leaves the pid
        // file, checked the same way.
        let pidfd = ask_shim(b).or_else(|| from_pid_file(b))?;
        let p = Self { pidfd };
        p.alive().then_some(p)
    }

    /// True while the process has not been reaped.
    pub fn alive(&self) -> bool {
        pidfd_signal(&self.pidfd, 0).is_ok()
    }

    /// Sends it a signal.
    pub fn signal(&self, signal: Signal) -> Result<(), nix::Error> {
        pidfd_signal(&self.pidfd, signal as i32)
    }

    /// Its pid in this process's pid namespace, as the kernel reports it
    /// for the pidfd (fdinfo's `Pid:`); None once it is gone.
    pub fn pid(&self) -> Option<i32> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.pidfd.as_raw_fd()))
            .ok()?;
        let pid: i32 = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))?
            .trim()
            .parse()
            .ok()?;
        (pid > 0).then_some(pid)
    }
}

/// A path to the bundle's control socket short enough for a socket
/// address, through an open handle of the bundle (kept while it is used).
fn short_path(b: &Path) -> std::io::Result<(File, PathBuf)> {
    let dir = File::open(b)?;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}/{CONTROL_SOCKET}",
        dir.as_raw_fd()
    ));
    Ok((dir, path))
}

fn ask_shim(b: &Path) -> Option<OwnedFd> {
    if !control_path(b).exists() {
        return None;
    }
    let (_dir, short) = short_path(b).ok()?;
    let c = UnixStream::connect(short).ok()?;
    c.set_read_timeout(Some(ANSWER_WAIT)).ok()?;
    super::console::receive(&OwnedFd::from(c)).ok().flatten()
}

fn from_pid_file(b: &Path) -> Option<OwnedFd> {
    let pid: i32 = std::fs::read_to_string(bundle::pid(b))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let spec = oci_spec::runtime::Spec::load(bundle::config(b)).ok()?;
    let cgroup = spec.linux().as_ref()?.cgroups_path().clone()?;
    let pidfd = pidfd_open(pid).ok()?;
    // The pid is pinned now: if the process it names is in the container's
    // cgroup, the pidfd is the container's.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let want = cgroup.display().to_string();
    cgroups
        .lines()
        .any(|l| l.rsplit(':').next() == Some(want.as_str()))
        .then_some(pidfd)
}
