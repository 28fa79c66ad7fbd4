//! The pipeline's HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4, from
//! [`Stats::registry`]) and `GET /health` (200 `ready` once the models are loaded and the
//! consumer has its first assignment, else 503 with what it still waits for).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Stats;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for /metrics and /health on {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

struct Shared {
    stats: Arc<Stats>,
    registry: Registry,
}

/// A bound endpoint, not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl MetricsServer {
    /// Binds `addr` (`host:port`; port 0 picks a free one, see [`Self::local_addr`]).
    pub async fn bind(addr: &str, pipeline: &str, stats: Arc<Stats>) -> Result<Self, BindError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| BindError {
            addr: addr.to_owned(),
            source,
        })?;
        let registry = stats.registry(pipeline);
        Ok(MetricsServer {
            listener,
            shared: Arc::new(Shared { stats, registry }),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/health", get(health))
            .with_state(self.shared);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        Ok(()) => {
            let body = super::secrets::redact(&body).into_owned();
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                body,
            )
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "encoding the metrics failed\n".to_owned(),
        ),
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.stats.readiness.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            super::secrets::redact(&format!("not ready: {why}\n")).into_owned(),
        ),
    }
}
