//! Spawning `hybusctl worker` processes (for `bench` and `demo`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running worker process. Killed and reaped on drop.
#[derive(Debug)]
pub struct Worker {
    child: Child,
}

impl Worker {
    /// Starts `hybusctl --socket SOCKET worker ROLE NAME [EXTRA] --idle IDLE` and waits for `ready`.
    pub fn start(socket: &Path, role: &str, name: &str, extra: Option<&str>, idle: &str) -> anyhow::Result<Worker> {
        // /proc/self/exe stays valid even if the binary is replaced on disk
        // meanwhile (a rebuild during a long bench).
        let exe = match std::path::Path::new("/proc/self/exe") {
            p if p.exists() => p.to_path_buf(),
            _ => std::env::current_exe().context("cannot find my own executable")?,
        };
        let mut cmd = Command::new(exe);
        cmd.arg("--socket").arg(socket).args(["worker", role, name]);
        if let Some(e) = extra {
            cmd.arg(e);
        }
        cmd.args(["--idle", idle]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("cannot start the {role} worker"))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep draining so the worker never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(l)) if l.starts_with("ready") => Ok(Worker { child }),
            Ok(Some(l)) => {
                let _ = child.kill();
                anyhow::bail!("the {role} worker failed: {l}")
            }
            _ => {
                let _ = child.kill();
                anyhow::bail!("the {role} worker did not start")
            }
        }
    }
}

impl Worker {
    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
