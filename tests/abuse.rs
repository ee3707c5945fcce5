//! Hostile requests against a real ingest, while good receipts keep flowing.
//!
//! A corpus of abusive requests (oversize and chunked bodies, 10 000
//! parameters, deeply nested JSON, invalid UTF-8, slow-drip bodies, header
//! floods, huge query strings, wrong methods, broken HTTP) is sent over raw
//! TCP, so that nothing a client library would refuse to send is left out.
//! Each must get its exact 4xx (or, for a connection that never completes
//! its request, be closed after the request timeout), nothing may reach the
//! receipts queue, the process must stay live, its memory bounded, and a
//! concurrent stream of good receipts must keep getting 200s with a p99
//! latency close to the one measured before the attack.
//!
//! The latencies and the memory growth are printed (stderr) for the notes.

use dlr_shared::ReceiptEvent;
use dlr_tests::proxy::{BrokerProxy, broker_addr};
use dlr_tests::{TestApp, TestIngest, eventually, metric_value, vonage_form};
use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(10);
/// ingest's whole-request deadline in these tests (INGEST_REQUEST_TIMEOUT_MS).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any hostile request may take to be answered or closed.
const ANSWER_WITHIN: Duration = Duration::from_secs(6);
/// ingest's default INGEST_BODY_LIMIT_BYTES.
const BODY_LIMIT: usize = 65_536;
const MIB: usize = 1024 * 1024;
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// The tests in this file measure latency and memory, so they run one at a
/// time even though the harness starts them in parallel.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Raw HTTP

/// What came back on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The status code of the first response.
    Status(u16),
    /// Closed (FIN or reset) without a response.
    Closed,
    /// Still open, no response, when we stopped waiting.
    Silent,
}

