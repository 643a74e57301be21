//! The bench's measuring client. Well-known load generators (wrk, oha) count responses but do not
//! check them against the request that caused them; this one does, for every response, which is
//! what the benchmark promises. It is a closed-loop client on raw hyper HTTP/1.1 connections, as
//! cheap per request as wrk, and records every latency sample (exact percentiles).
//!
//! Subcommands (each writes one JSON object to `--out`):
//! - `load --url U --connections C --duration-s D --warmup-s W [--tool echo|echo_sse] [--token T]`:
//!   `initialize` + `notifications/initialized` through the contender, then C connections each
//!   sending `tools/call` back to back for W+D seconds (W not recorded), then `DELETE` of the
//!   session. Every reply must be HTTP 200 with the request's id and its own text echoed back.
//! - `sse-delay --url U --streams S --events N --interval-ms I`: S GET streams of N events each;
//!   records receipt time minus the upstream's CLOCK_MONOTONIC stamp, checks that every event
//!   arrives, in order.
//! - `idle-streams --url U --streams S --pids P1,P2`: RSS (sum over the pids) before, with S idle
//!   GET streams open (each verified by its priming event), and after closing them.
//! - `startup --port P [--ready-path /ready] --runs R -- CMD...`: runs CMD R times and measures
//!   exec to first accepted TCP connect, and to the first 200 from `ready-path`.
//!
//! Exits 1 when any response was wrong, so `bench/run` fails with it.

use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mcp_sidecar_bench::{Args, Samples, monotonic_ns};
use serde_json::{Value, json};

fn main() {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    let args = Args::parse(argv);
    let (result, ok) = match command.as_str() {
        "startup" => startup(&args),
        other => {
            // One worker thread by default: on a small machine the client must leave CPU to the
            // contender and the upstream, and must use the same share for every contender.
            let threads: usize = args.num("threads", 1);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async {
                match other {
                    "load" => load(&args).await,
                    "sse-delay" => sse_delay(&args).await,
                    "idle-streams" => idle_streams(&args).await,
                    _ => {
                        eprintln!(
                            "usage: bench-client load|sse-delay|idle-streams|startup --url ... --out FILE"
                        );
                        std::process::exit(64);
                    }
                }
            })
        }
    };
    let text = serde_json::to_string_pretty(&result).unwrap();
    match args.get("out") {
        Some(path) => std::fs::write(path, text).expect("write --out"),
        None => println!("{text}"),
    }
    if !ok {
        eprintln!(
            "bench-client {command}: wrong or missing responses: {}",
            result["errors"]
        );
        std::process::exit(1);
    }
}

/// Where requests go, and the headers every request carries.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    path: String,
    /// `Bearer ...` when the client talks to the upstream directly.
    auth: Option<HeaderValue>,
}

