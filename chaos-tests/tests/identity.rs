//! Cluster identity (P3.3): every connection is mutual TLS, and every
//! call is authorized by the role in the caller's certificate. A real
//! server and real agents; the credentials are the ones the cluster gave
//! them, one the test makes from the cluster's CA (taken from a backup,
//! as anyone holding a backup could), and one of another CA.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use berth_chaos::{sandbox, Cluster};
use berth_proto::transport::{self, ClientCredentials};
use tokio_rustls::rustls;
use tonic::transport::Channel;

/// How one call came out.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Authorization let it through (whatever the handler said then).
    Passed(String),
    /// Refused by authorization, with this code and message.
    Refused(tonic::Code, String),
    /// Refused by TLS (the server would not take the certificate).
    Handshake(String),
}

/// The four endpoints of the matrix.
const ENDPOINTS: [&str; 4] = ["cluster api", "agent session", "raft", "membership"];

/// One way to connect: a TLS configuration, or plaintext (None).
type Way = Option<Arc<rustls::ClientConfig>>;

async fn channel(addr: &str, way: &Way) -> Result<Channel, String> {
    let result = match way {
        None => {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect()
                .await
        }
        Some(tls) => {
            transport::endpoint(addr)
                .map_err(|e| e.to_string())?
                .connect_with_connector(transport::Connector::new(tls.clone()))
                .await
        }
    };
    result.map_err(|e| chain(&e))
}

/// An error and all its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

fn judge<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Outcome {
    match r {
        Ok(v) => Outcome::Passed(format!("{v:?}").chars().take(80).collect()),
        Err(s) => match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                Outcome::Refused(s.code(), s.message().to_string())
            }
            _ => {
                let text = chain(&s);
                if text.contains("alert") || text.contains("certificate") && s.message().is_empty()
                {
                    Outcome::Handshake(text)
                } else {
                    Outcome::Passed(format!("{:?}: {}", s.code(), s.message()))
                }
            }
        },
    }
}

/// Calls one endpoint the way `way` connects.
async fn call(addr: &str, way: &Way, endpoint: &str, node: &str) -> Outcome {
    use berth_proto::agent::agent_session_client::AgentSessionClient;
    use berth_proto::cluster::cluster_client::ClusterClient;
    use berth_proto::raft::raft_client::RaftClient;
    let ch = match channel(addr, way).await {
        Ok(c) => c,
        Err(e) => return Outcome::Handshake(e),
    };
    match endpoint {
        "cluster api" => judge(
            ClusterClient::new(ch)
                .list_nodes(berth_proto::cluster::ListNodesRequest::default())
                .await,
        ),
        "agent session" => {
            let beat = berth_proto::agent::Heartbeat {
                seq: 1,
                node: node.to_string(),
                session_id: 0,
            };
            let mut client = AgentSessionClient::new(ch);
            match client.heartbeats(tokio_stream::iter(vec![beat])).await {
                Ok(r) => {
                    // Through authorization: the session it names is not
                    // current, which the stream then says.
                    let first = r.into_inner().message().await;
                    Outcome::Passed(format!("{first:?}").chars().take(80).collect())
                }
                Err(s) => judge::<()>(Err(s)),
            }
        }
        "raft" => judge(
            RaftClient::new(ch)
                .vote(berth_proto::raft::RaftPayload {
                    json: b"not a vote".to_vec(),
                })
                .await,
        ),
        "membership" => judge(
            ClusterClient::new(ch)
                .join_cluster(berth_proto::cluster::JoinRequest {
                    id: 0,
                    addr: String::new(),
                    reserve_id: false,
                })
                .await,
        ),
        other => Outcome::Handshake(format!("no endpoint {other}")),
    }
}

