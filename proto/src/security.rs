//! A container's isolation settings as `run` spells them: capabilities
//! (`--cap-add`, `--cap-drop`), devices (`--device`) and security options
//! (`--security-opt seccomp=...`, `no-new-privileges`). The server parses
//! them to refuse a bad one before it is stored; the agent parses them
//! again to write config.json.

use serde::{Deserialize, Serialize};

/// Every capability the kernel numbers, in number order.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities Docker leaves a container by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// `--cap-add`/`--cap-drop` value meaning every capability.
pub const ALL: &str = "ALL";

/// A capability as Docker takes it (`net_admin`, `NET_ADMIN` or
/// `CAP_NET_ADMIN`), in the kernel's spelling; `ALL` stays `ALL`.
pub fn capability(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == ALL {
        return Ok(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(format!("unknown capability: {name:?}"))
    }
}

/// The capabilities a container keeps, as Docker computes them: every
/// one under `privileged`; otherwise the default set less `drop`, plus
/// `add`, where `ALL` in `add` starts from every capability and `ALL` in
/// `drop` from none. Names must already be in the kernel's spelling.
pub fn effective_capabilities(privileged: bool, add: &[String], drop: &[String]) -> Vec<String> {
    let has_all = |v: &[String]| v.iter().any(|c| c == ALL);
    let mut caps: Vec<String> = if privileged || has_all(add) {
        CAPABILITIES
            .iter()
            .filter(|c| privileged || !drop.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .collect()
    } else if has_all(drop) {
        add.to_vec()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter(|c| !drop.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .chain(add.iter().cloned())
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    caps.retain(|c| c != ALL && seen.insert(c.clone()));
    caps
}

/// `--device HOST[:CONTAINER][:PERMISSIONS]`: a host device node made in
/// the container, with read, write and mknod permissions (`rwm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping {
    pub host: String,
    pub container: String,
    pub permissions: String,
}

impl DeviceMapping {
    /// Parses a `--device` value; the error names what was wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid device {s:?}: {why}"));
        let parts: Vec<&str> = s.split(':').collect();
        let is_permissions =
            |p: &str| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| "rwm".contains(c));
        let (host, container, permissions) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, p] if is_permissions(p) => (*h, *h, *p),
            [h, c] => (*h, *c, "rwm"),
            [h, c, p] => (*h, *c, *p),
            _ => return bad("use HOST[:CONTAINER][:rwm]"),
        };
        for (what, path) in [("host", host), ("container", container)] {
            if !path.starts_with('/') {
                return bad(&format!("the {what} path must be absolute"));
            }
            if path.split('/').any(|c| c == "..") {
                return bad(&format!("the {what} path climbs out with .."));
            }
        }
        if !is_permissions(permissions) {
            return bad("permissions are r, w and m, for example rw");
        }
        Ok(Self {
            host: host.to_string(),
            container: container.to_string(),
            permissions: permissions.to_string(),
        })
    }
}

/// `--tmpfs PATH[:OPTIONS]`: a tmpfs mounted in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub path: String,
    /// The options given, in order (Docker's spelling: `size=64m`,
    /// `mode=1777`, `exec`, `ro`...).
    pub options: Vec<String>,
}

/// The tmpfs options `--tmpfs` takes: flags, and KEY=VALUE for these keys.
const TMPFS_FLAGS: &[&str] = &[
    "ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev",
];
const TMPFS_KEYS: &[&str] = &["size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"];

