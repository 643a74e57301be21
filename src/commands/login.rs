//! `mcp-sidecar login`: runs the interactive flow in the foreground and persists the tokens in
//! `STATE_DIR`, for operators who seed credentials before the sidecar starts.
//!
//! Device code: prints the verification URI and code, polls until approved. Authorization code:
//! prints the authorization URL, then reads the URL the browser was redirected to, pasted back,
//! because inside a container nothing may listen where the browser is sent. Other sources: gets
//! one token, as a check that the configuration works.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{self, AuthConfig, Sources};
use crate::output::{errln, exit};
use crate::token::{self, Login};

pub fn run(config_file: Option<PathBuf>, upstream: Option<String>) -> u8 {
    let mut config = match config::load(&Sources::from_process(config_file)) {
        Ok(config) => config,
        Err(e) => {
            errln!("mcp-sidecar: {e}");
            return exit::CONFIG;
        }
    };
    if let Err(code) = super::one_upstream(&mut config, "login", upstream.as_deref()) {
        return code;
    }
    let settings = match config.take_single_upstream("mcp-sidecar login") {
        Ok(settings) => settings,
        Err(e) => {
            errln!("mcp-sidecar: {e}");
            return exit::CONFIG;
        }
    };
    crate::telemetry::init(&config.log);
    let interactive = matches!(&settings.auth, AuthConfig::OAuth(o) if o.grant.is_interactive());
    let runtime = match crate::commands::client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("mcp-sidecar login: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async move {
        crate::secret::seal();
        let built = match token::build(
            &settings.name,
            settings.auth,
            &settings.upstream,
            &settings.state_dir,
            config.state_store.as_ref(),
        ) {
            Ok(built) => built,
            Err(e) => {
                errln!("mcp-sidecar login: {e}");
                return exit::FAILURE;
            }
        };
        let Some(manager) = built.manager.clone() else {
            errln!(
                "mcp-sidecar login: AUTH={} holds no tokens of its own; nothing to log in to",
                built.source.status().source
            );
            return exit::CONFIG;
        };
        if interactive && manager.store().is_none() {
            errln!(
                "mcp-sidecar login: STATE_DIR {} cannot be used (not writable, or refused as logged above), so the login would be lost; set MCP_SIDECAR_STATE_DIR to a writable directory owned by this user, mode 0700",
                settings.state_dir.display()
            );
            return exit::FAILURE;
        }
        let outcome = match (&built.authorization, interactive) {
            (Some(grant), _) => authorization_code(&manager, grant).await,
            (None, true) => token::manager::login_foreground(&manager, &print_prompt)
                .await
                .map_err(|e| e.to_string()),
            (None, false) => built
                .source
                .token()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(()) => {
                let status = built.source.status();
                errln!(
                    "mcp-sidecar login: done; token valid until {}, stored in {}",
                    status.expires_at.as_deref().unwrap_or("it is rejected (no expiry given)"),
                    status.persisted_in.as_deref().unwrap_or("memory only")
                );
                exit::OK
            }
            Err(e) => {
                errln!("mcp-sidecar login: {e}");
                exit::FAILURE
            }
        }
    })
}

fn print_prompt(login: Option<Login>) {
    let Some(login) = login else { return };
    match &login.user_code {
        Some(code) => errln!(
            "mcp-sidecar login: open {} and enter the code {code}{}",
            login.verification_uri,
            login
                .expires_at
                .as_deref()
                .map(|e| format!(" (expires {e})"))
                .unwrap_or_default()
        ),
        None => errln!("mcp-sidecar login: open {}", login.verification_uri),
    }
    if let Some(complete) = &login.verification_uri_complete {
        errln!("mcp-sidecar login: or open {complete} (the code is filled in)");
    }
    open_in_browser(
        login
            .verification_uri_complete
            .as_deref()
            .unwrap_or(&login.verification_uri),
    );
}

/// Opens the sign-in page where a person runs this in a terminal with a browser at hand.
fn open_in_browser(url: &str) {
    let at_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    if at_terminal && crate::browser::open(url, &env, crate::stdio::in_container(&env)) {
        errln!("mcp-sidecar login: opened it in your browser");
    }
}

async fn authorization_code(
    manager: &Arc<token::Manager>,
    grant: &Arc<token::AuthorizationCode>,
) -> Result<(), String> {
    let url = grant.begin().await.map_err(|e| e.to_string())?;
    errln!("mcp-sidecar login: open this URL in a browser and log in:\n\n  {url}\n");
    open_in_browser(url.as_str());
    errln!(
        "mcp-sidecar login: then paste the URL the browser was sent to (it fails to load if nothing listens there; that is fine):"
    );
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| format!("cannot read standard input: {e}"))?
    .map_err(|e| format!("cannot read standard input: {e}"))?;
    let Some(query) = crate::terminal_login::callback_query(&line) else {
        return Err(
            "nothing usable was pasted: expected the full redirected URL with ?code=...&state=..."
                .into(),
        );
    };
    let issued = grant.complete(&query).await.map_err(|e| e.to_string())?;
    manager.accept(issued).await;
    Ok(())
}