impl Target {
    fn from_args(args: &Args) -> Self {
        let uri: Uri = args.req("url").parse().expect("--url");
        let authority = uri.authority().expect("--url needs host:port").clone();
        let addr = authority
            .as_str()
            .parse()
            .expect("--url must use an IP literal and a port");
        Self {
            addr,
            host: HeaderValue::from_str(authority.as_str()).unwrap(),
            path: uri.path().to_string(),
            auth: args
                .get("token")
                .map(|t| HeaderValue::from_str(&format!("Bearer {t}")).unwrap()),
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        session: Option<&HeaderValue>,
    ) -> http::request::Builder {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.clone())
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(auth) = &self.auth {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        if let Some(session) = session {
            builder = builder.header("mcp-session-id", session.clone());
        }
        builder
    }

    fn post(&self, session: Option<&HeaderValue>, body: String) -> Request<Full<Bytes>> {
        self.request(Method::POST, &self.path, session)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<(Sender, tokio::task::JoinHandle<()>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

/// Sends one request and reads the whole reply.
async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// The JSON-RPC message in a reply: the body itself, or the first `data:` of an SSE reply.
fn message_of(headers: &http::HeaderMap, body: &[u8]) -> Result<Value, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json: &[u8] = if content_type.starts_with("text/event-stream") {
        let text = std::str::from_utf8(body).map_err(|_| "SSE body is not UTF-8".to_string())?;
        text.lines()
            .find_map(|line| line.strip_prefix("data:"))
            .map(|d| d.trim_start().as_bytes())
            .ok_or_else(|| format!("SSE reply without data: {text:?}"))?
    } else if content_type.starts_with("application/json") {
        body
    } else {
        return Err(format!("unexpected content-type {content_type:?}"));
    };
    serde_json::from_slice(json).map_err(|e| format!("reply is not JSON ({e})"))
}

/// `initialize` and `notifications/initialized` through the contender: the session every request
/// of the run then carries, as a real client's would.
async fn open_session(target: &Target) -> Result<HeaderValue, String> {
    let (mut sender, task) = connect(target.addr).await?;
    let init = json!({"jsonrpc":"2.0","id":"init","method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},
        "clientInfo":{"name":"mcp-sidecar-bench","version":"0.1.0"}}});
    let (status, headers, body) =
        exchange(&mut sender, target.post(None, init.to_string())).await?;
    let message = message_of(&headers, &body)?;
    if status != StatusCode::OK
        || message["id"] != "init"
        || message["result"]["protocolVersion"] != "2025-11-25"
    {
        return Err(format!("initialize: HTTP {status}, {message}"));
    }
    let session = headers
        .get("mcp-session-id")
        .cloned()
        .ok_or("initialize reply without Mcp-Session-Id")?;
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_string();
    let (status, _, _) = exchange(&mut sender, target.post(Some(&session), note)).await?;
    if status != StatusCode::ACCEPTED {
        return Err(format!(
            "notifications/initialized: HTTP {status} (expected 202)"
        ));
    }
    task.abort();
    Ok(session)
}

async fn close_session(target: &Target, session: &HeaderValue) -> Result<(), String> {
    let (mut sender, task) = connect(target.addr).await?;
    let request = target
        .request(Method::DELETE, &target.path, Some(session))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = exchange(&mut sender, request).await?;
    task.abort();
    if status != StatusCode::OK {
        return Err(format!("DELETE session: HTTP {status}"));
    }
    Ok(())
}

/// Errors found by one task: a count and the first few descriptions.
#[derive(Default)]
struct Errors {
    count: u64,
    samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }
    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s);
            }
        }
    }
    fn json(&self) -> Value {
        json!({"count": self.count, "samples": self.samples})
    }
}

async fn load(args: &Args) -> (Value, bool) {
    let target = Target::from_args(args);
    let connections: u64 = args.num("connections", 1);
    let duration = Duration::from_secs_f64(args.num("duration-s", 10.0));
    let warmup = Duration::from_secs_f64(args.num("warmup-s", 2.0));
    let tool = args.get("tool").unwrap_or("echo").to_string();
    let mut errors = Errors::default();

    let session = match open_session(&target).await {
        Ok(s) => s,
        Err(e) => {
            errors.add(e);
            return (json!({"errors": errors.json()}), false);
        }
    };
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let target = target.clone();
        let session = session.clone();
        let tool = tool.clone();
        tasks.push(tokio::spawn(async move {
            worker(c, target, session, tool, measure_from, end).await
        }));
    }
    let mut samples = Samples::default();
    let mut reconnects = 0;
    let mut last_done = measure_from;
    for task in tasks {
        let (s, e, r, done) = task.await.expect("worker panicked");
        samples.merge(s);
        errors.merge(e);
        reconnects += r;
        last_done = last_done.max(done);
    }
    if let Err(e) = close_session(&target, &session).await {
        errors.add(e);
    }
    let window = last_done.duration_since(measure_from).as_secs_f64();
    let requests = samples.0.len();
    let ok = errors.count == 0 && requests > 0;
    let result = json!({
        "connections": connections,
        "tool": tool,
        "requests": requests,
        "window_s": window,
        "rps": requests as f64 / window.max(1e-9),
        "latency": samples.summary(),
        "reconnects": reconnects,
        "errors": errors.json(),
    });
    (result, ok)
}

