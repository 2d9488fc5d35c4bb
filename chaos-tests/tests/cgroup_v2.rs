//! The limits of issue 4 on a cgroup v2 kernel. This host's memory, cpu
//! and pids controllers are bound to v1 and cannot move, so the test boots
//! Debian's kernel under qemu with only the unified hierarchy mounted and
//! runs a real one-node berth cluster in it (berth_chaos::vm).

use std::time::Duration;

use anyhow::ensure;
use berth_chaos::vm;

/// Runs inside the guest once the node is ready and busybox is imported.
/// Each finding is one `check KEY VALUE` line.
const CHECKS: &str = r#"
cg() { echo "/sys/fs/cgroup/berth/$(berth inspect "$1" | grep -m 1 '"Id"' | cut -d '"' -f 4)/"; }
wait_for() { # wait_for SECONDS COMMAND...: polls until the command succeeds
    n=$(($1 * 10)); shift
    while ! "$@" >/dev/null 2>&1; do
        n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 0.1
    done
}
check layout "$(berth node ls | awk '$1 == "vm" {print $7}')"

# --memory: the kernel's OOM killer ends the container; berth says so.
berth run --name oom -m 32m busybox sh -c 'x=aaaaaaaa; while true; do x="$x$x"; done'
check oom_exit $?
check oom_killed "$(berth inspect oom | grep -o '"OOMKilled": [a-z]*' | awk '{print $2}')"
berth rm oom >/dev/null

# --pids-limit: a fork bomb is held at the limit.
# The inner shell dies at the first refused fork; the outer one stays.
berth run -d --name bomb --pids-limit 10 busybox sh -c "sh -c 'for i in \$(seq 1 30); do sleep 30 & done' 2>/dev/null; sleep 60" >/dev/null
d=$(cg bomb)
check pids_max "$(cat ${d}pids.max)"
wait_for 30 grep -qv '^max 0$' ${d}pids.events
check pids_events "$(cat ${d}pids.events)"
check pids_current_at_most_10 "$([ "$(cat ${d}pids.current)" -le 10 ] && echo yes || echo no)"
berth rm -f bomb >/dev/null

# --memory and --cpus as v2 files; the quota throttles a busy loop.
berth run -d --name spin -m 64m --cpus 0.2 busybox sh -c 'while :; do :; done' >/dev/null
d=$(cg spin)
check memory_max "$(cat ${d}memory.max)"
check cpu_max "$(cat ${d}cpu.max)"
throttled() { [ "$(awk '$1 == "nr_throttled" {print $2}' ${d}cpu.stat)" -gt 0 ]; }
wait_for 30 throttled
check cpu_throttled "$(awk '$1 == "nr_throttled" {print $2}' ${d}cpu.stat)"

# pause: cgroup.freeze; the kernel reports the group frozen.
berth pause spin >/dev/null
frozen() { grep -q '^frozen 1$' ${d}cgroup.events; }
wait_for 30 frozen
check paused_events "$(grep frozen ${d}cgroup.events)"
check paused_status "$(berth ps --filter name=spin --format '{{.Status}}' | awk '{print $NF}')"
berth unpause spin >/dev/null
thawed() { grep -q '^frozen 0$' ${d}cgroup.events; }
wait_for 30 thawed
check unpaused_events "$(grep frozen ${d}cgroup.events)"
berth rm -f spin >/dev/null

# Devices: the cgroup's device program lets the container use /dev/null and
# /dev/zero, and refuses the mknod and open of any other device.
check dev_verdicts "$(berth run --rm busybox sh -c '
r=""; v() { if "$@" >/dev/null 2>&1; then r="$r $1:allowed"; else r="$r $1:refused"; fi; }
v cat /dev/null; v head -c1 /dev/zero; v mknod /tmp/loop b 7 0; v mknod /tmp/fuse c 10 229; echo $r' 2>&1)"
check dev_privileged "$(berth run --rm --privileged busybox sh -c 'mknod /tmp/loop b 7 0 && echo allowed' 2>&1)"
check cgroups_left "$(find /sys/fs/cgroup/berth -mindepth 1 -maxdepth 1 -type d | wc -l)"
"#;

#[test]
fn limits_hold_on_a_cgroup_v2_kernel() {
    let run = || -> anyhow::Result<()> {
        let bin = berth_chaos::cluster::bin_dir()?;
        let work = tempfile::tempdir_in("/var/tmp")?;
        let tar = work.path().join("busybox.tar");
        berth_chaos::images::busybox_rootfs_tar(&tar)?;
        let g = vm::run_guest(&bin, &tar, CHECKS, Duration::from_secs(420))?;
        let console = || vm::tail(&g.console, 80);
        ensure!(g.check("done")? == "yes", "{}", console());
        // The guest's kernel has cgroup v2 alone, with the controllers.
        ensure!(g.check("cgroupfs")? == "cgroup2", "{}", console());
        for c in ["memory", "cpu", "pids"] {
            ensure!(
                g.check("root_controllers")?.split(' ').any(|x| x == c),
                "no {c} controller in v2: {}",
                console()
            );
        }
        ensure!(g.check("layout")? == "v2", "{}", console());
        // --memory 32m: exit 137, OOMKilled.
        ensure!(g.check("oom_exit")? == "137", "{}", console());
        ensure!(g.check("oom_killed")? == "true", "{}", console());
        // --pids-limit 10 holds a fork bomb.
        ensure!(g.check("pids_max")? == "10", "{}", console());
        let refused: u64 = g
            .check("pids_events")?
            .strip_prefix("max ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        ensure!(refused > 0, "no fork was refused: {}", console());
        ensure!(
            g.check("pids_current_at_most_10")? == "yes",
            "{}",
            console()
        );
        // --memory 64m and --cpus 0.2 as memory.max and cpu.max.
        ensure!(g.check("memory_max")? == "67108864", "{}", console());
        ensure!(g.check("cpu_max")? == "20000 100000", "{}", console());
        let throttled: u64 = g.check("cpu_throttled")?.parse().unwrap_or(0);
        ensure!(throttled > 0, "{}", console());
        // pause and unpause through cgroup.freeze.
        ensure!(g.check("paused_events")? == "frozen 1", "{}", console());
        ensure!(g.check("paused_status")? == "(Paused)", "{}", console());
        ensure!(g.check("unpaused_events")? == "frozen 0", "{}", console());
        // The device program: /dev/null and /dev/zero open; mknod of a
        // loop or fuse device is refused; --privileged attaches none.
        ensure!(
            g.check("dev_verdicts")? == "cat:allowed head:allowed mknod:refused mknod:refused",
            "{}",
            console()
        );
        ensure!(g.check("dev_privileged")? == "allowed", "{}", console());
        // Removed containers leave no cgroup behind.
        ensure!(g.check("cgroups_left")? == "0", "{}", console());
        for (k, v) in &g.checks {
            eprintln!("guest: {k} = {v}");
        }
        eprintln!(
            "cgroup v2 guest (kernel {}) ran in {:.1} s",
            g.check("kernel")?,
            g.elapsed.as_secs_f64()
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}
