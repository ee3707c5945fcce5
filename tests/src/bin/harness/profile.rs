//! Load and fault sizes of a run, and its one time base.

use super::*;

/// Load and fault sizes of one run.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: &'static str,
    /// Receipts per second of the steady stream (open loop).
    pub rate: f64,
    /// Upper bound of the full-speed burst, which runs from the start of the
    /// fault until just after it is healed.
    pub burst_max: u64,
    /// The burst's bound in the cluster scenarios whose fault lasts longest
    /// (connected-node-kill, nodes-rolling-restart, majority-loss: node
    /// starts and replication waits, each a rabbitmqctl call that boots an
    /// Erlang VM). A smaller burst leaves those calls the CPU, which is
    /// what keeps the short cluster run within CI's time.
    pub long_fault_burst_max: u64,
    /// Connections of the burst (closed loop).
    pub burst_concurrency: usize,
    /// Steady load before the burst and the fault.
    pub warmup: Duration,
    /// Steady load after the fault is healed.
    pub cooldown: Duration,
    /// The baseline's "fault" window (nothing happens).
    pub baseline: Duration,
    /// How long the broker stays stopped.
    pub broker_down: Duration,
    /// How long a killed node stays down in leader-kill-stays-down: past
    /// the 10 s ingest has to answer 200 again, with time left to see it
    /// keep doing so.
    pub node_stays_down: Duration,
    /// How long the killed worker stays dead.
    pub worker_down: Duration,
    /// Length of the downstream outage.
    pub outage: Duration,
    /// How long a resource alarm lasts.
    pub alarm: Duration,
    /// How long the provider keeps retrying after the load stops.
    pub retry_window: Duration,
    /// How long the sinks may go without progress while catching up after
    /// the load (the catch-up itself may take longer while it progresses).
    pub settle: Duration,
    /// Every Nth receipt is malformed.
    pub bad_every: u64,
}

impl Profile {
    pub fn short() -> Self {
        Self {
            name: "short",
            rate: 40.0,
            burst_max: 10_000,
            long_fault_burst_max: 2_000,
            burst_concurrency: 48,
            warmup: Duration::from_secs(2),
            cooldown: Duration::from_secs(2),
            baseline: Duration::from_secs(3),
            broker_down: Duration::from_secs(2),
            node_stays_down: Duration::from_secs(20),
            worker_down: Duration::from_secs(1),
            outage: Duration::from_secs(6),
            alarm: Duration::from_secs(4),
            retry_window: Duration::from_secs(60),
            settle: Duration::from_secs(30),
            bad_every: 25,
        }
    }

    pub fn long() -> Self {
        Self {
            name: "long",
            rate: 150.0,
            burst_max: 100_000,
            long_fault_burst_max: 100_000,
            burst_concurrency: 96,
            warmup: Duration::from_secs(10),
            cooldown: Duration::from_secs(20),
            baseline: Duration::from_secs(15),
            broker_down: Duration::from_secs(10),
            node_stays_down: Duration::from_secs(40),
            worker_down: Duration::from_secs(5),
            outage: Duration::from_secs(30),
            alarm: Duration::from_secs(20),
            retry_window: Duration::from_secs(120),
            settle: Duration::from_secs(180),
            bad_every: 25,
        }
    }
}

/// Milliseconds since the harness started: one time base for the provider,
/// the receiver and the fault timeline.
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn say(&self, message: impl AsRef<str>) {
        eprintln!("[{:>7.1}s] {}", self.0.elapsed().as_secs_f64(), message.as_ref());
    }
}
