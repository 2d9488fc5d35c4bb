//! The runtime-spec `config.json` of a container, built with oci-spec. It
//! is a bundle that runc also accepts: the shim reads nothing else.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::{caps, RuntimeError};

/// What a container runs, resolved from its spec and its image.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub network: NetworkMode,
    pub uid: u32,
    pub gid: u32,
    /// Memory, CPU and pids limits.
    pub limits: super::cgroups::Limits,
    /// The container's cgroup, relative to each hierarchy (`berth/<id>`).
    pub cgroup: String,
    /// Volumes and host paths mounted into the container.
    pub mounts: Vec<BindMount>,
    /// A terminal (run -t), stdin kept open (run -i), and the process held
    /// until the first attachment (run -it, attached).
    pub stdio: Stdio,
    /// Resource limits of the process (--ulimit).
    pub rlimits: Vec<berth_proto::ulimit::Ulimit>,
    /// For a container the cluster may move: the agent's lease file, which
    /// its shim watches (runtime/lease.rs).
    pub lease: Option<std::path::PathBuf>,
    /// Capabilities, devices, seccomp and privileges.
    pub security: Security,
}

/// A container's isolation, resolved by the agent from the run's options.
#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    /// `--privileged`: every capability and device, no seccomp filter, no
    /// masked or read-only paths, /sys writable (Docker's meaning).
    pub privileged: bool,
    /// The capabilities the container keeps (kernel spelling).
    pub capabilities: Vec<String>,
    /// Device nodes made in its /dev (`--device`, or the host's under
    /// `--privileged`).
    pub devices: Vec<LinuxDevice>,
    /// Which devices it may open or make.
    pub device_policy: super::devices::Policy,
    /// Its seccomp filter, resolved for its capabilities (`None`:
    /// unconfined).
    pub seccomp: Option<LinuxSeccomp>,
    /// `--security-opt no-new-privileges`.
    pub no_new_privileges: bool,
    /// `--read-only`: the root filesystem read-only.
    pub read_only: bool,
    /// `--tmpfs` mounts.
    pub tmpfs: Vec<berth_proto::security::Tmpfs>,
}

impl Default for Security {
    /// Docker's defaults: its capabilities, its device list and its
    /// seccomp profile.
    fn default() -> Self {
        let capabilities: Vec<String> = caps::DEFAULT.iter().map(|c| c.to_string()).collect();
        let seccomp = super::seccomp::resolve(
            &super::seccomp::default::profile(),
            &capabilities,
            &super::seccomp::Node::this(),
        )
        .ok();
        Self {
            privileged: false,
            capabilities,
            devices: Vec::new(),
            device_policy: super::devices::Policy::Allowlist(super::devices::docker_defaults()),
            seccomp,
            no_new_privileges: false,
            read_only: false,
            tmpfs: Vec::new(),
        }
    }
}

/// Docker's masked paths: hidden from every unprivileged container.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// How a container's stdio is set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    pub tty: bool,
    pub stdin_open: bool,
    pub wait_for_attach: bool,
}

/// A host directory or file bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: std::path::PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// Where a container's network lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Its own network namespace with only a loopback interface.
    None,
    /// The host's network namespace.
    Host,
}

impl NetworkMode {
    /// Parses the CLI's spelling; empty means the default, `none`.
    pub fn parse(s: &str) -> Result<Self, RuntimeError> {
        match s {
            "" | "none" => Ok(Self::None),
            "host" => Ok(Self::Host),
            other => Err(RuntimeError::Invalid(format!(
                "unknown network {other:?}: use none or host"
            ))),
        }
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The mounts every container gets, in order; /sys is writable only for a
/// privileged one.
pub fn default_mounts(privileged: bool) -> Result<Vec<Mount>, RuntimeError> {
    let sys_options: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", sys_options)?,
    ])
}

fn capability_set(names: &[&str]) -> Result<HashSet<Capability>, RuntimeError> {
    names
        .iter()
        .map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(n.to_string()))
                .map_err(|e| RuntimeError::Invalid(format!("capability {n}: {e}")))
        })
        .collect()
}

