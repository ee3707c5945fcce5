//! [`TestApp`]: one test's broker names, the apps it started, and their
//! removal, also when the test panics.
//!
//! A test creates a `TestApp`, starts ingest and workers through it (or
//! registers what else it declares), and ends with [`TestApp::cleanup`].
//! If the test panics before that, dropping the `TestApp` stops the apps it
//! started and deletes the same queues and exchanges from a thread of its
//! own (`Drop` cannot await), bounded by [`DROP_CLEANUP_WITHIN`]. The
//! `test.*` sweep of `deploy/test.sh` is then only a safety net.

use crate::{TestBroker, TestDatabase, TestIngest, TestWorker, amqp_url, unique_topology};
use dlr_shared::ReceiptEvent;
use dlr_shared::amqp::Topology;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// Opts every provider out of signature checks (explicit `off`), as an
/// operator would for a demo: without credentials or an explicit mode a
/// provider is not served at all.
pub fn serve_unsigned(config: &mut dlr_ingest::Config) {
    config.providers.set_every_mode(Some(dlr_ingest::signature::SignatureMode::Off));
}

/// How long the clean-up of a dropped (panicked) test may take.
pub const DROP_CLEANUP_WITHIN: Duration = Duration::from_secs(10);

/// What a test owns on the broker, beyond its topology's three queues and
/// exchange.
#[derive(Default)]
struct Owned {
    queues: Vec<String>,
    exchanges: Vec<String>,
    /// Names of the databases created through the fixture.
    databases: Vec<String>,
    /// Shutdown token and task of every app started through the fixture.
    apps: Vec<(CancellationToken, AbortHandle)>,
}

/// One test's unique topology, a broker connection for assertions, and
/// everything to remove at the end.
pub struct TestApp {
    /// The test's exchange and queues (`test.<id>...`).
    pub topology: Topology,
    /// `<exchange>.events`, the worker's events exchange in [`TestApp::worker_config`].
    pub events_exchange: String,
    /// The test's own broker connection.
    pub broker: TestBroker,
    owned: Mutex<Owned>,
    cleaned: AtomicBool,
}

impl TestApp {
    /// A fresh unique topology ([`unique_topology`]) and a broker connection.
    pub async fn new() -> Self {
        Self::with_topology(unique_topology()).await
    }

