//! `berth build` through a real cluster, held against Docker's classic
//! builder (Debian's dockerd, DOCKER_BUILDKIT=0) on the same Dockerfiles
//! and the same base image: the same files, the same config, the same
//! output when run; the layer cache; and errors that name their line and
//! tag nothing.

use anyhow::{ensure, Context};
use berth_chaos::dockerd::Dockerd;
use berth_chaos::dockerfiles::{cacheable, config_fields, steps_of, tree_of, write_cases, Case};
use berth_chaos::{sandbox, Cluster};

fn build_args(case: &Case, tag: &str) -> Vec<String> {
    let mut a = vec!["build".to_string(), "-t".into(), tag.into()];
    for b in &case.build_args {
        a.push("--build-arg".into());
        a.push(b.clone());
    }
    if let Some(t) = &case.target {
        a.push("--target".into());
        a.push(t.clone());
    }
    a.push(case.dir.display().to_string());
    a
}

fn docker(d: &Dockerd, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = d
        .docker()
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .with_context(|| format!("docker {args:?}"))?;
    ensure!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// History lines, newest first, without the imported base's, and
/// with the digests in `file:`, `dir:` and `multi:` names left out (each
/// builder hashes the copied files its own way).
fn history_lines(out: &str) -> Vec<String> {
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| {
            let mut l = l.to_string();
            for kind in ["file:", "dir:", "multi:"] {
                while let Some(i) = l.find(kind) {
                    let start = i + kind.len();
                    let end = l[start..]
                        .find(|c: char| !c.is_ascii_hexdigit())
                        .map_or(l.len(), |e| start + e);
                    if end == start {
                        break;
                    }
                    l.replace_range(i..end, &format!("{}<digest>", kind.to_uppercase()));
                }
            }
            l
        })
        .collect();
    // The imported base's line: empty in Docker's (docker import), the
    // importer's name in berth's.
    if lines
        .last()
        .is_some_and(|l| l.is_empty() || l == "berth import")
    {
        lines.pop();
    }
    lines
}

