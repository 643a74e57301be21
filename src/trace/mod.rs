//! Traces: OpenTelemetry spans for proxied requests, token requests and readiness handshakes,
//! exported over OTLP/HTTP (protobuf) and/or to a JSONL file (`TRACES_FILE`).
//!
//! This module owns the trace configuration (the standard `OTEL_*` variables, read here and not
//! through the SDK, so that every problem names its key and exits 64 like any other setting) and
//! the small facade the data path calls: [`layer`] (the per-request span around the MCP routes),
//! [`request_body`] (names the span after the JSON-RPC message and carries the context into its
//! `params._meta`), [`inject`] (W3C `traceparent` on the upstream request), [`note`] and the span
//! wrappers for token requests and handshakes.
//!
//! Tracing is a cargo feature (`otel`): the SDK and the OTLP encoder cost about 0.5 MiB of the
//! static binary. Without the feature, or with no exporter configured, every facade function is a
//! branch on a flag set once at start: no layer is installed, no exporter thread runs, no body is
//! parsed. The facade is a leaf: it names no other module of the crate except `secret`, so the
//! proxy, upstream, token and readiness modules can all call it without an import cycle.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;

use axum::routing::MethodRouter;
use bytes::Bytes;
use http::HeaderMap;

use crate::secret::Secret;

#[cfg(feature = "otel")]
mod jsonl;
#[cfg(feature = "otel")]
mod otel;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const HEADERS_FILE: &str = "OTEL_EXPORTER_OTLP_HEADERS_FILE";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// Which spans are recorded (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// Follow the client's sampled flag when it sends a `traceparent`, else the inner rule.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    fn describe(&self) -> String {
        match self {
            Self::AlwaysOn => "always_on".into(),
            Self::AlwaysOff => "always_off".into(),
            Self::Ratio(r) => format!("traceidratio {r}"),
            Self::ParentBased(inner) => format!("parentbased_{}", inner.describe()),
        }
    }
}

/// The validated trace settings. `otlp` and `file` both `None`: tracing is off.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The full OTLP/HTTP traces URL (`.../v1/traces`).
    pub otlp: Option<url::Url>,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (or its `_FILE`): often an API key, so a [`Secret`].
    pub headers: Option<Secret>,
    pub file: Option<PathBuf>,
    pub service_name: String,
    pub sampler: Sampler,
    pub resource: Vec<(String, String)>,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            otlp: None,
            headers: None,
            file: None,
            service_name: "mcp-sidecar".into(),
            sampler: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            resource: Vec::new(),
        }
    }
}

/// One problem with a trace setting: the key as written and what is wrong (never the value).
pub type Problem = (String, String);

impl TraceConfig {
    pub fn is_enabled(&self) -> bool {
        self.otlp.is_some() || self.file.is_some()
    }

