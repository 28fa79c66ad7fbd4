//! SIGINT and SIGTERM: the first cancels the shutdown token (drain, commit, exit), the
//! second exits at once (status 130). Exiting mid-work is safe: nothing uncommitted is
//! lost (it is read again on restart), and a Parquet commit in progress is finished by
//! the next start.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM (the second exits the process).
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    shutdown
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    signal().await;
    tracing::info!("shutdown requested (a second SIGINT/SIGTERM stops at once)");
    shutdown.cancel();
    signal().await;
    eprintln!("second signal: stopping now; uncommitted records are read again on restart");
    std::process::exit(130);
}

/// The next SIGINT or SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot listen for SIGTERM; only Ctrl-C stops the run");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
