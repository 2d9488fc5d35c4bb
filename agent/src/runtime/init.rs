//! What runs in the container's new namespaces before the user's command:
//! stdio, mounts, /dev, pivot_root, hostname, loopback, capabilities,
//! user, environment, and finally exec. It runs in a child cloned from the
//! single-threaded shim, so it may allocate and call into std freely.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{
    chdir, dup2, execvp, pivot_root, setgid, setgroups, sethostname, setsid, setuid, Gid, Uid,
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::inroot;
use super::spec::capability_number;

/// The file descriptors and spec the init child works from.
pub struct InitContext<'a> {
    pub spec: &'a Spec,
    /// The container's seccomp program, from the bundle or compiled by
    /// the shim.
    pub seccomp: Option<&'a super::seccomp::Program>,
    pub bundle: &'a Path,
    /// The container's cgroup, created by the shim: the child moves
    /// itself into it before anything else.
    pub cgroup: Option<&'a super::cgroups::Cgroup>,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Close-on-exec: closed without a word by a successful exec, or
    /// carrying the reason the container could not start.
    pub sync: RawFd,
    /// The shim writes one byte here once the container may start (for
    /// run -it, once its terminal is attached); the child waits for it
    /// before its exec.
    pub go: RawFd,
    /// With a terminal: the socket over which the child sends the master
    /// of the pty it makes in the container's devpts; the slave becomes its
    /// stdio and controlling terminal, and the three fds above are unused.
    pub console: Option<RawFd>,
}

/// A step of container setup that failed, with the exit code Docker gives
/// for it (127: command not found, 126: not executable, 125: setup).
struct InitFailure {
    code: i32,
    message: String,
}

fn fail(step: impl Into<String>, e: impl std::fmt::Display) -> InitFailure {
    InitFailure {
        code: 125,
        message: format!("{}: {e}", step.into()),
    }
}

/// The child's entry point; returns only on failure, with the exit code.
pub fn run(ctx: &InitContext) -> isize {
    let err = match setup_and_exec(ctx) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // SAFETY: the sync fd is owned by this child (a copy made by clone);
    // wrapping it in a File closes it once the message is written.
    let mut sync = unsafe { fs::File::from_raw_fd(ctx.sync) };
    let _ = sync.write_all(err.message.as_bytes());
    err.code as isize
}