/// One connection's closed loop. Returns samples, errors, reconnects and the time of its last
/// completed request.
async fn worker(
    c: u64,
    target: Target,
    session: HeaderValue,
    tool: String,
    measure_from: Instant,
    end: Instant,
) -> (Samples, Errors, u64, Instant) {
    let mut samples = Samples(Vec::with_capacity(1 << 16));
    let mut errors = Errors::default();
    let mut reconnects = 0u64;
    let mut sender: Option<(Sender, tokio::task::JoinHandle<()>)> = None;
    let mut last_done = measure_from;
    let expect_sse = tool == "echo_sse";
    let mut i = 0u64;
    while Instant::now() < end {
        // A server may end a keep-alive connection between requests (nginx does after
        // `keepalive_requests`, announcing it with `Connection: close`): not an error, a reconnect.
        if let Some((s, task)) = &mut sender
            && s.ready().await.is_err()
        {
            task.abort();
            sender = None;
        }
        if sender.is_none() {
            match connect(target.addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    errors.add(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            if i > 0 {
                reconnects += 1;
            }
        }
        i += 1;
        let id = c * 1_000_000_000 + i;
        let text = format!("c{c}r{i}");
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"{text}"}}}}}}"#
        );
        let request = target.post(Some(&session), body);
        let start = Instant::now();
        let result = exchange(&mut sender.as_mut().unwrap().0, request).await;
        let done = Instant::now();
        let verdict = result.and_then(|(status, headers, body)| {
            if status != StatusCode::OK {
                return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
            }
            let is_sse = headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            if is_sse != expect_sse {
                return Err(format!(
                    "reply content-type {:?}",
                    headers.get(header::CONTENT_TYPE)
                ));
            }
            let message = message_of(&headers, &body)?;
            let good = message["jsonrpc"] == "2.0"
                && message["id"].as_u64() == Some(id)
                && message["result"]["content"][0]["text"].as_str() == Some(text.as_str())
                && message["result"]["isError"] == false;
            if good {
                Ok(())
            } else {
                Err(format!("wrong reply to id {id}: {message}"))
            }
        });
        match verdict {
            Ok(()) => {
                if start >= measure_from {
                    samples.0.push(done.duration_since(start).as_nanos() as u64);
                    last_done = done;
                }
            }
            Err(e) => {
                errors.add(e);
                // The connection's state is unknown after a wrong reply: start a new one.
                if let Some((_, task)) = sender.take() {
                    task.abort();
                }
            }
        }
    }
    if let Some((_, task)) = sender {
        task.abort();
    }
    (samples, errors, reconnects, last_done)
}

async fn sse_delay(args: &Args) -> (Value, bool) {
    let target = Target::from_args(args);
    let streams: u64 = args.num("streams", 4);
    let events: u64 = args.num("events", 2000);
    let interval_ms: u64 = args.num("interval-ms", 2);
    let mut errors = Errors::default();
    let session = match open_session(&target).await {
        Ok(s) => s,
        Err(e) => {
            errors.add(e);
            return (json!({"errors": errors.json()}), false);
        }
    };
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let target = target.clone();
        let session = session.clone();
        let path = format!("{}?ticks={events}&interval_ms={interval_ms}", target.path);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let result = one_tick_stream(&target, &session, &path, events, &mut samples).await;
            (samples, result)
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        let (s, result) = task.await.expect("stream task panicked");
        samples.merge(s);
        if let Err(e) = result {
            errors.add(e);
        }
    }
    if let Err(e) = close_session(&target, &session).await {
        errors.add(e);
    }
    let ok = errors.count == 0;
    let result = json!({
        "streams": streams,
        "events_per_stream": events,
        "interval_ms": interval_ms,
        "delay": samples.summary(),
        "errors": errors.json(),
    });
    (result, ok)
}

