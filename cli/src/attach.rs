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

/// Finds Ctrl+P Ctrl+Q in input, across reads; returns the bytes before it
/// if it is there.
pub struct DetachKeys {
    pending_ctrl_p: bool,
}

impl DetachKeys {
    pub fn new() -> Self {
        Self {
            pending_ctrl_p: false,
        }
    }

    /// Splits a chunk of input into what to send and whether to detach. A
    /// Ctrl+P is held back until the next byte shows it is not a detach.
    pub fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len() + 1);
        for &b in input {
            if self.pending_ctrl_p {
                self.pending_ctrl_p = false;
                if b == 0x11 {
                    return (out, true);
                }
                out.push(0x10);
            }
            if b == 0x10 {
                self.pending_ctrl_p = true;
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

/// Attaches to a container (starting it first if asked) until it ends or
/// the user detaches.
pub async fn attach(
    client: &mut ClusterClient<Channel>,
    container: &str,
    start: bool,
    tty: bool,
) -> Result<AttachEnd, CliError> {
    let size = if tty { window_size() } else { None };
    let first = AttachInput {
        msg: Some(Msg::Start(AttachStart {
            name_or_id: container.to_string(),
            start,
            size,
        })),
    };
    session(client, first, tty, false).await
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
    session(client, first, tty, true).await
}

async fn session(
    client: &mut ClusterClient<Channel>,
    first: AttachInput,
    tty: bool,
    exec: bool,
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
    std::thread::spawn(move || {
        let mut keys = DetachKeys::new();
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
}
