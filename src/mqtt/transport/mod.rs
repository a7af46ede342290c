//! The byte streams MQTT runs over: plain TCP, TLS, WebSocket, secure
//! WebSocket. The connection task is generic over [`Transport`]; this
//! module turns an accepted socket into the right one (TLS handshake,
//! WebSocket upgrade) within the connect timeout, and holds what a
//! connection knows about its listener ([`ListenerCtx`]) and its peer
//! ([`ConnCtx`]).
//!
//! - [`tls`]: rustls configs, reload, the client certificate's identity.
//! - [`ws`]: the WebSocket upgrade and the stream adapter over its messages.

pub mod tls;
pub mod ws;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::listeners::{ListenerKind, ListenerSpec};
use crate::metrics::{ListenerMetrics, TlsFailure};
use crate::mqtt::admission::{LogLimiter, WARN_EVERY};
use crate::mqtt::connection::{serve, Shared};
pub use tls::PeerIdentity;

/// Bytes reserved for one read from the socket.
pub const READ_CHUNK: usize = 4096;

/// What a connection knows of the listener it came in on. Another part of
/// the gateway (authentication) reads `auth` and `allow_anonymous`.
pub struct ListenerCtx {
    /// The `listener` label and log field.
    pub name: Arc<str>,
    pub kind: ListenerKind,
    /// This listener's authentication methods, when it overrides `auth.methods`.
    pub auth: Option<Vec<String>>,
    /// This listener's `allow_anonymous`, when it overrides `auth.allow_anonymous`.
    pub allow_anonymous: Option<bool>,
    pub metrics: ListenerMetrics,
    /// `tls` and `wss`: the config new handshakes use (swapped on reload).
    pub tls: Option<tls::TlsState>,
    /// `ws` and `wss`: the upgrade path.
    pub ws_path: String,
}

impl ListenerCtx {
    pub fn new(spec: &ListenerSpec, metrics: ListenerMetrics, tls: Option<tls::TlsState>) -> Self {
        ListenerCtx {
            name: spec.name.clone(),
            kind: spec.kind,
            auth: spec.auth.clone(),
            allow_anonymous: spec.allow_anonymous,
            metrics,
            tls,
            ws_path: spec.path.clone(),
        }
    }
}

/// One connection, before and after CONNECT.
pub struct ConnCtx {
    /// Unique across listeners (the router tells a stale connection from
    /// the current one by it).
    pub id: u64,
    pub peer: SocketAddr,
    pub listener: Arc<ListenerCtx>,
    /// The verified client certificate's identity (mTLS listeners).
    pub peer_identity: Option<PeerIdentity>,
    /// CONNECT must be read by then: the TLS handshake and the WebSocket
    /// upgrade count against the same `mqtt.connect_timeout_secs`.
    pub connect_deadline: Instant,
}

/// A byte stream carrying MQTT.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Rd<'a>: ReadSide + Send
    where
        Self: 'a;
    type Wr<'a>: WriteSide + Send
    where
        Self: 'a;
    /// The reading and writing sides, used by one task at once.
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>);
    /// The socket underneath (zero linger on a stalled close).
    fn tcp(&self) -> &TcpStream;
}

/// Reading side of a transport.
pub trait ReadSide {
    /// Appends what can be read to `buf` (0: closed). Cancel-safe.
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

/// Writing side of a transport.
pub trait WriteSide {
    /// Whether bytes taken by `write` may wait in the transport's own
    /// buffer until `flush` (TLS records, WebSocket messages).
    const BUFFERED: bool;
    /// Takes some of `out` (at least one byte). Cancel-safe.
    fn write<'a>(
        &'a mut self,
        out: &'a [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
    /// Puts what `write` took on the wire. Cancel-safe.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_;
    /// What the socket takes now, without waiting (`WouldBlock` if none, and
    /// always for a buffered transport).
    fn try_write(&mut self, out: &[u8]) -> io::Result<usize>;
}

/// Plain TCP: readiness and non-blocking calls on the shared socket, as the
/// connection loop always did; no lock, and an idle connection holds no
/// read buffer (it is reserved only once the socket is readable).
pub struct TcpSide<'a>(&'a TcpStream);

impl ReadSide for TcpSide<'_> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.0.readable().await?;
            buf.reserve(READ_CHUNK);
            match self.0.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

impl WriteSide for TcpSide<'_> {
    const BUFFERED: bool = false;

    async fn write(&mut self, out: &[u8]) -> io::Result<usize> {
        loop {
            self.0.writable().await?;
            match self.0.try_write(out) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        std::future::ready(Ok(()))
    }

    fn try_write(&mut self, out: &[u8]) -> io::Result<usize> {
        self.0.try_write(out)
    }
}

