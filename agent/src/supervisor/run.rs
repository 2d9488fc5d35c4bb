//! Run and create: an assignment becomes a bundle (image resolved, overlay
//! mounted, config.json written) and a shim, whose frames are relayed as
//! transitions and log chunks; the restart policy runs it again.

use super::*;

impl Supervisor {
    /// Creates the container if this node does not hold it, and with
    /// `start` starts it (again, if it has exited).
    pub(super) async fn run(self: Arc<Self>, a: &Assignment, spec: &RunSpec, start: bool) {
        let Some(dir) = self.bundle_dir(&a.container) else {
            tracing::warn!(id = %a.container, "refusing an assignment with a malformed id");
            return;
        };
        // A copy of an older generation is not this placement: the cluster
        // placed the container here afresh, and the old copy goes first.
        if read_meta(&dir).is_some_and(|m| m.generation < a.generation) {
            tracing::info!(id = %a.container, generation = a.generation, "replacing an older copy");
            if let Err(e) = self.remove(&a.container).await {
                tracing::warn!(id = %a.container, "cannot replace the older copy: {e}");
                return;
            }
        }
        // Another task may hold the container: a relay (then it runs, and
        // there is nothing to do), or a create that is finishing (then this
        // start waits for it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.live.lock().await.insert(a.container.clone()) {
                break;
            }
            if self.running(&dir) || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.clone().run_inner(a, spec, &dir, start).await;
        self.live.lock().await.remove(&a.container);
    }

    pub(super) async fn run_inner(
        self: Arc<Self>,
        a: &Assignment,
        spec: &RunSpec,
        dir: &Path,
        start: bool,
    ) {
        let id = &a.container;
        let fail = |e: String| {
            tracing::warn!(%id, "cannot start the container: {e}");
            self.host.unmount_rootfs(dir);
            self.exited(id, a.generation, 125, Some(e), false);
        };
        if !dir.exists() {
            let me = self.clone();
            let (a2, s2, d2) = (a.clone(), spec.clone(), dir.to_path_buf());
            let prepared = tokio::task::spawn_blocking(move || me.prepare(&a2, &s2, &d2))
                .await
                .unwrap_or_else(|e| {
                    Err(SupervisorError::Io {
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            match prepared {
                Ok(image_id) => {
                    self.send(Report::Transition(Transition {
                        image_id: Some(image_id),
                        ..Transition::now(id, a.generation, ContainerState::Created)
                    }));
                    self.touch();
                }
                Err(e) => return fail(e.to_string()),
            }
        } else if self.running(dir) {
            return;
        } else if bundle::exit(dir).exists() {
            if !start {
                return;
            }
            // A restart: the rootfs went with the last run.
            if let Err(e) = self.remount(dir) {
                return fail(e);
            }
            let _ = fs::remove_file(bundle::exit(dir));
            let _ = fs::remove_file(bundle::pid(dir));
        }
        if !start {
            return;
        }
        let _ = fs::remove_file(dir.join(STOPPED_MARK));
        let _ = fs::remove_file(dir.join(crate::runtime::lease::EXPIRED_MARK));
        if spec.wait_for_attach {
            let _ = fs::write(dir.join(crate::runtime::shim::WAIT_ATTACH_MARK), "");
        }
        self.ship(id, a.generation, dir);
        let mut restarts = 0u32;
        loop {
            let began = std::time::Instant::now();
            let code = match self.clone().start_shim(a, dir).await {
                Ok(code) => code,
                Err(e) => return fail(e),
            };
            // The restart policy, unless a user stopped it or the lease
            // did (the cluster may run it elsewhere now).
            let policy = read_meta(dir).map(|m| m.restart).unwrap_or_default();
            if dir.join(STOPPED_MARK).exists()
                || dir.join(crate::runtime::lease::EXPIRED_MARK).exists()
                || !should_restart(&policy, code, restarts)
            {
                return;
            }
            // Docker's backoff: 100 ms doubling to a minute; a run of 10 s
            // or more starts it over.
            if began.elapsed() >= Duration::from_secs(10) {
                restarts = 0;
            }
            let delay = Duration::from_millis(100 * (1u64 << restarts.min(10)))
                .min(Duration::from_secs(60));
            restarts += 1;
            tokio::time::sleep(delay).await;
            if dir.join(STOPPED_MARK).exists() || !dir.exists() {
                return;
            }
            tracing::info!(%id, restarts, "restarting by policy {policy}");
            if let Err(e) = self.remount(dir) {
                return fail(e);
            }
            let _ = fs::remove_file(bundle::exit(dir));
            let _ = fs::remove_file(bundle::pid(dir));
        }
    }

    /// Mounts an existing container's rootfs again from its recorded layers.
    pub(super) fn remount(&self, dir: &Path) -> Result<(), String> {
        let meta = read_meta(dir).ok_or("the container has no metadata")?;
        let lowers = meta
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.snapshots.path(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        self.host.unmount_rootfs(dir);
        self.host
            .mount_rootfs(&lowers, dir)
            .map_err(|e| e.to_string())
    }

    /// Resolves the image, mounts the rootfs and writes config.json.
    pub(super) fn prepare(
        &self,
        a: &Assignment,
        spec: &RunSpec,
        dir: &Path,
    ) -> Result<String, SupervisorError> {
        let image = self.images.resolve(&spec.image)?;
        let lowers = image
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.snapshots.path(d))
            .collect::<Result<Vec<_>, _>>()?;
        for l in &lowers {
            if !l.exists() {
                return Err(SupervisorError::Io {
                    path: l.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "layer snapshot missing",
                    ),
                });
            }
        }
        fs::create_dir_all(dir)
            .and_then(|_| private_dir(dir))
            .map_err(|source| SupervisorError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        let result = self.prepare_bundle(a, spec, &image, &lowers, dir);
        if result.is_err() {
            // Nothing half-made stays: a later start creates it afresh.
            self.host.unmount_rootfs(dir);
            let _ = fs::remove_dir_all(dir);
        }
        result.map(|()| image.id)
    }

    pub(super) fn prepare_bundle(
        &self,
        a: &Assignment,
        spec: &RunSpec,
        image: &crate::image::ResolvedImage,
        lowers: &[PathBuf],
        dir: &Path,
    ) -> Result<(), SupervisorError> {
        let meta = Meta {
            id: a.container.clone(),
            name: a.name.clone(),
            generation: a.generation,
            image_id: image.id.clone(),
            diff_ids: image.diff_ids.clone(),
            stop_signal: image
                .config
                .config()
                .as_ref()
                .and_then(|c| c.stop_signal().clone())
                .and_then(|s| parse_signal(&s)),
            restart: spec.restart.clone(),
        };
        if spec.log_first_seq > 1 {
            fs::write(bundle::log_start(dir), spec.log_first_seq.to_string()).map_err(
                |source| SupervisorError::Io {
                    path: bundle::log_start(dir),
                    source,
                },
            )?;
        }
        fs::write(bundle::log_rotation(dir), self.cfg.log_rotation.to_file()).map_err(
            |source| SupervisorError::Io {
                path: bundle::log_rotation(dir),
                source,
            },
        )?;
        bundle::write_private(
            &bundle::meta(dir),
            &serde_json::to_vec(&meta).unwrap_or_default(),
        )
        .map_err(|source| SupervisorError::Io {
            path: bundle::meta(dir),
            source,
        })?;
        self.host.mount_rootfs(lowers, dir)?;
        let cfg = container_config(
            &a.container,
            spec,
            &image.config,
            &ConfigPaths {
                rootfs: bundle::rootfs(dir),
                volumes: self.cfg.data_dir.join("volumes"),
                lease: spec.movable.then(|| self.lease.path().to_path_buf()),
            },
        )?;
        spec::save(&spec::build(&cfg)?, dir)?;
        Ok(())
    }

    /// Starts the shim and relays its frames until the container ends.
    pub(super) async fn start_shim(
        self: Arc<Self>,
        a: &Assignment,
        dir: &Path,
    ) -> Result<i32, String> {
        let shim = self.host.start_shim(dir)?;
        let mut reader = shim.frames;
        let mut exit: Option<(i32, Option<String>, bool)> = None;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            match serde_json::from_str::<Frame>(line.trim_end()) {
                Ok(Frame::Start { .. }) => {
                    self.transition(&a.container, a.generation, ContainerState::Running);
                    self.touch();
                }
                // Log lines are shipped from the log file (logs/shipper.rs).
                Ok(Frame::Log { .. }) => {}
                Ok(Frame::Exit {
                    code,
                    error,
                    oom_killed,
                }) => {
                    // The exit file is written: a follower has every line.
                    // The shim has removed the cgroup and writes nothing
                    // more: the exit is reported now, not after the shim
                    // process has ended and been reaped (about 1 ms).
                    exit = Some((code, error, oom_killed));
                    self.touch();
                    break;
                }
                Err(e) => tracing::warn!(id = %a.container, "unreadable shim frame: {e}"),
            }
        }
        self.host.unmount_rootfs(dir);
        let (code, error, oom_killed) = exit.unwrap_or_else(|| {
            (
                fs::read_to_string(bundle::exit(dir))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(255),
                Some("the shim ended without reporting an exit".to_string()),
                dir.join("oom").exists(),
            )
        });
        // The shipper sends the last lines, then ends with the container.
        self.ship(&a.container, a.generation, dir);
        self.exited(&a.container, a.generation, code, error, oom_killed);
        // Reaped before a restart may start another shim.
        shim.ended.await;
        Ok(code)
    }
}