    /// Reads the `OTEL_*` variables from `env`; `file` is `TRACES_FILE` (with the key as the
    /// user wrote it). Problems are appended to `problems`.
    pub fn from_env(
        env: &HashMap<String, String>,
        file: Option<(PathBuf, String)>,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let mut config = Self::default();
        let mut problem = |key: &str, message: String| problems.push((key.to_string(), message));
        let get = |key: &str| {
            env.get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };

        for key in [PROTOCOL, TRACES_PROTOCOL] {
            if let Some(p) = get(key)
                && p != "http/protobuf"
            {
                problem(
                    key,
                    "only http/protobuf is supported (OTLP over HTTP, protobuf encoded)".into(),
                );
            }
        }
        let parse_url = |text: &str| -> Result<url::Url, String> {
            let url = url::Url::parse(text)
                .map_err(|e| format!("is not a URL ({e}); expected e.g. http://127.0.0.1:4318"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err("expected an http:// or https:// URL with a host".into());
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(format!(
                    "must not carry credentials in the URL; put them in {HEADERS} or {HEADERS_FILE}"
                ));
            }
            Ok(url)
        };
        config.otlp = match (get(TRACES_ENDPOINT), get(ENDPOINT)) {
            (Some(traces), _) => parse_url(&traces)
                .map_err(|m| problem(TRACES_ENDPOINT, m))
                .ok(),
            (None, Some(base)) => parse_url(&base)
                .map(|mut url| {
                    // The base endpoint names the collector; each signal has its own path.
                    let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
                    url.set_path(&path);
                    url
                })
                .map_err(|m| problem(ENDPOINT, m))
                .ok(),
            (None, None) => None,
        };

        let headers = match (get(HEADERS), get(HEADERS_FILE)) {
            (Some(_), Some(_)) => {
                problem(
                    HEADERS,
                    format!("both this and {HEADERS_FILE} are set; use one"),
                );
                None
            }
            (Some(text), None) => Some((HEADERS, Secret::new(text))),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => {
                    Some((HEADERS_FILE, Secret::new(text.trim().to_string())))
                }
                Ok(_) => {
                    problem(HEADERS_FILE, format!("{path} is empty"));
                    None
                }
                Err(e) => {
                    problem(HEADERS_FILE, format!("cannot read {path}: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        if let Some((key, secret)) = headers {
            match parse_headers(secret.expose()) {
                Ok(pairs) => {
                    for (_, value) in &pairs {
                        crate::secret::register(value);
                    }
                    config.headers = Some(secret);
                }
                Err(message) => problem(key, message),
            }
        }

        if let Some(name) = get(SERVICE_NAME) {
            config.service_name = name;
        }
        if let Some(text) = get(RESOURCE_ATTRIBUTES) {
            match parse_pairs(&text) {
                Ok(pairs) => {
                    // OTEL_SERVICE_NAME wins over a service.name here, as the spec says.
                    if get(SERVICE_NAME).is_none()
                        && let Some((_, name)) = pairs.iter().find(|(k, _)| k == "service.name")
                    {
                        config.service_name = name.clone();
                    }
                    config.resource = pairs
                        .into_iter()
                        .filter(|(k, _)| k != "service.name")
                        .collect();
                }
                Err(message) => problem(RESOURCE_ATTRIBUTES, message),
            }
        }

        let ratio = |problem: &mut dyn FnMut(&str, String)| match get(SAMPLER_ARG) {
            None => 1.0,
            Some(arg) => match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    problem(SAMPLER_ARG, "expected a ratio between 0 and 1".into());
                    1.0
                }
            },
        };
        if let Some(name) = get(SAMPLER) {
            config.sampler = match name.to_ascii_lowercase().as_str() {
                "always_on" => Sampler::AlwaysOn,
                "always_off" => Sampler::AlwaysOff,
                "traceidratio" => Sampler::Ratio(ratio(&mut problem)),
                "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
                "parentbased_traceidratio" => {
                    Sampler::ParentBased(Box::new(Sampler::Ratio(ratio(&mut problem))))
                }
                _ => {
                    problem(
                        SAMPLER,
                        "expected always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio"
                            .into(),
                    );
                    config.sampler
                }
            };
        }

        config.file = file.map(|(path, key)| {
            if path.is_dir() {
                problem(&key, format!("{} is a directory", path.display()));
            }
            path
        });

        // The standard switch to turn the SDK off whatever else is set.
        if get(SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            config.otlp = None;
            config.file = None;
        }
        if config.is_enabled() && !cfg!(feature = "otel") {
            let key = if config.otlp.is_some() {
                if get(TRACES_ENDPOINT).is_some() {
                    TRACES_ENDPOINT
                } else {
                    ENDPOINT
                }
            } else {
                "MCP_SIDECAR_TRACES_FILE"
            };
            problem(
                key,
                "this build has no trace support (built without the cargo feature otel)".into(),
            );
        }
        config
    }

    /// Rows for `check-config`: header names shown, their values `<redacted>`.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let off = || "(not set)".to_string();
        let headers = self
            .headers
            .as_ref()
            .and_then(|h| parse_headers(h.expose()).ok())
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|(n, _)| format!("{n}: <redacted>"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "(none)".into());
        vec![
            (
                "TRACES",
                if self.is_enabled() {
                    "on".into()
                } else {
                    "off (no OTEL_EXPORTER_OTLP_ENDPOINT nor TRACES_FILE)".into()
                },
            ),
            (
                TRACES_ENDPOINT,
                self.otlp
                    .as_ref()
                    .map(|u| u.to_string())
                    .unwrap_or_else(off),
            ),
            (HEADERS, headers),
            (
                "TRACES_FILE",
                self.file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(off),
            ),
            (SERVICE_NAME, self.service_name.clone()),
            (SAMPLER, self.sampler.describe()),
            (
                RESOURCE_ATTRIBUTES,
                if self.resource.is_empty() {
                    "(none)".into()
                } else {
                    self.resource
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                },
            ),
        ]
    }
}

/// `key=value,key2=value2` with percent-encoded values (the W3C baggage form the OTel spec
/// uses for `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`). Messages name the
/// position, never a value.
fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (i, item) in text.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("entry {} is not key=value", i + 1));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("entry {} has an empty key", i + 1));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("the value of {key} is not valid percent-encoded UTF-8"))?;
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