#[test]
fn builds_match_dockers_classic_builder() {
    sandbox::run("builds_match_dockers_classic_builder", || {
        let c = Cluster::start()?;
        let d = Dockerd::start()?;
        let tar = c.dir().join("busybox.tar");
        berth_chaos::images::busybox_rootfs_tar(&tar)?;
        c.berth(&["import", &tar.display().to_string(), "busybox"])
            .ok()?;
        docker(&d, &["import", &tar.display().to_string(), "busybox"])?;
        let cases = write_cases(&c.dir().join("contexts"))?;
        for case in &cases {
            let tag = format!("cmp-{}:1", case.name);
            let args = build_args(case, &tag);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let built = c.berth(&args).ok()?;
            let steps = steps_of(&built.stdout);
            ensure!(
                !steps.is_empty(),
                "{}: no steps in {}",
                case.name,
                built.stdout
            );
            ensure!(
                built.stdout.contains("Successfully tagged"),
                "{}: {}",
                case.name,
                built.stdout
            );
            docker(&d, &args)?;

            // The config, field by field.
            let ours = config_fields(&c.berth(&["image", "inspect", &tag]).ok()?.stdout)?;
            let theirs = config_fields(&String::from_utf8_lossy(&docker(
                &d,
                &["image", "inspect", &tag],
            )?))?;
            for (field, want) in &theirs {
                ensure!(
                    ours.get(field) == Some(want),
                    "{}: Config.{field} is {:?}; Docker's is {want}",
                    case.name,
                    ours.get(field)
                );
            }

            // The history, as `history` prints CREATED BY: Docker's forms
            // (`#(nop)` for metadata, the shell form under /bin/sh -c, the
            // exec form as written, `|N K=V` before a RUN with build args),
            // digests of what COPY copied aside, and the base image's own
            // line aside.
            let fmt = [
                "history",
                "--no-trunc",
                "--format",
                "{{.CreatedBy}}",
                tag.as_str(),
            ];
            let ours = history_lines(&c.berth(&fmt).ok()?.stdout);
            let theirs = history_lines(&String::from_utf8_lossy(&docker(&d, &fmt)?));
            ensure!(
                ours == theirs,
                "{}: the history is\n{}\nDocker's is\n{}",
                case.name,
                ours.join("\n"),
                theirs.join("\n")
            );

            // The files: every path, its type, mode, owner and content.
            let name = format!("files-{}", case.name);
            c.berth(&["create", "--name", &name, &tag]).ok()?;
            let ours = tree_of(&c.berth_bytes(&["export", &name])?)?;
            docker(&d, &["create", "--name", &name, &tag])?;
            let theirs = tree_of(&docker(&d, &["export", &name])?)?;
            for (path, want) in &theirs {
                ensure!(
                    ours.get(path) == Some(want),
                    "{}: /{path} is {:?}; Docker's is {want:?}",
                    case.name,
                    ours.get(path)
                );
            }
            for path in ours.keys() {
                ensure!(
                    theirs.contains_key(path),
                    "{}: /{path} is in berth's image, not in Docker's",
                    case.name
                );
            }

            // The same output when run.
            let ours = c.berth(&["run", "--rm", &tag]).ok()?.stdout;
            let theirs =
                String::from_utf8_lossy(&docker(&d, &["run", "--rm", "--network", "none", &tag])?)
                    .into_owned();
            ensure!(
                ours == theirs,
                "{}: runs to {ours:?}; Docker's to {theirs:?}",
                case.name
            );

            // An unchanged rebuild: every step from the cache, the same image.
            let again = c.berth(&args).ok()?;
            let steps = steps_of(&again.stdout);
            for s in cacheable(&steps) {
                ensure!(
                    s.cached,
                    "{}: step {} ({}) was not cached: {}",
                    case.name,
                    s.number,
                    s.text,
                    again.stdout
                );
            }
            let id = |out: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix("Successfully built "))
                    .map(str::to_string)
            };
            ensure!(
                id(&built.stdout) == id(&again.stdout),
                "{}: the rebuild made another image",
                case.name
            );

            // An edited COPY source: cached before that step, built from it on.
            if let Some((file, step)) = case.edit {
                std::fs::write(case.dir.join(file), b"edited\n")?;
                let edited = c.berth(&args).ok()?;
                for s in cacheable(&steps_of(&edited.stdout)) {
                    ensure!(
                        s.cached == (s.number < step),
                        "{}: after editing {file}, step {} ({}) cached={}: {}",
                        case.name,
                        s.number,
                        s.text,
                        s.cached,
                        edited.stdout
                    );
                }
                let out = c.berth(&["run", "--rm", &tag]).ok()?.stdout;
                ensure!(
                    out.contains("edited"),
                    "{}: the edit is not in the image: {out}",
                    case.name
                );
            }
        }
        Ok(())
    });
}

