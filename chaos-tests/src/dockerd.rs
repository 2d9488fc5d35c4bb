//! A private dockerd for the benchmarks that compare against Docker:
//! its own data root, exec root and socket, stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A private dockerd, stopped when dropped.
pub struct Dockerd {
    child: Child,
    sock: String,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts dockerd and waits (up to 60 s) until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir_in("/var/tmp")?;
        let sock = format!("unix://{}/docker.sock", dir.path().display());
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .args([
                "-H",
                &sock,
                "--iptables=false",
                "--ip-forward=false",
                "--bridge=none",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dockerd.log"))?)
            .spawn()
            .context("starting dockerd")?;
        let d = Self {
            child,
            sock,
            _dir: dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if d.docker()
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success()
            {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("dockerd did not answer within 60 s")
    }

    /// A docker CLI command against this dockerd.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.sock]);
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd and unmount.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
