//! Image operations (import, load, save, tag, remove, inspect, export,
//! sizes, top), answered as ImageReply pieces through the outbox.

use super::*;

impl Supervisor {
    /// Carries out an image operation and answers it through the outbox:
    /// downloads as data pieces, then one last reply with the result as
    /// JSON or the error. Operations that change the images send the new
    /// inventory first, so the cluster knows of it when the answer comes.
    pub async fn image_op(
        self: Arc<Self>,
        request_id: u64,
        op: image_request::Op,
        upload: Result<Option<std::fs::File>, String>,
    ) {
        let me = self.clone();
        let changes_images = !matches!(
            op,
            image_request::Op::Save(_)
                | image_request::Op::Inspect(_)
                | image_request::Op::Export(_)
                | image_request::Op::RemoveContainer(_)
                | image_request::Op::Diff(_)
                | image_request::Op::Top(_)
                | image_request::Op::Sizes(_)
        );
        let result = match op {
            // Removal waits for the process to die: it runs here, not on a
            // blocking thread.
            image_request::Op::RemoveContainer(r) => {
                self.remove(&r.container_id).await.map(|()| None)
            }
            op => match upload {
                Err(why) => Err(why),
                Ok(data) => {
                    tokio::task::spawn_blocking(move || me.image_op_blocking(request_id, op, data))
                        .await
                        .unwrap_or_else(|e| Err(format!("the image task failed: {e}")))
                }
            },
        };
        if changes_images {
            self.report_images();
        }
        let (json, error) = match result {
            Ok(v) => (v.map(|v| v.to_string()).unwrap_or_default(), None),
            Err(e) => (String::new(), Some(e)),
        };
        self.send(Report::ImageReply(ImageReply {
            request_id,
            data: Vec::new(),
            last: true,
            error,
            json,
        }));
    }

    pub(super) fn image_op_blocking(
        &self,
        request_id: u64,
        op: image_request::Op,
        data: Option<std::fs::File>,
    ) -> Result<Option<serde_json::Value>, String> {
        let empty = |what: &str| format!("bad archive: {what} is empty");
        let err = |e: ImageError| e.to_string();
        let to_json = |v: &dyn erased::Json| v.json();
        match op {
            image_request::Op::Import(i) => {
                let s = import::import_rootfs(
                    &self.images,
                    &self.snapshots,
                    &i.reference,
                    std::io::BufReader::new(data.ok_or_else(|| empty("the rootfs tarball"))?),
                    now_ms(),
                )
                .map_err(err)?;
                Ok(Some(to_json(&vec![s])))
            }
            image_request::Op::Load(_) => {
                let loaded = load::load_archive(
                    &self.images,
                    &self.snapshots,
                    std::io::BufReader::new(data.ok_or_else(|| empty("the archive"))?),
                )
                .map_err(err)?;
                Ok(Some(to_json(&loaded)))
            }
            image_request::Op::Save(s) => {
                let mut w = ChunkWriter::new(request_id, self.outbox.clone());
                save::save_archive(&self.images, &s.references, &mut w).map_err(err)?;
                w.finish();
                Ok(None)
            }
            image_request::Op::Tag(t) => {
                self.images.tag(&t.source, &t.target).map_err(err)?;
                Ok(None)
            }
            image_request::Op::Remove(r) => {
                let keep: Vec<String> = self
                    .local_metas()
                    .into_iter()
                    .flat_map(|m| m.diff_ids)
                    .collect();
                let (untagged, deleted) = self
                    .images
                    .remove(&r.reference, &self.snapshots, &keep)
                    .map_err(err)?;
                Ok(Some(
                    serde_json::json!({"untagged": untagged, "deleted": deleted}),
                ))
            }
            image_request::Op::Inspect(i) => {
                Ok(Some(self.images.inspect(&i.reference).map_err(err)?))
            }
            image_request::Op::RemoveContainer(_) => {
                Err("container removal is not an image operation".into())
            }
            image_request::Op::Commit(c) => Ok(Some(self.commit(&c)?)),
            image_request::Op::Diff(d) => {
                let dir = self
                    .bundle_dir(&d.container_id)
                    .filter(|d| d.exists())
                    .ok_or_else(|| format!("No such container on this node: {}", d.container_id))?;
                let meta = read_meta(&dir).ok_or("the container has no metadata")?;
                let lowers = meta
                    .diff_ids
                    .iter()
                    .map(|d| self.snapshots.path(d))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let changes =
                    crate::image::commit::diff(&bundle::upper(&dir), &lowers, &mounts_of(&dir))
                        .map_err(err)?;
                Ok(Some(to_json(&changes)))
            }
            image_request::Op::Top(t) => {
                let dir = self
                    .bundle_dir(&t.container_id)
                    .filter(|d| d.exists())
                    .ok_or_else(|| format!("No such container on this node: {}", t.container_id))?;
                if !self.running(&dir) {
                    return Err(format!("container {} is not running", t.container_id));
                }
                let cg = Cgroup::new(
                    Layout::detect(Path::new(CGROUP_ROOT)),
                    &cgroup_of(&t.container_id),
                );
                Ok(Some(to_json(&top_rows(&cg.pids()))))
            }
            image_request::Op::Sizes(_) => {
                let sizes: std::collections::HashMap<String, u64> = self
                    .local_metas()
                    .into_iter()
                    .filter_map(|m| {
                        let dir = self.bundle_dir(&m.id)?;
                        Some((m.id, dir_size(&bundle::upper(&dir))))
                    })
                    .collect();
                Ok(Some(to_json(&sizes)))
            }
            image_request::Op::Build(b) => {
                let context = data.ok_or_else(|| empty("the build context"))?;
                self.build(request_id, b, context).map(Some)
            }
            image_request::Op::Export(e) => {
                let mut w = ChunkWriter::new(request_id, self.outbox.clone());
                self.export(&e.container_id, &mut w)?;
                w.finish();
                Ok(None)
            }
        }
    }

