//! The cluster scenarios (`--cluster`): node crashes, restarts and the
//! loss of a majority on the local 3-node cluster of `deploy/cluster.sh`,
//! with ingests and workers given all three addresses. The service and
//! the load are the same as in the single-broker scenarios; only the
//! faults differ, and a few things are checked while a fault is on
//! (readiness, answers), recorded as [`Findings`] for the report.

use super::cluster::Role;
use super::nodes::{
    NODES, client_nodes, most_common, move_leader, move_leader_to, node, receipts_placement, wait_replicated,
};
use super::*;

/// How long a majority loss may take to make every ingest unready beyond
/// its readiness grace: RabbitMQ's pause_minority stops the last node's
/// listener at once, and an ingest then stays ready for its grace (so
/// that a node restart does not empty the Service); this is for sampling
/// and probes.
const UNREADY_MARGIN: Duration = Duration::from_secs(10);
/// How soon after its leader's node is killed (and stays down) ingest
/// must answer 200 again: the survivors elect a leader within a second
/// or two, and a publish that failed must not make the failure last.
pub const BACK_WITHIN: Duration = Duration::from_secs(10);
/// After [`BACK_WITHIN`], the share of 5xx answers allowed while the
/// node is still down: a publish caught on a channel that is being
/// replaced, not a pod that refuses everything.
pub const STRAY_5XX_PERCENT: usize = 1;

pub fn is_cluster_scenario(kind: ScenarioKind) -> bool {
    matches!(
        kind,
        ScenarioKind::LeaderKill
            | ScenarioKind::LeaderKillStaysDown
            | ScenarioKind::ConnectedNodeKill
            | ScenarioKind::FollowerRestart
            | ScenarioKind::NodesRollingRestart
            | ScenarioKind::MajorityLoss
            | ScenarioKind::ShardLeaderKill
    )
}

/// The scenarios of this run: `--cluster` runs every cluster scenario
/// (`--short` too: that is CI's), a normal run only the single-broker
/// ones. shard-leader-kill leaves the service sharded, so it comes last.
pub fn select(scenarios: Vec<ScenarioKind>, args: &Args) -> Result<Vec<ScenarioKind>> {
    if args.only.is_empty() {
        return Ok(scenarios.into_iter().filter(|k| k.on_cluster() == args.cluster).collect());
    }
    if let Some(wrong) = scenarios.iter().find(|k| k.on_cluster() != args.cluster) {
        if args.cluster {
            bail!("{} is a single-broker scenario: run it without --cluster", wrong.name());
        }
        bail!("{} needs --cluster (deploy/reliability.sh --cluster)", wrong.name());
    }
    let sharded = scenarios.iter().position(|k| *k == ScenarioKind::ShardLeaderKill);
    if sharded.is_some_and(|i| i + 1 != scenarios.len()) {
        bail!("shard-leader-kill leaves the service sharded: list it last");
    }
    Ok(scenarios)
}

/// What a cluster scenario saw during its fault.
#[derive(Debug, Default)]
pub struct Findings {
    /// (from, to) in harness ms: no receipt may be answered 200 by a
    /// request made entirely within (a majority of nodes is down).
    pub no_200: Option<(u64, u64)>,
    /// (from, to): no 5xx and no unanswered request expected within (a
    /// node without clients restarts).
    pub no_5xx: Option<(u64, u64)>,
    /// (from, to): at least one request made within must be answered
    /// 200 within (ingest is back although the node is still down).
    pub some_200: Option<(u64, u64)>,
    /// (from, to): at most [`STRAY_5XX_PERCENT`] of the answers to
    /// requests made within may be 5xx or missing (ingest stays back).
    pub mostly_200: Option<(u64, u64)>,
    /// The sharded kill's windows, judged per shard (shard_kill.rs).
    pub shards: Option<shard_kill::Windows>,
    /// Failed checks.
    pub problems: Vec<String>,
}

