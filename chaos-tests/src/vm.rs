//! A throwaway virtual machine for what this host cannot show: Debian's
//! own kernel booted under qemu with only the cgroup v2 hierarchy mounted,
//! running a real berth server, agent and CLI from an initramfs. The
//! machine has no network card and no disk; it prints its findings on the
//! serial console and powers off.
//!
//! `deploy/test.sh` puts the kernel and the overlay module in
//! [`KERNEL_DIR`] (from Debian's linux-image package) and installs qemu.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// Where `deploy/test.sh` leaves `vmlinuz` and `overlay.ko`; the variable
/// BERTH_VM_KERNEL_DIR overrides it.
pub const KERNEL_DIR: &str = "/var/cache/berth/vm";

/// The prefix of the lines the guest's script prints as findings.
pub const CHECK_PREFIX: &str = "BERTH-CHECK ";

/// What a guest run printed.
#[derive(Debug)]
pub struct GuestRun {
    /// `BERTH-CHECK key value` lines, by key.
    pub checks: BTreeMap<String, String>,
    /// The whole console output, for failure messages.
    pub console: String,
    /// How long the machine ran, boot included.
    pub elapsed: Duration,
}

impl GuestRun {
    /// The value of a check, or an error that shows the console.
    pub fn check(&self, key: &str) -> anyhow::Result<&str> {
        self.checks.get(key).map(String::as_str).with_context(|| {
            format!(
                "the guest printed no {key}; its console:\n{}",
                tail(&self.console, 120)
            )
        })
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Boots the guest with berth's binaries from `bin`, the busybox image
/// tarball `busybox_tar`, and `script` (a busybox sh script run as root
/// once berth is up, with `berth` on PATH and a ready node), and returns
/// what it printed. `limit` bounds the whole run.
pub fn run_guest(
    bin: &Path,
    busybox_tar: &Path,
    script: &str,
    limit: Duration,
) -> anyhow::Result<GuestRun> {
    let kernel_dir = std::env::var_os("BERTH_VM_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KERNEL_DIR));
    let kernel = kernel_dir.join("vmlinuz");
    let overlay = kernel_dir.join("overlay.ko");
    for f in [&kernel, &overlay] {
        ensure!(
            f.exists(),
            "{} is missing: deploy/test.sh fetches Debian's kernel into {}",
            f.display(),
            kernel_dir.display()
        );
    }
    let work = tempfile::tempdir_in("/var/tmp")?;
    let root = work.path().join("root");
    for d in ["bin", "berth", "lib", "lib64", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(crate::images::BUSYBOX, root.join("bin/busybox"))
        .context("copying Debian's busybox-static")?;
    for b in ["berth", "berth-server", "berth-agent"] {
        let from = bin.join(b);
        std::fs::copy(&from, root.join("berth").join(b))
            .with_context(|| format!("copying {}", from.display()))?;
        for lib in shared_libraries(&from)? {
            let to = root.join(lib.strip_prefix("/").unwrap_or(&lib));
            if !to.exists() {
                std::fs::create_dir_all(to.parent().unwrap_or(&root))?;
                std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
            }
        }
    }
    std::fs::copy(&overlay, root.join("overlay.ko"))?;
    std::fs::copy(busybox_tar, root.join("busybox.tar"))?;
    std::fs::write(root.join("checks.sh"), script)?;
    write_executable(&root.join("init"), INIT)?;
    write_executable(&root.join("stage2"), STAGE2)?;

    // The initramfs: an uncompressed newc archive, which the kernel
    // unpacks faster than a compressed one under emulation.
    let initrd = work.path().join("initrd.cpio");
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            initrd.display()
        ))
        .status()
        .context("running cpio (Debian's cpio package)")?;
    ensure!(list.success(), "cpio could not write the initramfs");

    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 rdinit=/init quiet panic=-1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian's qemu-system-x86 package)")?;
    let mut stdout = qemu.stdout.take().context("qemu's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        out
    });
    loop {
        if qemu.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = qemu.kill();
            let _ = qemu.wait();
            let out = reader.join().unwrap_or_default();
            bail!(
                "the guest did not power off within {limit:?}; its console:\n{}",
                tail(&String::from_utf8_lossy(&out), 120)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = reader.join().unwrap_or_default();
    let console = String::from_utf8_lossy(&out).replace('\r', "");
    let checks = console
        .lines()
        .filter_map(|l| l.split_once(CHECK_PREFIX).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    Ok(GuestRun {
        checks,
        console,
        elapsed: started.elapsed(),
    })
}

/// The shared libraries a dynamic binary loads, by `ldd`.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    ensure!(out.status.success(), "ldd {} failed", binary.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Stage one: the kernel's initramfs is `rootfs`, which pivot_root (and so
/// every container runtime) refuses; copy everything to a tmpfs and switch
/// to it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /newroot
/bin/busybox mount -t tmpfs -o size=1700m tmpfs /newroot
for d in bin berth lib lib64 overlay.ko busybox.tar checks.sh stage2; do
    /bin/busybox cp -a /$d /newroot/
done
/bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/var
exec /bin/busybox switch_root /newroot /stage2
"#;

/// Stage two: cgroup v2 alone at /sys/fs/cgroup, overlayfs, loopback, a
/// one-server cluster with one agent, busybox imported; then the checks.
const STAGE2: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/berth
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
insmod /overlay.ko
ip link set lo up
mkdir -p /var/lib/berth /tmp
chmod 1777 /tmp
check() { echo "BERTH-CHECK $1 $2"; }
# A watchdog: if the checks hang, the console still says where (the logs
# and the processes) and the guest powers off, so the test fails in
# minutes with something to read instead of waiting out the host's limit.
( sleep 240
  echo "BERTH-CHECK watchdog fired after 240 s"
  echo "--- server.log"; tail -n 60 /server.log
  echo "--- agent.log"; tail -n 60 /agent.log
  echo "--- ps"; ps
  poweroff -f ) &
check kernel "$(uname -r)"
check cgroupfs "$(awk '$2 == "/sys/fs/cgroup" {print $3}' /proc/mounts)"
check root_controllers "$(cat /sys/fs/cgroup/cgroup.controllers)"
berth-server --data-dir /var/lib/berth/server --listen 127.0.0.1:7420 --bootstrap >/server.log 2>&1 &
# The CLI reads the admin credential the server writes; the agent joins
# with the cluster's agent token.
export BERTH_CONFIG=/var/lib/berth/server/admin.conf
i=0
until token="$(berth cluster join-token agent -q 2>/dev/null)"; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then check token no; break; fi
    sleep 0.2
done
berth-agent --data-dir /var/lib/berth/agent --server 127.0.0.1:7420 --name vm --token "$token" >/agent.log 2>&1 &
i=0
until berth node ls 2>/dev/null | grep -q ready; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then check ready no; break; fi
    sleep 0.2
done
berth node ls | sed 's/^/NODE /'
if berth import /busybox.tar busybox >/dev/null; then
    . /checks.sh
else
    check import failed
fi
echo "--- server.log"; tail -n 20 /server.log
echo "--- agent.log"; tail -n 20 /agent.log
check done yes
poweroff -f
"#;