impl Tmpfs {
    /// Parses a `--tmpfs` value; the error names what was wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: String| Err(format!("invalid --tmpfs {s:?}: {why}"));
        let (path, opts) = s.split_once(':').unwrap_or((s, ""));
        if !path.starts_with('/') || path == "/" {
            return bad("the path must be absolute, and not /".into());
        }
        if path.split('/').any(|c| c == "..") {
            return bad("the path climbs out with ..".into());
        }
        let mut options = Vec::new();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            let known = match o.split_once('=') {
                Some((k, v)) => {
                    TMPFS_KEYS.contains(&k)
                        && !v.is_empty()
                        && v.chars().all(|c| c.is_ascii_alphanumeric())
                }
                None => TMPFS_FLAGS.contains(&o),
            };
            if !known {
                return bad(format!(
                    "unknown option {o:?} (known: {}, and {}=VALUE)",
                    TMPFS_FLAGS.join(", "),
                    TMPFS_KEYS.join("=, ")
                ));
            }
            options.push(o.to_string());
        }
        Ok(Self {
            path: path.to_string(),
            options,
        })
    }

    /// The runtime-spec mount options: Docker's noexec, nosuid and nodev
    /// unless the options lift them, then the rest.
    pub fn mount_options(&self) -> Vec<String> {
        let mut out: Vec<String> = ["noexec", "nosuid", "nodev"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for o in &self.options {
            match o.as_str() {
                "exec" | "suid" | "dev" => out.retain(|x| x != &format!("no{o}")),
                "noexec" | "nosuid" | "nodev" => {}
                other => out.push(other.to_string()),
            }
        }
        out
    }
}

/// One `--security-opt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOpt {
    /// `seccomp=unconfined`: no seccomp filter.
    SeccompUnconfined,
    /// `seccomp=PROFILE`: the profile's JSON (the CLI reads the file and
    /// sends its text, as Docker's does).
    SeccompProfile(String),
    /// `no-new-privileges[=true|false]`: exec can gain no privilege
    /// (setuid bits and file capabilities do nothing).
    NoNewPrivileges(bool),
}

impl SecurityOpt {
    /// Parses one option (`KEY=VALUE` or Docker's older `KEY:VALUE`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None if s == "no-new-privileges" => (s, None),
            None => match s.split_once(':') {
                Some((k, v)) => (k, Some(v)),
                None => (s, None),
            },
        };
        match (key, value) {
            ("seccomp", Some("unconfined")) => Ok(Self::SeccompUnconfined),
            ("seccomp", Some(profile)) if !profile.is_empty() => {
                seccomp::Profile::parse(profile)?;
                Ok(Self::SeccompProfile(profile.to_string()))
            }
            ("no-new-privileges", None | Some("true")) => Ok(Self::NoNewPrivileges(true)),
            ("no-new-privileges", Some("false")) => Ok(Self::NoNewPrivileges(false)),
            ("no-new-privileges", Some(v)) => Err(format!(
                "invalid --security-opt no-new-privileges={v}: use true or false"
            )),
            ("apparmor" | "label", _) => Err(format!(
                "invalid --security-opt {s:?}: this node has no AppArmor or SELinux support in berth"
            )),
            _ => Err(format!(
                "invalid --security-opt {s:?}: use seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges"
            )),
        }
    }
}

/// Docker's seccomp profile format (`docker run --security-opt
/// seccomp=profile.json`): a default action, architectures, and rules
/// that may apply only with some capabilities, architectures or kernels.
pub mod seccomp {
    use super::*;

    /// The actions a rule or the default may take.
    pub const ACTIONS: &[&str] = &[
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
    ];

    /// The comparisons of an argument condition.
    pub const OPERATORS: &[&str] = &[
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    ];

    /// A whole profile.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Profile {
        pub default_action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub default_errno_ret: Option<u32>,
        /// libseccomp architecture names (`SCMP_ARCH_X86_64`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub architectures: Vec<String>,
        /// Per native architecture, the others its processes may use.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub arch_map: Vec<ArchMap>,
        #[serde(default)]
        pub syscalls: Vec<Rule>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ArchMap {
        pub architecture: String,
        #[serde(default, deserialize_with = "null_is_empty")]
        pub sub_architectures: Vec<String>,
    }

