//! The router: one task that owns every session, the subscription tree and
//! the retained messages.
//!
//! Connection tasks talk to it over one bounded channel ([`RouterMsg`]); it
//! answers over oneshots and pushes deliveries into each connection's
//! credit-limited outbound channel. A single owner means no locks on the
//! routing path and a total order of store operations: every op goes to the
//! store's FIFO in the order the router decided it, so an ack can never
//! overtake the enqueue it acknowledges. Work is taken in batches: all
//! messages waiting in the channel are handled, their store ops submitted as
//! one group, and the replies that promised durability are released when
//! that group commits.

mod access;
pub mod admin;
mod cluster;
mod command;
mod deadlines;
mod lifecycle;
mod publish;
mod queue;
mod quota;
mod retained;
mod session;
#[cfg(test)]
mod tests;
mod will;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::Validated;
use crate::metrics::Metrics;
use crate::mqtt::message::Message;
use crate::mqtt::topic::{SubOpts, SubTree};
use crate::store::{Op, QueuedEntry, Recovered, Store};
use crate::tasks::Tasks;

pub use admin::AdminQuery;
pub use command::{BudgetRefusal, CommandResult};
pub use session::pkid_of;
use session::Session;

/// Identifies one network connection (a client id can have several over time).
pub type ConnId = u64;

/// Capacity of the router's inbound channel. Full => connection tasks wait
/// (backpressure on publishers); nothing is dropped.
pub const ROUTER_CHANNEL: usize = 4096;
/// Most messages handled before their store ops are submitted as one group.
const BATCH: usize = 512;

/// A will message and its 5.0 delay.
#[derive(Debug, Clone)]
pub struct Will {
    pub message: Message,
    pub delay_secs: u32,
    /// 5.0 Message Expiry Interval, counted from when the will is published.
    pub expiry_secs: Option<u32>,
    /// The publisher's ACL, set by the router when it takes the will: the
    /// topic is checked again when the will is published (rules may have
    /// been reloaded since CONNECT).
    pub acl: Option<Arc<crate::acl::ClientAcl>>,
}

/// What the router sends to a connection.
#[derive(Debug)]
pub enum Outbound {
    /// Deliver a message; `seq` identifies it in the session (the packet id derives from it).
    Publish {
        seq: u64,
        /// Its packet id (see `Entry::pkid`); unused for QoS 0.
        pkid: u16,
        msg: Arc<Message>,
        qos: u8,
        retain: bool,
        dup: bool,
        sub_ids: Arc<[u32]>,
    },
    /// Resend PUBREL for a QoS 2 message whose PUBREC arrived before a reconnect.
    PubRel { seq: u64, pkid: u16 },
    /// The channel of QoS 0 deliveries to this online connection, made at
    /// its first one: a connection that never gets one (an idle device, a
    /// QoS 1 fleet) does not hold its 1.8 KB.
    Qos0Channel(mpsc::Receiver<Outbound>),
}

/// Why the router closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    TakenOver,
    ShuttingDown,
    /// The admin API disconnected the client.
    Administrative,
}

/// Everything the router needs to attach a connection to a session.
pub struct ConnectRequest {
    pub conn_id: ConnId,
    pub client_id: Arc<str>,
    pub clean_start: bool,
    /// Effective session expiry (0 = the session ends with the connection).
    pub expiry_secs: u32,
    pub protocol: u8,
    pub will: Option<Box<Will>>,
    /// Outgoing inflight window (QoS>0 deliveries not yet acknowledged).
    pub window: usize,
    /// Credit-limited channel for QoS>0 deliveries and PUBRELs (and, once,
    /// the QoS 0 channel): room for `window` + 3.
    pub tx: mpsc::Sender<Outbound>,
    pub kick: oneshot::Sender<Kick>,
    /// User name from CONNECT, if any (per-user session limit).
    pub username: Option<Arc<str>>,
    /// The verified identity (user name); `None` when anonymous or not
    /// verified. A session owned by an identity is refused to any other.
    pub identity: Option<Arc<str>>,
    /// Peer address (per-IP session limit for clients without a user name).
    pub peer_ip: Option<std::net::IpAddr>,
    /// The listener the connection came in on (admin API).
    pub listener: Option<Arc<str>>,
}

impl ConnectRequest {
    /// Who a persistent session of this connection counts against.
    fn owner(&self) -> Option<Owner> {
        if self.expiry_secs == 0 {
            return None;
        }
        match (&self.username, self.peer_ip) {
            (Some(u), _) => Some(Owner::User(u.clone())),
            (None, Some(ip)) => Some(Owner::Ip(ip)),
            (None, None) => None,
        }
    }
}

