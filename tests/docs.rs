//! The README against the binaries: what an operator reads must be what the
//! processes do. Two lists drift silently when a metric or a setting is added
//! in code only (or renamed, or removed), so both are compared with what the
//! real binaries expose, in both directions:
//!
//! * the metric names of the README's `## Metrics` section against the
//!   `dlr_*` families on `/metrics` of a running ingest and worker;
//! * the variables in the first column of the `## Configuration` tables
//!   against the `[env: …]` names that `ingest --help`, `worker --help` and
//!   every worker subcommand's `--help` print (clap's own list of what the
//!   binaries read);
//! * the README's routing-key examples (one row per provider) against the
//!   keys the amqp handler publishes when each provider's sample, with the
//!   documented status word, goes through ingest and the worker.
//!
//! A separate test binary: the second test builds and runs the executables,
//! and neither shares state with the integration tests.

use dlr_tests::{SEED_FORM, TestApp, binaries, corpus, eventually, metric_value, samples};
use std::collections::BTreeSet;
use std::time::Duration;

/// The README as committed next to this crate.
fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The lines of the level-2 section `heading` (`## Metrics`), subsections
/// included, up to the next level-2 heading.
fn section<'a>(readme: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = readme.lines().skip_while(|line| line.trim_end() != heading);
    assert!(lines.next().is_some(), "README has no section {heading:?}");
    lines.take_while(|line| !line.starts_with("## ")).collect()
}

/// The contents of every `code span` in `text`.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// Metric names the README documents: every code span of `## Metrics` that
/// starts with `dlr_`, without its label list (`dlr_x_total{a,b}` -> `dlr_x_total`).
fn documented_metrics(readme: &str) -> BTreeSet<String> {
    section(readme, "## Metrics")
        .into_iter()
        .flat_map(code_spans)
        .filter(|span| span.starts_with("dlr_"))
        .map(|span| span.split('{').next().unwrap_or(span).to_owned())
        .collect()
}

/// `dlr_*` family names in a Prometheus text exposition (its `# TYPE` lines,
/// one per family, histograms under their base name).
fn exported_metrics(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| name.starts_with("dlr_"))
        .map(str::to_owned)
        .collect()
}

/// A variable name as the tables write it: upper case, digits, underscores.
fn is_variable(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_uppercase())
        && text.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Variables the README documents: the code spans in the first column of
/// every table row of `## Configuration` (header and separator rows have none).
fn documented_variables(readme: &str) -> BTreeSet<String> {
    section(readme, "## Configuration")
        .into_iter()
        .filter_map(|line| line.strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .flat_map(code_spans)
        .filter(|span| is_variable(span))
        .map(str::to_owned)
        .collect()
}

/// The `[env: NAME=…]` names of a clap `--help` text.
fn help_variables(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            is_variable(&name).then_some(name)
        })
        .collect()
}

/// The subcommands a clap `--help` lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// `binary args… --help`'s output; it must exit 0.
fn help(binary: &str, args: &[&str]) -> String {
    let mut args = args.to_vec();
    args.push("--help");
    let run = binaries::run(binary, &args, &[]);
    assert!(run.output.status.success(), "{binary} {args:?} failed: {}", run.text());
    run.text()
}

/// Both directions of a comparison, as one readable failure.
fn assert_same(what: &str, documented: &BTreeSet<String>, actual: &BTreeSet<String>, actual_name: &str) {
    let undocumented: Vec<_> = actual.difference(documented).collect();
    let stale: Vec<_> = documented.difference(actual).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "{what}: in {actual_name} but not in the README: {undocumented:?}; \
         in the README but not in {actual_name}: {stale:?}"
    );
}

