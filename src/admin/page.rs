//! The status page at `/`: one server-rendered HTML page, no script and no
//! build step, that refreshes itself every [`REFRESH_SECS`] seconds. It
//! shows what the dashboard's top row shows (clients, sessions, queued
//! messages, retained messages, readiness) and the bridge routes.

use std::fmt::Write;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::AdminState;
use crate::mqtt::router::AdminQuery;

pub const REFRESH_SECS: u32 = 5;

pub(super) async fn status(State(s): State<AdminState>) -> Response {
    let stats = super::api::ask(&s, AdminQuery::Stats).await.ok();
    let reasons = s.ready.not_ready();
    let mut page = String::with_capacity(4096);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>mqbridge</title><style>{STYLE}</style></head><body><h1>mqbridge</h1>"
    );
    let ready = if reasons.is_empty() {
        "<p class=\"ok\" id=\"ready\">ready</p>".to_string()
    } else {
        format!(
            "<p class=\"bad\" id=\"ready\">not ready: {}</p>",
            escape(&reasons.join("; "))
        )
    };
    page.push_str(&ready);
    page.push_str("<div class=\"row\">");
    match &stats {
        Some(st) => {
            let tiles = [
                ("connected", "connected clients", st.connected as u64),
                ("sessions", "sessions", st.sessions as u64),
                (
                    "persistent",
                    "persistent sessions",
                    st.persistent_sessions as u64,
                ),
                ("queued", "queued messages", st.queued_messages as u64),
                ("stored_bytes", "stored bytes", st.stored_bytes),
                ("retained", "retained messages", st.retained_messages as u64),
            ];
            for (id, label, value) in tiles {
                let _ = write!(
                    page,
                    "<div class=\"tile\"><div class=\"n\" id=\"{id}\">{value}</div><div>{label}</div></div>"
                );
            }
        }
        None => page.push_str("<p class=\"bad\">the router does not answer</p>"),
    }
    page.push_str("</div><h2>Bridge routes</h2><table><tr><th>route</th><th>direction</th><th>backend</th><th>state</th><th>last error</th></tr>");
    for r in s.routes.iter() {
        let state = if r.up.get() == 1 {
            "<td class=\"ok\">connected</td>"
        } else {
            "<td class=\"bad\">not connected</td>"
        };
        let last = r.last_error.get().map(|(what, _)| what).unwrap_or_default();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td>{state}<td>{}</td></tr>",
            escape(&r.name),
            r.direction,
            escape(&r.backend),
            escape(&last)
        );
    }
    page.push_str("</table><p><a href=\"/metrics\">metrics</a> · <a href=\"/api/v1/stats\">API</a></p></body></html>");
    Html(page).into_response()
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em}.row{display:flex;gap:1em;flex-wrap:wrap}\
.tile{border:1px solid #ccc;border-radius:6px;padding:1em;min-width:9em}.n{font-size:2em}\
.ok{color:#070}.bad{color:#b00}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}";

/// Route and backend names come from the operator's config; escaped all the same.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
