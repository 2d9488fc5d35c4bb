//! Log benchmark, in one run on one machine (issue P3.2):
//!
//! - throughput: `berth run` attached (its output read to the end) and
//!   `berth logs -f` of a finished container, for LINES lines of 71 bytes,
//!   beside `docker run` and `docker logs -f` of the same workload on a
//!   private dockerd (Debian's, json-file logs), from the same rootfs;
//! - the control plane under a flood: three servers and one agent; other
//!   clients' write latency (p50, p99) idle and while a container floods,
//!   how often the node was seen other than ready, and the peak RSS of
//!   the servers and the agent.
//!
//! Run as root from a release build:
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench-logs [LINES]
//!
//! Default: 1,000,000 lines (71 MB). Each throughput is measured three
//! times (the median is given); the control plane takes 1,000 writes a
//! phase, with a client listing the nodes every 100 ms in both.
//!
//! `bench-logs --plane` measures only the control plane under a flood
//! (no throughput, no Docker).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_chaos::dockerd::Dockerd;
use berth_chaos::Cluster;

/// The workload: LINES lines of 70 characters and a newline.
fn workload(lines: usize) -> String {
    format!("yes 0123456789012345678901234567890123456789012345678901234567890123456789 | head -n {lines}")
}

/// Runs a command, reads its stdout to the end, and returns the bytes and
/// the time it took.
fn timed(cmd: &mut Command) -> anyhow::Result<(u64, Duration)> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    child.wait()?;
    Ok((total, t0.elapsed()))
}

/// The memory bounds docs/operations.md states for a server and an agent
/// (a shim apart), in MiB.
const SERVER_BOUND_MIB: u64 = 256;
const AGENT_BOUND_MIB: u64 = 64;

/// How many times each throughput is measured; the table gives the median.
const ROUNDS: usize = 3;

/// Label writes timed in each phase of the control-plane measurement.
const WRITES: usize = 1000;

/// Runs `measure` ROUNDS times, each time checking it moved `bytes`; the
/// times, sorted.
fn rounds(
    what: &str,
    bytes: u64,
    mut measure: impl FnMut() -> anyhow::Result<(u64, Duration)>,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let (got, t) = measure()?;
        ensure!(got == bytes, "{what} printed {got} of {bytes} bytes");
        times.push(t);
    }
    times.sort();
    Ok(times)
}

