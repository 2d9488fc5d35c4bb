//! berth-proto: the protobuf messages and gRPC services of berth.
//!
//! - [`records`]: the persisted model (rocksdb rows and Raft log entries).
//! - [`cluster`]: the API the `berth` CLI speaks to any server.
//! - [`agent`]: the session between an agent and the leader.
//! - [`raft`]: server-to-server Raft traffic.
//!
//! The wire types of `cluster` and `agent` stay at the edges of the server
//! and the agent: their api/ and session code convert them (DESIGN.md,
//! invariant 10).

/// The persisted model: every record kind carries a schema version.
#[allow(clippy::large_enum_variant)]
pub mod records {
    tonic::include_proto!("berth.records");

    /// The schema version written into every record this build persists.
    pub const SCHEMA_VERSION: u32 = 1;
}

/// The CLI-facing cluster API.
#[allow(clippy::large_enum_variant)]
pub mod cluster {
    tonic::include_proto!("berth.cluster");
}

/// The agent session protocol.
#[allow(clippy::large_enum_variant)]
pub mod agent {
    tonic::include_proto!("berth.agent");
}

/// The message limits every gRPC server and client of berth sets, the same
/// on both ends of every connection (tonic's default is 4 MiB to receive).
/// Nothing berth sends comes near them: uploads and downloads move in 1 MiB
/// pieces, log batches in 256 KiB, snapshots in chunks, and the server's
/// batcher bounds a Raft entry (see `MAX_ENTRY`).
pub mod limits {
    /// The largest gRPC message sent or received.
    pub const MAX_MESSAGE: usize = 64 << 20;
    /// The largest Raft entry the batcher builds (commands beyond it go in
    /// the next entry); a single command larger than this is refused.
    /// An AppendEntries carries up to 64 entries (raft/mod.rs), so that
    /// one of them stays under [`MAX_MESSAGE`].
    pub const MAX_ENTRY: usize = 512 << 10;
}

pub mod credential;
pub mod dockerignore;
pub mod security;
pub mod transport;

/// Server-to-server Raft transport.
pub mod raft {
    tonic::include_proto!("berth.raft");
}

/// An error and its causes on one line, each cause once, for the one-line
/// messages the binaries end with: our error types already quote their
/// sources, and a plain walk of the chain would repeat them.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

/// The port a berth-server listens on when none is given.
pub const DEFAULT_PORT: u16 = 7420;

/// `--ulimit NAME=SOFT[:HARD]`, as Docker spells it: parsed by the server
/// (to refuse a bad one at once) and by the agent (to write config.json).
pub mod ulimit {
    /// The names Docker takes, without the `RLIMIT_` prefix.
    pub const NAMES: &[&str] = &[
        "as",
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ];

    /// No limit (RLIM_INFINITY), spelt `unlimited` or `-1`.
    pub const UNLIMITED: u64 = u64::MAX;

    /// One parsed limit.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Ulimit {
        /// Lower case, without the prefix: `nofile`.
        pub name: String,
        pub soft: u64,
        pub hard: u64,
    }

    /// Parses `nofile=1024:2048` (a soft and a hard limit) or `nproc=64`
    /// (both the same); the error names what was wrong.
    pub fn parse(s: &str) -> Result<Ulimit, String> {
        let bad = |why: &str| Err(format!("invalid ulimit {s:?}: {why}"));
        let Some((name, values)) = s.split_once('=') else {
            return bad("use NAME=SOFT[:HARD], for example nofile=1024:2048");
        };
        if !NAMES.contains(&name) {
            return bad(&format!(
                "unknown name {name:?} (known: {})",
                NAMES.join(", ")
            ));
        }
        let number = |v: &str| -> Option<u64> {
            match v {
                "unlimited" | "-1" => Some(UNLIMITED),
                _ => v.parse().ok(),
            }
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (number(soft), number(hard)),
            None => (number(values), number(values)),
        };
        let (Some(soft), Some(hard)) = (soft, hard) else {
            return bad("limits are numbers, or unlimited");
        };
        if soft > hard {
            return bad(&format!("soft limit {soft} is above the hard limit {hard}"));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn limits_parse_as_docker_spells_them() {
            assert_eq!(
                parse("nofile=1024:2048").unwrap(),
                Ulimit {
                    name: "nofile".into(),
                    soft: 1024,
                    hard: 2048
                }
            );
            assert_eq!(parse("nproc=64").unwrap().hard, 64);
            assert_eq!(parse("core=unlimited").unwrap().soft, UNLIMITED);
            assert_eq!(parse("core=0:-1").unwrap().hard, UNLIMITED);
            assert!(parse("nofile=2048:1024").unwrap_err().contains("above"));
            assert!(parse("files=10").unwrap_err().contains("unknown name"));
            assert!(parse("nofile").unwrap_err().contains("NAME=SOFT"));
            assert!(parse("nofile=x").unwrap_err().contains("numbers"));
        }
    }
}
