//! A TCP proxy in front of RabbitMQ, to simulate outages for one app
//! without disturbing the shared broker or other tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Forwards connections from a local port to a target while running.
pub struct BrokerProxy {
    /// Where apps should connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    /// Bound for the proxy's whole life and never listening, so the port
    /// stays ours while "closed": between a cut and the next start no
    /// other socket (an outgoing connection, another test) can take it.
    _holder: TcpSocket,
    accept: Option<JoinHandle<()>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stalled: Arc<AtomicBool>,
    /// Set by [`BrokerProxy::stall_on_next_consume`]: the next
    /// `basic.consume` an app sends starts a stall.
    stall_on_consume: Arc<AtomicBool>,
}

impl BrokerProxy {
    /// A proxy for `target` on a free port, not yet listening: connections
    /// are refused until [`BrokerProxy::start`] (a "closed port").
    pub async fn reserve(target: SocketAddr) -> Self {
        let holder = shared_port(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind a proxy port");
        let addr = holder.local_addr().expect("addr");
        Self {
            addr,
            target,
            _holder: holder,
            accept: None,
            links: Arc::new(Mutex::new(Vec::new())),
            stalled: Arc::new(AtomicBool::new(false)),
            stall_on_consume: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts accepting and forwarding.
    pub async fn start(&mut self) {
        // A listener from an earlier start may still be open until its
        // aborted task is dropped; SO_REUSEPORT lets both exist meanwhile.
        let listener =
            shared_port(self.addr).and_then(|socket| socket.listen(1024)).expect("listen on the proxy port");
        let target = self.target;
        let links = self.links.clone();
        let stalled = self.stalled.clone();
        let stall_on_consume = self.stall_on_consume.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let stalled = stalled.clone();
                let up_watch = Watch { armed: stall_on_consume.clone(), stall: stalled.clone() };
                let link = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (from_app, to_app) = inbound.into_split();
                        let (from_broker, to_broker) = outbound.into_split();
                        let up =
                            forward(from_app, to_broker, Arc::new(AtomicBool::new(false)), Some(up_watch));
                        let down = forward(from_broker, to_app, stalled, None);
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
    /// seen from the app). Returns once the listener and the connections
    /// are closed: an aborted task drops its sockets only when the runtime
    /// gets to it, and until then a new connection could still reach the
    /// old listener and be reset, or `start` meet the old listener.
    pub async fn cut(&mut self) {
        let mut tasks: Vec<JoinHandle<()>> = self.accept.take().into_iter().collect();
        if let Ok(mut links) = self.links.lock() {
            tasks.extend(links.drain(..));
        }
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Aborts the tasks without waiting (for `Drop`, which cannot await).
    fn abort(&mut self) {
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

    /// Starts a stall (see [`BrokerProxy::stall`]) as soon as an app
    /// sends its next `basic.consume`, before the broker has seen it
    /// answered: the consume-ok, and everything after it, is held back
    /// until `stall(false)`. A broker that takes longer to register a
    /// consumer than the app waits for (a quorum queue still recovering).
    pub fn stall_on_next_consume(&self) {
        self.stall_on_consume.store(true, Ordering::SeqCst);
    }

    /// Whether everything the broker sends is being held back.
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    /// AMQP URL through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.abort();
    }
}

/// A socket bound to `addr` that this proxy's other sockets may bind too
/// (SO_REUSEPORT). A bound socket that does not listen refuses
/// connections, which is the "closed port" the tests want. No
/// SO_REUSEADDR: with it, any other socket that sets it (std and tokio
/// listeners do) could bind the port while no proxy socket listens.
fn shared_port(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Watches what an app sends for a `basic.consume`, when armed.
struct Watch {
    armed: Arc<AtomicBool>,
    stall: Arc<AtomicBool>,
}

/// The start of an AMQP 0-9-1 method frame carrying `basic.consume`
/// (class 60, method 20), after the frame type 1 and the channel and size
/// fields (6 bytes) that vary.
const CONSUME_METHOD: [u8; 4] = [0, 60, 0, 20];

/// Whether `bytes` holds a `basic.consume` method frame.
fn has_consume_frame(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|frame| frame[0] == 1 && frame[7..11] == CONSUME_METHOD)
}

/// Copies `from` to `to`, holding each chunk while `stalled` is set. With a
/// `watch`, a chunk holding a `basic.consume` sets the stall (once armed),
/// after it is forwarded.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    stalled: Arc<AtomicBool>,
    watch: Option<Watch>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    // The last bytes of the previous chunk: a frame may span two reads.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if let Some(watch) = &watch
            && watch.armed.load(Ordering::SeqCst)
        {
            tail.extend_from_slice(&buffer[..read]);
            if has_consume_frame(&tail) && watch.armed.swap(false, Ordering::SeqCst) {
                watch.stall.store(true, Ordering::SeqCst);
            }
            let keep = tail.len().saturating_sub(10);
            tail.drain(..keep);
        }
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

#[cfg(test)]
mod tests {
    use super::{BrokerProxy, has_consume_frame};

    #[test]
    fn a_consume_frame_is_found_and_other_methods_are_not() {
        // type 1, channel 1, size 0x20, then basic (60) consume (20).
        let consume = [1, 0, 1, 0, 0, 0, 0x20, 0, 60, 0, 20, 0, 0];
        assert!(has_consume_frame(&consume));
        let mut after_other_bytes = vec![0xce, 8, 0];
        after_other_bytes.extend_from_slice(&consume);
        assert!(has_consume_frame(&after_other_bytes));
        // basic.qos (60, 10) and basic.publish (60, 40) are not.
        assert!(!has_consume_frame(&[1, 0, 1, 0, 0, 0, 0x0b, 0, 60, 0, 10]));
        assert!(!has_consume_frame(&[1, 0, 1, 0, 0, 0, 0x0b, 0, 60, 0, 40]));
    }
    use std::net::SocketAddr;

    /// The failure seen in CI: after a cut, `start` could not rebind the
    /// port (EADDRINUSE) because the aborted accept task still held the
    /// listener, or because something else took the released port.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_port_stays_the_proxys_while_cut_and_restarts_at_once() {
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a target");
        let target_addr: SocketAddr = target.local_addr().expect("addr");
        let mut proxy = BrokerProxy::reserve(target_addr).await;
        assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err(), "reserved means refused");
        for round in 0..50 {
            proxy.start().await;
            let connected = tokio::net::TcpStream::connect(proxy.addr).await;
            assert!(connected.is_ok(), "round {round}: started means open: {connected:?}");
            proxy.cut().await;
            assert!(
                std::net::TcpListener::bind(proxy.addr).is_err(),
                "round {round}: nobody else may take the port of a cut proxy"
            );
        }
    }
}
