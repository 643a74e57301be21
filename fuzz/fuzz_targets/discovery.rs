//! Authorization-server discovery (`token::discovery::resolve`, then `register`) against an
//! upstream and an authorization server whose every answer is fuzz input: the upstream's 401
//! challenge, RFC 9728 protected-resource metadata, RFC 8414/OIDC metadata and the Dynamic
//! Client Registration reply. Served by a tiny HTTP server on 127.0.0.1 in this process, so the
//! real reqwest path (status, media type, size limit, JSON) is exercised end to end.
//!
//! Input: `WWW_AUTHENTICATE \0 RESOURCE_METADATA \0 AS_METADATA \0 REGISTRATION_REPLY`, where
//! `{{BASE}}` in a body stands for the server's own `http://127.0.0.1:PORT` (ports differ per run,
//! and the issuer checks need it).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::config::{self, AuthConfig, Sources};
use mcp_sidecar::token::discovery;
use mcp_sidecar_fuzz::{parts, runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server answers for the current input.
static ANSWERS: Mutex<Option<Arc<Vec<Vec<u8>>>>> = Mutex::new(None);

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback port 0 binds");
        let base = format!(
            "http://{}",
            listener
                .local_addr()
                .expect("a bound socket has an address")
        );
        listener
            .set_nonblocking(true)
            .expect("set_nonblocking on a fresh socket");
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("inside a runtime");
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(socket));
                }
            })
        });
        base
    })
}

async fn serve(mut socket: tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let answers = ANSWERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(answers) = answers else { return };
    let fill = |body: &[u8]| -> Vec<u8> {
        String::from_utf8_lossy(body)
            .replace("{{BASE}}", base())
            .into_bytes()
    };
    let (status, extra, body) = if method == "POST" && path == "/mcp" {
        let mut extra = Vec::new();
        if !answers[0].is_empty() && !answers[0].contains(&b'\n') && !answers[0].contains(&b'\r') {
            extra.extend_from_slice(b"WWW-Authenticate: ");
            extra.extend_from_slice(&fill(&answers[0]));
            extra.extend_from_slice(b"\r\n");
        }
        ("401 Unauthorized", extra, b"{}".to_vec())
    } else if path.starts_with("/.well-known/oauth-protected-resource") {
        ("200 OK", Vec::new(), fill(&answers[1]))
    } else if path.contains("/.well-known/oauth-authorization-server")
        || path.contains("/.well-known/openid-configuration")
    {
        ("200 OK", Vec::new(), fill(&answers[2]))
    } else if method == "POST" {
        ("201 Created", Vec::new(), fill(&answers[3]))
    } else {
        (
            "404 Not Found",
            Vec::new(),
            b"{\"error\":\"not_found\"}".to_vec(),
        )
    };
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n", body.len()).into_bytes();
    out.extend_from_slice(&extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    let _ = socket.write_all(&out).await;
    let _ = socket.shutdown().await;
}

/// The two configurations that discover: client credentials with a client id (discovery only),
/// and device code without one (discovery, then registration).
fn configs() -> &'static [(url::Url, mcp_sidecar::config::OAuthConfig)] {
    static CONFIGS: OnceLock<Vec<(url::Url, mcp_sidecar::config::OAuthConfig)>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let upstream = format!("{}/mcp", base());
        let mut out = Vec::new();
        for extra in [
            &[
                ("AUTH", "client_credentials"),
                ("CLIENT_ID", "fuzz-client"),
                ("CLIENT_SECRET", "fuzz-secret"),
            ][..],
            &[("AUTH", "device_code")][..],
        ] {
            let mut env: HashMap<String, String> = extra
                .iter()
                .map(|(k, v)| (format!("MCP_SIDECAR_{k}"), v.to_string()))
                .collect();
            env.insert("MCP_SIDECAR_UPSTREAM_URL".into(), upstream.clone());
            env.insert("MCP_SIDECAR_TOKEN_TIMEOUT".into(), "5s".into());
            match config::load(&Sources { file: None, env }) {
                Ok(mut c) => {
                    // The single-upstream form: one upstream, `default`.
                    let only = c.upstreams.remove(0);
                    if let AuthConfig::OAuth(o) = only.auth {
                        out.push((only.upstream.url, *o));
                    }
                }
                Err(e) => panic!("the fuzz target's own configuration is refused: {e}"),
            }
        }
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let answers: Vec<Vec<u8>> = parts(data, 4).into_iter().map(<[u8]>::to_vec).collect();
    *ANSWERS.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(answers));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain-http client builds");
    runtime().block_on(async {
        for (upstream, oauth) in configs() {
            match discovery::resolve(&http, oauth, upstream).await {
                Ok(endpoints) => {
                    if oauth.client_id.is_none() {
                        let _ = discovery::register(&http, oauth, &endpoints).await;
                    }
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    });
});
