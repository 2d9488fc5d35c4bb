//! The control plane with three servers: a killed leader is replaced and
//! no acknowledged write is lost.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use berth_chaos::{sandbox, Cluster};

/// True if `ps` lists a container of this name (NAMES is the last column).
fn listed(ps: &str, name: &str) -> bool {
    ps.lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

#[test]
fn a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    sandbox::run(
        "a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost",
        || {
            let mut c = Cluster::start_servers(3)?;
            let first = c.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?;
            // Writes before, then kill -9 of the leader, then writes until the
            // new leader takes them: every one acknowledged must survive.
            let mut acknowledged = Vec::new();
            for i in 0..5 {
                let name = format!("w{i}");
                if c.berth(&["create", "--name", &name, "busybox", "true"])
                    .code
                    == 0
                {
                    acknowledged.push(name);
                }
            }
            ensure!(acknowledged.len() == 5, "writes failed before the fault");
            c.kill_member(first)?;
            let killed = Instant::now();
            let mut failover = None;
            let mut i = 5;
            while acknowledged.len() < 15 && killed.elapsed() < Duration::from_secs(30) {
                let name = format!("w{i}");
                i += 1;
                if c.berth(&["create", "--name", &name, "busybox", "true"])
                    .code
                    == 0
                {
                    failover.get_or_insert(killed.elapsed());
                    acknowledged.push(name);
                }
            }
            let failover = failover.ok_or_else(|| {
                anyhow::anyhow!("no write was accepted after the leader died\n{}", c.logs())
            })?;
            println!("first write accepted {failover:?} after kill -9 of the leader");
            // The survivors saw the dead leader's port refuse connections and
            // stood without waiting a random election timeout.
            let logs = c.logs();
            ensure!(
                logs.contains("the leader's address refuses connections"),
                "no follower took the fast failover path:\n{logs}"
            );
            let now = c
                .leader()
                .ok_or_else(|| anyhow::anyhow!("no leader after the fault"))?;
            ensure!(now != first, "the dead server {first} is still the leader");
            let ps = c.berth(&["ps", "-a"]).ok()?.stdout;
            for name in &acknowledged {
                ensure!(listed(&ps, name), "{name} is lost:\n{ps}");
            }
            // The cluster still runs containers.
            let r = c
                .berth(&["run", "--rm", "busybox", "echo", "still here"])
                .ok()?;
            ensure!(r.stdout == "still here\n", "{r:?}");
            Ok(())
        },
    );
}

#[test]
fn a_stopped_leader_hands_its_leadership_over() {
    sandbox::run("a_stopped_leader_hands_its_leadership_over", || {
        let mut c = Cluster::start_servers(3)?;
        let first = c.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let term = |c: &Cluster| field(&c.berth(&["cluster", "status"]).stdout, "term");
        let before = term(&c).ok_or_else(|| anyhow::anyhow!("no term"))?;
        for i in 0..3 {
            c.berth(&["create", "--name", &format!("h{i}"), "busybox", "true"])
                .ok()?;
        }
        // SIGTERM, as a service manager stops it: the leader hands over
        // before it exits, so no election is needed.
        let stopped = Instant::now();
        c.stop_member(first)?;
        println!("leader {first} stopped in {:?}", stopped.elapsed());
        let logs = c.logs();
        ensure!(
            logs.contains("handed the leadership over"),
            "the stopping leader did not hand over:\n{logs}"
        );
        let now = c
            .leader()
            .ok_or_else(|| anyhow::anyhow!("no leader after the stop"))?;
        ensure!(
            now != first,
            "the stopped server {first} is still the leader"
        );
        // One term later: the new leader took over, nobody timed out.
        let after = term(&c).ok_or_else(|| anyhow::anyhow!("no term"))?;
        ensure!(after == before + 1, "term went from {before} to {after}");
        ensure!(
            !logs.contains("refuses connections"),
            "a follower took the stop for a crash:\n{logs}"
        );
        c.berth(&["create", "--name", "h3", "busybox", "true"])
            .ok()?;
        let ps = c.berth(&["ps", "-a"]).ok()?.stdout;
        for name in ["h0", "h1", "h2", "h3"] {
            ensure!(listed(&ps, name), "{name} is lost:\n{ps}");
        }
        Ok(())
    });
}

