//! The sharded cluster scenario (`shard-leader-kill`): the receipts spread
//! over [`SHARDS`] quorum queues whose leaders are on three different
//! nodes, and the node leading one of them is killed under load and stays
//! down. A shard is a failure domain of its own: the other shards' receipts
//! must keep getting `200`, the killed shard's must get `200` again once
//! the survivors have elected its new leader, and the workers must keep
//! draining every shard, all while the node is down.
//!
//! It switches the run's service to [`SHARDS`] shards (a re-sharding of
//! the idle service), so it runs after every other scenario.

use super::nodes::{NODES, client_nodes, most_common, node, placements, query, wait_replicated};
use super::replicated::{BACK_WITHIN, STRAY_5XX_PERCENT, record};
use super::*;
use dlr_shared::amqp::shards::shard_of;

/// Shards of the scenario: one leader per node when balanced.
pub const SHARDS: u16 = 3;
/// How long after the kill the other shards' receipts may still get a
/// 5xx (or no answer). The killed node also holds the ingests'
/// connection (the scenario picks it so): publishes in flight on it fail
/// at once, whatever their shard, and new ones fail until ingest has
/// reconnected to a sibling and declared its topology there, which takes
/// under a second in the leader-kill runs (connection supervisor: the
/// next node is tried at once, 100 ms backoff after a full round). 3 s is
/// that with room for a loaded two-core machine; no shard's leader
/// election is part of it, since the other shards keep theirs.
pub const OTHERS_WITHIN: Duration = Duration::from_secs(3);

/// The time windows a sharded kill is judged by (harness ms).
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// The killed node's shard.
    pub victim: u16,
    pub kill_ms: u64,
    /// End of the judged period: the node is started again after it.
    pub judged_ms: u64,
}

