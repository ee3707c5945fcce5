//! Building and running the worker; `main` and the tests share this code.

use dlr_shared::amqp::{BrokerConnection, Publisher, Topology};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::consumer::{self, ConsumerContext, Consuming};
use crate::dispatch::Dispatcher;
use crate::handlers::amqp::AmqpHandler;
use crate::handlers::http::HttpHandler;
use crate::handlers::log::LogHandler;
use crate::handlers::postgres::{PostgresHandler, PostgresSettings};
use crate::handlers::{Handler, HandlerKind};
use crate::metrics::WorkerMetrics;
use crate::probes::{ProbeState, router};
use crate::requeued::RequeueMemory;
use crate::retry::RetryPolicy;

/// Upper bound of each shutdown step after the drain.
const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Confirm timeout for the worker's own publishes (retries, parking, events).
const PUBLISH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Channels for retry and park publishes.
const SETTLE_PUBLISH_CHANNELS: usize = 16;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// `AMQP_URL` does not parse (an unreachable broker is retried instead).
    #[error("invalid configuration: {0}")]
    BrokerAddress(#[from] dlr_shared::config::AmqpUrlError),
    /// The probe address is taken.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// `WORKER_ADDR`.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The status store is unreachable or its migrations failed.
    #[error("status store (DATABASE_URL): {0}")]
    Database(#[from] sqlx::Error),
    /// HTTP client set-up failed.
    #[error("http handler: {0}")]
    Http(String),
    /// Metric registration failed (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The broker refused the configuration at start-up (credentials,
    /// vhost, permissions): no retry can fix that.
    #[error("broker refused the configuration: {0}")]
    BrokerRefused(String),
    /// The probe server failed.
    #[error("probe server: {0}")]
    Probes(#[from] std::io::Error),
}

/// A worker ready to run.
pub struct Application {
    listener: TcpListener,
    probes: ProbeState,
    context: Arc<ConsumerContext>,
    drain_timeout: Duration,
    broker_shutdown: CancellationToken,
    broker_task: JoinHandle<()>,
    /// Both connections: either giving up for good stops the worker.
    gave_up: [BrokerConnection; 2],
}

impl Application {
    /// Validates config, connects the status store if used (migrations run
    /// here, so a bad database fails start-up loudly), binds the probe port
    /// and starts the broker connection in the background.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let routes = config.validate()?;
        let broker_addresses = config.broker.addresses()?;
        let metrics = WorkerMetrics::new()?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartupError::Bind { addr: config.addr, source })?;
        let retry = RetryPolicy::new(config.max_attempts, config.retry_initial_delay, config.retry_max_delay);
        let topology = Arc::new(config.broker.topology.clone());

        // Everything that can fail runs before the broker connection starts:
        // returning an error with a live lapin connection lets the runtime
        // end under lapin's I/O thread, which then panics over the real error.
        let mut handlers: HashMap<HandlerKind, Arc<dyn Handler>> = HashMap::new();
        handlers.insert(HandlerKind::Log, Arc::new(LogHandler));
        if routes.uses(HandlerKind::Http) {
            let http =
                HttpHandler::from_config(&config, &metrics).map_err(|e| StartupError::Http(e.to_string()))?;
            handlers.insert(HandlerKind::Http, Arc::new(http));
        }
        let mut status_store = None;
        if let (true, Some(url)) = (routes.uses(HandlerKind::Postgres), config.database_url.as_ref()) {
            check_database(url.expose_secret()).await?;
            let store =
                PostgresHandler::connect(url.expose_secret(), &PostgresSettings::from(&config)).await?;
            status_store = Some(store.pool());
            handlers.insert(HandlerKind::Postgres, Arc::new(store));
        }

        // Two connections: RabbitMQ blocks a connection that publishes while
        // a resource alarm lasts, and a blocked connection carries no acks
        // either. Consuming on a connection that never publishes keeps acks
        // (and so the prefetch window) flowing during an alarm; see
        // <https://www.rabbitmq.com/docs/connections#flow-control> and
        // <https://www.rabbitmq.com/docs/alarms>.
        let broker_shutdown = CancellationToken::new();
        let (broker, consume_task) = start_broker(
            &config,
            broker_addresses.clone(),
            topology.clone(),
            retry.delays(),
            ConnectionPurpose::Consume,
            metrics.broker_connected.clone(),
            broker_shutdown.clone(),
        );
        let (publishing, publish_task) = start_broker(
            &config,
            broker_addresses,
            topology.clone(),
            retry.delays(),
            ConnectionPurpose::Publish,
            metrics.publisher_connected.clone(),
            broker_shutdown.clone(),
        );
        let broker_task = tokio::spawn(async move {
            let _ = tokio::join!(consume_task, publish_task);
        });
        // Retries and parking: a return there means our own queue is missing.
        // Few at once (each is a failing event), so a small pool.
        let publisher = Arc::new(
            Publisher::new(publishing.clone(), PUBLISH_CONFIRM_TIMEOUT)
                .with_channels(SETTLE_PUBLISH_CHANNELS)
                .with_replaced_counter(metrics.publish_channels_replaced.clone()),
        );
        if routes.uses(HandlerKind::Amqp) {
            // One publish per event in flight at most: as many channels as
            // the prefetch lets events be handled at once.
            let events_publisher = Arc::new(
                Publisher::new(publishing.clone(), PUBLISH_CONFIRM_TIMEOUT)
                    .with_channels(usize::from(config.prefetch))
                    .with_replaced_counter(metrics.publish_channels_replaced.clone()),
            );
            let handler = AmqpHandler::new(
                events_publisher,
                config.events_exchange.clone(),
                metrics.unroutable.clone(),
            );
            handlers.insert(HandlerKind::Amqp, Arc::new(handler));
        }

        crate::maintenance::start_if_stored(
            status_store,
            crate::maintenance::Intake { publisher: publisher.clone(), topology: topology.clone() },
            config.maintenance_settings()?,
            metrics.analytics.clone(),
            broker_shutdown.clone(),
        );

        let shards = topology.receipt_shards;
        let consuming = Arc::new(Consuming::new(usize::from(shards)));
        let prefetch = consumer::prefetch_per_shard(config.prefetch, shards);
        let broker_for_probes = broker.clone();
        let gave_up = [broker.clone(), publishing.clone()];
        let context = Arc::new(ConsumerContext {
            broker,
            publisher,
            dispatcher: Arc::new(Dispatcher::new(routes, handlers, retry, metrics.clone())),
            topology,
            metrics: metrics.clone(),
            prefetch,
            consuming: consuming.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(usize::from(prefetch) * usize::from(shards))),
            settle_patience: config.settle_patience,
            requeued: RequeueMemory::default(),
        });
        Ok(Self {
            listener,
            probes: ProbeState { consuming, metrics, broker: broker_for_probes },
            context,
            drain_timeout: config.drain_timeout,
            broker_shutdown,
            broker_task,
            gave_up,
        })
    }

    /// The probe server's address (the real port when configured with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Consumes until `shutdown`, drains, closes the broker connection.
    /// Ends early with an error when the broker refuses the configuration
    /// at start-up.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let probe_shutdown = CancellationToken::new();
        let probe_signal = probe_shutdown.clone();
        let probes = tokio::spawn(
            axum::serve(self.listener, router(self.probes))
                .with_graceful_shutdown(probe_signal.cancelled_owned())
                .into_future(),
        );
        let stop = shutdown.child_token();
        let [consume, publish] = self.gave_up;
        let refused = Arc::new(std::sync::Mutex::new(None));
        let watcher = {
            let (stop, refused) = (stop.clone(), refused.clone());
            tokio::spawn(async move {
                let reason = tokio::select! {
                    reason = consume.gave_up() => reason,
                    reason = publish.gave_up() => reason,
                    () = stop.cancelled() => return,
                };
                *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                stop.cancel();
            })
        };
        consumer::run(self.context, stop.clone(), self.drain_timeout).await;
        stop.cancel();
        let _ = watcher.await;
        self.broker_shutdown.cancel();
        // Both bounded: the process must exit after SIGTERM even if the
        // broker never confirms the close or a probe client keeps its
        // connection open.
        if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, self.broker_task).await.is_err() {
            tracing::warn!("the broker connection did not close in time");
        }
        probe_shutdown.cancel();
        let result = match tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, probes).await {
            Ok(joined) => joined.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        tracing::info!("worker stopped");
        if let Some(reason) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(StartupError::BrokerRefused(reason));
        }
        Ok(result?)
    }
}