    /// `topology` (a unique one, adjusted) and a broker connection.
    pub async fn with_topology(topology: Topology) -> Self {
        let broker = TestBroker::connect().await;
        let events_exchange = format!("{}.events", topology.exchange);
        Self {
            topology,
            owned: Mutex::new(Owned { exchanges: vec![events_exchange.clone()], ..Owned::default() }),
            events_exchange,
            broker,
            cleaned: AtomicBool::new(false),
        }
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ingest's test config ([`crate::ingest_config`]) on this topology and
    /// `amqp_url()`, with every provider served unsigned ([`serve_unsigned`]):
    /// most tests post unsigned receipts. Tests of the signature checks set
    /// their provider's mode and secret on top.
    pub fn ingest_config(&self) -> dlr_ingest::Config {
        let mut config = crate::ingest_config(&self.topology, &amqp_url());
        serve_unsigned(&mut config);
        config
    }

    /// The worker's test config ([`crate::worker_config`]) on this topology and `amqp_url()`.
    pub fn worker_config(&self) -> dlr_worker::Config {
        crate::worker_config(&self.topology, &amqp_url())
    }

    /// [`TestApp::ingest_config`] reaching the broker at `amqp_url` (a proxy, several addresses).
    pub fn ingest_config_at(&self, amqp_url: &str) -> dlr_ingest::Config {
        let mut config = crate::ingest_config(&self.topology, amqp_url);
        serve_unsigned(&mut config);
        config
    }

    /// Starts ingest with `config`; it is stopped by the drop clean-up.
    pub async fn spawn_ingest(&self, config: dlr_ingest::Config) -> TestIngest {
        let ingest = crate::spawn_ingest(config).await;
        self.owned().apps.push((ingest.shutdown.clone(), ingest.handle.abort_handle()));
        ingest
    }

    /// Starts ingest with `config` and waits until it is ready.
    pub async fn start_ingest(&self, config: dlr_ingest::Config, within: Duration) -> TestIngest {
        let ingest = self.spawn_ingest(config).await;
        assert!(ingest.wait_ready(within).await, "ingest never became ready (is RabbitMQ running?)");
        ingest
    }

    /// Starts a worker with `config`; its events exchange and delay queues
    /// are removed with the topology, and it is stopped by the drop clean-up.
    pub async fn spawn_worker(&self, config: dlr_worker::Config) -> TestWorker {
        self.own_worker_names(&config);
        let worker = crate::spawn_worker(config).await;
        self.owned().apps.push((worker.shutdown.clone(), worker.handle.abort_handle()));
        worker
    }

    /// Starts a worker with `config` and waits until it consumes.
    pub async fn start_worker(&self, config: dlr_worker::Config, within: Duration) -> TestWorker {
        let worker = self.spawn_worker(config).await;
        assert!(worker.wait_ready(within).await, "the worker starts consuming");
        worker
    }

    /// Records the events exchange and delay queues a worker (in-process or
    /// not) with `config` declares, for removal.
    pub fn own_worker_names(&self, config: &dlr_worker::Config) {
        self.own_exchange(&config.events_exchange);
        for queue in crate::retry_queues(config) {
            if config.broker.topology.is_sharded() {
                // A sharded delay queue has a fanout exchange of the same name.
                self.own_exchange(&queue);
            }
            self.own_queue(&queue);
        }
    }

    /// Records a queue the test declares (or makes a process declare), for removal.
    pub fn own_queue(&self, queue: &str) {
        let mut owned = self.owned();
        if !owned.queues.iter().any(|q| q == queue) {
            owned.queues.push(queue.to_owned());
        }
    }

    /// Records an exchange the test declares (or makes a process declare), for removal.
    pub fn own_exchange(&self, exchange: &str) {
        let mut owned = self.owned();
        if !owned.exchanges.iter().any(|e| e == exchange) {
            owned.exchanges.push(exchange.to_owned());
        }
    }

    /// A throw-away database ([`TestDatabase::create`]), dropped with the topology.
    pub async fn create_database(&self) -> TestDatabase {
        let database = TestDatabase::create().await;
        self.owned().databases.push(database.name.clone());
        database
    }

    /// Declares `<exchange>.capture`, bound with `#` to [`TestApp::events_exchange`]
    /// (which a worker must have declared), so the test sees every event
    /// republished; returns the queue's name. Removed with the topology.
    pub async fn capture(&self) -> String {
        let queue = format!("{}.capture", self.topology.exchange);
        self.own_queue(&queue);
        self.broker.capture(&self.topology.exchange, &self.events_exchange).await
    }

    /// The `AMQP_*` settings that give a process this topology (URL,
    /// exchange, the three queues, the quarantine's length).
    pub fn topology_env(&self) -> Vec<(&'static str, String)> {
        let topology = &self.topology;
        vec![
            ("AMQP_URL", amqp_url()),
            ("AMQP_EXCHANGE", topology.exchange.clone()),
            ("AMQP_QUEUE", topology.queue.clone()),
            ("AMQP_PARKED_QUEUE", topology.parked_queue.clone()),
            ("AMQP_QUARANTINE_QUEUE", topology.quarantine_queue.clone()),
            ("AMQP_QUARANTINE_MAX_LENGTH", topology.quarantine_max_length.to_string()),
            ("AMQP_QUARANTINE_MAX_BYTES", topology.quarantine_max_bytes.to_string()),
            ("AMQP_RECEIPT_SHARDS", topology.receipt_shards.to_string()),
        ]
    }

    /// Takes exactly `count` receipt events from the receipts queue (within
    /// `within`), then asserts that no more arrive within `settle`.
    pub async fn receipts(&self, count: usize, within: Duration, settle: Duration) -> Vec<ReceiptEvent> {
        let messages = self.broker.take(&self.topology.queue, count, within).await;
        assert_eq!(messages.len(), count, "receipts published");
        let events: Vec<ReceiptEvent> = messages
            .iter()
            .map(|m| ReceiptEvent::from_json(&m.delivery.data).expect("published body is a ReceiptEvent"))
            .collect();
        self.assert_no_receipts(settle).await;
        events
    }

    /// Asserts that the receipts queue yields nothing within `settle`.
    pub async fn assert_no_receipts(&self, settle: Duration) {
        let extra = self.broker.drain(&self.topology.queue, settle).await;
        let ids: Vec<String> = extra
            .iter()
            .map(|m| {
                ReceiptEvent::from_json(&m.delivery.data)
                    .map(|e| e.message_id.to_string())
                    .unwrap_or_else(|_| String::from_utf8_lossy(&m.delivery.data).into_owned())
            })
            .collect();
        assert!(ids.is_empty(), "nothing else may be published to the receipts queue, found {ids:?}");
    }

    /// Takes every quarantined copy (waiting `settle` for stragglers), parsed as JSON.
    pub async fn quarantined(&self, settle: Duration) -> Vec<serde_json::Value> {
        self.broker
            .drain(&self.topology.quarantine_queue, settle)
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.delivery.data).expect("quarantine copy is JSON"))
            .collect()
    }

    /// Every queue and exchange to remove: the topology's and those recorded.
    fn names(&self) -> (Vec<String>, Vec<String>) {
        let owned = self.owned();
        let topology = &self.topology;
        let mut queues =
            vec![topology.queue.clone(), topology.parked_queue.clone(), topology.quarantine_queue.clone()];
        if topology.is_sharded() {
            queues.extend(topology.receipt_queues().into_iter().map(|(queue, _)| queue));
        }
        queues.extend(owned.queues.iter().cloned());
        let mut exchanges = vec![topology.exchange.clone()];
        exchanges.extend(owned.exchanges.iter().cloned());
        (queues, exchanges)
    }

    /// Removes the test's queues and exchanges (the normal end of a test;
    /// stop the apps first). Apps still running are told to shut down.
    pub async fn cleanup(&self) {
        for (shutdown, _) in &self.owned().apps {
            shutdown.cancel();
        }
        let (queues, exchanges) = self.names();
        self.broker.delete_all(&queues, &exchanges).await;
        let databases = std::mem::take(&mut self.owned().databases);
        for name in &databases {
            crate::drop_database_named(name).await;
        }
        self.cleaned.store(true, Ordering::SeqCst);
    }
}

