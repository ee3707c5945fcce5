//! Building and running the app; `main` and the tests share this code.

use dlr_shared::amqp::{BrokerConnection, Publisher};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
        let signatures = config.validate()?;
        signatures.log_serving();
        let broker_addresses = config.broker.addresses()?;
        let metrics = IngestMetrics::new()?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartupError::Bind { addr: config.addr, source })?;

        let topology = Arc::new(config.broker.topology.clone());
        let declare_topology = topology.clone();
        let setup: dlr_shared::amqp::connection::SetupHook = Arc::new(move |conn| {
            let topology = declare_topology.clone();
            Box::pin(async move {
                let channel = conn.create_channel().await?;
                topology.declare_intake(&channel).await?;
                channel.close(200, "topology declared".into()).await
            })
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
                .with_replaced_counter(metrics.publish_channels_replaced.clone()),
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
            signatures: Arc::new(signatures),
            metrics: Arc::new(metrics),
            draining: Arc::new(AtomicBool::new(false)),
            body_timeout: config.request_timeout,
            broker_readiness,
            quarantine_limits: Arc::new(crate::intake::QuarantineLimits::new(
                config.quarantine_body_limit_bytes,
                config.quarantine_copies_per_minute,
            )),
        };
        let limits = RouterLimits {
            body_limit_bytes: config.body_limit_bytes,
            request_timeout: config.request_timeout,
            max_concurrency: config.max_concurrency,
        };
        Ok(Self {
            listener,
            state,
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

    /// Serves until `shutdown` fires, then drains: readiness turns false,
    /// the listener stops accepting, in-flight requests finish (their
    /// confirms awaited) within the drain timeout, and only then is the
    /// broker connection closed.
    ///
    /// The accept loop is ours rather than `axum::serve` because that sets
    /// no header-read timeout: a client trickling (or never finishing) its
    /// request head would hold a connection and its buffers forever. The
    /// number of open connections is capped the same way.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let app = router(self.state.clone(), self.limits);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.limits.request_timeout);
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(self.max_connections));
        let broker = self.state.publisher.broker().clone();
        let gave_up = broker.gave_up();
        tokio::pin!(gave_up);
        let mut refused = None;
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                reason = &mut gave_up => {
                    refused = Some(reason);
                    break;
                }
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let service = TowerToHyperService::new(app.clone());
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                // Client resets and timeouts end up here; nothing to do about them.
                let _ = connection.await;
                drop(permit);
            });
        }
        self.state.draining.store(true, Ordering::SeqCst);
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.drain_timeout) => {
                tracing::warn!(timeout = ?self.drain_timeout, "drain timeout reached; exiting with requests in flight");
            }
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
}
