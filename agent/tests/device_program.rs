//! The cgroup v2 device program (runtime/devices.rs) in this host's kernel:
//! loaded, attached to a fresh cgroup of the unified hierarchy, and obeyed
//! by a process in that cgroup, for open and mknod alike. Runs as root. On
//! a hybrid host the unified hierarchy is mounted beside the v1
//! controllers, and device programs work there as on a pure v2 host (the
//! cgroup v2 guest of chaos-tests checks a whole container there too).

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_agent::runtime::devices::{self, Allowed, Kind, Policy};

/// The unified hierarchy: /sys/fs/cgroup itself on a v2 host, its
/// `unified` directory on a hybrid one.
fn unified_root() -> PathBuf {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if Path::new(p).join("cgroup.procs").exists()
            && Path::new(p).join("cgroup.controllers").exists()
        {
            return PathBuf::from(p);
        }
    }
    panic!("no cgroup v2 hierarchy is mounted on this host");
}

/// A cgroup removed when dropped (once its processes are gone).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs `script` with sh inside the cgroup and returns its stdout.
fn run_in(cg: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs || exit 99\n{script}",
            cg.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_device_program_refuses_every_device_outside_its_list() {
    let root = unified_root();
    let cg = TestCgroup(root.join(format!("berth-device-test-{}", std::process::id())));
    std::fs::create_dir(&cg.0).unwrap();
    let null_only = Policy::Allowlist(vec![
        Allowed {
            kind: Kind::Char,
            major: Some(1),
            minor: Some(3),
            access: "rwm".into(),
        },
        // Read only, without mknod.
        Allowed {
            kind: Kind::Char,
            major: Some(1),
            minor: Some(8),
            access: "r".into(),
        },
    ]);
    devices::attach_v2(&cg.0, &null_only).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().display();
    let verdicts = run_in(
        &cg.0,
        &format!(
            r#"
v() {{ if "$@" >/dev/null 2>&1; then echo "$1 $2 allowed"; else echo "$1 $2 refused"; fi; }}
v cat /dev/null
v head -c1 /dev/zero
v head -c1 /dev/random
v sh -c 'echo x > /dev/random'
v mknod {t}/null c 1 3
v mknod {t}/zero c 1 5
v mknod {t}/random c 1 8
v mknod {t}/loop b 7 0
"#
        ),
    );
    let verdicts: Vec<&str> = verdicts.lines().collect();
    // `v sh -c ...` prints "sh -c"; the write to /dev/random is the one
    // refused (no w).
    assert_eq!(
        verdicts,
        [
            "cat /dev/null allowed",
            "head -c1 refused",
            "head -c1 allowed",
            "sh -c refused",
            &format!("mknod {t}/null allowed"),
            &format!("mknod {t}/zero refused"),
            &format!("mknod {t}/random refused"),
            &format!("mknod {t}/loop refused"),
        ]
    );
    // The same host, outside that cgroup, opens /dev/zero.
    assert!(Command::new("head")
        .args(["-c1", "/dev/zero"])
        .output()
        .unwrap()
        .status
        .success());
}

#[test]
fn allow_all_attaches_nothing() {
    let root = unified_root();
    let cg = TestCgroup(root.join(format!("berth-device-all-{}", std::process::id())));
    std::fs::create_dir(&cg.0).unwrap();
    devices::attach_v2(&cg.0, &Policy::AllowAll).unwrap();
    assert_eq!(run_in(&cg.0, "head -c1 /dev/zero | wc -c").trim(), "1");
}
