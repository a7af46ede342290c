//! MQTT over WebSocket (MQTT 6.0): the HTTP upgrade on the listener's path
//! with subprotocol `mqtt`, and [`WsStream`], a byte stream over the binary
//! messages (packets and messages need not align).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::ConnCtx;
use crate::metrics::ProtocolErrorReason as Why;
use crate::mqtt::connection::Shared;

/// Room above `mqtt.max_packet_size` for one message (a message may carry
/// more than one packet), and the largest message we send.
pub const MESSAGE_SLACK: usize = 64 * 1024;

/// What the client did wrong at the WebSocket layer; carried inside the
/// `io::Error` of a read, and turned into a protocol error by the
/// connection (counted and logged like any other).
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// MQTT-6.0.0-1: MQTT goes in binary frames.
    #[error("WebSocket text frame (MQTT must be sent in binary frames)")]
    Text,
    /// Over `mqtt.max_packet_size` + 64 KiB.
    #[error("WebSocket message or frame too large: {0}")]
    TooLarge(String),
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
}

/// Bytes over the binary messages of a WebSocket.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last message read.
    leftover: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }
}

fn io_err(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        WsError::Capacity(e) => io::Error::new(
            io::ErrorKind::InvalidData,
            Violation::TooLarge(e.to_string()),
        ),
        WsError::Protocol(e) => io::Error::new(
            io::ErrorKind::InvalidData,
            Violation::Protocol(e.to_string()),
        ),
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.leftover.is_empty() {
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.leftover = b,
                Some(Ok(Message::Text(_))) => {
                    let e = io::Error::new(io::ErrorKind::InvalidData, Violation::Text);
                    return Poll::Ready(Err(e));
                }
                // Pings are answered by tungstenite.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed)) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            }
        }
        let n = self.leftover.len().min(buf.remaining());
        buf.put_slice(&self.leftover[..n]);
        self.leftover.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = Pin::new(&mut self.inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(io_err)?;
        let n = out.len().min(MESSAGE_SLACK);
        let msg = Message::Binary(Bytes::copy_from_slice(&out[..n]));
        inner.start_send(msg).map_err(io_err)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_err(e))),
        }
    }
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// Whether a `Sec-WebSocket-Protocol` list offers `mqtt`.
fn offers_mqtt(req: &Request) -> bool {
    req.headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("mqtt"))
}

/// The HTTP upgrade, within the connect deadline: 404 for another path,
/// 400 without subprotocol `mqtt` (MQTT-6.0.0-3), which is answered
/// otherwise (MQTT-6.0.0-4). `None` (counted, logged) when it fails.
pub async fn upgrade<S>(stream: S, ctx: &ConnCtx, sh: &Shared) -> Option<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = ctx.listener.ws_path.clone();
    // The error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, mut resp: Response| {
        if req.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND, "no MQTT on this path"));
        }
        if !offers_mqtt(req) {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Protocol must offer mqtt",
            ));
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        Ok(resp)
    };
    let max = sh.cfg.mqtt.max_packet_size as usize + MESSAGE_SLACK;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let accept = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let (why, detail) = match tokio::time::timeout_at(ctx.connect_deadline, accept).await {
        Ok(Ok(inner)) => {
            return Some(WsStream {
                inner,
                leftover: Bytes::new(),
            })
        }
        Ok(Err(e)) => (Why::WebsocketUpgrade, e.to_string()),
        Err(_) => (
            Why::ConnectTimeout,
            "no WebSocket upgrade within the connect timeout".into(),
        ),
    };
    let on = &ctx.listener;
    on.metrics.protocol_error(why);
    on.metrics
        .connection(crate::metrics::ConnectionResult::Rejected);
    tracing::debug!(listener = %on.name, peer = %ctx.peer, reason = why.as_str(), %detail, "WebSocket upgrade failed");
    None
}
