//! Admin HTTP endpoint: `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! A deliberately tiny HTTP/1.x server: one request per connection, the
//! request head (request line and headers) is read up to a blank line with a
//! size cap of [`MAX_HEAD_BYTES`] and a deadline of [`HEAD_TIMEOUT`], the
//! response is written with `Connection: close`, and the connection is
//! closed. Request bodies are not read. It has no authentication: bind it to
//! a private interface.
//!
//! | request | response |
//! |---|---|
//! | `GET /metrics` | 200, the registry in text exposition format |
//! | `GET /healthz` | 200 `ok` (the process is up) |
//! | `GET /readyz` | 200 `ready` once started and nothing holds the gateway back ([`Readiness`]), else 503 `not ready` (with why) |
//! | other method on those paths | 405 with `Allow: GET` |
//! | any other path | 404 |
//! | malformed request | 400; head too large 431; head too slow 408 |
//!
//! `/metrics` answers `text/plain; version=0.0.4`, or the OpenMetrics content
//! type when the client's `Accept` header asks for
//! `application/openmetrics-text` (as Prometheus does); the body is the same.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::render;
use crate::tasks::Tasks;

/// Largest accepted request head (request line plus headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for writing a response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections handled at once; further ones are closed at once.
pub const MAX_CONCURRENT_CONNECTIONS: usize = 64;

/// Content type of `/metrics` by default.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Content type of `/metrics` when the client accepts OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Copy)]
struct Limits {
    head_timeout: Duration,
    write_timeout: Duration,
    max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: HEAD_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_concurrent: MAX_CONCURRENT_CONNECTIONS,
        }
    }
}

/// What `/readyz` answers: ready once the gateway started, unless something
/// keeps it from doing its job.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    /// The store refuses writes (disk below its watermark, or a commit
    /// failing and being retried).
    store_refusing: AtomicBool,
    /// Downlink routes paused because a global store budget refuses their
    /// commands (they are not committed until it has room again).
    downlink_blocked: AtomicUsize,
}

impl Readiness {
    pub fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Release);
    }

    /// Set by the store's disk watch on every check.
    pub fn set_store_accepting(&self, accepting: bool) {
        self.store_refusing.store(!accepting, Ordering::Release);
    }

    /// A downlink route became blocked (`true`) or resumed (`false`); each
    /// route reports its transitions only.
    pub fn downlink_blocked(&self, blocked: bool) {
        if blocked {
            self.downlink_blocked.fetch_add(1, Ordering::AcqRel);
        } else {
            let _ = self
                .downlink_blocked
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.started.load(Ordering::Acquire) {
            Some("not ready")
        } else if self.store_refusing.load(Ordering::Acquire) {
            Some("not ready: the store refuses writes (disk low or failing)")
        } else if self.downlink_blocked.load(Ordering::Acquire) > 0 {
            Some("not ready: downlink paused, the store budget is full")
        } else {
            None
        }
    }
}

/// Serves the admin endpoint on `listener` until the stop signal of `tasks`.
///
/// Each connection is handled in its own task on `tasks`. On the stop signal
/// the listener is closed and the function returns; requests already being
/// handled finish on their own (each is bounded by the timeouts above) and
/// are waited for with the gateway's other tasks.
/// Failed `accept` calls are logged and retried, so this only returns `Ok`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<Readiness>,
    tasks: Tasks,
) -> std::io::Result<()> {
    serve_with(listener, registry, ready, tasks, Limits::default()).await
}

async fn serve_with(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<Readiness>,
    tasks: Tasks,
    limits: Limits,
) -> std::io::Result<()> {
    let shutdown = tasks.cancelled();
    let permits = Arc::new(Semaphore::new(limits.max_concurrent));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoint listening");
    }
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "admin endpoint: too many connections, closing");
            drop(stream);
            continue;
        };
        let registry = Arc::clone(&registry);
        let ready = Arc::clone(&ready);
        tasks.spawn("admin request", async move {
            handle(stream, peer, &registry, &ready, limits).await;
            drop(permit);
        });
    }
    tracing::info!("admin endpoint stopped");
    Ok(())
}

