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

/// Runs `name` with exactly `env` (plus PATH) until its output contains
/// `wanted` or `within` passes, then stops it with SIGTERM (SIGKILL if it
/// does not exit) and returns everything it printed.
pub async fn run_until(name: &str, env: &[(&str, &str)], wanted: &str, within: Duration) -> String {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let running = Running::start(name, &env);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !running.output().contains(wanted) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop(Duration::from_secs(10)).await.1
}

/// A binary running in the background with its output collected, for
/// tests that talk to it while it runs (see [`Running::start`]).
pub struct Running {
    child: tokio::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts `name` with exactly `env` (plus PATH).
    pub fn start(name: &str, env: &[(&str, String)]) -> Self {
        use tokio::io::AsyncReadExt;
        let mut child = tokio::process::Command::new(binary(name))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            panic!("{name}: output not captured");
        };
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = output.clone();
        let reader = tokio::spawn(async move {
            let (mut out, mut err) = ([0u8; 4096], [0u8; 4096]);
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let read = tokio::select! {
                    n = stdout.read(&mut out), if out_open => n.map(|n| (n, true)),
                    n = stderr.read(&mut err), if err_open => n.map(|n| (n, false)),
                };
                match read {
                    Ok((0, true)) | Err(_) => out_open = false,
                    Ok((0, false)) => err_open = false,
                    Ok((n, from_stdout)) => {
                        let bytes = if from_stdout { &out[..n] } else { &err[..n] };
                        if let Ok(mut text) = sink.lock() {
                            text.push_str(&String::from_utf8_lossy(bytes));
                        }
                    }
                }
            }
        });
        Self { child, output, reader }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after `within`; returns whether it exited in
    /// time and everything it printed.
    pub async fn stop(mut self, within: Duration) -> (bool, String) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        let exited = tokio::time::timeout(within, self.child.wait()).await.is_ok();
        if !exited {
            let _ = self.child.kill().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        (exited, self.output())
    }
}