#[test]
fn members_restart_on_their_data_dirs_and_lose_nothing() {
    sandbox::run(
        "members_restart_on_their_data_dirs_and_lose_nothing",
        || {
            let mut c = Cluster::start_servers(3)?;
            for i in 0..5 {
                c.berth(&["create", "--name", &format!("a{i}"), "busybox", "true"])
                    .ok()?;
            }
            // One member down: the other two go on; back, it catches up.
            let follower = (1..=3).find(|id| Some(*id) != c.leader()).unwrap_or(3);
            c.kill_member(follower)?;
            for i in 0..5 {
                c.berth(&["create", "--name", &format!("b{i}"), "busybox", "true"])
                    .ok()?;
            }
            if follower == 1 {
                c.start_server(false)?;
            } else {
                c.start_member(follower)?;
            }
            c.wait_until(
                Duration::from_secs(20),
                "the restarted member to catch up",
                |c| {
                    let s = c.berth(&["cluster", "status"]).stdout;
                    let lags: Vec<&str> = s
                        .lines()
                        .skip(2)
                        .filter_map(|l| l.split_whitespace().nth(3))
                        .collect();
                    lags.len() == 3 && lags.iter().all(|l| *l == "0")
                },
            )?;
            // All three down, all three up: everything is there.
            for id in 1..=3 {
                c.kill_member(id)?;
            }
            c.start_server(false)?;
            c.start_member(2)?;
            c.start_member(3)?;
            c.wait_until(
                Duration::from_secs(20),
                "a leader after a full restart",
                |c| c.leader().is_some(),
            )?;
            let ps = c.berth(&["ps", "-a"]).ok()?.stdout;
            for name in ["a0", "a4", "b0", "b4"] {
                ensure!(listed(&ps, name), "{name} is lost:\n{ps}");
            }
            c.wait_for_ready_node()?;
            let r = c.berth(&["run", "--rm", "busybox", "echo", "back"]).ok()?;
            ensure!(r.stdout == "back\n", "{r:?}");
            Ok(())
        },
    );
}

#[test]
fn servers_started_without_ids_come_back_as_the_same_members() {
    sandbox::run(
        "servers_started_without_ids_come_back_as_the_same_members",
        || {
            // As an operator's unit files would: --bootstrap on one, --join
            // on the others, no --id anywhere.
            let mut c = Cluster::start_servers_without_ids(3, 7470)?;
            let before = c.members();
            let expected: Vec<(String, String)> = (1..=3)
                .map(|i| (i.to_string(), format!("127.0.0.1:{}", 7469 + i)))
                .collect();
            ensure!(before == expected, "{before:?}");
            for id in 1..=3 {
                ensure!(
                    std::fs::read_to_string(c.server_dir(id).join("server-id"))?.trim()
                        == id.to_string(),
                    "server {id}'s data dir does not keep its id"
                );
            }
            // All three down, all three up with the same flags.
            for id in 1..=3 {
                c.kill_member(id)?;
            }
            c.start_server(false)?;
            c.start_member(2)?;
            c.start_member(3)?;
            c.wait_until(Duration::from_secs(30), "a leader again", |c| {
                c.leader().is_some() && c.members() == expected
            })?;
            c.berth(&["create", "--name", "after", "busybox", "true"])
                .ok()?;
            // An --id that contradicts the data dir is refused by name.
            c.kill_member(2)?;
            let out =
                std::process::Command::new(berth_chaos::cluster::bin_dir()?.join("berth-server"))
                    .args(["--data-dir"])
                    .arg(c.server_dir(2))
                    .args(["--listen", "127.0.0.1:7471", "--id", "7"])
                    .output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(!out.status.success(), "a conflicting --id was accepted");
            ensure!(
                err.contains("belongs to server 2; --id 7 contradicts it"),
                "{err}"
            );
            Ok(())
        },
    );
}

