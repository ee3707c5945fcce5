//! A broker connection that keeps itself alive.
//!
//! lapin 4 can recover connections by itself, but a publish that was in
//! flight is not re-sent and a channel closed by a channel-level error stays
//! closed (stack.md §1.4). Rather than mixing its recovery with our own
//! channel bookkeeping, one supervisor task owns the connection: it connects
//! with capped exponential backoff, runs a setup hook (declare topology) on
//! every new connection, publishes the live connection through a `watch`
//! channel and starts over as soon as the connection stops being usable.
//! Users hold no connection of their own, so none of them can keep a dead
//! one alive, and a process can start while the broker is still down.
//!
//! With several addresses (the nodes of a cluster) the supervisor tries them
//! in order and, after losing a connection, starts with the node after the
//! one it lost: a node that just went away is the least likely to answer, so
//! losing it costs a reconnect to a sibling rather than an outage. Only after
//! every address failed does it back off.

use futures_util::future::BoxFuture;
use lapin::{Connection, ConnectionProperties};
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpAddress, AmqpUrls};

/// Runs on every new connection before it is handed out (declare topology).
pub type SetupHook =
    Arc<dyn Fn(Arc<Connection>) -> BoxFuture<'static, Result<(), lapin::Error>> + Send + Sync>;

/// Why one broker address could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No AMQP handshake within [`CONNECT_TIMEOUT`].
    #[error("connect timed out")]
    TimedOut,
    /// Refused, unreachable, bad credentials, TLS failure, ...
    #[error(transparent)]
    Connect(lapin::Error),
    /// Connected, but the topology could not be declared.
    #[error("declaring topology failed")]
    Setup(#[source] lapin::Error),
}

/// No address answered: each one's failure, for one log line.
#[derive(Debug)]
pub struct NoBroker {
    failures: Vec<(String, ConnectError)>,
}

impl std::fmt::Display for NoBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let single = self.failures.len() == 1;
        let described = self.failures.iter().map(|(address, error)| {
            let chain = crate::telemetry::describe(error);
            if single { chain } else { format!("{address}: {chain}") }
        });
        f.write_str(&described.collect::<Vec<_>>().join("; "))
    }
}

impl std::error::Error for NoBroker {}

/// How often the supervisor re-checks a connection that nobody reported.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Retry delays while the broker is unreachable: fast first, then every 2 s.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a connection close may wait for the broker's close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A TCP connect that hangs (black-holed address) must not stall recovery;
/// with several addresses it bounds the time spent on each dead node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the supervised connection; cheap to clone.
#[derive(Clone)]
pub struct BrokerConnection {
    current: watch::Receiver<Option<Arc<Connection>>>,
    wake: Arc<Notify>,
    redeclare: Arc<std::sync::atomic::AtomicBool>,
    reconnect: Arc<std::sync::atomic::AtomicBool>,
}

impl BrokerConnection {
    /// Starts the supervisor. It runs until `shutdown` is cancelled, then
    /// closes the connection; await the returned handle to know it is closed.
    pub fn start(
        addresses: AmqpUrls,
        connection_name: String,
        setup: SetupHook,
        connected_gauge: IntGauge,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (sender, current) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let redeclare = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reconnect = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let supervisor = Supervisor {
            addresses,
            connection_name,
            setup,
            gauge: connected_gauge,
            sender,
            wake: wake.clone(),
            redeclare: redeclare.clone(),
            reconnect: reconnect.clone(),
            shutdown,
        };
        let handle = tokio::spawn(supervisor.run());
        (Self { current, wake, redeclare, reconnect }, handle)
    }

    /// The live connection, if there is one right now.
    pub fn current(&self) -> Option<Arc<Connection>> {
        self.current.borrow().as_ref().filter(|c| c.status().connected()).cloned()
    }

    /// Waits until a connection is available or `cancel` fires.
    pub async fn wait_connected(&self, cancel: &CancellationToken) -> Option<Arc<Connection>> {
        let mut rx = self.current.clone();
        loop {
            if let Some(conn) = rx.borrow_and_update().as_ref().filter(|c| c.status().connected()) {
                return Some(conn.clone());
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
                // A connection can die without the watch changing; poll as well.
                _ = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {}
            }
        }
    }

    /// Tells the supervisor that an operation failed, so it checks the
    /// connection now instead of at the next health check.
    pub fn report_failure(&self) {
        self.wake.notify_one();
    }

