//! The child processes under test: spawning them, waiting for them, and
//! reading what they cost (CPU ticks, peak RSS).

use super::*;

/// Median of a non-empty sample (0 for an empty one).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Peak resident set size of a process, from /proc (Linux).
pub(crate) fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn_owned(bin: PathBuf, envs: &[(String, String)]) -> Result<ChildGuard> {
    let pairs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    spawn(bin, &pairs)
}

pub(crate) fn spawn(bin: PathBuf, envs: &[(&str, String)]) -> Result<ChildGuard> {
    let mut command = Command::new(&bin);
    command.stdout(Stdio::null()).stderr(Stdio::null()).env("AMQP_URL", dlr_tests::amqp_urls());
    for (k, v) in envs {
        command.env(k, v);
    }
    Ok(ChildGuard(
        command.spawn().with_context(|| format!("starting {} (run cargo build --release)", bin.display()))?,
    ))
}

pub(crate) fn topology_env(topology: &Topology) -> Vec<(&'static str, String)> {
    vec![
        ("AMQP_EXCHANGE", topology.exchange.clone()),
        ("AMQP_QUEUE", topology.queue.clone()),
        ("AMQP_PARKED_QUEUE", topology.parked_queue.clone()),
        ("AMQP_QUARANTINE_QUEUE", topology.quarantine_queue.clone()),
    ]
}

/// CPU clock ticks (utime + stime) of a process; Linux counts them in
/// 1/100 s (USER_HZ). A process that is gone reads as 0.
pub(crate) fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The command name may contain spaces: fields are counted after its ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    field(11) + field(12)
}

/// Summed ticks of every process whose name is `name` (`beam.smp` for
/// RabbitMQ, `postgres` for PostgreSQL's backends). The machine's broker and
/// database are shared, so other users' work is counted too.
pub(crate) fn ticks_named(name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .map(process_ticks)
        .sum()
}

/// CPU of the processes in a run, for "where does the time go".
#[derive(Clone, Copy)]
pub(crate) struct CpuSample {
    pub(crate) worker: u64,
    pub(crate) ingest: u64,
    pub(crate) broker: u64,
    pub(crate) postgres: u64,
}

impl CpuSample {
    pub(crate) fn now(worker: Option<u32>, ingest: Option<u32>) -> Self {
        Self {
            worker: worker.map(process_ticks).unwrap_or(0),
            ingest: ingest.map(process_ticks).unwrap_or(0),
            broker: ticks_named("beam.smp"),
            postgres: ticks_named("postgres"),
        }
    }

    /// Percent of one core each used between `self` and `later`.
    pub(crate) fn describe(&self, later: &Self, seconds: f64, with_ingest: bool) -> String {
        let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds.max(1e-3);
        let ingest = if with_ingest {
            format!("ingest {:.0}%, ", pct(self.ingest, later.ingest))
        } else {
            String::new()
        };
        format!(
            "CPU: {ingest}worker {:.0}%, broker {:.0}%, postgres {:.0}% (of one core)",
            pct(self.worker, later.worker),
            pct(self.broker, later.broker),
            pct(self.postgres, later.postgres)
        )
    }
}

pub(crate) async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client.get(url).send().await.map(|r| r.status().is_success()).unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} never became ready")
}
