//! The scheduler through a real cluster: one server, several agents (each
//! its own process, data dir and node name), services and placement, node
//! loss with the real processes counted, and --rm carried out by the
//! cluster. Each test runs in namespaces of its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use berth_chaos::processes::{self, Sampler};
use berth_chaos::{sandbox, Cluster};

/// The nodes of each running task of a service, from `berth service ps`.
fn task_nodes(c: &Cluster, service: &str) -> anyhow::Result<Vec<(String, String)>> {
    let r = c.berth(&["service", "ps", service]).ok()?;
    Ok(r.stdout
        .lines()
        .skip(1)
        .filter(|l| l.contains(" Up "))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[1].to_string(), cols[3].to_string())
        })
        .collect())
}

fn per_node(tasks: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, node) in tasks {
        *m.entry(node.clone()).or_default() += 1;
    }
    m
}

/// The NODE and STATUS of a container, from `berth inspect`.
fn inspect(c: &Cluster, name: &str) -> anyhow::Result<serde_json::Value> {
    let r = c.berth(&["inspect", name]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.stdout)?;
    Ok(v[0].clone())
}

#[test]
fn a_service_spreads_and_placement_keeps_constraints_and_reservations() {
    sandbox::run(
        "a_service_spreads_and_placement_keeps_constraints_and_reservations",
        || {
            let mut c = Cluster::start_nodes(
                &[],
                &[
                    ("node1", &[]),
                    ("node2", &["--label", "zone=east"]),
                    ("node3", &[]),
                ],
            )?;
            // Six replicas over three nodes: two each.
            let r = c.berth_within(
                &[
                    "service",
                    "create",
                    "--name",
                    "web",
                    "--replicas",
                    "6",
                    "busybox",
                    "sleep",
                    "600",
                ],
                Duration::from_secs(60),
            );
            ensure!(r.code == 0, "service create: {r:?}");
            ensure!(r.stderr.contains("converged"), "{r:?}");
            let tasks = task_nodes(&c, "web")?;
            let spread = per_node(&tasks);
            ensure!(
                spread.values().copied().collect::<Vec<_>>() == [2, 2, 2] && spread.len() == 3,
                "6 replicas over 3 nodes landed {spread:?}"
            );
            let mut names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
            names.sort();
            ensure!(
                names == ["web.1", "web.2", "web.3", "web.4", "web.5", "web.6"],
                "{names:?}"
            );
            let ls = c.berth(&["service", "ls"]).ok()?;
            ensure!(ls.stdout.contains("6/6"), "{}", ls.stdout);

            // A constraint on an agent label.
            c.berth(&[
                "run",
                "-d",
                "--name",
                "east",
                "--constraint",
                "node.labels.zone==east",
                "busybox",
                "sleep",
                "600",
            ])
            .ok()?;
            ensure!(inspect(&c, "east")?["Node"] == "node2");
            c.berth(&[
                "run",
                "-d",
                "--name",
                "noteast",
                "--constraint",
                "node.hostname!=node2",
                "--constraint",
                "node.hostname!=node1",
                "busybox",
                "sleep",
                "600",
            ])
            .ok()?;
            ensure!(inspect(&c, "noteast")?["Node"] == "node3");
            // A bad constraint is refused, naming what is wrong.
            let r = c.berth(&["run", "-d", "--constraint", "zone=east", "busybox", "true"]);
            ensure!(
                r.code != 0 && r.stderr.contains("invalid constraint"),
                "{r:?}"
            );

            // A reservation no node can hold: accepted, Pending, with the reason.
            let r = c
                .berth(&[
                    "run",
                    "-d",
                    "--name",
                    "huge",
                    "--reserve-memory",
                    "100000g",
                    "busybox",
                    "true",
                ])
                .ok()?;
            ensure!(r.stderr.contains("pending"), "{r:?}");
            let huge = inspect(&c, "huge")?;
            ensure!(huge["State"]["Status"] == "pending", "{huge}");
            ensure!(
                huge["State"]["PendingReason"] == "no node has 100000 GiB of free memory",
                "{huge}"
            );
            let ps = c.berth(&["ps", "-a"]).ok()?;
            ensure!(
                ps.stdout
                    .contains("Pending: no node has 100000 GiB of free memory"),
                "{}",
                ps.stdout
            );
            // Reservations count: each node (this host's memory) takes as
            // many 40%-of-memory reservations as fit: two per node at most.
            let total: u64 = std::fs::read_to_string("/proc/meminfo")?
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
                .context("reading MemTotal")?
                * 1024;
            let share = format!("{}", total * 2 / 5);
            for i in 0..7 {
                let name = format!("r{i}");
                c.berth(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--reserve-memory",
                    &share,
                    "busybox",
                    "sleep",
                    "600",
                ])
                .ok()?;
            }
            let mut placed = BTreeMap::<String, usize>::new();
            let mut pending = Vec::new();
            for i in 0..7 {
                let v = inspect(&c, &format!("r{i}"))?;
                if v["State"]["Status"] == "pending" {
                    pending.push(v["State"]["PendingReason"].to_string());
                } else {
                    *placed
                        .entry(v["Node"].as_str().unwrap_or_default().into())
                        .or_default() += 1;
                }
            }
            ensure!(
                placed.values().all(|n| *n <= 2) && placed.values().sum::<usize>() == 6,
                "40% reservations landed {placed:?}"
            );
            ensure!(
                pending.len() == 1 && pending[0].contains("of free memory"),
                "{pending:?}"
            );

            // A container that fits nowhere runs once a node that fits joins.
            let r = c
                .berth(&[
                    "run",
                    "-d",
                    "--name",
                    "late",
                    "--constraint",
                    "node.labels.zone==late",
                    "busybox",
                    "sleep",
                    "600",
                ])
                .ok()?;
            ensure!(r.stderr.contains("no node meets the constraints"), "{r:?}");
            c.add_agent("node4", &["--label", "zone=late"])?;
            // The new node needs the image before it fits.
            c.wait_until(Duration::from_secs(30), "node4 to be ready", |c| {
                c.node_ready("node4")
            })?;
            let tar = c.dir().join("busybox-node4.tar");
            berth_chaos::images::busybox_rootfs_tar(&tar)?;
            c.berth(&["import", tar.to_str().unwrap_or_default(), "busybox"])
                .ok()?;
            c.wait_until(Duration::from_secs(30), "late to run on node4", |c| {
                inspect(c, "late")
                    .is_ok_and(|v| v["Node"] == "node4" && v["State"]["Status"] == "running")
            })?;
            Ok(())
        },
    );
}