/// Restarts the service with [`SHARDS`] shards and spreads the shards'
/// leaders over the three nodes, before the load: `rabbitmq-queues
/// rebalance quorum` when they are not on three different nodes (ingest
/// declares them on the node it is connected to, RabbitMQ's default
/// `client-local` placement).
pub async fn prepare(context: &RunContext<'_>, cluster: &mut cluster::Cluster) -> Result<()> {
    let clock = context.clock;
    cluster.reshard(SHARDS).await?;
    let leaders = shard_leaders(context, &cluster.topology).await?;
    clock.say(format!("shard-leader-kill: {SHARDS} shards, leaders on {leaders:?}"));
    if balanced(&leaders) {
        return Ok(());
    }
    let pattern = format!("^{}\\.[0-9]+$", cluster.topology.queue.replace('.', "\\."));
    let any = leaders.iter().flatten().next().copied().unwrap_or(1).to_string();
    query(context, &["queues", &any, "rebalance", "quorum", "--queue-pattern", &pattern]).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders = shard_leaders(context, &cluster.topology).await?;
        if balanced(&leaders) {
            clock.say(format!("shard-leader-kill: rebalanced, leaders on {leaders:?}"));
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the shards' leaders are still on {leaders:?} after rabbitmq-queues rebalance quorum");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One leader per node.
fn balanced(leaders: &[Option<usize>]) -> bool {
    NODES.iter().all(|n| leaders.iter().filter(|l| **l == Some(*n)).count() == 1)
}

/// The leader node of each shard, in shard order.
async fn shard_leaders(context: &RunContext<'_>, topology: &Topology) -> Result<Vec<Option<usize>>> {
    let placements = placements(context).await?;
    Ok((0..topology.receipt_shards)
        .map(|k| {
            let queue = topology.shard_queue(k);
            placements.iter().find(|p| p.name == queue).and_then(|p| p.leader)
        })
        .collect())
}

/// Kills the node that leads a shard and holds the ingests' connections,
/// keeps it down while the answers are recorded, then starts it again.
pub async fn inject(
    context: &RunContext<'_>,
    cluster: &mut cluster::Cluster,
    sink: &sink::Sink,
) -> Result<String> {
    let (profile, clock) = (&context.profile, context.clock);
    let name = ScenarioKind::ShardLeaderKill.name();
    let (leaders, clients) = tokio::join!(shard_leaders(context, &cluster.topology), client_nodes(context));
    let (leaders, (ingests, workers)) = (leaders?, clients?);
    let victim_node = most_common(&ingests).unwrap_or(1);
    let victim = (0..SHARDS)
        .find(|k| leaders.get(usize::from(*k)).copied().flatten() == Some(victim_node))
        .ok_or_else(|| {
        anyhow!("dlr{victim_node} (the ingests' node) leads no shard: leaders {leaders:?}")
    })?;
    let stays = profile.node_stays_down.max(BACK_WITHIN * 2);
    clock.say(format!(
        "{name}: leaders {leaders:?}, ingests on {ingests:?}, workers on {workers:?}; kill -9 dlr{victim_node} \
         (leader of shard {victim}), it stays down {:.0} s",
        stays.as_secs_f64()
    ));
    node(context, "kill-node", victim_node).await?;
    let kill_ms = clock.ms();
    let delivered = || delivered_per_shard(sink);
    tokio::time::sleep(BACK_WITHIN).await;
    let at_back = delivered();
    tokio::time::sleep(stays - BACK_WITHIN).await;
    let later = delivered();
    let judged_ms = clock.ms();
    let new_leaders = shard_leaders(context, &cluster.topology).await.unwrap_or_default();
    // Receipts of each shard delivered from BACK_WITHIN after the kill on.
    let drained: Vec<usize> = (0..SHARDS)
        .map(|k| later.get(&k).copied().unwrap_or(0).saturating_sub(at_back.get(&k).copied().unwrap_or(0)))
        .collect();
    record(context, |f| {
        f.shards = Some(Windows { victim, kill_ms, judged_ms });
        for (k, count) in drained.iter().enumerate() {
            if *count == 0 {
                f.problems.push(format!(
                    "the workers delivered nothing of shard {k} from {} s after the kill while dlr{victim_node} \
                     stayed down",
                    BACK_WITHIN.as_secs()
                ));
            }
        }
        let leader = new_leaders.get(usize::from(victim)).copied().flatten();
        if leader.is_none_or(|n| n == victim_node) {
            f.problems.push(format!("no new leader of shard {victim} while dlr{victim_node} was down"));
        }
    });
    // Judged; started again only so that the run ends with three nodes.
    node(context, "start-node", victim_node).await?;
    let caught_up = wait_replicated(context, Duration::from_secs(180)).await?;
    cluster.wait_all_ready(Duration::from_secs(120)).await?;
    Ok(format!(
        "{SHARDS} shards, leaders {}; kill -9 dlr{victim_node} (leader of shard {victim}, ingest connections), \
         down {:.0} s; new leaders {}; delivered per shard from {} s after the kill to the restart: {}; replicas \
         complete {:.1} s after the start",
        nodes_list(&leaders),
        stays.as_secs_f64(),
        nodes_list(&new_leaders),
        BACK_WITHIN.as_secs(),
        drained.iter().map(usize::to_string).collect::<Vec<_>>().join("/"),
        caught_up.as_secs_f64()
    ))
}

fn nodes_list(leaders: &[Option<usize>]) -> String {
    leaders.iter().map(|l| l.map_or("?".to_owned(), |n| format!("dlr{n}"))).collect::<Vec<_>>().join("/")
}

/// Receipts delivered over HTTP so far, per shard (of every scenario:
/// only the growth counts).
fn delivered_per_shard(sink: &sink::Sink) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for (id, calls) in sink.calls("") {
        if calls.ok > 0 {
            *counts.entry(shard_of(&id, SHARDS)).or_insert(0) += 1;
        }
    }
    counts
}

/// The answers that broke the scenario's rules, and one line of what the
/// provider saw per side (the victim's shard, the others), for the report.
pub fn judge(windows: &Windows, tag: &str, attempts: &[provider::Attempt]) -> (Vec<String>, String) {
    let Windows { victim, kill_ms, judged_ms } = *windows;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (others_ms, back_ms) = (kill_ms + ms(OTHERS_WITHIN), kill_ms + ms(BACK_WITHIN));
    let during: Vec<(bool, &provider::Attempt)> = attempts
        .iter()
        .filter(|a| !a.bad && a.end_ms >= kill_ms && a.start_ms <= judged_ms)
        .map(|a| (shard_of(&provider::message_id(tag, a.n), SHARDS) == victim, a))
        .collect();
    let side = |mine: bool| during.iter().filter(move |(v, _)| *v == mine).map(|(_, a)| *a);
    let mut problems = Vec::new();

    let late: Vec<_> = side(false)
        .filter(|a| a.start_ms >= others_ms && a.end_ms <= judged_ms)
        .filter(|a| failed(a))
        .collect();
    if !late.is_empty() {
        problems.push(format!(
            "{} requests of the shards that kept their leader got a 5xx or no answer later than {} s after the kill",
            late.len(),
            OTHERS_WITHIN.as_secs()
        ));
    }
    let victim_ok =
        side(true).filter(|a| a.start_ms >= kill_ms && a.end_ms <= back_ms).any(|a| a.code == 200);
    if !victim_ok {
        problems.push(format!(
            "no receipt of shard {victim} was answered 200 within {} s of the kill while its leader's node stayed down",
            BACK_WITHIN.as_secs()
        ));
    }
    let after: Vec<_> = side(true).filter(|a| a.start_ms >= back_ms && a.end_ms <= judged_ms).collect();
    let after_failed = after.iter().filter(|a| failed(a)).count();
    if after.is_empty() || after_failed * 100 > after.len() * STRAY_5XX_PERCENT {
        problems.push(format!(
            "{after_failed} of {} requests of shard {victim} got a 5xx or no answer from {} s after the kill while \
             the node stayed down (at most {STRAY_5XX_PERCENT} % allowed)",
            after.len(),
            BACK_WITHIN.as_secs()
        ));
    }

    let summary = |mine: bool| {
        let all: Vec<_> = side(mine).collect();
        let bad: Vec<_> = all.iter().filter(|a| failed(a)).collect();
        let last = bad.iter().map(|a| a.end_ms.saturating_sub(kill_ms)).max();
        let first_200 =
            all.iter().filter(|a| a.code == 200 && a.start_ms >= kill_ms).map(|a| a.end_ms - kill_ms).min();
        format!(
            "{} requests, {} 5xx/unanswered (last answered {} after the kill), first 200 sent after the kill \
             answered at +{} ms",
            all.len(),
            bad.len(),
            last.map_or("-".to_owned(), |ms| format!("+{ms} ms")),
            first_200.map_or("-".to_owned(), |ms| ms.to_string())
        )
    };
    let line = format!(
        "shard-leader-kill, from the kill to the restart: shard {victim} (killed leader): {}; other shards: {} \
         (5xx allowed for {} s)",
        summary(true),
        summary(false),
        OTHERS_WITHIN.as_secs()
    );
    (problems, line)
}

/// A 5xx or no answer at all.
fn failed(attempt: &provider::Attempt) -> bool {
    attempt.code >= 500 || attempt.code == 0
}
