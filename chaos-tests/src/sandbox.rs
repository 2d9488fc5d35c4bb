//! Runs one test inside new pid, mount and network namespaces by running
//! the test binary again under `unshare(1)`. The outer run only waits; the
//! inner run (marked by an environment variable) does the work. When the
//! inner run ends, the kernel ends every process of its pid namespace,
//! and its mounts and loopback go with its namespaces.

use std::process::Command;

/// The environment variable naming the test that runs inside a sandbox.
pub const SANDBOX_ENV: &str = "BERTH_TEST_SANDBOX";

/// Runs `body` in a sandbox of its own. `test` is the test's name as the
/// test harness knows it (the function name for tests in tests/*.rs).
pub fn run(test: &str, body: impl FnOnce() -> anyhow::Result<()>) {
    if std::env::var(SANDBOX_ENV).as_deref() == Ok(test) {
        setup_inside().expect("setting up the sandbox");
        if let Err(e) = body() {
            panic!("{test} failed: {e:#}");
        }
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root: it creates namespaces, overlay mounts and containers (run the README's test command as root)"
    );
    let exe = std::env::current_exe().expect("finding the test binary");
    let out = Command::new("unshare")
        .args([
            "--fork",
            "--pid",
            "--mount",
            "--net",
            "--mount-proc",
            "--kill-child",
        ])
        .arg("--")
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(SANDBOX_ENV, test)
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test} failed in its sandbox ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What the test printed, for whoever runs it with --nocapture.
    println!("{stdout}");
    // The inner run must really have run the test, not filtered it away.
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in its sandbox\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

fn setup_inside() -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    anyhow::ensure!(status.success(), "ip link set lo up failed");
    Ok(())
}