#[test]
fn the_cluster_makes_its_ca_once_and_each_server_its_certificate() {
    sandbox::run(
        "the_cluster_makes_its_ca_once_and_each_server_its_certificate",
        || {
            let c = Cluster::start_servers_without_ids(3, 7480)?;
            let tls = |id: usize, f: &str| c.server_dir(id).join("tls").join(f);
            c.wait_until(
                Duration::from_secs(30),
                "every server's certificate",
                |_| (1..=3).all(|id| tls(id, "cert.pem").exists() && tls(id, "ca.pem").exists()),
            )?;
            // The admin credential of the bootstrap server: its owner's only.
            let admin_path = c.server_dir(1).join("admin.conf");
            c.wait_until(Duration::from_secs(30), "admin.conf", |_| {
                admin_path.exists()
            })?;
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&admin_path)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "admin.conf is {mode:o}");
            let key_mode = std::fs::metadata(tls(2, "key.pem"))?.permissions().mode() & 0o777;
            ensure!(key_mode == 0o600, "a server's key is {key_mode:o}");
            let admin: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&admin_path)?)?;
            ensure!(admin["endpoints"][0] == "127.0.0.1:7480", "{admin}");
            let dir = c.dir().join("pki-check");
            std::fs::create_dir_all(&dir)?;
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, admin["ca"].as_str().unwrap_or_default())?;
            let admin_cert = dir.join("admin.pem");
            std::fs::write(&admin_cert, admin["cert"].as_str().unwrap_or_default())?;
            // One CA for all (made once, replicated), and every certificate
            // signed by it, as openssl checks them.
            for id in 1..=3 {
                ensure!(
                    std::fs::read(tls(id, "ca.pem"))? == std::fs::read(&ca)?,
                    "server {id} trusts another CA"
                );
            }
            let check = |cert: &std::path::Path, uri: &str| -> anyhow::Result<()> {
                let v = std::process::Command::new("openssl")
                    .args(["verify", "-CAfile"])
                    .arg(&ca)
                    .arg(cert)
                    .output()?;
                ensure!(
                    v.status.success(),
                    "{}: {}",
                    cert.display(),
                    String::from_utf8_lossy(&v.stderr)
                );
                let text = std::process::Command::new("openssl")
                    .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                    .arg(cert)
                    .output()?;
                let text = String::from_utf8_lossy(&text.stdout);
                ensure!(text.contains(uri), "{}: {text}", cert.display());
                Ok(())
            };
            check(&admin_cert, "URI:berth://admin/admin")?;
            for id in 1..=3 {
                check(&tls(id, "cert.pem"), &format!("URI:berth://server/{id}"))?;
            }
            // A certificate of another CA does not pass openssl's check.
            let stranger = dir.join("stranger.pem");
            let made = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/CN=x",
                    "-days",
                    "1",
                    "-keyout",
                ])
                .arg(dir.join("stranger.key"))
                .arg("-out")
                .arg(&stranger)
                .output()?;
            ensure!(
                made.status.success(),
                "{}",
                String::from_utf8_lossy(&made.stderr)
            );
            ensure!(
                check(&stranger, "URI:berth://").is_err(),
                "a stranger passed"
            );
            Ok(())
        },
    );
}

/// The applied index server `id` reports.
fn applied(c: &Cluster, id: usize) -> Option<u64> {
    member_field(c, id, "applied")
}

/// A number from `cluster status` as server `id` itself reports it.
fn member_field(c: &Cluster, id: usize, name: &str) -> Option<u64> {
    let s = c
        .berth_within(
            &["--host", &c.member_addr(id), "cluster", "status"],
            Duration::from_secs(5),
        )
        .stdout;
    field(&s, name)
}

