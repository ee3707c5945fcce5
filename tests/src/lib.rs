//! Helpers for black-box tests and benchmarks of `ingest` and `worker`.
//!
//! Tests run the real applications in-process on random ports (the same
//! `Application::build` that `main` uses) against the real RabbitMQ and
//! PostgreSQL of the machine. Every test gets its own exchange, queues and
//! database, named `test.<uuid>...`, and removes them at the end, also when
//! it panics ([`TestApp`]); `deploy/test.sh` sweeps leftovers of crashed runs.

pub mod app;
pub mod binaries;
pub mod broker;
pub mod corpus;
pub mod one_ingest;
pub mod otlp;
pub mod proxy;
pub mod receiver;
pub mod samples;

use clap::Parser;
use dlr_shared::amqp::Topology;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use app::TestApp;
pub use broker::TestBroker;
pub use one_ingest::OneIngest;

/// Set by a tool's `--amqp-url`: it wins over `AMQP_URL`.
static AMQP_URLS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes [`amqp_urls`] return `urls` instead of `AMQP_URL` (a tool's
/// `--amqp-url`; the environment cannot be changed safely at run time).
pub fn set_amqp_urls(urls: &str) {
    let _ = AMQP_URLS.set(urls.to_owned());
}

/// Every broker address given: `AMQP_URL` (a single URI, or a
/// comma-separated list of a cluster's nodes) or the local default. What
/// ingest and worker processes are given.
pub fn amqp_urls() -> String {
    AMQP_URLS
        .get()
        .cloned()
        .or_else(|| std::env::var("AMQP_URL").ok())
        .unwrap_or_else(|| dlr_shared::config::DEFAULT_AMQP_URL.to_owned())
}

/// The broker the tests' own connections use: the first of [`amqp_urls`].
pub fn amqp_url() -> String {
    amqp_urls().split(',').next().unwrap_or_default().trim().to_owned()
}

/// The PostgreSQL server tests use (a database is created per test).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The seed's sample receipt as a query string / form body.
pub const SEED_FORM: &str = "msisdn=14155551234&to=12015556666&network-code=310090&messageId=02000000FEA5EE9B&price=0.00570000&status=delivered&scts=1208121359&err-code=0&message-timestamp=2016-10-19+22%3A40%3A30";

/// The seed's sample receipt as Vonage's POST-JSON.
pub const SEED_JSON: &str = r#"{"msisdn":"14155551234","to":"12015556666","network-code":"310090","messageId":"02000000FEA5EE9B","price":"0.00570000","status":"delivered","scts":"1208121359","err-code":"0","message-timestamp":"2016-10-19 22:40:30"}"#;

/// A Vonage SMS receipt form body with the given id and status.
pub fn vonage_form(message_id: &str, status: &str) -> String {
    format!(
        "msisdn=447700900123&to=AcmeShop&network-code=23415&messageId={message_id}&price=0.03330000&status={status}&scts=2503140926&err-code=0&message-timestamp=2025-03-14+09%3A26%3A41"
    )
}

/// POSTs a Vonage SMS receipt form to the ingest at `base_url` (`http://addr`),
/// for callers that need the transport error too (a load that outlives one
/// ingest, a request racing a shutdown).
pub async fn send_vonage_form(
    client: &reqwest::Client,
    base_url: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base_url}/dlr/vonage"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
}

/// Unique broker names for one test.
pub fn unique_topology() -> Topology {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let base = format!("test.{}", &id[..12]);
    Topology {
        exchange: base.clone(),
        queue: format!("{base}.receipts"),
        parked_queue: format!("{base}.parked"),
        quarantine_queue: format!("{base}.quarantine"),
        quarantine_max_length: 100,
        delivery_limit: 20,
        ..Topology::default()
    }
}

/// An ingest running in this process.
pub struct TestIngest {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub base_url: String,
    /// HTTP client for calls.
    pub client: reqwest::Client,
    /// Fires the same shutdown path as SIGTERM.
    pub shutdown: CancellationToken,
    /// The serving task; completes after the drain.
    pub handle: JoinHandle<()>,
}

