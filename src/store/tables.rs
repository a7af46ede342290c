//! Table layout and how one [`Op`] changes it.
//!
//! Queued bodies and their index live in separate tables so that start-up can
//! scan the small fixed-size index rows without touching (or decoding) bodies.

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

// redb has one error type per operation; the store reports them all as
// `Database` with the message, since callers cannot act on the difference.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

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

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Database(format!("encode: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
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
        }
        Ok(())
    }

    /// Rewrites the body's state and the index row. A missing entry is ignored;
    /// a corrupt body is logged and left alone rather than failing the whole
    /// batch (which would also fail every other client's ops in it).
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
                tracing::warn!(client_id, seq, error = %e, "corrupt queued entry; state not changed");
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
}