    /// A new upload, staged in the image store and held to its limits.
    pub fn upload(&self) -> crate::image::upload::Upload {
        crate::image::upload::Upload::open(
            &self.cfg.data_dir.join("images").join("tmp"),
            self.images.limits(),
        )
    }

    /// Makes an image of a container's changes (`commit`), freezing it
    /// meanwhile if it runs and `pause` asks; returns the image summary.
    pub(super) fn commit(&self, c: &agent::CommitOp) -> Result<serde_json::Value, String> {
        let dir = self
            .bundle_dir(&c.container_id)
            .filter(|d| d.exists())
            .ok_or_else(|| format!("No such container on this node: {}", c.container_id))?;
        let meta = read_meta(&dir).ok_or("the container has no metadata")?;
        let created_by = oci_spec::runtime::Spec::load(bundle::config(&dir))
            .ok()
            .and_then(|s| s.process().as_ref().and_then(|p| p.args().clone()))
            .unwrap_or_default()
            .join(" ");
        let lowers = meta
            .diff_ids
            .iter()
            .map(|d| self.snapshots.path(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let mounts = mounts_of(&dir);
        let frozen =
            c.pause && self.running(&dir) && self.host.freeze(&c.container_id, true).is_ok();
        let made = crate::image::commit::commit(
            &self.images,
            &self.snapshots,
            &crate::image::commit::CommitInput {
                upper: &bundle::upper(&dir),
                lowers: &lowers,
                mounts: &mounts,
                container_id: &c.container_id,
                parent_id: &meta.image_id,
                parent_diff_ids: &meta.diff_ids,
                created_by,
                author: &c.author,
                comment: &c.message,
                changes: &c.changes,
                reference: (!c.reference.is_empty()).then_some(c.reference.as_str()),
                now_ms: now_ms(),
            },
        );
        if frozen {
            let _ = self.host.freeze(&c.container_id, false);
        }
        let summary = made.map_err(|e| e.to_string())?;
        Ok(serde_json::to_value(&summary).unwrap_or_default())
    }

    /// Builds an image from a Dockerfile and the uploaded context (a tar),
    /// sending Docker's progress as it goes; returns the image summary.
    pub(super) fn build(
        &self,
        request_id: u64,
        op: agent::BuildOp,
        context: std::fs::File,
    ) -> Result<serde_json::Value, String> {
        let shim_exe = self
            .host
            .shim_exe()
            .ok_or("this agent has no shim to run build steps with")?;
        let builds = self.cfg.data_dir.join("builds");
        std::fs::create_dir_all(&builds)
            .and_then(|()| private_dir(&builds))
            .map_err(|e| format!("{}: {e}", builds.display()))?;
        let runner = crate::build::runner::ShimRunner { shim_exe };
        let builder = crate::build::Builder {
            store: &self.images,
            snapshots: &self.snapshots,
            // A name no other build has: the request id alone repeats
            // after a server restarts.
            work: builds.join(format!("{request_id}-{}", crate::build::random_id())),
            volumes: self.cfg.data_dir.join("volumes"),
            runner: &runner,
            kept: &self.kept_contexts,
        };
        let req = crate::build::BuildRequest {
            tags: op.tags,
            dockerfile: op.dockerfile,
            build_args: op.build_args,
            no_cache: op.no_cache,
            target: op.target,
            network: op.network,
            now_ms: now_ms(),
            context: crate::build::ContextPlan {
                key: Some(op.context_key).filter(|k| !k.is_empty()),
                base: Some(op.context_base).filter(|b| !b.is_empty()),
                removed: op.context_removed,
            },
        };
        // Progress goes out as it is written: a step's output is a client's
        // only sign of life during a long RUN.
        let mut w = ChunkWriter::new(request_id, self.outbox.clone());
        w.eager = true;
        let built = crate::build::build(&builder, &req, std::io::BufReader::new(context), &mut w);
        w.finish();
        let built = match built {
            Ok(b) => b,
            // Not a failure of the build: the client sends the whole
            // context again.
            Err(crate::build::BuildError::ContextBaseUnknown(_)) => {
                return Ok(serde_json::json!({"context_base_unknown": true}))
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut answer = serde_json::to_value(&built.image).unwrap_or_default();
        if let Some(token) = built.context_token {
            answer["context_token"] = token.into();
        }
        Ok(answer)
    }

    /// Writes a container's merged filesystem as a tar stream.
    pub(super) fn export(&self, id: &str, out: &mut dyn std::io::Write) -> Result<(), String> {
        let dir = self
            .bundle_dir(id)
            .filter(|d| d.exists())
            .ok_or_else(|| format!("No such container on this node: {id}"))?;
        let meta = read_meta(&dir).ok_or_else(|| format!("container {id} has no metadata"))?;
        let running = self.running(&dir);
        // A running container is frozen while it is read, so that it cannot
        // swap a file for a symlink under the walk; the walk reads a
        // read-only overlay of its own, never the container's mount.
        if running {
            self.host
                .freeze(id, true)
                .map_err(|e| format!("freezing {id} for the export: {e}"))?;
        }
        let staging = self.images.staging_dir().map_err(|e| e.to_string())?;
        let root = staging.path().join("rootfs");
        let mut lowers = vec![bundle::upper(&dir)];
        for d in meta.diff_ids.iter().rev() {
            lowers.push(self.snapshots.path(d).map_err(|e| e.to_string())?);
        }
        let mounted = snapshot::mount_readonly(&lowers, &root).map_err(|e| e.to_string());
        let result = mounted.and_then(|()| {
            (|| {
                let mut tar = tar::Builder::new(out);
                tar.follow_symlinks(false);
                tar.append_dir_all(".", &root)?;
                tar.finish()
            })()
            .map_err(|e| e.to_string())
        });
        let _ = snapshot::unmount(&root);
        if running {
            let _ = self.host.freeze(id, false);
        }
        result.map_err(|e| format!("exporting {id}: {e}"))
    }
}

/// One row per process: pid, parent pid, uid, CPU seconds, command line.
fn top_rows(pids: &[i32]) -> Vec<Vec<String>> {
    // SAFETY: sysconf(_SC_CLK_TCK) only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut rows = Vec::new();
    for pid in pids {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command in stat is in parentheses and may hold spaces.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        let ppid = f.get(1).copied().unwrap_or("0").to_string();
        let cpu: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let cmd = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        rows.push(vec![
            pid.to_string(),
            ppid,
            uid,
            format!("{:.2}", cpu / ticks),
            cmd,
        ]);
    }
    rows
}

/// Serializes any serde value to JSON (a helper for the image operations).
mod erased {
    pub trait Json {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

/// A writer that sends what is written to the cluster as ImageReply
/// pieces of about 1 MiB.
struct ChunkWriter {
    request_id: u64,
    outbox: mpsc::UnboundedSender<Report>,
    buf: Vec<u8>,
    /// Sends at every flush, not only by the megabyte.
    eager: bool,
}

impl ChunkWriter {
    const PIECE: usize = 1 << 20;

    fn new(request_id: u64, outbox: mpsc::UnboundedSender<Report>) -> Self {
        Self {
            request_id,
            outbox,
            buf: Vec::with_capacity(Self::PIECE),
            eager: false,
        }
    }

    fn send_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
        self.outbox
            .send(Report::ImageReply(ImageReply {
                request_id: self.request_id,
                data,
                ..Default::default()
            }))
            .map_err(|_| std::io::Error::other("the agent is shutting down"))
    }

    fn finish(mut self) {
        let _ = self.send_buf();
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::PIECE {
            self.send_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.eager {
            self.send_buf()?;
        }
        Ok(())
    }
}

/// The mount destinations of a bundle's config.json.
fn mounts_of(dir: &Path) -> Vec<PathBuf> {
    oci_spec::runtime::Spec::load(bundle::config(dir))
        .ok()
        .and_then(|s| s.mounts().clone())
        .unwrap_or_default()
        .iter()
        .map(|m| m.destination().clone())
        .collect()
}