fn read(p: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// The credentials a member keeps in its data dir's tls/.
fn member_creds(data_dir: &std::path::Path) -> anyhow::Result<ClientCredentials> {
    let tls = data_dir.join("tls");
    Ok(ClientCredentials {
        trusted_pem: read(&tls.join("ca.pem"))?,
        cert_pem: read(&tls.join("cert.pem"))?,
        key_pem: read(&tls.join("key.pem"))?,
    })
}

/// The cluster's CA (certificate and key), from a backup of its state.
fn ca_from_backup(c: &Cluster) -> anyhow::Result<(String, String)> {
    use prost::Message;
    let file = c.dir().join("state.backup");
    c.berth(&["cluster", "backup", "-o", file.to_str().unwrap_or_default()])
        .ok()?;
    let snap = berth_proto::records::Snapshot::decode(std::fs::read(&file)?.as_slice())?;
    let row = snap
        .rows
        .iter()
        .find(|r| r.key == b"m/pki")
        .context("no CA in the backup")?;
    let pki = berth_proto::records::Pki::decode(row.value.as_slice())?;
    Ok((pki.ca_cert_pem, pki.ca_key_pem))
}

/// A certificate for `uri` signed by the CA (`ca_cert`, `ca_key`), valid
/// over the dates given.
fn signed(
    ca_cert: &str,
    ca_key: &str,
    uri: &str,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> anyhow::Result<(String, String)> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key)?;
    let issuer = rcgen::CertificateParams::from_ca_cert_pem(ca_cert)?.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(uri.try_into()?));
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn with_cert(trusted: &str, cert: &str, key: &str) -> anyhow::Result<Way> {
    Ok(Some(transport::client_config(&ClientCredentials {
        trusted_pem: trusted.to_string(),
        cert_pem: cert.to_string(),
        key_pem: key.to_string(),
    })?))
}

#[test]
fn only_the_right_role_passes_each_endpoint_and_every_refusal_says_why() {
    sandbox::run(
        "only_the_right_role_passes_each_endpoint_and_every_refusal_says_why",
        || {
            let mut c = Cluster::start_nodes(&[], &[("node1", &[]), ("gone", &[])])?;
            let addr = c.member_addr(1);
            let trusted = read(&c.server_dir(1).join("tls").join("ca.pem"))?;
            let (ca_cert, ca_key) = ca_from_backup(&c)?;
            // A removed node: its certificate is revoked.
            c.kill_named_agent("gone")?;
            c.berth(&["node", "rm", "--force", "gone"]).ok()?;
            let admin = c.admin_tls()?;
            let agent = member_creds(&c.agent_dir("node1"))?;
            let server = member_creds(&c.server_dir(1))?;
            let revoked = member_creds(&c.agent_dir("gone"))?;
            let (exp_cert, exp_key) = signed(
                &ca_cert,
                &ca_key,
                "berth://agent/node1",
                (2020, 1, 1),
                (2021, 1, 1),
            )?;
            let other_ca = rcgen::KeyPair::generate()?;
            let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let other = other_params.self_signed(&other_ca)?;
            let (stranger_cert, stranger_key) = signed(
                &other.pem(),
                &other_ca.serialize_pem(),
                "berth://admin/admin",
                (2024, 1, 1),
                (2040, 1, 1),
            )?;
            let anonymous = {
                let mut cfg = rustls::ClientConfig::builder_with_provider(transport::provider())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(transport::roots(&trusted)?)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![transport::ALPN_H2.to_vec()];
                Some(Arc::new(cfg))
            };
            let ways: Vec<(&str, Way, &str)> = vec![
                ("plaintext", None, "node1"),
                ("tls, no certificate", anonymous, "node1"),
                (
                    "another CA's",
                    with_cert(&trusted, &stranger_cert, &stranger_key)?,
                    "node1",
                ),
                ("agent", Some(transport::client_config(&agent)?), "node1"),
                ("server", Some(transport::client_config(&server)?), "node1"),
                ("admin", Some(admin), "node1"),
                ("revoked", Some(transport::client_config(&revoked)?), "gone"),
                (
                    "expired",
                    with_cert(&trusted, &exp_cert, &exp_key)?,
                    "node1",
                ),
            ];
            // Which credential passes which endpoint.
            let passes = |way: &str, endpoint: &str| {
                matches!(
                    (way, endpoint),
                    ("admin", "cluster api")
                        | ("agent", "agent session")
                        | ("server", "raft")
                        | ("server", "membership")
                )
            };
            // What a refusal must name, by credential.
            let why = |way: &str| match way {
                "plaintext" => "plaintext",
                "tls, no certificate" => "no client certificate",
                "another CA's" => "another CA signed it",
                "revoked" => "revoked",
                "expired" => "it has expired",
                _ => "needs the",
            };
            let rt = tokio::runtime::Runtime::new()?;
            let mut table = String::new();
            let mut wrong = Vec::new();
            for (name, way, node) in &ways {
                for endpoint in ENDPOINTS {
                    let out = rt.block_on(call(&addr, way, endpoint, node));
                    table.push_str(&format!("{name:<22} {endpoint:<14} {out:?}\n"));
                    let ok = match &out {
                        Outcome::Passed(_) => passes(name, endpoint),
                        Outcome::Refused(_, msg) | Outcome::Handshake(msg) => {
                            !passes(name, endpoint) && msg.contains(why(name))
                        }
                    };
                    if !ok {
                        wrong.push(format!("{name} at {endpoint}: {out:?}"));
                    }
                }
            }
            println!("{table}");
            ensure!(wrong.is_empty(), "{wrong:#?}\n{table}");
            Ok(())
        },
    );
}