#[test]
fn a_killed_agents_replicas_move_and_never_run_twice() {
    sandbox::run("a_killed_agents_replicas_move_and_never_run_twice", || {
        let mut c = Cluster::start_nodes(&[], &[("node1", &[]), ("node2", &[]), ("node3", &[])])?;
        // The tasks' processes are `sleep 31337`, counted in /proc.
        let sampler = Sampler::start(&["sleep", "31337"], Duration::from_millis(10));
        let r = c.berth_within(
            &[
                "service",
                "create",
                "--name",
                "web",
                "--replicas",
                "6",
                "busybox",
                "sleep",
                "31337",
            ],
            Duration::from_secs(60),
        );
        ensure!(r.code == 0, "service create: {r:?}");
        ensure!(processes::count(&["sleep", "31337"]) == 6);
        let before = task_nodes(&c, "web")?;
        let on_node2: Vec<String> = before
            .iter()
            .filter(|(_, n)| n == "node2")
            .map(|(t, _)| t.clone())
            .collect();
        ensure!(on_node2.len() == 2, "{before:?}");

        c.kill_named_agent("node2")?;
        let killed = Instant::now();
        c.wait_until(
            Duration::from_secs(5),
            "node2 down and its replicas running elsewhere",
            |c| {
                c.node_status("node2").as_deref() == Some("down")
                    && task_nodes(c, "web")
                        .is_ok_and(|t| t.len() == 6 && t.iter().all(|(_, n)| n != "node2"))
            },
        )?;
        let moved_in = killed.elapsed();
        ensure!(
            moved_in < Duration::from_secs(5),
            "replicas moved after {moved_in:?}"
        );
        // The copies on node2 were stopped by their shims (the lease), not
        // left running beside their replacements.
        c.wait_until(Duration::from_secs(5), "6 sleep processes", |_| {
            processes::count(&["sleep", "31337"]) == 6
        })?;

        // The agent comes back: its stale copies go, and nothing doubles.
        c.start_named_agent("node2")?;
        c.wait_until(Duration::from_secs(30), "node2 ready again", |c| {
            c.node_ready("node2")
        })?;
        let stale_gone = |c: &Cluster| -> anyhow::Result<bool> {
            let dir = c.agent_dir("node2").join("containers");
            let ids: Vec<String> = std::fs::read_dir(&dir)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let after = task_nodes(c, "web")?;
            Ok(on_node2
                .iter()
                .all(|t| !after.iter().any(|(n, node)| n == t && node == "node2"))
                && ids.is_empty())
        };
        c.wait_until(
            Duration::from_secs(10),
            "node2 to delete its stale copies",
            |c| stale_gone(c).unwrap_or(false),
        )?;
        ensure!(task_nodes(&c, "web")?.len() == 6);
        let max = sampler.max();
        let history = sampler.history();
        drop(sampler);
        println!("replicas moved in {moved_in:?}; sleep processes over time: {history:?}");
        if max > 6 {
            bail!("{max} copies ran at once; history (time, count): {history:?}");
        }
        Ok(())
    });
}

