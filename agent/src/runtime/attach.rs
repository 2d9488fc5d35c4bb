//! Attaching to a container: the shim listens on `attach.sock` in the
//! bundle; each client gets the container's output as raw bytes and sends
//! its input as frames: a kind byte, a big-endian u32 length, the payload.
//! Kinds: [`STDIN`] bytes, [`RESIZE`] (rows and cols as big-endian u16),
//! [`CLOSE_STDIN`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Input bytes for the container's stdin.
pub const STDIN: u8 = 0;
/// A new terminal size.
pub const RESIZE: u8 = 1;
/// The end of the container's stdin.
pub const CLOSE_STDIN: u8 = 2;

/// The socket a bundle's shim listens on.
pub fn socket_path(bundle: &Path) -> PathBuf {
    bundle.join("attach.sock")
}

/// A path to a bundle's socket short enough for a socket address (108
/// bytes): through an open handle of the bundle directory in /proc. Keep
/// the handle open while the path is used.
pub fn short_socket_path(bundle: &Path) -> std::io::Result<(File, PathBuf)> {
    let dir = File::open(bundle)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/attach.sock", dir.as_raw_fd()));
    Ok((dir, path))
}

/// Encodes one input frame.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A resize frame.
pub fn resize_frame(rows: u16, cols: u16) -> Vec<u8> {
    let mut p = rows.to_be_bytes().to_vec();
    p.extend_from_slice(&cols.to_be_bytes());
    frame(RESIZE, &p)
}

/// Where a client's input goes.
pub struct Input {
    /// The container's stdin: the pty master, or the write end of a pipe.
    pub stdin: Mutex<Option<File>>,
    /// The pty master, for resizes; `None` without a terminal.
    pub pty: Option<OwnedFd>,
}

impl Input {
    /// The input side of a terminal: its master takes the bytes and the
    /// resizes. The master itself is left for the caller to read output
    /// from.
    pub fn from_pty(master: &OwnedFd) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            stdin: Mutex::new(Some(File::from(master.try_clone()?))),
            pty: Some(master.try_clone()?),
        }))
    }
}

/// The attached clients, to which every piece of output goes.
#[derive(Default, Clone)]
pub struct Clients(Arc<Mutex<Vec<UnixStream>>>);

impl Clients {
    /// Sends output to every client; a client that fails is dropped.
    pub fn broadcast(&self, data: &[u8]) {
        let mut clients = self.0.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain_mut(|c| c.write_all(data).is_ok());
    }

    fn add(&self, c: UnixStream) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
}

/// Waits up to `limit` for the first client (run -it holds the container
/// until its terminal is there) and serves it.
pub fn accept_first(
    listener: &UnixListener,
    clients: &Clients,
    input: &Arc<Input>,
    limit: Duration,
) {
    let start = Instant::now();
    let _ = listener.set_nonblocking(true);
    while start.elapsed() < limit {
        if let Ok((c, _)) = listener.accept() {
            let _ = c.set_nonblocking(false);
            serve_client(c, clients, input);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = listener.set_nonblocking(false);
}

/// Accepts clients for as long as the shim lives.
pub fn accept_loop(listener: UnixListener, clients: Clients, input: Arc<Input>) {
    for c in listener.incoming().flatten() {
        serve_client(c, &clients, &input);
    }
}

/// True if the process at the other end of the socket runs as root: the
/// agent, which relays the cluster's attachments. The socket lives in a
/// root-only bundle already; this refuses anything else that reaches it.
pub fn peer_is_root(c: &UnixStream) -> bool {
    // getsockopt(SO_PEERCRED): the credentials the kernel recorded for
    // the peer when it connected.
    nix::sys::socket::getsockopt(c, nix::sys::socket::sockopt::PeerCredentials)
        .map(|cred| cred.uid() == 0)
        .unwrap_or(false)
}

fn serve_client(c: UnixStream, clients: &Clients, input: &Arc<Input>) {
    if !peer_is_root(&c) {
        return;
    }
    let Ok(reader) = c.try_clone() else { return };
    clients.add(c);
    let input = input.clone();
    std::thread::spawn(move || read_frames(reader, &input));
}

/// Applies a client's input frames until it goes away.
fn read_frames(mut r: UnixStream, input: &Input) {
    loop {
        let mut head = [0u8; 5];
        if r.read_exact(&mut head).is_err() {
            return;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > 1 << 20 {
            return;
        }
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).is_err() {
            return;
        }
        match head[0] {
            STDIN => {
                if let Some(f) = input
                    .stdin
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    let _ = f.write_all(&payload);
                }
            }
            RESIZE if payload.len() == 4 => {
                if let Some(pty) = &input.pty {
                    let ws = libc::winsize {
                        ws_row: u16::from_be_bytes([payload[0], payload[1]]),
                        ws_col: u16::from_be_bytes([payload[2], payload[3]]),
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads the winsize we own; the fd
                    // is the pty master the shim holds.
                    unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            CLOSE_STDIN => {
                let mut stdin = input.stdin.lock().unwrap_or_else(|p| p.into_inner());
                if input.pty.is_some() {
                    // A terminal's end of input is ^D.
                    if let Some(f) = stdin.as_mut() {
                        let _ = f.write_all(&[4]);
                    }
                } else {
                    stdin.take();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_kind_and_length() {
        assert_eq!(frame(STDIN, b"ab"), vec![0, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(resize_frame(24, 80), vec![1, 0, 0, 0, 4, 0, 24, 0, 80]);
    }

    #[test]
    fn only_a_root_peer_is_served() {
        use std::os::unix::fs::PermissionsExt;
        use std::time::Duration;
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_is_root(&a), nix::unistd::geteuid().is_root());
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // A process of another user that reaches the socket is refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        for p in [dir.path(), path.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        listener.set_nonblocking(true).unwrap();
        let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
        // SAFETY: the child only calls setuid(2), socket(2), connect(2),
        // pause(2) and _exit(2), all async-signal-safe, and allocates
        // nothing.
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                if libc::setuid(65534) != 0 {
                    libc::_exit(1);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                use nix::sys::socket::SockaddrLike;
                if libc::connect(fd, addr.as_ptr().cast(), addr.len()) != 0 {
                    libc::_exit(2);
                }
                libc::pause();
                libc::_exit(0);
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let c = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("the other user's process never connected: {e}"),
            }
        };
        assert!(!peer_is_root(&c));
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
    }
}
