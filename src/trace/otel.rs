//! The OpenTelemetry side of [`crate::trace`] (feature `otel`): the tracer provider and its
//! exporters, the per-request span and its W3C context, carried in a task-local.
//!
//! The span of a request is started only once its body is read (by [`request_body`]): its name
//! and its parent may come from the JSON-RPC message (`params._meta.traceparent`), and an
//! OpenTelemetry span cannot be renamed or re-parented after the sampler saw it. Its start time
//! is the moment the request arrived. A request refused before its body was read gets its span
//! when the response is ready. The span ends with the response body (an SSE stream's span lasts
//! as long as the stream), so the byte count is the one the client received.
//!
//! The context lives in a tokio task-local rather than `opentelemetry::Context::current()`: the
//! proxy's futures are polled by hyper, not wrapped one by one, and the task-local follows the
//! request through every `.await` of the handler without touching its code.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde_json::Value;

use super::{Note, Sampler, TraceConfig};

/// Set once by [`start`]: from then on every facade function works.
static GLOBAL: OnceLock<Global> = OnceLock::new();

pub(super) struct Global {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// `server.address` of the proxied requests' spans.
    upstream: String,
}

tokio::task_local! {
    /// The operation (request or handshake) the current task works for.
    static CURRENT: Arc<Op>;
}

pub(super) fn enabled() -> bool {
    GLOBAL.get().is_some()
}

