//! A broker connection that keeps itself alive.
//!
//! lapin 4 can recover connections by itself, but a publish that was in
//! flight is not re-sent and a channel closed by a channel-level error stays
//! closed (lapin does not reopen a channel the broker closed). Rather than mixing its recovery with our own
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
//!
//! Before the first connection, an answer that no retry can change (the
//! broker refused the credentials, the vhost does not exist, the user may
//! not declare our queues) ends the supervisor instead: the process exits
//! with a line naming the `AMQP_URL` entry and the cause, rather than
//! retrying a typo for ever behind an unready probe. Once connected, every
//! loss is retried, whatever the cause: a broker being reconfigured or
//! restarted answers all sorts of things for a while.

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

impl NoBroker {
    /// The failures no retry can fix, one line, or `None` when some address
    /// may still answer differently (down, timed out, refused by a vhost
    /// that is only starting).
    fn permanent(&self) -> Option<String> {
        let permanent: Vec<String> = self
            .failures
            .iter()
            .enumerate()
            .filter_map(|(index, (address, error))| {
                error.permanent().map(|why| format!("AMQP_URL entry {} ({address}): {why}", index + 1))
            })
            .collect();
        (!permanent.is_empty()).then(|| permanent.join("; "))
    }
}

/// AMQP reply codes that say the configuration is wrong.
const ACCESS_REFUSED: u16 = 403;
const NOT_ALLOWED: u16 = 530;

impl ConnectError {
    /// Why no retry can help, or `None` when one may.
    fn permanent(&self) -> Option<String> {
        let (error, during) = match self {
            ConnectError::TimedOut => return None,
            ConnectError::Connect(error) => (error, "connecting"),
            ConnectError::Setup(error) => (error, "declaring the topology"),
        };
        let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else { return None };
        let text = amqp.get_message().as_str();
        match amqp.get_id() {
            ACCESS_REFUSED => Some(format!("access refused while {during} ({text})")),
            // "vhost x is down" happens while a node starts: retried.
            NOT_ALLOWED if text.contains("not found") => {
                Some(format!("{text} (check the vhost in AMQP_URL)"))
            }
            _ => None,
        }
    }
}

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
    status: Arc<Status>,
}

/// What the supervisor says about itself beyond the live connection.
#[derive(Default)]
struct Status {
    /// The last failure to connect, shown by readiness while not connected.
    last_error: std::sync::Mutex<Option<String>>,
    /// Set (with its reason) when the supervisor gave up for good.
    gave_up: std::sync::Mutex<Option<String>>,
    gave_up_signal: CancellationToken,
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
        let status = Arc::new(Status::default());
        let supervisor = Supervisor {
            addresses,
            connection_name,
            setup,
            gauge: connected_gauge,
            sender,
            wake: wake.clone(),
            redeclare: redeclare.clone(),
            reconnect: reconnect.clone(),
            status: status.clone(),
            shutdown,
        };
        let handle = tokio::spawn(supervisor.run());
        (Self { current, wake, redeclare, reconnect, status }, handle)
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

    /// Why the last connection attempt failed (no password in it), while
    /// there is no connection; for readiness to show.
    pub fn last_error(&self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves, with the reason, if the supervisor gives up for good: a
    /// permanent error (refused credentials, missing vhost, no permission)
    /// before the first connection. The process should exit then.
    pub async fn gave_up(&self) -> String {
        self.status.gave_up_signal.cancelled().await;
        self.status.gave_up.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
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
    status: Arc<Status>,
    shutdown: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        let mut failures: u64 = 0;
        let mut first = 0;
        let mut ever_connected = false;
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
                    ever_connected = true;
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
                    if !ever_connected && let Some(reason) = error.permanent() {
                        tracing::error!(%reason, "the broker refused this configuration; no retry can fix it");
                        *self.status.gave_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                        self.status.gave_up_signal.cancel();
                        return;
                    }
                    *self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(error.to_string());
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
