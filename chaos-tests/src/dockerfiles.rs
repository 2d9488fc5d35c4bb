//! Build contexts that cover the Dockerfile instructions berth builds, for
//! the test that holds berth's images against Docker's classic builder and
//! for the build benchmark; and what the comparison reads of an image.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// One build: a context directory and how to build it.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub dir: PathBuf,
    pub build_args: Vec<String>,
    pub target: Option<String>,
    /// A file whose edit changes a COPY source, and the step of that COPY
    /// (1-based), for the cache-bust check.
    pub edit: Option<(&'static str, usize)>,
}

/// Every instruction the classic builder has, but `COPY --chmod` (which it
/// lacks): ARG before FROM, labels, variables with defaults, globs,
/// --chown, a directory, a name with a space, ADD of a local gzip tar and
/// of a plain file, RUN in both forms, SHELL, EXPOSE, VOLUME, STOPSIGNAL,
/// HEALTHCHECK, ONBUILD, USER, ENTRYPOINT and CMD; a .dockerignore.
const EVERY: &str = r#"# A comment, then the instructions.
ARG BASE=busybox
FROM ${BASE}
LABEL maintainer="berth" org.example.version="1.0" \
      "quoted key"="a b"
MAINTAINER someone@example.com
ARG GREETING
ARG COUNT=3
ENV APP_HOME=/srv/app EXTRA=${GREETING:-none} ALT=${COUNT:+set} UNSET=${NOPE:-fallback}
ENV OLD_STYLE value with spaces
WORKDIR $APP_HOME
COPY *.txt ./
COPY --chown=nobody:nogroup conf/ conf/
COPY ["data dir/x.dat", "./data/"]
ADD archive.tar.gz /opt/
ADD plain.txt /opt/plain-copy.txt
RUN echo "built with ${GREETING}" > built.txt \
 && mkdir -p /var/lib/app && chmod 750 /var/lib/app
RUN ["/bin/sh", "-c", "echo exec form > exec.txt"]
SHELL ["/bin/sh", "-e", "-c"]
RUN echo shell-changed > shell.txt
EXPOSE 8080 53/udp
VOLUME /data /cache
STOPSIGNAL SIGUSR1
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD cat /srv/app/built.txt
ONBUILD RUN echo child
USER nobody
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat built.txt exec.txt shell.txt a.txt conf/app.conf data/x.dat /opt/plain-copy.txt; ls -l /opt/dir"]
"#;

/// Two stages and scratch: only what is copied from the first lands.
const MULTI: &str = r#"FROM busybox AS build
WORKDIR /out
RUN echo stage-one > one.txt && cp /bin/busybox /out/busybox
FROM busybox AS unused
RUN echo never used
FROM scratch
COPY --from=build /out/ /
COPY --from=0 /etc/passwd /etc/passwd
ENV PATH=/
ENTRYPOINT ["/busybox"]
CMD ["cat", "/one.txt"]
"#;

