//! Table layout and how one [`Op`] changes it.
//!
//! Queued bodies and their index live in separate tables so that start-up can
//! scan the small fixed-size index rows without touching (or decoding) bodies.
//!
//! Format versions: every encoded record (session, queued entry, retained
//! message) starts with a version byte ([`RECORD_VERSION`]) followed by its
//! postcard body, and the `meta` table holds the store's format version. A
//! store without `meta` was written before versions existed (format 0: bare
//! postcard); it is migrated when opened (see `super::migrate`). A record that
//! cannot be decoded is moved to `quarantine`, never dropped silently.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use super::{EntryState, Op, QueuedEntry, StoreError};

/// client_id -> postcard [`super::SessionRecord`].
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// (client_id, seq) -> postcard [`QueuedEntry`].
pub(super) const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// (client_id, seq) -> (message size, state byte); mirrors `QUEUE` keys.
pub(super) const QUEUE_INDEX: TableDefinition<(&str, u64), (u32, u8)> =
    TableDefinition::new("queue_index");
/// (client_id, packet id) of QoS 2 PUBLISHes awaiting PUBREL.
pub(super) const INCOMING_QOS2: TableDefinition<(&str, u16), ()> =
    TableDefinition::new("incoming_qos2");
/// topic -> postcard [`crate::mqtt::message::Message`].
pub(super) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// Cluster mode: `messages` partition -> the offset of the last record
/// this node routed into its sessions, written in the same transaction as
/// what routing it stored, so a restart resumes exactly after it.
pub(super) const CLUSTER_POSITIONS: TableDefinition<i32, i64> =
    TableDefinition::new("cluster_positions");
/// "format_version" -> the store format version ([`FORMAT_VERSION`]).
pub(super) const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
/// (table, key, seq) -> the raw bytes of a record that could not be decoded,
/// kept for an operator (seq is 0 outside the queue table).
pub(super) const QUARANTINE: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("quarantine");

/// Key of the format version in [`META`].
pub(super) const FORMAT_KEY: &str = "format_version";
/// Format of stores written by this build. 0 = before versions (no `meta`).
pub(super) const FORMAT_VERSION: u32 = 3;
/// Leading byte of the records encoded by this build, unless their type says
/// otherwise ([`Versioned::VERSION`]). A later build that changes a stored
/// struct gives it a new byte value and keeps decoding the old ones.
pub(super) const RECORD_VERSION: u8 = 1;

/// A stored record type: the version byte it is written with, and how its
/// older versions are read.
pub trait Versioned: Serialize + DeserializeOwned {
    const VERSION: u8 = RECORD_VERSION;

    /// Decodes the body of an older `version`; `None` if unknown.
    fn decode_old(_version: u8, _body: &[u8]) -> Option<Result<Self, StoreError>> {
        None
    }
}

/// Version 2 added `origin` (store format 3); version 1 reads as `None`.
impl Versioned for QueuedEntry {
    const VERSION: u8 = 2;

    fn decode_old(version: u8, body: &[u8]) -> Option<Result<Self, StoreError>> {
        (version == RECORD_VERSION)
            .then(|| decode_legacy::<super::migrate::QueuedEntryV1>(body).map(Into::into))
    }
}
impl Versioned for crate::mqtt::message::Message {}

/// Version 2 added `identity` (store format 2); version 1 reads as `None`.
impl Versioned for super::SessionRecord {
    const VERSION: u8 = 2;

    fn decode_old(version: u8, body: &[u8]) -> Option<Result<Self, StoreError>> {
        (version == RECORD_VERSION)
            .then(|| decode_legacy::<super::migrate::SessionRecordV1>(body).map(Into::into))
    }
}

// redb has one error type per operation; the store reduces them to what a
// caller can act on: I/O (transient: reopen and retry) or anything else.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                classify(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        classify(e)
    }
}

fn classify(e: redb::Error) -> StoreError {
    match e {
        redb::Error::Io(e) => StoreError::Io {
            what: "database".into(),
            source: Some(std::sync::Arc::new(e)),
        },
        redb::Error::PreviousIo => StoreError::Io {
            what: "database (an earlier I/O error left it unusable until reopened)".into(),
            source: None,
        },
        other => StoreError::Database(std::sync::Arc::new(other)),
    }
}

/// Stored byte of an [`EntryState`]; fixed numbers so the on-disk format does
/// not depend on enum order.
pub(super) fn state_to_u8(state: EntryState) -> u8 {
    match state {
        EntryState::Queued => 0,
        EntryState::Sent => 1,
        EntryState::Released => 2,
    }
}

pub(super) fn state_from_u8(byte: u8) -> Option<EntryState> {
    match byte {
        0 => Some(EntryState::Queued),
        1 => Some(EntryState::Sent),
        2 => Some(EntryState::Released),
        _ => None,
    }
}

/// Encodes a record: its version byte, then its postcard body.
pub(crate) fn encode<T: Versioned>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![T::VERSION];
    postcard::to_io(value, &mut out).map_err(StoreError::Encode)?;
    Ok(out)
}

/// Decodes a record written by [`encode`] (any version this build knows).
pub(crate) fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&v, body)) if v == T::VERSION => decode_legacy(body),
        Some((&v, body)) => T::decode_old(v, body).unwrap_or_else(|| {
            Err(StoreError::Corrupt {
                what: format!("unknown record version {v}"),
                source: None,
            })
        }),
        None => Err(StoreError::Corrupt {
            what: "empty record".into(),
            source: None,
        }),
    }
}