#[test]
fn a_partitioned_leader_commits_nothing_and_catches_up_after_the_heal() {
    sandbox::run(
        "a_partitioned_leader_commits_nothing_and_catches_up_after_the_heal",
        || {
            let c = Cluster::start_servers(3)?;
            for i in 0..3 {
                c.berth(&["create", "--name", &format!("a{i}"), "busybox", "true"])
                    .ok()?;
            }
            let old = c.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?;
            let before = applied(&c, old).ok_or_else(|| {
                let r = c.berth_within(
                    &["--host", &c.member_addr(old), "cluster", "status"],
                    Duration::from_secs(5),
                );
                anyhow::anyhow!("no status from {old}: {r:?}")
            })?;
            c.partition(old, 3)?;
            // Cut off, the old leader commits nothing: a write sent to it does
            // not come back acknowledged.
            let r = c.berth_within(
                &[
                    "--host",
                    &c.member_addr(old),
                    "create",
                    "--name",
                    "lost",
                    "busybox",
                    "true",
                ],
                Duration::from_secs(3),
            );
            ensure!(
                r.code != 0,
                "the cut-off server acknowledged a write: {r:?}"
            );
            // The other two elect a leader and go on.
            let majority: Vec<String> = (1..=3)
                .filter(|m| *m != old)
                .map(|m| c.member_addr(m))
                .collect();
            let majority = majority.join(",");
            c.wait_until(
                Duration::from_secs(10),
                "a leader among the majority",
                |c| {
                    let s = c
                        .berth_within(
                            &["--host", &majority, "cluster", "status"],
                            Duration::from_secs(3),
                        )
                        .stdout;
                    s.lines()
                        .next()
                        .and_then(|l| l.strip_prefix("leader: "))
                        .and_then(|l| l.split_whitespace().next())
                        .and_then(|l| l.parse::<usize>().ok())
                        .is_some_and(|l| l != old)
                },
            )?;
            for i in 0..3 {
                let r = c.berth_within(
                    &[
                        "--host",
                        &majority,
                        "create",
                        "--name",
                        &format!("b{i}"),
                        "busybox",
                        "true",
                    ],
                    Duration::from_secs(10),
                );
                ensure!(r.code == 0, "the majority refused a write: {r:?}");
            }
            let during = applied(&c, old).unwrap_or(before);
            ensure!(
                during == before,
                "the cut-off server applied {} entries",
                during - before
            );
            // Healed, it catches up: same applied index as the new leader, and
            // every write the cluster acknowledged is there, the lost one not.
            c.heal(3)?;
            c.wait_until(Duration::from_secs(15), "the old leader to catch up", |c| {
                let new_leader = c.leader();
                match (new_leader.and_then(|l| applied(c, l)), applied(c, old)) {
                    (Some(a), Some(b)) => a == b && a > before,
                    _ => false,
                }
            })?;
            let ps = c.berth(&["ps", "-a"]).ok()?.stdout;
            for name in ["a0", "a2", "b0", "b2"] {
                ensure!(listed(&ps, name), "{name} is lost:\n{ps}");
            }
            ensure!(
                !ps.contains(" lost "),
                "a write the cluster never acknowledged appeared:\n{ps}"
            );
            // A leader that is cut off but alive still accepts connections:
            // the fast failover must not take it for dead.
            let logs = c.logs();
            ensure!(
                !logs.contains("refuses connections"),
                "a live leader was taken for dead:\n{logs}"
            );
            Ok(())
        },
    );
}

