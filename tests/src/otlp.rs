//! A test OTLP collector: takes OTLP/HTTP protobuf export requests
//! (`POST /v1/traces`) or OTLP/gRPC ones (the generated
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` over
//! HTTP/2), decodes them with the protocol's own generated types, and keeps
//! the spans for assertions. Also a collector that never answers, for the
//! tests of a collector that is down.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    /// The resource's other attributes.
    pub resource: BTreeMap<String, String>,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Attributes, every value as text.
    pub attributes: BTreeMap<String, String>,
}

impl CollectedSpan {
    /// An attribute's value.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running collector on a random port.
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

impl Collector {
    /// Starts a collector.
    pub async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/v1/traces", post(export)).with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, spans }
    }

    /// Starts a collector speaking OTLP/gRPC (for
    /// `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`): the generated trace service,
    /// served over cleartext HTTP/2 with prior knowledge, as the exporter
    /// speaks it to an `http://` endpoint.
    pub async fn start_grpc() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(GrpcTraces { spans: spans.clone() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, spans }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn export(State(spans): State<Arc<Mutex<Vec<CollectedSpan>>>>, body: Bytes) -> Response {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    keep(&spans, request);
    let body = ExportTraceServiceResponse::default().encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
}

/// The gRPC trace service: tonic's generated server decodes the request.
struct GrpcTraces {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.spans, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Adds the spans of one export request to `spans`.
fn keep(spans: &Mutex<Vec<CollectedSpan>>, request: ExportTraceServiceRequest) {
    let mut collected = Vec::new();
    for resource_spans in request.resource_spans {
        let mut resource: BTreeMap<String, String> =
            resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.remove("service.name").unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                collected.push(CollectedSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    if let Ok(mut spans) = spans.lock() {
        spans.extend(collected);
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A collector that accepts connections and never answers: the worst
/// kind of down, where every export waits for its full timeout. Stops
/// listening when dropped.
pub struct Silent {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    /// Starts listening.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { addr, task }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A collector for benchmarks: answers every export at once and only
/// counts requests and bytes (decoding and keeping spans would put the
/// collector's own work on the machine being measured).
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<std::sync::atomic::AtomicU64>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Sink {
    /// Starts the sink.
    pub async fn start() -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counters = (requests.clone(), bytes.clone());
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let (requests, bytes) = counters.clone();
                async move {
                    requests.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    ([(header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, requests, bytes })
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Export requests and bytes received so far.
    pub fn received(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (self.requests.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}
