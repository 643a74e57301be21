//! A fast MCP Streamable HTTP server for the benchmark, built directly on hyper so that the
//! upstream is never the bottleneck and costs every contender the same.
//!
//! It demands `Authorization: Bearer <token>` (401 otherwise) and answers:
//! - `POST server/discover`: JSON-RPC "method not found", as a 2025-11-25 server does, so the
//!   sidecar's readiness handshake goes on with `initialize`;
//! - `POST initialize`: a result with an `Mcp-Session-Id` (`bench-<n>`);
//! - notifications: `202 Accepted`;
//! - `POST tools/call` `echo`: the argument `text` back as JSON; `echo_sse`: the same reply as one
//!   SSE `message` event (the other reply form the spec allows);
//! - `GET` with `Accept: text/event-stream`: `?ticks=N&interval_ms=I` sends N events, each stamped
//!   with CLOCK_MONOTONIC at the moment it is handed to hyper; without `ticks`, one priming event
//!   and then silence (an idle stream, held until the client leaves);
//! - `DELETE` with a session: 200.
//!
//! Usage: `mock-upstream --token T [--listen 127.0.0.1:0] [--port-file PATH] [--threads N]`

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mcp_sidecar_bench::{Args, monotonic_ns};
use serde_json::{Value, json};

type Reply = Response<BoxBody<Bytes, Infallible>>;

struct State {
    /// `Bearer <token>`, compared byte for byte.
    expected_auth: Vec<u8>,
    sessions: AtomicU64,
}

fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let threads: usize = args.num("threads", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(serve(args));
}

async fn serve(args: Args) {
    let state = Arc::new(State {
        expected_auth: format!("Bearer {}", args.req("token")).into_bytes(),
        sessions: AtomicU64::new(0),
    });
    let listen = args.get("listen").unwrap_or("127.0.0.1:0");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("bind the listen address");
    let port = listener.local_addr().unwrap().port();
    if let Some(path) = args.get("port-file") {
        // Written to a temporary name and renamed, so a reader never sees a partial number.
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, port.to_string()).expect("write the port file");
        std::fs::rename(&tmp, path).expect("rename the port file");
    }
    eprintln!("mock-upstream listening on 127.0.0.1:{port}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // EMFILE and friends: wait a little rather than spin.
            Err(e) => {
                eprintln!("mock-upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == state.expected_auth.as_slice());
    if !authorized {
        return Ok(respond(
            StatusCode::UNAUTHORIZED,
            Some((header::WWW_AUTHENTICATE, r#"Bearer realm="bench""#)),
            "application/json",
            Bytes::from_static(br#"{"error":"invalid_token"}"#),
        ));
    }
    let session = request
        .headers()
        .get("mcp-session-id")
        .map(|v| v.as_bytes().starts_with(b"bench-"));
    if session == Some(false) {
        return Ok(rpc(
            StatusCode::NOT_FOUND,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"session not found"}}),
        ));
    }
    match *request.method() {
        Method::POST => post(state, request).await,
        Method::GET => Ok(get(&request)),
        Method::DELETE if session.is_some() => Ok(respond(
            StatusCode::OK,
            None,
            "application/json",
            Bytes::new(),
        )),
        _ => Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            Some((header::ALLOW, "GET, POST, DELETE")),
            "application/json",
            Bytes::new(),
        )),
    }
}

async fn post(state: Arc<State>, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let Ok(body) = request.into_body().collect().await else {
        return Ok(rpc(StatusCode::BAD_REQUEST, json!({"error": "body"})));
    };
    let Ok(message) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return Ok(rpc(
            StatusCode::BAD_REQUEST,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}),
        ));
    };
    let Some(id) = message.get("id").cloned() else {
        return Ok(respond(
            StatusCode::ACCEPTED,
            None,
            "application/json",
            Bytes::new(),
        ));
    };
    let params = &message["params"];
    let reply = match message["method"].as_str().unwrap_or("") {
        "initialize" => {
            let n = state.sessions.fetch_add(1, Ordering::Relaxed);
            let mut response = rpc(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"result":{
                    "protocolVersion":"2025-11-25",
                    "capabilities":{"tools":{}},
                    "serverInfo":{"name":"mcp-sidecar-bench-upstream","version":"0.1.0"}}}),
            );
            response.headers_mut().insert(
                "mcp-session-id",
                HeaderValue::try_from(format!("bench-{n}")).unwrap(),
            );
            response
        }
        "ping" => rpc(StatusCode::OK, json!({"jsonrpc":"2.0","id":id,"result":{}})),
        "tools/call" => {
            let text = params["arguments"]["text"].as_str().unwrap_or("");
            let reply = json!({"jsonrpc":"2.0","id":id,"result":{
                "content":[{"type":"text","text":text}],"isError":false}});
            match params["name"].as_str() {
                Some("echo") => rpc(StatusCode::OK, reply),
                Some("echo_sse") => respond(
                    StatusCode::OK,
                    None,
                    "text/event-stream",
                    Bytes::from(format!("event: message\ndata: {reply}\n\n")),
                ),
                _ => rpc(
                    StatusCode::OK,
                    json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"unknown tool"}}),
                ),
            }
        }
        // server/discover included: this is a 2025-11-25 server.
        other => rpc(
            StatusCode::OK,
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":format!("method not found: {other}")}}),
        ),
    };
    Ok(reply)
}

fn get(request: &Request<Incoming>) -> Reply {
    let wants_sse = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_sse {
        return respond(
            StatusCode::NOT_ACCEPTABLE,
            None,
            "application/json",
            Bytes::new(),
        );
    }
    let query = request.uri().query().unwrap_or("");
    let param = |name: &str| -> Option<u64> {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    };
    let body: BoxBody<Bytes, Infallible> = match param("ticks") {
        Some(count) => {
            let every = Duration::from_millis(param("interval_ms").unwrap_or(2).max(1));
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            BoxBody::new(Ticks {
                seq: 0,
                count,
                interval,
            })
        }
        None => BoxBody::new(Idle { primed: false }),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `count` events, one per interval tick, each stamped when hyper polls it (that is, right
/// before hyper writes and flushes it).
struct Ticks {
    seq: u64,
    count: u64,
    interval: tokio::time::Interval,
}

impl Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.seq >= self.count {
            return Poll::Ready(None);
        }
        ready!(self.interval.poll_tick(cx));
        let seq = self.seq;
        self.seq += 1;
        let event = format!(
            "id: {seq}\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"level\":\"info\",\"data\":{{\"seq\":{seq},\"t_ns\":{}}}}}}}\n\n",
            monotonic_ns()
        );
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

/// One priming event, then nothing until the client goes away (hyper notices the closed
/// connection and drops the body).
struct Idle {
    primed: bool,
}

const PRIMING: &[u8] = b"id: 0\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"idle stream open\"}}\n\n";

impl Body for Idle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.primed {
            return Poll::Pending;
        }
        self.primed = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PRIMING)))))
    }
}

fn rpc(status: StatusCode, body: Value) -> Reply {
    respond(
        status,
        None,
        "application/json",
        Bytes::from(body.to_string()),
    )
}

fn respond(
    status: StatusCode,
    extra: Option<(header::HeaderName, &'static str)>,
    content_type: &'static str,
    body: Bytes,
) -> Reply {
    let mut response = Response::new(BoxBody::new(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some((name, value)) = extra {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