#[test]
fn a_cut_off_follower_leaves_the_term_and_the_leader_alone() {
    sandbox::run(
        "a_cut_off_follower_leaves_the_term_and_the_leader_alone",
        || {
            let c = Cluster::start_servers(3)?;
            c.berth(&["create", "--name", "a", "busybox", "true"])
                .ok()?;
            let leader = c.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?;
            let term_of = |id: usize| member_field(&c, id, "term");
            let term = term_of(leader).context("no term")?;
            let follower = (1..=3).find(|m| *m != leader).context("no follower")?;
            // Cut off from both others for ten times the longest election
            // timeout, the follower's timer fires again and again. Each
            // time it only asks (a pre-vote), which nobody grants, so its
            // term stays where it was: it is what a member starved of CPU
            // looks like to the others.
            c.partition(follower, 3)?;
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                let t = term_of(follower);
                ensure!(
                    t.is_none_or(|t| t == term),
                    "the cut-off follower raised the term from {term} to {t:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            c.heal(3)?;
            // Back, it follows the same leader in the same term, and the
            // cluster commits as before.
            c.wait_until(Duration::from_secs(10), "the follower to be back", |_| {
                applied(&c, follower) == c.leader().and_then(|l| applied(&c, l))
            })?;
            c.berth(&["create", "--name", "b", "busybox", "true"])
                .ok()?;
            ensure!(
                c.leader() == Some(leader),
                "the leader changed from {leader} to {:?}",
                c.leader()
            );
            for id in 1..=3 {
                ensure!(
                    term_of(id) == Some(term),
                    "member {id} is in term {:?}, not {term}",
                    term_of(id)
                );
            }
            Ok(())
        },
    );
}

/// A number from the first line of `cluster status` ("applied: 42").
/// Waits until member `id` has applied what the leader has, having been
/// brought up by a snapshot of index `min_snapshot` or more.
fn caught_up_by_snapshot(
    c: &Cluster,
    id: usize,
    min_snapshot: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    c.wait_until(limit, "the new member to catch up by snapshot", |c| {
        let leader_applied = field(&c.berth(&["cluster", "status"]).stdout, "applied");
        let mine = c
            .berth_within(
                &["--host", &c.member_addr(id), "cluster", "status"],
                Duration::from_secs(3),
            )
            .stdout;
        leader_applied.is_some()
            && field(&mine, "applied") == leader_applied
            && field(&mine, "snapshot").unwrap_or(0) >= min_snapshot
    })
}

fn field(status: &str, name: &str) -> Option<u64> {
    Cluster::status_field(status, name)
}

#[test]
fn a_new_member_is_brought_up_by_snapshot_and_members_can_leave() {
    sandbox::run(
        "a_new_member_is_brought_up_by_snapshot_and_members_can_leave",
        || {
            // Snapshots every 50 entries, so that a few hundred writes compact
            // the log (the default is every 5,000).
            std::env::set_var("BERTH_SNAPSHOT_LOGS", "50");
            let mut c = Cluster::start_servers(3)?;
            for i in 0..150 {
                c.berth(&["create", "--name", &format!("s{i}"), "busybox", "true"])
                    .ok()?;
            }
            let status = c.berth(&["cluster", "status"]).ok()?.stdout;
            let purged = field(&status, "purged").unwrap_or(0);
            ensure!(
                purged > 0,
                "the leader's log was never compacted:\n{status}"
            );
            // A fourth server joins after the entries it would need are gone
            // from the log: only a snapshot can bring it up.
            c.add_member(4)?;
            caught_up_by_snapshot(&c, 4, 1, Duration::from_secs(30))?;
            let status = c.berth(&["cluster", "status"]).ok()?.stdout;
            ensure!(
                status
                    .lines()
                    .skip(2)
                    .filter(|l| l.contains("voter") || l.contains("leader"))
                    .count()
                    == 4,
                "{status}"
            );
            // A live member leaves; a dead one is removed.
            c.berth(&["cluster", "leave", "4"]).ok()?;
            let follower = (2..=3).find(|id| Some(*id) != c.leader()).unwrap_or(3);
            c.kill_member(follower)?;
            c.berth(&["cluster", "leave", &follower.to_string()]).ok()?;
            let status = c.berth(&["cluster", "status"]).ok()?.stdout;
            ensure!(status.lines().skip(2).count() == 2, "{status}");
            let r = c.berth(&["create", "--name", "after-leave", "busybox", "true"]);
            ensure!(r.code == 0, "{r:?}");
            let r = c.berth(&["cluster", "leave", "9"]);
            ensure!(r.code != 0 && r.stderr.contains("no member 9"), "{r:?}");
            Ok(())
        },
    );
}

#[test]
fn backup_and_restore_round_trip() {
    sandbox::run("backup_and_restore_round_trip", || {
        let c = Cluster::start()?;
        c.berth(&[
            "run",
            "--name",
            "kept",
            "busybox",
            "sh",
            "-c",
            "echo one; echo two; exit 3",
        ]);
        c.berth(&["create", "--name", "made", "busybox", "true"])
            .ok()?;
        let backup = c.dir().join("cluster.backup");
        let r = c
            .berth(&["cluster", "backup", "-o", backup.to_str().unwrap()])
            .ok()?;
        ensure!(r.stdout.contains("bytes written"), "{r:?}");
        // A new cluster, elsewhere, from the backup.
        let bin = berth_chaos::cluster::bin_dir()?;
        let data = c.dir().join("restored");
        let mut server = std::process::Command::new(bin.join("berth-server"))
            .args([
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:7430",
                "--bootstrap",
                "--restore",
            ])
            .arg(&backup)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(c.dir().join("restored.log"))?)
            .spawn()?;
        let restored = |args: &[&str]| {
            let mut all = vec!["--host", "127.0.0.1:7430"];
            all.extend_from_slice(args);
            c.berth_within(&all, Duration::from_secs(5))
        };
        let result = (|| {
            c.wait_until(Duration::from_secs(20), "the restored server", |_| {
                restored(&["ps", "-a"]).code == 0
            })?;
            let before = c.berth(&["ps", "-a", "-q"]).ok()?.stdout;
            let after = restored(&["ps", "-a", "-q"]).ok()?.stdout;
            ensure!(
                before == after && before.lines().count() == 2,
                "before {before:?}, after {after:?}"
            );
            let logs = restored(&["logs", "kept"]).ok()?.stdout;
            ensure!(logs == "one\ntwo\n", "{logs:?}");
            let ps = restored(&["ps", "-a"]).ok()?.stdout;
            ensure!(
                ps.lines()
                    .any(|l| l.contains("kept") && l.contains("Exited (3)")),
                "{ps}"
            );
            // Restoring onto a data dir that holds a cluster is refused.
            let out = std::process::Command::new(bin.join("berth-server"))
                .args([
                    "--data-dir",
                    c.dir().join("server").to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:7431",
                    "--bootstrap",
                    "--restore",
                ])
                .arg(&backup)
                .output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success()
                    && (err.contains("needs an empty one") || err.contains("LOCK")),
                "{err}"
            );
            Ok(())
        })();
        let _ = server.kill();
        let _ = server.wait();
        result
    });
}