fn setup_and_exec(ctx: &InitContext) -> Result<std::convert::Infallible, InitFailure> {
    let spec = ctx.spec;
    // Into its cgroup first, while /sys/fs/cgroup is still the host's, so
    // that the limits hold for all it does. This child is single-threaded,
    // so it moves itself (cgroups.rs says why that is much faster than
    // the shim moving it by pid).
    if let Some(cg) = ctx.cgroup {
        cg.join_self().map_err(|e| fail("joining the cgroup", e))?;
    }
    // A session of its own: the container must not share the shim's
    // controlling terminal or receive its job-control signals.
    setsid().map_err(|e| fail("setsid", e))?;
    if ctx.console.is_none() {
        for (fd, target) in [(ctx.stdin, 0), (ctx.stdout, 1), (ctx.stderr, 2)] {
            // dup2(2): the container's stdio become the shim's pipes.
            dup2(fd, target).map_err(|e| fail("dup2", e))?;
        }
    }
    let root_path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if root_path.is_absolute() {
        root_path
    } else {
        ctx.bundle.join(root_path)
    };
    let namespaces: Vec<LinuxNamespaceType> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| n.typ())
        .collect();
    // A cgroup namespace, if asked for, is made only now (the clone left
    // it out), so that its root is the cgroup joined above, as with runc.
    if namespaces.contains(&LinuxNamespaceType::Cgroup) {
        // unshare(2): a cgroup namespace rooted at the container's cgroup.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| fail("unshare of the cgroup namespace", e))?;
    }

    // Mount propagation private: nothing mounted here leaks to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("making / private", e))?;
    // pivot_root needs the new root to be a mount point: bind it on itself.
    mount(
        Some(&rootfs),
        &rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(format!("binding the rootfs {}", rootfs.display()), e))?;
    // Mount destinations are opened by the kernel inside the rootfs
    // (runtime/inroot.rs) and mounted on through their descriptors; on a
    // kernel without openat2, resolved by path as before.
    let root = inroot::Root::open(&rootfs).map_err(|e| fail("opening the rootfs", e))?;
    for m in spec.mounts().clone().unwrap_or_default() {
        let typ = m.typ().clone().unwrap_or_default();
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
        let (flags, data) = mount_options(m.options().as_deref().unwrap_or(&[]));
        let make = if flags.contains(MsFlags::MS_BIND) && source.is_file() {
            // A file is bound onto a file.
            inroot::Make::File
        } else {
            inroot::Make::Dir
        };
        let (_held, dest) = destination(&root, &rootfs, m.destination(), make)?;
        let data = (!data.is_empty()).then_some(data);
        mount(
            Some(&source),
            &dest,
            Some(typ.as_str()),
            flags,
            data.as_deref(),
        )
        .map_err(|e| {
            fail(
                format!("mounting {typ} on {}", m.destination().display()),
                e,
            )
        })?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            // Opened again: the descriptor held names the directory under
            // the new mount, a fresh one the mount itself.
            let (_mounted, dest) = destination(&root, &rootfs, m.destination(), make)?;
            readonly_recursive(&dest)
                .map_err(|e| fail(format!("making {} read-only", m.destination().display()), e))?;
        }
    }
    // Where the /dev tmpfs was mounted: resolved inside the rootfs, never
    // through an image's symlink to a host directory.
    let (_held, dev) = destination(&root, &rootfs, Path::new("/dev"), inroot::Make::Dir)?;
    make_devices(&dev)?;
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        make_device(&root, &rootfs, &d)?;
    }

    // pivot_root(".", ".") stacks the old root under the new one; the
    // detached unmount then drops every host path from view.
    chdir(&rootfs).map_err(|e| fail("chdir to the rootfs", e))?;
    pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("unmounting the old root", e))?;
    chdir("/").map_err(|e| fail("chdir /", e))?;

    if let Some(linux) = spec.linux() {
        for p in linux.masked_paths().clone().unwrap_or_default() {
            mask(Path::new(&p))?;
        }
        for p in linux.readonly_paths().clone().unwrap_or_default() {
            let p = Path::new(&p);
            if p.exists() {
                bind_readonly(p, p)?;
            }
        }
    }
    if namespaces.contains(&LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname() {
            sethostname(h).map_err(|e| fail("sethostname", e))?;
        }
    }
    if namespaces.contains(&LinuxNamespaceType::Network) {
        loopback_up().map_err(|e| fail("bringing up lo", e))?;
    }

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| fail("config.json", "no process"))?;
    if let Some(sock) = ctx.console {
        let user = process.user();
        let (master, slave) = super::console::open(user.uid(), user.gid())
            .map_err(|e| fail("opening a terminal in the container's /dev/pts", e))?;
        super::console::send(sock, &master).map_err(|e| fail("sending the terminal", e))?;
        drop(master);
        use std::os::fd::AsRawFd;
        for target in 0..3 {
            // dup2(2): the pty slave is the container's stdin, stdout and
            // stderr.
            dup2(slave.as_raw_fd(), target).map_err(|e| fail("dup2", e))?;
        }
        drop(slave);
        // SAFETY: TIOCSCTTY on our stdin (the pty slave) makes it the new
        // session's controlling terminal; no memory is passed.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(fail("setting the controlling terminal", nix::Error::last()));
        }
    }
    let cwd = process.cwd();
    fs::create_dir_all(cwd)
        .map_err(|e| fail(format!("creating the workdir {}", cwd.display()), e))?;
    chdir(cwd).map_err(|e| fail(format!("chdir to {}", cwd.display()), e))?;
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        // --read-only: the rootfs bind made read-only once the workdir
        // exists; /dev, /proc, /sys, volumes and tmpfs mounts are mounts
        // of their own and keep their modes.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| fail("making the root filesystem read-only", e))?;
    }

    if let Some(caps) = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
    {
        let keep: Vec<u32> = caps.iter().filter_map(capability_number).collect();
        for n in super::caps::all_numbers().filter(|n| !keep.contains(n)) {
            // prctl(PR_CAPBSET_DROP): a root process keeps after exec only
            // the capabilities left in its bounding set.
            // SAFETY: plain integer arguments; no memory is shared.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) };
            if rc != 0 && nix::Error::last() != nix::Error::EINVAL {
                return Err(fail("dropping capabilities", nix::Error::last()));
            }
        }
    }
    for r in process.rlimits().clone().unwrap_or_default() {
        let resource = super::spec::rlimit_resource(r.typ());
        let limit = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // setrlimit(2) while still root: a hard limit above the shim's own
        // needs CAP_SYS_RESOURCE, and its refusal is reported as such.
        // SAFETY: the rlimit struct is ours and only read.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            let e = nix::Error::last();
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit(2) fills the struct we own.
            unsafe { libc::getrlimit(resource, &mut current) };
            return Err(fail(
                format!(
                    "setting {} to {}:{} (the node allows a hard limit of at most {})",
                    r.typ(),
                    show_limit(r.soft()),
                    show_limit(r.hard()),
                    show_limit(current.rlim_max),
                ),
                e,
            ));
        }
    }
    // Nothing inherited from the agent: empty inheritable and ambient sets,
    // so that exec leaves only what the bounding set allows.
    clear_inheritable().map_err(|e| fail("clearing inheritable capabilities", e))?;
    if process.no_new_privileges().unwrap_or(false) {
        super::seccomp::set_no_new_privileges().map_err(|e| fail("no-new-privileges", e))?;
    }
    // The filter goes on while this process is still root with every
    // capability in its effective set (loading one without no_new_privs
    // needs CAP_SYS_ADMIN); what follows (setgroups, setgid, setuid,
    // signal setup, one read, execve) is allowed by any workable profile.
    if let Some(filter) = ctx.seccomp {
        filter
            .load()
            .map_err(|e| fail("loading the seccomp filter", e))?;
    }
    let user = process.user();
    let gid = Gid::from_raw(user.gid());
    setgroups(&[gid]).map_err(|e| fail("setgroups", e))?;
    setgid(gid).map_err(|e| fail("setgid", e))?;
    setuid(Uid::from_raw(user.uid())).map_err(|e| fail("setuid", e))?;

    // The shim ignores SIGPIPE (Rust's default); a container process must
    // start with default dispositions and nothing blocked.
    // SAFETY: resetting a disposition to SIG_DFL installs no handler code.
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|e| fail("signal", e))?;
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| fail("sigprocmask", e))?;

    // Wait until the shim lets it go on (for run -it, once its terminal is
    // attached).
    let mut byte = [0u8; 1];
    match nix::unistd::read(ctx.go, &mut byte) {
        Ok(1) => {}
        _ => {
            return Err(fail(
                "waiting for the shim",
                "the shim gave up before the start",
            ))
        }
    }
    for (k, _) in std::env::vars_os() {
        std::env::remove_var(k);
    }
    for kv in process.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                std::env::set_var(k, v);
            }
        }
    }
    let args: Vec<CString> = process
        .args()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| CString::new(a).map_err(|_| fail("command", "an argument holds a NUL byte")))
        .collect::<Result<_, _>>()?;
    let Some(cmd) = args.first() else {
        return Err(fail("command", "no command specified"));
    };
    // umask(2): the container's own file creation mask, 022 unless
    // config.json gives one (runc's and Docker's default), whatever the
    // agent that started the shim runs with.
    let umask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(Mode::from_bits_truncate(umask & 0o777));
    // execvp(3) searches the container's PATH, set just above.
    let e = execvp(cmd, &args).unwrap_err();
    let name = cmd.to_string_lossy();
    Err(match e {
        nix::Error::ENOENT => InitFailure {
            code: 127,
            message: format!("exec: \"{name}\": executable file not found in $PATH"),
        },
        nix::Error::EACCES => InitFailure {
            code: 126,
            message: format!("exec: \"{name}\": permission denied"),
        },
        other => InitFailure {
            code: 126,
            message: format!("exec: \"{name}\": {other}"),
        },
    })
}