#[test]
fn bad_dockerfiles_name_their_line_and_tag_nothing() {
    sandbox::run("bad_dockerfiles_name_their_line_and_tag_nothing", || {
        let c = Cluster::start()?;
        let tar = c.dir().join("busybox.tar");
        berth_chaos::images::busybox_rootfs_tar(&tar)?;
        c.berth(&["import", &tar.display().to_string(), "busybox"])
            .ok()?;
        let cases: &[(&str, &str)] = &[
            (
                "FROM busybox\nRUN true\nFOO bar\n",
                "line 3: unknown instruction: FOO",
            ),
            ("FROM busybox\nENV\n", "line 2"),
            (
                "FROM busybox\nCOPY ../outside.txt /x\n",
                "line 2: forbidden path outside the build context",
            ),
            (
                "FROM busybox\nRUN echo before\nRUN exit 7\n",
                "line 3: The command '/bin/sh -c exit 7' returned a non-zero code: 7",
            ),
        ];
        for (i, (df, want)) in cases.iter().enumerate() {
            let dir = c.dir().join(format!("bad-{i}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("Dockerfile"), df)?;
            std::fs::write(c.dir().join("outside.txt"), "secret")?;
            let r = c.berth(&["build", "-t", "bad:1", &dir.display().to_string()]);
            ensure!(r.code != 0, "{df:?} built: {}", r.stdout);
            ensure!(r.stderr.contains(want), "{df:?}: {}{}", r.stdout, r.stderr);
            let images = c.berth(&["images"]).ok()?.stdout;
            ensure!(!images.contains("bad "), "{df:?} tagged an image: {images}");
        }
        // A tag Docker would refuse.
        let dir = c.dir().join("bad-0");
        let r = c.berth(&["build", "-t", "Bad:1", &dir.display().to_string()]);
        ensure!(
            r.code != 0 && r.stderr.contains("must be lowercase"),
            "{}",
            r.stderr
        );
        // A context that is not a directory.
        let r = c.berth(&["build", "/nonexistent-context"]);
        ensure!(
            r.code != 0 && r.stderr.contains("/nonexistent-context"),
            "{}",
            r.stderr
        );
        Ok(())
    });
}

/// A rebuild sends only what changed since the last build of the same
/// directory: the node keeps the context, and the CLI names what is gone.
/// The image is what a build of the whole context makes, file for file.
#[test]
fn a_rebuild_sends_only_what_changed_and_builds_the_same_context() {
    sandbox::run(
        "a_rebuild_sends_only_what_changed_and_builds_the_same_context",
        || {
            let c = Cluster::start()?;
            let tar = c.dir().join("busybox.tar");
            berth_chaos::images::busybox_rootfs_tar(&tar)?;
            c.berth(&["import", &tar.display().to_string(), "busybox"])
                .ok()?;
            let dir = c.dir().join("inc");
            let w = |rel: &str, body: &str| -> anyhow::Result<()> {
                let p = dir.join(rel);
                std::fs::create_dir_all(p.parent().context("a parent")?)?;
                std::fs::write(p, body)?;
                Ok(())
            };
            w(
                "Dockerfile",
                "FROM busybox\nCOPY . /ctx/\nCMD [\"sh\", \"-c\", \"cd /ctx && find . | sort && cat a d/b k n\"]\n",
            )?;
            w("a", "one\n")?;
            w("d/b", "two\n")?;
            w("d/e/c", "three\n")?;
            w("k/inner", "dir\n")?;
            for i in 0..50 {
                w(&format!("many/f{i}"), "same\n")?;
            }
            std::os::unix::fs::symlink("a", dir.join("lnk"))?;
            let build = |path: &std::path::Path| {
                c.berth(&["build", "-t", "inc:1", &path.display().to_string()])
                    .ok()
            };
            let first = build(&dir)?.stdout;
            ensure!(
                first.starts_with("Sending build context to the cluster")
                    && !first.contains("unchanged"),
                "{first}"
            );
            // An entry changed within 2 s of a scan is sent again next time
            // (its times may not show a second change in the same clock
            // tick): the second build comes once the files are that old,
            // so that it records them as unchanged.
            let written = std::time::Instant::now();
            let racy = std::time::Duration::from_millis(2100);
            if let Some(rest) = racy.checked_sub(written.elapsed()) {
                std::thread::sleep(rest);
            }
            build(&dir)?;
            // Changes of every kind: an edit of the same size, a deletion, a
            // directory gone, a directory that became a file, a symlink that
            // became a directory, a new file.
            w("a", "ONE\n")?;
            std::fs::remove_file(dir.join("d/e/c"))?;
            std::fs::remove_dir(dir.join("d/e"))?;
            std::fs::remove_dir_all(dir.join("k"))?;
            w("k", "file now\n")?;
            std::fs::remove_file(dir.join("lnk"))?;
            std::fs::create_dir(dir.join("lnk"))?;
            w("n", "new\n")?;
            let third = build(&dir)?.stdout;
            ensure!(
                third.contains("unchanged entries kept on the node"),
                "the rebuild sent everything: {third}"
            );
            let incremental = c.berth(&["run", "--rm", "inc:1"]).ok()?.stdout;
            // The same context at a new path is sent whole.
            let copy = c.dir().join("copy");
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(&dir)
                .arg(&copy)
                .status()?;
            ensure!(st.success(), "cp -a failed");
            let whole = build(&copy)?.stdout;
            ensure!(!whole.contains("unchanged"), "{whole}");
            ensure!(
                whole.contains(" ---> Using cache"),
                "the whole context digests differently from the incremental one: {whole}"
            );
            let full = c.berth(&["run", "--rm", "inc:1"]).ok()?.stdout;
            ensure!(incremental == full, "{incremental}\nagainst\n{full}");
            ensure!(
                full.contains("./k\n")
                    && !full.contains("./k/inner")
                    && !full.contains("./d/e")
                    && full.contains("./lnk\n")
                    && full.contains("ONE\ntwo\nfile now\nnew\n"),
                "{full}"
            );
            Ok(())
        },
    );
}
