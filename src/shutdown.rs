//! The shutdown signal: SIGTERM (what Kubernetes and compose send) or SIGINT (Ctrl-C).

use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Resolves on the first SIGTERM or SIGINT. Registration happens when this is called, so call it
/// before serving to not miss an early signal.
pub fn signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
    Ok(async move {
        if let Some(signal) = signals.next().await {
            let name = if signal == SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            tracing::info!(signal = name, "received shutdown signal");
        }
    })
}