pub(super) fn start(
    config: &TraceConfig,
    client: reqwest::Client,
    upstream: &str,
) -> Result<SdkTracerProvider, String> {
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(&config.sampler))
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attributes(
                    config
                        .resource
                        .iter()
                        .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
                )
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
    if let Some(url) = &config.otlp {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "traces start outside the async runtime".to_string())?;
        let headers: HashMap<String, String> = config
            .headers
            .as_ref()
            .and_then(|h| super::parse_headers(h.expose()).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpClient { client, handle })
            .with_endpoint(url.as_str())
            .with_protocol(Protocol::HttpBinary)
            .with_headers(headers)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            // Its messages name settings, not header values.
            .map_err(|e| {
                format!(
                    "{}: cannot set up the OTLP exporter: {e}",
                    super::TRACES_ENDPOINT
                )
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    if let Some(path) = &config.file {
        let exporter = super::jsonl::JsonlExporter::open(path).map_err(|e| {
            format!(
                "MCP_SIDECAR_TRACES_FILE: cannot open {} for writing: {e}",
                path.display()
            )
        })?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let global = Global {
        tracer: provider.tracer("mcp-sidecar"),
        propagator: TraceContextPropagator::new(),
        upstream: upstream.to_string(),
    };
    // A second start in one process (tests) keeps the first tracer.
    let _ = GLOBAL.set(global);
    Ok(provider)
}

pub(super) fn shutdown(provider: SdkTracerProvider) {
    if let Err(e) = provider.shutdown() {
        tracing::warn!(error = %crate::secret::scrub(&e.to_string()), "traces could not all be exported at shutdown");
    }
}

const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn sampler(sampler: &Sampler) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as S;
    match sampler {
        Sampler::AlwaysOn => S::AlwaysOn,
        Sampler::AlwaysOff => S::AlwaysOff,
        Sampler::Ratio(r) => S::TraceIdRatioBased(*r),
        Sampler::ParentBased(inner) => S::ParentBased(Box::new(self::sampler(inner))),
    }
}

/// The OTLP exporter's HTTP client: the sidecar's reqwest client (its TLS stack and `CA_FILE`).
/// The SDK's batch processor exports from a thread of its own, outside the runtime that reqwest
/// needs, so each request is spawned onto the runtime and awaited from there.
#[derive(Debug)]
struct OtlpClient {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

/// An OTLP response is a small protobuf; more is a misdirected endpoint.
const MAX_EXPORT_RESPONSE: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let mut request = reqwest::Request::try_from(request)?;
        *request.timeout_mut() = Some(EXPORT_TIMEOUT);
        let client = self.client.clone();
        let exchange = self.handle.spawn(async move {
            let mut response = client.execute(request).await?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_EXPORT_RESPONSE {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let result = exchange.await?;
        let (status, headers, body) = result.inspect_err(|e| {
            tracing::warn!(error = %crate::net::describe_reqwest_error(e), "could not export traces");
        })?;
        if !status.is_success() {
            tracing::warn!(
                status = status.as_u16(),
                "the trace collector refused an export"
            );
        }
        let mut response = http::Response::new(Bytes::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// One request (or handshake) and its span, once started.
struct Op {
    arrived: SystemTime,
    /// The client's context from `traceparent`/`tracestate` (empty when it sent none).
    parent: Context,
    http_method: String,
    path: String,
    state: Mutex<OpState>,
}

#[derive(Default)]
struct OpState {
    span: Option<Context>,
    /// Recorded before the span started.
    pending: Vec<KeyValue>,
    failed: Option<String>,
    ended: bool,
}

impl Op {
    fn state(&self) -> std::sync::MutexGuard<'_, OpState> {
        // A panic elsewhere while holding it leaves nothing half-done worth refusing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the span unless it already runs; returns its context.
    fn start(
        &self,
        global: &Global,
        name: Option<String>,
        attributes: Vec<KeyValue>,
        parent: Option<&Context>,
    ) -> Context {
        let mut state = self.state();
        if let Some(cx) = &state.span {
            return cx.clone();
        }
        let mut all = vec![
            KeyValue::new("http.request.method", self.http_method.clone()),
            KeyValue::new("url.path", self.path.clone()),
            KeyValue::new("server.address", global.upstream.clone()),
        ];
        all.extend(attributes);
        all.append(&mut state.pending);
        let parent = parent.unwrap_or(&self.parent);
        let span = global
            .tracer
            .span_builder(name.unwrap_or_else(|| format!("{} {}", self.http_method, self.path)))
            .with_kind(SpanKind::Server)
            .with_start_time(self.arrived)
            .with_attributes(all)
            .start_with_context(&global.tracer, parent);
        let cx = parent.with_span(span);
        state.span = Some(cx.clone());
        cx
    }

    fn add(&self, kv: KeyValue) {
        let mut state = self.state();
        match &state.span {
            Some(cx) => cx.span().set_attribute(kv),
            None => state.pending.push(kv),
        }
    }

    fn end(&self, bytes: u64) {
        let mut state = self.state();
        if std::mem::replace(&mut state.ended, true) {
            return;
        }
        let failed = state.failed.take();
        if let Some(cx) = &state.span {
            let span = cx.span();
            span.set_attribute(KeyValue::new("http.response.body.size", bytes as i64));
            if let Some(reason) = failed {
                span.set_status(Status::error(reason));
            }
            span.end();
        }
    }

    fn context(&self) -> Option<Context> {
        self.state().span.clone()
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(key),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The per-request span: see the module doc.
pub(super) async fn middleware(request: Request, next: Next) -> Response {
    let Some(global) = GLOBAL.get() else {
        return next.run(request).await;
    };
    let op = Arc::new(Op {
        arrived: SystemTime::now(),
        parent: global
            .propagator
            .extract(&HeaderExtractor(request.headers())),
        http_method: request.method().to_string(),
        path: request.uri().path().to_string(),
        state: Mutex::default(),
    });
    let response = CURRENT.scope(op.clone(), next.run(request)).await;
    let status = response.status();
    let cx = op.start(global, None, Vec::new(), None);
    cx.span().set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        let mut state = op.state();
        if state.failed.is_none() {
            state.failed = Some(format!("status {}", status.as_u16()));
        }
    }
    response.map(|inner| {
        Body::new(Traced {
            inner,
            op,
            bytes: 0,
        })
    })
}

/// The response body, counted; its end (or drop: the client went away) ends the span.
struct Traced {
    inner: Body,
    op: Arc<Op>,
    bytes: u64,
}

impl http_body::Body for Traced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.op.end(this.bytes),
            Poll::Ready(Some(Err(_))) => {
                this.op.state().failed = Some("the response body broke off".into());
                this.op.end(this.bytes);
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.op.end(self.bytes);
    }
}

fn current() -> Option<Arc<Op>> {
    CURRENT.try_with(Arc::clone).ok()
}

pub(super) fn request_body(body: Bytes) -> Bytes {
    let (Some(global), Some(op)) = (GLOBAL.get(), current()) else {
        return body;
    };
    annotate(global, &op, body)
}

/// Names and starts the span after the message, and writes its context into `params._meta`.
fn annotate(global: &Global, op: &Op, body: Bytes) -> Bytes {
    let size = KeyValue::new("http.request.body.size", body.len() as i64);
    let looks_like_object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let mut message: Option<Value> = looks_like_object
        .then(|| serde_json::from_slice(&body).ok())
        .flatten();
    let Some(Value::Object(fields)) = &mut message else {
        op.start(global, None, vec![size], None);
        return body;
    };
    let method = fields
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut attributes = vec![size];
    let mut name = None;
    if let Some(method) = &method {
        attributes.push(KeyValue::new("mcp.method.name", method.clone()));
        let params = fields.get("params");
        let text = |key: &str| {
            params
                .and_then(|p| p.get(key))
                .and_then(Value::as_str)
                // Names and URIs come from the client and may quote anything.
                .map(crate::secret::scrub)
        };
        let target = match method.as_str() {
            "tools/call" => text("name").map(|n| ("gen_ai.tool.name", n)),
            "prompts/get" => text("name").map(|n| ("gen_ai.prompt.name", n)),
            m if m.starts_with("resources/") => text("uri").map(|u| ("mcp.resource.uri", u)),
            _ => None,
        };
        name = Some(match target {
            Some((key, value)) => {
                attributes.push(KeyValue::new(key, value.clone()));
                format!("{method} {value}")
            }
            None => method.clone(),
        });
    }
    if let Some(id) = fields.get("id").filter(|id| !id.is_null()) {
        let id = match id {
            Value::String(s) => crate::secret::scrub(s),
            other => other.to_string(),
        };
        attributes.push(KeyValue::new("jsonrpc.request.id", id));
    }
    // The client's header wins; a message-level context is the MCP way without one.
    let from_meta = (!op.parent.has_active_span())
        .then(|| {
            let meta = fields.get("params")?.get("_meta")?.as_object()?;
            let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
                .into_iter()
                .filter_map(|k| Some((k.to_string(), meta.get(k)?.as_str()?.to_string())))
                .collect();
            let cx = global.propagator.extract(&carrier);
            cx.has_active_span().then_some(cx)
        })
        .flatten();
    let cx = op.start(global, name, attributes, from_meta.as_ref());
    let Some(Value::Object(params)) = fields.get_mut("params") else {
        return body;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Value::Object(meta) = meta else {
        return body;
    };
    let mut carrier = HashMap::new();
    global.propagator.inject_context(&cx, &mut carrier);
    for (key, value) in carrier {
        meta.insert(key, Value::String(value));
    }
    match serde_json::to_vec(&message) {
        Ok(rewritten) => Bytes::from(rewritten),
        Err(_) => body,
    }
}

pub(super) fn inject(headers: &mut HeaderMap) {
    let (Some(global), Some(op)) = (GLOBAL.get(), current()) else {
        return;
    };
    if let Some(cx) = op.context() {
        global
            .propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
    }
}

pub(super) fn note(note: Note) {
    if let Some(op) = current() {
        let key = match note {
            Note::TokenRefreshed => "mcp_sidecar.token_refreshed",
            Note::SessionReinitialized => "mcp_sidecar.session_reinitialized",
        };
        op.add(KeyValue::new(key, true));
    }
}

pub(super) fn outcome(outcome: &str) {
    if let Some(op) = current() {
        op.add(KeyValue::new("mcp_sidecar.outcome", outcome.to_string()));
        if outcome != "forwarded" {
            op.state().failed = Some(outcome.to_string());
        }
    }
}

pub(super) fn current_ids() -> Option<(String, String)> {
    let cx = current()?.context()?;
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| {
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    })
}

/// Ends a span when its future is dropped before it finished (a timeout, shutdown).
struct EndOnDrop(Option<Context>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(cx) = self.0.take() {
            let span = cx.span();
            span.set_attribute(KeyValue::new("mcp_sidecar.outcome", "cancelled"));
            span.set_status(Status::error("cancelled"));
            span.end();
        }
    }
}

fn finish<T, E>(mut guard: EndOnDrop, result: &Result<T, E>, outcome: &'static str) {
    if let Some(cx) = guard.0.take() {
        let span = cx.span();
        span.set_attribute(KeyValue::new("mcp_sidecar.outcome", outcome));
        if result.is_err() {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }
}

pub(super) async fn token_request<T, E, F>(
    grant: &str,
    request: F,
    describe: impl FnOnce(&Result<T, E>) -> &'static str,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let Some(global) = GLOBAL.get() else {
        return request.await;
    };
    let parent = current().and_then(|op| op.context()).unwrap_or_default();
    let span = global
        .tracer
        .span_builder("oauth token")
        .with_kind(SpanKind::Client)
        .with_attributes([KeyValue::new("oauth.grant_type", grant.to_string())])
        .start_with_context(&global.tracer, &parent);
    let guard = EndOnDrop(Some(parent.with_span(span)));
    let result = request.await;
    let outcome = describe(&result);
    finish(guard, &result, outcome);
    result
}

pub(super) async fn handshake<T, E, F>(
    handshake: F,
    describe: impl FnOnce(&Result<T, E>) -> &'static str,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let Some(global) = GLOBAL.get() else {
        return handshake.await;
    };
    let span = global
        .tracer
        .span_builder("mcp handshake")
        .with_kind(SpanKind::Client)
        .with_attributes([KeyValue::new("server.address", global.upstream.clone())])
        .start_with_context(&global.tracer, &Context::new());
    let cx = Context::new().with_span(span);
    let op = Arc::new(Op {
        arrived: SystemTime::now(),
        parent: Context::new(),
        http_method: "POST".into(),
        path: String::new(),
        state: Mutex::new(OpState {
            span: Some(cx.clone()),
            // Its end is `finish`'s, not a response body's.
            ended: true,
            ..OpState::default()
        }),
    });
    let guard = EndOnDrop(Some(cx));
    let result = CURRENT.scope(op, handshake).await;
    let outcome = describe(&result);
    finish(guard, &result, outcome);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceId;

    fn global(dir: &std::path::Path) -> (Global, SdkTracerProvider, std::path::PathBuf) {
        let path = dir.join("traces.jsonl");
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(super::super::jsonl::JsonlExporter::open(&path).unwrap())
            .build();
        let global = Global {
            tracer: provider.tracer("test"),
            propagator: TraceContextPropagator::new(),
            upstream: "upstream.example:443".into(),
        };
        (global, provider, path)
    }

    fn op(headers: &HeaderMap, global: &Global) -> Op {
        Op {
            arrived: SystemTime::now(),
            parent: global.propagator.extract(&HeaderExtractor(headers)),
            http_method: "POST".into(),
            path: "/mcp".into(),
            state: Mutex::default(),
        }
    }

    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_tools_call_span_is_the_child_of_the_clients_header_and_its_context_goes_into_meta() {
        let dir = tempfile::tempdir().unwrap();
        let (global, provider, path) = global(dir.path());
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "vendor=abc".parse().unwrap());
        let op = op(&headers, &global);
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"x":1},"_meta":{"progressToken":"p"}}}"#,
        );
        let sent = annotate(&global, &op, body);
        let sent: Value = serde_json::from_slice(&sent).unwrap();
        let meta = &sent["params"]["_meta"];
        assert_eq!(meta["progressToken"], "p");
        let traceparent = meta["traceparent"].as_str().unwrap();
        assert!(
            traceparent.starts_with(&format!("00-{CLIENT_TRACE}-")),
            "{traceparent}"
        );
        assert!(
            !traceparent.contains("00f067aa0ba902b7"),
            "the sidecar's own span id: {traceparent}"
        );
        assert_eq!(meta["tracestate"], "vendor=abc");
        assert_eq!(sent["params"]["arguments"]["x"], 1);

        let mut upstream = HeaderMap::new();
        let cx = op.context().unwrap();
        global
            .propagator
            .inject_context(&cx, &mut HeaderInjector(&mut upstream));
        assert_eq!(upstream["traceparent"].to_str().unwrap(), traceparent);

        op.end(42);
        provider.force_flush().unwrap();
        let line = std::fs::read_to_string(&path).unwrap();
        let span: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(span["name"], "tools/call echo");
        assert_eq!(span["trace_id"], CLIENT_TRACE);
        assert_eq!(span["parent_span_id"], "00f067aa0ba902b7");
        assert_eq!(span["attributes"]["gen_ai.tool.name"], "echo");
        assert_eq!(span["attributes"]["mcp.method.name"], "tools/call");
        assert_eq!(span["attributes"]["http.response.body.size"], 42);
        assert_eq!(span["attributes"]["server.address"], "upstream.example:443");
    }

    #[test]
    fn without_a_header_the_parent_comes_from_meta_and_bodies_without_params_stay_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let (global, _provider, _) = global(dir.path());
        let op = op(&HeaderMap::new(), &global);
        let body = Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{{"uri":"file:///a","_meta":{{"traceparent":"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"}}}}}}"#
        ));
        let sent: Value = serde_json::from_slice(&annotate(&global, &op, body)).unwrap();
        let traceparent = sent["params"]["_meta"]["traceparent"].as_str().unwrap();
        assert!(traceparent.starts_with(&format!("00-{CLIENT_TRACE}-")));
        assert_eq!(
            op.context().unwrap().span().span_context().trace_id(),
            TraceId::from_hex(CLIENT_TRACE).unwrap()
        );

        let op = self::op(&HeaderMap::new(), &global);
        let notification =
            Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(annotate(&global, &op, notification.clone()), notification);
        let op = self::op(&HeaderMap::new(), &global);
        let batch = Bytes::from_static(b"[1,2]");
        assert_eq!(annotate(&global, &op, batch.clone()), batch);
        assert!(
            op.context().is_some(),
            "a span even for a body that is not one message"
        );
    }
}
