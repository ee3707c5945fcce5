//! Reconciliation and the results table.

use super::provider::Final;
use super::scenario::Run;
use super::*;
use dlr_tests::percentile;

/// One row of the table, with the reasons to fail.
pub struct Row {
    pub name: &'static str,
    fault: String,
    sent: u64,
    accepted: usize,
    answers_429: usize,
    answers_5xx: usize,
    no_answer: usize,
    bad_sent: usize,
    bad_refused: usize,
    pub lost: Vec<String>,
    duplicates: u64,
    recovery_ms: Option<u64>,
    fault_p99_ms: u64,
    fault_max_ms: u64,
    max_to_200_ms: u64,
    catch_up_ms: Option<u64>,
    problems: Vec<String>,
}

/// Compares what the provider was told (200) with what the sinks hold.
pub async fn reconcile(run: &Run, pool: &sqlx::PgPool, sink: &sink::Sink) -> Result<Row> {
    let recorded = &run.recorded;
    let stored = scenario::stored_ids(pool, &run.prefix).await?;
    let received = sink.calls(&run.prefix);
    let mut problems = run.findings.problems(&run.prefix, &recorded.attempts);

    let valid: Vec<_> = recorded.receipts.iter().filter(|r| !r.bad).collect();
    let bad: Vec<_> = recorded.receipts.iter().filter(|r| r.bad).collect();
    let accepted: Vec<_> = valid.iter().filter(|r| r.outcome == Final::Accepted).collect();
    let mut lost: Vec<String> = accepted
        .iter()
        .filter(|r| !stored.contains(&r.message_id) || received.get(&r.message_id).is_none_or(|c| c.ok == 0))
        .map(|r| {
            let mut missing = Vec::new();
            if !stored.contains(&r.message_id) {
                missing.push("message_status");
            }
            if received.get(&r.message_id).is_none_or(|c| c.ok == 0) {
                missing.push("receiver");
            }
            format!("{} (not in {})", r.message_id, missing.join(", "))
        })
        .collect();
    lost.sort();

    let refused: Vec<_> = valid
        .iter()
        .filter_map(|r| match r.outcome {
            Final::Refused(code) => Some(format!("{} got {code}", r.message_id)),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        problems.push(format!("{} valid receipts got a final 4xx, e.g. {}", refused.len(), refused[0]));
    }
    let settled = recorded.receipts.len() as u64;
    let gave_up = valid.iter().filter(|r| r.outcome == Final::GaveUp).count() as u64
        + recorded.sent.saturating_sub(settled);
    if gave_up > 0 {
        problems.push(format!("{gave_up} receipts never got a 200 within the provider's retry window"));
    }
    let bad_accepted = bad.iter().filter(|r| r.outcome == Final::Accepted).count();
    if bad_accepted > 0 {
        problems.push(format!("{bad_accepted} malformed receipts were answered 200"));
    }
    let bad_stored =
        bad.iter().filter(|r| stored.contains(&r.message_id) || received.contains_key(&r.message_id)).count();
    if bad_stored > 0 {
        problems.push(format!("{bad_stored} malformed receipts reached a sink"));
    }
    if !lost.is_empty() {
        problems.push(format!(
            "{} acknowledged receipts lost, e.g. {}",
            lost.len(),
            lost[..lost.len().min(5)].join("; ")
        ));
    }

    let valid_attempts: Vec<_> = recorded.attempts.iter().filter(|a| !a.bad).collect();
    let count = |f: &dyn Fn(u16) -> bool| valid_attempts.iter().filter(|a| f(a.code)).count();
    // Recovery: first failure (5xx or no answer; 429 is load shedding,
    // not a fault) to the first 200 after the last failure.
    let failures: Vec<_> = valid_attempts.iter().filter(|a| a.code == 0 || a.code >= 500).collect();
    let recovery_ms = if run.kind == ScenarioKind::DownstreamOutage {
        match run.downstream {
            (Some(refused), Some(back)) => Some(back.saturating_sub(refused)),
            _ => None,
        }
    } else {
        let first = failures.iter().map(|a| a.end_ms).min();
        let last = failures.iter().map(|a| a.end_ms).max();
        match (first, last) {
            (Some(first), Some(last)) => valid_attempts
                .iter()
                .filter(|a| a.code == 200 && a.end_ms >= last)
                .map(|a| a.end_ms)
                .min()
                .map(|ok| ok - first),
            _ => None,
        }
    };
    let mut in_fault: Vec<u64> = valid_attempts
        .iter()
        .filter(|a| a.start_ms >= run.inject_ms && a.start_ms <= run.healed_ms)
        .map(|a| a.end_ms - a.start_ms)
        .collect();
    in_fault.sort_unstable();
    let max_to_200_ms = accepted.iter().map(|r| r.end_ms - r.first_ms).max().unwrap_or(0);
    let duplicates = received.values().map(|c| u64::from(c.ok.saturating_sub(1))).sum();
    problems.extend(judge(run, &valid_attempts, duplicates));

    Ok(Row {
        name: run.kind.name(),
        fault: run.fault.clone(),
        sent: recorded.sent,
        accepted: accepted.len(),
        answers_429: count(&|c| c == 429),
        answers_5xx: count(&|c| c >= 500),
        no_answer: count(&|c| c == 0),
        bad_sent: bad.len(),
        bad_refused: bad.iter().filter(|r| matches!(r.outcome, Final::Refused(400..=499))).count(),
        lost,
        duplicates,
        recovery_ms,
        fault_p99_ms: percentile(&in_fault, 0.99),
        fault_max_ms: in_fault.last().copied().unwrap_or(0),
        max_to_200_ms,
        catch_up_ms: run.caught_up_ms.map(|ms| ms.saturating_sub(run.settled_ms)),
        problems,
    })
}

/// The slowest answer allowed: ingest answers within its confirm
/// timeout, plus this margin for nginx, the HTTP stack and a loaded
/// two-core machine (the slowest answers measured were 45 ms over).
pub const ANSWER_MARGIN_MS: u64 = 2_000;
/// The first 200 after the last failed answer must come within this of
/// the fault being healed (downstream outage: the receiver's first
/// accepted delivery after it).
pub const RECOVERED_WITHIN_MS: u64 = 10_000;

/// What the table shows that must hold, beyond the loss check: the
/// fault reached the provider where it must, a graceful stop made no
/// duplicate, every answer came within the confirm timeout plus
/// [`ANSWER_MARGIN_MS`], and service was back within
/// [`RECOVERED_WITHIN_MS`] of the heal.
fn judge(run: &Run, attempts: &[&provider::Attempt], duplicates: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let failed: Vec<_> = attempts.iter().filter(|a| a.code == 0 || a.code >= 500).collect();
    // A stopped broker, a broker-wide alarm and a lost majority leave
    // ingest nothing to store to: the provider must see 503s, or the
    // fault did not happen as described. A worker kill, a rolling
    // restart and a follower's restart are meant to go unnoticed, and
    // a leader's loss may be (publishes wait for the new leader):
    // their evidence is in the fault column (the process's exit, the
    // new leader).
    let must_refuse = matches!(
        run.kind,
        ScenarioKind::BrokerRestart
            | ScenarioKind::MemoryAlarm
            | ScenarioKind::DiskAlarm
            | ScenarioKind::MajorityLoss
    );
    if must_refuse && failed.is_empty() {
        problems.push(
            "the fault produced no 5xx and no unanswered request: it did not happen as described".to_owned(),
        );
    }
    if run.kind == ScenarioKind::DownstreamOutage && run.downstream.0.is_none() {
        problems.push("the receiver refused no delivery during its outage".to_owned());
    }
    // Nothing is redelivered by a drain that acks what it finished, and
    // nothing at all happens in the baseline.
    if matches!(run.kind, ScenarioKind::Baseline | ScenarioKind::WorkerRollingRestart) && duplicates > 0 {
        problems.push(format!("{duplicates} duplicate deliveries where there must be none"));
    }
    let bound = INGEST_CONFIRM_TIMEOUT_MS + ANSWER_MARGIN_MS;
    let slow: Vec<_> = attempts.iter().filter(|a| a.end_ms - a.start_ms > bound).collect();
    if let Some(slowest) = slow.iter().map(|a| a.end_ms - a.start_ms).max() {
        problems.push(format!(
            "{} requests took longer than the confirm timeout plus {ANSWER_MARGIN_MS} ms ({bound} ms), the slowest {slowest} ms",
            slow.len()
        ));
    }
    let recovered_ms = if run.kind == ScenarioKind::DownstreamOutage {
        run.downstream.1
    } else {
        failed.iter().map(|a| a.end_ms).max().map(|last| {
            attempts
                .iter()
                .filter(|a| a.code == 200 && a.end_ms >= last)
                .map(|a| a.end_ms)
                .min()
                .unwrap_or(u64::MAX)
        })
    };
    if let Some(recovered) = recovered_ms
        && recovered > run.healed_ms + RECOVERED_WITHIN_MS
    {
        problems.push(if recovered == u64::MAX {
            "no 200 after the last failed answer".to_owned()
        } else {
            format!(
                "the first 200 after the last failure came {:.1} s after the fault was healed (at most {} s)",
                (recovered - run.healed_ms) as f64 / 1000.0,
                RECOVERED_WITHIN_MS / 1000
            )
        });
    }
    problems
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | fault | sent | 200 | 429 / 5xx / no answer | malformed → 4xx | lost | duplicates absorbed | recovery | latency in fault p99 / max | max time to 200 | sinks complete after load |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} / {} | {}/{} | **{}** | {} | {} | {} / {} ms | {} | {} |\n",
            r.name,
            r.fault,
            r.sent,
            r.accepted,
            r.answers_429,
            r.answers_5xx,
            r.no_answer,
            r.bad_refused,
            r.bad_sent,
            r.lost.len(),
            r.duplicates,
            r.recovery_ms.map(seconds).unwrap_or_else(|| "no failure seen".to_owned()),
            r.fault_p99_ms,
            r.fault_max_ms,
            seconds(r.max_to_200_ms),
            r.catch_up_ms.map(seconds).unwrap_or_else(|| "never".to_owned()),
        ));
    }
    out
}

/// Every reason to fail the run.
pub fn verdict(rows: &[Row], bad_signatures: u64, parked: &Result<super::leftovers::Parked>) -> Vec<String> {
    let mut failures: Vec<String> =
        rows.iter().flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.name))).collect();
    if bad_signatures > 0 {
        failures.push(format!("the receiver got {bad_signatures} deliveries with a bad signature"));
    }
    match parked {
        Ok(p) if p.parked > 0 => failures.push(format!("{} events were parked", p.parked)),
        Ok(_) => {}
        Err(error) => failures.push(format!("could not inspect the broker at the end: {error:#}")),
    }
    failures
}
