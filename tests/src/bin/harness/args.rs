//! The command line and the faults it can ask for.

use super::*;
use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
#[command(about = "Proves that no acknowledged receipt is lost under faults, load and bad input")]
pub struct Args {
    /// Small counts and short faults, for CI.
    #[arg(long, conflicts_with = "long")]
    pub short: bool,
    /// Full-length faults and more load (the default): the results table of deploy/RELIABILITY.md.
    #[arg(long)]
    pub long: bool,
    /// Directory holding the release `ingest` and `worker` binaries.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// Run only these scenarios (comma-separated), in the given order.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<ScenarioKind>,
    /// The receiver refuses (503) the first delivery of about one event in N
    /// (0: never), so that retry queues are in use during every fault.
    #[arg(long, default_value_t = 10)]
    pub flaky_every: u64,
    /// INGEST_MAX_CONCURRENCY of each ingest, deliberately low (default 1024):
    /// the burst exceeds it, so load shedding (429) is exercised too.
    #[arg(long, default_value_t = 16)]
    pub ingest_max_concurrency: usize,
    /// Before a broker-wide fault, wait this long for other broker clients
    /// (other test runs) to disconnect; refuse the fault after that.
    #[arg(long, default_value_t = 600)]
    pub exclusive_wait_secs: u64,
    /// Keep the work directory (logs, nginx config), the database and the
    /// queues even when everything passed.
    #[arg(long)]
    pub keep: bool,
    /// Run the node-loss scenarios on the 3-node cluster of deploy/cluster.sh
    /// instead of the single-broker ones; AMQP_URL must list its nodes
    /// (deploy/reliability.sh --cluster does both). The machine's broker on
    /// 5672 is not used.
    #[arg(long)]
    pub cluster: bool,
    /// The script that starts, stops and inspects the cluster's nodes.
    #[arg(long, default_value = "deploy/cluster.sh")]
    pub cluster_script: PathBuf,
}

/// The fault a scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioKind {
    /// No fault: the reference for the others.
    Baseline,
    /// `rabbitmqctl stop`, a pause, `rabbitmq-server -detached`.
    BrokerRestart,
    /// SIGKILL of one worker, started again after a pause.
    WorkerKill,
    /// SIGTERM of each ingest in turn behind nginx, started again after it exits.
    IngestRollingRestart,
    /// SIGTERM of each worker in turn (a rolling update or scale-down),
    /// started again after it has drained and exited.
    WorkerRollingRestart,
    /// The webhook receiver answers 503 to everything for a while.
    DownstreamOutage,
    /// Memory watermark near zero: the broker blocks publishers.
    MemoryAlarm,
    /// Disk free limit above the free space: the broker blocks publishers.
    DiskAlarm,
    /// Cluster: `kill -9` of the node hosting the receipts queue's leader.
    LeaderKill,
    /// Cluster: `kill -9` of the receipts queue leader's node, with ingest
    /// and worker connections on it, and the node stays down: ingest must
    /// answer 200 again within 10 s of the kill and the workers keep
    /// delivering, all while it is down.
    LeaderKillStaysDown,
    /// Cluster: `kill -9` of the node the ingests are connected to.
    ConnectedNodeKill,
    /// Cluster: clean stop and start of a follower node.
    FollowerRestart,
    /// Cluster: each node stopped and started in turn, waiting for full replication.
    NodesRollingRestart,
    /// Cluster: two of three nodes killed, then started again.
    MajorityLoss,
    /// Cluster, receipts over three shards with one leader per node:
    /// `kill -9` of the node leading one shard (and holding the ingests'
    /// connections), which stays down: the other shards keep getting 200,
    /// the killed shard gets 200 again within 10 s, every shard drains.
    /// Leaves the service sharded, so it runs last.
    ShardLeaderKill,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Baseline => "baseline",
            ScenarioKind::BrokerRestart => "broker-restart",
            ScenarioKind::WorkerKill => "worker-kill",
            ScenarioKind::IngestRollingRestart => "ingest-rolling-restart",
            ScenarioKind::WorkerRollingRestart => "worker-rolling-restart",
            ScenarioKind::DownstreamOutage => "downstream-outage",
            ScenarioKind::MemoryAlarm => "memory-alarm",
            ScenarioKind::DiskAlarm => "disk-alarm",
            ScenarioKind::LeaderKill => "leader-kill",
            ScenarioKind::LeaderKillStaysDown => "leader-kill-stays-down",
            ScenarioKind::ConnectedNodeKill => "connected-node-kill",
            ScenarioKind::FollowerRestart => "follower-restart",
            ScenarioKind::NodesRollingRestart => "nodes-rolling-restart",
            ScenarioKind::MajorityLoss => "majority-loss",
            ScenarioKind::ShardLeaderKill => "shard-leader-kill",
        }
    }

    /// Faults that affect every client of the broker.
    pub fn on_cluster(self) -> bool {
        replicated::is_cluster_scenario(self)
    }

    pub fn broker_wide(self) -> bool {
        matches!(self, ScenarioKind::BrokerRestart | ScenarioKind::MemoryAlarm | ScenarioKind::DiskAlarm)
    }
}
