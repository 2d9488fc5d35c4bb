//! Which devices a container may open or make. Its policy is written into
//! config.json as runtime-spec `linux.resources.devices`: a first rule
//! refusing every device, then the allowed ones (Docker's list, and each
//! `--device`), or a single rule allowing all (`--privileged`). The shim
//! enforces it through the devices controller on cgroup v1
//! ([`write_v1`]), and through a BPF_PROG_TYPE_CGROUP_DEVICE program
//! attached to the container's cgroup on v2 ([`attach_v2`]). Both check
//! open and mknod alike, so a device outside the list can neither be
//! opened through a node the image brought nor made with mknod.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use super::RuntimeError;

/// The kind of device a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Char,
    Block,
    Any,
}

/// One allowed device (or range, with a wildcard number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub kind: Kind,
    /// `None` is any number.
    pub major: Option<i64>,
    pub minor: Option<i64>,
    /// Some of `r`, `w`, `m`.
    pub access: String,
}

/// A container's device policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Every device (`--privileged`).
    AllowAll,
    /// Only these.
    Allowlist(Vec<Allowed>),
}

/// Docker's allowlist (runc's default), less its blanket mknod rights:
/// null, zero, full, random, urandom, tty, console, ptmx, the ptys and
/// net/tun.
pub fn docker_defaults() -> Vec<Allowed> {
    let c = |major: i64, minor: Option<i64>| Allowed {
        kind: Kind::Char,
        major: Some(major),
        minor,
        access: "rwm".into(),
    };
    vec![
        c(1, Some(3)),    // null
        c(1, Some(5)),    // zero
        c(1, Some(7)),    // full
        c(1, Some(8)),    // random
        c(1, Some(9)),    // urandom
        c(5, Some(0)),    // tty
        c(5, Some(1)),    // console
        c(5, Some(2)),    // ptmx
        c(136, None),     // pts/*
        c(10, Some(200)), // net/tun
    ]
}

impl Policy {
    /// The runtime-spec rules of the policy.
    pub fn to_spec(&self) -> Result<Vec<LinuxDeviceCgroup>, RuntimeError> {
        let rule =
            |allow: bool, kind: Kind, major: Option<i64>, minor: Option<i64>, access: &str| {
                // No number is the wildcard, as the runtime spec says.
                let mut b = LinuxDeviceCgroupBuilder::default()
                    .allow(allow)
                    .typ(match kind {
                        Kind::Char => LinuxDeviceType::C,
                        Kind::Block => LinuxDeviceType::B,
                        Kind::Any => LinuxDeviceType::A,
                    })
                    .access(access.to_string());
                if let Some(m) = major {
                    b = b.major(m);
                }
                if let Some(m) = minor {
                    b = b.minor(m);
                }
                b.build()
            };
        Ok(match self {
            Policy::AllowAll => vec![rule(true, Kind::Any, None, None, "rwm")?],
            Policy::Allowlist(allowed) => {
                let mut rules = vec![rule(false, Kind::Any, None, None, "rwm")?];
                for a in allowed {
                    rules.push(rule(true, a.kind, a.major, a.minor, &a.access)?);
                }
                rules
            }
        })
    }

    /// Reads the policy back from config.json's rules; `None` when the
    /// spec gives none (a bundle from elsewhere: every device allowed, as
    /// runc would leave it, is not what berth writes, so it is refused).
    pub fn from_spec(rules: &[LinuxDeviceCgroup]) -> Result<Self, RuntimeError> {
        let kind = |r: &LinuxDeviceCgroup| match r.typ() {
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Kind::Char,
            Some(LinuxDeviceType::B) => Kind::Block,
            _ => Kind::Any,
        };
        let number = |n: Option<i64>| n.filter(|n| *n >= 0);
        let Some((first, rest)) = rules.split_first() else {
            return Err(RuntimeError::Invalid(
                "config.json gives no device rules (linux.resources.devices)".into(),
            ));
        };
        if first.allow() && kind(first) == Kind::Any && rest.is_empty() {
            return Ok(Policy::AllowAll);
        }
        if first.allow() || kind(first) != Kind::Any {
            return Err(RuntimeError::Invalid(
                "config.json's device rules must begin by refusing every device".into(),
            ));
        }
        let mut allowed = Vec::new();
        for r in rest {
            if !r.allow() {
                return Err(RuntimeError::Invalid(
                    "config.json's device rules refuse only in their first rule".into(),
                ));
            }
            let access = r.access().clone().unwrap_or_else(|| "rwm".into());
            if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
                return Err(RuntimeError::Invalid(format!("device access {access:?}")));
            }
            allowed.push(Allowed {
                kind: kind(r),
                major: number(r.major()),
                minor: number(r.minor()),
                access,
            });
        }
        Ok(Policy::Allowlist(allowed))
    }
}