    /// Asks the supervisor to give up the live connection and connect to the
    /// next address: the connection is up but nothing can be stored through
    /// it (its node is cut off from the queue's quorum, say).
    pub fn request_reconnect(&self) {
        self.reconnect.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Asks the supervisor to run the setup hook again on the live connection
    /// (a queue was deleted behind our back and a publish came back unroutable).
    pub fn request_redeclare(&self) {
        self.redeclare.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }
}

struct Supervisor {
    addresses: AmqpUrls,
    connection_name: String,
    setup: SetupHook,
    gauge: IntGauge,
    sender: watch::Sender<Option<Arc<Connection>>>,
    wake: Arc<Notify>,
    redeclare: Arc<std::sync::atomic::AtomicBool>,
    reconnect: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        let mut failures: u64 = 0;
        let mut first = 0;
        while !self.shutdown.is_cancelled() {
            match self.connect_any(first).await {
                Ok((conn, index)) => {
                    let address = &self.addresses.addresses()[index];
                    if failures > 0 {
                        tracing::info!(%address, failed_attempts = failures, "broker connection restored");
                    } else {
                        tracing::info!(%address, "broker connection established");
                    }
                    // After a loss, the node we were on is tried last.
                    first = index + 1;
                    failures = 0;
                    backoff = MIN_BACKOFF;
                    self.gauge.set(1);
                    self.sender.send_replace(Some(conn.clone()));
                    self.watch(&conn).await;
                    self.sender.send_replace(None);
                    self.gauge.set(0);
                    if self.shutdown.is_cancelled() {
                        // Best effort: the broker requeues anything unacked anyway.
                        // Bounded: a blocked or half-dead connection may never
                        // answer close-ok, and shutdown must end.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "shutdown".into())).await;
                        return;
                    }
                    if self.reconnect.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        // Still open: close it, bounded, so the broker frees it.
                        let _ = tokio::time::timeout(
                            CLOSE_TIMEOUT,
                            conn.close(200, "moving to another node".into()),
                        )
                        .await;
                        tracing::warn!(%address, "giving up a broker connection that stores nothing; reconnecting");
                    } else {
                        tracing::warn!(%address, "broker connection lost; reconnecting");
                    }
                }
                Err(error) => {
                    failures += 1;
                    // Log the first failure loudly and then every 30th, not every 2 s.
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(%error, attempts = failures, "broker connection or topology set-up failed; retrying");
                    } else {
                        tracing::debug!(%error, attempts = failures, "broker connection or topology set-up failed; retrying");
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Tries every address once, starting at `first` (wrapping around);
    /// returns the connection and the index of the address that answered.
    async fn connect_any(&self, first: usize) -> Result<(Arc<Connection>, usize), NoBroker> {
        let addresses = self.addresses.addresses();
        let mut failures = Vec::with_capacity(addresses.len());
        for offset in 0..addresses.len() {
            let index = (first + offset) % addresses.len();
            if self.shutdown.is_cancelled() {
                break;
            }
            match self.connect(&addresses[index]).await {
                Ok(conn) => return Ok((conn, index)),
                Err(error) => failures.push((addresses[index].to_string(), error)),
            }
        }
        Err(NoBroker { failures })
    }

    async fn connect(&self, address: &AmqpAddress) -> Result<Arc<Connection>, ConnectError> {
        let props =
            ConnectionProperties::default().with_connection_name(self.connection_name.as_str().into());
        let conn =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(address.uri().clone(), props))
                .await
                .map_err(|_| ConnectError::TimedOut)?
                .map_err(ConnectError::Connect)?;
        let conn = Arc::new(conn);
        self.redeclare.store(false, std::sync::atomic::Ordering::SeqCst);
        self.reconnect.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Err(error) = (self.setup)(conn.clone()).await {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(320, "setup failed".into())).await;
            return Err(ConnectError::Setup(error));
        }
        Ok(conn)
    }

    /// Returns when the connection is no longer usable or on shutdown.
    async fn watch(&self, conn: &Arc<Connection>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {}
            }
            if !conn.status().connected() || self.reconnect.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if self.redeclare.swap(false, std::sync::atomic::Ordering::SeqCst) {
                match (self.setup)(conn.clone()).await {
                    Ok(()) => tracing::info!("topology declared again after an unroutable publish"),
                    Err(error) => tracing::error!(%error, "re-declaring topology failed"),
                }
            }
        }
    }
}