    /// One rule: an action for some syscalls, under conditions.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Rule {
        /// Docker's older single-name form.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        #[serde(default, deserialize_with = "null_is_empty")]
        pub names: Vec<String>,
        pub action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub errno_ret: Option<u32>,
        #[serde(default, deserialize_with = "null_is_empty")]
        pub args: Vec<Arg>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub comment: Option<String>,
        /// The rule applies only if all of these hold.
        #[serde(default)]
        pub includes: Filter,
        /// The rule does not apply if any of these holds.
        #[serde(default)]
        pub excludes: Filter,
    }

    /// An argument condition.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Arg {
        pub index: u32,
        pub value: u64,
        #[serde(default)]
        pub value_two: u64,
        pub op: String,
    }

    /// Conditions on the container and its node.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Filter {
        /// Go's architecture names (`amd64`, `arm64`, `x86`, `x32`).
        #[serde(default, deserialize_with = "null_is_empty")]
        pub arches: Vec<String>,
        /// Capabilities the container has.
        #[serde(default, deserialize_with = "null_is_empty")]
        pub caps: Vec<String>,
        /// The node's kernel is at least this version (`4.8`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub min_kernel: Option<String>,
    }

    fn null_is_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }

    impl Profile {
        /// Reads and checks a profile; the error names the rule and field
        /// that are wrong.
        pub fn parse(json: &str) -> Result<Self, String> {
            let p: Profile =
                serde_json::from_str(json).map_err(|e| format!("invalid seccomp profile: {e}"))?;
            p.check()?;
            Ok(p)
        }

        fn check(&self) -> Result<(), String> {
            let bad = |why: String| Err(format!("invalid seccomp profile: {why}"));
            if !ACTIONS.contains(&self.default_action.as_str()) {
                return bad(format!(
                    "unknown defaultAction {:?} (known: {})",
                    self.default_action,
                    ACTIONS.join(", ")
                ));
            }
            if !self.architectures.is_empty() && !self.arch_map.is_empty() {
                return bad("give architectures or archMap, not both".into());
            }
            for (i, r) in self.syscalls.iter().enumerate() {
                let at = format!("syscalls[{i}]");
                if r.names.is_empty() && r.name.as_deref().unwrap_or("").is_empty() {
                    return bad(format!("{at} names no syscall"));
                }
                if r.name.is_some() && !r.names.is_empty() {
                    return bad(format!("{at} has both name and names"));
                }
                if !ACTIONS.contains(&r.action.as_str()) {
                    return bad(format!("{at}: unknown action {:?}", r.action));
                }
                for a in &r.args {
                    if a.index > 5 {
                        return bad(format!(
                            "{at}: argument index {} (a syscall has 6, from 0)",
                            a.index
                        ));
                    }
                    if !OPERATORS.contains(&a.op.as_str()) {
                        return bad(format!("{at}: unknown op {:?}", a.op));
                    }
                }
                for f in [&r.includes, &r.excludes] {
                    for c in &f.caps {
                        capability(c).map_err(|e| format!("invalid seccomp profile: {at}: {e}"))?;
                    }
                    if let Some(k) = &f.min_kernel {
                        kernel_version(k).ok_or_else(|| {
                            format!("invalid seccomp profile: {at}: minKernel {k:?} is not a version like 4.8")
                        })?;
                    }
                }
            }
            Ok(())
        }
    }

    /// `5.10.0-32-amd64` or `4.8` as (major, minor).
    pub fn kernel_version(s: &str) -> Option<(u32, u32)> {
        let mut parts = s.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().unwrap_or("0").parse().ok()?;
        Some((major, minor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_take_docker_spellings() {
        assert_eq!(capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability("CAP_SYS_ADMIN").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(capability("all").unwrap(), "ALL");
        assert!(capability("CAP_FLY").unwrap_err().contains("CAP_FLY"));
        assert!(DEFAULT_CAPABILITIES
            .iter()
            .all(|c| CAPABILITIES.contains(c)));
    }

    #[test]
    fn effective_capabilities_follow_docker() {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            effective_capabilities(false, &[], &[]).len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert!(effective_capabilities(false, &[], &s(&["ALL"])).is_empty());
        assert_eq!(
            effective_capabilities(false, &s(&["CAP_NET_ADMIN"]), &s(&["ALL"])),
            s(&["CAP_NET_ADMIN"])
        );
        let all_but = effective_capabilities(false, &s(&["ALL"]), &s(&["CAP_SYS_ADMIN"]));
        assert_eq!(all_but.len(), CAPABILITIES.len() - 1);
        assert!(!all_but.contains(&"CAP_SYS_ADMIN".to_string()));
        let dropped = effective_capabilities(false, &s(&["CAP_SYS_TIME"]), &s(&["CAP_CHOWN"]));
        assert!(dropped.contains(&"CAP_SYS_TIME".to_string()));
        assert!(!dropped.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(
            effective_capabilities(true, &[], &s(&["CAP_CHOWN"])).len(),
            CAPABILITIES.len()
        );
    }

    #[test]
    fn devices_parse_as_docker_spells_them() {
        let d = DeviceMapping::parse("/dev/fuse").unwrap();
        assert_eq!(
            (d.container.as_str(), d.permissions.as_str()),
            ("/dev/fuse", "rwm")
        );
        let d = DeviceMapping::parse("/dev/sda:/dev/xvda:r").unwrap();
        assert_eq!(
            (
                d.host.as_str(),
                d.container.as_str(),
                d.permissions.as_str()
            ),
            ("/dev/sda", "/dev/xvda", "r")
        );
        let d = DeviceMapping::parse("/dev/null:rw").unwrap();
        assert_eq!(
            (d.container.as_str(), d.permissions.as_str()),
            ("/dev/null", "rw")
        );
        assert!(DeviceMapping::parse("dev/fuse")
            .unwrap_err()
            .contains("absolute"));
        assert!(DeviceMapping::parse("/dev/a:/dev/b:rwx")
            .unwrap_err()
            .contains("permissions"));
        assert!(DeviceMapping::parse("/dev/a:/dev/../etc:r")
            .unwrap_err()
            .contains(".."));
    }

    #[test]
    fn tmpfs_options_are_dockers() {
        let t = Tmpfs::parse("/run:size=64m,mode=1777,exec").unwrap();
        assert_eq!(t.path, "/run");
        assert_eq!(
            t.mount_options(),
            ["nosuid", "nodev", "size=64m", "mode=1777"]
        );
        assert_eq!(
            Tmpfs::parse("/tmp").unwrap().mount_options(),
            ["noexec", "nosuid", "nodev"]
        );
        assert!(Tmpfs::parse("run").unwrap_err().contains("absolute"));
        assert!(Tmpfs::parse("/run:size=1m,loud")
            .unwrap_err()
            .contains("\"loud\""));
        assert!(Tmpfs::parse("/run:size=1m,,uid=a/b")
            .unwrap_err()
            .contains("uid=a/b"));
    }

    #[test]
    fn security_options_parse_and_profiles_are_checked() {
        assert_eq!(
            SecurityOpt::parse("seccomp=unconfined").unwrap(),
            SecurityOpt::SeccompUnconfined
        );
        assert_eq!(
            SecurityOpt::parse("no-new-privileges").unwrap(),
            SecurityOpt::NoNewPrivileges(true)
        );
        assert_eq!(
            SecurityOpt::parse("no-new-privileges:false").unwrap(),
            SecurityOpt::NoNewPrivileges(false)
        );
        let ok = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO","args":null,"includes":{"minKernel":"4.8"}}]}"#;
        assert!(matches!(
            SecurityOpt::parse(&format!("seccomp={ok}")).unwrap(),
            SecurityOpt::SeccompProfile(_)
        ));
        let bad_action = r#"{"defaultAction":"SCMP_ACT_MAYBE","syscalls":[]}"#;
        assert!(SecurityOpt::parse(&format!("seccomp={bad_action}"))
            .unwrap_err()
            .contains("SCMP_ACT_MAYBE"));
        let bad_index = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#;
        assert!(SecurityOpt::parse(&format!("seccomp={bad_index}"))
            .unwrap_err()
            .contains("syscalls[0]: argument index 9"));
        assert!(SecurityOpt::parse("seccomp={")
            .unwrap_err()
            .contains("invalid seccomp profile"));
        assert!(SecurityOpt::parse("label=disable").is_err());
        assert!(SecurityOpt::parse("bogus").unwrap_err().contains("bogus"));
        assert_eq!(seccomp::kernel_version("6.1.0-28-amd64"), Some((6, 1)));
    }
}
