//! Images through a real cluster: load from the formats the world writes
//! (skopeo and umoci OCI layouts, docker save archives), save to archives
//! that skopeo reads back, whiteouts in running containers, tag, rmi,
//! history, inspect, export.

use std::process::Command;

use anyhow::{ensure, Context};
use berth_chaos::images::{
    busybox_layer, oci_archive, whiteout_base_layer, whiteout_layer, OciImage, TarBuilder,
};
use berth_chaos::{sandbox, Cluster};

/// Runs a host tool (skopeo, umoci, tar) and fails with its stderr.
fn tool(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (installed by the README's test command)"))?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a container of `image` sees of its filesystem, to compare images.
fn fingerprint(c: &Cluster, image: &str) -> anyhow::Result<String> {
    let r = c
        .berth(&[
            "run",
            "--rm",
            image,
            "sh",
            "-c",
            "ls / /bin | md5sum; cat /etc/passwd | md5sum",
        ])
        .ok()?;
    Ok(r.stdout)
}

#[test]
fn skopeo_and_umoci_layouts_load_and_saved_archives_read_back() {
    sandbox::run(
        "skopeo_and_umoci_layouts_load_and_saved_archives_read_back",
        || {
            let c = Cluster::start()?;
            let dir = c.dir().to_path_buf();
            let expected = fingerprint(&c, "busybox")?;

            // berth save writes an archive skopeo reads both as a docker archive
            // and as an OCI archive.
            let saved = dir.join("saved.tar");
            c.berth(&["save", "-o", saved.to_str().unwrap(), "busybox"])
                .ok()?;
            let inspect = tool(
                "skopeo",
                &["inspect", &format!("docker-archive:{}", saved.display())],
            )?;
            ensure!(inspect.contains("\"Architecture\": \"amd64\""), "{inspect}");
            tool(
                "skopeo",
                &[
                    "inspect",
                    &format!("oci-archive:{}:busybox:latest", saved.display()),
                ],
            )?;

            // skopeo's OCI archive of it loads and runs the same.
            let skopeo_oci = dir.join("skopeo-oci.tar");
            tool(
                "skopeo",
                &[
                    "copy",
                    "-q",
                    &format!("docker-archive:{}", saved.display()),
                    &format!("oci-archive:{}:skopeo/bb:1", skopeo_oci.display()),
                ],
            )?;
            let r = c
                .berth(&["load", "-i", skopeo_oci.to_str().unwrap()])
                .ok()?;
            ensure!(r.stdout.contains("Loaded image: skopeo/bb:1"), "{r:?}");
            ensure!(fingerprint(&c, "skopeo/bb:1")? == expected);

            // umoci edits an OCI layout (a new tag with its own command); that
            // layout, tarred, loads and runs with umoci's command.
            let layout = dir.join("layout");
            tool(
                "skopeo",
                &[
                    "copy",
                    "-q",
                    &format!("docker-archive:{}", saved.display()),
                    &format!("oci:{}:base", layout.display()),
                ],
            )?;
            tool(
                "umoci",
                &[
                    "config",
                    "--image",
                    &format!("{}:base", layout.display()),
                    "--tag",
                    "edited",
                    "--config.cmd",
                    "echo",
                    "--config.cmd",
                    "umoci was here",
                ],
            )?;
            let umoci_tar = dir.join("umoci.tar");
            tool(
                "tar",
                &[
                    "-C",
                    layout.to_str().unwrap(),
                    "-cf",
                    umoci_tar.to_str().unwrap(),
                    ".",
                ],
            )?;
            let r = c.berth(&["load", "-i", umoci_tar.to_str().unwrap()]).ok()?;
            ensure!(r.stdout.contains("Loaded image: edited:latest"), "{r:?}");
            let r = c.berth(&["run", "--rm", "edited"]).ok()?;
            ensure!(r.stdout == "umoci was here\n", "{r:?}");
            ensure!(fingerprint(&c, "base")? == expected);

            // A berth archive loads back into berth: round trip, same image id.
            let ids = |c: &Cluster| c.berth(&["images", "-q"]).stdout;
            c.berth(&["rmi", "skopeo/bb:1"]).ok()?;
            let before = ids(&c);
            let r = c.berth(&["load", "-i", saved.to_str().unwrap()]).ok()?;
            ensure!(r.stdout.contains("Loaded image: busybox:latest"), "{r:?}");
            ensure!(
                ids(&c) == before,
                "the image id changed across save and load"
            );
            Ok(())
        },
    );
}

#[test]
fn whiteouts_hide_files_in_containers_and_shared_layers_are_kept_once() {
    sandbox::run(
        "whiteouts_hide_files_in_containers_and_shared_layers_are_kept_once",
        || {
            let c = Cluster::start()?;
            let base = busybox_layer()?;
            let data = whiteout_base_layer();
            let deletes = whiteout_layer();
            let other = TarBuilder::new().file("other", b"other").finish();
            let archive = oci_archive(&[
                OciImage {
                    reference: "wh:deleting".into(),
                    layers: vec![base.clone(), data.clone(), deletes],
                    gzip: true,
                },
                OciImage {
                    reference: "wh:keeping".into(),
                    layers: vec![base.clone(), data.clone(), other],
                    gzip: false,
                },
            ]);
            let path = c.dir().join("wh.tar");
            std::fs::write(&path, archive)?;
            let before = std::fs::read_dir(c.dir().join("agent/snapshots"))?.count();
            c.berth(&["load", "-i", path.to_str().unwrap()]).ok()?;
            // busybox's layer was already there; data, deletes and other are new.
            let after = std::fs::read_dir(c.dir().join("agent/snapshots"))?.count();
            ensure!(
                after == before + 3,
                "snapshots: {before} before, {after} after"
            );

            let r = c
                .berth(&[
                    "run",
                    "--rm",
                    "wh:deleting",
                    "sh",
                    "-c",
                    "ls /data; test -e /etc/motd && echo motd visible; true",
                ])
                .ok()?;
            ensure!(
                r.stdout == "new\n",
                "the deleting image shows {:?}",
                r.stdout
            );
            let r = c
                .berth(&[
                    "run",
                    "--rm",
                    "wh:keeping",
                    "sh",
                    "-c",
                    "ls /data; cat /etc/motd",
                ])
                .ok()?;
            ensure!(
                r.stdout == "a\nb\nhello",
                "the keeping image shows {:?}",
                r.stdout
            );
            Ok(())
        },
    );
}

#[test]
fn tag_rmi_history_inspect_and_export() {
    sandbox::run("tag_rmi_history_inspect_and_export", || {
        let c = Cluster::start()?;
        c.berth(&["tag", "busybox", "mine:v1"]).ok()?;
        let images = c.berth(&["images"]).ok()?.stdout;
        ensure!(
            images
                .lines()
                .any(|l| l.starts_with("mine ") && l.contains("v1") && l.contains("node1")),
            "{images}"
        );

        let inspect = c.berth(&["image", "inspect", "mine:v1"]).ok()?.stdout;
        let v: serde_json::Value = serde_json::from_str(&inspect)?;
        ensure!(
            v[0]["RepoTags"].as_array().is_some_and(|t| t.len() == 2),
            "{inspect}"
        );
        ensure!(v[0]["Nodes"][0] == "node1", "{inspect}");
        let history = c.berth(&["history", "mine:v1"]).ok()?.stdout;
        ensure!(
            history.contains("berth import") && history.contains("Imported from tarball"),
            "{history}"
        );

        // A container's changes, exported with the image under them.
        c.berth(&[
            "run",
            "--name",
            "writer",
            "busybox",
            "sh",
            "-c",
            "echo written > /root/note; rm /etc/group",
        ])
        .ok()?;
        let out = c.dir().join("export.tar");
        c.berth(&["export", "-o", out.to_str().unwrap(), "writer"])
            .ok()?;
        let listing = tool("tar", &["-tf", out.to_str().unwrap()])?;
        let listing: String = listing
            .lines()
            .map(|l| format!("./{}\n", l.trim_start_matches("./")))
            .collect();
        ensure!(
            listing.lines().any(|l| l == "./root/note"),
            "no note in the export"
        );
        ensure!(
            listing.lines().any(|l| l == "./bin/busybox"),
            "no busybox in the export"
        );
        ensure!(
            !listing.lines().any(|l| l == "./etc/group"),
            "a deleted file was exported"
        );

        // rmi: one of several tags goes quietly; the last is refused while
        // a container uses the image, and forcing does not help while one runs.
        let r = c.berth(&["rmi", "mine:v1"]).ok()?;
        ensure!(r.stdout == "Untagged: mine:v1\n", "{r:?}");
        let r = c.berth(&["rmi", "busybox"]);
        ensure!(
            r.code != 0 && r.stderr.contains("must force"),
            "{r:?}\n{}\n{}",
            c.berth(&["images"]).stdout,
            c.berth(&["ps", "-a"]).stdout
        );
        c.berth(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "600"])
            .ok()?;
        c.wait_until(std::time::Duration::from_secs(10), "sleeper to run", |c| {
            c.berth(&["ps"]).stdout.contains("sleeper")
        })?;
        let r = c.berth(&["rmi", "-f", "busybox"]);
        ensure!(
            r.code != 0 && r.stderr.contains("cannot be forced"),
            "{r:?}"
        );
        c.berth(&["rm", "-f", "sleeper", "writer"]).ok()?;
        let r = c.berth(&["rmi", "busybox"]).ok()?;
        ensure!(r.stdout.contains("Deleted: sha256:"), "{r:?}");
        let images = c.berth(&["images", "-q"]).ok()?.stdout;
        ensure!(images.trim().is_empty(), "images left: {images}");
        let r = c.berth(&["rmi", "busybox"]);
        ensure!(
            r.code != 0 && r.stderr.contains("No such image: busybox:latest"),
            "{r:?}"
        );
        Ok(())
    });
}

/// `commit` and `diff` (P3.5 point 1): after `touch /new; rm /etc/passwd`
/// (and an opaque directory, a file in a new one), the diff lists Docker's
/// A/C/D lines, leaving out the mount points the runtime made; the
/// committed image has /new and no /etc/passwd, runs, and records its
/// parent, author, comment and the changes given; an opaque directory
/// hides the parent's content in it; a running container is committed
/// while frozen and keeps running.
#[test]
fn commit_makes_an_image_of_a_containers_changes_and_diff_lists_them() {
    sandbox::run(
        "commit_makes_an_image_of_a_containers_changes_and_diff_lists_them",
        || {
            let c = Cluster::start()?;
            c.berth(&[
                "run",
                "--name",
                "changed",
                "-v",
                "scratch:/data/v",
                "busybox",
                "sh",
                "-c",
                "touch /new; rm /etc/passwd; mkdir -p /d/e && echo hi > /d/e/f",
            ])
            .ok()?;
            let diff = c.berth(&["diff", "changed"]).ok()?.stdout;
            let lines: Vec<&str> = diff.lines().collect();
            ensure!(
                lines.contains(&"A /new")
                    && lines.contains(&"D /etc/passwd")
                    && lines.contains(&"C /etc")
                    && lines.contains(&"A /d")
                    && lines.contains(&"A /d/e/f"),
                "{diff}"
            );
            ensure!(
                !lines.iter().any(|l| l.ends_with(" /proc")
                    || l.ends_with(" /sys")
                    || l.ends_with(" /dev")
                    || l.contains("/data")),
                "mount points listed: {diff}"
            );
            let id = c
                .berth(&[
                    "commit",
                    "-a",
                    "Jane Doe <jane@example.com>",
                    "-m",
                    "no passwd",
                    "-c",
                    "ENV STAGE=committed",
                    "-c",
                    r#"CMD ["cat", "/d/e/f"]"#,
                    "-c",
                    "LABEL team=infra",
                    "changed",
                    "committed:1",
                ])
                .ok()?
                .stdout
                .trim()
                .to_string();
            ensure!(id.starts_with("sha256:") && id.len() == 71, "{id}");
            // It runs, with the changes' command, and holds the changes.
            let out = c.berth(&["run", "--rm", "committed:1"]).ok()?.stdout;
            ensure!(out == "hi\n", "{out:?}");
            let out = c
                .berth(&[
                    "run",
                    "--rm",
                    "committed:1",
                    "sh",
                    "-c",
                    "test -e /new && echo new; test -e /etc/passwd || echo no-passwd; echo $STAGE",
                ])
                .ok()?
                .stdout;
            ensure!(out == "new\nno-passwd\ncommitted\n", "{out:?}");
            let parent: serde_json::Value =
                serde_json::from_str(&c.berth(&["image", "inspect", "busybox"]).ok()?.stdout)?;
            let v: serde_json::Value =
                serde_json::from_str(&c.berth(&["image", "inspect", "committed:1"]).ok()?.stdout)?;
            let (v, parent) = (&v[0], &parent[0]);
            ensure!(v["Id"] == id, "{v}");
            ensure!(v["Parent"] == parent["Id"], "parent: {}", v["Parent"]);
            ensure!(
                v["Author"] == "Jane Doe <jane@example.com>",
                "{}",
                v["Author"]
            );
            ensure!(v["Comment"] == "no passwd", "{}", v["Comment"]);
            ensure!(v["Config"]["Labels"]["team"] == "infra", "{}", v["Config"]);
            let layers = v["RootFS"]["Layers"].as_array().map(Vec::len);
            let parent_layers = parent["RootFS"]["Layers"].as_array().map(Vec::len);
            ensure!(layers == parent_layers.map(|n| n + 1), "{}", v["RootFS"]);
            let history = c.berth(&["history", "committed:1"]).ok()?.stdout;
            ensure!(history.contains("no passwd"), "{history}");

            // A directory deleted and made again is opaque: the committed
            // image shows none of what the parent had in it.
            c.berth(&[
                "run",
                "--name",
                "opaque",
                "committed:1",
                "sh",
                "-c",
                "rm -r /d && mkdir /d && echo only > /d/only",
            ])
            .ok()?;
            c.berth(&["commit", "opaque", "committed:3"]).ok()?;
            let out = c
                .berth(&["run", "--rm", "committed:3", "ls", "/d"])
                .ok()?
                .stdout;
            ensure!(out == "only\n", "{out:?}");

            // A running container, frozen while its changes are read.
            c.berth(&[
                "run",
                "-d",
                "--name",
                "busy",
                "busybox",
                "sh",
                "-c",
                "echo state > /state; sleep 600",
            ])
            .ok()?;
            c.wait_until(std::time::Duration::from_secs(10), "/state", |c| {
                c.berth(&["exec", "busy", "cat", "/state"]).stdout == "state\n"
            })?;
            c.berth(&["commit", "busy", "committed:2"]).ok()?;
            let ps = c.berth(&["ps"]).ok()?.stdout;
            ensure!(
                ps.lines().any(|l| l.contains("busy") && l.contains("Up")),
                "{ps}"
            );
            let out = c
                .berth(&["run", "--rm", "committed:2", "cat", "/state"])
                .ok()?
                .stdout;
            ensure!(out == "state\n", "{out:?}");
            // What commit does not take is refused, naming it.
            let bad = c.berth(&["commit", "-c", "RUN rm -rf /", "busy"]);
            ensure!(
                bad.code != 0
                    && bad
                        .stderr
                        .contains("RUN is not an instruction commit takes"),
                "{bad:?}"
            );
            Ok(())
        },
    );
}

/// An upload is staged on the node's disk as it arrives and held to the
/// node's limits: past `--max-image-size` (3 MiB here; busybox fits) it is
/// refused, naming the limit, and nothing of it stays in the store.
#[test]
fn an_upload_past_the_image_limit_is_refused_as_it_arrives() {
    sandbox::run(
        "an_upload_past_the_image_limit_is_refused_as_it_arrives",
        || {
            let c = Cluster::start_nodes(&[], &[("node1", &["--max-image-size", "3m"])])?;
            let big: Vec<u8> = (0..(6u32 << 20) / 4)
                .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
                .collect();
            let archive = oci_archive(&[OciImage {
                reference: "big:1".into(),
                layers: vec![TarBuilder::new().file("noise", &big).finish()],
                gzip: false,
            }]);
            let path = c.dir().join("big.tar");
            std::fs::write(&path, &archive)?;
            let r = c.berth(&["load", "-i", &path.display().to_string()]);
            ensure!(
                r.code != 0
                    && r.stderr
                        .contains("the upload: the image unpacks to more than 3145728 bytes")
                    && r.stderr.contains("--max-image-size"),
                "{r:?}"
            );
            let tmp = c.agent_dir("node1").join("images/tmp");
            let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
            ensure!(left == 0, "{left} staged files left in {}", tmp.display());
            ensure!(
                !c.berth(&["images"]).ok()?.stdout.contains("big"),
                "an image landed"
            );
            Ok(())
        },
    );
}