/// Each --ulimit name with its runtime-spec type and kernel resource.
const RLIMITS: &[(&str, PosixRlimitType, libc::__rlimit_resource_t)] = &[
    ("as", PosixRlimitType::RlimitAs, libc::RLIMIT_AS),
    ("core", PosixRlimitType::RlimitCore, libc::RLIMIT_CORE),
    ("cpu", PosixRlimitType::RlimitCpu, libc::RLIMIT_CPU),
    ("data", PosixRlimitType::RlimitData, libc::RLIMIT_DATA),
    ("fsize", PosixRlimitType::RlimitFsize, libc::RLIMIT_FSIZE),
    ("locks", PosixRlimitType::RlimitLocks, libc::RLIMIT_LOCKS),
    (
        "memlock",
        PosixRlimitType::RlimitMemlock,
        libc::RLIMIT_MEMLOCK,
    ),
    (
        "msgqueue",
        PosixRlimitType::RlimitMsgqueue,
        libc::RLIMIT_MSGQUEUE,
    ),
    ("nice", PosixRlimitType::RlimitNice, libc::RLIMIT_NICE),
    ("nofile", PosixRlimitType::RlimitNofile, libc::RLIMIT_NOFILE),
    ("nproc", PosixRlimitType::RlimitNproc, libc::RLIMIT_NPROC),
    ("rss", PosixRlimitType::RlimitRss, libc::RLIMIT_RSS),
    ("rtprio", PosixRlimitType::RlimitRtprio, libc::RLIMIT_RTPRIO),
    ("rttime", PosixRlimitType::RlimitRttime, libc::RLIMIT_RTTIME),
    (
        "sigpending",
        PosixRlimitType::RlimitSigpending,
        libc::RLIMIT_SIGPENDING,
    ),
    ("stack", PosixRlimitType::RlimitStack, libc::RLIMIT_STACK),
];

/// A --ulimit as the runtime spec writes it (`RLIMIT_NOFILE`).
fn rlimit(u: &berth_proto::ulimit::Ulimit) -> Result<PosixRlimit, RuntimeError> {
    let (_, typ, _) = RLIMITS
        .iter()
        .find(|(name, _, _)| *name == u.name)
        .ok_or_else(|| RuntimeError::Invalid(format!("unknown ulimit {:?}", u.name)))?;
    Ok(PosixRlimitBuilder::default()
        .typ(*typ)
        .soft(u.soft)
        .hard(u.hard)
        .build()?)
}

/// The kernel resource number of a runtime-spec rlimit, for setrlimit(2).
pub fn rlimit_resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    RLIMITS
        .iter()
        .find(|(_, t, _)| *t == typ)
        .map(|(_, _, r)| *r)
        .expect("RLIMITS lists every PosixRlimitType")
}

/// The kernel number of an oci-spec capability.
pub fn capability_number(c: &Capability) -> Option<u32> {
    let name = serde_json::to_value(c).ok()?;
    caps::number(name.as_str()?)
}

