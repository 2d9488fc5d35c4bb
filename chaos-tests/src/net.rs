//! Test hosts in network namespaces (DESIGN.md, Testing): a "switch"
//! namespace holds a bridge, and each host is a namespace joined to it by
//! a veth pair, with an address in 10.213.0.0/24. Processes of a host run
//! in its network namespace (nsenter). A host is cut off by taking its veth down on the
//! switch side, and joined again by bringing it up. Everything lives in
//! the test's own sandbox (mount and network namespaces): /run/netns is a
//! tmpfs of the sandbox, so names never meet another test's.

use std::process::Command;

use anyhow::{ensure, Context};

/// The switch namespace's name.
const SWITCH: &str = "sw";

/// The test hosts of one sandbox.
pub struct TestNet {
    hosts: Vec<(String, String)>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TestNet {
    /// Makes the switch. Call inside a sandbox only.
    pub fn new() -> anyhow::Result<Self> {
        ensure!(
            std::env::var(crate::sandbox::SANDBOX_ENV).is_ok(),
            "test hosts are made inside a sandbox only"
        );
        std::fs::create_dir_all("/run/netns")?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs", "/run/netns"])
            .status()?;
        ensure!(st.success(), "mounting a tmpfs on /run/netns");
        ip(&["netns", "add", SWITCH])?;
        ip(&["-n", SWITCH, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", SWITCH, "link", "set", "br0", "up"])?;
        ip(&["-n", SWITCH, "link", "set", "lo", "up"])?;
        Ok(Self { hosts: Vec::new() })
    }

    /// Adds host `name` with address 10.213.0.`n` and returns the address.
    pub fn add_host(&mut self, name: &str, n: u8) -> anyhow::Result<String> {
        let addr = format!("10.213.0.{n}");
        let port = format!("v-{name}");
        ip(&["netns", "add", name])?;
        ip(&[
            "link", "add", &port, "netns", SWITCH, "type", "veth", "peer", "name", "eth0", "netns",
            name,
        ])?;
        ip(&["-n", SWITCH, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", name, "link", "set", "eth0", "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        self.hosts.push((name.to_string(), addr.clone()));
        Ok(addr)
    }

    /// The address of a host.
    pub fn addr(&self, host: &str) -> Option<&str> {
        self.hosts
            .iter()
            .find(|(n, _)| n == host)
            .map(|(_, a)| a.as_str())
    }

    /// Cuts a host off from every other (its port on the switch goes down).
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        ip(&["-n", SWITCH, "link", "set", &format!("v-{host}"), "down"])
    }

    /// Joins a cut host again.
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        ip(&["-n", SWITCH, "link", "set", &format!("v-{host}"), "up"])
    }

    /// A command that runs `program` on `host`: nsenter(1) into the
    /// host's network namespace only. (`ip netns exec` would also mount a
    /// fresh /sys, hiding /sys/fs/cgroup from the agent and its shims.)
    pub fn command(host: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{host}"))
            .arg("--")
            .arg(program);
        c
    }
}
