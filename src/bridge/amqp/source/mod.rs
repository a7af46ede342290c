//! AMQP 0-9-1 (RabbitMQ) command source of a downlink route, a [`Source`]
//! driven by [`run_source`] (which hands commands to the processor,
//! settles them in consumption order, reconnects with backoff and stops).
//!
//! - [`start`] checks the settings and starts the driver; it connects in
//!   the background (backends come and go).
//! - `session`: one connection: declares/binds the queue, sets the prefetch,
//!   consumes (manual acks) and forwards deliveries in order.
//! - `convert`: delivery → [`Command`].
//! - `settle`: a task per connection that acks each delivery once the
//!   processor says the command is stored (or settled for good), and nacks
//!   it back to the queue on `Retry` after a pause (so consuming goes on:
//!   [`Source::requeues_on_retry`]). A task, so that the driver goes on
//!   handing over commands meanwhile: a whole round of refused commands is
//!   returned together and comes back in its order.
//!
//! At-least-once: nothing is acked before its outcome is known; whatever is
//! unacked when a connection ends (or the process dies) is redelivered by
//! the broker, possibly after later commands were already stored.

mod convert;
mod session;
mod settle;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lapin::types::ShortString;
use lapin::Acker;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::session::Session;
use self::settle::Pending;
use crate::bridge::contract::{BoxError, BoxFuture, Source};
use crate::bridge::downlink::{Command, CommandOutcome};
use crate::bridge::driver::run_source;
use crate::bridge::registry::SettingError;
use crate::bridge::registry::SourceStart;
use crate::bridge::BridgeError;
use crate::config::{AmqpBackend, DownlinkRoute};

/// How often the connection's state is checked besides consumer events.
const LIVENESS: Duration = Duration::from_secs(1);
/// How long a stopping source waits for the acks of commands already
/// settled (those not acked by then are redelivered).
const DRAIN: Duration = Duration::from_secs(5);

/// What a source needs to (re)connect, checked once at start-up.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    backend: String,
    route: Arc<str>,
    uri: super::Endpoint,
    queue: ShortString,
    declare_queue: bool,
    /// Exchange and binding key to bind the queue with.
    bind: Option<(ShortString, ShortString)>,
    prefetch: u16,
}

/// Starts consuming `route.queue` in the background; hands commands to `tx`.
/// Fails only on settings that can never work; an unreachable broker is not
/// an error here, the driver keeps trying until `stop` is cancelled.
pub async fn start(
    backend: &AmqpBackend,
    route: &DownlinkRoute,
    start: SourceStart,
) -> Result<JoinHandle<()>, BridgeError> {
    let SourceStart {
        tx,
        cancel: stop,
        tasks,
        gauges,
        ..
    } = start;
    let tasks = &tasks;
    let settings = check(backend, route)
        .map_err(|errors| BridgeError::settings(&backend.name, &errors).in_route(&route.name))?;
    let source = AmqpSource {
        s: settings,
        session: None,
        unsettled: VecDeque::new(),
        liveness: liveness(),
        settler: None,
        stop: stop.clone(),
        tasks: tasks.clone(),
    };
    Ok(run_source(
        &route.name,
        Box::new(source),
        tx,
        gauges,
        stop,
        tasks,
    ))
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
    let uri = super::endpoint(backend).map_err(|e| errors.extend(e));
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

struct AmqpSource {
    s: Settings,
    session: Option<Session>,
    /// Deliveries handed to the driver and not settled, in consumption
    /// order (the order the driver settles them in).
    unsettled: VecDeque<(String, Acker)>,
    liveness: Interval,
    /// The connection's settle task and its input (unbounded, but the
    /// driver's window and the prefetch bound it).
    settler: Option<(mpsc::UnboundedSender<Pending>, JoinHandle<()>)>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

fn liveness() -> Interval {
    let mut i = tokio::time::interval(LIVENESS);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

impl Source for AmqpSource {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.close_session().await;
            let (route, queue) = (&self.s.route, self.s.queue.as_str());
            let session = Session::open(&self.s).await.map_err(|e| {
                tracing::warn!(%route, %queue, backend = %self.s.backend, error = %e, "AMQP downlink could not connect and consume");
                e
            })?;
            tracing::info!(%route, %queue, prefetch = self.s.prefetch, "AMQP downlink consuming");
            self.session = Some(session);
            self.liveness = liveness();
            let (tx, rx) = mpsc::unbounded_channel();
            let task = self
                .tasks
                .spawn(settle::run(rx, self.stop.clone(), self.s.route.clone()));
            self.settler = Some((tx, task));
            Ok(())
        })
    }

    /// Cancel-safe: both branches are, and nothing after them awaits.
    fn next(&mut self) -> BoxFuture<'_, Result<Command, BoxError>> {
        Box::pin(async move {
            let Some(session) = self.session.as_mut() else {
                return Err("not connected".into());
            };
            loop {
                tokio::select! {
                    biased;
                    d = session.deliveries.recv() => return match d {
                        Some(Ok(Some(delivery))) => {
                            let (command, acker) = convert::command(self.s.queue.as_str(), delivery);
                            tracing::trace!(route = %self.s.route, position = %command.position, "consumed");
                            self.unsettled.push_back((command.position.clone(), acker));
                            Ok(command)
                        }
                        Some(Ok(None)) | None => Err("the consumer was cancelled".into()),
                        Some(Err(e)) => Err(e.into()),
                    },
                    _ = self.liveness.tick() => if !session.alive() {
                        return Err("connection or channel closed".into());
                    },
                }
            }
        })
    }

    fn settle(
        &mut self,
        position: &str,
        outcome: CommandOutcome,
    ) -> BoxFuture<'_, Result<(), BoxError>> {
        let front = match self.unsettled.pop_front() {
            Some((p, acker)) if p == position => Ok(acker),
            other => Err(format!(
                "settling {position} out of order (oldest unsettled: {:?})",
                other.map(|(p, _)| p)
            )),
        };
        Box::pin(async move {
            let acker = front?;
            let settler = self.settler.as_ref().map(|(tx, _)| tx);
            settler
                .ok_or("not connected")?
                .send(Pending { acker, outcome })
                .map_err(|_| "the settle task stopped")?;
            Ok(())
        })
    }

    fn requeues_on_retry(&self) -> bool {
        true
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.close_session())
    }
}

impl AmqpSource {
    /// Stops deliveries, lets the settle task finish (when stopping; a
    /// lost connection cannot take acks any more) and closes the
    /// connection; the broker requeues whatever is unacked.
    async fn close_session(&mut self) {
        self.unsettled.clear();
        if let Some(session) = &self.session {
            session.cancel().await;
        }
        if let Some((tx, mut task)) = self.settler.take() {
            drop(tx);
            if !self.stop.is_cancelled() {
                task.abort();
            } else if tokio::time::timeout(DRAIN, &mut task).await.is_err() {
                tracing::warn!(route = %self.s.route, "AMQP downlink stopped before every outcome was acked; those commands will be redelivered");
                task.abort();
            }
        }
        if let Some(session) = self.session.take() {
            session.close().await;
        }
    }
}
