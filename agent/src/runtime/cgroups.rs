//! Control groups for containers, v1 and v2. A container's cgroup is
//! `berth/<id>` under each v1 controller it uses (memory, cpu, pids,
//! freezer), or under the v2 unified hierarchy when the controllers live
//! there. Only files are written, so the layout is testable on a plain
//! directory.

use std::fs;
use std::path::{Path, PathBuf};

use super::devices::Policy;

/// The v1 controllers berth uses.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "pids", "freezer", "devices"];

/// Errors of setting up or reading a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy with the {0} controller is mounted")]
    NoController(String),
    #[error("the device policy: {0}")]
    Devices(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Limits a container asks for; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU time per period, in microseconds of a 100 ms period.
    pub cpu_quota_us: Option<u64>,
    pub pids: Option<i64>,
}

/// The CFS period berth uses, as Docker does.
pub const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// `--cpus 1.5` as a quota of the 100 ms period.
    pub fn cpus_to_quota(cpus: f64) -> u64 {
        (cpus * CPU_PERIOD_US as f64).round() as u64
    }
}

/// Which hierarchy the controllers live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One directory per controller under the root (here: /sys/fs/cgroup).
    V1 { root: PathBuf },
    /// The unified hierarchy.
    V2 { root: PathBuf },
}

impl Layout {
    /// Finds the layout under a cgroup mount root: v2 if the root is the
    /// unified hierarchy with the memory controller, v1 otherwise (hybrid
    /// machines keep their controllers in v1).
    pub fn detect(root: &Path) -> Self {
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            Layout::V2 {
                root: root.to_path_buf(),
            }
        } else {
            Layout::V1 {
                root: root.to_path_buf(),
            }
        }
    }

    /// The name the agent reports: "v1" or "v2".
    pub fn version(&self) -> &'static str {
        match self {
            Layout::V1 { .. } => "v1",
            Layout::V2 { .. } => "v2",
        }
    }
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: Layout,
    /// The path under each hierarchy, e.g. `berth/<id>`.
    rel: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

impl Cgroup {
    /// The cgroup of a container, whether or not it exists yet. `rel` must
    /// be relative (runtime-spec cgroupsPath without its leading slash).
    pub fn new(layout: Layout, rel: &Path) -> Self {
        let rel: PathBuf = rel
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        Self { layout, rel }
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match &self.layout {
            Layout::V1 { root } => root.join(controller).join(&self.rel),
            Layout::V2 { root } => root.join(&self.rel),
        }
    }