/// Who a persistent session counts against for the per-user and per-IP
/// limits (sessions recovered at start-up or preset by a command have none
/// until their client connects).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    User(Arc<str>),
    Ip(std::net::IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    Accepted {
        session_present: bool,
        /// Packet ids of the client's QoS 2 PUBLISHes received (PUBRECed) but
        /// not yet released: a re-send of one of them is a duplicate.
        qos2_pending: Vec<u16>,
    },
    /// Refused because a global limit (persistent sessions) is reached.
    QuotaExceeded,
    /// Refused because the session belongs to another identity: nothing
    /// happened to it (no takeover, no clean start).
    NotAuthorized,
    /// The store failed to persist the session.
    StoreFailed,
}

/// Result of a PUBLISH, given once every durable copy is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Delivered,
    NoSubscribers,
    /// Every matching session refused it (queue or store full).
    QuotaExceeded,
    /// Not stored for a persistent session (or as retained) because the
    /// store's disk is below `store.min_free_bytes` or its commits are
    /// failing: never acknowledged as a success.
    DiskLow,
    /// The store failed: the message must not be acknowledged as delivered.
    StoreFailed,
}

/// One subscription request, already validated by the connection.
#[derive(Debug, Clone)]
pub struct SubRequest {
    /// The filter as sent, including any `$share/group/` prefix.
    pub filter: String,
    pub opts: SubOpts,
}

/// Per-filter SUBACK result: granted QoS or a 5.0 reason code.
pub type SubResult = Result<u8, u8>;

pub enum RouterMsg {
    Connect {
        req: ConnectRequest,
        reply: oneshot::Sender<ConnectOutcome>,
    },
    Publish {
        conn_id: ConnId,
        client_id: Arc<str>,
        msg: Message,
        /// Packet id of a QoS 2 PUBLISH, for exactly-once de-duplication.
        qos2_pkid: Option<u16>,
        reply: Option<oneshot::Sender<PublishOutcome>>,
    },
    /// Incoming QoS 2 PUBREL: the packet id may be reused.
    PubRel {
        conn_id: ConnId,
        client_id: Arc<str>,
        pkid: u16,
        /// Whether the packet id was awaiting its PUBREL.
        reply: oneshot::Sender<bool>,
    },
    Subscribe {
        conn_id: ConnId,
        client_id: Arc<str>,
        filters: Vec<SubRequest>,
        reply: oneshot::Sender<Vec<SubResult>>,
    },
    Unsubscribe {
        conn_id: ConnId,
        client_id: Arc<str>,
        filters: Vec<String>,
        reply: oneshot::Sender<Vec<bool>>,
    },
    /// The client acknowledged (PUBACK/PUBCOMP) or was sent (QoS 0) delivery `seq`.
    Acked {
        conn_id: ConnId,
        client_id: Arc<str>,
        seq: u64,
    },
    /// PUBREC for delivery `seq` arrived; the router answers with PUBREL
    /// once the Released state is stored.
    Received {
        conn_id: ConnId,
        client_id: Arc<str>,
        seq: u64,
    },
    Disconnect {
        conn_id: ConnId,
        client_id: Arc<str>,
        /// Publish the will (abnormal close or 5.0 reason 0x04).
        publish_will: bool,
        /// 5.0 DISCONNECT may change the session expiry.
        new_expiry: Option<u32>,
    },
    /// A downlink command (see [`CommandResult`]).
    Command {
        msg: Message,
        /// Client-addressed: only this client's session.
        client_id: Option<Arc<str>>,
        /// Create a preset session if the client has none.
        create_session: bool,
        reply: oneshot::Sender<CommandResult>,
    },
    /// A session's queue bodies read back from the store.
    Loaded {
        client_id: Arc<str>,
        conn_id: ConnId,
        entries: Result<Vec<(u64, QueuedEntry)>, crate::store::StoreError>,
    },
    /// The ACL rules were reloaded: recompile every session's ACL.
    AclReloaded,
    /// A question or an action of the admin API.
    Admin(AdminQuery),
    /// Cluster mode: a message or retained change from the other nodes.
    Cluster(crate::cluster::Inbound),
    /// Fault injection for supervision tests only.
    #[doc(hidden)]
    InjectFault(Fault),
}

/// A fault to inject, to test that the gateway never stays up half-dead.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The router task panics.
    RouterPanic,
    /// The store writer thread panics.
    StoreWriterPanic,
}

type Waiter = Box<dyn FnOnce(bool) + Send>;

