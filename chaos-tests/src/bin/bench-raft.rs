//! berth's control plane beside etcd (Debian's etcd-server), in one run on
//! loopback, three members each: writes per second and p50/p99 latency at
//! 1 and at 64 concurrent clients, and the time from kill -9 of the leader
//! to the next accepted write. A berth write is a node label (one Raft
//! commit, like an etcd put). Both use a 50 ms heartbeat, and in both a
//! follower waits at least 300 ms without one before it stands on a timer:
//! etcd with `--election-timeout 300` (randomized to 300-600 ms), berth with
//! its defaults (a 200 ms lease plus 100-200 ms). berth's followers also
//! stand when the lease ends if the dead leader's port refuses connections
//! (server raft/failover.rs).
//!
//!     cargo build --release --workspace --bins
//!     target/release/bench-raft

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_chaos::cluster::{leader_client, set_label};
use berth_chaos::Cluster;
use berth_proto::cluster::cluster_client::ClusterClient;
use tonic::transport::Channel;

mod etcd {
    tonic::include_proto!("etcdserverpb");
}

type Write = Arc<dyn Fn(usize, usize) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

struct Load {
    per_s: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

async fn load(clients: usize, per_client: usize, write: Write) -> Load {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let write = write.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                if write(c, i).await {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    };
    Load {
        per_s: all.len() as f64 / secs,
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
        max: pct(1.0),
    }
}

/// Three etcd members on loopback, stopped when dropped: with mutual TLS
/// on client and peer connections, as berth's (certificates of a CA made
/// here, ECDSA P-256 as berth's).
struct Etcd {
    members: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

/// The clients' TLS configuration for etcd, made with the certificates.
static ETCD_TLS: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> =
    std::sync::OnceLock::new();

impl Etcd {
    fn client_addr(i: usize) -> String {
        format!("127.0.0.1:{}", 23791 + i)
    }

    fn client_url(i: usize) -> String {
        format!("https://{}", Self::client_addr(i))
    }

    /// A CA, a certificate for the members (server and client use, the
    /// loopback address, and the name the shared connector checks) and
    /// one for the bench's clients.
    fn certificates(dir: &std::path::Path) -> anyhow::Result<()> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issue = |names: Vec<String>| -> anyhow::Result<(String, String)> {
            let key = rcgen::KeyPair::generate()?;
            let mut p = rcgen::CertificateParams::new(names)?;
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (member_cert, member_key) = issue(vec![
            berth_proto::transport::SERVER_NAME.to_string(),
            "localhost".to_string(),
        ])?;
        let (client_cert, client_key) = issue(vec!["bench".to_string()])?;
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.join("member.pem"), &member_cert)?;
        std::fs::write(dir.join("member-key.pem"), &member_key)?;
        let tls =
            berth_proto::transport::client_config(&berth_proto::transport::ClientCredentials {
                trusted_pem: ca_cert.pem(),
                cert_pem: client_cert,
                key_pem: client_key,
            })?;
        let _ = ETCD_TLS.set(tls);
        Ok(())
    }

