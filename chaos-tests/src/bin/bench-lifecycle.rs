//! Container lifecycle benchmark, in one run on one machine:
//!
//! - the engine alone: create + start + wait + remove of `busybox true`
//!   through berth's shim, beside runc on the same bundle (same rootfs,
//!   same config.json, overlay mounted and unmounted each time); and the
//!   shim again without the seccomp filter, and without the device rules
//!   (cgroup v1's devices controller, or v2's BPF program), so that the
//!   cost of each is printed;
//! - the whole round trip: `berth run --rm busybox true` through a berth
//!   cluster (server + agent on loopback), beside `docker run --rm
//!   --network none busybox true` against Debian's dockerd, from the same
//!   rootfs tarball; and `berth run --rm --security-opt seccomp=unconfined`.
//!
//! Run as root from a release build:
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench-lifecycle [RUNS]
//!
//! dockerd is started privately (its own data root and socket) if it is
//! installed, and stopped at the end.

use std::path::Path;
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
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
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
    ensure!(
        template["linux"]["seccomp"].is_object(),
        "the template has no seccomp filter"
    );
    ensure!(
        template["linux"]["resources"]["devices"].is_array(),
        "the template has no device rules"
    );
    let bundle_with = |i: usize, who: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let b = scratch.path().join(format!("{who}-{i}"));
        mount_overlay(&lower, &b)?;
        let mut spec = template.clone();
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/berth-bench/{who}-{i}"));
        edit(&mut spec);
        std::fs::write(b.join("config.json"), serde_json::to_vec(&spec)?)?;
        // The seccomp program the agent compiled for the template, as it
        // lies beside every bundle's config.json.
        let program = template_dir.join("seccomp.bpf");
        if program.exists() {
            std::fs::copy(&program, b.join("seccomp.bpf"))?;
        }
        anyhow::Ok(b)
    };
    let bundle = |i: usize, who: &str| bundle_with(i, who, &|_| {});
    let shim_run = |b: &Path| {
        run_quiet(
            Command::new(bin.join("berth-agent"))
                .arg("shim")
                .arg("--bundle")
                .arg(b),
        )
    };

    let shim = measure("berth engine: create+start+wait+remove", runs, |i| {
        let b = bundle(i, "shim")?;
        shim_run(&b)?;
        teardown(&b)
    })?;
    let no_seccomp = measure("berth engine, no seccomp filter", runs, |i| {
        let b = bundle_with(i, "noseccomp", &|s| {
            s["linux"].as_object_mut().map(|l| l.remove("seccomp"));
        })?;
        shim_run(&b)?;
        teardown(&b)
    })?;
    let no_devices = measure("berth engine, no device rules", runs, |i| {
        // One rule allowing every device: no controller rules, no program.
        let b = bundle_with(i, "nodevices", &|s| {
            s["linux"]["resources"]["devices"] =
                serde_json::json!([{"allow": true, "access": "rwm"}]);
        })?;
        shim_run(&b)?;
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
    let berth_unconfined = measure("berth run --rm, seccomp=unconfined", runs, |_| {
        cluster
            .berth(&[
                "run",
                "--rm",
                "--security-opt",
                "seccomp=unconfined",
                "busybox",
                "true",
            ])
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
    for s in [
        Some(&shim),
        Some(&no_seccomp),
        Some(&no_devices),
        Some(&runc),
        Some(&berth_run),
        Some(&berth_unconfined),
        docker.as_ref(),
    ]
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
    println!(
        "seccomp filter: {:+.1} ms on the engine, {:+.1} ms on berth run",
        shim.pct(0.5) - no_seccomp.pct(0.5),
        berth_run.pct(0.5) - berth_unconfined.pct(0.5)
    );
    println!(
        "device rules: {:+.1} ms on the engine",
        shim.pct(0.5) - no_devices.pct(0.5)
    );
    println!(
        "berth run takes {:.2}x runc's time (goal: at most 0.5x)",
        berth_run.pct(0.5) / base
    );
    if let Some(d) = &docker {
        println!(
            "berth run end to end is {:.2}x docker run's speed",
            d.pct(0.5) / berth_run.pct(0.5)
        );
    }
    Ok(())
}