impl Findings {
    /// The recorded problems plus the answers that broke a window's rule.
    /// A sharded kill also prints what the provider saw per shard.
    pub fn problems(&self, tag: &str, attempts: &[provider::Attempt]) -> Vec<String> {
        let mut problems = self.problems.clone();
        if let Some(windows) = &self.shards {
            let (broken, line) = shard_kill::judge(windows, tag, attempts);
            println!("{line}");
            problems.extend(broken);
        }
        let inside = |(from, to): (u64, u64)| {
            attempts.iter().filter(move |a| !a.bad && a.start_ms >= from && a.end_ms <= to)
        };
        if let Some(window) = self.no_200 {
            let ok = inside(window).filter(|a| a.code == 200).count();
            if ok > 0 {
                problems.push(format!("{ok} receipts were answered 200 while a majority of nodes was down"));
            }
        }
        if let Some(window) = self.no_5xx {
            let failed = inside(window).filter(|a| a.code >= 500 || a.code == 0).count();
            if failed > 0 {
                problems.push(format!(
                    "{failed} requests got a 5xx or no answer while a node without clients restarted"
                ));
            }
        }
        if let Some(window) = self.some_200
            && inside(window).all(|a| a.code != 200)
        {
            problems.push(format!(
                "no receipt was answered 200 within {} s of the kill while the node stayed down",
                (window.1 - window.0) / 1000
            ));
        }
        if let Some(window) = self.mostly_200 {
            let answers = inside(window).count();
            let failed = inside(window).filter(|a| a.code >= 500 || a.code == 0).count();
            if answers == 0 || failed * 100 > answers * STRAY_5XX_PERCENT {
                problems.push(format!(
                    "{failed} of {answers} requests got a 5xx or no answer from {} s after the kill while the node \
                     stayed down (at most {STRAY_5XX_PERCENT} % allowed)",
                    BACK_WITHIN.as_secs()
                ));
            }
        }
        problems
    }
}

/// Adds to what the running scenario observed.
pub fn record(context: &RunContext<'_>, change: impl FnOnce(&mut Findings)) {
    if let Ok(mut findings) = context.findings.lock() {
        change(&mut findings);
    }
}

async fn any_ingest_ready(cluster: &cluster::Cluster) -> bool {
    for n in 0..2 {
        if cluster.wait_ready(Role::Ingest, n, Duration::from_millis(300)).await.is_ok() {
            return true;
        }
    }
    false
}

