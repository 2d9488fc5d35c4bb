//! The walking skeleton through a real cluster: a server and an agent as
//! processes, real containers, the real CLI. Each test runs in namespaces
//! of its own (see berth_chaos::sandbox).

use std::time::Duration;

use anyhow::ensure;
use berth_chaos::{sandbox, Cluster};

#[test]
fn run_prints_output_and_ps_shows_it_exited() {
    sandbox::run("run_prints_output_and_ps_shows_it_exited", || {
        let c = Cluster::start()?;
        let r = c
            .berth(&["run", "--name", "greeter", "busybox", "echo", "hello"])
            .ok()?;
        ensure!(r.stdout == "hello\n", "stdout was {:?}", r.stdout);
        let ps = c.berth(&["ps", "-a"]).ok()?;
        let line = ps
            .stdout
            .lines()
            .find(|l| l.contains("greeter"))
            .unwrap_or_default();
        ensure!(line.contains("Exited (0)"), "ps -a shows {ps:?}");
        // Without -a, an exited container is not listed.
        let ps = c.berth(&["ps"]).ok()?;
        ensure!(
            !ps.stdout.contains("greeter"),
            "ps lists an exited container: {ps:?}"
        );
        Ok(())
    });
}

#[test]
fn run_exits_with_the_containers_code_and_keeps_streams_apart() {
    sandbox::run(
        "run_exits_with_the_containers_code_and_keeps_streams_apart",
        || {
            let c = Cluster::start()?;
            let r = c.berth(&[
                "run",
                "busybox",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ]);
            ensure!(r.code == 3, "exit code {} ({r:?})", r.code);
            ensure!(r.stdout == "out\n", "stdout {:?}", r.stdout);
            ensure!(r.stderr == "err\n", "stderr {:?}", r.stderr);
            let r = c.berth(&["run", "busybox", "no-such-command"]);
            ensure!(r.code == 127, "a missing command exits {} ({r:?})", r.code);
            ensure!(r.stderr.contains("executable file not found"), "{r:?}");
            Ok(())
        },
    );
}

#[test]
fn a_container_is_isolated_from_the_host() {
    sandbox::run("a_container_is_isolated_from_the_host", || {
        let c = Cluster::start()?;
        // PID 1 is the container's own process.
        let r = c
            .berth(&[
                "run",
                "busybox",
                "sh",
                "-c",
                "echo $$; cat /proc/1/cmdline | tr '\\0' ' '",
            ])
            .ok()?;
        let mut lines = r.stdout.lines();
        ensure!(lines.next() == Some("1"), "the shell is not PID 1: {r:?}");
        ensure!(
            lines.next().unwrap_or_default().starts_with("sh -c"),
            "{r:?}"
        );
        // The hostname is the container's: its short id unless one is given.
        let r = c
            .berth(&["run", "-d", "--name", "named", "busybox", "hostname"])
            .ok()?;
        let id = r.stdout.trim().to_string();
        let logs = wait_for_logs(&c, "named")?;
        ensure!(logs.trim() == &id[..12], "hostname {logs:?} for id {id}");
        let r = c
            .berth(&["run", "--hostname", "box1", "busybox", "hostname"])
            .ok()?;
        ensure!(r.stdout.trim() == "box1", "{r:?}");
        let host = nix::unistd::gethostname()?.to_string_lossy().into_owned();
        ensure!(r.stdout.trim() != host);
        // No host file outside the image is visible: the cluster's own data
        // dir, a marker file, and the host's root listing.
        let marker = c.dir().join("host-marker");
        std::fs::write(&marker, "host only")?;
        let r = c.berth(&[
            "run",
            "busybox",
            "sh",
            "-c",
            &format!(
                "test -e {} && echo VISIBLE; test -e {} && echo VISIBLE; ls /",
                marker.display(),
                c.dir().display()
            ),
        ]);
        ensure!(r.code == 0, "{r:?}");
        ensure!(
            !r.stdout.contains("VISIBLE"),
            "a host path is visible: {r:?}"
        );
        let mut root: Vec<&str> = r.stdout.split_whitespace().collect();
        root.sort();
        ensure!(
            root == ["bin", "dev", "etc", "proc", "root", "sys", "tmp"],
            "/ holds {root:?}"
        );
        // Its network is its own: only loopback.
        let r = c
            .berth(&["run", "busybox", "sh", "-c", "ls /sys/class/net"])
            .ok()?;
        ensure!(
            r.stdout.split_whitespace().collect::<Vec<_>>() == ["lo"],
            "{r:?}"
        );
        Ok(())
    });
}

/// Follows a detached container's logs to its end.
fn wait_for_logs(c: &Cluster, name: &str) -> anyhow::Result<String> {
    Ok(c.berth(&["logs", "-f", name]).ok()?.stdout)
}

