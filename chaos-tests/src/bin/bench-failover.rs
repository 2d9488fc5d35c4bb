//! Failover benchmark: three berth-servers and an agent on loopback; a
//! client writes continuously (CreateContainer) through gRPC; the leader is
//! killed with SIGKILL; the table gives the time from the kill to the next
//! acknowledged write, per round, and checks afterwards that every
//! acknowledged write is there.
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench-failover [ROUNDS]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_chaos::cluster::leader_client;
use berth_chaos::Cluster;
use berth_proto::cluster::{
    cluster_client::ClusterClient, ContainerSpec, CreateContainerRequest, ListContainersRequest,
};
use tonic::transport::Channel;

async fn write(c: &mut ClusterClient<Channel>, name: &str) -> bool {
    c.create_container(CreateContainerRequest {
        name: name.to_string(),
        spec: Some(ContainerSpec {
            image: "busybox".into(),
            cmd: vec!["true".into()],
            ..Default::default()
        }),
        start: false,
        attached: false,
    })
    .await
    .is_ok()
}

fn main() -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "run as root");
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let mut cluster = Cluster::start_servers_at(3, 7491)?;
    let addrs: Vec<String> = cluster.all_addrs().split(',').map(str::to_string).collect();
    let tls = cluster.admin_tls()?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut acknowledged = Vec::new();
    let mut n = 0usize;
    println!(
        "{:<8} {:>16} {:>14}",
        "round", "kill -> write", "writes acked"
    );
    let mut times = Vec::new();
    for round in 1..=rounds {
        let (leader, mut client) = rt
            .block_on(leader_client(&addrs, &tls))
            .context("no leader")?;
        for _ in 0..20 {
            n += 1;
            let name = format!("w{n}");
            if rt.block_on(write(&mut client, &name)) {
                acknowledged.push(name);
            }
        }
        cluster.kill_member(leader as usize)?;
        let killed = Instant::now();
        let failover = rt.block_on(async {
            loop {
                if let Some((new_leader, mut c)) = leader_client(&addrs, &tls).await {
                    if new_leader == leader {
                        // The killed server cannot answer; a stale view can.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    n += 1;
                    let name = format!("w{n}");
                    if write(&mut c, &name).await {
                        acknowledged.push(name);
                        return Some(killed.elapsed());
                    }
                }
                if killed.elapsed() > Duration::from_secs(30) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let failover = failover.context("no write was accepted within 30 s")?;
        times.push(failover);
        println!(
            "{round:<8} {:>13.0} ms {:>14}",
            failover.as_secs_f64() * 1e3,
            acknowledged.len()
        );
        // Bring the killed member back for the next round.
        if leader == 1 {
            cluster.start_server(false)?;
        } else {
            cluster.start_member(leader as usize)?;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    times.sort();
    println!(
        "median {:.0} ms, worst {:.0} ms",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    let (_, mut client) = rt
        .block_on(leader_client(&addrs, &tls))
        .context("no leader at the end")?;
    let names: Vec<String> = rt
        .block_on(client.list_containers(ListContainersRequest {
            all: true,
            size: false,
        }))?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|a| !names.contains(a)).collect();
    println!(
        "{} writes acknowledged, {} lost",
        acknowledged.len(),
        lost.len()
    );
    ensure!(lost.is_empty(), "lost: {lost:?}");
    Ok(())
}