/// "median MB/s (min–max)" of sorted times.
fn rate_cell(bytes: u64, times: &[Duration]) -> String {
    format!(
        "{:.1} MB/s ({:.1}–{:.1})",
        mbps(bytes, times[times.len() / 2]),
        mbps(bytes, times[times.len() - 1]),
        mbps(bytes, times[0])
    )
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The peak resident memory (VmHWM, KiB) of the processes whose command
/// line holds both `exe` and `marker`.
fn peak_rss_kib(exe: &str, marker: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains(exe) || !cmd.contains(marker) || cmd.contains(" shim") {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
        {
            out.push(kb);
        }
    }
    out
}

/// KiB figures as "A, B, C" in MiB.
fn mib_list(kib: &[u64]) -> String {
    kib.iter()
        .map(|k| (k / 1024).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `n` label writes, one after another, each timed.
async fn write_latencies(
    tls: &std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    addr: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = berth_chaos::cluster::client_at(addr, tls).await?;
    let mut out = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        if berth_chaos::cluster::set_label(&mut client, "node1", "bench".into(), i.to_string())
            .await
        {
            out.push(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out.sort();
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let plane_only = std::env::args().any(|a| a == "--plane");
    let lines: usize = std::env::args()
        .skip(1)
        .find(|a| a != "--plane")
        .map(|a| a.parse())
        .transpose()
        .context("LINES must be a number")?
        .unwrap_or(1_000_000);
    let bytes = lines as u64 * 71;
    let rt = tokio::runtime::Runtime::new()?;

    // berth: three servers, one agent.
    let c = Cluster::start_servers_at(3, 7550)?;
    let leader = c.leader().context("no leader")?;
    let addr = c.member_addr(leader);
    let marker = c.dir().to_string_lossy().into_owned();
    let host = c.all_addrs();
    let berth_cmd = |args: &[&str]| {
        let mut cmd = c.cli_command();
        cmd.args(args).env("BERTH_HOST", &host);
        cmd
    };
    let w = workload(lines);

    // The control plane first, while the cluster is fresh: idle, and then
    // under a flood that lasts until it is removed,
    // with another client listing the nodes every 100 ms in both phases.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let not_ready = {
        let (sampling, flooding) = (sampling.clone(), flooding.clone());
        // One command, run again for each sample.
        let mut list = berth_cmd(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
        std::thread::spawn(move || {
            let mut seen = 0u32;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let out = list
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                // A failed listing counts as not seen ready.
                let ready = out.lines().any(|l| l == "node1 Ready");
                if flooding.load(std::sync::atomic::Ordering::Relaxed) && !ready {
                    seen += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };
    let tls = c.admin_tls()?;
    // A warm-up, not counted: connections made, caches filled.
    rt.block_on(write_latencies(&tls, &addr, 100))?;
    let idle = rt.block_on(write_latencies(&tls, &addr, WRITES))?;
    c.berth(&[
        "run",
        "-d",
        "--name",
        "flood",
        "busybox",
        "sh",
        "-c",
        // Without end: it floods until it is removed, after the writes.
        "yes 0123456789012345678901234567890123456789012345678901234567890123456789",
    ])
    .ok()?;
    flooding.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = rt.block_on(write_latencies(&tls, &addr, WRITES))?;
    let flood_ran_throughout =
        serde_json::from_str::<serde_json::Value>(&c.berth(&["inspect", "flood"]).stdout)
            .map(|v| v[0]["State"]["Running"] == serde_json::Value::Bool(true))
            .unwrap_or(false);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let down_samples = not_ready.join().unwrap_or(u32::MAX);
    let tail = c.berth(&["inspect", "flood"]).ok()?.stdout;
    c.berth(&["rm", "-f", "flood"]).ok()?;

    if !plane_only {
        // Throughput, once the flood is gone.
        let run = rounds("berth run", bytes, || {
            timed(&mut berth_cmd(&["run", "--rm", "busybox", "sh", "-c", &w]))
        })?;
        c.berth(&["run", "-d", "--name", "done", "busybox", "sh", "-c", &w])
            .ok()?;
        c.wait_until(Duration::from_secs(600), "the container to end", |c| {
            c.berth(&["ps", "-a"])
                .stdout
                .lines()
                .any(|l| l.contains("done") && l.contains("Exited"))
        })?;
        let logs = rounds("berth logs", bytes, || {
            timed(&mut berth_cmd(&["logs", "-f", "done"]))
        })?;

        // Docker, the same workload.
        let tar = c.dir().join("busybox.tar");
        let d = Dockerd::start()?;
        let status = d
            .docker()
            .args(["import"])
            .arg(&tar)
            .arg("busybox:latest")
            .output()?;
        ensure!(status.status.success(), "docker import failed");
        // The same workload under Docker, with these flags before the image.
        let docker_run = |flags: &[&str]| {
            let mut cmd = d.docker();
            cmd.arg("run").args(flags).args([
                "--network",
                "none",
                "busybox:latest",
                "sh",
                "-c",
                &w,
            ]);
            cmd
        };
        let drun = rounds("docker run", bytes, || timed(&mut docker_run(&["--rm"])))?;
        let id = String::from_utf8(docker_run(&["-d"]).output()?.stdout)?
            .trim()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            let out = d
                .docker()
                .args(["inspect", "-f", "{{.State.Running}}", &id])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).trim() == "false" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let dlogs = rounds("docker logs", bytes, || {
            timed(d.docker().args(["logs", "-f", &id]))
        })?;
        drop(d);
        println!();
        let median = |t: &[Duration]| t[t.len() / 2];
        println!("| median of {ROUNDS} (slowest–fastest) | berth | Docker | berth / Docker |");
        println!("|---|---|---|---|");
        println!(
            "| `run` attached, {lines} lines ({:.0} MB) | {} | {} | {:.2}x |",
            bytes as f64 / 1e6,
            rate_cell(bytes, &run),
            rate_cell(bytes, &drun),
            median(&drun).as_secs_f64() / median(&run).as_secs_f64()
        );
        println!(
            "| `logs -f` of the finished container | {} | {} | {:.2}x |",
            rate_cell(bytes, &logs),
            rate_cell(bytes, &dlogs),
            median(&dlogs).as_secs_f64() / median(&logs).as_secs_f64()
        );
    }
    let servers_kib = peak_rss_kib("berth-server", &marker);
    let agent_kib = peak_rss_kib("berth-agent", &marker);

    let p = |v: &[Duration], q| percentile(v, q).as_secs_f64() * 1000.0;
    println!();
    println!(
        "| control plane, 3 servers, 1 agent, {WRITES} writes a phase | idle | during a flood without end{} |",
        if flood_ran_throughout { "" } else { " (it ended before the writes did)" }
    );
    println!("|---|---|---|");
    println!(
        "| label writes: p50 / p99 | {:.2} / {:.2} ms | {:.2} / {:.2} ms ({:.2}x the idle p99) |",
        p(&idle, 0.5),
        p(&idle, 0.99),
        p(&flooded, 0.5),
        p(&flooded, 0.99),
        p(&flooded, 0.99) / p(&idle, 0.99).max(f64::MIN_POSITIVE)
    );
    println!("| samples of node1 not ready (every 100 ms) | | {down_samples} |");
    let within = servers_kib.iter().all(|k| k / 1024 <= SERVER_BOUND_MIB)
        && agent_kib.iter().all(|k| k / 1024 <= AGENT_BOUND_MIB);
    println!(
        "| peak RSS: servers / agent (bounds {SERVER_BOUND_MIB} / {AGENT_BOUND_MIB} MiB) | | {} MiB / {} MiB {} |",
        mib_list(&servers_kib),
        mib_list(&agent_kib),
        if within { "✓" } else { "✗ (over a bound)" }
    );
    let v: serde_json::Value = serde_json::from_str(&tail).unwrap_or_default();
    println!(
        "| the flood's lines in the cluster's tail, of the lines it had come to | | {} of {} |",
        v[0]["LogTail"]["NextSeq"].as_u64().unwrap_or(0)
            - v[0]["LogTail"]["FirstSeq"].as_u64().unwrap_or(0),
        v[0]["LogTail"]["NextSeq"].as_u64().unwrap_or(1) - 1
    );
    Ok(())
}