/// Default ingest config for tests: random port, the given names, `amqp_url`.
pub fn ingest_config(topology: &Topology, amqp_url: &str) -> dlr_ingest::Config {
    let mut config = dlr_ingest::Config::parse_from(["ingest", "--addr", "127.0.0.1:0"]);
    config.broker.url = amqp_url.to_owned().into();
    config.broker.topology = topology.clone();
    config.drain_timeout = Duration::from_secs(10);
    config
}

/// With `TEST_LOG` set, the apps' logs go to the test output (filtered by
/// `RUST_LOG`), as zero-to-production's tests do; silent otherwise.
fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts ingest with `config`.
pub async fn spawn_ingest(config: dlr_ingest::Config) -> TestIngest {
    init_test_log();
    let app = dlr_ingest::Application::build(config).await.expect("ingest builds");
    let addr = app.local_addr().expect("bound");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(token).await.expect("ingest runs");
    });
    TestIngest {
        addr,
        base_url: format!("http://{addr}"),
        client: reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client"),
        shutdown,
        handle,
    }
}

impl TestIngest {
    /// GET `/dlr/vonage?query`.
    pub async fn get_vonage(&self, query: &str) -> reqwest::Response {
        self.client.get(format!("{}/dlr/vonage?{query}", self.base_url)).send().await.expect("request")
    }

    /// POST a body with a content type to `path`.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// POST a form body to `/dlr/vonage`.
    pub async fn post_vonage_form(&self, body: &str) -> reqwest::Response {
        self.post("/dlr/vonage", "application/x-www-form-urlencoded", body.to_owned()).await
    }