fn show_limit(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}

/// A mount destination inside the rootfs, made where missing: the opened
/// descriptor (keep it while the path is used) and the /proc/self/fd path
/// that names it. Without openat2, the path [`inside`] resolves.
fn destination(
    root: &inroot::Root,
    rootfs: &Path,
    dest: &Path,
    make: inroot::Make,
) -> Result<(Option<std::os::fd::OwnedFd>, PathBuf), InitFailure> {
    match root.open_dest(dest, make) {
        Ok(fd) => {
            let path = inroot::fd_path(&fd);
            Ok((Some(fd), path))
        }
        Err(inroot::InRootError::Unsupported) => {
            let p = inside(rootfs, dest)?;
            match make {
                inroot::Make::Dir => fs::create_dir_all(&p),
                inroot::Make::File => p
                    .parent()
                    .map(fs::create_dir_all)
                    .unwrap_or(Ok(()))
                    .and_then(|()| {
                        if p.exists() {
                            Ok(())
                        } else {
                            fs::write(&p, b"")
                        }
                    }),
            }
            .map_err(|e| fail(format!("creating {}", p.display()), e))?;
            Ok((None, p))
        }
        Err(e) => Err(fail("mount destination", e)),
    }
}

/// Joins a container path onto the rootfs, refusing `..` in it, and
/// resolving symlinks already in the rootfs as the container would see them
/// (an absolute target starts again at the rootfs, `..` stops at it), so
/// that a mount destination, or a directory made for one, never lands on a
/// host path through an image's symlink.
fn inside(rootfs: &Path, dest: &Path) -> Result<PathBuf, InitFailure> {
    if dest.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(fail(
            "mount destination",
            format!("{} climbs out with ..", dest.display()),
        ));
    }
    let mut queue: std::collections::VecDeque<std::ffi::OsString> = dest
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    let mut current = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = queue.pop_front() {
        if part == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&part);
        let full = rootfs.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(fail(
                        "mount destination",
                        format!("{}: too many symlinks", dest.display()),
                    ));
                }
                let target = fs::read_link(&full).map_err(|e| fail("reading a symlink", e))?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                let parts: Vec<std::ffi::OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_owned()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                for p in parts.into_iter().rev() {
                    queue.push_front(p);
                }
            }
            _ => current = candidate,
        }
    }
    Ok(rootfs.join(current))
}