#[test]
fn an_agent_certificate_speaks_only_for_its_own_node() {
    sandbox::run("an_agent_certificate_speaks_only_for_its_own_node", || {
        use berth_proto::agent::agent_session_client::AgentSessionClient;
        use berth_proto::agent::{agent_message, AgentMessage, Register};
        let mut c = Cluster::start_nodes(&[], &[("node1", &[]), ("node2", &[])])?;
        let addr = c.member_addr(1);
        let id = c
            .berth(&[
                "run",
                "-d",
                "--name",
                "on2",
                "--constraint",
                "node.hostname==node2",
                "busybox",
                "sleep",
                "600",
            ])
            .ok()?
            .stdout
            .trim()
            .to_string();
        let inspect = c.berth(&["inspect", "on2"]).ok()?.stdout;
        let v: serde_json::Value = serde_json::from_str(&inspect)?;
        let generation = v[0]["Generation"]
            .as_u64()
            .or_else(|| v[0]["generation"].as_u64())
            .unwrap_or(1);
        // node1's own agent steps aside: the test speaks as node1.
        c.kill_named_agent("node1")?;
        let node1 = Some(transport::client_config(&member_creds(
            &c.agent_dir("node1"),
        )?)?);
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            // A session registered as node2 with node1's certificate is
            // refused: node2's assignments never reach it.
            let ch = channel(&addr, &node1).await.map_err(anyhow::Error::msg)?;
            let register = AgentMessage {
                msg: Some(agent_message::Msg::Register(Register {
                    node: "node2".into(),
                    ..Default::default()
                })),
            };
            let r = AgentSessionClient::new(ch)
                .session(tokio_stream::iter(vec![register]))
                .await;
            let s = r.err().context("a session as node2 was accepted")?;
            ensure!(
                s.code() == tonic::Code::PermissionDenied
                    && s.message().contains("certificate is for node node1")
                    && s.message().contains("node2"),
                "{s:?}"
            );
            // Its heartbeats as node2, likewise.
            let ch = channel(&addr, &node1).await.map_err(anyhow::Error::msg)?;
            let beat = berth_proto::agent::Heartbeat {
                seq: 1,
                node: "node2".into(),
                session_id: 1,
            };
            let mut acks = AgentSessionClient::new(ch)
                .heartbeats(tokio_stream::iter(vec![beat]))
                .await?
                .into_inner();
            let s = acks.message().await.err().context("a heartbeat as node2 was answered")?;
            ensure!(s.code() == tonic::Code::PermissionDenied, "{s:?}");
            // A session of its own node, with a report about node2's
            // container: the cluster does not take it.
            let ch = channel(&addr, &node1).await.map_err(anyhow::Error::msg)?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Register(Register {
                    node: "node1".into(),
                    ..Default::default()
                })),
            })
            .await?;
            let mut from_server = AgentSessionClient::new(ch)
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let registered = from_server.message().await?;
            ensure!(registered.is_some(), "no answer to node1's registration");
            for g in [generation, generation + 1, 1] {
                tx.send(AgentMessage {
                    msg: Some(agent_message::Msg::Transition(
                        berth_proto::agent::Transition {
                            container_id: id.clone(),
                            generation: g,
                            to: "exited".into(),
                            at_ms: 1,
                            exit_code: 137,
                            ..Default::default()
                        },
                    )),
                })
                .await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(tx);
            // And it cannot reach Raft or membership.
            for endpoint in ["raft", "membership"] {
                let out = call(&addr, &node1, endpoint, "node1").await;
                ensure!(
                    matches!(&out, Outcome::Refused(tonic::Code::PermissionDenied, m) if m.contains("agent node1")),
                    "{endpoint}: {out:?}"
                );
            }
            anyhow::Ok(())
        })?;
        // node2 stayed up and its container running.
        ensure!(c.node_ready("node2"), "{:?}", c.berth(&["node", "ls"]));
        let ps = c.berth(&["ps"]).ok()?;
        ensure!(
            ps.stdout
                .lines()
                .any(|l| l.contains("on2") && l.contains("Up")),
            "{ps:?}"
        );
        Ok(())
    });
}