async fn one_tick_stream(
    target: &Target,
    session: &HeaderValue,
    path: &str,
    events: u64,
    samples: &mut Samples,
) -> Result<(), String> {
    let (mut sender, task) = connect(target.addr).await?;
    let request = target
        .request(Method::GET, path, Some(session))
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET stream: {e}"))?;
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if response.status() != StatusCode::OK || !is_sse {
        return Err(format!(
            "GET stream: HTTP {}, {:?}",
            response.status(),
            response.headers()
        ));
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let mut next_seq = 0u64;
    while next_seq < events {
        let Some(frame) = body.frame().await else {
            break;
        };
        let received = monotonic_ns();
        let frame = frame.map_err(|e| format!("stream broke: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        // Complete events end with a blank line; comment lines (keepalives) carry no data.
        while let Some(end) = find(&buffer, b"\n\n") {
            let event = buffer.split_to(end + 2);
            let text = std::str::from_utf8(&event).map_err(|_| "event is not UTF-8")?;
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let message: Value =
                serde_json::from_str(data).map_err(|e| format!("event data is not JSON: {e}"))?;
            let seq = message["params"]["data"]["seq"].as_u64();
            let stamp = message["params"]["data"]["t_ns"].as_u64();
            match (seq, stamp) {
                (Some(seq), Some(stamp)) if seq == next_seq => {
                    samples.0.push(received.saturating_sub(stamp));
                    next_seq += 1;
                }
                _ => return Err(format!("expected event {next_seq}, got {data}")),
            }
        }
    }
    task.abort();
    if next_seq != events {
        return Err(format!("stream ended after {next_seq} of {events} events"));
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Resident set size (KiB) summed over `pids`, from /proc.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| -> u64 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .unwrap_or_else(|| panic!("cannot read VmRSS of pid {pid}"))
        })
        .sum()
}

/// RSS once it has settled: sampled every 100 ms until two samples 100 ms apart agree within
/// 0.5% (or 3 s passed). Memory freed by closing streams or allocated by a burst is returned or
/// touched over a few milliseconds, not at once.
async fn settled_rss(pids: &[u32]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = rss_kib(pids);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pids);
        if now.abs_diff(last) * 200 <= last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

async fn idle_streams(args: &Args) -> (Value, bool) {
    let target = Target::from_args(args);
    let streams: usize = args.num("streams", 10_000);
    let concurrency: usize = args.num("concurrency", 128);
    let pids: Vec<u32> = args
        .req("pids")
        .split(',')
        .map(|p| p.trim().parse().expect("--pids"))
        .collect();
    let mut errors = Errors::default();
    let session = match open_session(&target).await {
        Ok(s) => s,
        Err(e) => {
            errors.add(e);
            return (json!({"errors": errors.json()}), false);
        }
    };
    let before = settled_rss(&pids).await;
    let opening = Instant::now();
    // Bounded concurrency: a burst of 10,000 SYNs overflows listen backlogs and measures the
    // kernel's retransmit timer instead of the proxy.
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let target = target.clone();
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let opened = open_idle_stream(&target, &session).await;
            drop(permit);
            opened
        }));
    }
    let mut open = Vec::with_capacity(streams);
    for task in tasks {
        match task.await.expect("stream task panicked") {
            Ok(stream) => open.push(stream),
            Err(e) => errors.add(e),
        }
    }
    let open_s = opening.elapsed().as_secs_f64();
    let with_streams = settled_rss(&pids).await;
    let opened = open.len();
    for (body, task) in open.drain(..) {
        drop(body);
        task.abort();
    }
    let after = settled_rss(&pids).await;
    if let Err(e) = close_session(&target, &session).await {
        errors.add(e);
    }
    let ok = errors.count == 0 && opened == streams;
    let result = json!({
        "streams": streams,
        "opened": opened,
        "open_s": open_s,
        "rss_before_kib": before,
        "rss_open_kib": with_streams,
        "rss_after_close_kib": after,
        "per_stream_bytes": (with_streams.saturating_sub(before) * 1024) as f64 / opened.max(1) as f64,
        "errors": errors.json(),
    });
    (result, ok)
}