#[test]
fn events_show_what_happened_and_follow_what_happens() {
    sandbox::run("events_show_what_happened_and_follow_what_happens", || {
        let c = Cluster::start()?;
        c.berth(&[
            "run", "--rm", "--name", "brief", "busybox", "sh", "-c", "exit 2",
        ]);
        let r = c
            .berth(&[
                "events",
                "--since",
                "1m",
                "--until",
                "0s",
                "--filter",
                "container=brief",
            ])
            .ok()?;
        let actions: Vec<&str> = r
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        ensure!(actions == ["create", "start", "die", "destroy"], "{r:?}");
        ensure!(r.stdout.contains("exitCode=2"), "{r:?}");
        let r = c
            .berth(&[
                "events",
                "--since",
                "1m",
                "--until",
                "0s",
                "--filter",
                "type=node",
            ])
            .ok()?;
        ensure!(
            r.stdout.lines().any(|l| l.contains(" node ready node1")),
            "{r:?}"
        );
        let r = c
            .berth(&[
                "events",
                "--since",
                "1m",
                "--until",
                "0s",
                "--filter",
                "type=image",
                "--filter",
                "event=tag",
            ])
            .ok()?;
        ensure!(r.stdout.contains("image tag busybox:latest"), "{r:?}");

        // Following: a new event arrives while berth events runs.
        let bin = berth_chaos::cluster::bin_dir()?;
        let mut follower = std::process::Command::new(bin.join("berth"))
            .args(["events", "--filter", "event=die"])
            .env("BERTH_HOST", berth_chaos::cluster::SERVER_ADDR)
            .env("BERTH_CONFIG", c.admin_conf())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = follower.stdout.take().expect("a stdout pipe");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // The follower asks for events since it started, so one made before
        // its stream is open reaches it all the same.
        c.berth(&["run", "--name", "later", "busybox", "sh", "-c", "exit 5"]);
        let line = rx.recv_timeout(Duration::from_secs(10));
        let _ = follower.kill();
        let _ = follower.wait();
        let line = line.map_err(|_| anyhow::anyhow!("no event reached the follower"))?;
        ensure!(
            line.contains("container die")
                && line.contains("exitCode=5")
                && line.contains("name=later"),
            "{line}"
        );
        Ok(())
    });
}

#[test]
fn any_server_answers_any_call() {
    sandbox::run("any_server_answers_any_call", || {
        use berth_proto::cluster::{ContainerSpec, CreateContainerRequest, ListContainersRequest};
        let c = Cluster::start_servers(3)?;
        let lead = c.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?;
        let follower = (1..=3).find(|m| *m != lead).unwrap_or(2);
        let addr = c.member_addr(follower);
        // A client that talks to a follower only: the follower forwards.
        let rt = tokio::runtime::Runtime::new()?;
        let names = rt.block_on(async {
            let mut client = c.client(&addr).await?;
            client
                .create_container(CreateContainerRequest {
                    name: "via-follower".into(),
                    spec: Some(ContainerSpec {
                        image: "busybox".into(),
                        cmd: vec!["true".into()],
                        ..Default::default()
                    }),
                    start: true,
                    attached: false,
                })
                .await?;
            let list = client
                .list_containers(ListContainersRequest {
                    all: true,
                    size: false,
                })
                .await?;
            anyhow::Ok(
                list.into_inner()
                    .containers
                    .into_iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>(),
            )
        })?;
        ensure!(names.contains(&"via-follower".to_string()), "{names:?}");
        // The follower's own status is its own, not the leader's.
        let r = c.berth_within(
            &["--host", &addr, "cluster", "status"],
            Duration::from_secs(5),
        );
        ensure!(r.stdout.contains(&format!("leader: {lead}")), "{r:?}");
        Ok(())
    });
}

