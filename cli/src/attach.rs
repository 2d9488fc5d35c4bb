//! Attaching the user's terminal to a container: raw mode, the window size
//! and its changes, input up and output down one gRPC stream, and the
//! Ctrl+P Ctrl+Q detach sequence that leaves the container running.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use berth_proto::cluster::{
    attach_input::Msg, cluster_client::ClusterClient, AttachInput, AttachStart, Resize,
};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::CliError;

/// How an attachment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachEnd {
    /// The user pressed Ctrl+P Ctrl+Q: the container goes on.
    Detached,
    /// The container's side ended (it exited); an exec says its code.
    Ended(Option<i32>),
}

/// Puts the terminal in raw mode and restores it when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The terminal's size, if stdout is one.
fn window_size() -> Option<Resize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes the winsize we own.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(Resize {
        rows: ws.ws_row as u32,
        cols: ws.ws_col as u32,
    })
}

/// Finds the detach sequence (Ctrl+P Ctrl+Q unless `--detach-keys` says
/// otherwise) in input, across reads; returns the bytes before it if it is
/// there. The bytes of a partial match are held back until the next byte
/// shows whether the sequence goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys {
    seq: Vec<u8>,
    matched: usize,
}

impl DetachKeys {
    /// Docker's default, Ctrl+P Ctrl+Q.
    pub fn new() -> Self {
        Self {
            seq: vec![0x10, 0x11],
            matched: 0,
        }
    }