/// An HTTP/1.1 request as bytes: `content-length` for any body, `host`
/// always, `extra` headers as given (no validation: they are the point).
fn request(method: &str, target: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: ingest\r\n");
    if let Some(content_type) = content_type {
        head.push_str(&format!("content-type: {content_type}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A POST whose head is written by hand (custom or broken headers).
fn raw_post(target: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("POST {target} HTTP/1.1\r\nhost: ingest\r\n{headers}\r\n").into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads until the status line of the first response, EOF or `wait`.
async fn read_status(reader: &mut (impl AsyncReadExt + Unpin), wait: Duration) -> Answer {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return Answer::Closed,
                Ok(n) => {
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") {
                        let line = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        let status = line.split(' ').nth(1).and_then(|code| code.parse::<u16>().ok());
                        match status {
                            // `100 Continue` is not an answer: skip its head.
                            Some(100..=199) => match buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                Some(head_end) => drop(buffer.drain(..head_end + 4)),
                                None => break,
                            },
                            Some(status) => return Answer::Status(status),
                            None => return Answer::Closed,
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(wait, read).await.unwrap_or(Answer::Silent)
}

/// Sends `bytes` and returns the first answer and how long it took. The
/// write runs beside the read and its errors are ignored: ingest may answer
/// (413, 431) and close before it has read everything we send. The write
/// half stays open until the answer is in, because a half-closed request is
/// not one a provider would send.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> (Answer, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect to ingest");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        std::future::pending::<()>().await;
        drop(writer);
    });
    let answer = read_status(&mut reader, ANSWER_WITHIN).await;
    writing.abort();
    (answer, started.elapsed())
}

/// Sends `head` at once, then `body` one byte every `interval`: a client
/// that never finishes in time. Returns the answer and when it came.
async fn slow_drip(addr: SocketAddr, head: Vec<u8>, body: Vec<u8>, interval: Duration) -> (Answer, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect to ingest");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        if writer.write_all(&head).await.is_err() {
            return;
        }
        for byte in body {
            tokio::time::sleep(interval).await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let answer = read_status(&mut reader, ANSWER_WITHIN).await;
    writing.abort();
    (answer, started.elapsed())
}

// ---------------------------------------------------------------------------
// The hostile corpus

/// One hostile request and the status the contract gives it.
struct Case {
    name: String,
    bytes: Vec<u8>,
    expect: Answer,
}

fn case(name: impl Into<String>, bytes: Vec<u8>, status: u16) -> Case {
    Case { name: name.into(), bytes, expect: Answer::Status(status) }
}

/// `count` parameters with distinct short names (hex), no receipt fields.
fn distinct_params(count: usize) -> String {
    (0..count).map(|i| format!("{i:x}=")).collect::<Vec<_>>().join("&")
}

fn hostile_corpus() -> Vec<Case> {
    let big_form = format!("messageId=0A1&status=delivered&msisdn=447700900123&pad={}", "x".repeat(MIB));
    let big_json = format!(r#"{{"messageId":"0A1","status":"delivered","pad":"{}"}}"#, "x".repeat(MIB));
    let mut chunked = b"POST /dlr/vonage HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..16 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 65_536, " ".repeat(65_536)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    let ten_thousand = distinct_params(10_000);
    assert!(ten_thousand.len() < BODY_LIMIT, "fits the body limit: {}", ten_thousand.len());
    let repeated = vec!["status=delivered"; 3_000].join("&");
    let json_members = format!("{{{}}}", vec![r#""a":0"#; 10_000].join(","));
    let deep_array = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep_in_receipt = format!(
        r#"{{"messageId":"0A1","status":"delivered","msisdn":"447700900123","x":{}1{}}}"#,
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    );
    let deep_messages = format!(
        r#"{{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab","status":"rejected","error":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let header_flood: String =
        (0..2_000).map(|i| format!("x-flood-{i:04}: {}\r\n", "v".repeat(84))).collect();
    let one_huge_header =
        format!("x-huge: {}\r\ncontent-type: {FORM}\r\ncontent-length: 0\r\n", "h".repeat(MIB));
    let receipt = vonage_form("0A00000000000BAD", "delivered");

    vec![
        // Oversize bodies: refused once more than 64 KiB have been read.
        case("1 MiB form body", request("POST", "/dlr/vonage", Some(FORM), big_form.as_bytes()), 413),
        case("1 MiB JSON body", request("POST", "/dlr/vonage", Some(JSON), big_json.as_bytes()), 413),
        case("1 MiB chunked JSON body", chunked, 413),
        case("1 MiB Messages body", request("POST", "/dlr/vonage-messages", Some(JSON), big_json.as_bytes()), 413),
        case("1 MiB Twilio body", request("POST", "/dlr/twilio", Some(FORM), big_form.as_bytes()), 413),
        // Not refused from the header alone: ingest answers `100 Continue`
        // and counts the bytes, so the client gets its 413 after 64 KiB.
        case(
            "10 MiB announced with expect: 100-continue",
            raw_post(
                "/dlr/vonage",
                &format!("content-type: {FORM}\r\nexpect: 100-continue\r\ncontent-length: {}\r\n", 10 * MIB),
                big_form.as_bytes(),
            ),
            413,
        ),
        // 10 000 parameters, as form, query and JSON.
        case("10 000 distinct form parameters", request("POST", "/dlr/vonage", Some(FORM), ten_thousand.as_bytes()), 400),
        case("10 000 distinct Twilio parameters", request("POST", "/dlr/twilio", Some(FORM), ten_thousand.as_bytes()), 400),
        case("10 000 distinct query parameters", request("GET", &format!("/dlr/vonage?{ten_thousand}"), None, b""), 400),
        case("3 000 repeated status fields", request("POST", "/dlr/vonage", Some(FORM), repeated.as_bytes()), 400),
        case("10 000 JSON members", request("POST", "/dlr/vonage", Some(JSON), json_members.as_bytes()), 400),
        // Deep nesting: serde_json's recursion limit.
        case("30 000 nested arrays", request("POST", "/dlr/vonage", Some(JSON), deep_array.as_bytes()), 400),
        case("30 000 nested arrays (Messages)", request("POST", "/dlr/vonage-messages", Some(JSON), deep_array.as_bytes()), 400),
        case("5 000 nested objects in a receipt", request("POST", "/dlr/vonage", Some(JSON), deep_in_receipt.as_bytes()), 400),
        case("10 000 nested arrays in a Messages error", request("POST", "/dlr/vonage", Some(JSON), deep_messages.as_bytes()), 400),
        // Invalid UTF-8 everywhere it can be.
        case("raw invalid UTF-8 in a form", request("POST", "/dlr/vonage", Some(FORM), b"messageId=\xff\xfe&status=delivered&msisdn=447700900123"), 400),
        case("percent-encoded invalid UTF-8", request("POST", "/dlr/vonage", Some(FORM), b"messageId=%FF%FE&status=delivered&msisdn=447700900123"), 400),
        case("invalid UTF-8 in a query", request("GET", "/dlr/vonage?messageId=%C0%AF&status=delivered&msisdn=447700900123", None, b""), 400),
        case(
            "raw invalid UTF-8 in the request target",
            b"GET /dlr/vonage?messageId=\xff\xfe&status=delivered&msisdn=447700900123 HTTP/1.1\r\nhost: ingest\r\n\r\n".to_vec(),
            400,
        ),
        case("invalid UTF-8 in JSON", request("POST", "/dlr/vonage", Some(JSON), b"{\"messageId\":\"\xff\",\"status\":\"delivered\",\"msisdn\":\"447700900123\"}"), 400),
        case("invalid UTF-8 in a Messages body", request("POST", "/dlr/vonage-messages", Some(JSON), b"{\"message_uuid\":\"\xc3\x28\",\"status\":\"read\"}"), 400),
        case("UTF-16 JSON", request("POST", "/dlr/vonage", Some("application/json; charset=utf-16"), &[0xff, 0xfe, b'{', 0, b'}', 0]), 400),
        case(
            "invalid UTF-8 in the content type",
            b"POST /dlr/vonage HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/\xffjson\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
            415,
        ),
        case("NUL bytes in a form", request("POST", "/dlr/vonage", Some(FORM), b"messageId=A\x00B&status=delivered%00&msisdn=447700900123"), 400),
        // Header floods and huge query strings: hyper's limits (100 headers,
        // ~400 KiB of head, 64 KiB of URI).
        case("2 000 headers (200 KB)", raw_post("/dlr/vonage", &format!("{header_flood}content-type: {FORM}\r\ncontent-length: 0\r\n"), b""), 431),
        case("one 1 MiB header", raw_post("/dlr/vonage", &one_huge_header, b""), 431),
        case("1 MiB query string", request("GET", &format!("/dlr/vonage?{receipt}&pad={}", "q".repeat(MIB)), None, b""), 431),
        case("70 KB query string", request("GET", &format!("/dlr/vonage?{receipt}&pad={}", "q".repeat(70_000)), None, b""), 414),
        // Wrong methods and paths.
        case("PUT", request("PUT", "/dlr/vonage", Some(FORM), receipt.as_bytes()), 405),
        case("DELETE", request("DELETE", "/dlr/vonage", None, b""), 405),
        case("PATCH", request("PATCH", "/dlr/twilio", Some(FORM), receipt.as_bytes()), 405),
        case("OPTIONS", request("OPTIONS", "/dlr/vonage", None, b""), 405),
        case("TRACE", request("TRACE", "/dlr/vonage", None, b""), 405),
        case("HEAD with a receipt query", request("HEAD", &format!("/dlr/vonage?{receipt}"), None, b""), 405),
        case("GET on the Twilio route", request("GET", &format!("/dlr/twilio?{receipt}"), None, b""), 405),
        case("GET on the Messages route", request("GET", "/dlr/vonage-messages", None, b""), 405),
        case("made-up method", request("FROB", "/dlr/vonage", Some(FORM), receipt.as_bytes()), 405),
        case("POST on /healthz", request("POST", "/healthz", Some(FORM), receipt.as_bytes()), 405),
        case("unknown path", request("POST", "/dlr/vonage/../../etc/passwd", Some(FORM), receipt.as_bytes()), 404),
        // Broken HTTP.
        case("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        case("non-numeric content-length", raw_post("/dlr/vonage", &format!("content-type: {FORM}\r\ncontent-length: abc\r\n"), b"x"), 400),
        case("two different content-lengths", raw_post("/dlr/vonage", &format!("content-type: {FORM}\r\ncontent-length: 5\r\ncontent-length: 6\r\n"), b"abcdef"), 400),
        case("bad chunk size", raw_post("/dlr/vonage", &format!("content-type: {FORM}\r\ntransfer-encoding: chunked\r\n"), b"zz\r\nabc\r\n0\r\n\r\n"), 400),
        case("content-length and chunked (smuggling)", raw_post("/dlr/vonage", &format!("content-type: {FORM}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n"), b"0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"), 400),
        // Wrong or missing content types.
        case("form body sent as text/plain", request("POST", "/dlr/vonage", Some("text/plain"), receipt.as_bytes()), 415),
        case("JSON to the Twilio route", request("POST", "/dlr/twilio", Some(JSON), b"{}"), 415),
        case("64 KB of whitespace", request("POST", "/dlr/vonage", Some(JSON), " ".repeat(BODY_LIMIT - 1).as_bytes()), 400),
    ]
}

// ---------------------------------------------------------------------------
// Good receipts alongside

/// Latencies and ids of the good receipts of one phase.
#[derive(Default)]
struct GoodTraffic {
    latencies: Vec<Duration>,
    accepted: Vec<String>,
    refused: Vec<(String, u16)>,
}

impl GoodTraffic {
    fn p99(&self) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = (sorted.len() * 99).div_ceil(100).max(1);
        sorted.get(rank - 1).copied().unwrap_or_default()
    }
}

/// Sends good receipts (unique ids) from `lanes` paced loops, one every
/// 10 ms per lane, until `stop` fires: the way a provider sends them.
async fn good_receipts(
    base_url: String,
    prefix: &'static str,
    lanes: usize,
    stop: CancellationToken,
) -> GoodTraffic {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (client, url, stop) = (client.clone(), format!("{base_url}/dlr/vonage"), stop.clone());
        tasks.spawn(async move {
            let mut traffic = GoodTraffic::default();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u32.. {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let id = format!("{prefix}{lane:02}{n:06}");
                let started = Instant::now();
                let status = client
                    .post(&url)
                    .header("content-type", FORM)
                    .body(vonage_form(&id, "delivered"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                traffic.latencies.push(started.elapsed());
                if status == 200 {
                    traffic.accepted.push(id);
                } else {
                    traffic.refused.push((id, status));
                }
            }
            traffic
        });
    }
    let mut all = GoodTraffic::default();
    while let Some(lane) = tasks.join_next().await {
        let lane = lane.expect("good traffic lane");
        all.latencies.extend(lane.latencies);
        all.accepted.extend(lane.accepted);
        all.refused.extend(lane.refused);
    }
    all
}

/// The resident and peak resident set of this process (ingest runs in it).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn healthz(ingest: &TestIngest) -> u16 {
    ingest.client.get(format!("{}/healthz", ingest.base_url)).send().await.map_or(0, |r| r.status().as_u16())
}

fn note(line: String) {
    // Straight to stderr: the numbers are wanted even when the test passes.
    let _ = writeln!(std::io::stderr(), "abuse: {line}");
}

async fn abuse_ingest() -> (TestApp, TestIngest) {
    let app = TestApp::new().await;
    let mut config = app.ingest_config();
    config.request_timeout = REQUEST_TIMEOUT;
    // Start-up refuses a request deadline that does not exceed the confirm wait.
    config.confirm_timeout = REQUEST_TIMEOUT / 2;
    config.body_limit_bytes = BODY_LIMIT;
    let ingest = app.start_ingest(config, READY).await;
    (app, ingest)
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_while_good_receipts_keep_flowing() {
    let _serial = SERIAL.lock().await;
    let (app, ingest) = abuse_ingest().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let addr = ingest.addr;

    // Warm up (connections, broker channel), then the baseline.
    let warm = CancellationToken::new();
    let warming = tokio::spawn(good_receipts(ingest.base_url.clone(), "W", 2, warm.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    warm.cancel();
    let warmup = warming.await.expect("warm-up");
    let stop = CancellationToken::new();
    let baseline = tokio::spawn(good_receipts(ingest.base_url.clone(), "B", 2, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let baseline = baseline.await.expect("baseline traffic");

    let (rss_before, _) = memory_kib();
    let stop = CancellationToken::new();
    let during = tokio::spawn(good_receipts(ingest.base_url.clone(), "A", 2, stop.clone()));

    // Slow drips first: they hold their connections for the whole attack.
    let mut drips = tokio::task::JoinSet::new();
    for i in 0..20 {
        let body = vonage_form(&format!("0D{i:014}"), "delivered").into_bytes();
        let head = format!(
            "POST /dlr/vonage HTTP/1.1\r\nhost: ingest\r\ncontent-type: {FORM}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        drips.spawn(slow_drip(addr, head, body, Duration::from_millis(100)));
    }

    // A flood of 10 000-parameter requests for the whole attack, from two
    // connections, alternating routes: cheap to send, and each must stay
    // cheap to refuse.
    let flood_stop = CancellationToken::new();
    let flood = (0..2)
        .map(|lane| {
            tokio::spawn({
                let stop = flood_stop.clone();
                async move {
                    let params = std::env::var("ABUSE_FLOOD_SAME")
                        .map_or_else(|_| distinct_params(10_000), |_| vec!["a="; 10_000].join("&"));
                    let requests = [
                        request("POST", "/dlr/vonage", Some(FORM), params.as_bytes()),
                        request("POST", "/dlr/twilio", Some(FORM), params.as_bytes()),
                        request("GET", &format!("/dlr/vonage?{params}"), None, b""),
                    ];
                    let mut answers = Vec::new();
                    for request in requests.iter().cycle().skip(lane) {
                        if stop.is_cancelled() {
                            break;
                        }
                        answers.push(exchange(addr, request.clone()).await);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    answers
                }
            })
        })
        .collect::<Vec<_>>();

    // Three rounds of the whole corpus, each round's requests in parallel.
    let mut failures = Vec::new();
    let mut timings: Vec<(Duration, String)> = Vec::new();
    for _round in 0..3 {
        let mut requests = tokio::task::JoinSet::new();
        for case in hostile_corpus() {
            requests.spawn(async move {
                let (answer, took) = exchange(addr, case.bytes).await;
                (case.name, case.expect, answer, took)
            });
        }
        while let Some(result) = requests.join_next().await {
            let (name, expect, answer, took) = result.expect("hostile request task");
            if answer != expect {
                failures.push(format!("{name}: expected {expect:?}, got {answer:?} after {took:?}"));
            }
            timings.push((took, name));
        }
    }
    while let Some(result) = drips.join_next().await {
        let (answer, took) = result.expect("slow drip task");
        let in_time = took >= REQUEST_TIMEOUT.mul_f32(0.9) && took < REQUEST_TIMEOUT + Duration::from_secs(3);
        if answer != Answer::Status(408) || !in_time {
            failures.push(format!(
                "slow-drip body: expected 408 after ~{REQUEST_TIMEOUT:?}, got {answer:?} after {took:?}"
            ));
        }
    }
    flood_stop.cancel();
    let mut answers = Vec::new();
    for lane in flood {
        answers.extend(lane.await.expect("10 000-parameter flood"));
    }
    let flood = answers;
    for (answer, took) in &flood {
        if *answer != Answer::Status(400) {
            failures.push(format!("10 000-parameter flood: expected 400, got {answer:?} after {took:?}"));
        }
    }
    let flood_max = flood.iter().map(|(_, took)| *took).max().unwrap_or_default();
    stop.cancel();
    let during = during.await.expect("traffic during the attack");
    let (rss_after, rss_peak) = memory_kib();

    let (base_p99, attack_p99) = (baseline.p99(), during.p99());
    note(format!(
        "good receipts p99: baseline {base_p99:?} ({} requests), under attack {attack_p99:?} ({} requests)",
        baseline.latencies.len(),
        during.latencies.len()
    ));
    note(format!(
        "VmRSS before the corpus {} MiB, after {} MiB (growth {} MiB), peak {} MiB",
        rss_before / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024,
        rss_peak / 1024,
    ));
    timings.sort_by_key(|t| std::cmp::Reverse(t.0));
    let slowest: Vec<String> =
        timings.iter().take(4).map(|(took, name)| format!("{name} {took:?}")).collect();
    note(format!("slowest hostile answers: {}", slowest.join(", ")));
    note(format!("10 000-parameter flood: {} requests, slowest answer {flood_max:?}", flood.len()));

    assert!(failures.is_empty(), "hostile requests answered wrongly:\n{}", failures.join("\n"));
    assert_eq!(healthz(&ingest).await, 200, "ingest is still live");
    for (phase, traffic) in [("baseline", &baseline), ("attack", &during)] {
        assert!(traffic.refused.is_empty(), "{phase}: good receipts refused: {:?}", traffic.refused);
        assert!(!traffic.accepted.is_empty(), "{phase}: no good receipt was sent");
    }
    let bound = (base_p99 * 5).max(Duration::from_millis(250));
    assert!(
        attack_p99 <= bound,
        "p99 of good receipts under attack {attack_p99:?} exceeds {bound:?} (baseline {base_p99:?}); \
         slowest hostile answers: {}",
        slowest.join(", ")
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 100 * 1024,
        "memory grew by {} MiB during the attack",
        rss_after.saturating_sub(rss_before) / 1024
    );

    // Only the good receipts reached the queue, each exactly once.
    let good: HashSet<&String> =
        warmup.accepted.iter().chain(&baseline.accepted).chain(&during.accepted).collect();
    let stored = broker.drain(&topology.queue, Duration::from_millis(500)).await;
    let stored_ids: Vec<String> = stored
        .iter()
        .map(|m| ReceiptEvent::from_json(&m.delivery.data).expect("a receipt event").message_id.to_string())
        .collect();
    let strangers: Vec<&String> = stored_ids.iter().filter(|id| !good.contains(id)).collect();
    assert!(strangers.is_empty(), "hostile requests reached the queue: {strangers:?}");
    assert_eq!(stored_ids.len(), good.len(), "every accepted good receipt is stored once");

    let metrics = ingest.metrics().await;
    // (/readyz answers 503 until the broker connection is up: not a request.)
    let server_errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("dlr_ingest_http_requests_total{") && !l.contains("/readyz"))
        .filter(|l| l.contains("status=\"5"))
        .collect();
    assert!(server_errors.is_empty(), "hostile input got 5xx answers: {server_errors:?}");
    assert_eq!(metric_value(&metrics, "dlr_ingest_load_shed_total", &[]), 0.0);

    ingest.stop().await;
    app.cleanup().await;
}

/// A client that never finishes its request head (slowloris) or never sends
/// one must be cut off like a slow body is; otherwise each such connection
/// holds a task and up to ~400 KiB of header buffer for as long as the
/// attacker likes, and no concurrency limit counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_idle_request_heads_are_cut_off() {
    let _serial = SERIAL.lock().await;
    let (app, ingest) = abuse_ingest().await;
    let (topology, broker) = (&app.topology, &app.broker);
    let addr = ingest.addr;
    let (rss_before, _) = memory_kib();

    let mut clients = tokio::task::JoinSet::new();
    // A head trickling in, one byte every 200 ms.
    let trickle = format!(
        "POST /dlr/vonage HTTP/1.1\r\nhost: ingest\r\ncontent-type: {FORM}\r\nx-slow: {}",
        "s".repeat(200)
    );
    clients.spawn(async move {
        (
            "trickling head",
            slow_drip(addr, Vec::new(), trickle.into_bytes(), Duration::from_millis(200)).await,
        )
    });
    // Connected, nothing sent.
    clients.spawn(async move {
        let (answer, took) = slow_drip(addr, Vec::new(), Vec::new(), Duration::ZERO).await;
        ("idle connection", (answer, took))
    });
    // 50 connections each parked with 300 KB of an unfinished head.
    for _ in 0..50 {
        let head = format!("POST /dlr/vonage HTTP/1.1\r\nhost: ingest\r\nx-big: {}", "b".repeat(300_000));
        clients.spawn(async move {
            ("300 KB unfinished head", slow_drip(addr, head.into_bytes(), Vec::new(), Duration::ZERO).await)
        });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (rss_held, _) = memory_kib();

    // Per kind of client: how many were not cut off in time, and one answer.
    let mut not_cut_off: std::collections::BTreeMap<&str, (usize, Answer, Duration)> = Default::default();
    while let Some(result) = clients.join_next().await {
        let (name, (answer, took)) = result.expect("client task");
        let cut_off = matches!(answer, Answer::Closed | Answer::Status(408));
        if !cut_off || took > REQUEST_TIMEOUT + Duration::from_secs(3) {
            let entry = not_cut_off.entry(name).or_insert((0, answer, took));
            entry.0 += 1;
        }
    }
    let failures: Vec<String> = not_cut_off
        .iter()
        .map(|(name, (count, answer, took))| format!("{count} x {name}: {answer:?} after {took:?}"))
        .collect();
    note(format!(
        "52 stalled request heads held {} MiB of VmRSS; not cut off within {:?}: {}",
        rss_held.saturating_sub(rss_before) / 1024,
        REQUEST_TIMEOUT + Duration::from_secs(3),
        if failures.is_empty() { "none".to_owned() } else { failures.join("; ") }
    ));
    assert_eq!(healthz(&ingest).await, 200, "ingest is still live");
    assert!(broker.drain(&topology.queue, Duration::from_millis(200)).await.is_empty());
    ingest.stop().await;
    app.cleanup().await;
    assert!(
        failures.is_empty(),
        "connections that never complete a request head are never closed (no header read timeout):\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Deadlines and limits on the production path

/// A form POST head for `/dlr/vonage` announcing `body`'s length.
fn vonage_head(body: &str) -> Vec<u8> {
    format!(
        "POST /dlr/vonage HTTP/1.1\r\nhost: ingest\r\ncontent-type: {FORM}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes()
}

/// Once the body is in, only the confirm timeout applies: a body that took
/// most of the request timeout followed by a broker that does not confirm
/// gets 503 + Retry-After (the provider retries), never 408 (final for
/// Vonage), and the in-flight gauge comes back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_confirm_after_a_slow_body_is_503_not_408() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::new().await;
    let mut proxy = BrokerProxy::reserve(broker_addr()).await;
    proxy.start().await;
    let mut config = app.ingest_config_at(&proxy.amqp_url());
    config.request_timeout = REQUEST_TIMEOUT;
    config.confirm_timeout = Duration::from_millis(1500);
    let ingest = app.start_ingest(config, READY).await;

    proxy.stall(true);
    let body = vonage_form("SLOWCONFIRM1", "delivered");
    // The body takes about 1.2 s of the 2 s; the confirm then never comes.
    let interval = Duration::from_millis(1200 / body.len() as u64);
    let (answer, took) = slow_drip(ingest.addr, vonage_head(&body), body.into_bytes(), interval).await;
    proxy.stall(false);
    assert_eq!(answer, Answer::Status(503), "answered after {took:?}");
    assert!(took > REQUEST_TIMEOUT, "the confirm wait outlasted the request timeout ({took:?})");

    let metrics = ingest.metrics().await;
    assert_eq!(metric_value(&metrics, "dlr_ingest_publishes_in_flight", &[]), 0.0, "gauge back to 0");
    assert_eq!(
        metric_value(
            &metrics,
            "dlr_ingest_http_requests_total",
            &[("route", "/dlr/vonage"), ("status", "503")]
        ),
        1.0
    );
    ingest.stop().await;
    app.cleanup().await;
}

/// A body that does not arrive in time gets 408, and the HTTP metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_timeout_is_counted_in_the_http_metrics() {
    let _serial = SERIAL.lock().await;
    let (app, ingest) = abuse_ingest().await;
    let body = vonage_form("SLOWBODY1", "delivered");
    let (answer, _) =
        slow_drip(ingest.addr, vonage_head(&body), body.into_bytes(), Duration::from_millis(100)).await;
    assert_eq!(answer, Answer::Status(408));
    let metrics = ingest.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dlr_ingest_http_requests_total",
            &[("route", "/dlr/vonage"), ("status", "408")]
        ),
        1.0,
        "the 408 is counted"
    );
    ingest.stop().await;
    app.cleanup().await;
}

/// Posts `body` dripping slowly, so the request holds a concurrency slot for
/// a few seconds. A probe that held a slot when this request's head arrived
/// sheds it with 429 at once; the holder then tries again, so the test does
/// not depend on who wins that race.
async fn hold_a_slot(addr: SocketAddr, body: String) -> Answer {
    let mut answer = Answer::Status(429);
    for _ in 0..20 {
        let head = vonage_head(&body);
        let bytes = body.clone().into_bytes();
        (answer, _) = slow_drip(addr, head, bytes, Duration::from_millis(20)).await;
        if answer != Answer::Status(429) {
            break;
        }
    }
    answer
}

/// INGEST_MAX_CONCURRENCY is one limit for the whole process: requests held
/// on one webhook route make another route shed with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_is_shared_by_every_route() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::new().await;
    let mut config = app.ingest_config();
    config.max_concurrency = 2;
    config.request_timeout = Duration::from_secs(10);
    let ingest = app.start_ingest(config, READY).await;

    let body = vonage_form("HOLDER1", "delivered");
    let holders: Vec<_> = (0..2).map(|_| tokio::spawn(hold_a_slot(ingest.addr, body.clone()))).collect();
    // Until both holders have their slots, a malformed receipt on the
    // holders' own route is answered 400; once they hold the limit, 429.
    let held = async || ingest.post("/dlr/vonage", FORM, "not=a-receipt").await.status().as_u16() == 429;
    assert!(eventually(READY, held).await, "the two holders take both slots");

    let response =
        ingest.post("/dlr/twilio", FORM, "MessageSid=SM1&MessageStatus=delivered&To=%2B14155551234").await;
    assert_eq!(response.status().as_u16(), 429, "the other route is shed while the limit is held");
    assert!(response.headers().contains_key("retry-after"));
    for holder in holders {
        let answer = holder.await.expect("holder task");
        assert_eq!(answer, Answer::Status(200), "the held requests complete");
    }
    ingest.stop().await;
    app.cleanup().await;
}
