//! AMQP 0-9-1 (RabbitMQ) command source of a downlink route.
//!
//! - [`start`] checks the settings and spawns the source task; the task
//!   connects in the background and reconnects after a backoff when the
//!   connection is lost (backends come and go).
//! - `session`: one connection: declares/binds the queue, sets the prefetch,
//!   consumes (manual acks) and forwards deliveries in order.
//! - `convert`: delivery → [`Command`](super::Command).
//! - `settle`: acks each delivery once the processor says the command is
//!   stored (or settled for good), nacks it back to the queue on `Retry`.
//!
//! At-least-once: nothing is acked before its outcome is known; whatever is
//! unacked when a connection ends (or the process dies) is redelivered by
//! the broker, possibly after later commands were already stored.

mod convert;
mod session;
mod settle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::session::Session;
use self::settle::Pending;
use crate::bridge::downlink::{CommandEnvelope, CommandTx};
use crate::bridge::driver::backoff::Backoff;
use crate::bridge::registry::SettingError;
use crate::bridge::BridgeError;
use crate::config::{AmqpBackend, DownlinkRoute};

/// How long a stopping source waits for the outcomes of commands already
/// handed to the processor (those not settled by then are redelivered).
const DRAIN: Duration = Duration::from_secs(5);
/// A session that lasted this long counts as healthy: the next failure is
/// retried quickly again. Shorter ones (e.g. consume refused right after
/// connecting) keep growing the backoff, so a broken setup is not hammered.
const STABLE: Duration = Duration::from_secs(10);
/// How often the connection's state is checked besides consumer events.
const LIVENESS: Duration = Duration::from_secs(1);

/// What a source needs to (re)connect, checked once at start-up.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    backend: String,
    route: Arc<str>,
    uri: AMQPUri,
    queue: ShortString,
    declare_queue: bool,
    /// Exchange and binding key to bind the queue with.
    bind: Option<(ShortString, ShortString)>,
    prefetch: u16,
}

/// Starts consuming `route.queue` in the background; hands commands to `tx`.
/// Fails only on settings that can never work; an unreachable broker is not
/// an error here, the task keeps trying until `stop` becomes true.
pub async fn start(
    backend: &AmqpBackend,
    route: &DownlinkRoute,
    tx: CommandTx,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> Result<JoinHandle<()>, BridgeError> {
    let settings = check(backend, route)
        .map_err(|errors| BridgeError::settings(&backend.name, &errors).in_route(&route.name))?;
    let source = Source {
        s: settings,
        tx,
        stop,
        backoff: Backoff::new(),
    };
    Ok(tasks.spawn(source.run()))
}

/// Validates what the broker would refuse on every attempt; every problem
/// is reported, keyed below the route.
pub(super) fn check(
    backend: &AmqpBackend,
    route: &DownlinkRoute,
) -> Result<Settings, Vec<SettingError>> {
    let mut errors = Vec::new();
    let mut short = |key: &'static str, value: &str| {
        super::short(key, value).map_err(|e| errors.push(SettingError::new(key, e)))
    };
    let queue = short("queue", &route.queue);
    let bind = if route.bind_exchange.is_empty() {
        Ok(None)
    } else {
        match (
            short("bind_exchange", &route.bind_exchange),
            short("binding_key", &route.binding_key),
        ) {
            (Ok(e), Ok(k)) => Ok(Some((e, k))),
            _ => Err(()),
        }
    };
    if route.queue.is_empty() {
        errors.push(SettingError::new("queue", "an AMQP downlink needs a queue"));
    }
    if route.prefetch == 0 {
        // 0 means "unlimited" to the broker: nothing would bound what is in flight.
        errors.push(SettingError::new("prefetch", "must be greater than 0"));
    }
    let uri = super::parse_uri(backend.uri.expose())
        .map_err(|e| errors.push(SettingError::new("uri", e)));
    match (uri, queue, bind) {
        (Ok(uri), Ok(queue), Ok(bind)) if errors.is_empty() => Ok(Settings {
            backend: backend.name.clone(),
            route: Arc::from(route.name.as_str()),
            uri,
            queue,
            declare_queue: route.declare_queue,
            bind,
            prefetch: route.prefetch,
        }),
        _ => Err(errors),
    }
}