#[test]
fn rm_is_carried_out_by_the_cluster() {
    sandbox::run("rm_is_carried_out_by_the_cluster", || {
        let c = Cluster::start()?;
        let gone = |c: &Cluster, name: &str| {
            let r = c.berth(&["ps", "-a"]);
            r.code == 0 && !r.stdout.contains(name)
        };
        // run -d --rm: nobody waits, and the cluster removes it once it ends.
        c.berth(&[
            "run", "-d", "--rm", "--name", "brief", "busybox", "sleep", "1",
        ])
        .ok()?;
        ensure!(!gone(&c, "brief"), "removed before it ended");
        c.wait_until(Duration::from_secs(20), "brief to be removed", |c| {
            gone(c, "brief")
        })?;
        // An interrupted `run --rm`: the client is killed while it prints
        // the container's output (as Ctrl+C would end it).
        let out = c.dir().join("cut.out");
        let mut child = std::process::Command::new(berth_chaos::cluster::bin_dir()?.join("berth"))
            .env("BERTH_CONFIG", c.admin_conf())
            .args([
                "run",
                "--rm",
                "--name",
                "cut",
                "busybox",
                "sh",
                "-c",
                "echo started; sleep 2",
            ])
            .env("BERTH_HOST", c.all_addrs())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        c.wait_until(Duration::from_secs(20), "cut to print", |_| {
            std::fs::read_to_string(&out).is_ok_and(|s| s.contains("started"))
        })?;
        child.kill()?;
        child.wait()?;
        ensure!(!gone(&c, "cut"), "removed before it ended");
        c.wait_until(Duration::from_secs(20), "cut to be removed", |c| {
            gone(c, "cut")
        })?;
        // A service task that fails starts again (its restart condition),
        // as a new copy whose log goes on after the last one's.
        c.berth(&[
            "service",
            "create",
            "-d",
            "--name",
            "flap",
            "--restart-condition",
            "on-failure",
            "busybox",
            "sh",
            "-c",
            "echo ran; exit 1",
        ])
        .ok()?;
        c.wait_until(Duration::from_secs(30), "flap.1 to run three times", |c| {
            c.berth(&["logs", "flap.1"]).stdout.matches("ran\n").count() >= 3
        })?;
        let v = inspect(&c, "flap.1")?;
        ensure!(v["Generation"].as_u64().unwrap_or(0) >= 3, "{v}");
        c.berth(&["service", "rm", "flap"]).ok()?;
        c.wait_until(Duration::from_secs(20), "flap's task to go", |c| {
            gone(c, "flap.1")
        })?;
        // An attached `run --rm` still gets its output and exit code.
        let r = c.berth(&["run", "--rm", "busybox", "sh", "-c", "echo bye; exit 4"]);
        ensure!(r.code == 4 && r.stdout == "bye\n", "{r:?}");
        Ok(())
    });
}