#[test]
fn a_killed_server_restarts_with_every_container() {
    sandbox::run("a_killed_server_restarts_with_every_container", || {
        let mut c = Cluster::start()?;
        for i in 0..3 {
            let r = c.berth(&[
                "run",
                "--name",
                &format!("c{i}"),
                "busybox",
                "sh",
                "-c",
                &format!("echo {i}; exit {i}"),
            ]);
            ensure!(r.code == i, "c{i} exited {} ({r:?})", r.code);
        }
        let detached = c
            .berth(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "600"])
            .ok()?;
        ensure!(detached.stdout.trim().len() == 64, "{detached:?}");
        c.wait_until(Duration::from_secs(10), "sleeper to run", |c| {
            c.berth(&["ps"])
                .stdout
                .lines()
                .any(|l| l.contains("sleeper") && l.contains("Up"))
        })?;
        let before = c.berth(&["ps", "-a", "-q"]).ok()?.stdout;
        ensure!(before.lines().count() == 4, "{before}");

        c.kill_server()?;
        let down = c.berth(&["ps", "-a"]);
        ensure!(down.code != 0, "ps answered with the server dead: {down:?}");
        c.start_server(false)?;
        c.wait_until(Duration::from_secs(20), "the server to answer", |c| {
            c.berth(&["ps"]).code == 0
        })?;

        let after = c.berth(&["ps", "-a", "-q"]).ok()?.stdout;
        ensure!(
            after == before,
            "containers before {before:?}, after {after:?}"
        );
        let ps = c.berth(&["ps", "-a"]).ok()?.stdout;
        for i in 0..3 {
            let line = ps
                .lines()
                .find(|l| l.contains(&format!(" c{i}")))
                .unwrap_or_default();
            ensure!(
                line.contains(&format!("Exited ({i})")),
                "c{i}: {line:?} in\n{ps}"
            );
        }
        ensure!(
            ps.lines()
                .any(|l| l.contains("sleeper") && l.contains("Up")),
            "{ps}"
        );
        // Logs were replicated before the crash and are still there.
        let logs = c.berth(&["logs", "c2"]).ok()?;
        ensure!(logs.stdout == "2\n", "{logs:?}");
        // The restarted server schedules again once the agent is back.
        c.wait_for_ready_node()?;
        let r = c.berth(&["run", "busybox", "echo", "again"]).ok()?;
        ensure!(r.stdout == "again\n", "{r:?}");
        Ok(())
    });
}

#[test]
fn errors_name_what_was_wrong() {
    sandbox::run("errors_name_what_was_wrong", || {
        let c = Cluster::start()?;
        let one_line = |r: &berth_chaos::CommandResult| r.stderr.trim_end().lines().count() == 1;

        let r = c.berth(&["run", "nosuchimage", "true"]);
        ensure!(r.code != 0 && one_line(&r), "{r:?}");
        ensure!(
            r.stderr.contains("No such image: nosuchimage:latest"),
            "{r:?}"
        );

        for args in [&["logs", "ghost"][..], &["rm", "ghost"][..]] {
            let r = c.berth(args);
            ensure!(r.code != 0 && one_line(&r), "{args:?}: {r:?}");
            ensure!(
                r.stderr.contains("No such container: ghost"),
                "{args:?}: {r:?}"
            );
        }

        // No credential: the error says where it was looked for and what
        // to put there.
        let none = tempfile::tempdir()?;
        let out = std::process::Command::new(berth_chaos::cluster::bin_dir()?.join("berth"))
            .args(["ps"])
            .env_remove("BERTH_CONFIG")
            .env("BERTH_CONFIG_DIR", none.path())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "ps without a credential succeeded");
        ensure!(stderr.trim_end().lines().count() == 1, "{stderr}");
        ensure!(
            stderr.contains("no berth credential at") && stderr.contains("admin.conf"),
            "{stderr}"
        );

        let mut cmd = std::process::Command::new(berth_chaos::cluster::bin_dir()?.join("berth"));
        let out = cmd
            .args(["--host", "127.0.0.1:9", "ps"])
            .env("BERTH_CONFIG", c.admin_conf())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "ps against nothing succeeded");
        ensure!(stderr.trim_end().lines().count() == 1, "{stderr}");
        ensure!(
            stderr.contains("cannot connect to the berth cluster at 127.0.0.1:9")
                && stderr.contains("refused"),
            "{stderr}"
        );
        Ok(())
    });
}

#[test]
fn a_dead_agent_is_marked_down_and_comes_back() {
    sandbox::run("a_dead_agent_is_marked_down_and_comes_back", || {
        let mut c = Cluster::start()?;
        c.kill_agent()?;
        // The default TTL is 2 s; the node must be down well within 5 s.
        c.wait_until(Duration::from_secs(5), "node1 to be down", |c| {
            c.berth(&["node", "ls"])
                .stdout
                .lines()
                .any(|l| l.starts_with("node1") && l.contains("down"))
        })?;
        // With no node ready, a container is accepted and waits, Pending
        // with the reason, until one is.
        let r = c
            .berth(&["run", "-d", "--name", "waiter", "busybox", "echo", "waited"])
            .ok()?;
        ensure!(r.stderr.contains("is pending: no node is ready"), "{r:?}");
        let ps = c.berth(&["ps", "-a"]).ok()?;
        ensure!(ps.stdout.contains("Pending: no node is ready"), "{ps:?}");
        c.start_agent()?;
        c.wait_for_ready_node()?;
        c.wait_until(
            Duration::from_secs(20),
            "the waiting container to run",
            |c| c.berth(&["logs", "waiter"]).stdout == "waited\n",
        )?;
        // The restarted agent kept its images.
        let r = c.berth(&["run", "busybox", "echo", "back"]).ok()?;
        ensure!(r.stdout == "back\n", "{r:?}");
        Ok(())
    });
}