/// Why a session ended.
enum End {
    Stopped,
    /// The processor is gone: nothing can be delivered any more.
    ProcessorGone,
    Lost(String),
}

struct Source {
    s: Settings,
    tx: CommandTx,
    stop: CancellationToken,
    backoff: Backoff,
}

impl Source {
    async fn run(mut self) {
        let (route, queue) = (self.s.route.clone(), self.s.queue.to_string());
        loop {
            let opened = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                opened = Session::open(&self.s) => opened,
            };
            match opened {
                Ok(session) => {
                    tracing::info!(%route, %queue, prefetch = self.s.prefetch, "AMQP downlink consuming");
                    let began = Instant::now();
                    match self.consume(session).await {
                        End::Stopped => return,
                        End::ProcessorGone => {
                            tracing::error!(%route, "AMQP downlink: the command processor is gone; consuming stopped");
                            return;
                        }
                        End::Lost(why) => {
                            tracing::warn!(%route, %queue, "AMQP downlink interrupted, will reconnect (unacked commands are redelivered): {why}");
                        }
                    }
                    if began.elapsed() >= STABLE {
                        self.backoff.reset();
                    }
                }
                Err(e) => {
                    tracing::warn!(%route, %queue, backend = %self.s.backend, "AMQP downlink could not connect and consume, will retry: {e}");
                }
            }
            let delay = self.backoff.next_delay();
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            tracing::info!(%route, %queue, "AMQP downlink reconnecting");
        }
    }

    /// Forwards deliveries to the processor in order until the session ends;
    /// a separate task acks them as their outcomes arrive (in order), so
    /// forwarding is never held up by storage.
    async fn consume(&mut self, mut session: Session) -> End {
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let mut settler = tokio::spawn(settle::run(
            settle_rx,
            self.stop.clone(),
            self.s.route.clone(),
        ));
        let mut liveness = tokio::time::interval(LIVENESS);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break End::Stopped,
                d = session.deliveries.recv() => match d {
                    Some(Ok(Some(delivery))) => {
                        let (command, acker) = convert::command(self.s.queue.as_str(), delivery);
                        tracing::trace!(route = %self.s.route, position = %command.position, "consumed");
                        let (done, outcome) = oneshot::channel();
                        let env = CommandEnvelope { command, done };
                        // A full channel is backpressure; stopping meanwhile
                        // leaves the delivery unacked (requeued at close).
                        tokio::select! {
                            biased;
                            _ = self.stop.cancelled() => break End::Stopped,
                            sent = self.tx.send(env) => if sent.is_err() {
                                break End::ProcessorGone;
                            },
                        }
                        // Only fails if the settler is gone, which ends with the session.
                        let _ = settle_tx.send(Pending { acker, outcome });
                    }
                    Some(Ok(None)) | None => break End::Lost("the consumer was cancelled".into()),
                    Some(Err(e)) => break End::Lost(e.to_string()),
                },
                _ = liveness.tick() => if !session.alive() {
                    break End::Lost("connection or channel closed".into());
                },
            }
        };
        match end {
            End::Lost(_) => {
                // Acks can no longer reach the broker: it redelivers them all.
                settler.abort();
            }
            End::Stopped | End::ProcessorGone => {
                session.cancel().await;
                drop(settle_tx);
                if tokio::time::timeout(DRAIN, &mut settler).await.is_err() {
                    tracing::warn!(route = %self.s.route, "AMQP downlink stopped before every outcome was known; those commands will be redelivered");
                    settler.abort();
                }
            }
        }
        session.close().await;
        end
    }
}