#[test]
fn drain_moves_replicas_and_a_rolling_update_rolls_back_on_failure() {
    sandbox::run(
        "drain_moves_replicas_and_a_rolling_update_rolls_back_on_failure",
        || {
            let c = Cluster::start_nodes(&[], &[("node1", &[]), ("node2", &[])])?;
            let r = c.berth_within(
                &[
                    "service",
                    "create",
                    "--name",
                    "web",
                    "--replicas",
                    "4",
                    "--update-parallelism",
                    "2",
                    "--update-failure-action",
                    "rollback",
                    "busybox",
                    "sleep",
                    "600",
                ],
                Duration::from_secs(60),
            );
            ensure!(r.code == 0, "{r:?}");
            ensure!(per_node(&task_nodes(&c, "web")?).len() == 2);
            // Drain node1: every replica ends up on node2, and node1 runs none.
            c.berth(&["node", "update", "--availability", "drain", "node1"])
                .ok()?;
            c.wait_until(Duration::from_secs(30), "every replica on node2", |c| {
                task_nodes(c, "web")
                    .is_ok_and(|t| t.len() == 4 && t.iter().all(|(_, n)| n == "node2"))
            })?;
            let ls = c.berth(&["node", "ls"]).ok()?;
            ensure!(
                ls.stdout
                    .lines()
                    .any(|l| l.starts_with("node1") && l.contains("drain")),
                "{}",
                ls.stdout
            );
            c.berth(&["node", "update", "--availability", "active", "node1"])
                .ok()?;

            // A rolling update to a second tag: batches of two, all replaced.
            c.berth(&["tag", "busybox", "busybox:v2"]).ok()?;
            let r = c.berth_within(
                &["service", "update", "--image", "busybox:v2", "web"],
                Duration::from_secs(60),
            );
            ensure!(r.code == 0, "{r:?}");
            let ps = c.berth(&["service", "ps", "web"]).ok()?;
            let v2 = ps
                .stdout
                .lines()
                .filter(|l| l.contains("busybox:v2") && l.contains(" Up "))
                .count();
            ensure!(v2 == 4, "{}", ps.stdout);

            // An update whose tasks fail rolls back to the working spec.
            let r = c.berth_within(
                &["service", "update", "--args", "sh -c exit_3_now", "web"],
                Duration::from_secs(60),
            );
            ensure!(
                r.code != 0 && r.stderr.contains("rolled back"),
                "a failing update: {r:?}"
            );
            let inspect = c.berth(&["service", "inspect", "web"]).ok()?;
            let v: serde_json::Value = serde_json::from_str(&inspect.stdout)?;
            ensure!(v[0]["UpdateStatus"]["State"] == "rolled_back", "{v}");
            ensure!(
                v[0]["Spec"]["TaskTemplate"]["Command"] == serde_json::json!(["sleep", "600"]),
                "{v}"
            );
            let running = task_nodes(&c, "web")?;
            ensure!(running.len() == 4, "{running:?}");
            Ok(())
        },
    );
}

