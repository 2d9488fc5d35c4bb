//! What a shim tells its agent: one JSON object a line.

use std::borrow::Cow;

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
        let (line, b64) = text_or_b64(bytes);
        Frame::Log {
            seq,
            stream: stream.to_string(),
            time_ns,
            line: line.to_string(),
            b64,
        }
    }

    /// The bytes of a log line, whichever way the frame carries them.
    #[cfg(test)]
    pub fn line_bytes(line: String, b64: Option<String>) -> Vec<u8> {
        match b64 {
            Some(b) => decode_b64(&b),
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

/// One log line as the log file holds it, borrowed from the file's bytes
/// where it can be: what a reader of the log needs, decoded without the
/// detour through [`Frame`] (whose tag is read into a buffer first).
#[derive(Debug, Deserialize)]
pub struct LogRecord<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    pub seq: u64,
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    pub time_ns: i64,
    #[serde(borrow, default)]
    line: Cow<'a, str>,
    #[serde(borrow, default)]
    b64: Option<Cow<'a, str>>,
}

impl<'a> LogRecord<'a> {
    /// Decodes one line of the log file; `None` for a line that is not a
    /// log frame (or not whole).
    pub fn parse(text: &'a [u8]) -> Option<Self> {
        if let Some(r) = Self::parse_plain(text) {
            return Some(r);
        }
        let r: Self = serde_json::from_slice(text).ok()?;
        (r.t == "log").then_some(r)
    }

    /// The common case read without a JSON parser: a line exactly as
    /// [`encode_log`] writes it, whose text has nothing escaped. Anything
    /// else (an escape, base64, another order of fields) is `None`, and
    /// left to serde_json.
    fn parse_plain(text: &'a [u8]) -> Option<Self> {
        let rest = text.strip_prefix(br#"{"t":"log","seq":"#)?;
        let (seq, rest) = digits(rest)?;
        let rest = rest.strip_prefix(br#","stream":""#)?;
        let end = rest.iter().position(|b| *b == b'"' || *b == b'\\')?;
        let stream = std::str::from_utf8(&rest[..end]).ok()?;
        let rest = rest[end..].strip_prefix(br#"","time_ns":"#)?;
        let (negative, rest) = match rest.strip_prefix(b"-") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (time, rest) = digits(rest)?;
        let time_ns = i64::try_from(time).ok()?;
        let rest = rest.strip_prefix(br#","line":""#)?;
        let body = rest
            .strip_suffix(b"\"}\n")
            .or_else(|| rest.strip_suffix(b"\"}"))?;
        // Output lines end with a newline, which JSON writes as `\n`.
        let (body, newline) = match body.strip_suffix(b"\\n") {
            Some(b) => (b, true),
            None => (body, false),
        };
        // JSON escapes every quote, backslash and control character, so a
        // body with none of them is the text as written.
        if body.iter().any(|b| *b == b'"' || *b == b'\\' || *b < 0x20) {
            return None;
        }
        let text = std::str::from_utf8(body).ok()?;
        let line = if newline {
            let mut owned = String::with_capacity(text.len() + 1);
            owned.push_str(text);
            owned.push('\n');
            Cow::Owned(owned)
        } else {
            Cow::Borrowed(text)
        };
        Some(Self {
            t: Cow::Borrowed("log"),
            seq,
            stream: Cow::Borrowed(stream),
            time_ns: if negative { -time_ns } else { time_ns },
            line,
            b64: None,
        })
    }

    /// The output bytes of the line, as the container wrote them.
    #[cfg(test)]
    pub fn bytes(&self) -> Vec<u8> {
        match &self.b64 {
            Some(b) => decode_b64(b),
            None => self.line.as_bytes().to_vec(),
        }
    }

    /// The output bytes of the line, taken out of the record.
    pub fn into_bytes(self) -> Vec<u8> {
        match self.b64 {
            Some(b) => decode_b64(&b),
            None => self.line.into_owned().into_bytes(),
        }
    }
}

/// A line as JSON carries it: its text when it is UTF-8, else base64.
fn text_or_b64(bytes: &[u8]) -> (&str, Option<String>) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(s) => (s, None),
        Err(_) => (
            "",
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn decode_b64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .unwrap_or_default()
}

/// A decimal number at the start of `text`, and what follows it.
fn digits(text: &[u8]) -> Option<(u64, &[u8])> {
    let n = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v = 0u64;
    for b in &text[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((v, &text[n..]))
}

/// Appends one log line, encoded as [`Frame::log`] encodes it (JSON, a
/// newline at the end), to `out`: the shim's path for every line, with no
/// allocation beyond `out`'s own.
pub fn encode_log(out: &mut Vec<u8>, seq: u64, stream: &str, time_ns: i64, bytes: &[u8]) {
    #[derive(Serialize)]
    struct Out<'a> {
        t: &'static str,
        seq: u64,
        stream: &'a str,
        time_ns: i64,
        line: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        b64: Option<String>,
    }
    let (line, b64) = text_or_b64(bytes);
    let rec = Out {
        t: "log",
        seq,
        stream,
        time_ns,
        line,
        b64,
    };
    serde_json::to_writer(&mut *out, &rec).expect("a log line always serializes");
    out.push(b'\n');
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

    #[test]
    fn the_fast_log_codec_reads_and_writes_what_frames_do() {
        for (seq, stream, bytes) in [
            (1, "stdout", &b"hello \"x\" \\ \t\n"[..]),
            (2, "stderr", &b"\xff\xfe not utf-8\n"[..]),
            (3, "stdout", &b""[..]),
            (4, "stdout", &b"plain text, no escapes\n"[..]),
            (5, "stdout", "ünïcode ✓".as_bytes()),
        ] {
            let mut fast = Vec::new();
            encode_log(&mut fast, seq, stream, 9, bytes);
            assert_eq!(
                fast,
                Frame::log(seq, stream, 9, bytes).to_line().into_bytes()
            );
            let r = LogRecord::parse(&fast).unwrap();
            assert_eq!((r.seq, &*r.stream, r.time_ns), (seq, stream, 9));
            assert_eq!(r.bytes(), bytes);
        }
        assert!(LogRecord::parse(Frame::Start { pid: 1 }.to_line().as_bytes()).is_none());
        assert!(LogRecord::parse(b"{\"t\":\"log\",\"seq\":").is_none());
        // The plain path and serde_json agree on what they both read.
        let mut text = Vec::new();
        encode_log(&mut text, 7, "stderr", -3, b"abc");
        let plain = LogRecord::parse_plain(&text).unwrap();
        let mut with_newline = Vec::new();
        encode_log(&mut with_newline, 8, "stdout", 1, b"a line\n");
        let r = LogRecord::parse_plain(&with_newline).expect("a plain line is read plainly");
        assert_eq!(r.into_bytes(), b"a line\n");
        let serde: LogRecord = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            (
                plain.seq,
                plain.stream.clone(),
                plain.time_ns,
                plain.bytes()
            ),
            (
                serde.seq,
                serde.stream.clone(),
                serde.time_ns,
                serde.bytes()
            )
        );
        // Fields in another order, or a number too large, go to serde_json
        // or nowhere, never to a wrong value.
        assert_eq!(
            LogRecord::parse(br#"{"seq":8,"t":"log","stream":"stdout","time_ns":1,"line":"x"}"#)
                .unwrap()
                .seq,
            8
        );
        assert!(LogRecord::parse(
            br#"{"t":"log","seq":99999999999999999999,"stream":"stdout","time_ns":1,"line":"x"}"#
        )
        .is_none());
    }
}