#[tokio::test]
async fn the_readme_lists_exactly_the_metrics_both_binaries_export() {
    let documented = documented_metrics(&readme());
    assert!(documented.len() > 10, "parsed too few metric names from the README: {documented:?}");

    let app = TestApp::new().await;
    let ingest = app.start_ingest(app.ingest_config(), Duration::from_secs(15)).await;
    // Webhook metrics have series per configured endpoint only: give the
    // worker one, for pending receipts (the seed is delivered, so unused).
    let mut config = app.worker_config();
    config.route_pending = "log,http".to_owned();
    config.http_url_pending = Some("http://127.0.0.1:9/hook".parse().expect("a URL"));
    config.http_secret = Some("whsec_c2VlZA==".to_owned().into());
    let worker = app.start_worker(config, Duration::from_secs(15)).await;
    // One receipt through both, so that series created on first use (a
    // route's status code, a handler's result) are on the page too.
    let response = ingest.get_vonage(SEED_FORM).await;
    assert_eq!(response.status(), 200, "the sample receipt is accepted");
    let handled = eventually(Duration::from_secs(15), async || {
        metric_value(&worker.metrics().await, "dlr_worker_handler_results_total", &[("result", "ok")]) >= 1.0
    })
    .await;
    assert!(handled, "the worker handled the receipt");

    let mut exported = exported_metrics(&ingest.metrics().await);
    exported.extend(exported_metrics(&worker.metrics().await));
    ingest.stop().await;
    worker.stop().await;
    app.cleanup().await;

    assert_same("metrics", &documented, &exported, "/metrics of ingest and worker");
}

#[test]
fn the_readme_configuration_tables_list_every_variable_the_binaries_read() {
    let documented = documented_variables(&readme());
    assert!(documented.len() > 10, "parsed too few variables from the README: {documented:?}");

    let mut read = help_variables(&help("ingest", &[]));
    let worker_help = help("worker", &[]);
    read.extend(help_variables(&worker_help));
    let commands = subcommands(&worker_help);
    assert!(commands.iter().any(|c| c == "replay-parked"), "worker subcommands parsed: {commands:?}");
    for command in &commands {
        read.extend(help_variables(&help("worker", &[command])));
    }

    assert_same("configuration", &documented, &read, "the binaries' --help");
}

/// One row of the README's routing-key table: provider, the status words
/// it names, the routing keys it promises for them (in the same order).
struct RoutingKeyRow {
    provider: String,
    words: Vec<String>,
    keys: Vec<String>,
}

/// The table that follows the `routing-keys` anchor.
fn documented_routing_keys(readme: &str) -> Vec<RoutingKeyRow> {
    readme
        .lines()
        .skip_while(|line| !line.contains(r#"id="routing-keys""#))
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // header and separator
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let spans = |i: usize| -> Vec<String> {
                cells.get(i).map(|c| code_spans(c).map(str::to_owned).collect()).unwrap_or_default()
            };
            RoutingKeyRow {
                provider: cells.first().copied().unwrap_or_default().to_owned(),
                words: spans(1),
                keys: spans(2),
            }
        })
        .collect()
}