#[test]
fn a_killed_leader_leaves_every_container_running_and_its_successor_places() {
    sandbox::run(
        "a_killed_leader_leaves_every_container_running_and_its_successor_places",
        || {
            let mut c = Cluster::start_servers_with_nodes(3, &["node1", "node2", "node3"])?;
            let web = Sampler::start(&["sleep", "31337"], Duration::from_millis(10));
            let late = Sampler::start(&["sleep", "31338"], Duration::from_millis(10));
            let r = c.berth_within(
                &[
                    "service",
                    "create",
                    "--name",
                    "web",
                    "--replicas",
                    "6",
                    "busybox",
                    "sleep",
                    "31337",
                ],
                Duration::from_secs(60),
            );
            ensure!(r.code == 0, "service create: {r:?}");
            let before = task_nodes(&c, "web")?;
            ensure!(per_node(&before).len() == 3, "{before:?}");
            let generations = |c: &Cluster| -> anyhow::Result<Vec<String>> {
                (1..=6)
                    .map(|i| Ok(inspect(c, &format!("web.{i}"))?["Generation"].to_string()))
                    .collect()
            };
            let gen_before = generations(&c)?;
            // A container no node fits yet, committed (Pending) before the kill.
            let r = c
                .berth(&[
                    "run",
                    "-d",
                    "--name",
                    "waiting",
                    "--constraint",
                    "node.labels.ready==yes",
                    "busybox",
                    "sleep",
                    "31339",
                ])
                .ok()?;
            ensure!(r.stderr.contains("pending"), "{r:?}");
            let leader = c.leader().context("no leader")?;
            // Acknowledged at its commit; the leader dies right after.
            c.berth(&[
                "service",
                "create",
                "-d",
                "--name",
                "late",
                "--replicas",
                "3",
                "busybox",
                "sleep",
                "31338",
            ])
            .ok()?;
            c.kill_member(leader)?;
            let killed = Instant::now();
            c.wait_until(Duration::from_secs(30), "late's 3 tasks to run", |c| {
                task_nodes(c, "late").is_ok_and(|t| t.len() == 3)
            })?;
            // The new leader places what was waiting once it fits.
            c.berth(&["node", "update", "--label-add", "ready=yes", "node3"])
                .ok()?;
            c.wait_until(Duration::from_secs(30), "waiting to run on node3", |c| {
                inspect(c, "waiting")
                    .is_ok_and(|v| v["Node"] == "node3" && v["State"]["Status"] == "running")
            })?;
            // Every agent reports to the new leader: all ready, every web
            // task where it was, at the generation it had.
            c.wait_until(Duration::from_secs(30), "every node ready", |c| {
                ["node1", "node2", "node3"].iter().all(|n| c.node_ready(n))
            })?;
            let after = task_nodes(&c, "web")?;
            let mut b = before.clone();
            let mut a = after.clone();
            b.sort();
            a.sort();
            ensure!(a == b, "web moved: before {b:?}, after {a:?}");
            ensure!(
                generations(&c)? == gen_before,
                "a web task was placed again"
            );
            let new_leader = c.leader().context("no new leader")?;
            ensure!(new_leader != leader);
            // The real processes: 6 web copies throughout, never more; 3 of late.
            let history = web.history();
            // Once all six ran, six ran at every sample: none stopped.
            let first_six = history.iter().position(|(_, n)| *n == 6);
            ensure!(
                first_six.is_some_and(|i| history[i..].iter().all(|(_, n)| *n == 6)),
                "web copies over time: {history:?}"
            );
            ensure!(
                late.max() == 3,
                "late copies over time: {:?}",
                late.history()
            );
            ensure!(processes::count(&["sleep", "31339"]) == 1);
            println!(
                "leader {leader} killed; late placed and running {:?} later; web copies: {history:?}",
                killed.elapsed()
            );
            Ok(())
        },
    );
}

