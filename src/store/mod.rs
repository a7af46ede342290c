//! Durable session store: persistent sessions, their offline queues and
//! retained messages, in an embedded crash-safe key-value store (redb).
//!
//! One writer thread applies submitted [`Op`]s in FIFO order and commits them
//! in groups (group commit): every op that arrived while the previous commit
//! was being fsynced goes into the next transaction, so the fsync cost is
//! shared. A [`Commit`] resolves once the ops it belongs to are durable.
//!
//! Disk faults: [`StoreHealth`] says whether the store takes new writes
//! (free space above `store.min_free_bytes`, measured by [`DiskWatch`]; last
//! commit succeeded). A failed commit is reopened and retried until it lands
//! (`writer`). Records are versioned and a store of the unversioned format is
//! migrated at open (`migrate`); undecodable records are quarantined.
//!
//! THIS FILE IS THE API CONTRACT; the implementation lives in sibling files.

use serde::{Deserialize, Serialize};

use crate::mqtt::message::Message;

mod handle;
mod health;
mod migrate;
mod recover;
mod tables;
mod watch;
mod writer;

#[cfg(test)]
mod tests;

pub use handle::{Commit, CommitObserver, Store, StoreOptions, StoreStats, DB_FILE};
pub use health::{available_bytes, DiskTransition, StoreHealth};
pub use tables::Versioned;
pub(crate) use tables::{decode as decode_record, encode as encode_record};
pub use watch::DiskWatch;

/// One persistent subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub filter: String,
    /// Granted QoS (0..=2).
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 5.0 Retain Handling (0, 1 or 2).
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

/// Durable metadata of one persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Protocol level of the last connection (4 = 3.1.1, 5 = 5.0).
    pub protocol: u8,
    /// Effective Session Expiry Interval in seconds (already capped by config).
    pub expiry_secs: u32,
    /// When the client disconnected (unix ms); `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<SubscriptionRecord>,
    /// The verified identity (user name) that owns the session: only it may
    /// take the session over or clean it. `None`: created anonymously or
    /// without verification (and by records of store format 1).
    pub identity: Option<String>,
}

/// Delivery state of a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    /// Not yet sent to the client.
    Queued,
    /// PUBLISH sent, not acknowledged: resend with DUP on reconnect.
    Sent,
    /// QoS 2: PUBREC received, PUBREL sent: resend PUBREL on reconnect.
    Released,
}

/// A message queued for one session. `message.qos` and `message.retain` are
/// already the values to deliver with (effective QoS, Retain As Published).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedEntry {
    pub message: Message,
    pub subscription_ids: Vec<u32>,
    pub state: EntryState,
    /// Cluster mode: where the message is in the cluster's `messages` topic
    /// (acknowledgements travel between nodes as positions). `None` in
    /// single-node mode and for entries of record version 1.
    pub origin: Option<ClusterPos>,
}

/// A position in the cluster's `messages` topic: (partition, offset).
pub type ClusterPos = (i32, i64);

/// A change to the store.
#[derive(Debug, Clone)]
pub enum Op {
    PutSession {
        client_id: String,
        record: SessionRecord,
    },
    /// Removes the session record, all its queue entries and incoming QoS 2 ids.
    DeleteSession {
        client_id: String,
    },
    Enqueue {
        client_id: String,
        seq: u64,
        entry: QueuedEntry,
    },
    /// Sets the state of an existing entry; a missing entry is ignored.
    SetState {
        client_id: String,
        seq: u64,
        state: EntryState,
    },
    /// Removes an entry; a missing entry is ignored.
    RemoveEntry {
        client_id: String,
        seq: u64,
    },
    /// A QoS 2 PUBLISH received and PUBRECed, awaiting PUBREL (exactly-once across restarts).
    AddIncomingQos2 {
        client_id: String,
        pkid: u16,
    },
    RemoveIncomingQos2 {
        client_id: String,
        pkid: u16,
    },
    /// Sets (replaces) the retained message of `message.topic`.
    PutRetained {
        message: Message,
    },
    DeleteRetained {
        topic: String,
    },
    /// Cluster mode: every `messages` record up to `offset` of `partition`
    /// has been routed (and what it put in sessions is in this batch).
    Routed {
        partition: i32,
        offset: i64,
    },
}

/// One queue entry as known at start-up: no message body, only what limits need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    /// `Message::size()` of the entry.
    pub size: u32,
    pub state: EntryState,
}

#[derive(Debug, Clone)]
pub struct RecoveredSession {
    pub client_id: String,
    pub record: SessionRecord,
    /// Queue index in ascending seq order.
    pub index: Vec<IndexEntry>,
    pub incoming_qos2: Vec<u16>,
}

/// What start-up reads: session metadata and queue indexes, never queued bodies.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub sessions: Vec<RecoveredSession>,
    pub retained: Vec<Message>,
    /// Undecodable records moved to the quarantine table during start-up.
    pub quarantined: u64,
    /// Cluster mode: per `messages` partition, the last offset routed here.
    pub cluster_positions: Vec<ClusterPos>,
}

// Clone: one failed group commit reports the same error to every waiter
// (hence the `Arc`s around the sources).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An I/O error (e.g. ENOSPC, EIO): transient, the database is reopened
    /// and the commit retried.
    #[error("store I/O error: {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error, when there is one (shared, so
        /// that the error stays `Clone`).
        #[source]
        source: Option<std::sync::Arc<std::io::Error>>,
    },
    /// A database error that a reopen cannot fix.
    #[error("store database error")]
    Database(#[source] std::sync::Arc<redb::Error>),
    /// The store was written by a newer build, in a format this one cannot read.
    #[error(
        "store format version {found} is newer than this build reads ({supported}); \
         use a newer mqbridge or restore a backup"
    )]
    NewerFormat { found: u32, supported: u32 },
    /// A record could not be encoded (a bug, not a disk problem).
    #[error("encoding a store record")]
    Encode(#[source] postcard::Error),
    /// A stored record could not be decoded.
    #[error("stored record could not be decoded: {what}")]
    Corrupt {
        what: String,
        #[source]
        source: Option<postcard::Error>,
    },
    /// The writer thread could not be started.
    #[error("starting the store writer thread")]
    WriterSpawn(#[source] std::sync::Arc<std::io::Error>),
    /// A blocking task doing store work (`what`) panicked or was cancelled.
    #[error("store task failed: {what}")]
    Task {
        what: &'static str,
        #[source]
        source: std::sync::Arc<tokio::task::JoinError>,
    },
    /// The writer thread panicked.
    #[error("the store writer thread panicked")]
    WriterPanicked,
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// Whether this is an I/O error, which a reopen and retry may cure.
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }
}
