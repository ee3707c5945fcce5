//! The real `ingest` and `worker` executables, for tests that must see what
//! an operator sees: exit status, stderr, `--help`, log lines of a process.
//!
//! Cargo builds only this package's binaries for its tests, so the first
//! call builds the two others (a no-op when they are fresh) into the same
//! target directory and profile as the running test. `DLR_BIN_DIR` points
//! the tests at other builds instead (an older commit's, a release).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the built `name` binary (`ingest` or `worker`), building it first.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build).as_ref().unwrap_or_else(|e| panic!("building the binaries: {e}"));
    dir.join(name)
}

fn build() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("DLR_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<test>-<hash>
    let dir = exe.parent().and_then(|deps| deps.parent()).ok_or("test executable has no target dir")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet", "-p", "dlr-ingest", "-p", "dlr-worker", "--bins"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    if let Some(target) = dir.parent() {
        command.arg("--target-dir").arg(target);
    }
    let status = command.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed: {status}"));
    }
    Ok(dir.to_path_buf())
}

/// What a finished run printed, and how long it took.
pub struct Run {
    /// The process's output.
    pub output: Output,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Run {
    /// stdout and stderr together, lossily decoded.
    pub fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

/// Runs `name` with `args` and exactly the environment `env` (nothing
/// inherited but PATH, so the machine's settings cannot leak in) and
/// waits for it to exit.
pub fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let program = binary(name);
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    Run { output, elapsed: started.elapsed() }
}
