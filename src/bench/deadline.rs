//! Running work with a deadline, so a hung FUSE daemon fails one run instead of the benchmark.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::error::{BenchError, Result};

/// Runs `work` on its own thread and waits at most `limit` for it. On a timeout the thread is
/// left behind: the caller then aborts the mount, which makes the stuck syscalls return.
pub fn with_deadline<T: Send + 'static>(
    what: &str,
    limit: Duration,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("bench-work".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| BenchError::Command {
            program: "thread".into(),
            message: e.to_string(),
        })?;
    rx.recv_timeout(limit).map_err(|_| BenchError::Timeout {
        what: what.to_string(),
        seconds: limit.as_secs(),
    })?
}

/// Runs a program to completion within `limit`, killing it when the limit passes; fails unless
/// it exits with status 0. Its stdout is returned, stderr goes into the error.
pub fn run_command(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Command {
            program: program.clone(),
            message: e.to_string(),
        })?;
    let pid = child.id();
    // A waiting thread returns the moment the child exits, so timings carry no polling delay.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(limit) {
        Ok(output) => output.map_err(|e| BenchError::Command {
            program: program.clone(),
            message: e.to_string(),
        })?,
        Err(_) => {
            kill(pid);
            return Err(BenchError::Timeout {
                what: format!("{program} (pid {pid})"),
                seconds: limit.as_secs(),
            });
        }
    };
    if !output.status.success() {
        return Err(BenchError::Command {
            program,
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output)
}

/// Sends SIGKILL to a process this benchmark started.
pub fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}