/// Builds the runtime spec of a container whose rootfs is `rootfs`
/// (relative to the bundle, as runc expects).
pub fn build(cfg: &ContainerConfig) -> Result<Spec, RuntimeError> {
    if cfg.args.is_empty() {
        return Err(RuntimeError::Invalid(
            "no command specified: give one after the image, or use an image with a default command".into(),
        ));
    }
    let sec = &cfg.security;
    let names: Vec<&str> = sec.capabilities.iter().map(String::as_str).collect();
    let caps = capability_set(&names)?;
    let process = ProcessBuilder::default()
        .terminal(cfg.stdio.tty)
        .args(cfg.args.clone())
        .env(cfg.env.clone())
        .cwd(if cfg.cwd.is_empty() {
            "/".to_string()
        } else {
            cfg.cwd.clone()
        })
        .user(UserBuilder::default().uid(cfg.uid).gid(cfg.gid).build()?)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()?,
        )
        .no_new_privileges(sec.no_new_privileges)
        .rlimits(
            cfg.rlimits
                .iter()
                .map(rlimit)
                .collect::<Result<Vec<_>, _>>()?,
        )
        .build()?;
    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if cfg.network == NetworkMode::None {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()?;
    let mut resources = LinuxResourcesBuilder::default().devices(sec.device_policy.to_spec()?);
    if let Some(m) = cfg.limits.memory_bytes {
        // Swap equal to the limit: no swap beyond it, as --memory means.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(m as i64)
                .swap(m as i64)
                .build()?,
        );
    }
    if let Some(q) = cfg.limits.cpu_quota_us {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(q as i64)
                .period(super::cgroups::CPU_PERIOD_US)
                .build()?,
        );
    }
    if let Some(p) = cfg.limits.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(format!("/{}", cfg.cgroup.trim_start_matches('/')))
        .masked_paths(if sec.privileged {
            Vec::new()
        } else {
            owned(MASKED_PATHS)
        })
        .readonly_paths(if sec.privileged {
            Vec::new()
        } else {
            owned(READONLY_PATHS)
        })
        .devices(sec.devices.clone());
    let linux = match &sec.seccomp {
        Some(s) => linux.seccomp(s.clone()),
        None => linux,
    }
    .build()?;
    let mut annotations = std::collections::HashMap::new();
    if cfg.stdio.stdin_open {
        annotations.insert(
            super::shim::ANNOTATION_STDIN_OPEN.to_string(),
            "true".to_string(),
        );
    }
    if let Some(lease) = &cfg.lease {
        annotations.insert(
            super::shim::ANNOTATION_LEASE.to_string(),
            lease.display().to_string(),
        );
    }
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .annotations(annotations)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(sec.read_only)
                .build()?,
        )
        .hostname(cfg.hostname.clone())
        .process(process)
        .mounts({
            let mut mounts = default_mounts(sec.privileged)?;
            for m in &cfg.mounts {
                let mut options = vec!["rbind", "rprivate"];
                if m.readonly {
                    options.push("ro");
                }
                mounts.push(mount(
                    &m.destination,
                    "bind",
                    &m.source.display().to_string(),
                    &options,
                )?);
            }
            for t in &sec.tmpfs {
                let options = t.mount_options();
                let options: Vec<&str> = options.iter().map(String::as_str).collect();
                mounts.push(mount(&t.path, "tmpfs", "tmpfs", &options)?);
            }
            mounts
        })
        .linux(linux)
        .build()?)
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Writes the spec into the bundle, readable by root only: it holds the
/// container's environment, secrets included.
pub fn save(spec: &Spec, bundle: &Path) -> Result<(), RuntimeError> {
    let path = super::bundle::config(bundle);
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| RuntimeError::Invalid(format!("config.json: {e}")))?;
    super::bundle::write_private(&path, &json)
        .map_err(|source| RuntimeError::Io { path, source })?;
    // The filter's program beside it, compiled once per distinct filter by
    // this agent, so that the container's start does not compile it.
    if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        super::seccomp::save_program(bundle, s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ContainerConfig {
        ContainerConfig {
            args: vec!["echo".into(), "hello".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            hostname: "box".into(),
            network: NetworkMode::None,
            uid: 0,
            gid: 0,
            limits: Default::default(),
            cgroup: "berth/test".into(),
            mounts: Vec::new(),
            stdio: Stdio::default(),
            rlimits: Vec::new(),
            lease: None,
            security: Security::default(),
        }
    }

    #[test]
    fn every_ulimit_name_has_an_rlimit() {
        for name in berth_proto::ulimit::NAMES {
            assert!(RLIMITS.iter().any(|(n, _, _)| n == name), "{name}");
        }
    }

    #[test]
    fn ulimits_become_spec_rlimits() {
        let mut c = cfg();
        c.rlimits = vec![berth_proto::ulimit::parse("nofile=100:200").unwrap()];
        let spec = build(&c).unwrap();
        let r = &spec.process().as_ref().unwrap().rlimits().clone().unwrap()[0];
        assert_eq!((r.soft(), r.hard()), (100, 200));
        assert_eq!(rlimit_resource(r.typ()), libc::RLIMIT_NOFILE);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("RLIMIT_NOFILE"), "{json}");
    }

    fn namespaces(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    #[test]
    fn the_spec_carries_the_command_and_namespaces() {
        let spec = build(&cfg()).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &vec!["echo".to_string(), "hello".to_string()]
        );
        assert_eq!(p.cwd(), Path::new("/"));
        let ns = namespaces(&spec);
        assert!(ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Pid));
    }

    #[test]
    fn host_network_keeps_the_host_namespace() {
        let mut c = cfg();
        c.network = NetworkMode::Host;
        let spec = build(&c).unwrap();
        let ns = namespaces(&spec);
        assert!(!ns.contains(&LinuxNamespaceType::Network));
    }

    #[test]
    fn an_empty_command_is_refused() {
        let mut c = cfg();
        c.args.clear();
        assert!(build(&c)
            .unwrap_err()
            .to_string()
            .contains("no command specified"));
    }

    #[test]
    fn default_capabilities_map_to_numbers() {
        let spec = build(&cfg()).unwrap();
        let bounding = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert_eq!(bounding.len(), caps::DEFAULT.len());
        assert!(bounding.iter().all(|c| capability_number(c).is_some()));
    }
}