/// Whether a rate-limited warning may be logged now (at most one a second
/// per `last`); the counters have every event, debug logging the rest.
fn warn_allowed(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering;
    let now = crate::mqtt::message::now_ms();
    let prev = last.load(Ordering::Relaxed);
    now.saturating_sub(prev) >= 1000
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// A shared subscription group's round robin.
#[derive(Debug, Default)]
struct SharedGroup {
    /// Position of the last member picked.
    pos: usize,
    /// Members in the subscription tree; the entry goes when it reaches 0.
    members: usize,
}

/// A device acknowledged a command that asked for a delivery receipt.
#[derive(Debug, Clone)]
pub struct ReceiptEvent {
    pub client_id: Arc<str>,
    pub topic: String,
    pub receipt: crate::mqtt::message::Receipt,
    pub acked_at_ms: u64,
}

pub struct Router {
    cfg: Arc<Validated>,
    metrics: Arc<Metrics>,
    store: Store,
    /// Where the router's helper tasks (commit waiters, queue loads) run, so
    /// that shutdown waits for them.
    tasks: Tasks,
    sessions: HashMap<Arc<str>, Box<Session>>,
    tree: SubTree,
    retained: HashMap<String, Arc<Message>>,
    /// Sum of `Message::size` of `retained` (mqtt.max_retained_bytes).
    retained_bytes: u64,
    /// Wills waiting for their delay, and their size (mqtt.max_delayed_wills,
    /// mqtt.max_delayed_will_bytes).
    delayed_wills: usize,
    delayed_will_bytes: u64,
    /// Round-robin state per shared group (group, filter); an entry lives
    /// exactly as long as the group has members (clients create groups at will).
    shared_rr: HashMap<(Arc<str>, Arc<str>), SharedGroup>,
    self_tx: mpsc::WeakSender<RouterMsg>,
    /// Persistent sessions and their queued bytes, for the global limits.
    persistent: usize,
    /// Persistent sessions per owner (per-user / per-IP limits); no zero entries.
    owners: HashMap<Owner, usize>,
    stored_bytes: u64,
    /// Where acknowledged commands that want a delivery receipt are reported
    /// (bounded; full => the receipt is dropped and counted by the receiver's owner).
    receipts: Option<mpsc::Sender<ReceiptEvent>>,
    /// Queue reads requested in this batch: (client, connection, below seq).
    pending_loads: Vec<(Arc<str>, ConnId, u64)>,
    /// Deliveries refused because the store cannot take writes (see
    /// `queue::Ctx::disk_refused`); read and reset per PUBLISH/command.
    disk_refused: usize,
    /// Store ops of the current batch and the replies waiting for their commit.
    ops: Vec<Op>,
    waiters: Vec<Waiter>,
    /// Session expiry and will-delay deadlines.
    deadlines: deadlines::Deadlines,
    /// The ACL rules: each session holds its compiled [`crate::acl::ClientAcl`].
    acl: Arc<crate::acl::Acl>,
    /// Cluster mode: where this node's messages go to the other nodes, and
    /// the records of the current batch.
    cluster: Option<crate::cluster::Link>,
    cluster_out: Vec<crate::cluster::Outgoing>,
    /// The `messages` position of the message being routed from the
    /// cluster log (set only while it is routed).
    routing_origin: Option<crate::store::ClusterPos>,
    /// The owner and generation of every client id the `sessions` log names
    /// and that has not ended.
    claims: HashMap<Arc<str>, cluster::Claim>,
    /// Sessions owned here whose shared state changed in this batch (`true`:
    /// a claim, the client connected here).
    cluster_dirty: HashMap<Arc<str>, bool>,
    /// Cluster mode: the live nodes (to adopt the sessions of dead ones).
    members: Option<crate::cluster::Members>,
    /// Cluster mode: the wills of sessions owned by other nodes, published
    /// here if this node adopts them (their node died).
    remote_wills: HashMap<Arc<str>, Box<Will>>,
    /// Cluster mode: the subscriptions of clean sessions connected to other
    /// nodes (persistent ones are in `tree`, through their shadows), and
    /// each such client's filters. A PUBLISH no subscription in the cluster
    /// matches is not written to the log.
    remote_subs: SubTree,
    remote_filters: HashMap<Arc<str>, Vec<String>>,
    /// Cluster mode: the last `messages` offset routed in this batch, per
    /// partition; stored with the batch's ops (see `Op::Routed`).
    routed: Vec<crate::store::ClusterPos>,
}

impl Router {
    pub fn new(
        cfg: Arc<Validated>,
        metrics: Arc<Metrics>,
        store: Store,
        recovered: Recovered,
        self_tx: mpsc::WeakSender<RouterMsg>,
        tasks: Tasks,
    ) -> Router {
        let mut router = Router {
            cfg,
            metrics,
            store,
            tasks,
            sessions: HashMap::new(),
            tree: SubTree::default(),
            retained: HashMap::new(),
            retained_bytes: 0,
            delayed_wills: 0,
            delayed_will_bytes: 0,
            shared_rr: HashMap::new(),
            self_tx,
            persistent: 0,
            owners: HashMap::new(),
            stored_bytes: 0,
            receipts: None,
            pending_loads: Vec::new(),
            disk_refused: 0,
            ops: Vec::new(),
            waiters: Vec::new(),
            deadlines: deadlines::Deadlines::default(),
            acl: Arc::new(crate::acl::Acl::new(
                crate::acl::AclRules::default(),
                crate::acl::AclMetrics::unregistered(),
            )),
            cluster: None,
            cluster_out: Vec::new(),
            routing_origin: None,
            claims: HashMap::new(),
            cluster_dirty: HashMap::new(),
            members: None,
            remote_wills: HashMap::new(),
            remote_subs: SubTree::default(),
            remote_filters: HashMap::new(),
            routed: Vec::new(),
        };
        router.restore(recovered);
        router
    }

    /// Checks clients against `acl` (without it, no rules: everything is allowed).
    pub fn with_acl(mut self, acl: Arc<crate::acl::Acl>) -> Router {
        self.acl = acl;
        self.acl_reloaded();
        self
    }

    /// Reports acknowledged commands with a receipt request to `tx`.
    pub fn with_receipts(mut self, tx: mpsc::Sender<ReceiptEvent>) -> Router {
        self.receipts = Some(tx);
        self
    }

    /// Runs until `shutdown` resolves, then detaches every client and closes the store.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<RouterMsg>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(
            self.cfg.session.expiry_check_interval_secs,
        ));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                    }
                }
                (client, kind, key) = self.deadlines.next() => self.fired(client, kind, key),
                _ = tick.tick() => self.tick(),
                _ = &mut shutdown => break,
            }
            self.flush().await;
        }
        self.shutdown().await;
    }

    /// Whether `conn_id` is older than the connection that last attached to
    /// the session: late packets of a taken-over connection must not act on
    /// the new session (seqs and packet ids restart after a clean start).
    fn stale(&self, client: &str, conn_id: ConnId) -> bool {
        self.sessions
            .get(client)
            .is_some_and(|s| conn_id < s.conn_gen)
    }

    fn handle(&mut self, msg: RouterMsg) {
        let from_conn = match &msg {
            RouterMsg::Publish {
                conn_id, client_id, ..
            }
            | RouterMsg::PubRel {
                conn_id, client_id, ..
            }
            | RouterMsg::Subscribe {
                conn_id, client_id, ..
            }
            | RouterMsg::Unsubscribe {
                conn_id, client_id, ..
            }
            | RouterMsg::Acked {
                conn_id, client_id, ..
            }
            | RouterMsg::Received {
                conn_id, client_id, ..
            } => Some((*conn_id, client_id.clone())),
            _ => None,
        };
        if let Some((conn_id, client)) = from_conn {
            if self.stale(&client, conn_id) {
                tracing::debug!(client_id = %client, conn_id, "packet of a taken-over connection ignored");
                return;
            }
        }
        match msg {
            RouterMsg::Connect { req, reply } => self.connect(req, reply),
            RouterMsg::Publish {
                conn_id: _,
                client_id,
                msg,
                qos2_pkid,
                reply,
            } => self.publish(&client_id, msg, qos2_pkid, reply),
            RouterMsg::PubRel {
                client_id,
                pkid,
                reply,
                ..
            } => self.pubrel(&client_id, pkid, reply),
            RouterMsg::Subscribe {
                conn_id: _,
                client_id,
                filters,
                reply,
            } => self.subscribe(&client_id, filters, reply),
            RouterMsg::Unsubscribe {
                client_id,
                filters,
                reply,
                ..
            } => self.unsubscribe(&client_id, filters, reply),
            RouterMsg::Acked {
                conn_id,
                client_id,
                seq,
            } => self.acked(&client_id, conn_id, seq),
            RouterMsg::Received { client_id, seq, .. } => self.received(&client_id, seq),
            RouterMsg::Command {
                msg,
                client_id,
                create_session,
                reply,
            } => self.command(msg, client_id, create_session, reply),
            RouterMsg::Disconnect {
                conn_id,
                client_id,
                publish_will,
                new_expiry,
            } => self.disconnect(&client_id, conn_id, publish_will, new_expiry),
            RouterMsg::Loaded {
                client_id,
                conn_id,
                entries,
            } => self.loaded(&client_id, conn_id, entries),
            RouterMsg::AclReloaded => self.acl_reloaded(),
            RouterMsg::Admin(query) => self.admin(query),
            RouterMsg::Cluster(inbound) => self.cluster_inbound(inbound),
            RouterMsg::InjectFault(Fault::RouterPanic) => panic!("injected router fault"),
            RouterMsg::InjectFault(Fault::StoreWriterPanic) => {
                let store = self.store.clone();
                self.tasks.spawn("store fault injection", async move {
                    store.inject_writer_panic().await
                });
            }
        }
    }

    /// Registers a reply to send once the current batch is durable.
    fn after_commit(&mut self, f: impl FnOnce(bool) + Send + 'static) {
        self.waiters.push(Box::new(f));
    }

    /// Submits the batch's store ops as one group and releases the waiting
    /// replies when it commits (in a task, so the router moves on meanwhile).
    async fn flush(&mut self) {
        let waiters = std::mem::take(&mut self.waiters);
        // Cluster mode: the batch's records go to Kafka alongside the commit,
        // and where routing got to is stored with what it stored.
        let shared = self.cluster_flush();
        let routed = std::mem::take(&mut self.routed);
        if !self.ops.is_empty() {
            self.ops.extend(
                routed
                    .into_iter()
                    .map(|(partition, offset)| Op::Routed { partition, offset }),
            );
        }
        if self.ops.is_empty() && shared.is_none() {
            waiters.into_iter().for_each(|w| w(true));
            self.send_loads();
            return;
        }
        let commit = if self.ops.is_empty() {
            None
        } else {
            let ops = std::mem::take(&mut self.ops);
            match self.store.submit(ops).await {
                Ok(commit) => Some(commit),
                Err(e) => {
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "store rejected a batch; replies report failure"
                    );
                    waiters.into_iter().for_each(|w| w(false));
                    self.send_loads();
                    return;
                }
            }
        };
        if !waiters.is_empty() || shared.is_some() {
            self.tasks.spawn("router commit wait", async move {
                let stored = match commit {
                    Some(c) => c.await.is_ok(),
                    None => true,
                };
                let shared = match shared {
                    Some(s) => s.await,
                    None => true,
                };
                waiters.into_iter().for_each(|w| w(stored && shared));
            });
        }
        self.send_loads();
    }

    /// Sends the queue reads of this batch, after its ops are in the store's FIFO.
    fn send_loads(&mut self) {
        for (client, conn_id, below) in self.pending_loads.drain(..) {
            let store = self.store.clone();
            let Some(tx) = self.self_tx.upgrade() else {
                return;
            };
            self.tasks.spawn("router queue load", async move {
                let entries = store.load_queue(&client, below).await;
                let _ = tx
                    .send(RouterMsg::Loaded {
                        client_id: client,
                        conn_id,
                        entries,
                    })
                    .await;
            });
        }
    }

    /// The router state the queue code works on, split from the session map.
    fn ctx(&mut self) -> (queue::Ctx<'_>, &mut HashMap<Arc<str>, Box<Session>>) {
        let cx = queue::Ctx {
            cfg: &self.cfg,
            metrics: &self.metrics,
            ops: &mut self.ops,
            stored_bytes: &mut self.stored_bytes,
            store_accepting: self.store.health().accepting(),
            disk_refused: &mut self.disk_refused,
        };
        (cx, &mut self.sessions)
    }

    /// A member joined (`true`) or left a shared group; the group's state is
    /// removed with its last member.
    fn shared_member(&mut self, group: &Arc<str>, filter: &str, joined: bool) {
        let key = (group.clone(), Arc::<str>::from(filter));
        if joined {
            self.shared_rr.entry(key).or_default().members += 1;
        } else if let Some(g) = self.shared_rr.get_mut(&key) {
            g.members = g.members.saturating_sub(1);
            if g.members == 0 {
                self.shared_rr.remove(&key);
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics.persistent_sessions.set(self.persistent as i64);
        self.metrics.stored_bytes.set(self.stored_bytes as i64);
        self.metrics.sessions.set(self.sessions.len() as i64);
        self.metrics
            .retained_messages
            .set(self.retained.len() as i64);
        self.metrics.retained_bytes.set(self.retained_bytes as i64);
        self.metrics.wills_delayed.set(self.delayed_wills as i64);
    }
}
