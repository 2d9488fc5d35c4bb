//! Attachments and execs: relay a container's shim socket (or an exec
//! shim's) between the cluster and the container.

use super::*;

impl Supervisor {
    /// Relays one attachment between the cluster and the container's shim:
    /// waits for the shim's socket (a container started with it appears a
    /// moment later), then copies output out and input in until either side
    /// ends.
    pub async fn attach(
        self: Arc<Self>,
        open: agent::AttachOpen,
        mut input: mpsc::UnboundedReceiver<agent::AttachData>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream_id = open.stream_id;
        let out = |data: Vec<u8>, close: bool| {
            self.send(Report::AttachOutput(AttachOutput {
                stream_id,
                data,
                close,
                exit_code: None,
            }))
        };
        let Some(dir) = self.bundle_dir(&open.container_id) else {
            return out(Vec::new(), true);
        };
        // An exec gets a shim of its own, and a socket of its own.
        // Unique on this node even across server restarts (which reuse
        // stream ids).
        let exec_id = open
            .exec
            .as_ref()
            .map(|_| format!("{stream_id}-{}", now_ms()));
        if let (Some(spec), Some(id)) = (&open.exec, &exec_id) {
            if !self.running(&dir) {
                // Docker's exit status for an exec into a stopped container.
                return self.send(Report::AttachOutput(AttachOutput {
                    stream_id,
                    data: b"the container is not running\r\n".to_vec(),
                    close: true,
                    exit_code: Some(1),
                }));
            }
            let cfg = crate::runtime::exec::ExecConfig {
                cmd: spec.cmd.clone(),
                env: spec.env.clone(),
                user: spec.user.clone(),
                workdir: spec.workdir.clone(),
                tty: spec.tty,
                interactive: spec.interactive,
            };
            let path = crate::runtime::exec::config_path(&dir, id);
            if fs::write(&path, serde_json::to_vec(&cfg).unwrap_or_default()).is_err()
                || self.host.start_exec_shim(&dir, id).is_err()
            {
                return out(b"cannot start the exec\r\n".to_vec(), true);
            }
        }
        let sock_name = match &exec_id {
            Some(id) => crate::runtime::exec::socket_name(id),
            None => "attach.sock".to_string(),
        };
        let sock = dir.join(&sock_name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let conn = loop {
            // The socket's own path may be too long for a socket address.
            let attempt = match crate::runtime::attach::short_socket_path(&dir) {
                Ok((_dir, short)) => {
                    tokio::net::UnixStream::connect(short.with_file_name(&sock_name)).await
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(c) => break c,
                Err(_)
                    if tokio::time::Instant::now() < deadline && !bundle::exit(&dir).exists() =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::warn!(id = %open.container_id, "cannot attach to {}: {e}", sock.display());
                    return out(
                        b"the container takes no attachment (start it with -i or -t)\r\n".to_vec(),
                        true,
                    );
                }
            }
        };
        let (mut rd, mut wr) = conn.into_split();
        if open.rows > 0 && open.cols > 0 {
            let _ = wr
                .write_all(&crate::runtime::attach::resize_frame(
                    open.rows as u16,
                    open.cols as u16,
                ))
                .await;
        }
        let writer = tokio::spawn(async move {
            while let Some(d) = input.recv().await {
                if d.detach {
                    break;
                }
                let frame = if d.rows > 0 && d.cols > 0 {
                    crate::runtime::attach::resize_frame(d.rows as u16, d.cols as u16)
                } else if d.close {
                    crate::runtime::attach::frame(crate::runtime::attach::CLOSE_STDIN, &[])
                } else {
                    crate::runtime::attach::frame(crate::runtime::attach::STDIN, &d.data)
                };
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out(buf[..n].to_vec(), false),
                },
                _ = async { while !writer.is_finished() { tokio::time::sleep(Duration::from_millis(50)).await } } => break,
            }
        }
        writer.abort();
        let exit_code = match &exec_id {
            Some(id) => {
                // The exec shim writes its code as it ends.
                let path = crate::runtime::exec::exit_path(&dir, id);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !path.exists() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let code = fs::read_to_string(&path)
                    .ok()
                    .and_then(|c| c.trim().parse().ok());
                let _ = fs::remove_file(&path);
                code
            }
            None => None,
        };
        self.send(Report::AttachOutput(AttachOutput {
            stream_id,
            data: Vec::new(),
            close: true,
            exit_code,
        }));
    }
}
