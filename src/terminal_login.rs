//! The interactive login of `mcp-sidecar stdio` run by hand in a terminal (a person, not a host,
//! started it: stdin is a terminal).
//!
//! Each login the readiness checker starts waiting for is shown on stderr once, its page opened
//! in a browser where one exists ([`crate::browser`]). A device code is approved in the browser
//! and the checker picks the token up. An authorization code has no page of the sidecar's own to
//! come back to (nothing serves `/oauth/callback` in a stdio process), so the authorization URL
//! is shown and the URL the browser was sent to is pasted back on stdin: [`split_pasted`] takes
//! such a line out of the message stream (a JSON-RPC message never starts with anything but `{`
//! or `[`), and [`paste_back`] completes the login with it. The tokens go to `STATE_DIR` like
//! any others, so the host that spawns this configuration later needs no login.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::output::errln;
use crate::readiness::Readiness;
use crate::token::{AuthorizationCode, Login, Manager};

/// Where a page is opened: the process's environment ([`crate::browser`]), and whether it runs
/// in a container (where no browser is).
#[derive(Clone)]
pub struct Browser {
    pub env: HashMap<String, String>,
    pub in_container: bool,
}

impl Browser {
    fn open(&self, url: &str) -> bool {
        crate::browser::open(url, &self.env, self.in_container)
    }
}

/// How long after a failed start (discovery, the authorization server away) the login is
/// started again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Shows each device-code login the checker waits for, once. With `paste_back` running, an
/// authorization-code login is shown there instead.
pub async fn show_device_codes(readiness: Arc<Readiness>, browser: Browser) {
    let mut changes = readiness.subscribe();
    let mut shown: Option<(String, Option<String>)> = None;
    loop {
        if let Some(login) = readiness.state().login
            && login.user_code.is_some()
        {
            let key = (login.verification_uri.clone(), login.user_code.clone());
            if shown.as_ref() != Some(&key) {
                shown = Some(key);
                show_device_code(&login, &browser);
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn show_device_code(login: &Login, browser: &Browser) {
    let Some(code) = &login.user_code else {
        return;
    };
    let page = login
        .verification_uri_complete
        .as_deref()
        .unwrap_or(&login.verification_uri);
    errln!(
        "mcp-sidecar stdio: to log in, open {} and enter the code {code}{}",
        login.verification_uri,
        login
            .expires_at
            .as_deref()
            .map(|at| format!(" (expires {at})"))
            .unwrap_or_default()
    );
    if browser.open(page) {
        errln!("mcp-sidecar stdio: opened {page} in your browser");
    }
}

/// The query of a pasted redirect (`https://host/cb?code=..&state=..`, or the query alone).
pub fn callback_query(pasted: &str) -> Option<String> {
    let pasted = pasted.trim();
    let query = match url::Url::parse(pasted) {
        Ok(url) => url.query().unwrap_or("").to_string(),
        Err(_) => pasted.trim_start_matches('?').to_string(),
    };
    (!query.is_empty()).then_some(query)
}

/// Whether a line of stdin is a pasted redirect rather than a message: not JSON's start, and
/// carrying what a redirect back from an authorization server carries.
fn is_pasted_redirect(line: &[u8]) -> bool {
    let text = line.trim_ascii();
    !text.is_empty()
        && !text.starts_with(b"{")
        && !text.starts_with(b"[")
        && (contains(text, b"code=") || contains(text, b"error="))
        && contains(text, b"state=")
}

fn contains(text: &[u8], needle: &[u8]) -> bool {
    text.windows(needle.len()).any(|window| window == needle)
}

/// Copies `input` to `messages` line by line, except pasted redirects, which go to `pasted`.
/// Ends (closing `messages`, which the pump sees as EOF) when `input` ends.
pub async fn split_pasted<R, W>(mut input: R, mut messages: W, pasted: mpsc::Sender<String>)
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if is_pasted_redirect(&line) {
            // The redirect's code is single-use and bound to this process's PKCE verifier: it
            // is of no use to anyone else, but it is still not logged. Never waited for: the
            // messages after it must not stall behind a paste nobody asked for.
            if pasted
                .try_send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                errln!("mcp-sidecar stdio: no login is waiting for a pasted URL; ignored it");
            }
            continue;
        }
        if messages.write_all(&line).await.is_err() {
            break;
        }
    }
    let _ = messages.shutdown().await;
}

/// For `AUTH=authorization_code` at a terminal: whenever the checker waits for a login, shows
/// the authorization URL (and opens it), reads the pasted redirect and completes the login.
pub async fn paste_back(
    readiness: Arc<Readiness>,
    manager: Arc<Manager>,
    grant: Arc<AuthorizationCode>,
    browser: Browser,
    mut pasted: mpsc::Receiver<String>,
) {
    let mut changes = readiness.subscribe();
    loop {
        while readiness.state().login.is_none() {
            if changes.changed().await.is_err() {
                return;
            }
        }
        // Pastes meant for an earlier round would fail this one's state check.
        while pasted.try_recv().is_ok() {}
        let url = match grant.begin().await {
            Ok(url) => url,
            Err(e) => {
                errln!(
                    "mcp-sidecar stdio: cannot start the login: {e}; trying again in {}s",
                    RETRY.as_secs()
                );
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        errln!("mcp-sidecar stdio: to log in, open this URL in a browser:\n\n  {url}\n");
        if browser.open(url.as_str()) {
            errln!("mcp-sidecar stdio: opened it in your browser");
        }
        errln!(
            "mcp-sidecar stdio: then paste here the URL the browser was sent to (it fails to load if nothing listens there; that is fine) and press Enter"
        );
        let Some(line) = pasted.recv().await else {
            return;
        };
        let Some(query) = callback_query(&line) else {
            errln!(
                "mcp-sidecar stdio: nothing usable was pasted (expected the full redirected URL with ?code=...&state=...); starting again"
            );
            continue;
        };
        match grant.complete(&query).await {
            Ok(issued) => {
                manager.accept(issued).await;
                readiness.trigger();
                errln!("mcp-sidecar stdio: logged in; the tokens are kept in STATE_DIR");
                // Until the checker has seen the token, the old state still asks for a login.
                let _ = changes.borrow_and_update();
                while readiness.state().login.is_some() {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => errln!("mcp-sidecar stdio: the login did not complete: {e}; starting again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_redirect_is_told_from_a_message() {
        assert!(is_pasted_redirect(
            b"http://127.0.0.1:4510/oauth/callback?code=abc&state=xyz\n"
        ));
        assert!(is_pasted_redirect(b"?error=access_denied&state=xyz"));
        assert!(!is_pasted_redirect(
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"code=":"state="}}"#
        ));
        assert!(!is_pasted_redirect(b"[{\"code=state=\":1}]"));
        assert!(!is_pasted_redirect(b"not json, no redirect"));
        assert!(!is_pasted_redirect(b"code=abc"));
    }

    #[test]
    fn the_query_of_a_pasted_redirect() {
        assert_eq!(
            callback_query(" https://h/cb?code=a%2Bb&state=s \n").as_deref(),
            Some("code=a%2Bb&state=s")
        );
        assert_eq!(
            callback_query("?code=a&state=s").as_deref(),
            Some("code=a&state=s")
        );
        assert_eq!(callback_query("https://h/cb"), None);
        assert_eq!(callback_query("  "), None);
    }
}