    /// Status of `/readyz`.
    pub async fn ready_status(&self) -> u16 {
        self.client
            .get(format!("{}/readyz", self.base_url))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Waits until `/readyz` answers 200 (the broker connection is up).
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.ready_status().await == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits until ingest's broker connection is up (`dlr_ingest_broker_connected`).
    /// Not the same as ready: `/readyz` stays 200 for a grace period after
    /// the connection is lost, so after an outage only this says that
    /// receipts can be stored again.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if metric_value(&self.metrics().await, "dlr_ingest_broker_connected", &[]) == 1.0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// Fires shutdown and waits for the drain to finish. A panic or error
    /// of the serving task (`run_until_stopped` failing panics it) fails
    /// the calling test here, instead of being dropped with the handle.
    pub async fn stop(self) {
        self.shutdown.cancel();
        ended_cleanly("ingest", self.handle.await);
    }
}

/// Fails the calling test unless an app's task returned normally: its
/// panic (the task panics when `run_until_stopped` returns an error) is
/// re-raised here with its own message, and a task aborted before its
/// drain ended is a failure too.
pub fn ended_cleanly(app: &str, joined: Result<(), tokio::task::JoinError>) {
    match joined {
        Ok(()) => {}
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("the {app} task did not end by itself: {error}"),
    }
}

/// Polls `check` until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port for a child process to bind, chosen below the
/// kernel's range for outgoing connections (`ip_local_port_range`). A port
/// from `bind(":0")` comes from that range, and between our check and the
/// child's bind an outgoing connection can take it: the harness's nginx
/// once failed with "Address already in use" that way.
pub fn free_port() -> std::io::Result<u16> {
    free_port_below(ephemeral_ports_start().unwrap_or(32768))
}

/// First port of the kernel's range for outgoing connections.
fn ephemeral_ports_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

fn free_port_below(ephemeral_start: u16) -> std::io::Result<u16> {
    const LOWEST: u16 = 10_000;
    if ephemeral_start > LOWEST + 1_000 {
        let span = u32::from(ephemeral_start - LOWEST);
        // Different runs start at different places, so two harnesses at
        // once rarely probe the same ports.
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for step in 0..span {
            let port = LOWEST + ((seed.wrapping_add(step.wrapping_mul(7_919))) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sum of a metric's samples whose label set contains all `labels`
/// (`name{a="b"}` lines of the Prometheus text format).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|line| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A worker running in this process.
pub struct TestWorker {
    /// Probe/metrics address.
    pub addr: SocketAddr,
    /// Fires the same shutdown path as SIGTERM.
    pub shutdown: CancellationToken,
    /// The running task; completes after the drain.
    pub handle: JoinHandle<()>,
}

/// Default worker config for tests: random probe port, the given names,
/// short retry delays (50 ms .. 200 ms) so retry tests take seconds.
pub fn worker_config(topology: &Topology, amqp_url: &str) -> dlr_worker::Config {
    let cli = dlr_worker::config::Cli::parse_from([
        "worker",
        "--addr",
        "127.0.0.1:0",
        "--retry-initial-delay-ms",
        "50",
        "--retry-max-delay-ms",
        "200",
        "--max-attempts",
        "4",
        "--prefetch",
        "20",
    ]);
    let mut config = cli.config;
    config.broker.url = amqp_url.to_owned().into();
    config.broker.topology = topology.clone();
    config.events_exchange = format!("{}.events", topology.exchange);
    config.drain_timeout = Duration::from_secs(10);
    config
}

/// The delay queues a worker with `config`'s retry settings declares.
pub fn retry_queues(config: &dlr_worker::Config) -> Vec<String> {
    dlr_worker::retry::RetryPolicy::new(
        config.max_attempts,
        config.retry_initial_delay,
        config.retry_max_delay,
    )
    .delays()
    .into_iter()
    .map(|delay| config.broker.topology.retry_queue(delay))
    .collect()
}

/// Starts a worker with `config`.
pub async fn spawn_worker(config: dlr_worker::Config) -> TestWorker {
    init_test_log();
    let app = dlr_worker::Application::build(config).await.expect("worker builds");
    let addr = app.local_addr().expect("bound");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(token).await.expect("worker runs");
    });
    TestWorker { addr, shutdown, handle }
}

impl TestWorker {
    /// Waits until `/readyz` says the worker consumes.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = client.get(format!("http://{}/readyz", self.addr)).send().await
                && r.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// Fires shutdown and waits for the drain; like [`TestIngest::stop`],
    /// a task that panicked or failed fails the calling test.
    pub async fn stop(self) {
        self.shutdown.cancel();
        ended_cleanly("worker", self.handle.await);
    }
}

/// A throw-away PostgreSQL database, dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    /// URL of the new database.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates `test_<uuid>` on the server of `database_url()`.
    pub async fn create() -> Self {
        use sqlx::Connection;
        let server = database_url();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            sqlx::PgConnection::connect(&server).await.expect("PostgreSQL is reachable (DATABASE_URL)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create database");
        let mut url = url::Url::parse(&server).expect("DATABASE_URL parses");
        url.set_path(&name);
        Self { url: url.to_string(), name }
    }

    /// A pool on the test database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.expect("connect test database")
    }

    /// Drops the database (forcing other sessions off).
    pub async fn drop_database(self) {
        drop_database_named(&self.name).await;
    }
}

/// Drops database `name` of the server of `database_url()`, if it exists
/// (forcing other sessions off).
async fn drop_database_named(name: &str) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(&database_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

/// A memory alarm on the machine's broker for as long as the value lives
/// (`rabbitmqctl set_vm_memory_high_watermark`, as the reliability harness
/// does). The watermark found at start is restored on drop, also when the
/// test panics. Only for `#[ignore]`d tests that run alone.
pub struct MemoryAlarm {
    previous: Vec<String>,
}

impl MemoryAlarm {
    /// Sets a watermark so low that the broker blocks publishers at once.
    pub fn raise() -> Self {
        let previous = current_watermark();
        assert!(set_watermark(&["0.0000001".to_owned()]), "could not lower the memory watermark");
        Self { previous }
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if !set_watermark(&self.previous) {
            eprintln!(
                "RESTORE BY HAND: rabbitmqctl set_vm_memory_high_watermark {}",
                self.previous.join(" ")
            );
        }
    }
}

/// `rabbitmqctl`, or the command in `DLR_RABBITMQCTL` (split on spaces,
/// e.g. `bash deploy/cluster.sh ctl 1`): the alarm tests then alter a node
/// of the local cluster instead of the machine's broker.
fn rabbitmqctl() -> std::process::Command {
    let configured = std::env::var("DLR_RABBITMQCTL").unwrap_or_default();
    let mut words = configured.split_whitespace();
    let mut command = std::process::Command::new(words.next().unwrap_or("rabbitmqctl"));
    command.args(words);
    command
}

/// The broker's memory watermark as `rabbitmqctl set_vm_memory_high_watermark` takes it.
fn current_watermark() -> Vec<String> {
    let output = rabbitmqctl()
        .args(["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
        .output()
        .expect("rabbitmqctl runs (the broker is local)");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(output.status.success(), "rabbitmqctl eval failed: {text}");
    if text.parse::<f64>().is_ok() {
        return vec![text];
    }
    // Newer brokers answer `{absolute,Bytes}` or `{relative,Fraction}`.
    let inner = text.trim_start_matches('{').trim_end_matches('}');
    match inner.split_once(',') {
        Some(("absolute", bytes)) => vec!["absolute".to_owned(), bytes.trim().to_owned()],
        Some(("relative", fraction)) => vec![fraction.trim().to_owned()],
        _ => panic!("unexpected watermark {text:?}: not touching the broker"),
    }
}

fn set_watermark(args: &[String]) -> bool {
    rabbitmqctl().arg("set_vm_memory_high_watermark").args(args).output().is_ok_and(|o| o.status.success())
}

/// An operator policy on the machine's broker for as long as the value
/// lives, cleared on drop (also when the test panics). Its pattern is one
/// queue's exact name, so a test's unique queue is the only one it touches:
/// the way README tells operators to bound a queue created before a limit
/// became a queue argument.
pub struct OperatorPolicy {
    name: String,
}

impl OperatorPolicy {
    /// `rabbitmqctl set_operator_policy <name> ^<queue>$ <definition> --apply-to queues`.
    pub fn on_queue(queue: &str, definition: &str) -> Self {
        let name = format!("{queue}.limits");
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        let output = rabbitmqctl()
            .args(["set_operator_policy", &name, &pattern, definition, "--apply-to", "queues"])
            .output()
            .expect("rabbitmqctl runs (the broker is local)");
        assert!(output.status.success(), "set_operator_policy: {}", String::from_utf8_lossy(&output.stderr));
        Self { name }
    }
}

impl Drop for OperatorPolicy {
    fn drop(&mut self) {
        let cleared = rabbitmqctl().args(["clear_operator_policy", &self.name]).output();
        if !cleared.is_ok_and(|o| o.status.success()) {
            eprintln!("CLEAR BY HAND: rabbitmqctl clear_operator_policy {}", self.name);
        }
    }
}

/// The `q` quantile (0..=1) of ascending `sorted` values by nearest rank
/// (the smallest value with at least `q` of the values at or below it);
/// the default (zero) when empty. The one definition the benchmarks and the
/// reliability harness report with.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentile_is_the_nearest_rank() {
        let values: Vec<u64> = (1..=10).collect();
        assert_eq!(super::percentile(&values, 0.5), 5);
        assert_eq!(super::percentile(&values, 0.99), 10);
        assert_eq!(super::percentile(&values, 0.0), 1);
        assert_eq!(super::percentile(&[2.5_f64], 0.5), 2.5);
        assert_eq!(super::percentile::<u64>(&[], 0.5), 0);
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_free() {
        for _ in 0..20 {
            let port = super::free_port_below(32768).expect("a free port");
            assert!((10_000..32768).contains(&port), "{port}");
            assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "{port} is free");
        }
        // No room below the range: the kernel's choice.
        assert!(super::free_port_below(10_500).expect("a port") > 0);
    }
}