/// What a worker connection is for; part of its name in the broker's
/// connection list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionPurpose {
    /// Consumes receipts and acks them; never publishes.
    Consume,
    /// Retries, parking, the amqp handler's events, replays.
    Publish,
}

impl ConnectionPurpose {
    fn as_str(self) -> &'static str {
        match self {
            ConnectionPurpose::Consume => "consume",
            ConnectionPurpose::Publish => "publish",
        }
    }
}

/// Starts one supervised connection, declaring the worker's topology on
/// every (re)connect (both connections do: whichever comes first, the
/// queues exist before anything is consumed or published).
pub fn start_broker(
    config: &Config,
    addresses: dlr_shared::config::AmqpUrls,
    topology: Arc<Topology>,
    retry_delays: Vec<Duration>,
    purpose: ConnectionPurpose,
    connected_gauge: prometheus::IntGauge,
    shutdown: CancellationToken,
) -> (BrokerConnection, JoinHandle<()>) {
    let events_exchange = config.events_exchange.clone();
    let setup: dlr_shared::amqp::connection::SetupHook = Arc::new(move |conn| {
        let topology = topology.clone();
        let events_exchange = events_exchange.clone();
        let delays = retry_delays.clone();
        Box::pin(async move { topology.declare_worker(&conn, &events_exchange, &delays).await })
    });
    BrokerConnection::start(
        addresses,
        format!("worker-{}@{}", purpose.as_str(), config.broker.instance_name),
        setup,
        connected_gauge,
        shutdown,
    )
}

/// One direct connection before the pool: a pool that cannot connect says
/// only "pool timed out", while this reports the cause (connection refused,
/// authentication, TLS, unknown database) that the operator has to fix.
async fn check_database(url: &str) -> Result<(), StartupError> {
    use sqlx::Connection;
    let timeout = Duration::from_secs(5);
    match tokio::time::timeout(timeout, sqlx::PgConnection::connect(url)).await {
        Ok(Ok(connection)) => {
            // Only a probe; the pool opens its own connections.
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(error)) => Err(StartupError::Database(error)),
        Err(_) => Err(StartupError::Database(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )))),
    }
}
