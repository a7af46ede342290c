//! The JSON admin API under `/api/v1` (documented in the README):
//!
//! | call | answer |
//! |---|---|
//! | `GET /api/v1/stats` | sessions, connected clients, persistent sessions, queued messages, stored bytes, retained messages and bytes, delayed wills |
//! | `GET /api/v1/sessions?prefix=&offset=&limit=` | `{total, sessions: [{client_id, connected, persistent, queued_messages}]}`, sorted by client id, at most 1000 a page |
//! | `GET /api/v1/sessions/{client_id}` | one session, connected or not; 404 if none |
//! | `DELETE /api/v1/sessions/{client_id}` | disconnects the client and deletes the session, answered once durable; token |
//! | `POST /api/v1/clients/{client_id}/disconnect` | disconnects the client (5.0: DISCONNECT 0x98), the session stays; token |
//! | `GET /api/v1/routes` | the bridge routes, their backend and whether it is connected |
//!
//! The router answers from its own task (see `mqtt::router::admin`); a
//! call waits at most [`ROUTER_TIMEOUT`] for it.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::AdminState;
use crate::mqtt::router::{AdminQuery, RouterMsg};

/// How long a call waits for the router.
pub const ROUTER_TIMEOUT: Duration = Duration::from_secs(5);

/// A bridge route as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteInfo {
    pub name: String,
    /// "uplink" or "downlink".
    pub direction: &'static str,
    pub backend: String,
    #[serde(skip)]
    pub up: prometheus_client::metrics::gauge::Gauge,
    /// The backend's (uplink) or the source's (downlink).
    #[serde(skip)]
    pub last_error: crate::bridge::metrics::LastError,
    /// Downlink: commands consumed and not settled, and (Kafka) the lag.
    #[serde(skip)]
    pub source: Option<crate::bridge::metrics::SourceGauges>,
}

#[derive(Debug, Serialize)]
struct RouteState<'a> {
    #[serde(flatten)]
    route: &'a RouteInfo,
    connected: bool,
    /// What went wrong last, and when (ms since the epoch).
    last_error: Option<String>,
    last_error_at_ms: Option<u64>,
    unsettled_commands: Option<i64>,
    /// Kafka downlink only (0 for AMQP).
    lag_messages: Option<i64>,
}

/// A refusal or failure of a call: its status and why, as JSON.
pub(super) struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, why: &'static str) -> Response {
    ApiError(status, why).into_response()
}

/// Asks the router; `Err` is the HTTP answer when it cannot answer.
pub(super) async fn ask<T>(
    s: &AdminState,
    query: impl FnOnce(oneshot::Sender<T>) -> AdminQuery,
) -> Result<T, ApiError> {
    let gone = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "the router is not running");
    let router = s.router.upgrade().ok_or_else(gone)?;
    let (tx, rx) = oneshot::channel();
    let asked = async {
        router.send(RouterMsg::Admin(query(tx))).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(ROUTER_TIMEOUT, asked).await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(gone()),
        Err(_) => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            "the router did not answer in time",
        )),
    }
}

/// Mutating calls need `Authorization: Bearer <admin.token>`.
fn authorised(s: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &s.token else {
        let why = "no admin.token is configured: mutating calls are off";
        return Err(ApiError(StatusCode::FORBIDDEN, why));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => Ok(()),
        _ => {
            tracing::warn!("admin API call refused: missing or wrong bearer token");
            let why = "missing or wrong bearer token";
            Err(ApiError(StatusCode::UNAUTHORIZED, why))
        }
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) async fn stats(State(s): State<AdminState>) -> Response {
    match ask(&s, AdminQuery::Stats).await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Paging {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

pub(super) async fn sessions(State(s): State<AdminState>, Query(p): Query<Paging>) -> Response {
    let query = |reply| AdminQuery::Sessions {
        prefix: p.prefix,
        offset: p.offset,
        limit: p.limit,
        reply,
    };
    match ask(&s, query).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn session(
    State(s): State<AdminState>,
    Path(client_id): Path<String>,
) -> Response {
    match ask(&s, |reply| AdminQuery::Session { client_id, reply }).await {
        Ok(Some(info)) => Json(info).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such session"),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn delete_session(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Response {
    if let Err(e) = authorised(&s, &headers) {
        return e.into_response();
    }
    match ask(&s, |reply| AdminQuery::DeleteSession { client_id, reply }).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "no such session (or the store failed)",
        ),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn disconnect(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Response {
    if let Err(e) = authorised(&s, &headers) {
        return e.into_response();
    }
    match ask(&s, |reply| AdminQuery::Disconnect { client_id, reply }).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such connected client"),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn routes(State(s): State<AdminState>) -> Response {
    let routes: Vec<RouteState<'_>> = s
        .routes
        .iter()
        .map(|route| {
            let last = route.last_error.get();
            RouteState {
                route,
                connected: route.up.get() == 1,
                last_error_at_ms: last.as_ref().map(|(_, at)| *at),
                last_error: last.map(|(what, _)| what),
                unsettled_commands: route.source.as_ref().map(|g| g.unsettled.get()),
                lag_messages: route.source.as_ref().map(|g| g.lag.get()),
            }
        })
        .collect();
    Json(routes).into_response()
}