/// [`parse_pairs`], each pair also a valid HTTP header.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = parse_pairs(text)?;
    for (name, value) in &pairs {
        if http::HeaderName::try_from(name.as_str()).is_err() {
            return Err(format!("{name} is not a valid header name"));
        }
        if http::HeaderValue::try_from(value.as_str()).is_err() {
            return Err(format!(
                "the value of header {name} is not a valid header value"
            ));
        }
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What happened during a request, recorded on its span.
#[derive(Debug, Clone, Copy)]
pub enum Note {
    /// The upstream refused the token and a new one was obtained.
    TokenRefreshed,
    /// The upstream forgot the session and it was re-initialized.
    SessionReinitialized,
}

/// Starts the exporters; the returned guard flushes and stops them. `Ok(None)` when tracing is
/// off. An error is a configuration problem (an unusable `TRACES_FILE`), naming the key.
pub fn start(
    config: &TraceConfig,
    client: reqwest::Client,
    upstream: &str,
) -> Result<Option<Traces>, String> {
    if !config.is_enabled() {
        return Ok(None);
    }
    #[cfg(feature = "otel")]
    {
        otel::start(config, client, upstream).map(|provider| Some(Traces { provider }))
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (client, upstream);
        Err("this build has no trace support (built without the cargo feature otel)".into())
    }
}

/// The running exporters.
pub struct Traces {
    #[cfg(feature = "otel")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Traces {
    /// Exports what is pending and stops. Blocks: call it off the async workers.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        otel::shutdown(self.provider);
    }
}