/// Runs a process to its end (at most `limit`, then kills it): its exit
/// code and what it wrote to stderr.
fn run_to_end(
    mut cmd: std::process::Command,
    limit: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    let err_file = tempfile::NamedTempFile::new()?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err_file.reopen()?)
        .spawn()?;
    let start = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait()? {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((code, std::fs::read_to_string(err_file.path())?))
}

#[test]
fn a_rotated_token_is_refused_and_a_removed_node_stays_out() {
    sandbox::run(
        "a_rotated_token_is_refused_and_a_removed_node_stays_out",
        || {
            let mut c = Cluster::start()?;
            let agent = berth_chaos::cluster::bin_dir()?.join("berth-agent");
            let old = c.join_token("agent")?;
            let new = c
                .berth(&["cluster", "join-token", "agent", "--rotate", "-q"])
                .ok()?
                .stdout
                .trim()
                .to_string();
            ensure!(new != old && new.starts_with("BERTH1-"), "{old} {new}");
            ensure!(
                c.join_token("agent")? == new,
                "join-token shows the old token"
            );
            // The old token is refused, and the agent says why and stops.
            let mut cmd = std::process::Command::new(&agent);
            cmd.args(["--data-dir"])
                .arg(c.dir().join("agent-late"))
                .args([
                    "--server",
                    &c.all_addrs(),
                    "--name",
                    "late",
                    "--token",
                    &old,
                ]);
            let (code, stderr) = run_to_end(cmd, Duration::from_secs(20))?;
            ensure!(code == Some(1), "{code:?} {stderr}");
            ensure!(
                stderr.contains("not this cluster's current one"),
                "{stderr}"
            );
            ensure!(
                !c.dir()
                    .join("agent-late")
                    .join("tls")
                    .join("cert.pem")
                    .exists(),
                "a refused agent kept a certificate"
            );
            // The new one lets the node in.
            c.add_agent("late", &[])?;
            c.wait_until(Duration::from_secs(20), "the new node to be ready", |c| {
                c.node_ready("late")
            })?;
            // Removed while its agent runs: the session ends, the agent's
            // reconnection meets its revoked certificate, and it stops.
            c.berth(&["node", "rm", "--force", "late"]).ok()?;
            let log = c.dir().join("agent-late.log");
            c.wait_until(Duration::from_secs(20), "the removed agent to stop", |_| {
                std::fs::read_to_string(&log)
                    .map(|l| l.contains("berth-agent: error:") && l.contains("revoked"))
                    .unwrap_or(false)
            })?;
            ensure!(
                c.node_status("late").is_none(),
                "{:?}",
                c.berth(&["node", "ls"])
            );
            // Started again on its data dir, it is refused at once.
            let mut cmd = std::process::Command::new(&agent);
            cmd.args(["--data-dir"])
                .arg(c.dir().join("agent-late"))
                .args(["--server", &c.all_addrs(), "--name", "late"]);
            let (code, stderr) = run_to_end(cmd, Duration::from_secs(20))?;
            ensure!(
                code == Some(1) && stderr.contains("revoked"),
                "{code:?} {stderr}"
            );
            ensure!(
                c.node_status("late").is_none(),
                "the removed node came back"
            );
            Ok(())
        },
    );
}