/// Splits runtime-spec mount options into flags and filesystem data.
pub fn mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

fn bind_readonly(src: &Path, dest: &Path) -> Result<(), InitFailure> {
    if src.is_dir() {
        fs::create_dir_all(dest).map_err(|e| fail(format!("creating {}", dest.display()), e))?;
    }
    mount(
        Some(src),
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(format!("binding {}", dest.display()), e))?;
    readonly_recursive(dest).map_err(|e| fail(format!("making {} read-only", dest.display()), e))
}

/// Makes a bind mount and every mount below it read-only. A remount with
/// MS_BIND|MS_RDONLY changes only the top mount: a host directory bound
/// with `:ro` that holds another mount would leave that one writable.
fn readonly_recursive(dest: &Path) -> Result<(), nix::Error> {
    /// struct mount_attr of mount_setattr(2).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let path = CString::new(dest.as_os_str().as_encoded_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) (Linux 5.12) reads the path and the attr
    // struct we own, of the size we pass; AT_RECURSIVE applies it to the
    // whole mount tree at the path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

/// Empties the inheritable and ambient capability sets of this process.
fn clear_inheritable() -> Result<(), nix::Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words of each set.
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget(2) fills the two Data words we own; the header names
    // this process (pid 0).
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(nix::Error::last());
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: capset(2) reads the header and the two words; lowering a
    // set needs no privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) } != 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: plain integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Hides a path: /dev/null over a file, an empty read-only tmpfs over a
/// directory.
fn mask(p: &Path) -> Result<(), InitFailure> {
    let Ok(meta) = fs::metadata(p) else {
        return Ok(());
    };
    let res = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    res.map_err(|e| fail(format!("masking {}", p.display()), e))
}

/// The standard device nodes of /dev, and its links.
fn make_devices(dev: &Path) -> Result<(), InitFailure> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        // mknod(2) of the character devices every container expects.
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| fail(format!("mknod {}", p.display()), e))?;
        // The umask trims mknod's mode; these nodes are for everyone.
        nix::sys::stat::fchmodat(
            None,
            &p,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| fail(format!("chmod {}", p.display()), e))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = dev.join(link);
        if fs::symlink_metadata(&p).is_err() {
            symlink(target, &p).map_err(|e| fail(format!("symlink {}", p.display()), e))?;
        }
    }
    Ok(())
}

