//! A TCP proxy in front of RabbitMQ, to simulate outages for one app
//! without disturbing the shared broker or other tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards connections from a local port to a target while running.
pub struct BrokerProxy {
    /// Where apps should connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stalled: Arc<AtomicBool>,
}

impl BrokerProxy {
    /// A proxy for `target` on a free port, not yet listening: connections
    /// are refused until [`BrokerProxy::start`] (a "closed port").
    pub async fn reserve(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        Self {
            addr,
            target,
            accept: None,
            links: Arc::new(Mutex::new(Vec::new())),
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts accepting and forwarding.
    pub async fn start(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind proxy port");
        let target = self.target;
        let links = self.links.clone();
        let stalled = self.stalled.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let stalled = stalled.clone();
                let link = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (from_app, to_app) = inbound.into_split();
                        let (from_broker, to_broker) = outbound.into_split();
                        let up = forward(from_app, to_broker, Arc::new(AtomicBool::new(false)));
                        let down = forward(from_broker, to_app, stalled);
                        tokio::select! {
                            () = up => {}
                            () = down => {}
                        }
                    }
                });
                if let Ok(mut links) = links.lock() {
                    links.push(link);
                }
            }
        }));
    }

    /// Stops listening and cuts every open connection (a broker outage as
    /// seen from the app).
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        if let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }

    /// Holds back everything the broker sends (confirms, returns) while
    /// `stalled`, without closing anything: a broker that has gone slow.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// AMQP URL through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to`, holding each chunk while `stalled` is set.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    stalled: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// The broker's socket address from `AMQP_URL`.
pub fn broker_addr() -> SocketAddr {
    let url = url::Url::parse(&crate::amqp_url()).expect("AMQP_URL parses");
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5672);
    format!("{host}:{port}").parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)))
}