#[test]
fn after_ten_thousand_writes_a_new_member_comes_up_by_snapshot() {
    sandbox::run(
        "after_ten_thousand_writes_a_new_member_comes_up_by_snapshot",
        || {
            use berth_chaos::cluster::set_label;
            // Concurrent writes share Raft entries (the server batches
            // them), so 10,000 writes make far fewer than 10,000 entries:
            // a snapshot every 500 entries makes sure the log is compacted.
            std::env::set_var("BERTH_SNAPSHOT_LOGS", "500");
            // Small log segments, so that compaction has whole segments to
            // delete from the disk.
            std::env::set_var("BERTH_LOG_SEGMENT_BYTES", "16384");
            let mut c = Cluster::start_servers(3)?;
            let addr = c.member_addr(c.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?);
            let rt = tokio::runtime::Runtime::new()?;
            let written = rt.block_on(async {
                let client = c.client(&addr).await?;
                let mut tasks = Vec::new();
                for t in 0..16u32 {
                    let mut client = client.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut ok = 0u32;
                        for i in 0..625u32 {
                            if set_label(&mut client, "node1", format!("k{t}"), i.to_string()).await
                            {
                                ok += 1;
                            }
                        }
                        ok
                    }));
                }
                let mut total = 0;
                for t in tasks {
                    total += t.await?;
                }
                anyhow::Ok(total)
            })?;
            ensure!(written == 10_000, "{written} of 10000 writes acknowledged");
            // A snapshot is taken once 500 entries have been applied since
            // the last one, and the log is purged up to 100 entries behind
            // it (to 399 after the first), in the background. How many
            // entries the 10,000 writes made depends on the machine's
            // speed (a slower one batches more), so small writes go on
            // until the first snapshot is there.
            c.wait_until(Duration::from_secs(60), "the log to be compacted", |c| {
                if field(&c.berth(&["cluster", "status"]).stdout, "purged").unwrap_or(0) >= 399 {
                    return true;
                }
                c.fill_writes(20);
                false
            })?;
            // On every member the first segment files are gone from disk.
            c.wait_until(
                Duration::from_secs(30),
                "the first log segment to be deleted on every member",
                |c| {
                    (1..=3).all(|id| {
                        let log = c.server_dir(id).join("raft-log");
                        log.is_dir() && !log.join("0000000000000000.wal").exists()
                    })
                },
            )?;
            c.add_member(4)?;
            // The first snapshot (index 499) covers the purged entries.
            caught_up_by_snapshot(&c, 4, 499, Duration::from_secs(60))?;
            let nodes = c.berth(&["node", "ls"]).ok()?.stdout;
            // Sixteen clients wrote one node concurrently, in shared
            // entries: every client's last write is there.
            for t in 0..16 {
                ensure!(
                    nodes.contains(&format!("k{t}=624")),
                    "client {t}'s last write is missing:\n{nodes}"
                );
            }
            Ok(())
        },
    );
}

#[test]
fn an_idle_agent_keeps_its_session_with_a_lone_server() {
    sandbox::run("an_idle_agent_keeps_its_session_with_a_lone_server", || {
        let c = Cluster::start_nodes(&[], &[("node1", &[])])?;
        c.wait_until(Duration::from_secs(30), "node1 ready", |c| {
            c.node_ready("node1")
        })?;
        // Three TTLs (2 s each) with nothing to do: the session that
        // registered is still the node's, and the server never dropped it
        // (a lone voter is its own quorum; no answer renews the time Raft
        // records for one, and reading that time as silence dropped every
        // session each half second).
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            let logs = c.logs();
            ensure!(
                !logs.contains("session ended") && !logs.contains("dropping agent sessions"),
                "the agent lost its session:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ensure!(c.node_ready("node1"), "node1 is no longer ready");
        Ok(())
    });
}
