//! The `resources/subscribe` calls a client made in its session, kept so that an upstream
//! session the sidecar re-makes ([`crate::session`]) gets them again.
//!
//! A client subscribes once. When the upstream restarts and the sidecar re-initializes the
//! session behind the client's back, the new upstream session knows no subscription, so no
//! `notifications/resources/updated` would ever reach the client again although it did nothing
//! wrong. Replaying them right after the replayed `initialize` keeps updates coming.
//!
//! Bounded per session by count and bytes: a client that subscribes to more is not refused (the
//! upstream decides that), only the excess is not replayed, and that is logged once.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Value, json};

use crate::upstream::Upstream;

/// At most this many subscriptions are replayed per session.
const MAX_SUBSCRIPTIONS: usize = 256;
/// At most this many bytes of subscription parameters are kept per session.
const MAX_BYTES: usize = 64 * 1024;
/// Each replayed `resources/subscribe` gets this long to be answered.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Subscriptions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (uri, the request's `params` as sent), in the order the client subscribed.
    list: Vec<(String, Bytes)>,
    bytes: usize,
    overflow_logged: bool,
}

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a client request the upstream accepted (2xx): a `resources/subscribe` is kept, a
    /// `resources/unsubscribe` removes it. Anything else is ignored after a cheap byte check.
    pub fn observe(&self, body: &[u8]) {
        if !body.windows(10).any(|w| w == b"resources/") {
            return;
        }
        let Ok(message) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let method = message.get("method").and_then(Value::as_str);
        let params = message.get("params");
        let Some(uri) = params
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return;
        };
        let mut inner = self.lock();
        match method {
            Some("resources/subscribe") => {
                if inner.list.iter().any(|(u, _)| *u == uri) {
                    return;
                }
                let params = Bytes::from(params.map(Value::to_string).unwrap_or_default());
                if inner.list.len() >= MAX_SUBSCRIPTIONS
                    || inner.bytes + params.len() + uri.len() > MAX_BYTES
                {
                    if !std::mem::replace(&mut inner.overflow_logged, true) {
                        tracing::warn!(
                            max = MAX_SUBSCRIPTIONS,
                            max_bytes = MAX_BYTES,
                            "a client holds more resource subscriptions than the sidecar replays \
                             after re-initializing its session; the rest will not be replayed"
                        );
                    }
                    return;
                }
                inner.bytes += params.len() + uri.len();
                inner.list.push((uri, params));
            }
            Some("resources/unsubscribe") => {
                if let Some(at) = inner.list.iter().position(|(u, _)| *u == uri) {
                    let (u, p) = inner.list.remove(at);
                    inner.bytes -= u.len() + p.len();
                }
            }
            _ => {}
        }
    }

    pub fn len(&self) -> usize {
        self.lock().list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends every kept subscription into the session `headers` name (they carry the new
    /// session id and protocol version), to the client's target (`query`, as the replayed
    /// `initialize`). A refusal is logged and does not stop the others:
    /// the session itself is fine, one resource may be gone.
    pub async fn replay(&self, upstream: &Upstream, query: Option<&str>, headers: &HeaderMap) {
        let list = self.lock().list.clone();
        for (n, (_uri, params)) in list.iter().enumerate() {
            let id = Value::String(format!("mcp-sidecar-resubscribe-{n}"));
            let params: Value = serde_json::from_slice(params).unwrap_or(Value::Null);
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "resources/subscribe", "params": params});
            let send = async {
                let response = upstream
                    .send(
                        Method::POST,
                        query,
                        headers.clone(),
                        Bytes::from(body.to_string()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("answered HTTP {}", response.status()));
                }
                crate::handshake::read_reply(response, &id, "replayed resources/subscribe")
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(REPLAY_TIMEOUT, send).await {
                Ok(Ok(reply)) if reply.get("error").is_none() => {}
                Ok(Ok(reply)) => tracing::warn!(
                    error = %crate::secret::scrub(&reply["error"].to_string()),
                    "the re-made upstream session refused a replayed resources/subscribe"
                ),
                Ok(Err(e)) => tracing::warn!(
                    error = %crate::secret::scrub(&e),
                    "replaying a resources/subscribe into the re-made upstream session failed"
                ),
                Err(_) => tracing::warn!(
                    "a replayed resources/subscribe was not answered within {}s",
                    REPLAY_TIMEOUT.as_secs()
                ),
            }
        }
        if !list.is_empty() {
            tracing::info!(
                count = list.len(),
                "replayed the client's resource subscriptions into the re-made session"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str) -> Vec<u8> {
        json!({"jsonrpc":"2.0","id":1,"method":method,"params":{"uri":uri}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn subscribe_is_kept_once_and_unsubscribe_removes_it() {
        let s = Subscriptions::default();
        s.observe(&request("resources/subscribe", "test://a"));
        s.observe(&request("resources/subscribe", "test://a"));
        s.observe(&request("resources/subscribe", "test://b"));
        s.observe(&request("resources/read", "test://c"));
        s.observe(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        assert_eq!(s.len(), 2);
        s.observe(&request("resources/unsubscribe", "test://a"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.lock().list[0].0, "test://b");
        s.observe(&request("resources/unsubscribe", "test://b"));
        assert!(s.is_empty());
        assert_eq!(s.lock().bytes, 0);
    }

    #[test]
    fn kept_subscriptions_are_bounded() {
        let s = Subscriptions::default();
        for n in 0..MAX_SUBSCRIPTIONS + 10 {
            s.observe(&request("resources/subscribe", &format!("test://{n}")));
        }
        assert_eq!(s.len(), MAX_SUBSCRIPTIONS);
        let big = "x".repeat(MAX_BYTES);
        let s = Subscriptions::default();
        s.observe(&request("resources/subscribe", &big));
        assert!(s.is_empty(), "one over the byte budget is not kept");
    }
}
