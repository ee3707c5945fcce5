//! The local 3-node cluster seen and driven through `deploy/cluster.sh`:
//! where the run's quorum queues have their replicas and leaders, which
//! nodes hold the run's client connections, moving a leader, stopping and
//! starting a node. Every query is a rabbitmqctl call, which boots an
//! Erlang VM: callers batch them where they can.

use super::*;
use std::process::Stdio;

/// Node `n` of the cluster listens for AMQP on `AMQP_PORT_BASE + n`.
pub const AMQP_PORT_BASE: u16 = 5700;
pub const NODES: [usize; 3] = [1, 2, 3];

/// Bound of one rabbitmqctl query through deploy/cluster.sh.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a rabbitmqctl query through `deploy/cluster.sh`. Each call boots
/// an Erlang VM, which takes tens of seconds on a loaded two-core
/// machine: queries get a generous bound and one retry.
pub async fn query(context: &RunContext<'_>, args: &[&str]) -> Result<String> {
    match script(context, args, QUERY_TIMEOUT).await {
        Ok(output) => Ok(output),
        Err(error) => {
            context.clock.say(format!("{error:#}; trying again"));
            script(context, args, QUERY_TIMEOUT).await
        }
    }
}

/// Runs `deploy/cluster.sh ARGS` and returns its standard output.
pub async fn script(context: &RunContext<'_>, args: &[&str], within: Duration) -> Result<String> {
    let output = tokio::time::timeout(
        within,
        tokio::process::Command::new("bash")
            .arg(&context.args.cluster_script)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("cluster.sh {} did not finish within {within:?}", args.join(" ")))?
    .context("running deploy/cluster.sh")?;
    if !output.status.success() {
        bail!(
            "cluster.sh {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub async fn node(context: &RunContext<'_>, action: &str, n: usize) -> Result<()> {
    script(context, &[action, &n.to_string()], Duration::from_secs(240)).await.map(|_| ())
}

/// `dlr2@localhost` → 2.
pub fn node_number(name: &str) -> Option<usize> {
    name.strip_prefix("dlr")?.split('@').next()?.parse().ok()
}

pub fn numbers(value: &serde_json::Value) -> Vec<usize> {
    let mut nodes: Vec<usize> =
        value.as_array().into_iter().flatten().filter_map(|n| n.as_str().and_then(node_number)).collect();
    nodes.sort_unstable();
    nodes
}

/// Where a quorum queue's replicas are.
#[derive(Debug)]
pub struct Placement {
    pub name: String,
    pub leader: Option<usize>,
    pub members: Vec<usize>,
    pub online: Vec<usize>,
}

/// The run's quorum queues as any running node sees them.
pub async fn placements(context: &RunContext<'_>) -> Result<Vec<Placement>> {
    let listing = query(
        context,
        &[
            "ctl",
            "any",
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "online",
            "--formatter",
            "json",
            "-q",
        ],
    )
    .await?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(listing.trim()).context("reading list_queues output")?;
    let prefix = format!("test.harness-{}", context.run_id);
    Ok(rows
        .iter()
        .filter(|r| r["type"] == "quorum" && r["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|r| Placement {
            name: r["name"].as_str().unwrap_or_default().to_owned(),
            leader: r["leader"].as_str().and_then(node_number),
            members: numbers(&r["members"]),
            online: numbers(&r["online"]),
        })
        .collect())
}

pub async fn receipts_placement(context: &RunContext<'_>, queue: &str) -> Result<Placement> {
    placements(context)
        .await?
        .into_iter()
        .find(|p| p.name == queue)
        .ok_or_else(|| anyhow!("{queue} is not in the cluster's queue list"))
}

/// Waits until every quorum queue of the run has all three replicas
/// online (the restarted node rejoined and caught up), returns how long.
pub async fn wait_replicated(context: &RunContext<'_>, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let last = match placements(context).await {
            Ok(queues) if !queues.is_empty() && queues.iter().all(|q| q.online == NODES) => {
                return Ok(started.elapsed());
            }
            Ok(queues) => format!("{queues:?}"),
            Err(error) => format!("{error:#}"),
        };
        if started.elapsed() >= within {
            bail!("queues not fully replicated within {within:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The nodes (with repetitions) that hold the run's ingest and worker
/// connections: one rabbitmqctl call (each boots an Erlang VM) for both.
pub async fn client_nodes(context: &RunContext<'_>) -> Result<(Vec<usize>, Vec<usize>)> {
    let listing = query(
        context,
        &["ctl", "any", "list_connections", "port", "client_properties", "--formatter", "json", "-q"],
    )
    .await?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(listing.trim()).context("reading list_connections output")?;
    // Connection names are `<binary>[-<purpose>]@<HOSTNAME>` and each
    // process's HOSTNAME is `harness-<run>-<role>-<n>`: the worker's
    // consuming and publishing connections both count.
    let of = |role: &str| -> Vec<usize> {
        let marker = format!("@harness-{}-{role}-", context.run_id);
        rows.iter()
            .filter(|r| r["client_properties"].to_string().contains(&marker))
            .filter_map(|r| r["port"].as_u64())
            .filter_map(|port| usize::try_from(port.checked_sub(u64::from(AMQP_PORT_BASE))?).ok())
            .collect()
    };
    Ok((of("ingest"), of("worker")))
}

pub fn most_common(nodes: &[usize]) -> Option<usize> {
    NODES.into_iter().filter(|n| nodes.contains(n)).max_by_key(|n| nodes.iter().filter(|m| *m == n).count())
}

/// Transfers `queue`'s leadership from node `from` to another node and
/// waits until the cluster reports the new leader; returns it.
pub async fn move_leader(context: &RunContext<'_>, queue: &str, from: usize) -> Result<usize> {
    let to = NODES.into_iter().find(|n| *n != from).unwrap_or(1);
    move_leader_to(context, queue, from, to).await
}

/// Transfers `queue`'s leadership from node `from` to node `to` and
/// waits until the cluster reports it there.
pub async fn move_leader_to(context: &RunContext<'_>, queue: &str, from: usize, to: usize) -> Result<usize> {
    // A quorum queue's Raft cluster is named after vhost and queue.
    let server = |n: usize| format!("{{'%2F_{queue}', 'dlr{n}@localhost'}}");
    let call = format!("ra:transfer_leadership({}, {}).", server(from), server(to));
    query(context, &["ctl", &from.to_string(), "eval", &call]).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(placement) = receipts_placement(context, queue).await
            && placement.leader == Some(to)
        {
            context.clock.say(format!("moved the leader of {queue} from dlr{from} to dlr{to}"));
            return Ok(to);
        }
        if Instant::now() >= deadline {
            bail!("the leader of {queue} did not move from dlr{from} to dlr{to}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
