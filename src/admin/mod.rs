//! Admin HTTP endpoint, on axum (routing) over hyper (HTTP/1.1).
//!
//! | request | response |
//! |---|---|
//! | `GET /metrics` | 200, the registry in the OpenMetrics text format, as `application/openmetrics-text` (what the body is) |
//! | `GET /healthz` | 200 `ok`: the process is up |
//! | `GET /readyz` | 200 `{"ready":true}`, or 503 `{"ready":false,"reasons":[...]}` naming what is not ready ([`Readiness`]) |
//! | `GET /` | the status page ([`page`]) |
//! | `/api/v1/...` | the JSON admin API ([`api`]) |
//! | other method on those paths | 405 with `Allow` |
//! | any other path | 404 |
//!
//! Bounded like the MQTT side: at most [`MAX_CONCURRENT_CONNECTIONS`]
//! connections (more are closed at once), a request head must arrive within
//! [`HEAD_TIMEOUT`], one request per connection (`Connection: close`). It
//! has no transport security: bind it to a private interface. Calls that
//! change something need `admin.token` as a bearer token.

pub mod api;
mod page;
mod readiness;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use readiness::Readiness;

use crate::config::Secret;
use crate::metrics::render;
use crate::mqtt::router::RouterMsg;
use crate::tasks::Tasks;

/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a whole exchange may take, response included.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections handled at once; further ones are closed at once.
pub const MAX_CONCURRENT_CONNECTIONS: usize = 64;
/// Content type of `/metrics`: the encoder writes OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub ready: Arc<Readiness>,
    /// Weak: the admin endpoint must not keep the router alive.
    pub router: mpsc::WeakSender<RouterMsg>,
    /// `admin.token`: mutating calls need it.
    pub token: Option<Secret>,
    pub routes: Arc<[api::RouteInfo]>,
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(page::status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/stats", get(api::stats))
        .route("/api/v1/sessions", get(api::sessions))
        .route(
            "/api/v1/sessions/{client_id}",
            get(api::session).delete(api::delete_session),
        )
        .route(
            "/api/v1/clients/{client_id}/disconnect",
            post(api::disconnect),
        )
        .route("/api/v1/routes", get(api::routes))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let body = render(&s.registry);
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let reasons = s.ready.not_ready();
    if reasons.is_empty() {
        Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        let body = serde_json::json!({ "ready": false, "reasons": reasons });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

#[derive(Clone, Copy)]
struct Limits {
    head_timeout: Duration,
    max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: HEAD_TIMEOUT,
            max_concurrent: MAX_CONCURRENT_CONNECTIONS,
        }
    }
}

/// Serves the admin endpoint on `listener` until the stop signal of `tasks`.
/// Each connection runs in its own task on `tasks`, bounded by the timeouts
/// above; failed `accept` calls are logged and retried.
/// With `tls`, it serves HTTPS (the handshake bounded by [`HEAD_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    tls: Option<TlsAcceptor>,
    tasks: Tasks,
) -> std::io::Result<()> {
    serve_with(listener, state, tls, tasks, Limits::default()).await
}

async fn serve_with(
    listener: TcpListener,
    state: AdminState,
    tls: Option<TlsAcceptor>,
    tasks: Tasks,
    limits: Limits,
) -> std::io::Result<()> {
    let service = TowerToHyperService::new(router(state));
    let permits = Arc::new(Semaphore::new(limits.max_concurrent));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoint listening");
    }
    let shutdown = tasks.cancelled();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "admin endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "admin endpoint: too many connections, closing");
            continue;
        };
        let (service, tls) = (service.clone(), tls.clone());
        tasks.spawn("admin request", async move {
            match tls {
                None => exchange(stream, service, limits, peer).await,
                Some(tls) => {
                    match tokio::time::timeout(limits.head_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => exchange(stream, service, limits, peer).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "admin endpoint: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin endpoint: TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    tracing::info!("admin endpoint stopped");
    Ok(())
}

type Service = TowerToHyperService<Router>;

/// One request and its response on `io`, bounded by the timeouts.
async fn exchange<S>(io: S, service: Service, limits: Limits, peer: std::net::SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(EXCHANGE_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "admin endpoint: connection failed"),
        Err(_) => tracing::debug!(%peer, "admin endpoint: exchange timed out"),
    }
}
