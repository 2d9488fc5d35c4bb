//! The supervisor's access to the host: mounts, shims, processes and the
//! freezer. The real host makes the syscalls; the supervisor's unit tests
//! put a fake in its place (tests.rs), so that its decisions (fencing,
//! restart policies, grace periods, removal) are tested without root.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, BufReader};

use crate::runtime::cgroups::{Cgroup, Layout};
use crate::runtime::process::Process;
use crate::runtime::shim::CGROUP_ROOT;
use crate::snapshot::{self, SnapshotError};

/// A shim the host started for a bundle.
pub struct Shim {
    /// Its frames (runtime/frame.rs), one JSON object a line.
    pub frames: BufReader<Pin<Box<dyn AsyncRead + Send>>>,
    /// Resolves once the shim process has ended.
    pub ended: BoxFuture<'static, ()>,
}

/// What the supervisor does to the host.
pub trait Host: Send + Sync + 'static {
    /// Mounts a bundle's rootfs: its layers (bottom last) under its upper dir.
    fn mount_rootfs(&self, lowers: &[PathBuf], bundle: &Path) -> Result<(), SnapshotError>;
    /// Unmounts a bundle's rootfs, if it is mounted.
    fn unmount_rootfs(&self, bundle: &Path);
    /// Starts the shim that runs the bundle's container.
    fn start_shim(&self, bundle: &Path) -> Result<Shim, String>;
    /// Starts the shim of an exec (`exec` names its config in the bundle).
    fn start_exec_shim(&self, bundle: &Path, exec: &str) -> Result<(), String>;
    /// True while the bundle's first process runs (it has not been reaped).
    fn alive(&self, bundle: &Path) -> bool;
    /// Sends `signal` to the bundle's first process.
    fn kill(&self, bundle: &Path, signal: Signal) -> Result<(), String>;
    /// Freezes or thaws every process of the container `id`.
    fn freeze(&self, id: &str, frozen: bool) -> Result<(), String>;
    /// The executable that runs shims, for work outside the supervisor's
    /// containers (a build's RUN steps); none on a fake host.
    fn shim_exe(&self) -> Option<PathBuf> {
        None
    }
}

/// The host this agent runs on.
pub struct RealHost {
    /// The executable whose `shim` and `exec-shim` subcommands run containers.
    shim_exe: PathBuf,
    /// A shim started ahead, loaded and waiting for the bundle it will
    /// run: a container's start does not wait for the exec of the shim's
    /// executable (about 1 ms of a `berth run` on the development VM).
    /// Each start takes it and leaves the next one starting.
    warm: Arc<std::sync::Mutex<Option<tokio::process::Child>>>,
}

impl RealHost {
    pub fn new(shim_exe: PathBuf) -> Self {
        Self {
            shim_exe,
            warm: Arc::default(),
        }
    }

    /// The waiting shim, if one is there and alive.
    fn take_warm(&self) -> Option<tokio::process::Child> {
        let mut taken = self.warm.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        // One that has ended (killed by hand) cannot take a bundle.
        matches!(taken.try_wait(), Ok(None)).then_some(taken)
    }

    /// Starts the shim that waits for the next container, unless one is
    /// waiting, on a thread of its own: the spawn (a vfork and an exec)
    /// holds up neither this container's relay nor the runtime. It loads
    /// under SCHED_IDLE ([`crate::runtime::shim::warm_command`]), in CPU
    /// time nothing else wants (the container starting now first of all).
    fn refill(&self) {
        if self
            .warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let (warm, exe) = (self.warm.clone(), self.shim_exe.clone());
        tokio::task::spawn_blocking(move || {
            let child = match crate::runtime::shim::warm_command(&exe)
                .and_then(|c| tokio::process::Command::from(c).spawn())
            {
                Ok(c) => c,
                Err(e) => return tracing::debug!("cannot start a waiting shim: {e}"),
            };
            let mut slot = warm.lock().unwrap_or_else(|p| p.into_inner());
            // Another refill got there first: this one ends with its
            // input.
            if slot.is_none() {
                *slot = Some(child);
            }
        });
    }
}

impl Host for RealHost {
    fn mount_rootfs(&self, lowers: &[PathBuf], bundle: &Path) -> Result<(), SnapshotError> {
        use crate::runtime::bundle;
        snapshot::mount_overlay(
            lowers,
            &bundle::upper(bundle),
            &bundle::work(bundle),
            &bundle::rootfs(bundle),
        )
    }

    fn unmount_rootfs(&self, bundle: &Path) {
        let _ = snapshot::unmount(&crate::runtime::bundle::rootfs(bundle));
    }

    fn start_shim(&self, bundle: &Path) -> Result<Shim, String> {
        let warm = self.take_warm().and_then(|mut child| {
            // The bundle's path, one line, and the end of its input: it
            // runs that bundle as a shim started for it would. A line fits
            // an empty pipe, so the write does not block.
            let stdin = child.stdin.take()?.into_owned_fd().ok()?;
            let line = format!("{}\n", bundle.display());
            std::fs::File::from(stdin)
                .write_all(line.as_bytes())
                .is_ok()
                .then_some(child)
        });
        let mut child = match warm {
            Some(child) => child,
            None => {
                let command = crate::runtime::shim::command(&self.shim_exe, bundle)
                    .map_err(|e| e.to_string())?;
                tokio::process::Command::from(command)
                    .spawn()
                    .map_err(|e| {
                        format!("cannot start the shim {}: {e}", self.shim_exe.display())
                    })?
            }
        };
        // The next container's shim loads while this one runs.
        self.refill();
        let stdout = child.stdout.take().ok_or("the shim has no stdout")?;
        Ok(Shim {
            frames: BufReader::new(Box::pin(stdout)),
            ended: Box::pin(async move {
                let _ = child.wait().await;
            }),
        })
    }

    fn start_exec_shim(&self, bundle: &Path, exec: &str) -> Result<(), String> {
        tokio::process::Command::new(&self.shim_exe)
            .arg("exec-shim")
            .arg("--bundle")
            .arg(bundle)
            .arg("--exec")
            .arg(exec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map(drop)
            .map_err(|e| format!("cannot start the exec shim: {e}"))
    }

    fn shim_exe(&self) -> Option<PathBuf> {
        Some(self.shim_exe.clone())
    }

    fn alive(&self, bundle: &Path) -> bool {
        Process::open(bundle).is_some()
    }

    fn kill(&self, bundle: &Path, signal: Signal) -> Result<(), String> {
        // Through the pidfd the shim holds: the container's init and no
        // other process, even if it has just been reaped. From outside its
        // pid namespace the signal arrives if init handles it (SIGKILL
        // always does).
        Process::open(bundle)
            .ok_or_else(|| format!("{signal}: the container does not run"))?
            .signal(signal)
            .map_err(|e| format!("{signal}: {e}"))
    }

    fn freeze(&self, id: &str, frozen: bool) -> Result<(), String> {
        Cgroup::new(
            Layout::detect(Path::new(CGROUP_ROOT)),
            &super::cgroup_of(id),
        )
        .freeze(frozen)
        .map_err(|e| e.to_string())
    }
}