/// A `--device` mapping resolved on the host: the node the container's
/// /dev gets, and the rule that lets it use it.
pub fn mapped(
    m: &berth_proto::security::DeviceMapping,
) -> Result<(LinuxDevice, Allowed), RuntimeError> {
    let meta = std::fs::metadata(&m.host).map_err(|e| {
        RuntimeError::Invalid(format!(
            "error gathering device information for {}: {e}",
            m.host
        ))
    })?;
    let Some(device) = node(&m.container, &meta) else {
        return Err(RuntimeError::Invalid(format!(
            "{} is not a device node",
            m.host
        )));
    };
    let kind = if device.typ() == LinuxDeviceType::C {
        Kind::Char
    } else {
        Kind::Block
    };
    let (major, minor) = (device.major(), device.minor());
    Ok((
        device,
        Allowed {
            kind,
            major: Some(major),
            minor: Some(minor),
            // With mknod always: the init makes the node, and it may
            // already be in the cgroup when it does.
            access: if m.permissions.contains('m') {
                m.permissions.clone()
            } else {
                format!("{}m", m.permissions)
            },
        },
    ))
}

/// Every device node of the host's /dev, for `--privileged` (as Docker
/// gives a privileged container the host's devices); ptys, shared memory,
/// the console and ptmx (its devpts one) stay the container's own.
pub fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), 0, &mut out);
    out
}

fn walk(dir: &Path, depth: u32, out: &mut Vec<LinuxDevice>) {
    if depth > 4 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if depth == 0
            && matches!(
                name.to_str(),
                Some("pts" | "ptmx" | "shm" | "mqueue" | "fd" | "console" | ".udev")
            )
        {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_dir() {
            walk(&path, depth + 1, out);
            continue;
        }
        out.extend(node(&path, &meta));
    }
}

/// The runtime-spec node of a host device at `path` in the container;
/// `None` if `meta` is not a character or block device.
fn node(path: impl AsRef<Path>, meta: &std::fs::Metadata) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(path.as_ref())
        .typ(typ)
        .major(libc::major(rdev) as i64)
        .minor(libc::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .ok()
}

/// Writes the policy into a v1 devices cgroup directory: everything
/// refused, then each allowed rule (or everything allowed).
pub fn write_v1(dir: &Path, policy: &Policy) -> Result<(), std::io::Error> {
    match policy {
        Policy::AllowAll => std::fs::write(dir.join("devices.allow"), "a *:* rwm"),
        Policy::Allowlist(allowed) => {
            std::fs::write(dir.join("devices.deny"), "a *:* rwm")?;
            for a in allowed {
                std::fs::write(dir.join("devices.allow"), v1_line(a))?;
            }
            Ok(())
        }
    }
}

/// `c 1:3 rwm`, as the v1 devices controller reads a rule.
fn v1_line(a: &Allowed) -> String {
    let n = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
    let kind = match a.kind {
        Kind::Char => 'c',
        Kind::Block => 'b',
        Kind::Any => 'a',
    };
    format!("{kind} {}:{} {}", n(a.major), n(a.minor), a.access)
}

/// One eBPF instruction (struct bpf_insn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// The instruction classes and operations the program uses (linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JSET_K: u8 = 0x45;
const JMP_EXIT: u8 = 0x95;

fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// The device program of an allowlist: it loads the access type, major
/// and minor from its struct bpf_cgroup_dev_ctx, returns 1 (allow) at the
/// first rule they match and 0 (refuse) after the last.
fn program(allowed: &[Allowed]) -> Vec<Insn> {
    // bpf_cgroup_dev_ctx: u32 access_type (access << 16 | type), u32
    // major, u32 minor. r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        ins(LDX_MEM_W, 2, 1, 0, 0),
        ins(ALU64_AND_K, 2, 0, 0, 0xffff),
        ins(LDX_MEM_W, 3, 1, 0, 0),
        ins(ALU64_RSH_K, 3, 0, 0, 16),
        ins(LDX_MEM_W, 4, 1, 4, 0),
        ins(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for a in allowed {
        // BPF_DEVCG_ACC_MKNOD 1, READ 2, WRITE 4; DEV_BLOCK 1, DEV_CHAR 2.
        let mask: i32 = a
            .access
            .chars()
            .map(|c| match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            })
            .fold(0, |m, b| m | b);
        let mut tests = Vec::new();
        match a.kind {
            Kind::Block => tests.push((JMP_JNE_K, 2, 1)),
            Kind::Char => tests.push((JMP_JNE_K, 2, 2)),
            Kind::Any => {}
        }
        if mask != 7 {
            // Any access bit outside the rule's skips it.
            tests.push((JMP_JSET_K, 3, !mask & 7));
        }
        if let Some(major) = a.major {
            tests.push((JMP_JNE_K, 4, major as i32));
        }
        if let Some(minor) = a.minor {
            tests.push((JMP_JNE_K, 5, minor as i32));
        }
        let n = tests.len();
        for (i, (code, reg, imm)) in tests.into_iter().enumerate() {
            // Past the remaining tests and the two instructions that allow.
            let skip = (n - i - 1 + 2) as i16;
            p.push(ins(code, reg, 0, skip, imm));
        }
        p.push(ins(ALU64_MOV_K, 0, 0, 0, 1));
        p.push(ins(JMP_EXIT, 0, 0, 0, 0));
    }
    p.push(ins(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(ins(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of union bpf_attr for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of union bpf_attr for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long, nix::Error> {
    // SAFETY: bpf(2) reads (and for a load's log, writes) the attr struct
    // we own, of the size we pass; every pointer in it points at memory
    // that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(nix::Error::last())
    } else {
        Ok(rc)
    }
}

/// Loads the program of `policy` and attaches it to the v2 cgroup at
/// `dir`. The cgroup holds the program from then on; nothing is attached
/// for [`Policy::AllowAll`].
pub fn attach_v2(dir: &Path, policy: &Policy) -> Result<(), RuntimeError> {
    let Policy::Allowlist(allowed) = policy else {
        return Ok(());
    };
    let code: Vec<u8> = program(allowed).into_iter().flat_map(Insn::bytes).collect();
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: (code.len() / 8) as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    let sys = |op: &str| {
        let op = op.to_string();
        move |source| RuntimeError::Sys { op, source }
    };
    let prog = match bpf(BPF_PROG_LOAD, &mut load) {
        // SAFETY: a successful load returns a new descriptor that is ours.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
        Err(e) => {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            return Err(RuntimeError::Invalid(format!(
                "loading the device program into the kernel: {e}{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )));
        }
    };
    let cgroup = std::fs::File::open(dir).map_err(|source| RuntimeError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut attach = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(sys("attaching the device program to the cgroup"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_through_the_spec() {
        let p = Policy::Allowlist(docker_defaults());
        let rules = p.to_spec().unwrap();
        assert!(!rules[0].allow());
        assert_eq!(Policy::from_spec(&rules).unwrap(), p);
        let all = Policy::AllowAll;
        assert_eq!(Policy::from_spec(&all.to_spec().unwrap()).unwrap(), all);
        assert!(Policy::from_spec(&[]).is_err());
        let mut allow_first = rules.clone();
        allow_first.swap(0, 1);
        assert!(Policy::from_spec(&allow_first).is_err());
    }

    #[test]
    fn v1_rules_are_written_deny_first() {
        let d = tempfile::tempdir().unwrap();
        write_v1(
            d.path(),
            &Policy::Allowlist(vec![docker_defaults()[8].clone()]),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("devices.deny")).unwrap(),
            "a *:* rwm"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("devices.allow")).unwrap(),
            "c 136:* rwm"
        );
    }

    #[test]
    fn the_program_skips_to_the_next_rule_on_any_mismatch() {
        let p = program(&[Allowed {
            kind: Kind::Char,
            major: Some(1),
            minor: Some(3),
            access: "rw".into(),
        }]);
        // Six loads, four tests, allow (2), refuse (2).
        assert_eq!(p.len(), 6 + 4 + 2 + 2);
        let tests = &p[6..10];
        assert_eq!(
            tests.iter().map(|i| i.off).collect::<Vec<_>>(),
            [5, 4, 3, 2]
        );
        assert_eq!(tests[1], ins(JMP_JSET_K, 3, 0, 4, 1));
        assert_eq!(
            ins(JMP_JNE_K, 4, 0, 3, 1).bytes(),
            [0x55, 0x04, 3, 0, 1, 0, 0, 0]
        );
    }
}
