//! Building and running the app; `main` and the tests share this code.

use dlr_shared::amqp::{BrokerConnection, Publisher};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::metrics::IngestMetrics;
use crate::readiness::{self, BrokerReadiness};
use crate::routes::{RouterLimits, router};
use crate::state::AppState;

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// `AMQP_URL` does not parse (an unreachable broker is retried instead).
    #[error("invalid configuration: {0}")]
    BrokerAddress(#[from] dlr_shared::config::AmqpUrlError),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address from `INGEST_ADDR`.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Metric registration failed (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(#[from] std::io::Error),
    /// The broker refused the configuration at start-up (credentials,
    /// vhost, permissions): no retry can fix that.
    #[error("broker refused the configuration: {0}")]
    BrokerRefused(String),
}

/// A bound, not yet serving, ingest.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    served: Vec<crate::providers::Served>,
    limits: RouterLimits,
    drain_timeout: Duration,
    max_connections: usize,
    broker_shutdown: CancellationToken,
    broker_task: JoinHandle<()>,
}

impl Application {
    /// Validates the config, binds the listener (port 0 picks a free port)
    /// and starts the broker connection in the background. Does not wait
    /// for the broker: ingest must start (unready) while the broker is down.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let providers = config.validate()?;
        crate::providers::log_serving(&providers.served);
        let replay_keys = config.replay_keys()?;
        if replay_keys.is_none() {
            tracing::warn!(
                "INGEST_QUARANTINE_REPLAY_KEY is not set: quarantine copies are not sealed, so a replay is checked as a new request (signatures older than their freshness window and Basic-authenticated copies cannot pass)"
            );
        }
        let broker_addresses = config.broker.addresses()?;
        let metrics = IngestMetrics::new()?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartupError::Bind { addr: config.addr, source })?;

        let topology = Arc::new(config.broker.topology.clone());
        let declare_topology = topology.clone();
        let setup: dlr_shared::amqp::connection::SetupHook = Arc::new(move |conn| {
            let topology = declare_topology.clone();
            Box::pin(async move { topology.declare_intake(&conn).await })
        });
        let broker_shutdown = CancellationToken::new();
        let (broker, broker_task) = BrokerConnection::start(
            broker_addresses,
            format!("ingest@{}", config.broker.instance_name),
            setup,
            metrics.broker_connected.clone(),
            broker_shutdown.clone(),
        );
        let publisher = Arc::new(
            Publisher::new(broker, config.confirm_timeout)
                .with_channels(config.publish_channels)
                .with_replaced_counter(metrics.publish_channels_replaced.clone())
                .with_destination_share(topology.channels_per_shard(config.publish_channels)),
        );
        let broker_readiness = Arc::new(BrokerReadiness::new(config.readiness_broker_grace));
        tokio::spawn(readiness::watch(
            broker_readiness.clone(),
            publisher.clone(),
            topology.clone(),
            config.confirm_timeout,
            broker_shutdown.clone(),
        ));
        let state = AppState {
            publisher,
            topology,
            common: providers.common,
            metrics: Arc::new(metrics),
            draining: Arc::new(AtomicBool::new(false)),
            body_timeout: config.request_timeout,
            broker_readiness,
            quarantine_limits: Arc::new(crate::intake::QuarantineLimits::new(
                config.quarantine_body_limit_bytes,
                config.quarantine_copies_per_minute,
                config.quarantine_bytes_per_minute,
            )),
            replay_keys: replay_keys.map(Arc::new),
        };
        let limits = RouterLimits {
            body_limit_bytes: config.body_limit_bytes,
            request_timeout: config.request_timeout,
            max_concurrency: config.max_concurrency,
        };
        Ok(Self {
            listener,
            state,
            served: providers.served,
            limits,
            drain_timeout: config.drain_timeout,
            max_connections: config.max_connections,
            broker_shutdown,
            broker_task,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then drains: readiness turns false
    /// and open connections are told to close after their current request
    /// (idle ones close at once), but the listener keeps accepting while any
    /// connection is still open, so that `/readyz` can say 503 to the load
    /// balancer and a receipt sent before the endpoint was removed is still
    /// stored rather than reset in the listen backlog; connections accepted
    /// during the drain serve one request each. Once no connection is left
    /// (or at the drain timeout) the listener closes: a later connect is
    /// refused, which every provider retries. Only then is the broker
    /// connection closed.
    ///
    /// The accept loop is ours rather than `axum::serve` because that sets
    /// no header-read timeout: a client trickling (or never finishing) its
    /// request head would hold a connection and its buffers forever. The
    /// number of open connections is capped the same way.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let app = router(self.state.clone(), &self.served, self.limits)
            .layer(axum::middleware::map_response_with_state(self.state.clone(), close_when_draining));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.limits.request_timeout);
        let mut one_request = http.clone();
        one_request.keep_alive(false);
        let connections = Arc::new(Semaphore::new(self.max_connections));
        let open = TaskTracker::new();
        let draining = CancellationToken::new();
        let closing_idle = CancellationToken::new();
        let mut drain_deadline = None;
        let broker = self.state.publisher.broker().clone();
        let gave_up = broker.gave_up();
        tokio::pin!(gave_up);
        let mut refused = None;
        loop {
            if let Some(deadline) = drain_deadline {
                if open.is_empty() {
                    break;
                }
                // Connections still idle a while into the drain are closed;
                // busy ones have been answering with `connection: close`.
                let drain_started: tokio::time::Instant = deadline - self.drain_timeout;
                if !closing_idle.is_cancelled() && drain_started.elapsed() >= DRAIN_IDLE_GRACE {
                    closing_idle.cancel();
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(timeout = ?self.drain_timeout, "drain timeout reached; exiting with requests in flight");
                    break;
                }
            }
            // A connection slot, then a connection. Both are cancel-safe, so
            // a shutdown or a refused broker interrupts either wait.
            let next = async {
                let permit = connections.clone().acquire_owned().await;
                (permit, self.listener.accept().await)
            };
            let (permit, stream) = tokio::select! {
                () = shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(self.start_drain(&draining));
                    continue;
                }
                reason = &mut gave_up, if refused.is_none() => {
                    refused = Some(reason);
                    drain_deadline.get_or_insert_with(|| self.start_drain(&draining));
                    continue;
                }
                // While draining, look again at the open connections now and then.
                () = tokio::time::sleep(DRAIN_CHECK_INTERVAL), if drain_deadline.is_some() => continue,
                (permit, accepted) = next => match (permit, accepted) {
                    (Err(_), _) => break,
                    (Ok(permit), Ok((stream, _))) => (permit, stream),
                    (Ok(_), Err(error)) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let service = TowerToHyperService::new(app.clone());
            let closing_idle = closing_idle.clone();
            let accepted_while_draining = draining.is_cancelled();
            let builder = if accepted_while_draining { &one_request } else { &http };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            open.spawn(async move {
                tokio::pin!(connection);
                // Client resets and timeouts end up here; nothing to do about them.
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = closing_idle.cancelled(), if !accepted_while_draining => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
                drop(permit);
            });
        }
        drop(self.listener);
        open.close();
        if let Some(deadline) = drain_deadline
            && tokio::time::timeout_at(deadline, open.wait()).await.is_err()
        {
            tracing::warn!("connections still open at the drain timeout");
        }
        self.broker_shutdown.cancel();
        // The supervisor bounds its close; this bounds the rest of it.
        if tokio::time::timeout(Duration::from_secs(10), self.broker_task).await.is_err() {
            tracing::warn!("the broker connection did not close in time");
        }
        tracing::info!("ingest stopped");
        match refused {
            Some(reason) => Err(StartupError::BrokerRefused(reason)),
            None => Ok(()),
        }
    }

    /// Turns readiness false and tells open connections to finish; returns
    /// when the drain must end at the latest.
    fn start_drain(&self, draining: &CancellationToken) -> tokio::time::Instant {
        self.state.draining.store(true, Ordering::SeqCst);
        draining.cancel();
        tracing::info!(timeout = ?self.drain_timeout, "draining: unready, finishing open requests");
        tokio::time::Instant::now() + self.drain_timeout
    }
}

/// How often a draining ingest looks whether connections are still open.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// How long into a drain idle keep-alive connections stay open. Closing an
/// idle connection races with a client that has just picked it from its
/// pool to send a request (which then sees a reset); for this long every
/// answer says `connection: close` instead, so busy clients move off by
/// themselves and only connections idle for this long are closed.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// While draining, every answer asks the client to close its connection,
/// so that it opens the next one elsewhere (or gets a refused connect once
/// this pod stopped listening, which providers retry).
async fn close_when_draining(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if state.draining.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}