#[test]
fn the_multi_host_script_stands_up_a_tls_cluster_that_outlives_its_leaders_host() {
    sandbox::run(
        "the_multi_host_script_stands_up_a_tls_cluster_that_outlives_its_leaders_host",
        || {
            // The sandbox's own /run/netns: the hosts' names meet no other
            // test's (its pid namespace ends their processes with it).
            std::fs::create_dir_all("/run/netns")?;
            let st = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs", "/run/netns"])
                .status()?;
            ensure!(st.success(), "mounting a tmpfs on /run/netns");
            // The checkout that runs the test, as cargo names it at run
            // time: the shared target dir can hold a binary that another
            // clone built, with that clone's path compiled in.
            let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
            let script = manifest_dir.join("../deploy/hosts.sh");
            let state = tempfile::tempdir_in("/var/tmp")?;
            let hosts = |args: &[&str]| -> anyhow::Result<std::process::Output> {
                Ok(std::process::Command::new(&script)
                    .args(args)
                    .env("BERTH_BIN", berth_chaos::cluster::bin_dir()?)
                    .env("BERTH_HOSTS_STATE", state.path())
                    .stdin(std::process::Stdio::null())
                    .output()?)
            };
            let text = |o: &std::process::Output| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            };
            let up = hosts(&["up", "3", "3"])?;
            ensure!(up.status.success(), "{}", text(&up));
            let out = text(&up);
            for h in ["10.214.0.11:7420", "10.214.0.12:7420", "10.214.0.13:7420"] {
                ensure!(out.contains(h), "{h} is not a member:\n{out}");
            }
            ensure!(out.matches(" ready ").count() == 3, "{out}");
            // Every server's certificate is the cluster's and names TLS.
            let ls = std::fs::read_dir(state.path().join("s2").join("tls"))?.count();
            ensure!(ls >= 3, "s2 keeps no credentials");
            let tar = state.path().join("busybox.tar");
            berth_chaos::images::busybox_rootfs_tar(&tar)?;
            let o = hosts(&["cli", "import", tar.to_str().unwrap_or_default(), "busybox"])?;
            ensure!(o.status.success(), "{}", text(&o));
            let o = hosts(&[
                "cli", "run", "-d", "--name", "before", "busybox", "sleep", "600",
            ])?;
            ensure!(o.status.success(), "{}", text(&o));
            // The leader's host dies: every process of its namespace.
            let status = text(&hosts(&["cli", "cluster", "status"])?);
            let leader: usize = status
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("leader: "))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|l| l.parse().ok())
                .context(status.clone())?;
            let o = hosts(&["kill", &format!("s{leader}")])?;
            ensure!(o.status.success(), "{}", text(&o));
            // The cluster keeps serving: a new leader, writes, a container.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let after = loop {
                let s = text(&hosts(&["cli", "cluster", "status"])?);
                let now = s
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("leader: "))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|l| l.parse::<usize>().ok());
                if matches!(now, Some(n) if n != leader) {
                    break s;
                }
                ensure!(std::time::Instant::now() < deadline, "no new leader:\n{s}");
                std::thread::sleep(Duration::from_millis(100));
            };
            let o = hosts(&["cli", "run", "--rm", "busybox", "echo", "still here"])?;
            ensure!(
                o.status.success() && text(&o).contains("still here"),
                "{}\n{after}",
                text(&o)
            );
            let ps = text(&hosts(&["cli", "ps"])?);
            ensure!(ps.contains("before") && ps.contains("Up"), "{ps}");
            let down = hosts(&["down"])?;
            ensure!(down.status.success(), "{}", text(&down));
            Ok(())
        },
    );
}

