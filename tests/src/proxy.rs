//! A TCP proxy in front of RabbitMQ, to simulate outages for one app
//! without disturbing the shared broker or other tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards connections from a local port to a target while running.
pub struct BrokerProxy {
    /// Where apps should connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl BrokerProxy {
    /// A proxy for `target` on a free port, not yet listening: connections
    /// are refused until [`BrokerProxy::start`] (a "closed port").
    pub async fn reserve(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        Self { addr, target, accept: None, links: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Starts accepting and forwarding.
    pub async fn start(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind proxy port");
        let target = self.target;
        let links = self.links.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
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

/// The broker's socket address from `AMQP_URL`.
pub fn broker_addr() -> SocketAddr {
    let url = url::Url::parse(&crate::amqp_url()).expect("AMQP_URL parses");
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5672);
    format!("{host}:{port}").parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)))
}