/// Each provider's sample from its `samples/` folder (by the README's name): its
/// route, content type (empty: a GET whose query is the sample), the sample,
/// and its status as `(text before, word, text after)`.
type Sample =
    (&'static str, &'static str, &'static str, &'static str, (&'static str, &'static str, &'static str));
const SAMPLES: [Sample; 6] = [
    ("Vonage SMS", "/dlr/vonage", "", corpus::S2_QUERY, ("status=", "failed", "&")),
    ("Vonage Messages", "/dlr/vonage-messages", JSON, corpus::S5, (STATUS, "submitted", "\"")),
    // Samples with an ErrorCode: ingest refuses a failed status without one (Twilio and Plivo send it).
    ("Twilio", "/dlr/twilio", FORM, corpus::S7, ("MessageStatus=", "undelivered", "&")),
    (
        "Telnyx",
        "/dlr/telnyx",
        JSON,
        include_str!("../ingest/src/providers/telnyx/samples/telnyx-message-finalized-failed.json"),
        (STATUS, "delivery_failed", "\""),
    ),
    (
        "Plivo",
        "/dlr/plivo",
        "",
        include_str!("../ingest/src/providers/plivo/samples/plivo-undelivered.query"),
        ("Status=", "undelivered", "&"),
    ),
    (
        "Sinch",
        "/dlr/sinch",
        JSON,
        include_str!("../ingest/src/providers/sinch/samples/sinch-recipient-delivered.json"),
        (STATUS, "Delivered", "\""),
    ),
];
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";
const STATUS: &str = "\"status\":\"";

/// The request that carries one receipt of `provider` (the README's name)
/// with status `word`: the provider's sample with its status replaced
/// (Infobip: a generated report). Returns the path, content type and body.
fn sample_request(provider: &str, word: &str) -> (&'static str, &'static str, String) {
    if provider == "Infobip" {
        let mut report = samples::infobip_report(&format!("RK-{word}"), 0);
        report["status"]["name"] = word.into();
        return ("/dlr/infobip", JSON, serde_json::json!({ "results": [report] }).to_string());
    }
    let Some((_, path, content_type, sample, (before, status, after))) =
        SAMPLES.iter().find(|(name, ..)| *name == provider)
    else {
        panic!("the README's routing-key table names {provider:?}: add its sample here");
    };
    let from = format!("{before}{status}{after}");
    assert!(sample.contains(&from), "the {provider} sample contains {from:?}");
    (path, content_type, sample.trim().replacen(&from, &format!("{before}{word}{after}"), 1))
}

#[tokio::test]
async fn the_readme_routing_key_examples_are_what_the_amqp_handler_publishes() {
    let rows = documented_routing_keys(&readme());
    assert_eq!(rows.len(), 7, "one routing-key row per provider");
    let app = TestApp::new().await;
    let ingest = app.start_ingest(app.ingest_config(), Duration::from_secs(15)).await;
    let mut config = app.worker_config();
    config.route_delivered = "amqp".to_owned();
    config.route_failed = "amqp".to_owned();
    config.route_pending = "amqp".to_owned();
    let worker = app.start_worker(config, Duration::from_secs(15)).await;
    let capture = app.capture().await;

    let mut documented = Vec::new();
    for row in &rows {
        assert_eq!(row.words.len(), row.keys.len(), "{}: one routing key per status word", row.provider);
        for (word, key) in row.words.iter().zip(&row.keys) {
            let (path, content_type, body) = sample_request(&row.provider, word);
            let response = if content_type.is_empty() {
                ingest.client.get(format!("{}{path}?{body}", ingest.base_url)).send().await.expect("request")
            } else {
                ingest.post(path, content_type, body).await
            };
            assert_eq!(response.status(), 200, "{} {word}: {:?}", row.provider, response.text().await);
            documented.push(key.clone());
        }
    }
    let published: Vec<String> = app
        .broker
        .take(&capture, documented.len(), Duration::from_secs(20))
        .await
        .iter()
        .map(|m| m.delivery.routing_key.to_string())
        .collect();
    ingest.stop().await;
    worker.stop().await;
    app.cleanup().await;

    let (documented, published): (BTreeSet<_>, BTreeSet<_>) =
        (documented.into_iter().collect(), published.into_iter().collect());
    assert_same("routing keys", &documented, &published, "the amqp handler's publishes");
}

#[test]
fn the_parsers_read_what_they_should() {
    let readme = "# x\n## Metrics\n\n`dlr_a_total{x,y}`, `dlr_b` and `process_*`\n## Configuration\n\
                  | variable | default |\n|---|---|\n| `A_B`, `C_1` | `DEFAULT` |\n### sub\n| `D` | – |\n\
                  ## Next\n| `E` | |\n";
    let names = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
    assert_eq!(names(documented_metrics(readme)), ["dlr_a_total", "dlr_b"]);
    assert_eq!(names(documented_variables(readme)), ["A_B", "C_1", "D"]);
    let help = "Commands:\n  run   Consume\n  replay-parked  Move\n  help  Print\n\nOptions:\n  \
                [env: AMQP_URL]\n  [env: WORKER_ADDR=]\n";
    assert_eq!(subcommands(help), ["run", "replay-parked"]);
    assert_eq!(names(help_variables(help)), ["AMQP_URL", "WORKER_ADDR"]);
    let exposition = "# HELP dlr_x_seconds h\n# TYPE dlr_x_seconds histogram\ndlr_x_seconds_bucket{le=\"1\"} 0\n\
                      # TYPE process_cpu_seconds_total counter\n";
    assert_eq!(names(exported_metrics(exposition)), ["dlr_x_seconds"]);
    let table = "x\n<a id=\"routing-keys\"></a>text\n\n| provider | words | keys |\n|---|---|---|\n\
                 | Infobip | `A`, `B` | `d.infobip.a`, `p.infobip.b` |\n\nafter\n| `Z` | | |\n";
    let rows = documented_routing_keys(table);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].provider.as_str(), rows[0].words.as_slice()),
        ("Infobip", ["A".to_owned(), "B".to_owned()].as_slice())
    );
    assert_eq!(rows[0].keys, ["d.infobip.a", "p.infobip.b"]);
}
