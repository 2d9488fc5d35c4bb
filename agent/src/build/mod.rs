//! `build`: an image from a Dockerfile and a context, as Docker's classic
//! builder makes it. Each instruction is one step over the image the last
//! one made: metadata steps change the config, RUN runs in a real
//! container of this engine (its overlay, its shim, its isolation), COPY
//! and ADD write into the step's overlay, and a step's upper dir becomes
//! its layer. Every step's image is kept in the build cache under a key of
//! its parent and its instruction (and, for COPY and ADD, the content of
//! its sources), so an unchanged rebuild makes nothing again.
//!
//! `dockerfile.rs` parses; `context.rs` unpacks the context and copies
//! from it; `kept.rs` keeps a context after its build, so that the next
//! build of it is sent only what changed; this file runs the steps.

pub mod context;
pub mod dockerfile;
pub mod kept;
pub mod runner;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::image::commit::{self, apply_changes};
use crate::image::layer::{Ingested, Progress};
use crate::image::{format_rfc3339, load, ImageError, ImageStore, ImageSummary};
use crate::snapshot::{self, Snapshots};
use dockerfile::Instruction;

/// Errors of a build. Each names the Dockerfile line it comes from where
/// there is one.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Dockerfile parse error line {line}: {why}")]
    Parse { line: usize, why: String },
    #[error("Dockerfile line {line}: {why}")]
    Step { line: usize, why: String },
    #[error("Dockerfile line {line}: The command '{command}' returned a non-zero code: {code}")]
    Failed {
        line: usize,
        command: String,
        code: i32,
    },
    #[error("the build context: {0}")]
    Context(String),
    /// The upload changes a kept copy of the context this node does not
    /// hold (evicted, taken by another build, or kept on another node):
    /// the client is asked for the whole context.
    #[error("this node keeps no copy {0} of the build context")]
    ContextBaseUnknown(String),
    #[error("failed to reach build target {0} in Dockerfile")]
    Target(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// The names the image gets (`-t`).
    pub tags: Vec<String>,
    /// The Dockerfile's path in the context.
    pub dockerfile: String,
    /// `--build-arg K=V` (or `K`, which takes nothing here).
    pub build_args: Vec<String>,
    pub no_cache: bool,
    /// The stage to stop after (`--target`).
    pub target: String,
    /// RUN's network: none (the default) or host.
    pub network: String,
    pub now_ms: i64,
    /// How the context arrives: whole, or as changes to a kept copy.
    pub context: ContextPlan,
}

/// How a build's context arrives, and whether it is kept afterwards.
#[derive(Debug, Clone, Default)]
pub struct ContextPlan {
    /// The client's name for the context: the context is kept under it
    /// after a build that succeeds. None: not kept.
    pub key: Option<String>,
    /// The token of the kept copy the upload changes. None: the upload is
    /// the whole context.
    pub base: Option<String>,
    /// The paths to delete from the kept copy before the upload is
    /// unpacked over it.
    pub removed: Vec<String>,
}

/// Runs one RUN container to its end: the bundle is prepared (config.json
/// written, rootfs mounted); its output goes to `out`; the exit code back.
pub trait Runner {
    fn run(&self, bundle: &Path, out: &mut dyn Write) -> Result<i32, String>;
}

/// Where a build works: the store, the snapshots, and a directory of its
/// own for bundles and the context.
pub struct Builder<'a> {
    pub store: &'a ImageStore,
    pub snapshots: &'a Snapshots,
    /// Made empty, and removed when the build ends.
    pub work: PathBuf,
    /// Where named volumes live (for config.json).
    pub volumes: PathBuf,
    pub runner: &'a dyn Runner,
    /// The contexts this node keeps.
    pub kept: &'a kept::Kept,
}

/// The build's result.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: ImageSummary,
    /// The token of the copy of the context kept after the build (with a
    /// context key).
    pub context_token: Option<String>,
}

/// Builds the image from `context` (a tar), writing Docker's progress to
/// `out`.
pub fn build(
    b: &Builder,
    req: &BuildRequest,
    context: impl std::io::Read,
    out: &mut dyn Write,
) -> Result<Built, BuildError> {
    let _ = fs::remove_dir_all(&b.work);
    fs::create_dir_all(&b.work).map_err(io(&b.work))?;
    let mut mounted = false;
    let result = build_in(b, req, context, out, &mut mounted);
    // Every mount the build made goes with its work dir (a build whose
    // every step came from the cache mounted nothing).
    if mounted || result.is_err() {
        for m in mounts_under(&b.work) {
            let _ = snapshot::unmount(&m);
        }
    }
    let result = result.map(|(mut built, intact)| {
        // A context the build changed (an ignored Dockerfile dropped) is
        // not what its client sent: it is not kept.
        if let (Some(key), true) = (&req.context.key, intact) {
            let ctx_dir = b.work.join("context");
            match b.kept.keep(key, &ctx_dir) {
                Ok(token) => built.context_token = Some(token),
                Err(e) => tracing::warn!("the build context is not kept: {e}"),
            }
        }
        built
    });
    let _ = fs::remove_dir_all(&b.work);
    result
}

