//! RUN's containers, run by the engine's own shim: the same process, the
//! same namespaces, cgroup, seccomp filter and device policy as any
//! container of this agent. Its output is read back from the bundle's log
//! as it grows and written to the build's progress.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::Runner;
use crate::logs::reader::LogReader;
use crate::runtime::frame::Frame;

/// Runs a bundle with `SHIM_EXE shim --bundle DIR`, as the supervisor does.
pub struct ShimRunner {
    pub shim_exe: PathBuf,
}

/// How often the log is read while the step runs.
const POLL: Duration = Duration::from_millis(50);

impl Runner for ShimRunner {
    fn run(&self, bundle: &Path, out: &mut dyn Write) -> Result<i32, String> {
        let mut child = crate::runtime::shim::command(&self.shim_exe, bundle)
            .and_then(|mut c| c.spawn())
            .map_err(|e| format!("cannot start the shim {}: {e}", self.shim_exe.display()))?;
        let frames = child.stdout.take().ok_or("the shim has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut exit = None;
            for line in BufReader::new(frames).split(b'\n') {
                let Ok(line) = line else { break };
                if let Ok(Frame::Exit { code, error, .. }) = serde_json::from_slice::<Frame>(&line)
                {
                    exit = Some((code, error));
                }
            }
            let _ = tx.send(exit);
        });
        let mut log = LogReader::open(bundle, 1);
        let mut copy_out = |log: &mut LogReader| -> Result<(), String> {
            loop {
                let lines = log
                    .read(1000, 1 << 20)
                    .map_err(|e| format!("reading the step's output: {e}"))?;
                if lines.is_empty() {
                    return Ok(());
                }
                for l in lines {
                    let _ = out.write_all(&l.line);
                }
                let _ = out.flush();
            }
        };
        let exit = loop {
            copy_out(&mut log)?;
            match rx.recv_timeout(POLL) {
                Ok(exit) => break exit,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        let _ = child.wait();
        // The shim writes every line before its exit frame.
        copy_out(&mut log)?;
        match exit {
            Some((_, Some(error))) => Err(error),
            Some((code, None)) => Ok(code),
            None => Err(format!(
                "the shim ended without telling how the step ended (see {})",
                bundle.join("shim.log").display()
            )),
        }
    }
}