    /// Creates the cgroup and writes its limits and device policy (the
    /// devices controller on v1, a device program on v2).
    pub fn create(&self, limits: &Limits, devices: &Policy) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { root } => {
                for c in V1_CONTROLLERS {
                    if !root.join(c).exists() {
                        return Err(CgroupError::NoController(c.to_string()));
                    }
                    let d = self.dir(c);
                    fs::create_dir_all(&d).map_err(io_err(&d))?;
                }
                let mem = self.dir("memory");
                if let Some(m) = limits.memory_bytes {
                    write(&mem.join("memory.limit_in_bytes"), &m.to_string())?;
                    // No swap beyond the limit, so that --memory is a limit.
                    let memsw = mem.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &m.to_string())?;
                    }
                }
                let cpu = self.dir("cpu");
                if let Some(q) = limits.cpu_quota_us {
                    write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&cpu.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                if let Some(p) = limits.pids {
                    write(&self.dir("pids").join("pids.max"), &p.to_string())?;
                }
                let dev = self.dir("devices");
                super::devices::write_v1(&dev, devices).map_err(io_err(&dev))?;
            }
            Layout::V2 { root } => {
                // Each level must hand the controllers down to the next.
                let mut dir = root.clone();
                for part in self.rel.components() {
                    let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
                    dir.push(part);
                    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                }
                if let Some(m) = limits.memory_bytes {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                if let Some(q) = limits.cpu_quota_us {
                    write(&dir.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
                }
                if let Some(p) = limits.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
                super::devices::attach_v2(&dir, devices)
                    .map_err(|e| CgroupError::Devices(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup (every controller's, on
    /// v1). The caller must be single-threaded (a child just forked or
    /// cloned). On v1 it writes "0" to each controller's `tasks` file,
    /// which moves the calling thread, and one thread is the whole
    /// process: the kernel then takes no global lock. A move by pid
    /// through `cgroup.procs` takes the threadgroup lock for writing,
    /// which waits for an RCU grace period: 5 to 19 ms on the development
    /// VM, the largest single cost of a container start. On v2 there is
    /// no such file, and it writes "0" to `cgroup.procs`.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { .. } => {
                for c in V1_CONTROLLERS {
                    write(&self.dir(c).join("tasks"), "0")?;
                }
            }
            Layout::V2 { .. } => write(&self.dir("").join("cgroup.procs"), "0")?,
        }
        Ok(())
    }

    /// True if the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match &self.layout {
            Layout::V1 { .. } => (self.dir("memory").join("memory.oom_control"), "oom_kill"),
            Layout::V2 { .. } => (self.dir("").join("memory.events"), "oom_kill"),
        };
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .any(|(k, v)| k == key && v.trim().parse::<u64>().unwrap_or(0) > 0)
    }

    /// Freezes (pause) or thaws (unpause) every process of the cgroup.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 { .. } => write(
                &self.dir("freezer").join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Layout::V2 { .. } => write(
                &self.dir("").join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            ),
        }
    }

    /// The host pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = match &self.layout {
            Layout::V1 { .. } => self.dir("pids"),
            Layout::V2 { .. } => self.dir(""),
        };
        let mut pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Removes the cgroup once its processes are gone.
    pub fn remove(&self) {
        match &self.layout {
            Layout::V1 { .. } => {
                for c in V1_CONTROLLERS {
                    let _ = fs::remove_dir(self.dir(c));
                }
            }
            Layout::V2 { .. } => {
                let _ = fs::remove_dir(self.dir(""));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            fs::create_dir_all(d.path().join(c)).unwrap();
        }
        fs::write(d.path().join("memory/memory.memsw.limit_in_bytes"), "").unwrap();
        d
    }

    #[test]
    fn v1_limits_land_in_each_controller() {
        let root = v1_root();
        let cg = Cgroup::new(
            Layout::V1 {
                root: root.path().into(),
            },
            Path::new("/berth/abc"),
        );
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_quota_us: Some(Limits::cpus_to_quota(0.5)),
            pids: Some(20),
        };
        cg.create(
            &limits,
            &Policy::Allowlist(super::super::devices::docker_defaults()),
        )
        .unwrap();
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("memory/berth/abc/memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu/berth/abc/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/berth/abc/cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids/berth/abc/pids.max"), "20");
        assert_eq!(read("devices/berth/abc/devices.deny"), "a *:* rwm");
        cg.freeze(true).unwrap();
        assert_eq!(read("freezer/berth/abc/freezer.state"), "FROZEN");
        fs::write(
            root.path().join("memory/berth/abc/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        assert!(cg.oom_killed());
    }

    #[test]
    fn v2_limits_land_in_one_directory_with_controllers_handed_down() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let layout = Layout::detect(root.path());
        assert_eq!(layout.version(), "v2");
        let cg = Cgroup::new(layout, Path::new("berth/abc"));
        cg.create(
            &Limits {
                memory_bytes: Some(1 << 20),
                cpu_quota_us: Some(150_000),
                pids: Some(5),
            },
            &Policy::AllowAll,
        )
        .unwrap();
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +cpu +pids");
        assert_eq!(read("berth/cgroup.subtree_control"), "+memory +cpu +pids");
        assert_eq!(read("berth/abc/memory.max"), "1048576");
        assert_eq!(read("berth/abc/cpu.max"), "150000 100000");
        assert_eq!(read("berth/abc/pids.max"), "5");
        cg.freeze(true).unwrap();
        assert_eq!(read("berth/abc/cgroup.freeze"), "1");
        fs::write(
            root.path().join("berth/abc/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(cg.oom_killed());
    }

    #[test]
    fn a_hybrid_machine_uses_v1() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("unified")).unwrap();
        fs::write(root.path().join("unified/cgroup.controllers"), "hugetlb").unwrap();
        assert_eq!(Layout::detect(root.path()).version(), "v1");
    }
}
