//! The container runtime, written with nix: the runtime-spec `config.json`
//! of every container ([`spec`]), the per-container shim that owns the
//! process, its stdio and its exit status ([`shim`]), and what runs inside
//! the new namespaces before the user's command ([`init`]), and its
//! terminal, made in its own devpts ([`console`]).
//!
//! The shim speaks to the agent in [`frame::Frame`]s, one JSON object a
//! line on its stdout, and keeps the same log lines in the bundle's log
//! file so that nothing depends on the agent staying up.

pub mod attach;
pub mod caps;
pub mod cgroups;
pub mod console;
pub mod devices;
pub mod exec;
pub mod frame;
pub mod init;
pub mod inroot;
pub mod lease;
pub mod process;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod users;
pub mod yielding;

/// Errors of preparing or running a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("config.json: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("{op}: {source}")]
    Sys { op: String, source: nix::Error },
}

/// The files a container's bundle directory holds.
pub mod bundle {
    use std::path::{Path, PathBuf};

    /// Writes a bundle file readable by root only (0600). Not synced: a
    /// bundle is remade from the cluster's record after a crash, and a
    /// sync of each file would slow every container's start.
    pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?
            .write_all(contents)
    }

    pub fn config(b: &Path) -> PathBuf {
        b.join("config.json")
    }
    pub fn rootfs(b: &Path) -> PathBuf {
        b.join("rootfs")
    }
    pub fn upper(b: &Path) -> PathBuf {
        b.join("upper")
    }
    pub fn work(b: &Path) -> PathBuf {
        b.join("work")
    }
    /// The log of the container: one [`super::frame::Frame::Log`] a line.
    pub fn log(b: &Path) -> PathBuf {
        b.join("log.jsonl")
    }
    /// The `n`-th rotated log file (1 is the newest of them).
    pub fn rotated_log(b: &Path, n: u32) -> PathBuf {
        b.join(format!("log.jsonl.{n}"))
    }
    /// The first sequence number the cluster lacks, as it last answered.
    pub fn log_acked(b: &Path) -> PathBuf {
        b.join("log-acked")
    }
    /// The rotation of the log file: `MAX_SIZE MAX_FILE` (bytes, count).
    pub fn log_rotation(b: &Path) -> PathBuf {
        b.join("log-rotation")
    }
    /// The host pid of the container's first process, once started.
    pub fn pid(b: &Path) -> PathBuf {
        b.join("pid")
    }
    /// The exit code, written by the shim when the container ends.
    pub fn exit(b: &Path) -> PathBuf {
        b.join("exit")
    }
    /// What the agent knows of the container (id, generation, image).
    pub fn meta(b: &Path) -> PathBuf {
        b.join("meta.json")
    }
    /// The sequence number of the container's first log line, when its
    /// log continues one the cluster already holds (a task placed again).
    pub fn log_start(b: &Path) -> PathBuf {
        b.join("log-start")
    }
}
