//! Scheduler benchmark, in one run on one machine:
//!
//! - scale: three berth-servers and one `berth-agent --simulate NODES`
//!   process (NODES light nodes, each its own session); one `service
//!   create --replicas CONTAINERS`; placements per second (until every
//!   task has a node) and the time until every task reports Running. The
//!   public anchor is Nomad's C1M (3,750 placements/s on far larger
//!   hardware).
//! - real containers: one server and one real agent; `service create
//!   --replicas REAL busybox sleep` until every task runs, beside `docker
//!   service create --replicas REAL` on a one-node Swarm of Debian's
//!   dockerd (started privately), from the same rootfs.
//!
//! Run as root from a release build:
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench-scheduler [CONTAINERS NODES REAL]
//!
//! Defaults: 10000 containers, 1000 nodes, 100 real containers.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use berth_chaos::dockerd::Dockerd;
use berth_chaos::Cluster;
use berth_proto::cluster::ServiceRef;

/// When every task had a node, and when every one ran, since `t0`.
struct Converged {
    placed: Duration,
    running: Duration,
}

/// Polls the service (its counts, not its tasks, so that the polling
/// weighs little on the leader) until every task has a node and runs.
async fn converge(
    tls: &std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    addr: &str,
    service: &str,
    want: usize,
    t0: Instant,
    limit: Duration,
) -> anyhow::Result<Converged> {
    let mut client = berth_chaos::cluster::client_at(addr, tls)
        .await?
        .max_decoding_message_size(256 << 20);
    let mut placed = None;
    loop {
        if t0.elapsed() > limit {
            bail!("{service} did not converge within {limit:?}");
        }
        let info = match client
            .inspect_service(ServiceRef {
                name: service.into(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if placed.is_none() && info.placed as usize == want {
            placed = Some(t0.elapsed());
        }
        if let Some(p) = placed {
            if info.running as usize == want {
                return Ok(Converged {
                    placed: p,
                    running: t0.elapsed(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn arg(n: usize, default: usize) -> anyhow::Result<usize> {
    Ok(std::env::args()
        .nth(n)
        .map(|s| s.parse())
        .transpose()
        .context("arguments: [CONTAINERS NODES REAL]")?
        .unwrap_or(default))
}

fn main() -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "run as root");
    let containers = arg(1, 10_000)?;
    let nodes = arg(2, 1_000)?;
    let real = arg(3, 100)?;
    let rt = tokio::runtime::Runtime::new()?;

    // Scale: simulated nodes under three servers.
    let scale = {
        let mut c = Cluster::start_servers_at(3, 7530)?;
        let n = nodes.to_string();
        c.add_agent(
            "sim",
            &[
                "--simulate",
                &n,
                "--label",
                "sim=yes",
                "--simulate-cpus",
                "64",
            ],
        )?;
        c.wait_until(Duration::from_secs(120), "every simulated node", |c| {
            let r = c.berth(&["node", "ls"]);
            r.stdout
                .lines()
                .filter(|l| l.starts_with("sim-") && l.contains(" ready "))
                .count()
                == nodes
        })?;
        let leader = c.leader().context("no leader")?;
        let addr = c.member_addr(leader);
        let replicas = containers.to_string();
        let t0 = Instant::now();
        c.berth(&[
            "service",
            "create",
            "-d",
            "--name",
            "load",
            "--replicas",
            &replicas,
            "--constraint",
            "node.labels.sim==yes",
            "busybox",
            "sleep",
            "3600",
        ])
        .ok()?;
        let r = rt.block_on(converge(
            &c.admin_tls()?,
            &addr,
            "load",
            containers,
            t0,
            Duration::from_secs(600),
        ))?;
        if std::env::var_os("BERTH_BENCH_LOGS").is_some() {
            // The reconciler's passes, for a look at where the time goes
            // (with RUST_LOG=info,berth_server::scheduler=debug).
            for l in c.logs().lines().filter(|l| l.contains("reconciler pass")) {
                eprintln!("{l}");
            }
        }
        // Spread: each simulated node holds about as many as the others.
        let ls = c.berth(&["node", "ls"]).ok()?.stdout;
        let counts: Vec<usize> = ls
            .lines()
            .filter(|l| l.starts_with("sim-"))
            .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
            .collect();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        (r, lo, hi)
    };

    // Real containers on one agent, beside a one-node Swarm.
    let berth_real = {
        let c = Cluster::start_at("127.0.0.1:7540")?;
        let replicas = real.to_string();
        let t0 = Instant::now();
        c.berth(&[
            "service",
            "create",
            "-d",
            "--name",
            "real",
            "--replicas",
            &replicas,
            "busybox",
            "sleep",
            "3600",
        ])
        .ok()?;
        let r = rt.block_on(converge(
            &c.admin_tls()?,
            "127.0.0.1:7540",
            "real",
            real,
            t0,
            Duration::from_secs(600),
        ))?;
        let tar = c.dir().join("busybox.tar");
        let swarm = swarm(&tar, real);
        c.berth(&["service", "rm", "real"]).ok()?;
        (r, swarm)
    };

    let (s, lo, hi) = scale;
    let (b, swarm) = berth_real;
    println!();
    println!("| | berth | peer | berth / peer |");
    println!("|---|---|---|---|");
    println!(
        "| placements/s, {containers} containers over {nodes} simulated nodes, 3 servers | {:.0} | Nomad C1M (published): 3,750 | {:.1}x |",
        containers as f64 / s.placed.as_secs_f64(),
        containers as f64 / s.placed.as_secs_f64() / 3750.0
    );
    println!(
        "| time until all {containers} placed / all Running | {:.2} s / {:.2} s | | |",
        s.placed.as_secs_f64(),
        s.running.as_secs_f64()
    );
    println!("| tasks per simulated node (min to max) | {lo} to {hi} | | |");
    match swarm {
        Ok(t) => println!(
            "| {real} real `sleep` tasks on one node, until all run | {:.2} s | Swarm: {:.2} s | {:.1}x faster |",
            b.running.as_secs_f64(),
            t.as_secs_f64(),
            t.as_secs_f64() / b.running.as_secs_f64()
        ),
        Err(e) => println!(
            "| {real} real `sleep` tasks on one node, until all run | {:.2} s | Swarm: not measured ({e:#}) | |",
            b.running.as_secs_f64()
        ),
    }
    Ok(())
}

/// `docker service create --replicas N` on a one-node Swarm of a private
/// dockerd, until `N/N` replicas run.
fn swarm(tar: &std::path::Path, n: usize) -> anyhow::Result<Duration> {
    let d = Dockerd::start()?;
    let ok = |cmd: &mut std::process::Command| -> anyhow::Result<String> {
        let out = cmd.stdin(Stdio::null()).output()?;
        ensure!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    ok(d.docker().args(["import"]).arg(tar).arg("busybox:latest"))?;
    ok(d.docker()
        .args(["swarm", "init", "--advertise-addr", "127.0.0.1"]))?;
    let t0 = Instant::now();
    ok(d.docker().args([
        "service",
        "create",
        "--detach",
        "--name",
        "real",
        "--replicas",
        &n.to_string(),
        "busybox:latest",
        "sleep",
        "3600",
    ]))?;
    let want = format!("{n}/{n}");
    loop {
        let r = ok(d
            .docker()
            .args(["service", "ls", "--format", "{{.Replicas}}"]))?;
        if r.trim() == want {
            break;
        }
        if t0.elapsed() > Duration::from_secs(900) {
            bail!("Swarm ran {} after 900 s", r.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = t0.elapsed();
    let _ = ok(d.docker().args(["service", "rm", "real"]));
    let _ = ok(d.docker().args(["swarm", "leave", "--force"]));
    Ok(t)
}
