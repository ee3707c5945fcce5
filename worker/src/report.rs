//! `worker report`: delivery numbers from the status store, for teams that
//! look at PostgreSQL rather than Grafana and for incident write-ups.
//!
//! One row per group of messages first seen in the period (by provider,
//! country and/or network): how many, how many delivered and failed (in
//! per cent of all), still pending, never final (the sweep's synthetic
//! `no_final_receipt`), and the median time from the first receipt of a
//! message to its final one (messages with a single receipt have no such
//! time and are left out of the median).

use sqlx::PgPool;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use dlr_shared::words;

/// A column the report can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "lowercase")]
pub enum GroupBy {
    /// The provider API.
    Provider,
    /// The recipient's country (ISO 3166-1 alpha-2, or `unknown`).
    Country,
    /// The recipient's network (MCC+MNC, or `unknown`).
    Network,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Provider => "provider",
            GroupBy::Country => "COALESCE(country, 'unknown')",
            GroupBy::Network => "COALESCE(network, 'unknown')",
        }
    }
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        words::parse(s.trim()).ok_or_else(|| format!("{s:?} is not one of {}", words::list::<Self>()))
    }
}

/// Parses a period such as `90s`, `15m`, `24h` or `7d`.
pub fn parse_period(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{value:?}: expected a number and s, m, h or d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{value:?}: the unit is one of s, m, h, d")),
    };
    match number.checked_mul(seconds) {
        Some(total) if total > 0 => Ok(Duration::from_secs(total)),
        _ => Err(format!("{value:?}: must be above zero and below centuries")),
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReportRow {
    /// The group's values, in `--by` order.
    pub group: Vec<String>,
    /// Messages first seen in the period.
    pub messages: i64,
    /// Of which delivered.
    pub delivered: i64,
    /// Of which failed by the provider's word.
    pub failed: i64,
    /// Of which still pending.
    pub pending: i64,
    /// Of which never final (synthetic `no_final_receipt`).
    pub never_final: i64,
    /// Median seconds from first to final receipt.
    pub median_seconds: Option<f64>,
}

/// Reads the report of the last `since`, grouped by `by`.
pub async fn read(pool: &PgPool, since: Duration, by: &[GroupBy]) -> Result<Vec<ReportRow>, sqlx::Error> {
    let keys: Vec<&str> = by.iter().map(|g| g.column()).collect();
    let group =
        if keys.is_empty() { "ARRAY[]::text[]".to_owned() } else { format!("ARRAY[{}]", keys.join(", ")) };
    let group_by = if keys.is_empty() { String::new() } else { format!("GROUP BY {}", keys.join(", ")) };
    // Only the closed set of column expressions above is formatted in;
    // the period is a bound parameter.
    let sql = format!(
        "SELECT {group} AS \"group\",
                count(*) AS messages,
                count(*) FILTER (WHERE outcome = 'delivered') AS delivered,
                count(*) FILTER (WHERE outcome = 'failed' AND NOT synthetic) AS failed,
                count(*) FILTER (WHERE outcome = 'pending') AS pending,
                count(*) FILTER (WHERE synthetic) AS never_final,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM received_at - first_received_at)::float8)
                    FILTER (WHERE outcome <> 'pending' AND NOT synthetic AND received_at > first_received_at)
                    AS median_seconds
           FROM message_status
          WHERE COALESCE(first_received_at, received_at) >= now() - $1 * INTERVAL '1 second'
          {group_by}
          ORDER BY messages DESC, 1"
    );
    sqlx::query_as(&sql).bind(since.as_secs_f64()).fetch_all(pool).await
}

/// The report as an aligned text table.
pub fn render(rows: &[ReportRow], by: &[GroupBy]) -> String {
    let mut header: Vec<String> = by.iter().map(|g| <&str>::from(*g).to_owned()).collect();
    header.extend(
        ["messages", "delivered %", "failed %", "pending", "never-final", "median to final"]
            .map(str::to_owned),
    );
    let percent = |part: i64, whole: i64| {
        if whole == 0 { "-".to_owned() } else { format!("{:.1}", part as f64 * 100.0 / whole as f64) }
    };
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in rows {
        let mut line = row.group.clone();
        line.push(row.messages.to_string());
        line.push(percent(row.delivered, row.messages));
        line.push(percent(row.failed, row.messages));
        line.push(row.pending.to_string());
        line.push(row.never_final.to_string());
        line.push(row.median_seconds.map_or_else(|| "-".to_owned(), human_seconds));
        lines.push(line);
    }
    let widths: Vec<usize> =
        (0..lines[0].len()).map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i < by.len() {
                    format!("{cell:<w$}", w = widths[i])
                } else {
                    format!("{cell:>w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

fn human_seconds(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.1}s"),
        s if s < 7_200.0 => format!("{:.1}m", s / 60.0),
        s => format!("{:.1}h", s / 3_600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_have_units() {
        assert_eq!(parse_period("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_period("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_period("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "24", "h", "0h", "-1h", "1w", "99999999999999999999d"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_aligns_and_shows_percentages() {
        let rows = vec![ReportRow {
            group: vec!["twilio".to_owned(), "BR".to_owned()],
            messages: 8,
            delivered: 6,
            failed: 1,
            pending: 0,
            never_final: 1,
            median_seconds: Some(4.0),
        }];
        let table = render(&rows, &[GroupBy::Provider, GroupBy::Country]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("provider  country  messages"), "{table}");
        assert!(
            lines[1].contains("75.0") && lines[1].contains("12.5") && lines[1].contains("4.0s"),
            "{table}"
        );
    }
}