#[test]
fn certificates_are_renewed_before_they_expire() {
    sandbox::run("certificates_are_renewed_before_they_expire", || {
        // Certificates valid for 30 s: each is signed again when 10 s are
        // left (the servers' by themselves, the agent's by the cluster,
        // the admin credential's by the CLI as it is used).
        let c = Cluster::start_nodes(&["--cert-validity", "30s"], &[("node1", &[])])?;
        let t0 = std::time::Instant::now();
        let server_cert = c.server_dir(1).join("tls").join("cert.pem");
        let agent_cert = c.agent_dir("node1").join("tls").join("cert.pem");
        let admin = c.admin_conf();
        let first = (read(&server_cert)?, read(&agent_cert)?, read(&admin)?);
        c.berth(&["run", "-d", "--name", "keep", "busybox", "sleep", "600"])
            .ok()?;
        c.wait_until(
            Duration::from_secs(60),
            "every certificate to be signed again",
            |c| {
                let _ = c.berth(&["ps"]);
                read(&server_cert).is_ok_and(|s| s != first.0)
                    && read(&agent_cert).is_ok_and(|a| a != first.1)
                    && read(&admin).is_ok_and(|a| a != first.2)
            },
        )?;
        // Past the first certificates' end, the cluster still works
        // throughout: the node stays ready, its container up.
        while t0.elapsed() < Duration::from_secs(40) {
            ensure!(
                c.node_ready("node1"),
                "the node went down at {:?}",
                t0.elapsed()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let ps = c.berth(&["ps"]).ok()?;
        ensure!(
            ps.stdout
                .lines()
                .any(|l| l.contains("keep") && l.contains("Up")),
            "{ps:?}"
        );
        let r = c
            .berth(&["run", "--rm", "busybox", "echo", "renewed"])
            .ok()?;
        ensure!(r.stdout.trim() == "renewed", "{r:?}");
        let log = read(&c.dir().join("agent-node1.log"))?;
        ensure!(log.contains("renewed this node's certificate"), "{log}");
        Ok(())
    });
}

/// The number of certificates in a PEM file.
fn cert_count(p: &std::path::Path) -> usize {
    read(p)
        .map(|t| t.matches("-----BEGIN CERTIFICATE-----").count())
        .unwrap_or(0)
}

#[test]
fn a_ca_rotation_completes_with_containers_running_throughout() {
    sandbox::run(
        "a_ca_rotation_completes_with_containers_running_throughout",
        || {
            let mut c = Cluster::start_servers_with_nodes(3, &["node1", "node2"])?;
            c.berth(&[
                "run",
                "-d",
                "--name",
                "steady",
                "busybox",
                "sh",
                "-c",
                "while true; do echo tick; sleep 0.2; done",
            ])
            .ok()?;
            let started = |c: &Cluster| -> anyhow::Result<(String, i64)> {
                let out = c.berth(&["inspect", "steady"]).ok()?.stdout;
                let v: serde_json::Value = serde_json::from_str(&out)?;
                Ok((
                    v[0]["State"]["Status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    v[0]["State"]["StartedAtMs"].as_i64().unwrap_or_default(),
                ))
            };
            let before = started(&c)?;
            ensure!(before.0 == "running", "{before:?}");
            let old_token = c.join_token("agent")?;
            let old_admin = c.dir().join("old-admin.conf");
            std::fs::copy(c.admin_conf(), &old_admin)?;
            let old_ca = read(&c.server_dir(1).join("tls").join("ca.pem"))?;
            let r = c.berth(&["cluster", "ca", "--rotate"]).ok()?;
            ensure!(r.stdout.contains("rotating:"), "{r:?}");
            // Throughout the rotation every call passes, and it ends by
            // itself once every member holds a certificate of the new CA.
            let refused = std::cell::RefCell::new(Vec::new());
            c.wait_until(Duration::from_secs(90), "the rotation to complete", |c| {
                let ca = c.berth(&["cluster", "ca"]);
                let ps = c.berth(&["ps"]);
                for r in [&ca, &ps] {
                    if r.code != 0 {
                        refused.borrow_mut().push(r.clone());
                    }
                }
                ca.code == 0 && !ca.stdout.contains("rotating:")
            })?;
            let refused = refused.into_inner();
            ensure!(
                refused.is_empty(),
                "refused during the rotation: {refused:#?}"
            );
            // Every server and node now trusts the new CA only.
            let trust = |c: &Cluster| -> Vec<(String, usize, bool)> {
                let mut v: Vec<(String, usize, bool)> = (1..=3)
                    .map(|m| {
                        let p = c.server_dir(m).join("tls").join("ca.pem");
                        (
                            format!("server {m}"),
                            cert_count(&p),
                            read(&p).is_ok_and(|t| t == old_ca),
                        )
                    })
                    .collect();
                // node1 is the first agent, on the data dir "agent".
                for (n, dir) in [
                    ("node1", c.dir().join("agent")),
                    ("node2", c.agent_dir("node2")),
                ] {
                    let p = dir.join("tls").join("ca.pem");
                    v.push((
                        n.to_string(),
                        cert_count(&p),
                        read(&p).is_ok_and(|t| t == old_ca),
                    ));
                }
                v
            };
            let settled = c.wait_until(
                Duration::from_secs(30),
                "every member to trust only the new CA",
                |c| trust(c).iter().all(|(_, n, old)| *n == 1 && !old),
            );
            ensure!(
                settled.is_ok(),
                "{:?}\n{:?}",
                trust(&c),
                c.berth(&["cluster", "ca"])
            );
            // The container ran throughout: the same start, still running.
            let after = started(&c)?;
            ensure!(after == before, "{before:?} then {after:?}");
            ensure!(c.node_ready("node1") && c.node_ready("node2"));
            let r = c
                .berth(&["run", "--rm", "busybox", "echo", "rotated"])
                .ok()?;
            ensure!(r.stdout.trim() == "rotated", "{r:?}");
            // A token of the old CA is refused; the new one lets a node in.
            let mut cmd =
                std::process::Command::new(berth_chaos::cluster::bin_dir()?.join("berth-agent"));
            cmd.args(["--data-dir"])
                .arg(c.dir().join("agent-old"))
                .args([
                    "--server",
                    &c.all_addrs(),
                    "--name",
                    "old",
                    "--token",
                    &old_token,
                ]);
            let (code, stderr) = run_to_end(cmd, Duration::from_secs(20))?;
            ensure!(
                code == Some(1) && stderr.contains("not the one the join token names"),
                "{code:?} {stderr}"
            );
            c.add_agent("node3", &[])?;
            c.wait_until(Duration::from_secs(20), "node3 to be ready", |c| {
                c.node_ready("node3")
            })?;
            // A copy of the admin credential not used during the rotation
            // is of the old CA, and refused with the reason.
            let out = std::process::Command::new(berth_chaos::cluster::bin_dir()?.join("berth"))
                .args(["ps"])
                .env("BERTH_CONFIG", &old_admin)
                .env("BERTH_HOST", c.all_addrs())
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(!out.status.success() && stderr.contains("CA"), "{stderr}");
            Ok(())
        },
    );
}

/// The answer to the log chunk sent last: the server handles a session's
/// messages in order, so every report before it has been refused or
/// committed by then.
async fn next_ack(
    from_server: &mut tonic::Streaming<berth_proto::agent::ServerMessage>,
) -> anyhow::Result<berth_proto::agent::LogAck> {
    use berth_proto::agent::server_message;
    loop {
        let m = from_server.message().await?.context("the session ended")?;
        if let Some(server_message::Msg::LogAck(a)) = m.msg {
            return Ok(a);
        }
    }
}

/// A node's forged reports on its own container (P3.4): an exit status no
/// process has, a log chunk that ends at sequence u64::MAX, a line far
/// past any agent's cut, an inventory of more images than the limit. Each
/// is refused before it reaches the log, the session goes on, and an
/// honest report after them is taken.
#[test]
fn forged_reports_are_refused_before_they_are_committed() {
    sandbox::run(
        "forged_reports_are_refused_before_they_are_committed",
        || {
            use berth_proto::agent::agent_session_client::AgentSessionClient;
            use berth_proto::agent::{
                agent_message, server_message, AgentMessage, Heartbeat, Image, ImageInventory,
                LocalContainer, LogChunk, LogLine, Register, Transition,
            };
            let mut c = Cluster::start_nodes(&[], &[("node1", &[])])?;
            let addr = c.member_addr(1);
            c.berth(&[
                "run",
                "-d",
                "--name",
                "own",
                "busybox",
                "sh",
                "-c",
                "echo real; sleep 600",
            ])
            .ok()?;
            c.wait_until(
                Duration::from_secs(20),
                "own's first line to be committed",
                |c| c.berth(&["logs", "own"]).stdout.contains("real"),
            )?;
            let v: serde_json::Value =
                serde_json::from_str(&c.berth(&["inspect", "own"]).ok()?.stdout)?;
            let id = v[0]["Id"].as_str().context("an Id")?.to_string();
            let generation = v[0]["Generation"].as_u64().context("a Generation")?;
            let img: serde_json::Value =
                serde_json::from_str(&c.berth(&["image", "inspect", "busybox"]).ok()?.stdout)?;
            let image_id = img[0]["Id"].as_str().context("an image Id")?.to_string();
            c.kill_named_agent("node1")?;
            let node1 = Some(transport::client_config(&member_creds(
                &c.agent_dir("node1"),
            )?)?);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let ch = channel(&addr, &node1).await.map_err(anyhow::Error::msg)?;
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                let send = |m: agent_message::Msg| {
                    let tx = tx.clone();
                    async move { tx.send(AgentMessage { msg: Some(m) }).await }
                };
                send(agent_message::Msg::Register(Register {
                    node: "node1".into(),
                    cpus: 2,
                    memory_bytes: 1 << 30,
                    containers: vec![LocalContainer {
                        id: id.clone(),
                        generation,
                        state: "running".into(),
                        exit_code: 0,
                    }],
                    images: vec![Image {
                        id: image_id.clone(),
                        tags: vec!["busybox:latest".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }))
                .await?;
                let mut from_server = AgentSessionClient::new(ch)
                    .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let mut next = 0;
                while next == 0 {
                    let m = from_server.message().await?.context("the session ended")?;
                    if let Some(server_message::Msg::Registered(r)) = m.msg {
                        next = *r.log_next_seq.get(&id).context("no log position for own")?;
                    }
                }
                let line = |seq: u64, text: &[u8]| LogLine {
                    seq,
                    stream: "stdout".into(),
                    time_ns: 1,
                    line: text.to_vec().into(),
                };
                let chunk = |lines: Vec<LogLine>| {
                    agent_message::Msg::Logs(LogChunk {
                        container_id: id.clone(),
                        generation,
                        lines,
                        skip_to: 0,
                    })
                };
                send(agent_message::Msg::Heartbeat(Heartbeat::default())).await?;
                send(agent_message::Msg::Transition(Transition {
                    container_id: id.clone(),
                    generation,
                    to: "exited".into(),
                    at_ms: 1,
                    exit_code: i32::MIN,
                    ..Default::default()
                }))
                .await?;
                send(chunk(vec![
                    line(next, b"forged at the end"),
                    line(u64::MAX, b"x"),
                ]))
                .await?;
                let ack = next_ack(&mut from_server).await?;
                ensure!(
                    ack.stop && ack.next_seq == 0,
                    "the chunk to u64::MAX: {ack:?}"
                );
                send(chunk(vec![line(next, &vec![b'y'; 1 << 20])])).await?;
                let ack = next_ack(&mut from_server).await?;
                ensure!(ack.stop, "a line of 1 MiB: {ack:?}");
                send(agent_message::Msg::Images(ImageInventory {
                    images: vec![Image::default(); 10_001],
                }))
                .await?;
                send(agent_message::Msg::Heartbeat(Heartbeat::default())).await?;
                send(chunk(vec![line(next, b"honest")])).await?;
                let ack = next_ack(&mut from_server).await?;
                ensure!(
                    !ack.stop && ack.next_seq == next + 1,
                    "the honest chunk after them: {ack:?}"
                );
                anyhow::Ok(())
            })?;
            // Nothing forged landed: own still runs, with its exit code 0, the
            // node kept its images, and the log holds the honest lines only.
            let v: serde_json::Value =
                serde_json::from_str(&c.berth(&["inspect", "own"]).ok()?.stdout)?;
            ensure!(
                v[0]["State"]["Status"] == "running" && v[0]["State"]["ExitCode"] == 0,
                "{}",
                v[0]["State"]
            );
            let logs = c.berth(&["logs", "own"]).ok()?.stdout;
            ensure!(
                logs.lines().collect::<Vec<_>>() == ["real", "honest"],
                "{logs:?}"
            );
            let images = c.berth(&["images"]).ok()?.stdout;
            ensure!(images.contains("busybox"), "{images}");
            Ok(())
        },
    );
}
