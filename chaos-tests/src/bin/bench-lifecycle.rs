//! Container lifecycle benchmark, in one run on one machine:
//!
//! - the engine alone: create + start + wait + remove of `busybox true`
//!   through berth's shim, beside runc on the same bundle (same rootfs,
//!   same config.json, overlay mounted and unmounted each time);
//! - the whole round trip: `berth run --rm busybox true` through a berth
//!   cluster (server + agent on loopback), beside `docker run --rm
//!   --network none busybox true` against Debian's dockerd, from the same
//!   rootfs tarball.
//!
//! Run as root from a release build:
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench-lifecycle [RUNS]
//!
//! dockerd is started privately (its own data root and socket) if it is
//! installed, and stopped at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_chaos::cluster::bin_dir;
use berth_chaos::dockerd::Dockerd;
use berth_chaos::Cluster;

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn mount_overlay(lower: &Path, b: &Path) -> anyhow::Result<()> {
    for d in ["rootfs", "upper", "work"] {
        std::fs::create_dir_all(b.join(d))?;
    }
    run_quiet(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                b.join("upper").display(),
                b.join("work").display()
            ))
            .arg(b.join("rootfs")),
    )
}

fn teardown(b: &Path) -> anyhow::Result<()> {
    run_quiet(Command::new("umount").arg(b.join("rootfs")))?;
    std::fs::remove_dir_all(b)?;
    Ok(())
}

struct Stats {
    name: &'static str,
    times: Vec<Duration>,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        let mut t = self.times.clone();
        t.sort();
        let i = ((t.len() as f64 - 1.0) * p).round() as usize;
        t[i].as_secs_f64() * 1e3
    }
}

fn measure(
    name: &'static str,
    runs: usize,
    mut f: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Stats> {
    f(usize::MAX)?; // one warm-up
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        f(i)?;
        times.push(t.elapsed());
    }
    Ok(Stats { name, times })
}

fn main() -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "run as root");
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let bin = bin_dir()?;
    let cluster = Cluster::start_at("127.0.0.1:7491")?;

    // The template bundle: a container berth created, never started.
    let id = cluster
        .berth(&["create", "--name", "template", "busybox", "true"])
        .ok()?
        .stdout
        .trim()
        .to_string();
    let agent = cluster.dir().join("agent");
    let template_dir = agent.join("containers").join(&id);
    let start = Instant::now();
    while !template_dir.join("config.json").exists() {
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the template container was not created"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let template: serde_json::Value =
        serde_json::from_slice(&std::fs::read(template_dir.join("config.json"))?)?;
    let lower = std::fs::read_dir(agent.join("snapshots"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("bin/busybox").exists())
        .context("the busybox snapshot")?;
    let scratch = tempfile::tempdir_in("/var/tmp")?;
    let bundle = |i: usize, who: &str| -> anyhow::Result<PathBuf> {
        let b = scratch.path().join(format!("{who}-{i}"));
        mount_overlay(&lower, &b)?;
        let mut spec = template.clone();
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/berth-bench/{who}-{i}"));
        std::fs::write(b.join("config.json"), serde_json::to_vec(&spec)?)?;
        Ok(b)
    };

    let shim = measure("berth engine: create+start+wait+remove", runs, |i| {
        let b = bundle(i, "shim")?;
        run_quiet(
            Command::new(bin.join("berth-agent"))
                .arg("shim")
                .arg("--bundle")
                .arg(&b),
        )?;
        teardown(&b)
    })?;
    let runc_root = scratch.path().join("runc-state");
    let runc = measure("runc: create+start+wait+remove", runs, |i| {
        let b = bundle(i, "runc")?;
        run_quiet(
            Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--bundle"])
                .arg(&b)
                .arg(format!("bench-{i}")),
        )?;
        teardown(&b)
    })?;
    let berth_run = measure("berth run --rm busybox true (cluster)", runs, |_| {
        cluster
            .berth(&["run", "--rm", "busybox", "true"])
            .ok()
            .map(|_| ())
    })?;
    let docker = match Dockerd::start() {
        Ok(d) => {
            let tar = cluster.dir().join("busybox.tar");
            run_quiet(d.docker().args(["import"]).arg(&tar).arg("busybox:latest"))?;
            Some(measure(
                "docker run --rm busybox true (dockerd)",
                runs,
                |_| {
                    run_quiet(d.docker().args([
                        "run",
                        "--rm",
                        "--network",
                        "none",
                        "busybox",
                        "true",
                    ]))
                },
            )?)
        }
        Err(e) => {
            eprintln!("docker: not measured ({e:#})");
            None
        }
    };

    println!("{runs} runs each, after one warm-up; times in ms");
    println!("{:<44} {:>8} {:>8} {:>10}", "what", "p50", "p90", "vs runc");
    let base = runc.pct(0.5);
    for s in [Some(&shim), Some(&runc), Some(&berth_run), docker.as_ref()]
        .into_iter()
        .flatten()
    {
        println!(
            "{:<44} {:>8.1} {:>8.1} {:>9.2}x",
            s.name,
            s.pct(0.5),
            s.pct(0.9),
            base / s.pct(0.5)
        );
    }
    if let Some(d) = &docker {
        println!(
            "berth run end to end is {:.2}x docker run's speed",
            d.pct(0.5) / berth_run.pct(0.5)
        );
    }
    Ok(())
}
