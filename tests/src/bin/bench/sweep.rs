//! The shard sweep (`--shard-sweep 1,2,3,6`): for each
//! `AMQP_RECEIPT_SHARDS`, the broker's own publish ceiling with ingest's
//! messages spread over the shards as ingest spreads them, and ingest under
//! load, with the CPU each broker node spent per message. On a cluster
//! (`--amqp-url` with every node) each node is one line of CPU, and with
//! `--cluster-script` the shards' leaders are spread over the nodes before
//! each measurement, as a production cluster places them (`balanced`).

use super::*;

/// Runs the sweep, `rounds` rounds per shard count; prints every round
/// and the medians.
pub(crate) async fn shard_sweep(args: &Args, counts: &[u16]) -> Result<()> {
    let ports = amqp_ports(&dlr_tests::amqp_urls());
    let pids: Vec<u32> = if args.broker_pids.is_empty() {
        let found: Vec<Option<u32>> = ports.iter().map(|p| listener_pid(*p)).collect();
        if found.iter().any(Option::is_none) {
            println!(
                "shard sweep: no broker process found for every AMQP port {ports:?} ({found:?}); pass --broker-pids \
                 (reading another user's /proc/<pid>/fd needs root)"
            );
        }
        found.into_iter().flatten().collect()
    } else {
        args.broker_pids.clone()
    };
    println!(
        "shard sweep: broker node(s) on ports {ports:?}, CPU of pid(s) {pids:?}; {} messages per ceiling run, {} s \
         of ingest load at {} connections; leaders {}",
        args.messages,
        args.seconds,
        args.concurrency,
        if args.cluster_script.is_some() { "rebalanced before each run" } else { "where they were declared" }
    );
    for &shards in counts {
        let (mut ceilings, mut ingests, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        let mut ceiling_cpu: Vec<Vec<f64>> = vec![Vec::new(); pids.len()];
        let mut ingest_cpu: Vec<Vec<f64>> = vec![Vec::new(); pids.len()];
        for round in 1..=args.rounds.max(1) {
            let balance = Balance { script: args.cluster_script.as_deref(), shards };
            // Each CPU sample is taken once the leaders are in place.
            let mut before = Vec::new();
            let ready = async |topology: &Topology| {
                balance.spread(topology).await?;
                before = cpu_seconds(&pids);
                Ok(())
            };
            let ceiling =
                publish_ceiling_prepared(args.messages, 1000, 1, Shape::Receipt, shards, ready).await?;
            let c_us = per_message_us(&before, &cpu_seconds(&pids), args.messages);
            let ready = async |topology: &Topology| {
                balance.spread(topology).await?;
                before = cpu_seconds(&pids);
                Ok(())
            };
            let ingest = ingest_load_prepared(args, false, shards, ready).await?;
            let i_us = per_message_us(&before, &cpu_seconds(&pids), ingest.accepted);
            println!(
                "round {round}, {shards} shard(s): broker ceiling {ceiling:.0} msg/s, broker CPU us/msg per node {}; \
                 ingest {:.0} receipts/s, p99 {:.1} ms, errors {}, broker CPU us/receipt per node {}",
                show_us(&c_us),
                ingest.rate,
                ingest.p99_ms,
                ingest.errors,
                show_us(&i_us)
            );
            ceilings.push(ceiling);
            ingests.push(ingest.rate);
            p99s.push(ingest.p99_ms);
            for (node, (c, i)) in c_us.iter().zip(&i_us).enumerate() {
                ceiling_cpu[node].push(*c);
                ingest_cpu[node].push(*i);
            }
        }
        let c_med: Vec<f64> = ceiling_cpu.iter_mut().map(|v| median(v)).collect();
        let i_med: Vec<f64> = ingest_cpu.iter_mut().map(|v| median(v)).collect();
        println!(
            "{shards} shard(s), median: broker ceiling {:.0} msg/s ({} us/msg per node); \
             ingest {:.0} receipts/s, p99 {:.1} ms ({} us/receipt per node)",
            median(&mut ceilings),
            show_us(&c_med),
            median(&mut ingests),
            median(&mut p99s),
            show_us(&i_med)
        );
    }
    Ok(())
}

/// Spreads a topology's shard leaders over the cluster's nodes.
struct Balance<'a> {
    /// deploy/cluster.sh, or none (a single broker: nothing to spread).
    script: Option<&'a std::path::Path>,
    shards: u16,
}

impl Balance<'_> {
    /// `rabbitmq-queues rebalance quorum` over the topology's shards:
    /// whoever declares them gets every leader on its own node (RabbitMQ's
    /// default `client-local` placement).
    async fn spread(&self, topology: &Topology) -> Result<()> {
        let Some(script) = self.script.filter(|_| self.shards > 1) else { return Ok(()) };
        let pattern = format!("^{}\\.[0-9]+$", topology.queue.replace('.', "\\."));
        let output = tokio::process::Command::new("bash")
            .arg(script)
            .args(["queues", "1", "rebalance", "quorum", "--queue-pattern", &pattern])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running the cluster script")?;
        if !output.status.success() {
            bail!("rebalance failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }
}

/// The AMQP port of each address of a comma-separated `AMQP_URL`.
fn amqp_ports(urls: &str) -> Vec<u16> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let authority = rest.split('/').next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            let default = if url.starts_with("amqps") { 5671 } else { 5672 };
            host.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).unwrap_or(default)
        })
        .collect()
}

/// The process listening on TCP `port`: the socket's inode from
/// /proc/net/tcp{,6}, then the process holding that socket.
fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            // State 0A: LISTEN.
            (u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9).map(|i| (*i).to_owned()))
                .flatten()
        })
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(
        |pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == socket)
                })
            })
        },
    )
}

/// CPU seconds (user + system, all threads) each process has used so far.
fn cpu_seconds(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|pid| process_ticks(*pid) as f64 / 100.0).collect()
}

/// Microseconds of CPU per message on each node between two samples.
fn per_message_us(before: &[f64], after: &[f64], messages: usize) -> Vec<f64> {
    before.iter().zip(after).map(|(b, a)| (a - b) * 1e6 / messages.max(1) as f64).collect()
}

fn show_us(per_node: &[f64]) -> String {
    if per_node.is_empty() {
        return "n/a (no broker pid)".to_owned();
    }
    let total: f64 = per_node.iter().sum();
    let nodes: Vec<String> = per_node.iter().map(|us| format!("{us:.0}")).collect();
    format!("{} (sum {total:.0})", nodes.join(" / "))
}