/// Makes the build's context at `ctx_dir`: the upload unpacked, over the
/// kept copy it changes if it names one.
fn make_context(
    b: &Builder,
    plan: &ContextPlan,
    upload: impl std::io::Read,
    ctx_dir: &Path,
) -> Result<(), BuildError> {
    if let (Some(key), Some(base)) = (&plan.key, &plan.base) {
        let taken = b.kept.take(key, base, ctx_dir).map_err(io(ctx_dir))?;
        if !taken {
            return Err(BuildError::ContextBaseUnknown(base.clone()));
        }
        for path in &plan.removed {
            context::remove_entry(ctx_dir, path).map_err(BuildError::Context)?;
        }
    }
    context::unpack(upload, ctx_dir, b.store.limits())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state of one stage: the image its last step made.
#[derive(Debug, Clone)]
struct Stage {
    name: Option<String>,
    /// The whole image config (Docker's JSON).
    config: Value,
    /// Its id (config digest); empty for scratch before any step.
    id: String,
    /// Layers, bottom first.
    diff_ids: Vec<String>,
    /// ARGs declared in the stage, with their values.
    args: BTreeMap<String, Option<String>>,
    /// A CMD was given in this stage (an ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl Stage {
    fn env(&self) -> Vec<String> {
        self.config["config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The variables substitution sees: the stage's ARGs under its ENV.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut v: BTreeMap<String, String> = self
            .args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        for e in self.env() {
            if let Some((k, val)) = e.split_once('=') {
                v.insert(k.to_string(), val.to_string());
            }
        }
        v
    }

    fn shell(&self) -> Vec<String> {
        self.config["config"]["Shell"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn workdir(&self) -> String {
        self.config["config"]["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }
}

/// Builds in `b.work`; `mounted` is set once a step may have mounted
/// something there.
fn build_in(
    b: &Builder,
    req: &BuildRequest,
    context: impl std::io::Read,
    out: &mut dyn Write,
    mounted: &mut bool,
) -> Result<(Built, bool), BuildError> {
    let ctx_dir = b.work.join("context");
    make_context(b, &req.context, context, &ctx_dir)?;
    let dockerfile = if req.dockerfile.is_empty() {
        "Dockerfile"
    } else {
        req.dockerfile.as_str()
    };
    let text = context::read_control_file(&ctx_dir, dockerfile)
        .map_err(|e| BuildError::Context(format!("cannot read the Dockerfile: {e}")))?
        .ok_or_else(|| BuildError::Context(format!("the Dockerfile {dockerfile} is missing")))?;
    let intact = !drop_ignored_build_files(&ctx_dir, dockerfile)?;
    let instructions = dockerfile::parse(&text)?;
    let instructions = until_target(&instructions, &req.target)?;
    let mut build_args: BTreeMap<String, String> = BTreeMap::new();
    for a in &req.build_args {
        if let Some((k, v)) = a.split_once('=') {
            build_args.insert(k.to_string(), v.to_string());
        }
    }
    let mut used_args: Vec<String> = Vec::new();
    // ARGs before the first FROM.
    let mut global: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut current: Option<Stage> = None;
    let total = instructions.len();
    let mut pinned: Vec<String> = Vec::new();
    let result = (|| -> Result<(Built, bool), BuildError> {
        for (n, ins) in instructions.iter().enumerate() {
            let _ = writeln!(out, "Step {}/{} : {}", n + 1, total, ins.original);
            let line = ins.line;
            let step_err = |why: String| BuildError::Step { line, why };
            if ins.keyword == "FROM" {
                let gvars: BTreeMap<String, String> = global
                    .iter()
                    .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                    .collect();
                let text = dockerfile::substitute(&ins.rest, &gvars).map_err(step_err)?;
                let w = dockerfile::words(&text).map_err(step_err)?;
                let (image, name) = match w.as_slice() {
                    [i] => (i.clone(), None),
                    [i, as_, n] if as_.eq_ignore_ascii_case("as") => {
                        (i.clone(), Some(n.to_ascii_lowercase()))
                    }
                    _ => {
                        return Err(step_err(
                            "FROM takes an image and an optional AS name".into(),
                        ))
                    }
                };
                if let Some(s) = current.take() {
                    stages.push(s);
                }
                let base = from(b, &stages, &image).map_err(|e| step_err(e.to_string()))?;
                if !base.id.is_empty() {
                    let _ = writeln!(out, " ---> {}", short(&base.id));
                }
                current = Some(Stage {
                    name,
                    args: BTreeMap::new(),
                    cmd_set: false,
                    ..base
                });
                continue;
            }
            if current.is_none() {
                // ARG before the first FROM.
                let (k, v) = arg_pair(&ins.rest);
                let v = build_args.get(&k).cloned().or(v);
                if build_args.contains_key(&k) {
                    used_args.push(k.clone());
                }
                global.insert(k, v);
                continue;
            }
            let stage = current.as_mut().expect("a stage");
            step(
                b,
                req,
                ins,
                stage,
                &stages,
                &global,
                &build_args,
                &mut used_args,
                &ctx_dir,
                &mut pinned,
                mounted,
                out,
            )?;
        }
        let mut last = current.take().ok_or_else(|| BuildError::Parse {
            line: 1,
            why: "no FROM".into(),
        })?;
        let unused: Vec<&String> = build_args
            .keys()
            .filter(|k| !used_args.contains(k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(
                out,
                "[Warning] One or more build-args [{}] were not consumed",
                names.join(" ")
            );
        }
        if last.id.is_empty() {
            // `FROM scratch` and nothing else.
            last.id = save_config(b.store, &last.config)?;
        }
        let bytes = b.store.get_blob(&last.id)?;
        let parsed = oci_spec::image::ImageConfiguration::from_reader(bytes.as_slice()).map_err(
            |source| ImageError::Spec {
                what: "the built config".into(),
                source,
            },
        )?;
        let layers: Vec<Ingested> = last
            .diff_ids
            .iter()
            .map(|d| Ingested {
                diff_id: d.clone(),
                size: b
                    .store
                    .blob_path(d)
                    .ok()
                    .and_then(|p| fs::metadata(p).ok())
                    .map(|m| m.len())
                    .unwrap_or(0),
            })
            .collect();
        let refs: Vec<String> = req
            .tags
            .iter()
            .map(|t| load::normalize_reference(t))
            .collect();
        let image = load::commit_image(b.store, &bytes, &parsed, &layers, &refs)?;
        let _ = writeln!(out, "Successfully built {}", short(&image.id));
        for t in &req.tags {
            let _ = writeln!(out, "Successfully tagged {}", load::normalize_reference(t));
        }
        Ok((
            Built {
                image,
                context_token: None,
            },
            intact,
        ))
    })();
    b.store.unpin(&pinned);
    result
}

/// The build args Docker passes without a declaration.
const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The instructions up to the end of the stage `target` (all of them if
/// none is named).
fn until_target(all: &[Instruction], target: &str) -> Result<Vec<Instruction>, BuildError> {
    if target.is_empty() {
        return Ok(all.to_vec());
    }
    let mut out = Vec::new();
    let mut in_target = false;
    for i in all {
        if i.keyword == "FROM" {
            if in_target {
                return Ok(out);
            }
            let w = dockerfile::words(&i.rest).unwrap_or_default();
            in_target = w.len() == 3 && w[2].eq_ignore_ascii_case(target);
        }
        out.push(i.clone());
    }
    if in_target {
        Ok(out)
    } else {
        Err(BuildError::Target(target.to_string()))
    }
}

/// `NAME[=default]`.
fn arg_pair(rest: &str) -> (String, Option<String>) {
    let w = rest.trim();
    match w.split_once('=') {
        Some((k, v)) => (
            k.trim().to_string(),
            Some(
                dockerfile::words(v)
                    .ok()
                    .and_then(|w| w.into_iter().next())
                    .unwrap_or_default(),
            ),
        ),
        None => (w.to_string(), None),
    }
}

/// The first image of a stage: scratch, an earlier stage, or an image of
/// the store.
fn from(b: &Builder, stages: &[Stage], image: &str) -> Result<Stage, BuildError> {
    if image == "scratch" {
        return Ok(Stage {
            name: None,
            config: json!({
                "architecture": oci_arch(),
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": []
            }),
            id: String::new(),
            diff_ids: Vec::new(),
            args: BTreeMap::new(),
            cmd_set: false,
        });
    }
    if let Some(s) = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(image.to_ascii_lowercase().as_str()))
    {
        return Ok(s.clone());
    }
    let resolved = b
        .store
        .resolve(&load::normalize_reference(image))
        .or_else(|_| b.store.resolve(image))
        .map_err(|_| {
            BuildError::Context(format!(
                "pull access denied for {image}: no such image on this node (load or import it first)"
            ))
        })?;
    let config: Value = serde_json::from_slice(&b.store.get_blob(&resolved.id)?)
        .map_err(|e| ImageError::Archive(format!("the config of {image}: {e}")))?;
    Ok(Stage {
        name: None,
        config,
        id: resolved.id,
        diff_ids: resolved.diff_ids,
        args: BTreeMap::new(),
        cmd_set: false,
    })
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn save_config(store: &ImageStore, config: &Value) -> Result<String, BuildError> {
    let bytes = serde_json::to_vec(config).map_err(|e| ImageError::Archive(e.to_string()))?;
    Ok(store.put_blob(&bytes)?)
}

fn cache_key(parent: &str, what: &str) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    h.update([0]);
    h.update(what.as_bytes());
    hex::encode(h.finalize())
}

/// One step after FROM.
#[allow(clippy::too_many_arguments)]
fn step(
    b: &Builder,
    req: &BuildRequest,
    ins: &Instruction,
    stage: &mut Stage,
    stages: &[Stage],
    global: &BTreeMap<String, Option<String>>,
    build_args: &BTreeMap<String, String>,
    used_args: &mut Vec<String>,
    ctx_dir: &Path,
    pinned: &mut Vec<String>,
    mounted: &mut bool,
    out: &mut dyn Write,
) -> Result<(), BuildError> {
    let line = ins.line;
    let step_err = |why: String| BuildError::Step { line, why };
    let kw = ins.keyword.as_str();
    let substituted = || dockerfile::substitute(&ins.rest, &stage.vars()).map_err(step_err);
    // What the step does, as the history and the cache key record it.
    let mut created_by = String::new();
    // COPY and ADD: the destination as written, and Docker's name for what
    // is copied (`file:`, `dir:` or `multi:` and a digest), for history.
    let mut written_dest = String::new();
    let mut copied_what = String::new();
    let mut filesystem: Option<FsStep> = None;
    let mut config = stage.config.clone();
    match kw {
        "ARG" => {
            let (k, declared) = arg_pair(&ins.rest);
            let v = build_args
                .get(&k)
                .cloned()
                .or(declared.clone())
                .or_else(|| global.get(&k).cloned().flatten());
            if build_args.contains_key(&k) {
                used_args.push(k.clone());
            }
            stage.args.insert(k.clone(), v.clone());
            // ARG leaves the config as it is, with a history line of the
            // ARG as declared (Docker's: the value given is not recorded).
            created_by = format!(
                "{} #(nop)  ARG {}",
                nop_shell(stage),
                match &declared {
                    Some(d) => format!("{k}={d}"),
                    None => k.clone(),
                }
            );
        }
        "ENV" | "LABEL" | "EXPOSE" | "VOLUME" | "USER" | "STOPSIGNAL" | "ONBUILD" => {
            let text = if kw == "ONBUILD" {
                ins.rest.clone()
            } else {
                substituted()?
            };
            let text = if matches!(kw, "EXPOSE" | "USER" | "STOPSIGNAL") {
                dockerfile::words(&text).map_err(step_err)?.join(" ")
            } else {
                text
            };
            apply_changes(&mut config, &[format!("{kw} {text}")])
                .map_err(|e| step_err(e.to_string()))?;
            // History as Docker writes it: EXPOSE's ports sorted, VOLUME's
            // paths as a Go list.
            let shown = match kw {
                "EXPOSE" => {
                    let mut ports: Vec<&str> = text.split_whitespace().collect();
                    ports.sort_unstable();
                    ports.join(" ")
                }
                "VOLUME" => {
                    let paths: Vec<String> = match serde_json::from_str::<Vec<String>>(text.trim())
                    {
                        Ok(v) => v,
                        Err(_) => dockerfile::words(&text).map_err(step_err)?,
                    };
                    format!("[{}]", paths.join(" "))
                }
                // Docker writes ENV and LABEL back from their pairs,
                // unquoted.
                "ENV" | "LABEL" => commit::pairs(&text)
                    .map_err(step_err)?
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => text.clone(),
            };
            created_by = format!("{} #(nop)  {kw} {shown}", nop_shell(stage));
        }
        "MAINTAINER" => {
            config["author"] = json!(ins.rest);
            created_by = format!("{} #(nop)  MAINTAINER {}", nop_shell(stage), ins.rest);
        }
        "CMD" | "ENTRYPOINT" => {
            let key = if kw == "CMD" { "Cmd" } else { "Entrypoint" };
            let v: Value = match ins.exec_form() {
                Some(v) => json!(v),
                None if ins.rest.trim().is_empty() => Value::Null,
                None => {
                    let mut s = stage.shell();
                    s.push(ins.rest.clone());
                    json!(s)
                }
            };
            config["config"][key] = v.clone();
            if kw == "ENTRYPOINT" && !stage.cmd_set {
                config["config"]["Cmd"] = Value::Null;
            }
            created_by = format!("{} #(nop)  {kw} {}", nop_shell(stage), go_quoted_list(&v));
        }
        "SHELL" => {
            let s = ins.exec_form().ok_or_else(|| {
                step_err("SHELL requires the arguments to be in JSON form".into())
            })?;
            config["config"]["Shell"] = json!(s);
            // Under the new shell, as Docker writes it.
            created_by = format!("{} #(nop)  SHELL [{}]", s.join(" "), s.join(" "));
        }
        "HEALTHCHECK" => {
            let hc = healthcheck(ins, &stage.shell()).map_err(step_err)?;
            created_by = format!(
                "{} #(nop)  HEALTHCHECK {}",
                nop_shell(stage),
                go_healthcheck(&hc)
            );
            config["config"]["Healthcheck"] = hc;
        }
        "WORKDIR" => {
            let w = substituted()?;
            let w = dockerfile::words(&w).map_err(step_err)?.join(" ");
            let dir = if w.starts_with('/') {
                w.clone()
            } else {
                format!("{}/{}", stage.workdir().trim_end_matches('/'), w)
            };
            let dir = clean(&dir);
            config["config"]["WorkingDir"] = json!(dir);
            created_by = format!("{} #(nop) WORKDIR {dir}", nop_shell(stage));
            filesystem = Some(FsStep::Mkdir(dir));
        }
        "RUN" => {
            // BuildKit's RUN flags (--mount, --network, --security) are
            // not the classic builder's: refused by name, not ignored.
            if let Some((f, _)) = ins.flags.first() {
                return Err(step_err(format!(
                    "RUN --{f} is not supported (BuildKit's; berth builds as Docker's classic builder)"
                )));
            }
            let args = match ins.exec_form() {
                Some(v) => v,
                None => {
                    let mut s = stage.shell();
                    s.push(ins.rest.clone());
                    s
                }
            };
            let env: Vec<String> = stage
                .args
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                .collect();
            created_by = if env.is_empty() {
                args.join(" ")
            } else {
                format!("|{} {} {}", env.len(), env.join(" "), args.join(" "))
            };
            filesystem = Some(FsStep::Run { args, env });
        }
        "COPY" | "ADD" => {
            let text = substituted()?;
            let words = match ins.exec_form() {
                Some(v) => v
                    .iter()
                    .map(|w| dockerfile::substitute(w, &stage.vars()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(step_err)?,
                None => dockerfile::words(&text).map_err(step_err)?,
            };
            if words.len() < 2 {
                return Err(step_err(format!("{kw} requires at least two arguments")));
            }
            for (f, _) in &ins.flags {
                if !matches!(f.as_str(), "from" | "chown" | "chmod") {
                    return Err(step_err(format!("unknown flag: --{f}")));
                }
            }
            if kw == "ADD" && ins.flag("from").is_some() {
                return Err(step_err("ADD does not take --from: use COPY".into()));
            }
            let (dest, sources) = words.split_last().expect("two words");
            written_dest = dest.clone();
            let dest = if dest.starts_with('/') {
                dest.clone()
            } else {
                let rel = format!("{}/{}", stage.workdir().trim_end_matches('/'), dest);
                if dest.ends_with('/') || dest == "." {
                    format!("{}/", clean(&rel))
                } else {
                    clean(&rel)
                }
            };
            // Flag values take the stage's variables, as Docker's do
            // (`--chown=${UID}`, `--from=${STAGE}`).
            let flag = |name: &str| -> Result<Option<String>, BuildError> {
                ins.flag(name)
                    .map(|v| dockerfile::substitute(v, &stage.vars()).map_err(step_err))
                    .transpose()
            };
            let from_flag = flag("from")?;
            let chown_flag = flag("chown")?;
            let from = match from_flag.as_deref() {
                None => Source::Context,
                Some(f) => {
                    let named = stages.iter().enumerate().find(|(i, s)| {
                        s.name.as_deref() == Some(f.to_ascii_lowercase().as_str())
                            || f.parse::<usize>().ok() == Some(*i)
                    });
                    match named {
                        Some((_, s)) => Source::Layers(s.diff_ids.clone(), s.id.clone()),
                        None => {
                            let s =
                                self::from(b, stages, f).map_err(|e| step_err(e.to_string()))?;
                            Source::Layers(s.diff_ids, s.id)
                        }
                    }
                }
            };
            let chmod = match flag("chmod")? {
                None => None,
                Some(m) => Some(
                    u32::from_str_radix(&m, 8)
                        .ok()
                        .filter(|v| *v <= 0o7777)
                        .ok_or_else(|| {
                            step_err(format!(
                                "invalid --chmod={m}: give an octal mode up to 7777"
                            ))
                        })?,
                ),
            };
            filesystem = Some(FsStep::Copy(context::CopySpec {
                add: kw == "ADD",
                sources: sources.to_vec(),
                dest: dest.clone(),
                chown: chown_flag,
                chmod,
                source: from,
                line,
            }));
        }
        other => return Err(step_err(format!("{other} is not supported here"))),
    }
    let key_text = match &filesystem {
        Some(FsStep::Copy(c)) => {
            let root = match &c.source {
                Source::Context => ctx_dir.to_path_buf(),
                Source::Layers(..) => PathBuf::new(),
            };
            let content = match &c.source {
                Source::Context => context::digest_sources(&root, c).map_err(step_err)?,
                Source::Layers(_, id) => {
                    let mut h = Sha256::new();
                    h.update(id.as_bytes());
                    h.update(c.sources.join("\0").as_bytes());
                    hex::encode(h.finalize())
                }
            };
            let one_dir = match (&c.source, c.sources.as_slice()) {
                (Source::Context, [one]) if !one.contains(['*', '?', '[']) => {
                    context::inside(ctx_dir, one).is_ok_and(|p| p.is_dir())
                }
                (_, [one]) => one.ends_with('/'),
                _ => false,
            };
            copied_what = match c.sources.as_slice() {
                [one] if one.contains(['*', '?', '[']) => format!("multi:{content}"),
                [_] if one_dir => format!("dir:{content}"),
                [_] => format!("file:{content}"),
                _ => format!("multi:{content}"),
            };
            format!(
                "{} {:?} {:?} {:?} {} {}",
                ins.keyword, c.sources, c.chown, c.chmod, c.dest, content
            )
        }
        // The arguments as a JSON list: an exec form and a shell form that
        // join to the same text are different commands.
        Some(FsStep::Run { args, env }) => format!(
            "RUN {} {env:?} {}",
            serde_json::to_string(args).unwrap_or_default(),
            req.network
        ),
        _ => created_by.clone(),
    };
    let parent = if stage.id.is_empty() {
        "scratch".to_string()
    } else {
        stage.id.clone()
    };
    let key = cache_key(&parent, &format!("{key_text}\n{}", config["config"]));
    if !req.no_cache {
        if let Some((id, cached)) = b.store.cache_get(&key, b.snapshots, pinned) {
            let _ = writeln!(out, " ---> Using cache\n ---> {}", short(&id));
            adopt(stage, cached, id, kw);
            return Ok(());
        }
    }
    let now = format_rfc3339(req.now_ms);
    let mut new_layer: Option<Ingested> = None;
    if let Some(fs_step) = &filesystem {
        *mounted = true;
        new_layer = run_fs_step(b, req, stage, fs_step, &config, line, out, pinned)?;
        if let (Some(FsStep::Copy(c)), Some(_)) = (&filesystem, &new_layer) {
            created_by = format!(
                "{} #(nop) {} {}{copied_what} in {written_dest} ",
                nop_shell(stage),
                ins.keyword,
                // Docker's own form: the flag runs into what follows it.
                c.chown
                    .as_deref()
                    .map(|o| format!("--chown={o}"))
                    .unwrap_or_default()
            );
        }
    }
    let obj = config
        .as_object_mut()
        .ok_or_else(|| step_err("the config is not an object".into()))?;
    obj.insert("created".into(), json!(now));
    let mut diff_ids = stage.diff_ids.clone();
    let mut entry = serde_json::Map::new();
    entry.insert("created".into(), json!(now));
    entry.insert("created_by".into(), json!(created_by));
    match &new_layer {
        Some(l) => diff_ids.push(l.diff_id.clone()),
        None => {
            entry.insert("empty_layer".into(), json!(true));
        }
    }
    obj.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    match obj.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(Value::Object(entry)),
        None => {
            obj.insert("history".into(), json!([Value::Object(entry)]));
        }
    }
    let id = save_config(b.store, &config)?;
    b.store.cache_put(&key, &id, &config)?;
    let _ = writeln!(out, " ---> {}", short(&id));
    adopt(stage, config, id, kw);
    Ok(())
}

/// The stage goes on from the image a step made.
fn adopt(stage: &mut Stage, config: Value, id: String, keyword: &str) {
    stage.diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    stage.config = config;
    stage.id = id;
    if keyword == "CMD" {
        stage.cmd_set = true;
    }
}

/// What a step does to the filesystem.
enum FsStep {
    Mkdir(String),
    Run { args: Vec<String>, env: Vec<String> },
    Copy(context::CopySpec),
}

/// Where COPY takes its files from.
#[derive(Debug, Clone)]
pub enum Source {
    Context,
    /// An earlier stage's or an image's layers (bottom first), and its id.
    Layers(Vec<String>, String),
}

/// Runs a filesystem step in an overlay of the stage's layers and makes
/// its upper dir a layer (none if it changed nothing).
#[allow(clippy::too_many_arguments)]
fn run_fs_step(
    b: &Builder,
    req: &BuildRequest,
    stage: &Stage,
    what: &FsStep,
    config: &Value,
    line: usize,
    out: &mut dyn Write,
    pinned: &mut Vec<String>,
) -> Result<Option<Ingested>, BuildError> {
    let step_err = |why: String| BuildError::Step { line, why };
    let id = random_id();
    let bundle = b.work.join(&id);
    fs::create_dir_all(&bundle).map_err(io(&bundle))?;
    let lowers: Vec<PathBuf> = stage
        .diff_ids
        .iter()
        .rev()
        .map(|d| b.snapshots.path(d))
        .collect::<Result<_, _>>()
        .map_err(|e| step_err(e.to_string()))?;
    let upper = crate::runtime::bundle::upper(&bundle);
    let rootfs = crate::runtime::bundle::rootfs(&bundle);
    let mut empty_lower = None;
    let lowers = if lowers.is_empty() {
        // overlayfs needs a lower dir: an empty one stands for scratch.
        let e = b.work.join(format!("{id}-empty"));
        fs::create_dir_all(&e).map_err(io(&e))?;
        empty_lower = Some(e.clone());
        vec![e]
    } else {
        lowers
    };
    snapshot::mount_overlay(
        &lowers,
        &upper,
        &crate::runtime::bundle::work(&bundle),
        &rootfs,
    )
    .map_err(|e| step_err(e.to_string()))?;
    let done = (|| -> Result<Vec<PathBuf>, BuildError> {
        match what {
            FsStep::Mkdir(dir) => {
                let root = crate::runtime::inroot::Root::open(&rootfs)
                    .map_err(|e| step_err(e.to_string()))?;
                root.open_dest(Path::new(dir), crate::runtime::inroot::Make::Dir)
                    .map_err(|e| step_err(format!("WORKDIR {dir}: {e}")))?;
                Ok(Vec::new())
            }
            FsStep::Copy(c) => {
                let (src_root, mounted) = match &c.source {
                    Source::Context => (b.work.join("context"), None),
                    Source::Layers(diff_ids, _) => {
                        let target = b.work.join(format!("{id}-from"));
                        let lowers: Vec<PathBuf> = diff_ids
                            .iter()
                            .rev()
                            .map(|d| b.snapshots.path(d))
                            .collect::<Result<_, _>>()
                            .map_err(|e| step_err(e.to_string()))?;
                        match lowers.as_slice() {
                            [] => {
                                fs::create_dir_all(&target).map_err(io(&target))?;
                                (target, None)
                            }
                            // One layer: its snapshot is the whole root (an
                            // overlay needs two lower dirs); it is only read.
                            [one] => (one.clone(), None),
                            _ => {
                                snapshot::mount_readonly(&lowers, &target)
                                    .map_err(|e| step_err(e.to_string()))?;
                                (target.clone(), Some(target))
                            }
                        }
                    }
                };
                let copied = context::copy(&src_root, &rootfs, c, b.store.limits());
                if let Some(m) = mounted {
                    let _ = snapshot::unmount(&m);
                }
                copied?;
                Ok(Vec::new())
            }
            FsStep::Run { args, env } => {
                let image = oci_spec::image::ImageConfiguration::from_reader(
                    serde_json::to_vec(config).unwrap_or_default().as_slice(),
                )
                .map_err(|e| step_err(format!("the step's config: {e}")))?;
                let spec = crate::orders::RunSpec {
                    cmd: args.clone(),
                    entrypoint: Some(Vec::new()),
                    env: env.clone(),
                    hostname: id.clone(),
                    network: req.network.clone(),
                    ..Default::default()
                };
                let cfg = crate::supervisor::container_config(
                    &format!("build-{id}"),
                    &spec,
                    &image,
                    &crate::supervisor::ConfigPaths {
                        rootfs: rootfs.clone(),
                        volumes: b.volumes.clone(),
                        lease: None,
                    },
                )
                .map_err(|e| step_err(e.to_string()))?;
                let oci = crate::runtime::spec::build(&cfg).map_err(|e| step_err(e.to_string()))?;
                crate::runtime::spec::save(&oci, &bundle).map_err(|e| step_err(e.to_string()))?;
                let _ = writeln!(out, " ---> Running in {id}");
                let _ = out.flush();
                let code = b.runner.run(&bundle, out).map_err(step_err)?;
                if code != 0 {
                    return Err(BuildError::Failed {
                        line,
                        command: args.join(" "),
                        code,
                    });
                }
                let _ = writeln!(out, "Removing intermediate container {id}");
                Ok(oci
                    .mounts()
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|m| m.destination().clone())
                    .collect())
            }
        }
    })();
    let _ = snapshot::unmount(&rootfs);
    let mounts = done?;
    let real_lowers: Vec<PathBuf> = if empty_lower.is_some() {
        Vec::new()
    } else {
        lowers
    };
    let skip = commit::made_mount_points(&upper, &real_lowers, &mounts);
    let layer = if commit::upper_is_empty(&upper, &skip)
        && !matches!(what, FsStep::Copy(_) | FsStep::Run { .. })
    {
        None
    } else {
        let _writing = b.store.write_lock();
        let mut progress = Progress::default();
        let l = commit::ingest_upper(
            b.store,
            b.snapshots,
            &upper,
            &skip,
            &format!("the layer of Dockerfile line {line}"),
            &mut progress,
        )?;
        b.store.pin(&l.diff_id);
        pinned.push(l.diff_id.clone());
        Some(l)
    };
    let _ = fs::remove_dir_all(&bundle);
    Ok(layer)
}

/// Twelve hex digits for a step's container.
pub fn random_id() -> String {
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    h.update(
        COUNT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    hex::encode(h.finalize())[..12].to_string()
}

/// A path cleaned lexically (`.`, `..`, double slashes), absolute.
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The shell a metadata step's history line is written under (Docker
/// writes `#(nop)` steps as if the stage's SHELL ran them).
fn nop_shell(stage: &Stage) -> String {
    stage.shell().join(" ")
}

/// A JSON array of strings as Go's `%q` prints a `[]string`:
/// `["/bin/sh" "-c"]`; anything else as `[]`.
fn go_quoted_list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| go_quote(i.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    format!("[{}]", items.join(" "))
}

/// A string as Go's strconv.Quote writes it (JSON's escapes, which agree
/// for what a Dockerfile holds).
fn go_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A health check as Docker's history prints its struct with `%q`:
/// `&{["CMD-SHELL" "cmd"] "30s" "3s" "0s" '\x02'}`.
fn go_healthcheck(hc: &Value) -> String {
    let d = |k: &str| go_quote(&go_duration(hc[k].as_i64().unwrap_or(0)));
    let retries = hc["Retries"].as_i64().unwrap_or(0);
    let rune = match u8::try_from(retries) {
        Ok(b) if (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\' => {
            format!("'{}'", b as char)
        }
        Ok(b'\'') => "'\\''".to_string(),
        Ok(b'\\') => "'\\\\'".to_string(),
        Ok(b) if b < 0x80 => format!("'\\x{b:02x}'"),
        _ => format!("'\\u{retries:04x}'"),
    };
    format!(
        "&{{{} {} {} {} {rune}}}",
        go_quoted_list(&hc["Test"]),
        d("Interval"),
        d("Timeout"),
        d("StartPeriod")
    )
}

/// Nanoseconds as Go's time.Duration prints them: 0s, 500ms, 1.5s, 1m30s,
/// 1h0m0s.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let trim = |v: u64, unit: u64| -> String {
        let whole = v / unit;
        let frac = v % unit;
        if frac == 0 {
            whole.to_string()
        } else {
            let digits = unit.to_string().len() - 1;
            let f = format!("{frac:0digits$}");
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", trim(u, 1_000))
    } else if u < 1_000_000_000 {
        format!("{}ms", trim(u, 1_000_000))
    } else {
        let secs_ns = u % 60_000_000_000;
        let mins = u / 60_000_000_000;
        let s = format!("{}s", trim(secs_ns, 1_000_000_000));
        if mins == 0 {
            s
        } else if mins < 60 {
            format!("{mins}m{s}")
        } else {
            format!("{}h{}m{s}", mins / 60, mins % 60)
        }
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

/// This host's architecture as OCI names it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Leaves the Dockerfile and .dockerignore out of what COPY sees when
/// .dockerignore excludes them: the client sends them anyway (the build
/// needs them), and Docker's daemon drops them likewise. True if it
/// dropped one.
fn drop_ignored_build_files(ctx_dir: &Path, dockerfile: &str) -> Result<bool, BuildError> {
    let text = context::read_control_file(ctx_dir, ".dockerignore")
        .map_err(|e| BuildError::Context(format!(".dockerignore: {e}")))?;
    let Some(text) = text else {
        return Ok(false);
    };
    let patterns = berth_proto::dockerignore::Patterns::parse(&text)
        .map_err(|e| BuildError::Context(format!(".dockerignore: {e}")))?;
    let mut dropped = false;
    for name in [dockerfile, ".dockerignore"] {
        let rel = clean(name);
        let rel = rel.trim_start_matches('/');
        if patterns.excluded(rel) {
            context::remove_in(ctx_dir, rel).map_err(BuildError::Context)?;
            dropped = true;
        }
    }
    Ok(dropped)
}

/// HEALTHCHECK [--interval=D --timeout=D --start-period=D --retries=N] CMD
/// ... | NONE, as Docker records it.
fn healthcheck(ins: &Instruction, shell: &[String]) -> Result<Value, String> {
    let rest = ins.rest.trim();
    if rest.eq_ignore_ascii_case("NONE") {
        return Ok(json!({"Test": ["NONE"]}));
    }
    let (word, cmd) = rest
        .split_once(char::is_whitespace)
        .ok_or("HEALTHCHECK takes NONE or CMD and a command")?;
    if !word.eq_ignore_ascii_case("CMD") {
        return Err(format!("Unknown type {word:?} in HEALTHCHECK (try CMD)"));
    }
    let test = match serde_json::from_str::<Vec<String>>(cmd.trim()) {
        Ok(v) => std::iter::once("CMD".to_string())
            .chain(v)
            .collect::<Vec<_>>(),
        Err(_) => {
            let _ = shell;
            vec!["CMD-SHELL".to_string(), cmd.trim().to_string()]
        }
    };
    let mut hc = json!({"Test": test});
    for (name, value) in &ins.flags {
        let key = match name.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                hc["Retries"] = json!(value
                    .parse::<u64>()
                    .map_err(|_| format!("invalid --retries={value}"))?);
                continue;
            }
            other => return Err(format!("unknown flag: --{other}")),
        };
        hc[key] = json!(duration_ns(value).ok_or_else(|| format!("invalid --{name}={value}"))?);
    }
    Ok(hc)
}

/// A Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds.
fn duration_ns(s: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let mult = match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += v * mult;
        any = true;
    }
    (any && num.is_empty()).then_some(total as i64)
}

/// Mounts below `dir`, deepest first.
/// Removes what builds cut off by an agent's end left in `builds` (their
/// work dirs and the overlays mounted in them), when the agent starts.
pub fn clean_up(builds: &Path) {
    for m in mounts_under(builds) {
        let _ = snapshot::unmount(&m);
    }
    let _ = fs::remove_dir_all(builds);
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut out: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_print_as_go_does() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(30_000_000_000), "30s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        let hc = json!({"Test": ["CMD-SHELL", "cat x"], "Interval": 30_000_000_000i64, "Timeout": 3_000_000_000i64, "Retries": 2});
        assert_eq!(
            go_healthcheck(&hc),
            r#"&{["CMD-SHELL" "cat x"] "30s" "3s" "0s" '\x02'}"#
        );
    }

    #[test]
    fn durations_and_paths() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("5x"), None);
        assert_eq!(clean("/a/./b/../c//d"), "/a/c/d");
        assert_eq!(clean("/../x"), "/x");
    }

    #[test]
    fn a_target_ends_the_build_after_its_stage() {
        let i =
            dockerfile::parse("FROM scratch AS a\nENV A=1\nFROM scratch AS b\nENV B=1\n").unwrap();
        assert_eq!(until_target(&i, "a").unwrap().len(), 2);
        assert_eq!(until_target(&i, "B").unwrap().len(), 4);
        assert!(matches!(until_target(&i, "c"), Err(BuildError::Target(_))));
    }
}
