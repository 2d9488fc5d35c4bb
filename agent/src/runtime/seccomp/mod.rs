//! Seccomp: which syscalls a container may make. A profile in Docker's
//! format (the default one in [`default`], or the user's) is resolved for
//! the container's capabilities, the node's architecture and its kernel
//! into the runtime-spec `linux.seccomp` of config.json ([`resolve`]), as
//! dockerd does for runc. libseccomp compiles that into a BPF program
//! ([`compile`], [`Filter::export`]): the agent does it once per distinct
//! filter and keeps the program beside config.json ([`save_program`], a
//! digest of the filter it was made from first), so that a container's
//! start does not pay for it; the shim takes the program from the bundle
//! (compiling only if it is missing or was made from another filter,
//! [`program_for`]), and the container's init loads it with seccomp(2) as
//! its last step before exec ([`Program::load`]); the exec shim does the
//! same for `berth exec`.

pub mod default;

use berth_proto::security::seccomp::{kernel_version, Profile, Rule};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Value};

/// Errors of resolving or compiling a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile: {0}")]
    Profile(String),
    #[error("seccomp: {what}: {source}")]
    Library {
        what: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: loading the filter: {0}")]
    Load(nix::Error),
}

/// The node a profile is resolved for.
#[derive(Debug, Clone)]
pub struct Node {
    /// Go's name of the native architecture (`amd64`, `arm64`).
    pub arch: &'static str,
    /// The kernel's (major, minor) version.
    pub kernel: (u32, u32),
}

impl Node {
    /// This machine.
    pub fn this() -> Self {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            arch: go_arch(std::env::consts::ARCH),
            kernel: kernel_version(&release).unwrap_or((0, 0)),
        }
    }
}

/// Go's architecture name, as profiles' `arches` filters spell it.
fn go_arch(rust: &str) -> &'static str {
    match rust {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64" => "mips64",
        _ => "unknown",
    }
}

/// libseccomp's name of a native architecture.
fn scmp_arch(go: &str) -> Option<&'static str> {
    Some(match go {
        "amd64" => "SCMP_ARCH_X86_64",
        "386" => "SCMP_ARCH_X86",
        "arm64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "ppc64le" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "mips64" => "SCMP_ARCH_MIPS64",
        _ => return None,
    })
}

