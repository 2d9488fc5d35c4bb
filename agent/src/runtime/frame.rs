//! What a shim tells its agent: one JSON object a line.

use serde::{Deserialize, Serialize};

/// One message from a shim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Frame {
    /// The container's process runs (its command was executed).
    Start { pid: i32 },
    /// One line of output. `seq` counts from 1 and has no gaps.
    Log {
        seq: u64,
        stream: String,
        time_ns: i64,
        line: String,
    },
    /// The container ended; `error` says why it never ran, if it did not.
    Exit {
        code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The kernel's OOM killer ended it.
        #[serde(default)]
        oom_killed: bool,
    },
}

impl Frame {
    /// The frame as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("frames always serialize");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for f in [
            Frame::Start { pid: 42 },
            Frame::Log {
                seq: 1,
                stream: "stdout".into(),
                time_ns: 5,
                line: "hello \"x\"\n".into(),
            },
            Frame::Exit {
                code: 127,
                error: Some("not found".into()),
                oom_killed: true,
            },
        ] {
            let back: Frame = serde_json::from_str(f.to_line().trim_end()).unwrap();
            assert_eq!(back, f);
        }
    }
}