/// Opens one GET stream and waits for its priming event; returns what keeps it open.
async fn open_idle_stream(
    target: &Target,
    session: &HeaderValue,
) -> Result<(hyper::body::Incoming, tokio::task::JoinHandle<()>), String> {
    let (mut sender, task) = connect(target.addr).await?;
    let request = target
        .request(Method::GET, &target.path, Some(session))
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET stream: {e}"))
    };
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .map_err(|_| "GET stream: no response headers within 30 s".to_string())??;
    if response.status() != StatusCode::OK {
        return Err(format!("GET stream: HTTP {}", response.status()));
    }
    let mut body = response.into_body();
    let mut seen = BytesMut::new();
    let priming = async {
        while find(&seen, b"\n\n").is_none() {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(format!("stream broke: {e}")),
                None => return Err("stream ended before its first event".to_string()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), priming)
        .await
        .map_err(|_| "no priming event within 30 s".to_string())??;
    if find(&seen, b"idle stream open").is_none() {
        return Err(format!(
            "unexpected first event {:?}",
            String::from_utf8_lossy(&seen)
        ));
    }
    Ok((body, task))
}

/// Runs `--` CMD `--runs` times; exec to listening (first TCP connect accepted on `--port`) and,
/// with `--ready-path`, to the first HTTP 200 there. Polls every 100 µs with plain blocking
/// sockets (tokio's timer has 1 ms granularity, too coarse for a 20 ms target).
fn startup(args: &Args) -> (Value, bool) {
    let port: u16 = args.num("port", 0);
    let runs: usize = args.num("runs", 10);
    let ready_path = args.get("ready-path");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Duration::from_secs(args.num("timeout-s", 20));
    let (program, rest) = args.rest.split_first().expect("startup needs -- CMD");
    let mut listening = Samples::default();
    let mut ready = Samples::default();
    let mut errors = Errors::default();
    for _ in 0..runs {
        // A previous run's process must be gone and its port free.
        if StdTcpStream::connect(addr).is_ok() {
            errors.add(format!("port {port} is already in use before exec"));
            break;
        }
        let started = Instant::now();
        let mut child = std::process::Command::new(program)
            .args(rest)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the command");
        let outcome = (|| -> Result<(), String> {
            loop {
                if StdTcpStream::connect(addr).is_ok() {
                    listening.0.push(started.elapsed().as_nanos() as u64);
                    break;
                }
                if started.elapsed() > deadline {
                    return Err("not listening before the deadline".into());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("exited with {status} before listening"));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            let Some(path) = ready_path else {
                return Ok(());
            };
            loop {
                if http_status(addr, path) == Some(200) {
                    ready.0.push(started.elapsed().as_nanos() as u64);
                    return Ok(());
                }
                if started.elapsed() > deadline {
                    return Err(format!("{path} not 200 before the deadline"));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })();
        // SIGTERM, then SIGKILL if it lingers: the next run needs the port.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let stop = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if stop.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = outcome {
            errors.add(e);
        }
    }
    let ok = errors.count == 0;
    let result = json!({
        "runs": runs,
        "listening": listening.summary(),
        "ready": ready.summary(),
        "errors": errors.json(),
    });
    (result, ok)
}

/// Status code of `GET path` on a fresh connection, or None when it cannot be had.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = StdTcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