/// A response to send.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_header: Option<&'static str>,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_header: None,
            body: body.to_owned(),
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: &Registry,
    ready: &Readiness,
    limits: Limits,
) {
    let response = match tokio::time::timeout(limits.head_timeout, read_head(&mut stream)).await {
        Err(_) => Response::text(408, "Request Timeout", "request timeout\n"),
        Ok(Err(HeadError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "admin endpoint: read failed");
            return;
        }
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        Ok(Ok(head)) => match parse_request(&head) {
            Some(request) => route(&request, registry, ready),
            None => Response::text(400, "Bad Request", "bad request\n"),
        },
    };
    let write = write_response(&mut stream, &response);
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "admin endpoint: write failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "admin endpoint: write timed out");
            return;
        }
    }
    // Closing a socket with unread input makes the kernel send a reset,
    // which can destroy the response before the client reads it (e.g. after
    // a 431 or a request with a body). Read and discard a bounded amount
    // until the client closes its side.
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain(&mut stream)).await;
}

/// Upper bound on the time spent discarding input after a response.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

/// Upper bound on the input discarded after a response.
const LINGER_MAX_BYTES: usize = 64 * 1024;

async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_MAX_BYTES {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

enum HeadError {
    Io(std::io::Error),
    Closed,
    TooLarge,
}

/// Reads until the blank line ending the head; returns the head without it.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let n = stream.read(&mut buf[len..]).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Only the new bytes (and the 3 before them) can complete the terminator.
        let search_from = len.saturating_sub(3);
        len += n;
        if let Some(end) = find_head_end(&buf[search_from..len]) {
            buf.truncate(search_from + end);
            return Ok(buf);
        }
    }
}

/// Offset of the end of the head (start of the blank line) in `bytes`:
/// `\r\n\r\n`, or a bare `\n\n` from lenient clients.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Request<'a> {
    method: &'a str,
    path: &'a str,
    accepts_openmetrics: bool,
}

fn parse_request(head: &[u8]) -> Option<Request<'_>> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !version.starts_with("HTTP/1.")
    {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let mut accepts_openmetrics = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("accept")
            && value.contains("application/openmetrics-text")
        {
            accepts_openmetrics = true;
        }
    }
    Some(Request {
        method,
        path,
        accepts_openmetrics,
    })
}

fn route(request: &Request<'_>, registry: &Registry, ready: &Readiness) -> Response {
    if !matches!(request.path, "/metrics" | "/healthz" | "/readyz") {
        return Response::text(404, "Not Found", "not found\n");
    }
    if request.method != "GET" {
        let mut response = Response::text(405, "Method Not Allowed", "method not allowed\n");
        response.extra_header = Some("Allow: GET");
        return response;
    }
    match request.path {
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: if request.accepts_openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                TEXT_CONTENT_TYPE
            },
            extra_header: None,
            body: render(registry),
        },
        "/healthz" => Response::text(200, "OK", "ok"),
        _ => match ready.not_ready() {
            None => Response::text(200, "OK", "ready"),
            Some(why) => Response::text(503, "Service Unavailable", why),
        },
    }
}

async fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if let Some(header) = response.extra_header {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use tokio::task::JoinHandle;

    struct Server {
        addr: SocketAddr,
        ready: Arc<Readiness>,
        metrics: Metrics,
        tasks: Tasks,
        task: JoinHandle<std::io::Result<()>>,
    }

    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let ready = Arc::new(Readiness::default());
        let (tasks, _) = Tasks::new();
        let task = tokio::spawn(serve_with(
            listener,
            Arc::new(registry),
            Arc::clone(&ready),
            tasks.clone(),
            limits,
        ));
        Server {
            addr,
            ready,
            metrics,
            tasks,
            task,
        }
    }

    /// Sends `request` raw and returns (status line, headers, body), or the
    /// I/O error (e.g. a reset when the server refused the connection).
    async fn try_exchange(
        addr: SocketAddr,
        request: &[u8],
    ) -> std::io::Result<(String, String, String)> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .map_err(|_| std::io::Error::other("response timed out"))??;
        let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no head/body separator: {text:?}")))?;
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        Ok((status.to_owned(), headers.to_owned(), body.to_owned()))
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
        try_exchange(addr, request).await.expect("exchange")
    }

    async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        exchange(addr, request.as_bytes()).await
    }

    #[tokio::test]
    async fn serves_the_three_endpoints() {
        let server = start(Limits::default()).await;

        let (status, headers, body) = get(server.addr, "/healthz").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "ok");
        assert!(headers.contains("Content-Length: 2\r\n"), "{headers}");
        assert!(headers.contains("Connection: close"), "{headers}");

        let (status, _, body) = get(server.addr, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body, "not ready");
        server.ready.set_started(true);
        let (status, _, body) = get(server.addr, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "ready");
        // A downlink paused by the store budget makes it not ready until it resumes.
        server.ready.downlink_blocked(true);
        let (status, _, body) = get(server.addr, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert!(body.contains("downlink paused"), "{body}");
        server.ready.downlink_blocked(false);
        let (status, _, _) = get(server.addr, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 200 OK");

        server.metrics.listener(&"tcp".into(), false).active.set(7);
        server.metrics.received(1);
        let (status, headers, body) = get(server.addr, "/metrics?x=1").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{headers}"
        );
        assert!(headers.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("# TYPE mqbridge_mqtt_connections_active gauge\n"));
        assert!(
            body.contains("\nmqbridge_mqtt_connections_active{listener=\"tcp\"} 7\n"),
            "{body}"
        );
        assert!(body.contains("\nmqbridge_mqtt_messages_received_total{qos=\"1\"} 1\n"));
        assert!(body.ends_with("# EOF\n"));

        let (status, headers, _) = exchange(
            server.addr,
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains(OPENMETRICS_CONTENT_TYPE), "{headers}");

        server.tasks.token().cancel();
        server.task.await.expect("join").expect("serve returns Ok");
        assert!(TcpStream::connect(server.addr).await.is_err());
    }

    #[tokio::test]
    async fn errors() {
        let server = start(Limits::default()).await;

        let (status, _, _) = get(server.addr, "/nope").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");

        let (status, headers, _) = exchange(server.addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(headers.lines().any(|l| l == "Allow: GET"), "{headers}");

        let (status, _, _) = exchange(server.addr, b"HEAD /healthz HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");

        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"GET /healthz\r\n\r\n",
            b"GET healthz HTTP/1.1\r\n\r\n",
            b"GET /healthz SMTP/1.0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            let (status, _, _) = exchange(server.addr, bad).await;
            assert_eq!(status, "HTTP/1.1 400 Bad Request", "{bad:?}");
        }

        // Bare LF line endings are accepted.
        let (status, _, body) = exchange(server.addr, b"GET /healthz HTTP/1.0\n\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "ok");

        // A head over the cap gets 431.
        let mut big = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 100, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        let (status, _, _) = exchange(server.addr, &big).await;
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    }

    #[tokio::test]
    async fn slow_head_times_out() {
        let server = start(Limits {
            head_timeout: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let (status, _, _) = exchange(server.addr, b"GET /healthz HTTP/1.1\r\n").await;
        assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        let server = start(Limits {
            max_concurrent: 1,
            ..Limits::default()
        })
        .await;
        // Hold the only slot with an incomplete request.
        let mut holder = TcpStream::connect(server.addr).await.expect("connect");
        holder
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("send");
        // The server accepts in order, so `holder` has the slot before
        // `extra` is accepted.

        let mut extra = TcpStream::connect(server.addr).await.expect("connect");
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut raw))
            .await
            .expect("closed in time");
        assert!(read.is_err() || raw.is_empty(), "{raw:?}");

        // Finishing the first request frees the slot.
        holder.write_all(b"\r\n").await.expect("send");
        let mut raw = Vec::new();
        holder.read_to_end(&mut raw).await.expect("read");
        assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
        drop(holder);
        let mut answered = false;
        for _ in 0..100 {
            if let Ok((status, _, _)) =
                try_exchange(server.addr, b"GET /healthz HTTP/1.1\r\n\r\n").await
            {
                assert_eq!(status, "HTTP/1.1 200 OK");
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answered, "slot was not freed");
    }

    #[test]
    fn head_end_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
