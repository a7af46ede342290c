//! One client's session as the router holds it: subscriptions, the ordered
//! queue of messages not yet acknowledged, and the attached connection.
//!
//! The queue keeps every entry's seq, size and state; message bodies are in
//! memory only while a client is connected (offline persistent sessions keep
//! just this index, the bodies stay in the store). Entries handed to the
//! connection always form a prefix of the queue (`handed`), because they are
//! handed out in order and removals keep the order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::deadlines::Deadline;
use super::{ConnId, Kick, Outbound, Owner, Will};
use crate::acl::ClientAcl;
use crate::mqtt::message::Message;
use crate::mqtt::topic::SubOpts;
use crate::store::{EntryState, SessionRecord, SubscriptionRecord};

/// Packet id of delivery `seq`. Deriving it from the seq means a resend after
/// a restart uses the original packet id without storing it (MQTT-4.4.0-1),
/// and a QoS 2 receiver recognises the resend as a duplicate.
pub fn pkid_of(seq: u64) -> u16 {
    ((seq.saturating_sub(1)) % 65535 + 1) as u16
}

/// Packet id of the message at a cluster position: every node derives the
/// same one, so a device that moves to another node mid-flight sees its
/// QoS 2 resend under the packet id it already has, and drops it as the
/// duplicate it is (MQTT-4.3.3). Consecutive offsets of one partition
/// never share an id within 65535.
pub fn pkid_of_pos((partition, offset): crate::store::ClusterPos) -> u16 {
    let n = (offset as u64).wrapping_add((partition as u64).wrapping_mul(7919));
    (n % 65535 + 1) as u16
}

/// The message of a queue entry with the per-subscriber delivery values.
#[derive(Debug, Clone)]
pub struct Body {
    pub msg: Arc<Message>,
    pub sub_ids: Arc<[u32]>,
}

#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    pub size: u32,
    pub qos: u8,
    pub retain: bool,
    pub state: EntryState,
    /// `None` while the body lives only in the store.
    pub body: Option<Body>,
    /// Whether the store holds this entry (a session's persistence can change
    /// while entries are queued: 5.0 expiry set or cleared on reconnect).
    pub stored: bool,
    /// Cluster mode: the message's position in the `messages` topic (`None`
    /// in single-node mode, and until the body of a restored entry is read).
    pub origin: Option<crate::store::ClusterPos>,
}

/// The connection currently attached to a session.
pub struct Conn {
    pub id: ConnId,
    pub tx: mpsc::Sender<Outbound>,
    /// QoS 0 deliveries; made at the first (see [`Conn::qos0`]).
    pub tx0: Option<mpsc::Sender<Outbound>>,
    pub kick: Option<oneshot::Sender<Kick>>,
    pub window: usize,
    /// Entries handed to this connection and not yet acknowledged.
    pub inflight: usize,
    /// The listener it came in on.
    pub listener: Option<Arc<str>>,
}

impl Conn {
    /// The QoS 0 channel, made and handed to the connection on first use;
    /// `None` if the connection has no room for it now (the delivery is then
    /// dropped as queue_full, as on a full QoS 0 channel).
    ///
    /// Bounded like a session queue (`session.max_queued_messages`): QoS 0
    /// deliveries buffered towards a slow online client beyond it are
    /// dropped and counted (reason queue_full).
    pub fn qos0(&mut self, max_queued: usize) -> Option<&mpsc::Sender<Outbound>> {
        if self.tx0.is_none() {
            let (tx0, rx0) = mpsc::channel(max_queued.clamp(1, 1 << 20));
            self.tx.try_send(Outbound::Qos0Channel(rx0)).ok()?;
            self.tx0 = Some(tx0);
        }
        self.tx0.as_ref()
    }
}

pub struct Session {
    pub client_id: Arc<str>,
    pub expiry_secs: u32,
    pub protocol: u8,
    /// Subscriptions by filter as sent (with any `$share/` prefix).
    pub subs: HashMap<String, SubOpts>,
    pub queue: VecDeque<Entry>,
    /// Length of the queue prefix handed to the current connection.
    pub handed: usize,
    pub queued_bytes: usize,
    pub next_seq: u64,
    pub incoming_qos2: HashSet<u16>,
    pub conn: Option<Conn>,
    /// Id of the connection that last attached (see `Router::stale`).
    pub conn_gen: ConnId,
    /// Bodies are being read back from the store; nothing is handed out until then.
    pub loading: bool,
    /// Whether the store holds a record of this session.
    pub stored: bool,
    pub disconnected_at_ms: Option<u64>,
    /// The will of the current connection.
    pub will: Option<Box<Will>>,
    /// A will waiting for its delay after the connection closed (5.0).
    pub pending_will: Option<Box<Will>>,
    /// When the pending will is due.
    pub will_deadline: Option<Deadline>,
    /// When the session expires, while its client is offline.
    pub expiry_deadline: Option<Deadline>,
    /// Who this persistent session counts against (`Router::owners`).
    pub owner: Option<Owner>,
    /// The verified identity that owns the session (stored with it): only
    /// it may take the session over or clean it. `None` until an
    /// authenticated client claims it.
    pub identity: Option<Arc<str>>,
    /// What the client may read (deliveries, retained messages) and publish
    /// (its will); holds the identity it was compiled for. Set by the router
    /// at restore, CONNECT and ACL reload.
    pub acl: Arc<ClientAcl>,
    /// Cluster mode: this node writes the session's shared state (its client
    /// connected here last); `false` for a shadow of a session owned elsewhere.
    pub owned_here: bool,
    /// Cluster mode: per `messages` partition, the offset up to which the
    /// client acknowledged everything.
    pub cursor: Vec<crate::store::ClusterPos>,
    /// Cluster mode, for a shadow: QoS 2 deliveries its client received on
    /// the owning node and has not completed (see `SharedSession::released`).
    pub released: Vec<crate::store::ClusterPos>,
}