impl Drop for TestApp {
    /// The panic path: [`TestApp::cleanup`] was not reached. Stops the
    /// apps, then deletes the names over a connection of its own on a
    /// thread of its own, within [`DROP_CLEANUP_WITHIN`].
    fn drop(&mut self) {
        if self.cleaned.load(Ordering::SeqCst) {
            return;
        }
        for (shutdown, task) in &self.owned().apps {
            shutdown.cancel();
            task.abort();
        }
        let (queues, exchanges) = self.names();
        let databases = std::mem::take(&mut self.owned().databases);
        block_on_own_thread(DROP_CLEANUP_WITHIN, async move {
            for name in &databases {
                crate::drop_database_named(name).await;
            }
            let Ok(connection) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            else {
                return;
            };
            let Ok(channel) = connection.create_channel().await else { return };
            for queue in &queues {
                let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
            }
            for exchange in &exchanges {
                let _ =
                    channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
            }
            let _ = connection.close(200, "test clean-up".into()).await;
        });
    }
}

/// Runs `work` to completion (or until `within` passes) on a new thread
/// with its own small runtime, and waits for it: async clean-up from
/// `Drop`, which may run inside or outside a runtime, and while panicking.
pub(crate) fn block_on_own_thread(within: Duration, work: impl Future<Output = ()> + Send + 'static) {
    let thread = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async move {
            if tokio::time::timeout(within, work).await.is_err() {
                eprintln!("test clean-up did not finish within {within:?}; deploy/test.sh sweeps the rest");
            }
        });
    });
    let _ = thread.join();
}
