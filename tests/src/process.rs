//! The `weir` binary, run as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

/// The `weir` binary of this build: target/<profile>/weir, beside the
/// directory of the test binaries (target/<profile>/deps).
///
/// Cargo gives integration tests the path of their own package's binaries
/// only (`CARGO_BIN_EXE_<name>`), and `cargo test -p weir-tests` does not
/// build weir's. So on first use, under cargo (which sets `CARGO`), this runs
/// `cargo build -p weir --bin weir` in the same profile: a no-op when the
/// binary is up to date, and never a stale binary otherwise.
pub fn weir_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binaries sit in target/<profile>/deps");
        let bin = profile_dir.join("weir");
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = profile_dir
                .file_name()
                .and_then(|p| p.to_str())
                .map(|p| if p == "debug" { "dev" } else { p })
                .expect("a profile directory")
                .to_owned();
            let out = Command::new(cargo)
                .args(["build", "--quiet", "-p", "weir", "--bin", "weir"])
                .args(["--profile", profile.as_str()])
                .env("CARGO_TARGET_DIR", profile_dir.parent().expect("target/"))
                .current_dir(crate::workspace_root())
                .output()
                .expect("cargo runs");
            assert!(
                out.status.success(),
                "building the weir binary failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            bin.exists(),
            "the weir binary is not built at {} (cargo build --release -p weir)",
            bin.display()
        );
        bin
    })
    .clone()
}

/// `weir` with `WEIR_LOG` (its log filter) set to `log`, and without the
/// caller's `KAFKA_BROKERS`: a test sets it where it means to.
pub fn weir(log: &str) -> Command {
    let mut c = Command::new(weir_binary());
    c.env("WEIR_LOG", log).env_remove("KAFKA_BROKERS");
    c
}

/// Runs `weir ARGS` to its end with `env` added and `WEIR_LOG` set to `log`.
pub fn run_weir(args: &[&str], env: &[(&str, &str)], log: &str) -> Output {
    let mut c = weir(log);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("weir runs")
}

/// Starts `weir run SQL` as the crash tests do: `KAFKA_BROKERS` and `OUT` in
/// its environment,
/// `--group-id OUT`, the given state directory, no printing, info logs
/// appended to `log`, and `WEIR_FAULT` set to `fault` (or unset).
pub fn spawn_weir_run(
    sql: &Path,
    brokers: &str,
    out: &str,
    state: &Path,
    fault: Option<&str>,
    log: &Path,
) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the log file opens");
    let mut cmd = weir("info");
    cmd.args(["run", "--print", "false", "--group-id", out, "--state-dir"])
        .arg(state)
        .arg(sql)
        .env("KAFKA_BROKERS", brokers)
        .env("OUT", out)
        .env_remove("WEIR_FAULT")
        .stdout(Stdio::null())
        .stderr(log_file);
    if let Some(f) = fault {
        cmd.env("WEIR_FAULT", f);
    }
    cmd.spawn().expect("weir starts")
}