/// The escape directive, a continuation with it, and a target stage.
const ESCAPE: &str = r#"# escape=`
FROM busybox AS base
ENV A=1 `
    B=2
RUN echo "a=$A b=$B" > /ab.txt
CMD ["cat", "/ab.txt"]
FROM base AS final
CMD ["echo", "final"]
"#;

/// One step of a build's progress: its number, its text, and whether the
/// cache served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub number: usize,
    pub text: String,
    pub cached: bool,
}

/// Reads Docker's progress format (`Step 3/9 : ...`, ` ---> Using cache`).
pub fn steps_of(progress: &str) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for line in progress.lines() {
        if let Some(rest) = line.strip_prefix("Step ") {
            if let Some((num, text)) = rest.split_once(" : ") {
                let number = num.split('/').next().unwrap_or("0").parse().unwrap_or(0);
                out.push(Step {
                    number,
                    text: text.to_string(),
                    cached: false,
                });
            }
        } else if line.trim() == "---> Using cache" {
            if let Some(s) = out.last_mut() {
                s.cached = true;
            }
        }
    }
    out
}

/// Whether a step can come from the cache: every step after the first
/// FROM but a FROM itself.
pub fn cacheable(steps: &[Step]) -> Vec<&Step> {
    let first_from = steps
        .iter()
        .position(|s| s.text.to_ascii_uppercase().starts_with("FROM "))
        .unwrap_or(0);
    steps[first_from..]
        .iter()
        .filter(|s| !s.text.to_ascii_uppercase().starts_with("FROM "))
        .collect()
}

/// Writes the contexts under `root` and describes their builds.
pub fn write_cases(root: &Path) -> anyhow::Result<Vec<Case>> {
    let every = root.join("every");
    write(&every, "Dockerfile", EVERY.as_bytes())?;
    write(&every, "a.txt", b"a\n")?;
    write(&every, "b.txt", b"b\n")?;
    write(&every, "conf/app.conf", b"key=value\n")?;
    write(&every, "data dir/x.dat", b"data\n")?;
    write(&every, "plain.txt", b"plain\n")?;
    write(&every, "secret.key", b"never sent\n")?;
    write(&every, "tmp/scratch.txt", b"never sent\n")?;
    write(&every, ".dockerignore", b"*.key\ntmp\n")?;
    std::fs::write(every.join("archive.tar.gz"), archive()?)?;
    let multi = root.join("multi");
    write(&multi, "Dockerfile", MULTI.as_bytes())?;
    let escape = root.join("escape");
    write(&escape, "Dockerfile", ESCAPE.as_bytes())?;
    Ok(vec![
        Case {
            name: "every-instruction",
            dir: every,
            build_args: vec!["GREETING=hi".into()],
            target: None,
            edit: Some(("a.txt", 10)),
        },
        Case {
            name: "multi-stage-scratch",
            dir: multi,
            build_args: Vec::new(),
            target: None,
            edit: None,
        },
        Case {
            name: "escape-and-target",
            dir: escape,
            build_args: Vec::new(),
            target: Some("base".into()),
            edit: None,
        },
    ])
}

fn write(dir: &Path, rel: &str, body: &[u8]) -> anyhow::Result<()> {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("a parent"))?;
    std::fs::write(&p, body)?;
    Ok(())
}

/// A gzip tar with a directory, a file owned by 1000:1000, and a symlink.
fn archive() -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    b.append_data(&mut h, "dir", std::io::empty())?;
    let body = b"inner\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o640);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_600_000_000);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, "dir/inner.txt", &body[..])?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    b.append_link(&mut h, "dir/link", "inner.txt")?;
    let tar = b.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar)?;
    Ok(gz.finish()?)
}

/// One entry of a container's exported filesystem, without its times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// A file's content digest, or a link's target.
    pub content: String,
}

/// Paths a container runtime makes for a container, not the image's.
fn runtime_made(path: &str) -> bool {
    let top = path.split('/').next().unwrap_or_default();
    matches!(top, ".dockerenv" | "dev" | "proc" | "sys")
        || matches!(
            path,
            "etc/hostname" | "etc/hosts" | "etc/resolv.conf" | "etc/mtab"
        )
}

/// The entries of an exported filesystem (a tar), by path, less what the
/// runtime made.
pub fn tree_of(tar_bytes: &[u8]) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for e in archive.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." || runtime_made(&path) {
            continue;
        }
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => 'f',
        };
        let content = match kind {
            'l' | 'h' => e
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default(),
            'f' => {
                let mut body = Vec::new();
                e.read_to_end(&mut body)?;
                hex::encode(Sha256::digest(&body))
            }
            _ => String::new(),
        };
        // A hard link and the file it names are the same file: compare
        // both as files (exports differ in which they write as the link).
        let (kind, content) = if kind == 'h' {
            ('f', format!("link:{content}"))
        } else {
            (kind, content)
        };
        out.insert(
            path,
            Entry {
                kind,
                mode: h.mode()? & 0o7777,
                uid: h.uid()?,
                gid: h.gid()?,
                content,
            },
        );
    }
    Ok(out)
}

/// The config fields the comparison holds berth's image to, from `image
/// inspect`'s JSON (the first image), with absent, null and empty alike.
pub fn config_fields(inspect: &str) -> anyhow::Result<BTreeMap<&'static str, Value>> {
    let v: Value = serde_json::from_str(inspect)?;
    let c = &v[0]["Config"];
    let mut out = BTreeMap::new();
    for f in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Labels",
        "Volumes",
        "StopSignal",
        "Healthcheck",
        "OnBuild",
        "Shell",
    ] {
        let val = c.get(f).cloned().unwrap_or(Value::Null);
        let empty = match &val {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        out.insert(f, if empty { Value::Null } else { val });
    }
    out.insert("Author", {
        let a = v[0]["Author"].clone();
        if a.as_str().is_some_and(|s| !s.is_empty()) {
            a
        } else {
            Value::Null
        }
    });
    Ok(out)
}