/// Decodes a format-0 record: bare postcard, no version byte.
pub(super) fn decode_legacy<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what: "invalid record".into(),
        source: Some(e),
    })
}

/// Size recorded in the index: `Message::size()`, saturated to u32.
pub(super) fn entry_size(entry: &QueuedEntry) -> u32 {
    u32::try_from(entry.message.size()).unwrap_or(u32::MAX)
}

/// All tables, opened once per write transaction.
pub(super) struct Tables<'txn> {
    pub sessions: Table<'txn, &'static str, &'static [u8]>,
    pub queue: Table<'txn, (&'static str, u64), &'static [u8]>,
    pub index: Table<'txn, (&'static str, u64), (u32, u8)>,
    pub qos2: Table<'txn, (&'static str, u16), ()>,
    pub retained: Table<'txn, &'static str, &'static [u8]>,
    pub positions: Table<'txn, i32, i64>,
    pub quarantine: Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    /// Records moved to quarantine through these tables.
    pub quarantined: u64,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating on first use) every table in `txn`.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            sessions: txn.open_table(SESSIONS)?,
            queue: txn.open_table(QUEUE)?,
            index: txn.open_table(QUEUE_INDEX)?,
            qos2: txn.open_table(INCOMING_QOS2)?,
            retained: txn.open_table(RETAINED)?,
            positions: txn.open_table(CLUSTER_POSITIONS)?,
            quarantine: txn.open_table(QUARANTINE)?,
            quarantined: 0,
        })
    }

    pub fn apply(&mut self, op: &Op) -> Result<(), StoreError> {
        match op {
            Op::PutSession { client_id, record } => {
                self.sessions
                    .insert(client_id.as_str(), encode(record)?.as_slice())?;
            }
            Op::DeleteSession { client_id } => {
                self.sessions.remove(client_id.as_str())?;
                self.purge_client_rows(client_id)?;
            }
            Op::Enqueue {
                client_id,
                seq,
                entry,
            } => {
                let key = (client_id.as_str(), *seq);
                self.queue.insert(key, encode(entry)?.as_slice())?;
                self.index
                    .insert(key, (entry_size(entry), state_to_u8(entry.state)))?;
            }
            Op::SetState {
                client_id,
                seq,
                state,
            } => self.set_state(client_id, *seq, *state)?,
            Op::RemoveEntry { client_id, seq } => {
                let key = (client_id.as_str(), *seq);
                self.queue.remove(key)?;
                self.index.remove(key)?;
            }
            Op::AddIncomingQos2 { client_id, pkid } => {
                self.qos2.insert((client_id.as_str(), *pkid), ())?;
            }
            Op::RemoveIncomingQos2 { client_id, pkid } => {
                self.qos2.remove((client_id.as_str(), *pkid))?;
            }
            Op::PutRetained { message } => {
                self.retained
                    .insert(message.topic.as_str(), encode(message)?.as_slice())?;
            }
            Op::DeleteRetained { topic } => {
                self.retained.remove(topic.as_str())?;
            }
            Op::Routed { partition, offset } => {
                self.positions.insert(*partition, *offset)?;
            }
        }
        Ok(())
    }

    /// Rewrites the body's state and the index row. A missing entry is ignored;
    /// a corrupt body is quarantined rather than failing the whole batch
    /// (which would also fail every other client's ops in it).
    fn set_state(
        &mut self,
        client_id: &str,
        seq: u64,
        state: EntryState,
    ) -> Result<(), StoreError> {
        let key = (client_id, seq);
        let Some(bytes) = self.queue.get(key)?.map(|g| g.value().to_vec()) else {
            return Ok(());
        };
        let mut entry: QueuedEntry = match decode(&bytes) {
            Ok(entry) => entry,
            Err(e) => {
                self.quarantine_entry(client_id, seq, &bytes, &e)?;
                return Ok(());
            }
        };
        entry.state = state;
        self.queue.insert(key, encode(&entry)?.as_slice())?;
        self.index
            .insert(key, (entry_size(&entry), state_to_u8(state)))?;
        Ok(())
    }

    /// Removes every queue, index and incoming-QoS-2 row of `client_id`.
    pub fn purge_client_rows(&mut self, client_id: &str) -> Result<(), StoreError> {
        let seqs = (client_id, 0u64)..=(client_id, u64::MAX);
        self.queue.retain_in(seqs.clone(), |_, _| false)?;
        self.index.retain_in(seqs, |_, _| false)?;
        self.qos2
            .retain_in((client_id, 0u16)..=(client_id, u16::MAX), |_, _| false)?;
        Ok(())
    }

    /// Moves an undecodable record aside: kept in [`QUARANTINE`] with its key,
    /// logged and counted. The caller removes it from its own table.
    pub fn quarantine(
        &mut self,
        table: &str,
        key: &str,
        seq: u64,
        bytes: &[u8],
        error: &StoreError,
    ) -> Result<(), StoreError> {
        tracing::error!(store_table = table, key, seq, error = error as &dyn std::error::Error, "undecodable store record moved to quarantine (see mqbridge_store_quarantined_records_total)");
        self.quarantine.insert((table, key, seq), bytes)?;
        self.quarantined += 1;
        Ok(())
    }

    /// Quarantines a queued body and removes it and its index row.
    pub fn quarantine_entry(
        &mut self,
        client_id: &str,
        seq: u64,
        bytes: &[u8],
        error: &StoreError,
    ) -> Result<(), StoreError> {
        self.quarantine("queue", client_id, seq, bytes, error)?;
        self.queue.remove((client_id, seq))?;
        self.index.remove((client_id, seq))?;
        Ok(())
    }
}
