//! The broker faults, through `rabbitmqctl`, and the guard that undoes
//! them: the node is started again, the watermark and the disk limit are
//! set back, on success, error, Ctrl-C, or (as a last resort) in `Drop`.

use super::*;
use std::process::Stdio;
use std::sync::Mutex;

#[derive(Debug, Default, Clone, Copy)]
struct Dirty {
    stopped: bool,
    memory: bool,
    disk: bool,
}

pub struct Rabbit {
    /// Not root: go through `sudo -n`, as deploy/services.sh does.
    sudo: bool,
    /// `set_vm_memory_high_watermark` arguments that restore the setting found at start.
    memory_restore: Vec<String>,
    /// `set_disk_free_limit` argument that restores the limit found at start.
    disk_restore: String,
    dirty: Mutex<Dirty>,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn broker_port_open() -> bool {
    std::net::TcpStream::connect_timeout(&dlr_tests::proxy::broker_addr(), Duration::from_millis(500)).is_ok()
}

/// Whether process `pid` is still running. A zombie (state `Z`: exited,
/// not yet reaped) is not: in a container without an init process nobody
/// reaps the stopped broker's VM, and its /proc entry stays until the
/// container ends. Scripts that ask the same question read the same field.
fn process_running(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Unreadable but present (should not happen): not known to be gone.
        Ok(stat) => stat_state(&stat).is_none_or(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

/// The state letter of a /proc/<pid>/stat line (`pid (comm) state ...`).
/// The command name may hold spaces and parentheses, so the state is the
/// first field after the *last* `)`.
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

impl Rabbit {
    /// Reads the current limits (to restore them later). A watermark or
    /// limit left behind by a crashed run is not taken for the original:
    /// the Debian defaults (0.4, 50 MB) are restored instead, now.
    /// A guard with nothing to undo, for runs that leave the machine's
    /// broker alone (the cluster scenarios).
    pub fn untouched() -> Self {
        Self {
            sudo: !is_root(),
            memory_restore: vec!["0.4".to_owned()],
            disk_restore: "50MB".to_owned(),
            dirty: Mutex::new(Dirty::default()),
        }
    }

    pub async fn new() -> Result<Self> {
        let mut rabbit = Self {
            sudo: !is_root(),
            memory_restore: vec!["0.4".to_owned()],
            disk_restore: "50MB".to_owned(),
            dirty: Mutex::new(Dirty::default()),
        };
        let status = rabbit
            .ctl(&["status", "--formatter", "json"], Duration::from_secs(60))
            .await
            .context("RabbitMQ must be running on this machine, reachable by rabbitmqctl")?;
        let status: serde_json::Value =
            serde_json::from_str(&status).context("reading rabbitmqctl status")?;
        let setting = &status["vm_memory_high_watermark_setting"];
        if let Some(relative) = setting["relative"].as_f64()
            && relative >= 0.05
        {
            rabbit.memory_restore = vec![relative.to_string()];
        } else if let Some(absolute) = setting["absolute"].as_u64()
            && absolute >= 64 << 20
        {
            rabbit.memory_restore = vec!["absolute".to_owned(), absolute.to_string()];
        }
        if let Some(limit) = status["disk_free_limit"].as_u64()
            && limit < 100_000_000_000
        {
            rabbit.disk_restore = limit.to_string();
        }
        if status["alarms"].as_array().is_some_and(|a| !a.is_empty()) {
            eprintln!("the broker has alarms set ({}); resetting its limits first", status["alarms"]);
            rabbit.mark(|d| {
                d.memory = true;
                d.disk = true;
            });
            rabbit.restore().await?;
        }
        Ok(rabbit)
    }

    fn mark(&self, change: impl FnOnce(&mut Dirty)) {
        if let Ok(mut dirty) = self.dirty.lock() {
            change(&mut dirty);
        }
    }

    fn dirty(&self) -> Dirty {
        self.dirty.lock().map(|d| *d).unwrap_or(Dirty { stopped: true, memory: true, disk: true })
    }

    fn command(&self, tool: &str, args: &[&str]) -> (String, Vec<String>) {
        let args = args.iter().map(|a| (*a).to_owned());
        if self.sudo {
            ("sudo".to_owned(), ["-n".to_owned(), tool.to_owned()].into_iter().chain(args).collect())
        } else {
            (tool.to_owned(), args.collect())
        }
    }

    async fn ctl(&self, args: &[&str], within: Duration) -> Result<String> {
        let (program, full) = self.command("rabbitmqctl", args);
        let output = tokio::time::timeout(
            within,
            tokio::process::Command::new(&program)
                .args(&full)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| anyhow!("rabbitmqctl {} did not finish within {within:?}", args.join(" ")))?
        .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Waits until the only broker connections are this run's (named
    /// `…harness-<run>…`). Other test runs would not survive the fault.
    pub async fn wait_exclusive(&self, clock: &Clock, run_id: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut told = false;
        loop {
            let listing = self
                .ctl(
                    &["list_connections", "name", "client_properties", "--formatter", "json", "-q"],
                    Duration::from_secs(30),
                )
                .await?;
            let connections: Vec<serde_json::Value> =
                serde_json::from_str(listing.trim()).unwrap_or_default();
            let foreign = connections.iter().filter(|c| !c.to_string().contains(run_id)).count();
            if foreign == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{foreign} other clients stayed connected to the broker for {within:?}; not disturbing them"
                );
            }
            if !told {
                clock.say(format!("waiting for {foreign} other broker clients to disconnect"));
                told = true;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// `rabbitmqctl stop`, then waits until the Erlang VM is gone and
    /// the port closed, so that the start does not meet the old node.
    pub async fn stop(&self) -> Result<()> {
        let status = self.ctl(&["status", "--formatter", "json"], Duration::from_secs(60)).await?;
        let pid = serde_json::from_str::<serde_json::Value>(&status)
            .ok()
            .and_then(|s| s["pid"].as_u64())
            .ok_or_else(|| anyhow!("rabbitmqctl status shows no pid"))?;
        self.mark(|d| d.stopped = true);
        self.ctl(&["stop"], Duration::from_secs(120)).await?;
        if !wait_until(Duration::from_secs(60), || !broker_port_open() && !process_running(pid)).await {
            bail!("RabbitMQ (pid {pid}) still running 60 s after rabbitmqctl stop");
        }
        Ok(())
    }

    /// `rabbitmq-server -detached`, then `rabbitmqctl await_startup`.
    pub async fn start(&self) -> Result<()> {
        let (program, args) = self.command("rabbitmq-server", &["-detached"]);
        // The daemon keeps whatever it inherits: give it nothing to hold.
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        )
        .await
        .map_err(|_| anyhow!("rabbitmq-server -detached did not return within 60 s"))?
        .context("running rabbitmq-server")?;
        if !status.success() {
            bail!("rabbitmq-server -detached failed ({status})");
        }
        // await_startup fails while the new node is not registered yet.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match self.ctl(&["await_startup"], Duration::from_secs(180)).await {
                Ok(_) if broker_port_open() => break,
                Ok(_) => {}
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                bail!("RabbitMQ started but does not listen on its port");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.mark(|d| d.stopped = false);
        Ok(())
    }

    pub async fn memory_alarm(&self, on: bool) -> Result<()> {
        if on {
            self.mark(|d| d.memory = true);
            self.ctl(&["set_vm_memory_high_watermark", "0.0000001"], Duration::from_secs(60)).await?;
        } else {
            let args: Vec<&str> = std::iter::once("set_vm_memory_high_watermark")
                .chain(self.memory_restore.iter().map(String::as_str))
                .collect();
            self.ctl(&args, Duration::from_secs(60)).await?;
            self.mark(|d| d.memory = false);
        }
        Ok(())
    }

    pub async fn disk_alarm(&self, on: bool) -> Result<()> {
        if on {
            self.mark(|d| d.disk = true);
            self.ctl(&["set_disk_free_limit", "1000GB"], Duration::from_secs(60)).await?;
        } else {
            self.ctl(&["set_disk_free_limit", &self.disk_restore], Duration::from_secs(60)).await?;
            self.mark(|d| d.disk = false);
        }
        Ok(())
    }

    /// Undoes whatever fault is still in place.
    pub async fn restore(&self) -> Result<()> {
        let dirty = self.dirty();
        let mut result = Ok(());
        if dirty.stopped {
            eprintln!("restoring the broker: starting RabbitMQ");
            if broker_port_open() {
                self.mark(|d| d.stopped = false);
            } else {
                result = self.start().await;
            }
        }
        if dirty.memory
            && let Err(error) = self.memory_alarm(false).await
        {
            result = Err(error);
        }
        if dirty.disk
            && let Err(error) = self.disk_alarm(false).await
        {
            result = Err(error);
        }
        result
    }

    /// The last resort when `restore` never ran (a panic): same steps, blocking.
    fn restore_blocking(&self) {
        let dirty = self.dirty();
        let run = |tool: &str, args: &[&str], quiet: bool| {
            let (program, args) = self.command(tool, args);
            let mut command = std::process::Command::new(program);
            command.args(args).stdin(Stdio::null());
            if quiet {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
            let Ok(mut child) = command.spawn() else { return };
            let deadline = Instant::now() + Duration::from_secs(180);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
        };
        if dirty.stopped && !broker_port_open() {
            eprintln!("restoring the broker: starting RabbitMQ");
            run("rabbitmq-server", &["-detached"], true);
            run("rabbitmqctl", &["await_startup"], false);
        }
        if dirty.memory {
            let args: Vec<&str> = std::iter::once("set_vm_memory_high_watermark")
                .chain(self.memory_restore.iter().map(String::as_str))
                .collect();
            run("rabbitmqctl", &args, false);
        }
        if dirty.disk {
            run("rabbitmqctl", &["set_disk_free_limit", &self.disk_restore], false);
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let dirty = self.dirty();
        if dirty.stopped || dirty.memory || dirty.disk {
            self.restore_blocking();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_reads_the_field_after_the_command_name() {
        assert_eq!(stat_state("1234 (beam.smp) S 1 1234 1234 0 -1"), Some('S'));
        assert_eq!(stat_state("1234 (beam.smp) Z 1 1234 1234 0 -1"), Some('Z'));
        // A command name with spaces and parentheses does not shift the fields.
        assert_eq!(stat_state("77 (a) R (b) Z 1 77 77 0 -1"), Some('Z'));
        assert_eq!(stat_state("77 (x y) D 1"), Some('D'));
        assert_eq!(stat_state("77 (truncated"), None);
        assert_eq!(stat_state("77 (nothing after)"), None);
    }

    /// Waits (5 s at most) until `pid`'s /proc/<pid>/stat shows state `state`.
    fn wait_for_state(pid: u32, state: char) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat_state(&stat) == Some(state) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_zombie_is_not_running() {
        // A child that exits and is not waited for stays a zombie, as the
        // stopped broker does in a container with nobody to reap it.
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        assert!(wait_for_state(child.id(), 'Z'), "the child did not become a zombie");
        let running = process_running(u64::from(child.id()));
        child.wait().expect("reap the child");
        assert!(!running, "a zombie counted as running");
    }

    #[test]
    fn a_live_process_is_running_and_a_reaped_one_is_not() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = u64::from(child.id());
        let running = process_running(pid);
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        assert!(running, "a sleeping process counted as stopped");
        assert!(!process_running(pid), "a reaped process counted as running");
        assert!(process_running(u64::from(std::process::id())), "this process counted as stopped");
    }
}
