//! What a shim tells its agent: one JSON object a line.

use serde::{Deserialize, Serialize};

/// One message from a shim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Frame {
    /// The container's process runs (its command was executed).
    Start { pid: i32 },
    /// One line of output. `seq` counts from 1 and has no gaps. A line
    /// that is not UTF-8 is carried in `b64` (base64) instead of `line`, so
    /// that every byte is kept as the container wrote it.
    Log {
        seq: u64,
        stream: String,
        time_ns: i64,
        #[serde(default)]
        line: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        b64: Option<String>,
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
    /// A log frame for `bytes`, as text when they are UTF-8.
    pub fn log(seq: u64, stream: &str, time_ns: i64, bytes: &[u8]) -> Self {
        use base64::Engine as _;
        let (line, b64) = match std::str::from_utf8(bytes) {
            Ok(s) => (s.to_string(), None),
            Err(_) => (
                String::new(),
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        Frame::Log {
            seq,
            stream: stream.to_string(),
            time_ns,
            line,
            b64,
        }
    }

    /// The bytes of a log line, whichever way the frame carries them.
    pub fn line_bytes(line: String, b64: Option<String>) -> Vec<u8> {
        use base64::Engine as _;
        match b64 {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            None => line.into_bytes(),
        }
    }

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
            Frame::log(1, "stdout", 5, b"hello \"x\"\n"),
            Frame::log(2, "stderr", 6, b"\xff\xfe not utf-8\n"),
            Frame::Exit {
                code: 127,
                error: Some("not found".into()),
                oom_killed: true,
            },
        ] {
            let back: Frame = serde_json::from_str(f.to_line().trim_end()).unwrap();
            assert_eq!(back, f);
        }
        let Frame::Log { line, b64, .. } = Frame::log(2, "stderr", 6, b"\xff\xfe\n") else {
            unreachable!()
        };
        assert_eq!(Frame::line_bytes(line, b64), b"\xff\xfe\n");
    }
}