#[test]
fn a_cut_off_agent_stops_its_movable_containers_before_they_are_replaced() {
    sandbox::run(
        "a_cut_off_agent_stops_its_movable_containers_before_they_are_replaced",
        || {
            let c = Cluster::start_on_test_hosts(
                &[],
                &[("node1", &[]), ("node2", &[]), ("node3", &[])],
            )?;
            let tasks = Sampler::start(&["sleep", "31337"], Duration::from_millis(5));
            let r = c.berth_within(
                &[
                    "service",
                    "create",
                    "--name",
                    "web",
                    "--replicas",
                    "6",
                    "busybox",
                    "sleep",
                    "31337",
                ],
                Duration::from_secs(60),
            );
            ensure!(r.code == 0, "service create: {r:?}\n{}", c.logs());
            // A plain container on node2: not movable, it keeps running.
            c.berth(&[
                "run",
                "-d",
                "--name",
                "plain",
                "--constraint",
                "node.hostname==node2",
                "busybox",
                "sleep",
                "31340",
            ])
            .ok()?;
            let on_node2: Vec<String> = task_nodes(&c, "web")?
                .into_iter()
                .filter(|(_, n)| n == "node2")
                .map(|(t, _)| t)
                .collect();
            ensure!(on_node2.len() == 2, "{on_node2:?}");

            let cut_at = Instant::now();
            c.cut("node2")?;
            c.wait_until(
                Duration::from_secs(15),
                "node2's replicas to run elsewhere",
                |c| {
                    task_nodes(c, "web")
                        .is_ok_and(|t| t.len() == 6 && t.iter().all(|(_, n)| n != "node2"))
                },
            )?;
            let moved_in = cut_at.elapsed();
            // The cut-off agent lives on; its plain container runs on.
            ensure!(
                processes::count(&["sleep", "31340"]) == 1,
                "the plain container stopped"
            );
            c.heal_host("node2")?;
            c.wait_until(Duration::from_secs(30), "node2 ready again", |c| {
                c.node_ready("node2")
            })?;
            c.wait_until(
                Duration::from_secs(15),
                "node2 to delete its stale copies",
                |c| {
                    let dir = c.agent_dir("node2").join("containers");
                    let plain = inspect(c, "plain")
                        .map(|v| v["Id"].as_str().unwrap_or_default().to_string());
                    std::fs::read_dir(&dir).is_ok_and(|d| {
                        d.flatten().all(|e| {
                            plain
                                .as_ref()
                                .is_ok_and(|p| e.file_name().to_string_lossy() == *p)
                        })
                    })
                },
            )?;
            ensure!(inspect(&c, "plain")?["State"]["Status"] == "running");
            ensure!(task_nodes(&c, "web")?.len() == 6);
            let history = tasks.history();
            drop(tasks);
            // Never two copies of a task: never more than six in all. The
            // two on node2 stopped (6 -> 4) before their replacements ran.
            ensure!(
                history.iter().all(|(_, n)| *n <= 6),
                "more than 6 copies ran at once; history (time, count): {history:?}"
            );
            let full = history.iter().position(|(_, n)| *n == 6).unwrap_or(0);
            let dip = history[full..].iter().map(|(_, n)| *n).min();
            ensure!(dip == Some(4), "history: {history:?}");
            println!("cut node2: replicas ran elsewhere {moved_in:?} later; copies over time: {history:?}");
            Ok(())
        },
    );
}

#[test]
fn binpack_fills_one_node_and_node_rm_takes_only_a_down_node() {
    sandbox::run(
        "binpack_fills_one_node_and_node_rm_takes_only_a_down_node",
        || {
            let mut c = Cluster::start_nodes(&[], &[("node1", &[]), ("node2", &[])])?;
            // Binpack: the fullest node that fits, again and again.
            for i in 0..3 {
                let name = format!("packed{i}");
                c.berth(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--placement-strategy",
                    "binpack",
                    "--reserve-memory",
                    "64m",
                    "busybox",
                    "sleep",
                    "600",
                ])
                .ok()?;
            }
            let nodes: Vec<String> = (0..3)
                .map(|i| Ok(inspect(&c, &format!("packed{i}"))?["Node"].to_string()))
                .collect::<anyhow::Result<_>>()?;
            ensure!(
                nodes.iter().all(|n| *n == nodes[0]),
                "binpack spread: {nodes:?}"
            );
            // Spread (the default) takes the other node next.
            c.berth(&["run", "-d", "--name", "spread", "busybox", "sleep", "600"])
                .ok()?;
            ensure!(inspect(&c, "spread")?["Node"].to_string() != nodes[0]);
            // node rm: a ready node only with -f; a down one at once.
            let r = c.berth(&["node", "rm", "node2"]);
            ensure!(r.code != 0 && r.stderr.contains("is ready"), "{r:?}");
            c.kill_named_agent("node2")?;
            c.wait_until(Duration::from_secs(10), "node2 down", |c| {
                c.node_status("node2").as_deref() == Some("down")
            })?;
            c.berth(&["node", "rm", "node2"]).ok()?;
            ensure!(c.node_status("node2").is_none(), "node2 is still listed");
            let r = c.berth(&["node", "rm", "nosuchnode"]);
            ensure!(r.code != 0 && r.stderr.contains("No such node"), "{r:?}");
            Ok(())
        },
    );
}