/// Whether spans are being made (set once by [`start`]).
#[inline]
pub fn enabled() -> bool {
    #[cfg(feature = "otel")]
    {
        otel::enabled()
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// The per-request span around an MCP route (the sidecar's own endpoints make none); the
/// route unchanged when tracing is off.
pub fn layer<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    #[cfg(feature = "otel")]
    if enabled() {
        return route.layer(axum::middleware::from_fn(otel::middleware));
    }
    route
}

/// The request body as it goes upstream: the span is named after its JSON-RPC method and tool
/// or resource, its parent taken from `params._meta.traceparent` when the client sent no
/// header, and the sidecar's context written into `params._meta`.
#[inline]
pub fn request_body(body: Bytes) -> Bytes {
    #[cfg(feature = "otel")]
    if enabled() {
        return otel::request_body(body);
    }
    body
}

/// Adds `traceparent`/`tracestate` for the current span to a request going upstream.
#[inline]
pub fn inject(headers: &mut HeaderMap) {
    #[cfg(feature = "otel")]
    if enabled() {
        otel::inject(headers);
    }
    let _ = headers;
}

/// Records on the current request's span that something happened.
#[inline]
pub fn note(note: Note) {
    #[cfg(feature = "otel")]
    if enabled() {
        otel::note(note);
    }
    let _ = note;
}

/// Records how the current request ended (a metrics outcome, e.g. `upstream_unreachable`).
#[inline]
pub fn outcome(outcome: &dyn std::fmt::Debug) {
    #[cfg(feature = "otel")]
    if enabled() {
        otel::outcome(&format!("{outcome:?}"));
    }
    let _ = outcome;
}

/// A token request as a span (grant type and outcome only: never a secret or a token).
/// `describe` names the outcome of a result.
pub async fn token_request<T, E, F>(
    grant: &str,
    request: F,
    describe: impl FnOnce(&Result<T, E>) -> &'static str,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    #[cfg(feature = "otel")]
    if enabled() {
        return otel::token_request(grant, request, describe).await;
    }
    let _ = (grant, describe);
    request.await
}

/// A readiness handshake as a span; `describe` names the outcome (a readiness reason).
pub async fn handshake<T, E, F>(
    handshake: F,
    describe: impl FnOnce(&Result<T, E>) -> &'static str,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    #[cfg(feature = "otel")]
    if enabled() {
        return otel::handshake(handshake, describe).await;
    }
    let _ = describe;
    handshake.await
}

/// `trace_id` and `span_id` (hex) of the span the current task works for, for log lines.
#[inline]
pub fn current_ids() -> Option<(String, String)> {
    #[cfg(feature = "otel")]
    if enabled() {
        return otel::current_ids();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn read(pairs: &[(&str, &str)]) -> (TraceConfig, Vec<Problem>) {
        let mut problems = Vec::new();
        let config = TraceConfig::from_env(&env(pairs), None, &mut problems);
        (config, problems)
    }

    #[test]
    fn off_without_an_endpoint() {
        let (config, problems) = read(&[(SERVICE_NAME, "agent-1")]);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!config.is_enabled());
        assert_eq!(config.service_name, "agent-1");
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_taken_as_is() {
        let (config, _) = read(&[(ENDPOINT, "http://127.0.0.1:4318")]);
        assert_eq!(
            config.otlp.unwrap().as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        let (config, _) = read(&[(ENDPOINT, "https://otel.example/base/")]);
        assert_eq!(
            config.otlp.unwrap().as_str(),
            "https://otel.example/base/v1/traces"
        );
        let (config, _) = read(&[
            (ENDPOINT, "http://127.0.0.1:4318"),
            (TRACES_ENDPOINT, "http://127.0.0.1:9999/custom"),
        ]);
        assert_eq!(
            config.otlp.unwrap().as_str(),
            "http://127.0.0.1:9999/custom"
        );
    }

    #[test]
    fn every_bad_setting_is_named_and_no_value_is_echoed() {
        let canary = "sk-+/=&".repeat(40);
        let (_, problems) = read(&[
            (TRACES_ENDPOINT, "ftp://x"),
            (HEADERS, &format!("x-api-key={canary},broken")),
            (SAMPLER, "sometimes"),
            (PROTOCOL, "grpc"),
            (RESOURCE_ATTRIBUTES, &format!("k=%zz{canary}")),
        ]);
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            TRACES_ENDPOINT,
            HEADERS,
            SAMPLER,
            PROTOCOL,
            RESOURCE_ATTRIBUTES,
        ] {
            assert!(keys.contains(&key), "{key} missing from {problems:?}");
        }
        for (_, message) in &problems {
            assert!(!message.contains("sk-"), "{message}");
        }
    }

    #[test]
    fn headers_and_their_file_form_are_secrets_shown_redacted() {
        let canary = format!("Bearer {}", "tok+/=&".repeat(40));
        let encoded = canary.replace(' ', "%20");
        let (config, problems) = read(&[(HEADERS, &format!("authorization={encoded}"))]);
        assert!(problems.is_empty(), "{problems:?}");
        let summary = format!("{:?} {:?}", config.summary(), config);
        assert!(summary.contains("authorization: <redacted>"), "{summary}");
        assert!(!summary.contains("tok+"), "{summary}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers");
        std::fs::write(&path, format!("x-key={}\n", "k+/=".repeat(60))).unwrap();
        let (config, problems) = read(&[(HEADERS_FILE, path.to_str().unwrap())]);
        assert!(problems.is_empty(), "{problems:?}");
        let pairs = parse_headers(config.headers.unwrap().expose()).unwrap();
        assert_eq!(pairs[0].1, "k+/=".repeat(60));
        // A collector's or upstream's text quoting the key is scrubbed like any secret's.
        let echoed = crate::secret::scrub(&format!("denied: {}", "k+/=".repeat(60)));
        assert!(!echoed.contains("k+/=k+/="), "{echoed}");

        let (_, problems) = read(&[(HEADERS, "a=b"), (HEADERS_FILE, "/nonexistent")]);
        assert_eq!(problems[0].0, HEADERS);
    }

    #[test]
    fn samplers_and_resource_attributes_parse() {
        let (config, problems) = read(&[
            (SAMPLER, "parentbased_traceidratio"),
            (SAMPLER_ARG, "0.25"),
            (
                RESOURCE_ATTRIBUTES,
                "service.name=from-attrs,deployment.environment=dev%2C1",
            ),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            config.sampler,
            Sampler::ParentBased(Box::new(Sampler::Ratio(0.25)))
        );
        assert_eq!(config.service_name, "from-attrs");
        assert_eq!(
            config.resource,
            vec![("deployment.environment".to_string(), "dev,1".to_string())]
        );
        let (_, problems) = read(&[(SAMPLER, "traceidratio"), (SAMPLER_ARG, "2")]);
        assert_eq!(problems[0].0, SAMPLER_ARG);
    }

    #[test]
    fn sdk_disabled_turns_everything_off() {
        let (config, _) = read(&[(ENDPOINT, "http://127.0.0.1:4318"), (SDK_DISABLED, "true")]);
        assert!(!config.is_enabled());
    }
}
