//! Tries, from inside a container, each step a known container escape
//! needs, and prints one line per step: `NAME allowed|refused DETAIL`.
//! chaos-tests/tests/isolation.rs runs it in berth and in Docker and holds
//! the verdicts side by side.
//!
//! Every probe stops at the permission check and changes nothing on the
//! host even where it is allowed (as under --privileged): devices are
//! opened, never written; /proc files are opened for writing, never
//! written; reboot asks for a Ctrl+Alt+Del setting that a container's pid
//! namespace refuses with EINVAL once the capability check has passed;
//! module loading gets no module; the clock call sets only the timezone,
//! to the value it already has; swapon names a file that does not exist.

use std::ffi::CString;

/// The outcome of a probe.
enum Verdict {
    Allowed(String),
    Refused(String),
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn name(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// A syscall result: success, or an errno that a permission check gives
/// (EPERM, EACCES, EROFS) is a refusal; any other errno means the call got
/// past the checks, so it is allowed.
fn checked(rc: i64) -> Verdict {
    if rc >= 0 {
        return Verdict::Allowed("succeeded".into());
    }
    let e = errno();
    if matches!(e, libc::EPERM | libc::EACCES | libc::EROFS) {
        Verdict::Refused(name(e))
    } else {
        Verdict::Allowed(format!("passed the checks, then {}", name(e)))
    }
}

/// Success only is allowed: an open that fails for any reason is refused.
fn strict(rc: i64) -> Verdict {
    if rc >= 0 {
        Verdict::Allowed("succeeded".into())
    } else {
        Verdict::Refused(name(errno()))
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn mknod(path: &str, kind: libc::mode_t, major: u32, minor: u32) -> i64 {
    let _ = std::fs::remove_file(path);
    // SAFETY: mknod(2) with a path we own.
    unsafe { libc::mknod(c(path).as_ptr(), kind | 0o600, libc::makedev(major, minor)) as i64 }
}

fn open(path: &str, flags: i32) -> i64 {
    // SAFETY: open(2) with a path we own; the descriptor is closed at once.
    let fd = unsafe { libc::open(c(path).as_ptr(), flags | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }
    fd as i64
}

/// Opening a device through a node the container makes (if mknod is
/// refused, there is nothing to open).
fn device(path: &str, kind: libc::mode_t, major: u32, minor: u32) -> Verdict {
    if mknod(path, kind, major, minor) < 0 {
        return Verdict::Refused(format!("mknod: {}", name(errno())));
    }
    strict(open(path, libc::O_RDONLY))
}

fn mount(source: &str, target: &str, fstype: &str, data: &str) -> i64 {
    let _ = std::fs::create_dir_all(target);
    // SAFETY: mount(2) with strings we own.
    unsafe {
        libc::mount(
            c(source).as_ptr(),
            c(target).as_ptr(),
            c(fstype).as_ptr(),
            0,
            c(data).as_ptr() as *const libc::c_void,
        ) as i64
    }
}

/// Reading the first bytes of a file: allowed only if it gives data (a
/// masked file reads as empty).
fn read_some(path: &str) -> Verdict {
    match std::fs::File::open(path) {
        Err(e) => Verdict::Refused(e.to_string()),
        Ok(mut f) => {
            let mut buf = [0u8; 64];
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => Verdict::Refused("reads as empty".into()),
                Ok(n) => Verdict::Allowed(format!("read {n} bytes")),
                Err(e) => Verdict::Refused(e.to_string()),
            }
        }
    }
}

fn probes() -> Vec<(&'static str, Verdict)> {
    let mut out = Vec::new();
    let _ = std::fs::create_dir_all("/tmp/probe");
    out.push((
        "mknod_block_device",
        strict(mknod("/tmp/probe/mk", libc::S_IFBLK, 7, 0)),
    ));
    out.push(("open_loop", device("/tmp/probe/loop", libc::S_IFBLK, 7, 0)));
    out.push((
        "open_fuse",
        device("/tmp/probe/fuse", libc::S_IFCHR, 10, 229),
    ));
    out.push(("open_mem", device("/tmp/probe/mem", libc::S_IFCHR, 1, 1)));
    out.push(("open_kmsg", device("/tmp/probe/kmsg", libc::S_IFCHR, 1, 11)));
    out.push((
        "mount_tmpfs",
        checked(mount("none", "/tmp/probe/t", "tmpfs", "")),
    ));
    out.push((
        "mount_proc",
        checked(mount("proc", "/tmp/probe/p", "proc", "")),
    ));
    out.push((
        "mount_cgroup",
        checked(mount("cgroup", "/tmp/probe/cg", "cgroup", "memory")),
    ));
    // The release_agent of a v1 hierarchy the container mounts itself
    // (the 2022 release_agent escape), opened for writing only.
    out.push((
        "release_agent",
        strict(open("/tmp/probe/cg/release_agent", libc::O_WRONLY)),
    ));
    out.push((
        "mount_overlay",
        checked({
            let base = "/tmp/probe/t";
            for d in ["l", "u", "w", "m"] {
                let _ = std::fs::create_dir_all(format!("{base}/{d}"));
            }
            mount(
                "overlay",
                &format!("{base}/m"),
                "overlay",
                &format!("lowerdir={base}/l,upperdir={base}/u,workdir={base}/w"),
            )
        }),
    ));
    // SAFETY: unshare(2) takes flags only.
    out.push((
        "unshare_user",
        checked(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as i64),
    ));
    // SAFETY: as above.
    out.push((
        "unshare_mount",
        checked(unsafe { libc::unshare(libc::CLONE_NEWNS) } as i64),
    ));
    // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
    // only reads an id.
    out.push((
        "keyctl",
        checked(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3i64, 0) }),
    ));
    // The process above the container's init: its parent as the
    // container sees it (none, in its own pid namespace), then init.
    let ppid_of_init = std::fs::read_to_string("/proc/1/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("PPid:")
                        .map(|v| v.trim().parse::<i32>().ok())
                })
                .flatten()
        })
        .unwrap_or(0);
    // SAFETY: PTRACE_ATTACH to a pid; detached at once if it worked.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, ppid_of_init, 0, 0) };
    out.push((
        "ptrace_init_parent",
        if ppid_of_init == 0 {
            Verdict::Refused("not visible (PPid of PID 1 is 0)".into())
        } else {
            strict(rc)
        },
    ));
    for (path, flag) in [
        ("/proc/sysrq-trigger", "write_sysrq_trigger"),
        ("/proc/sys/kernel/domainname", "write_proc_sys"),
    ] {
        out.push((flag, strict(open(path, libc::O_WRONLY))));
    }
    out.push(("read_kcore", read_some("/proc/kcore")));
    out.push(("read_keys", read_some("/proc/keys")));
    out.push(("read_interrupts", read_some("/proc/interrupts")));
    // open_by_handle_at(2) on a handle of /dev/shm (a tmpfs, which gives
    // handles; the overlay root gives none): the shocker escape's call.
    out.push(("open_by_handle_at", {
        #[repr(C)]
        struct Handle {
            bytes: u32,
            kind: i32,
            f: [u8; 128],
        }
        let mut h = Handle {
            bytes: 128,
            kind: 0,
            f: [0; 128],
        };
        let mut mount_id = 0i32;
        // SAFETY: name_to_handle_at fills the handle we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                c("/dev/shm").as_ptr(),
                &mut h as *mut Handle,
                &mut mount_id as *mut i32,
                0,
            )
        };
        if rc < 0 {
            Verdict::Refused(format!("name_to_handle_at: {}", name(errno())))
        } else {
            // SAFETY: a descriptor on the handle's mount, closed below.
            let dir =
                unsafe { libc::open(c("/dev/shm").as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
            // SAFETY: the handle was filled above.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_open_by_handle_at,
                    dir,
                    &mut h as *mut Handle,
                    libc::O_RDONLY,
                )
            };
            let v = strict(rc);
            if rc >= 0 {
                // SAFETY: the descriptor is ours.
                unsafe { libc::close(rc as i32) };
            }
            // SAFETY: ours.
            unsafe { libc::close(dir) };
            v
        }
    }));
    // LINUX_REBOOT_CMD_CAD_OFF: in a pid namespace other than the host's,
    // the kernel answers EINVAL after the CAP_SYS_BOOT check.
    // SAFETY: integer arguments only.
    out.push((
        "reboot",
        checked(unsafe {
            libc::syscall(
                libc::SYS_reboot,
                libc::LINUX_REBOOT_MAGIC1,
                libc::LINUX_REBOOT_MAGIC2,
                libc::LINUX_REBOOT_CMD_CAD_OFF,
                0,
            )
        }),
    ));
    // SAFETY: finit_module(-1, "", 0): no module, EBADF past the checks.
    out.push((
        "load_module",
        checked(unsafe { libc::syscall(libc::SYS_finit_module, -1, c("").as_ptr(), 0) }),
    ));
    out.push(("set_clock", {
        /// struct timezone of settimeofday(2).
        #[repr(C)]
        struct Timezone {
            minuteswest: i32,
            dsttime: i32,
        }
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let mut tz = Timezone {
            minuteswest: 0,
            dsttime: 0,
        };
        // SAFETY: gettimeofday(2) fills our structs; settimeofday(2) with
        // no time sets the timezone to what it already is.
        unsafe {
            libc::syscall(
                libc::SYS_gettimeofday,
                &mut tv as *mut libc::timeval,
                &mut tz as *mut Timezone,
            )
        };
        // SAFETY: as above.
        checked(unsafe {
            libc::syscall(
                libc::SYS_settimeofday,
                std::ptr::null::<libc::timeval>(),
                &tz as *const Timezone,
            )
        })
    }));
    // SAFETY: swapon(2) of a path that does not exist.
    out.push((
        "swapon",
        checked(unsafe {
            libc::syscall(libc::SYS_swapon, c("/tmp/probe/no-such-swap").as_ptr(), 0)
        }),
    ));
    out
}

fn main() {
    for (name, v) in probes() {
        match v {
            Verdict::Allowed(d) => println!("{name} allowed {d}"),
            Verdict::Refused(d) => println!("{name} refused {d}"),
        }
    }
}