    /// Reads Docker's `--detach-keys` form: keys separated by commas, each
    /// a single character or `ctrl-X` (X a letter or one of @ [ \\ ] ^ _).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut seq = Vec::new();
        for key in spec.split(',') {
            let k = key.trim();
            let byte = match k.strip_prefix("ctrl-") {
                Some(c) if c.len() == 1 => {
                    let c = c.as_bytes()[0].to_ascii_uppercase();
                    if !(b'@'..=b'_').contains(&c) {
                        return Err(format!(
                            "invalid detach keys ({spec}): ctrl-{} is no key",
                            c as char
                        ));
                    }
                    c & 0x1f
                }
                None if k.len() == 1 => k.as_bytes()[0],
                _ => {
                    return Err(format!(
                        "invalid detach keys ({spec}): {k:?} is not a key; use ctrl-p,ctrl-q"
                    ))
                }
            };
            seq.push(byte);
        }
        if seq.is_empty() {
            return Err(format!("invalid detach keys ({spec})"));
        }
        Ok(Self { seq, matched: 0 })
    }

    /// Splits a chunk of input into what to send and whether to detach.
    pub fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len() + self.seq.len());
        for &b in input {
            if b == self.seq[self.matched] {
                self.matched += 1;
                if self.matched == self.seq.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: what was held back goes, then
            // this byte may begin it again.
            out.extend_from_slice(&self.seq[..self.matched]);
            self.matched = 0;
            if b == self.seq[0] {
                self.matched = 1;
                if self.seq.len() == 1 {
                    self.matched = 0;
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

impl Default for DetachKeys {
    fn default() -> Self {
        Self::new()
    }
}

/// How an attachment takes input.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// The sequence that detaches from a terminal.
    pub detach_keys: DetachKeys,
    /// Send nothing of this client's stdin (`attach --no-stdin`).
    pub no_stdin: bool,
}

/// Attaches to a container (starting it first if asked) until it ends or
/// the user detaches.
pub async fn attach(
    client: &mut ClusterClient<Channel>,
    container: &str,
    start: bool,
    tty: bool,
    opts: &AttachOptions,
) -> Result<AttachEnd, CliError> {
    let size = if tty { window_size() } else { None };
    let first = AttachInput {
        msg: Some(Msg::Start(AttachStart {
            name_or_id: container.to_string(),
            start,
            size,
        })),
    };
    session(client, first, tty, false, opts).await
}

/// Runs a process in a container (berth exec) attached to this terminal.
pub async fn exec(
    client: &mut ClusterClient<Channel>,
    mut start: berth_proto::cluster::ExecStart,
) -> Result<AttachEnd, CliError> {
    let tty = start.tty;
    if tty {
        start.size = window_size();
    }
    let first = AttachInput {
        msg: Some(Msg::Exec(start)),
    };
    session(client, first, tty, true, &AttachOptions::default()).await
}

async fn session(
    client: &mut ClusterClient<Channel>,
    first: AttachInput,
    tty: bool,
    exec: bool,
    opts: &AttachOptions,
) -> Result<AttachEnd, CliError> {
    let (tx, rx) = mpsc::channel::<AttachInput>(64);
    let _ = tx.send(first).await;
    let raw = if tty && std::io::stdin().is_terminal() {
        RawMode::enter()
    } else {
        None
    };
    let (detach_tx, mut detach_rx) = mpsc::channel::<()>(1);
    // Standard input is read on a thread of its own: a blocking read.
    let input = tx.clone();
    let mut keys = opts.detach_keys.clone();
    let no_stdin = opts.no_stdin;
    std::thread::spawn(move || {
        if no_stdin {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = input.blocking_send(AttachInput {
                        msg: Some(Msg::CloseStdin(true)),
                    });
                    return;
                }
                Ok(n) => n,
            };
            let (bytes, detach) = if tty {
                keys.scan(&buf[..n])
            } else {
                (buf[..n].to_vec(), false)
            };
            if !bytes.is_empty()
                && input
                    .blocking_send(AttachInput {
                        msg: Some(Msg::Stdin(bytes)),
                    })
                    .is_err()
            {
                return;
            }
            if detach {
                let _ = detach_tx.blocking_send(());
                return;
            }
        }
    });
    if tty {
        let resize = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = window_size() {
                    if resize
                        .send(AttachInput {
                            msg: Some(Msg::Resize(size)),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
    // The request stream stays open until the output ends or the user
    // detaches: the end of stdin is not the end of the attachment.
    let keep_open = tx;
    let requests = ReceiverStream::new(rx);
    let mut output = if exec {
        client.exec(requests).await
    } else {
        client.attach(requests).await
    }
    .map_err(CliError::run)?
    .into_inner();
    let mut exit_code = None;
    let mut stdout = std::io::stdout();
    let end = loop {
        tokio::select! {
            msg = output.message() => match msg {
                Ok(Some(o)) => {
                    if o.exit_code.is_some() {
                        exit_code = o.exit_code;
                    }
                    if stdout.write_all(&o.data).and_then(|_| stdout.flush()).is_err() {
                        break AttachEnd::Ended(exit_code);
                    }
                }
                Ok(None) => break AttachEnd::Ended(exit_code),
                Err(status) => {
                    drop(raw);
                    return Err(CliError::api(status));
                }
            },
            Some(()) = detach_rx.recv() => break AttachEnd::Detached,
        }
    };
    drop(keep_open);
    drop(raw);
    if end == AttachEnd::Detached && tty {
        // As Docker, a line for the prompt the detach leaves behind.
        println!();
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_p_ctrl_q_detaches_and_a_lone_ctrl_p_passes() {
        let mut k = DetachKeys::new();
        assert_eq!(k.scan(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(k.scan(&[b'a', 0x10, 0x11, b'b']), (vec![b'a'], true));
        let mut k = DetachKeys::new();
        assert_eq!(k.scan(&[0x10]), (vec![], false));
        assert_eq!(k.scan(&[0x11]), (vec![], true));
        let mut k = DetachKeys::new();
        assert_eq!(k.scan(&[0x10, b'x']), (vec![0x10, b'x'], false));
    }

    #[test]
    fn detach_keys_take_dockers_form() {
        let mut k = DetachKeys::parse("ctrl-a,x").unwrap();
        assert_eq!(k.scan(&[b'q', 0x01, b'y']), (vec![b'q', 0x01, b'y'], false));
        assert_eq!(k.scan(&[0x01, 0x01, b'x', b'z']), (vec![0x01], true));
        let mut k = DetachKeys::parse("ctrl-@").unwrap();
        assert_eq!(k.scan(&[b'a', 0]), (vec![b'a'], true));
        assert_eq!(
            DetachKeys::parse("ctrl-p,ctrl-q").unwrap(),
            DetachKeys::new()
        );
        for bad in ["", "ctrl-", "ctrl-1", "esc", "a,,b"] {
            assert!(DetachKeys::parse(bad).is_err(), "{bad}");
        }
    }
}
