//! Build benchmark, in one run on one machine: the time of a cold build
//! (`--no-cache`) and of a cached rebuild of the same Dockerfile and
//! context, through a berth cluster (server and agent on loopback) beside
//! Docker's classic builder (Debian's dockerd, DOCKER_BUILDKIT=0, started
//! privately), from the same busybox rootfs. Two workloads:
//!
//! - every-instruction: the 26-step Dockerfile of the comparison test
//!   (four RUNs, COPY with globs and --chown, ADD of a gzip tar, ...);
//! - big-context: COPY of a 2,000-file, 64 MiB context and a RUN over it;
//! - workshop-like: a small app whose RUN steps do about a second of work
//!   (as installing its dependencies would), then COPY of its source.
//!
//! Each time is the client's wall time, from the command's start to its
//! exit. Run as root from a release build:
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench-build [RUNS]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_chaos::dockerd::Dockerd;
use berth_chaos::dockerfiles::{steps_of, write_cases};
use berth_chaos::Cluster;

fn timed(cmd: &mut Command) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn median(mut t: Vec<Duration>) -> f64 {
    t.sort();
    t[t.len() / 2].as_secs_f64() * 1e3
}

/// A context of `files` files of pseudo-random bytes, `bytes` in all.
fn big_context(dir: &Path, files: usize, bytes: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nWORKDIR /app\nCOPY . .\nRUN find . -type f | wc -l > count.txt && du -s . >> count.txt\nCMD [\"cat\", \"/app/count.txt\"]\n",
    )?;
    let per = bytes / files;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&sub)?;
        let mut body = vec![0u8; per];
        for chunk in body.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = seed.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        std::fs::write(sub.join(format!("f{i:05}.bin")), body)?;
    }
    Ok(())
}

/// An app whose dependency step does real work, as a workshop's does
/// (`RUN pip install ...` before `COPY . .`), with no network.
fn workshop_context(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nWORKDIR /app\nCOPY deps.txt .\n\
         RUN i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo $i > deps.done\n\
         RUN seq 1 300000 | gzip -9 > data.gz\n\
         COPY app.sh .\nCMD [\"sh\", \"app.sh\"]\n",
    )?;
    std::fs::write(dir.join("deps.txt"), "numbers==1.0\n")?;
    std::fs::write(
        dir.join("app.sh"),
        "cat deps.done; zcat data.gz | tail -1\n",
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "run as root");
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3)
        .max(1);
    let cluster = Cluster::start_at("127.0.0.1:7495")?;
    let tar = cluster.dir().join("busybox.tar");
    berth_chaos::images::busybox_rootfs_tar(&tar)?;
    let dockerd = match Dockerd::start() {
        Ok(d) => {
            let (_, _) = timed(d.docker().arg("import").arg(&tar).arg("busybox"))?;
            Some(d)
        }
        Err(e) => {
            eprintln!("docker: not measured ({e:#})");
            None
        }
    };
    let root = cluster.dir().join("contexts");
    let every = write_cases(&root)?
        .into_iter()
        .find(|c| c.name == "every-instruction")
        .context("the every-instruction case")?;
    let big = root.join("big");
    big_context(&big, 2000, 64 << 20)?;
    let workshop = root.join("workshop");
    workshop_context(&workshop)?;
    let workloads: Vec<(&str, &Path, Vec<String>)> = vec![
        (
            "every-instruction (26 steps)",
            &every.dir,
            every.build_args.clone(),
        ),
        ("big-context (2,000 files, 64 MiB)", &big, Vec::new()),
        ("workshop-like (RUN doing work)", &workshop, Vec::new()),
    ];
    println!("{runs} runs each (median); wall time of the CLI in ms; cold = --no-cache, whole context sent");
    println!(
        "{:<36} {:>10} {:>10} {:>9} {:>10} {:>10} {:>9} {:>10}",
        "workload",
        "berth cold",
        "cached",
        "speedup",
        "docker cold",
        "cached",
        "speedup",
        "cold b/d"
    );
    for (name, dir, args) in &workloads {
        let mut build_args = Vec::new();
        for a in args {
            build_args.push("--build-arg".to_string());
            build_args.push(a.clone());
        }
        let measure = |cmd: &dyn Fn(bool) -> Command| -> anyhow::Result<(f64, f64)> {
            // One warm-up: the cache holds the steps, and the files are in
            // the page cache, for both builders alike.
            timed(&mut cmd(false))?;
            let mut cold = Vec::new();
            let mut cached = Vec::new();
            for _ in 0..runs {
                // A first build: nothing in the layer cache (--no-cache),
                // and for berth nothing recorded of the context either, so
                // that all of it is sent (the node's kept copy is not used).
                let _ = std::fs::remove_dir_all(cluster.cli_dir().join("build-cache"));
                cold.push(timed(&mut cmd(true))?.0);
                let (t, out) = timed(&mut cmd(false))?;
                let steps = steps_of(&out);
                let from_cache = steps.iter().filter(|s| s.cached).count();
                ensure!(from_cache > 0, "the rebuild used no cache: {out}");
                cached.push(t);
            }
            Ok((median(cold), median(cached)))
        };
        let berth = |no_cache: bool| {
            let mut c = cluster.cli_command();
            c.env("BERTH_HOST", cluster.all_addrs())
                .arg("build")
                .args(["-t", "bench:1"])
                .args(&build_args);
            if no_cache {
                c.arg("--no-cache");
            }
            c.arg(dir);
            c
        };
        let (b_cold, b_cached) = measure(&berth)?;
        let docker = dockerd.as_ref().map(|d| {
            measure(&|no_cache: bool| {
                let mut c = d.docker();
                c.env("DOCKER_BUILDKIT", "0")
                    .arg("build")
                    .args(["-t", "bench:1"])
                    .args(&build_args);
                if no_cache {
                    c.arg("--no-cache");
                }
                c.arg(dir);
                c
            })
        });
        let (d_cold, d_cached) = match docker {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                eprintln!("docker: {e:#}");
                (f64::NAN, f64::NAN)
            }
            None => (f64::NAN, f64::NAN),
        };
        println!(
            "{:<36} {:>10.0} {:>10.0} {:>8.1}x {:>10.0} {:>10.0} {:>8.1}x {:>9.2}x",
            name,
            b_cold,
            b_cached,
            b_cold / b_cached,
            d_cold,
            d_cached,
            d_cold / d_cached,
            b_cold / d_cold
        );
    }
    Ok(())
}
