//! What the worker prints under the realistic route must not leak: no
//! unmasked phone number and no message body, from our code or a library's.
//!
//! The worker runs as a real process with its stdout captured, because the
//! lines in question come from libraries (lapin logged every returned
//! message in full, the recipient included) through the subscriber the
//! binary installs; an in-process test would see a different subscriber.

use dlr_tests::binaries::binary;
use dlr_tests::{TestApp, eventually, metric_value, vonage_form};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The recipient in `vonage_form`.
const RECIPIENT: &str = "447700900123";

/// How a byte string looks in a `Debug` dump (`[52, 52, 55, ...]`): lapin
/// printed message bodies that way.
fn debug_bytes(text: &str) -> String {
    let rendered = format!("{:?}", text.as_bytes());
    rendered.trim_start_matches('[').trim_end_matches(']').to_owned()
}

/// True when a line holds a long run of comma-separated numbers: some
/// body, whatever it contained, printed as bytes.
fn dumps_bytes(line: &str) -> bool {
    line.split(|c: char| !(c.is_ascii_digit() || c == ',' || c == ' '))
        .any(|run| run.split(',').filter(|n| !n.trim().is_empty()).count() >= 16)
}

#[tokio::test]
async fn worker_logs_carry_no_phone_number_and_no_body_when_events_are_unroutable() {
    let app = TestApp::new().await;
    let ingest = app.start_ingest(app.ingest_config(), Duration::from_secs(10)).await;

    let probe = format!("127.0.0.1:{}", dlr_tests::free_port().expect("a free port"));
    let mut env = app.topology_env();
    env.extend([
        ("AMQP_DELIVERY_LIMIT", app.topology.delivery_limit.to_string()),
        ("WORKER_EVENTS_EXCHANGE", app.events_exchange.clone()),
        // The realistic route, with nothing bound to the events exchange.
        ("WORKER_ROUTE_DELIVERED", "amqp,log".to_owned()),
        ("WORKER_ADDR", probe.clone()),
        ("WORKER_RETRY_INITIAL_DELAY_MS", "50".to_owned()),
        ("WORKER_RETRY_MAX_DELAY_MS", "200".to_owned()),
        ("WORKER_MAX_ATTEMPTS", "4".to_owned()),
        ("LOG_FORMAT", "text".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]);
    // The same retry settings as the in-process worker's test config.
    app.own_worker_names(&app.worker_config());

    let mut worker = tokio::process::Command::new(binary("worker"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("worker starts");
    let mut stdout = worker.stdout.take().expect("stdout piped");
    let mut stderr = worker.stderr.take().expect("stderr piped");
    let reader = tokio::spawn(async move {
        let mut out = String::new();
        let mut err = String::new();
        let _ = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
        out + &err
    });

    let client = reqwest::Client::new();
    let metrics_url = format!("http://{probe}/metrics");
    let ready = eventually(Duration::from_secs(10), async || {
        client.get(format!("http://{probe}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;

    let sent = 3;
    let mut unroutable = 0.0;
    if ready {
        for i in 0..sent {
            let response =
                ingest.post_vonage_form(&vonage_form(&format!("0B00000{i}AAAA{i}"), "delivered")).await;
            assert_eq!(response.status(), 200);
        }
        eventually(Duration::from_secs(10), async || {
            if let Ok(response) = client.get(&metrics_url).send().await
                && let Ok(text) = response.text().await
            {
                unroutable = metric_value(&text, "dlr_worker_events_unroutable_total", &[]);
            }
            unroutable >= f64::from(sent)
        })
        .await;
    }

    if let Some(pid) = worker.id() {
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    let exited = tokio::time::timeout(Duration::from_secs(15), worker.wait()).await;
    let _ = worker.kill().await;
    let logs = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    ingest.stop().await;
    app.cleanup().await;

    assert!(ready, "worker never became ready: {logs}");
    assert!(exited.is_ok(), "worker did not exit after SIGTERM: {logs}");
    assert_eq!(unroutable, f64::from(sent), "every unroutable event is counted: {logs}");
    // The logs were captured: the log handler's lines are there, masked.
    let receipts = logs.lines().filter(|l| l.contains("receipt") && l.contains("********0123")).count();
    assert_eq!(receipts, sent as usize, "one masked log line per event expected: {logs}");
    assert!(!logs.contains(RECIPIENT), "unmasked recipient in the logs: {logs}");
    assert!(!logs.contains(&debug_bytes(RECIPIENT)), "recipient as bytes in the logs: {logs}");
    assert!(!logs.lines().any(dumps_bytes), "a message body dumped as bytes: {logs}");
    assert!(!logs.contains('\u{1b}'), "ANSI colours in logs that go to a pipe: {logs}");
    assert!(!logs.contains("lapin::"), "a lapin line got through: {logs}");
    // Three unroutable events within one interval: the operator is told,
    // once, not once per event (none at all would hide the problem).
    let warnings = logs.lines().filter(|l| l.contains("no queue bound")).count();
    assert_eq!(warnings, 1, "unroutable events are logged once per interval, not per event: {logs}");
}

#[tokio::test]
async fn a_wrong_broker_password_is_one_warning_with_the_cause_not_errors() {
    const PASSWORD: &str = "wrong-pass-7c1e9";
    // Two addresses (the same broker twice): with more than one, each
    // failure is logged with its address, the form that could carry the
    // password.
    let one = format!("amqp://guest:{PASSWORD}@{}/%2f", dlr_tests::proxy::broker_addr());
    let url = format!("{one},{one}");
    let env = [
        ("AMQP_URL", url.as_str()),
        ("INGEST_ADDR", "127.0.0.1:0"),
        ("LOG_FORMAT", "text"),
        // Each retry at debug: shows the attempts the one warning stands for.
        ("RUST_LOG", "info,dlr_shared::amqp::connection=debug"),
    ];
    let logs = dlr_tests::binaries::run_until("ingest", &env, "never printed", Duration::from_secs(4)).await;
    let attempts = logs.matches("broker connection or topology set-up failed").count();
    assert!(attempts >= 3, "several reconnect attempts within the 4 s ({attempts}): {logs}");
    let warnings = logs.lines().filter(|l| l.contains("WARN") && l.contains("ACCESS_REFUSED")).count();
    assert_eq!(warnings, 1, "one warning for {attempts} refused logins: {logs}");
    assert!(!logs.contains("ERROR"), "an ERROR for a condition that is retried: {logs}");
    // The URL's credentials never reach the logs (README: AMQP_URL is a secret).
    assert!(!logs.contains(PASSWORD), "the AMQP_URL password is in the logs: {logs}");
}

#[tokio::test]
async fn a_clean_shutdown_logs_no_error() {
    let app = TestApp::new().await;
    let mut env = app.topology_env();
    env.extend([
        ("WORKER_EVENTS_EXCHANGE", app.events_exchange.clone()),
        ("WORKER_MAX_ATTEMPTS", "2".to_owned()),
        ("WORKER_ADDR", "127.0.0.1:0".to_owned()),
        ("LOG_FORMAT", "text".to_owned()),
    ]);
    // The worker's default retry delays with two attempts: one delay queue.
    app.own_queue(&app.topology.retry_queue(Duration::from_secs(1)));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // SIGTERM as soon as the worker consumes.
    let logs = dlr_tests::binaries::run_until("worker", &env, "consuming", Duration::from_secs(10)).await;
    app.cleanup().await;
    assert!(logs.contains("consuming"), "{logs}");
    assert!(logs.contains("worker stopped"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
}