/// Makes a device node config.json asks for (`--device`, or the host's
/// under `--privileged`) in the container's /dev, resolved inside the
/// rootfs.
fn make_device(
    root: &inroot::Root,
    rootfs: &Path,
    d: &oci_spec::runtime::LinuxDevice,
) -> Result<(), InitFailure> {
    use oci_spec::runtime::LinuxDeviceType;
    let name = d.path().file_name().ok_or_else(|| {
        fail(
            format!("device {}", d.path().display()),
            "the path names no file",
        )
    })?;
    let (_held, parent) = destination(
        root,
        rootfs,
        d.path().parent().unwrap_or(Path::new("/")),
        inroot::Make::Dir,
    )?;
    let p = parent.join(name);
    let kind = match d.typ() {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        other => {
            return Err(fail(
                format!("device {}", d.path().display()),
                format!("unsupported type {other:?}"),
            ))
        }
    };
    let _ = fs::remove_file(&p);
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o660));
    // mknod(2) of the device the run asked for; the cgroup's policy lets
    // the container use it.
    mknod(&p, kind, mode, makedev(d.major() as u64, d.minor() as u64))
        .map_err(|e| fail(format!("mknod {}", d.path().display()), e))?;
    nix::sys::stat::fchmodat(
        None,
        &p,
        mode,
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|e| fail(format!("chmod {}", d.path().display()), e))?;
    nix::unistd::fchownat(
        None,
        &p,
        Some(Uid::from_raw(d.uid().unwrap_or(0))),
        Some(Gid::from_raw(d.gid().unwrap_or(0))),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| fail(format!("chown {}", d.path().display()), e))?;
    Ok(())
}

/// Sets the loopback interface of a new network namespace up.
fn loopback_up() -> Result<(), nix::Error> {
    // SAFETY: a datagram socket is only a handle for the interface ioctls;
    // it is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value, and the name is
    // copied within its 16 bytes.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    let res = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            Err(nix::Error::last())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr) < 0 {
                Err(nix::Error::last())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: sock is ours and used no more.
    unsafe { libc::close(sock) };
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = mount_options(&[
            "nosuid".into(),
            "mode=755".into(),
            "ro".into(),
            "size=1k".into(),
        ]);
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert_eq!(data, "mode=755,size=1k");
    }

    #[test]
    fn mount_destinations_follow_symlinks_inside_the_rootfs_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("real")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../real", r.join("rel")).unwrap();
        assert_eq!(
            inside(r, Path::new("/abs/x")).ok().unwrap(),
            r.join("etc/x")
        );
        assert_eq!(
            inside(r, Path::new("/rel/x")).ok().unwrap(),
            r.join("real/x")
        );
    }

    #[test]
    fn mount_destinations_stay_in_the_rootfs() {
        assert_eq!(
            inside(Path::new("/r"), Path::new("/dev/pts")).ok().unwrap(),
            PathBuf::from("/r/dev/pts")
        );
        assert!(inside(Path::new("/r"), Path::new("/../etc")).is_err());
    }
}