    fn start() -> anyhow::Result<Self> {
        // The same medium as berth's data dirs (Cluster::unstarted).
        let dir = tempfile::tempdir_in(
            std::env::var("BERTH_BENCH_TMP").unwrap_or_else(|_| "/var/tmp".into()),
        )?;
        Self::certificates(dir.path())?;
        let cluster: Vec<String> = (0..3)
            .map(|i| format!("e{i}=https://127.0.0.1:{}", 23801 + i))
            .collect();
        let pem = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let mut members = Vec::new();
        for i in 0..3 {
            let peer = format!("https://127.0.0.1:{}", 23801 + i);
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args([
                    "--listen-client-urls",
                    &Self::client_url(i),
                    "--advertise-client-urls",
                    &Self::client_url(i),
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args([
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .args([
                    "--initial-cluster-token",
                    "bench",
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "300",
                ])
                .args(["--cert-file", &pem("member.pem")])
                .args(["--key-file", &pem("member-key.pem")])
                .args(["--trusted-ca-file", &pem("ca.pem")])
                .arg("--client-cert-auth")
                .args(["--peer-cert-file", &pem("member.pem")])
                .args(["--peer-key-file", &pem("member-key.pem")])
                .args(["--peer-trusted-ca-file", &pem("ca.pem")])
                .arg("--peer-client-cert-auth")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting etcd (Debian's etcd-server)")?;
            members.push(Some(child));
        }
        Ok(Self { members, _dir: dir })
    }

    /// A TLS channel to member `i`.
    async fn channel(i: usize) -> Option<Channel> {
        let tls = ETCD_TLS.get()?.clone();
        berth_proto::transport::endpoint(&Self::client_addr(i))
            .ok()?
            .connect_with_connector(berth_proto::transport::Connector::new(tls))
            .await
            .ok()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The index (0..3) of etcd's leader, and a client to it.
async fn etcd_leader() -> Option<(usize, etcd::kv_client::KvClient<Channel>)> {
    let mut ids = HashMap::new();
    let mut leader_id = None;
    for i in 0..3 {
        let Some(ch) = Etcd::channel(i).await else {
            continue;
        };
        let mut m = etcd::maintenance_client::MaintenanceClient::new(ch);
        let Ok(s) = m.status(etcd::StatusRequest {}).await else {
            continue;
        };
        let s = s.into_inner();
        ids.insert(s.header.map(|h| h.member_id).unwrap_or(0), i);
        if s.leader != 0 {
            leader_id = Some(s.leader);
        }
    }
    let i = *ids.get(&leader_id?)?;
    let kv = etcd::kv_client::KvClient::new(Etcd::channel(i).await?);
    Some((i, kv))
}

fn berth_write(client: ClusterClient<Channel>) -> Write {
    Arc::new(move |c, i| {
        let mut client = client.clone();
        Box::pin(
            async move { set_label(&mut client, "node1", format!("k{c}"), i.to_string()).await },
        )
    })
}

fn etcd_write(client: etcd::kv_client::KvClient<Channel>) -> Write {
    Arc::new(move |c, i| {
        let mut client = client.clone();
        Box::pin(async move {
            client
                .put(etcd::PutRequest {
                    key: format!("k{c}").into_bytes(),
                    value: i.to_string().into_bytes(),
                })
                .await
                .is_ok()
        })
    })
}

fn main() -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "run as root");
    let rt = tokio::runtime::Runtime::new()?;
    let mut berth = Cluster::start_servers_at(3, 7491)?;
    let addrs: Vec<String> = berth.all_addrs().split(',').map(str::to_string).collect();
    let tls = berth.admin_tls()?;
    // `bench-raft --berth-only [CLIENTS [WRITES_EACH]]`: one berth load,
    // long enough to profile, and no etcd.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--berth-only") {
        let clients = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
        let per = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
        let (_, bc) = rt
            .block_on(leader_client(&addrs, &tls))
            .context("no berth leader")?;
        let b = rt.block_on(load(clients, per, berth_write(bc)));
        println!(
            "berth, {clients} client(s) x {per}: {:.1} writes/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            b.per_s, b.p50, b.p99, b.p999, b.max
        );
        return Ok(());
    }
    let mut etcd = Etcd::start()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(etcd_leader()).is_none() {
        ensure!(
            Instant::now() < deadline,
            "etcd did not elect a leader in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, bc) = rt
        .block_on(leader_client(&addrs, &tls))
        .context("no berth leader")?;
    let (_, ec) = rt.block_on(etcd_leader()).context("no etcd leader")?;
    let mut rows = Vec::new();
    for (clients, per) in [(1usize, 2000usize), (64, 300)] {
        // Each load is measured after a warm-up of 20 writes per client
        // (connections, streams and allocators settle), for both.
        rt.block_on(load(clients, 20, berth_write(bc.clone())));
        let b = rt.block_on(load(clients, per, berth_write(bc.clone())));
        rt.block_on(load(clients, 20, etcd_write(ec.clone())));
        let e = rt.block_on(load(clients, per, etcd_write(ec.clone())));
        rows.push((
            format!("writes/s, {clients} client(s)"),
            b.per_s,
            e.per_s,
            b.per_s / e.per_s,
        ));
        rows.push((
            format!("p50 ms, {clients} client(s)"),
            b.p50,
            e.p50,
            e.p50 / b.p50,
        ));
        rows.push((
            format!("p99 ms, {clients} client(s)"),
            b.p99,
            e.p99,
            e.p99 / b.p99,
        ));
    }
    // Failover: kill -9 of the leader, then the next accepted write.
    let (bl, _) = rt
        .block_on(leader_client(&addrs, &tls))
        .context("no berth leader")?;
    berth.kill_member(bl as usize)?;
    let t = Instant::now();
    let b_fail = rt.block_on(async {
        loop {
            if let Some((id, c)) = leader_client(&addrs, &tls).await {
                if id != bl && berth_write(c)(0, 0).await {
                    return t.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let (el, _) = rt.block_on(etcd_leader()).context("no etcd leader")?;
    etcd.kill(el);
    let t = Instant::now();
    let e_fail = rt.block_on(async {
        loop {
            if let Some((i, c)) = etcd_leader().await {
                if i != el && etcd_write(c)(0, 0).await {
                    return t.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let (bf, ef) = (b_fail.as_secs_f64() * 1e3, e_fail.as_secs_f64() * 1e3);
    rows.push(("kill -9 leader -> write, ms".into(), bf, ef, ef / bf));
    println!(
        "{:<30} {:>10} {:>10} {:>16}",
        "", "berth", "etcd", "berth advantage"
    );
    for (name, b, e, adv) in rows {
        // Latencies with two decimals: at one client both are near 0.6 ms.
        if name.starts_with("p") {
            println!("{name:<30} {b:>10.2} {e:>10.2} {adv:>15.2}x");
        } else {
            println!("{name:<30} {b:>10.1} {e:>10.1} {adv:>15.2}x");
        }
    }
    Ok(())
}