/// Resolves a profile for a container holding `caps` (kernel spelling) on
/// `node`: the rules whose includes hold and whose excludes do not, with
/// the architectures of the node's entry in the profile's archMap.
pub fn resolve(
    profile: &Profile,
    caps: &[String],
    node: &Node,
) -> Result<LinuxSeccomp, SeccompError> {
    let mut architectures = profile.architectures.clone();
    if let Some(native) = scmp_arch(node.arch) {
        if let Some(m) = profile.arch_map.iter().find(|m| m.architecture == native) {
            architectures.push(m.architecture.clone());
            architectures.extend(m.sub_architectures.iter().cloned());
        }
    }
    let has = |c: &String| caps.contains(c);
    let kernel_at_least = |v: &Option<String>| match v.as_deref().and_then(kernel_version) {
        Some(min) => node.kernel >= min,
        None => true,
    };
    let applies = |r: &Rule| {
        let inc = &r.includes;
        let exc = &r.excludes;
        let included = (inc.arches.is_empty() || inc.arches.iter().any(|a| a == node.arch))
            && inc.caps.iter().all(has)
            && kernel_at_least(&inc.min_kernel);
        let excluded = exc.arches.iter().any(|a| a == node.arch)
            || exc.caps.iter().any(has)
            || (exc.min_kernel.is_some() && kernel_at_least(&exc.min_kernel));
        included && !excluded
    };
    let syscalls: Vec<Value> = profile
        .syscalls
        .iter()
        .filter(|r| applies(r))
        .map(|r| {
            let names: Vec<String> = match &r.name {
                Some(n) => vec![n.clone()],
                None => r.names.clone(),
            };
            let mut s = json!({ "names": names, "action": r.action });
            if let Some(e) = r.errno_ret {
                s["errnoRet"] = json!(e);
            }
            if !r.args.is_empty() {
                s["args"] = json!(r
                    .args
                    .iter()
                    .map(|a| json!({"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op}))
                    .collect::<Vec<_>>());
            }
            s
        })
        .collect();
    let mut out = json!({
        "defaultAction": profile.default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(e) = profile.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    serde_json::from_value(out).map_err(|e| SeccompError::Profile(e.to_string()))
}

/// A compiled filter, ready to load.
pub struct Filter(ScmpFilterContext);

fn lib(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Library { what, source }
}

/// The wire spelling of an oci-spec enum (`SCMP_ACT_ALLOW`).
fn spelling<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    // EPERM when a profile names no errno, as runc does.
    let errno = Some(errno.unwrap_or(libc::EPERM as u32) as i32);
    ScmpAction::from_str(name, errno).map_err(lib(format!("action {name}")))
}

/// Compiles config.json's `linux.seccomp`. Syscall names this libseccomp
/// does not know are skipped, as runc skips them; a rule whose action is
/// the default's adds nothing and is skipped too.
pub fn compile(s: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    let default = action(&spelling(&s.default_action()), s.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new_filter(default).map_err(lib("creating the filter"))?;
    // No no_new_privs as a side effect of loading: that is
    // --security-opt no-new-privileges, set by the caller when asked.
    ctx.set_ctl_nnp(false)
        .map_err(lib("clearing the NNP attribute"))?;
    for a in s.architectures().clone().unwrap_or_default() {
        let name = spelling(&a);
        let arch: ScmpArch = name.parse().map_err(lib(format!("architecture {name}")))?;
        ctx.add_arch(arch)
            .map_err(lib(format!("adding architecture {name}")))?;
    }
    for rule in s.syscalls().clone().unwrap_or_default() {
        let act = action(&spelling(&rule.action()), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let args = rule.args().clone().unwrap_or_default();
        let mut conditions = Vec::new();
        for a in &args {
            let datum = a.value_two().unwrap_or(0);
            let op = match spelling(&a.op()).as_str() {
                "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
                "SCMP_CMP_LT" => ScmpCompareOp::Less,
                "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
                "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
                "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
                "SCMP_CMP_GT" => ScmpCompareOp::Greater,
                "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(a.value()),
                other => return Err(SeccompError::Profile(format!("unknown op {other}"))),
            };
            let value = if matches!(op, ScmpCompareOp::MaskedEqual(_)) {
                datum
            } else {
                a.value()
            };
            conditions.push(ScmpArgCompare::new(a.index() as u32, op, value));
        }
        // Conditions on distinct arguments must all hold (one rule); two on
        // the same argument are alternatives (a rule each), as runc reads
        // them.
        let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indices.sort_unstable();
        let repeated = indices.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let what = || format!("rule for {name}");
            if conditions.is_empty() {
                ctx.add_rule(act, syscall).map_err(lib(what()))?;
            } else if repeated {
                for c in &conditions {
                    ctx.add_rule_conditional(act, syscall, std::slice::from_ref(c))
                        .map_err(lib(what()))?;
                }
            } else {
                ctx.add_rule_conditional(act, syscall, &conditions)
                    .map_err(lib(what()))?;
            }
        }
    }
    Ok(Filter(ctx))
}

impl Filter {
    /// The BPF program libseccomp generates for the filter.
    pub fn export(&self) -> Result<Program, SeccompError> {
        use std::io::{Read, Seek};
        let mut f = tempfile::tempfile().map_err(|e| SeccompError::Profile(e.to_string()))?;
        self.0
            .export_bpf(&mut f)
            .map_err(lib("exporting the program"))?;
        let mut bytes = Vec::new();
        f.rewind()
            .and_then(|()| f.read_to_end(&mut bytes))
            .map_err(|e| SeccompError::Profile(e.to_string()))?;
        Program::from_bytes(&bytes)
    }
}

/// A compiled filter as the kernel takes it: libseccomp's BPF program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program(Vec<[u8; 8]>);

impl Program {
    fn from_bytes(bytes: &[u8]) -> Result<Self, SeccompError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(8) || bytes.len() / 8 > u16::MAX as usize
        {
            return Err(SeccompError::Profile(format!(
                "a BPF program of {} bytes is not one",
                bytes.len()
            )));
        }
        Ok(Self(
            bytes
                .chunks_exact(8)
                .map(|c| c.try_into().unwrap_or([0; 8]))
                .collect(),
        ))
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.concat()
    }

    /// Loads the program into this process (and every child it makes).
    /// Without no_new_privs this needs CAP_SYS_ADMIN, so the init calls
    /// it before it drops to the container's user.
    pub fn load(&self) -> Result<(), SeccompError> {
        let filter: Vec<libc::sock_filter> = self
            .0
            .iter()
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: seccomp(2) SECCOMP_SET_MODE_FILTER reads the sock_fprog
        // and the `len` instructions it points to, both alive for the
        // call; the kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Load(nix::Error::last()));
        }
        Ok(())
    }
}

/// The file beside config.json that holds the compiled program.
pub const PROGRAM_FILE: &str = "seccomp.bpf";

/// What a program file was made from: the SHA-256 of the filter's JSON.
fn digest(s: &LinuxSeccomp) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(serde_json::to_vec(s).unwrap_or_default()).into()
}

/// The program of a filter, compiled once per distinct filter in this
/// process (the agent's cache).
pub fn program(s: &LinuxSeccomp) -> Result<std::sync::Arc<Program>, SeccompError> {
    program_by(s, digest(s))
}

fn program_by(s: &LinuxSeccomp, key: [u8; 32]) -> Result<std::sync::Arc<Program>, SeccompError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Arc<Program>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let p = Arc::new(compile(s)?.export()?);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    // A handful of distinct filters is the rule (Docker's default for
    // each capability set); a flood of custom ones is not kept forever.
    if cache.len() >= 256 {
        cache.clear();
    }
    cache.insert(key, p.clone());
    Ok(p)
}

/// Writes the program of `s` into the bundle (root only, as config.json).
pub fn save_program(bundle: &std::path::Path, s: &LinuxSeccomp) -> Result<(), SeccompError> {
    // One serialization and hash of the filter per container start: the
    // cache's key is the file's header.
    let key = digest(s);
    let mut out = key.to_vec();
    out.extend(program_by(s, key)?.bytes());
    crate::runtime::bundle::write_private(&bundle.join(PROGRAM_FILE), &out)
        .map_err(|e| SeccompError::Profile(format!("{PROGRAM_FILE}: {e}")))
}

/// The program for the bundle's filter `s`: the one the agent saved if it
/// was made from this very filter, compiled here otherwise.
pub fn program_for(bundle: &std::path::Path, s: &LinuxSeccomp) -> Result<Program, SeccompError> {
    if let Ok(saved) = std::fs::read(bundle.join(PROGRAM_FILE)) {
        if saved.len() > 32 && saved[..32] == digest(s) {
            if let Ok(p) = Program::from_bytes(&saved[32..]) {
                return Ok(p);
            }
        }
    }
    compile(s)?.export()
}

/// Sets no_new_privs on this process: exec gains nothing from setuid bits
/// or file capabilities.
pub fn set_no_new_privileges() -> Result<(), nix::Error> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            arch: "amd64",
            kernel: (6, 1),
        }
    }

    fn names(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter(|r| spelling(&r.action()) == "SCMP_ACT_ALLOW")
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn the_default_profile_follows_the_container_capabilities() {
        let defaults: Vec<String> = berth_proto::security::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let s = resolve(&default::profile(), &defaults, &node()).unwrap();
        let allowed = names(&s);
        for n in [
            "read",
            "execve",
            "arch_prctl",
            "chroot",
            "ptrace",
            "clone",
            "socket",
        ] {
            assert!(allowed.contains(&n.to_string()), "{n} allowed");
        }
        for n in [
            "mount",
            "unshare",
            "reboot",
            "init_module",
            "open_by_handle_at",
            "keyctl",
            "clock_settime",
            "swapon",
            "set_tls",
        ] {
            assert!(!allowed.contains(&n.to_string()), "{n} refused");
        }
        let arches: Vec<String> = s
            .architectures()
            .clone()
            .unwrap()
            .iter()
            .map(spelling)
            .collect();
        assert_eq!(
            arches,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        let clone3 = s
            .syscalls()
            .clone()
            .unwrap()
            .into_iter()
            .find(|r| r.names() == &["clone3".to_string()])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(38));

        let mut admin = defaults.clone();
        admin.push("CAP_SYS_ADMIN".into());
        let s = resolve(&default::profile(), &admin, &node()).unwrap();
        let allowed = names(&s);
        assert!(allowed.contains(&"mount".to_string()));
        assert!(!s
            .syscalls()
            .clone()
            .unwrap()
            .iter()
            .any(|r| r.names() == &["clone3".to_string()]));
        let old = Node {
            arch: "amd64",
            kernel: (4, 4),
        };
        assert!(
            !names(&resolve(&default::profile(), &defaults, &old).unwrap())
                .contains(&"ptrace".to_string())
        );
    }

    #[test]
    fn resolved_profiles_compile() {
        let s = resolve(&default::profile(), &[], &node()).unwrap();
        compile(&s).unwrap();
        let user = Profile::parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","no_such_call"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":511,"op":"SCMP_CMP_EQ"}]}]}"#).unwrap();
        compile(&resolve(&user, &[], &node()).unwrap()).unwrap();
    }

    /// The program the agent saves is the one the shim loads, and loaded
    /// with seccomp(2) it refuses what the profile refuses: here, in a
    /// forked child, Docker's default profile without CAP_SYS_ADMIN
    /// answers unshare of a mount namespace with EPERM, and a plain
    /// syscall still works.
    #[test]
    fn the_saved_program_is_loaded_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let defaults: Vec<String> = berth_proto::security::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let s = resolve(&default::profile(), &defaults, &Node::this()).unwrap();
        save_program(dir.path(), &s).unwrap();
        let saved = program_for(dir.path(), &s).unwrap();
        assert_eq!(saved, *program(&s).unwrap());
        // A program saved for another filter is not taken for this one.
        let mut other = s.clone();
        other.set_default_errno_ret(Some(7));
        let recompiled = program_for(dir.path(), &other).unwrap();
        assert_eq!(recompiled, compile(&other).unwrap().export().unwrap());

        // SAFETY: fork(2) in a test: the child only makes syscalls and
        // exits with a code; it touches no lock another thread may hold.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = if set_no_new_privileges().is_err() || saved.load().is_err() {
                    10
                } else if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                    != Err(nix::Error::EPERM)
                {
                    11
                } else if nix::unistd::getpid().as_raw() <= 0 {
                    12
                } else {
                    0
                };
                // SAFETY: _exit(2) ends the child at once, running no
                // destructor of the parent's state.
                unsafe { libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
