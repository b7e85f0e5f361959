use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM: the start of a graceful shutdown.
/// What a second signal means is the binary's to decide (see [`wait_for_signal`]).
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

/// Waits for the next SIGINT or SIGTERM.
#[cfg(unix)]
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers there is nothing to wait for; ctrl_c is the fallback.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for the next Ctrl-C.
#[cfg(not(unix))]
pub async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
