//! Turning SIGTERM/SIGINT into a cancellation every task can watch.
//!
//! Kubernetes sends SIGTERM and waits `terminationGracePeriodSeconds`; a
//! developer presses Ctrl-C. Both must lead to the same orderly drain.

use tokio_util::sync::CancellationToken;

/// Spawns a task that cancels the returned token on the first SIGTERM or
/// SIGINT. Cancel the token yourself to shut down from code (tests).
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