/// Injects one cluster fault and heals it: the node(s) are back, every
/// queue fully replicated and every instance ready before it returns.
pub async fn inject(
    context: &RunContext<'_>,
    cluster: &mut cluster::Cluster,
    sink: &sink::Sink,
    kind: ScenarioKind,
) -> Result<String> {
    let (profile, clock) = (&context.profile, context.clock);
    let name = kind.name();
    let ready = Duration::from_secs(120);
    let replicated = Duration::from_secs(180);
    let down = profile.broker_down;
    let queue = cluster.topology.queue.clone();
    // Two rabbitmqctl calls at once: each is mostly an Erlang VM booting.
    let (before, clients) = tokio::join!(receipts_placement(context, &queue), client_nodes(context));
    let (before, (ingests, workers)) = (before?, clients?);
    if before.members != NODES {
        record(context, |f| {
            f.problems.push(format!("{queue} has replicas on {:?}, not on all three nodes", before.members))
        });
    }
    let leader = before.leader.ok_or_else(|| anyhow!("{queue} has no leader before the fault"))?;
    let ingest_node = most_common(&ingests).unwrap_or(1);
    clock.say(format!("{name}: leader dlr{leader}, ingests on {ingests:?}, workers on {workers:?}"));
    match kind {
        ScenarioKind::LeaderKill | ScenarioKind::ConnectedNodeKill => {
            let victim = if kind == ScenarioKind::LeaderKill { leader } else { ingest_node };
            // The ingests' node is a different fault from the leader's
            // only when it holds no leader: move the receipts queue's away.
            let leader = if kind == ScenarioKind::ConnectedNodeKill && leader == ingest_node {
                move_leader(context, &queue, leader).await?
            } else {
                leader
            };
            let role = match (victim == leader, ingests.contains(&victim)) {
                (true, true) => "the leader, with ingest connections",
                (true, false) => "the leader, no ingest connection",
                (false, true) => "a follower, with ingest connections",
                (false, false) => "a follower, no ingest connection",
            };
            clock.say(format!("{name}: kill -9 dlr{victim} ({role})"));
            node(context, "kill-node", victim).await?;
            tokio::time::sleep(down).await;
            let new_leader = receipts_placement(context, &queue).await.ok().and_then(|p| p.leader);
            node(context, "start-node", victim).await?;
            let caught_up = wait_replicated(context, replicated).await?;
            cluster.wait_all_ready(ready).await?;
            clock.say(format!(
                "{name}: dlr{victim} back, replicas caught up in {:.1} s",
                caught_up.as_secs_f64()
            ));
            Ok(format!(
                "kill -9 dlr{victim} ({role}), start it after {:.0} s; leader then {}; replicas complete {:.1} s after the start",
                down.as_secs_f64(),
                new_leader.map_or("?".to_owned(), |n| format!("dlr{n}")),
                caught_up.as_secs_f64()
            ))
        }
        ScenarioKind::LeaderKillStaysDown => {
            // The victim holds connections of both ingest and worker (all
            // processes get all three addresses; they take the first that
            // answers) and, moved there if need be, the leader.
            let victim =
                most_common(&ingests.iter().copied().filter(|n| workers.contains(n)).collect::<Vec<_>>())
                    .ok_or_else(|| {
                        anyhow!("no node holds both ingest and worker connections: {ingests:?} / {workers:?}")
                    })?;
            if leader != victim {
                move_leader_to(context, &queue, leader, victim).await?;
            }
            let stays = profile.node_stays_down.max(BACK_WITHIN * 2);
            clock.say(format!("{name}: kill -9 dlr{victim} (the leader, ingest and worker connections); it stays down {:.0} s", stays.as_secs_f64()));
            node(context, "kill-node", victim).await?;
            let kill_ms = clock.ms();
            let delivered = || sink.calls("").values().filter(|c| c.ok > 0).count();
            tokio::time::sleep(BACK_WITHIN).await;
            let delivered_at_back = delivered();
            tokio::time::sleep(stays - BACK_WITHIN).await;
            let delivered_later = delivered();
            let new_leader = receipts_placement(context, &queue).await.ok().and_then(|p| p.leader);
            let judged_ms = clock.ms();
            let back_ms = kill_ms + u64::try_from(BACK_WITHIN.as_millis()).unwrap_or(u64::MAX);
            record(context, |f| {
                f.some_200 = Some((kill_ms, back_ms));
                f.mostly_200 = Some((back_ms, judged_ms));
                if delivered_later <= delivered_at_back {
                    f.problems.push(format!(
                        "the workers delivered nothing over HTTP from {} s after the kill while dlr{victim} stayed down",
                        BACK_WITHIN.as_secs()
                    ));
                }
                if new_leader.is_none_or(|n| n == victim) {
                    f.problems.push(format!("no new leader of {queue} while dlr{victim} was down"));
                }
            });
            // Judged; started again only so that the next scenario has
            // three nodes.
            node(context, "start-node", victim).await?;
            let caught_up = wait_replicated(context, replicated).await?;
            cluster.wait_all_ready(ready).await?;
            Ok(format!(
                "kill -9 dlr{victim} (the leader, with ingest and worker connections), down {:.0} s; leader then {}; {} events delivered over HTTP from {} s after the kill to the restart; replicas complete {:.1} s after the start",
                stays.as_secs_f64(),
                new_leader.map_or("?".to_owned(), |n| format!("dlr{n}")),
                delivered_later.saturating_sub(delivered_at_back),
                BACK_WITHIN.as_secs(),
                caught_up.as_secs_f64()
            ))
        }
        ScenarioKind::FollowerRestart => {
            let followers: Vec<usize> = NODES.into_iter().filter(|n| *n != leader).collect();
            // A follower without clients: its restart must go unnoticed.
            let quiet = followers.iter().copied().find(|n| !ingests.contains(n) && !workers.contains(n));
            let victim = quiet
                .or_else(|| followers.iter().copied().find(|n| !ingests.contains(n)))
                .unwrap_or(followers[0]);
            let from = clock.ms();
            clock.say(format!("{name}: rabbitmqctl stop dlr{victim} (follower)"));
            node(context, "stop-node", victim).await?;
            tokio::time::sleep(down).await;
            node(context, "start-node", victim).await?;
            let caught_up = wait_replicated(context, replicated).await?;
            if !ingests.contains(&victim) {
                let to = clock.ms();
                record(context, |f| f.no_5xx = Some((from, to)));
            }
            cluster.wait_all_ready(ready).await?;
            Ok(format!(
                "stop follower dlr{victim} ({}), start after {:.0} s; replicas complete {:.1} s after the start",
                if quiet.is_some() { "no clients" } else { "with clients" },
                down.as_secs_f64(),
                caught_up.as_secs_f64()
            ))
        }
        ScenarioKind::NodesRollingRestart => {
            let mut steps = Vec::new();
            for n in NODES {
                clock.say(format!("{name}: rabbitmqctl stop dlr{n}"));
                let started = Instant::now();
                node(context, "stop-node", n).await?;
                node(context, "start-node", n).await?;
                let caught_up = wait_replicated(context, replicated).await?;
                cluster.wait_all_ready(ready).await?;
                steps.push(format!("{:.0}", started.elapsed().as_secs_f64()));
                clock.say(format!(
                    "{name}: dlr{n} rejoined, replicas complete ({:.1} s)",
                    caught_up.as_secs_f64()
                ));
            }
            Ok(format!(
                "stop, start, wait for full replication: dlr1, dlr2, dlr3 in turn ({} s each)",
                steps.join(" / ")
            ))
        }
        ScenarioKind::MajorityLoss => {
            let survivor = NODES.into_iter().find(|n| *n != leader).unwrap_or(1);
            let victims: Vec<usize> = NODES.into_iter().filter(|n| *n != survivor).collect();
            clock.say(format!("{name}: kill -9 dlr{} and dlr{} (leader among them)", victims[0], victims[1]));
            for n in &victims {
                node(context, "kill-node", *n).await?;
            }
            let lost_ms = clock.ms();
            let lost = Instant::now();
            let unready_within = readiness_grace(context.args) + UNREADY_MARGIN;
            let mut unready_after = None;
            while lost.elapsed() < unready_within.max(down) {
                let ready_now = any_ingest_ready(cluster).await;
                if !ready_now && unready_after.is_none() {
                    unready_after = Some(lost.elapsed());
                }
                if ready_now && unready_after.is_some() {
                    record(context, |f| {
                        f.problems.push("an ingest became ready again while the majority was down".to_owned())
                    });
                    break;
                }
                if unready_after.is_some() && lost.elapsed() >= down {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if unready_after.is_none() {
                record(context, |f| {
                    f.problems
                        .push(format!("ingest stayed ready {unready_within:?} after losing the majority"))
                });
            }
            let restart_ms = clock.ms();
            record(context, |f| f.no_200 = Some((lost_ms, restart_ms)));
            clock.say(format!("{name}: starting dlr{} and dlr{}", victims[0], victims[1]));
            let (a, b) = tokio::join!(
                node(context, "start-node", victims[0]),
                node(context, "start-node", victims[1])
            );
            a?;
            b?;
            let caught_up = wait_replicated(context, replicated).await?;
            cluster.wait_all_ready(ready).await?;
            Ok(format!(
                "kill -9 dlr{} and dlr{} for {:.0} s: every ingest unready after {}; replicas complete {:.1} s after the start",
                victims[0],
                victims[1],
                (restart_ms - lost_ms) as f64 / 1000.0,
                unready_after.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
                caught_up.as_secs_f64()
            ))
        }
        other => bail!("{} is not a cluster scenario", other.name()),
    }
}