impl Transport for TcpStream {
    type Rd<'a> = TcpSide<'a>;
    type Wr<'a> = TcpSide<'a>;

    fn halves(&mut self) -> (TcpSide<'_>, TcpSide<'_>) {
        (TcpSide(self), TcpSide(self))
    }

    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A half of a stream layered over TCP (TLS, WebSocket), split with
/// `tokio::io::split`: both halves are used by the one connection task, so
/// its lock is never contended.
pub struct Layered<H>(H);

impl<T: AsyncRead + AsyncWrite + Send> ReadSide for Layered<ReadHalf<T>> {
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        buf.reserve(READ_CHUNK);
        self.0.read_buf(buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Send> WriteSide for Layered<WriteHalf<T>> {
    const BUFFERED: bool = true;

    fn write<'a>(
        &'a mut self,
        out: &'a [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        self.0.write(out)
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.0.flush()
    }

    fn try_write(&mut self, _out: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// Implements [`Transport`] for a stream layered over TCP.
macro_rules! layered_transport {
    ($t:ty, |$s:ident| $tcp:expr) => {
        impl Transport for $t {
            type Rd<'a> = Layered<ReadHalf<&'a mut $t>>;
            type Wr<'a> = Layered<WriteHalf<&'a mut $t>>;

            fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
                let (r, w) = tokio::io::split(self);
                (Layered(r), Layered(w))
            }

            fn tcp(&self) -> &TcpStream {
                let $s = self;
                $tcp
            }
        }
    };
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

layered_transport!(TlsStream, |s| s.get_ref().0);
layered_transport!(ws::WsStream<TcpStream>, |s| s.get_ref());
layered_transport!(ws::WsStream<TlsStream>, |s| s.get_ref().get_ref().0);

/// Runs one accepted socket: the TLS handshake and the WebSocket upgrade
/// its listener asks for (within the connect timeout), then the MQTT
/// connection.
///
/// One boxed future per listener kind, so a connection's task is only as
/// large as its own path needs: a plain TCP connection does not carry the
/// space of a TLS stream or a WebSocket upgrade it never makes (an async
/// `match` over the kinds would be the size of the largest).
pub fn establish(
    stream: TcpStream,
    mut ctx: ConnCtx,
    sh: Arc<Shared>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match ctx.listener.kind {
        ListenerKind::Tcp => Box::pin(serve(stream, ctx, sh)),
        ListenerKind::Ws => Box::pin(async move {
            if let Some(ws) = Box::pin(ws::upgrade(stream, &ctx, &sh)).await {
                Box::pin(serve(ws, ctx, sh)).await;
            }
        }),
        ListenerKind::Tls => Box::pin(async move {
            if let Some(tls) = Box::pin(tls_handshake(stream, &mut ctx)).await {
                Box::pin(serve(tls, ctx, sh)).await;
            }
        }),
        ListenerKind::Wss => Box::pin(async move {
            let Some(tls) = Box::pin(tls_handshake(stream, &mut ctx)).await else {
                return;
            };
            if let Some(ws) = Box::pin(ws::upgrade(tls, &ctx, &sh)).await {
                Box::pin(serve(ws, ctx, sh)).await;
            }
        }),
    }
}

/// The server side of the TLS handshake; a failure is counted, logged
/// (rate-limited: a scan must not flood the log) and the socket closed.
async fn tls_handshake(stream: TcpStream, ctx: &mut ConnCtx) -> Option<TlsStream> {
    let on = &ctx.listener;
    let state = on.tls.as_ref()?;
    let accept = state.acceptor().accept(stream);
    let failure = match tokio::time::timeout_at(ctx.connect_deadline, accept).await {
        Ok(Ok(tls)) => {
            ctx.peer_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| PeerIdentity::from_der(leaf));
            if let Some(id) = &ctx.peer_identity {
                tracing::debug!(listener = %on.name, peer = %ctx.peer, common_name = ?id.common_name, "client certificate verified");
            }
            return Some(tls);
        }
        Ok(Err(e)) => (tls::failure_reason(&e), Some(e)),
        Err(_) => (TlsFailure::Timeout, None),
    };
    on.metrics.tls_failure(failure.0);
    let (reason, error) = (failure.0.as_str(), failure.1.map(|e| e.to_string()));
    static WARN: OnceLock<LogLimiter> = OnceLock::new();
    match WARN.get_or_init(|| LogLimiter::new(WARN_EVERY)).allow() {
        Some(suppressed) => {
            tracing::warn!(listener = %on.name, peer = %ctx.peer, reason, ?error, suppressed, "TLS handshake failed")
        }
        None => {
            tracing::debug!(listener = %on.name, peer = %ctx.peer, reason, ?error, "TLS handshake failed")
        }
    }
    None
}
