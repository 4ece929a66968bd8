//! Child processes: waiting with a deadline, signals. Standard library only,
//! so job/tests/cli.rs includes this file too (`#[path]`), without depending
//! on the weir-tests crate.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Waits for `child` to exit, up to `timeout`; `None` if it is still running
/// then (it is left running: the caller kills it or not).
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends signal `sig` (a name: "INT", "STOP", "CONT", ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map_err(|e| format!("running kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -{sig} {pid} failed: {status}"));
    }
    Ok(())
}