impl Entry {
    /// The packet id it is delivered with: from its cluster position when it
    /// has one, else from its seq.
    pub fn pkid(&self) -> u16 {
        self.origin.map_or_else(|| pkid_of(self.seq), pkid_of_pos)
    }
}

impl Session {
    pub fn new(client_id: Arc<str>) -> Session {
        Session {
            expiry_secs: 0,
            protocol: 4,
            subs: HashMap::new(),
            queue: VecDeque::new(),
            handed: 0,
            queued_bytes: 0,
            next_seq: 1,
            incoming_qos2: HashSet::new(),
            conn: None,
            conn_gen: 0,
            loading: false,
            stored: false,
            disconnected_at_ms: None,
            will: None,
            pending_will: None,
            will_deadline: None,
            expiry_deadline: None,
            owner: None,
            identity: None,
            acl: Arc::new(ClientAcl::open(&client_id)),
            owned_here: false,
            cursor: Vec::new(),
            released: Vec::new(),
            client_id,
        }
    }

    pub fn persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// Offline past its expiry, even if its timer has not fired yet.
    pub fn expired(&self, now: tokio::time::Instant) -> bool {
        self.conn.is_none() && self.expiry_deadline.is_some_and(|d| d.at <= now)
    }

    pub fn online(&self) -> bool {
        self.conn.is_some()
    }

    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            protocol: self.protocol,
            expiry_secs: self.expiry_secs,
            disconnected_at_ms: self.disconnected_at_ms,
            subscriptions: self
                .subs
                .iter()
                .map(|(filter, o)| SubscriptionRecord {
                    filter: filter.clone(),
                    qos: o.qos,
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                    retain_handling: o.retain_handling,
                    subscription_id: o.subscription_id,
                })
                .collect(),
            identity: self.identity.as_deref().map(str::to_string),
        }
    }

    /// Index of the entry with `seq` (the queue is ordered by seq).
    pub fn find(&self, seq: u64) -> Option<usize> {
        let (a, b) = self.queue.as_slices();
        match a.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => Some(i),
            Err(_) => b
                .binary_search_by_key(&seq, |e| e.seq)
                .ok()
                .map(|i| i + a.len()),
        }
    }

    /// Removes the entry at `idx`, keeping `handed` and the byte count right.
    pub fn remove_at(&mut self, idx: usize) -> Option<Entry> {
        let e = self.queue.remove(idx)?;
        if idx < self.handed {
            self.handed -= 1;
            if let Some(c) = self.conn.as_mut() {
                c.inflight = c.inflight.saturating_sub(1);
            }
        }
        self.queued_bytes = self.queued_bytes.saturating_sub(e.size as usize);
        Some(e)
    }

    /// Index of the oldest entry that may be dropped (not handed to a client,
    /// not mid-flight from an earlier connection).
    pub fn oldest_droppable(&self) -> Option<usize> {
        (self.handed..self.queue.len()).find(|&i| self.queue[i].state == EntryState::Queued)
    }

    /// Forgets what was handed to a connection that is gone: those entries are
    /// resent (PUBLISH with DUP, or PUBREL) to the next one.
    pub fn detach(&mut self) -> Option<Conn> {
        self.handed = 0;
        self.conn.take()
    }

    /// Drops message bodies of an offline persistent session: they are in the store.
    pub fn unload(&mut self) {
        for e in self.queue.iter_mut() {
            e.body = None;
        }
    }

    /// Cluster mode: whether the cursor covers the message at `pos`.
    pub fn acknowledged(&self, pos: Option<crate::store::ClusterPos>) -> bool {
        pos.is_some_and(|(p, o)| self.cursor.iter().any(|&(cp, co)| cp == p && o <= co))
    }

    pub fn needs_load(&self) -> bool {
        self.queue.iter().any(|e| e.body.is_none())
    }
}
