//! A container's terminal: a pty made from the container's own devpts
//! (so that `tty` inside names a /dev/pts entry the container can see),
//! whose master is handed back to the shim over a socket pair.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use super::RuntimeError;

/// The two ends of the socket pair a master travels over: the shim keeps
/// the first, the process that makes the pty the second.
pub fn channel() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|source| RuntimeError::Sys {
        op: "socketpair".into(),
        source,
    })
}

/// Opens a new pty from the devpts at /dev/pts of the calling process's
/// mount namespace, with its slave owned by the container's user. Returns
/// the master and the slave.
pub fn open(uid: u32, gid: u32) -> Result<(OwnedFd, OwnedFd), nix::Error> {
    // posix_openpt(3) opens /dev/ptmx, which the container's /dev links to
    // its own devpts instance (pts/ptmx).
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .into();
    // fchown(2): the terminal belongs to the user the process runs as, as
    // a login's does, so that it may change its own modes.
    nix::unistd::fchown(
        slave.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )?;
    // SAFETY: into_raw_fd hands over the only owner of the master's fd.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok((master, slave))
}

/// Sends a descriptor over the socket pair (SCM_RIGHTS).
pub fn send(sock: RawFd, fd: &OwnedFd) -> Result<(), nix::Error> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    // sendmsg(2) with one data byte: a stream socket carries no control
    // message without data.
    sendmsg::<()>(sock, &[IoSlice::new(b"m")], &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives the descriptor [`send`] sent; `None` when the other end closed
/// without sending one (its setup failed).
pub fn receive(sock: &OwnedFd) -> Result<Option<OwnedFd>, nix::Error> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    // recvmsg(2): MSG_CMSG_CLOEXEC so the received master is not leaked
    // into processes the shim starts later.
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel installed this descriptor for us just
                // now; nothing else owns it.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}
