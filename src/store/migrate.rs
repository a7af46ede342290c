//! Store format versions at open: a new store is stamped with
//! [`FORMAT_VERSION`]; a store without a stamp (format 0, written before
//! versions existed: bare postcard records) is rewritten record by record
//! into the current format; format 1 (session records without their owning
//! identity) has its session records rewritten, each reading as owned by no
//! identity; a store stamped by a newer build is refused rather than misread
//! (a build of format 1 would not know version-2 session records).
//!
//! Runs inside the recovery transaction, so a crash half-way leaves the old
//! store untouched and the migration simply runs again.

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{
    decode, decode_legacy, encode, Tables, Versioned, FORMAT_KEY, FORMAT_VERSION, META,
};
use super::{QueuedEntry, SessionRecord, StoreError, SubscriptionRecord};
use crate::mqtt::message::Message;

/// A session record of formats 0 and 1 (record version 1): no identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecordV1 {
    pub protocol: u8,
    pub expiry_secs: u32,
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<SubscriptionRecord>,
}

/// A queued entry of formats 0 to 2 (record version 1): no cluster position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueuedEntryV1 {
    pub message: Message,
    pub subscription_ids: Vec<u32>,
    pub state: super::EntryState,
}

impl From<QueuedEntryV1> for QueuedEntry {
    fn from(e: QueuedEntryV1) -> QueuedEntry {
        QueuedEntry {
            message: e.message,
            subscription_ids: e.subscription_ids,
            state: e.state,
            origin: None,
        }
    }
}

impl From<SessionRecordV1> for SessionRecord {
    fn from(r: SessionRecordV1) -> SessionRecord {
        SessionRecord {
            protocol: r.protocol,
            expiry_secs: r.expiry_secs,
            disconnected_at_ms: r.disconnected_at_ms,
            subscriptions: r.subscriptions,
            identity: None,
        }
    }
}

/// Checks the store's format, migrates a format-0 store and stamps it.
/// Returns the format the store had when opened.
pub(super) fn check_and_migrate(
    txn: &WriteTransaction,
    tables: &mut Tables<'_>,
) -> Result<u32, StoreError> {
    let mut meta = txn.open_table(META)?;
    let stored = meta.get(FORMAT_KEY)?.map(|v| v.value());
    let found = match stored {
        Some(v) if v > FORMAT_VERSION => {
            return Err(StoreError::NewerFormat {
                found: v,
                supported: FORMAT_VERSION,
            });
        }
        Some(v) => v,
        None if is_empty(tables)? => FORMAT_VERSION,
        None => 0,
    };
    if found < FORMAT_VERSION {
        // Format 2 -> 3 rewrites nothing: version-1 queue entries read as
        // having no cluster position.
        let n = match found {
            0 => migrate_v0(tables)?,
            1 => migrate_sessions_v1(tables)?,
            _ => 0,
        };
        tracing::info!(
            records = n,
            from = found,
            to = FORMAT_VERSION,
            "store migrated to the current format"
        );
    }
    meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
    Ok(found)
}

fn is_empty(t: &Tables<'_>) -> Result<bool, StoreError> {
    Ok(t.sessions.len()? == 0 && t.queue.len()? == 0 && t.retained.len()? == 0)
}

/// Rewrites every format-0 record with a version byte; a record that does
/// not decode as format 0 is quarantined. Returns the records rewritten.
fn migrate_v0(t: &mut Tables<'_>) -> Result<u64, StoreError> {
    let mut n = 0;
    for (key, bytes) in rows(&t.sessions)? {
        let record = decode_legacy::<SessionRecordV1>(&bytes).map(SessionRecord::from);
        match record.and_then(|r| encode(&r)) {
            Ok(v) => t.sessions.insert(key.as_str(), v.as_slice()).map(drop)?,
            Err(e) => {
                t.quarantine("sessions", &key, 0, &bytes, &e)?;
                t.sessions.remove(key.as_str())?;
            }
        }
        n += 1;
    }
    let queued: Vec<((String, u64), Vec<u8>)> = t
        .queue
        .iter()?
        .map(|row| {
            let (k, v) = row?;
            let (client, seq) = k.value();
            Ok(((client.to_owned(), seq), v.value().to_vec()))
        })
        .collect::<Result<_, StoreError>>()?;
    for ((client, seq), bytes) in queued {
        match decode_legacy::<QueuedEntryV1>(&bytes).and_then(|e| encode(&QueuedEntry::from(e))) {
            Ok(v) => t
                .queue
                .insert((client.as_str(), seq), v.as_slice())
                .map(drop)?,
            Err(e) => t.quarantine_entry(&client, seq, &bytes, &e)?,
        }
        n += 1;
    }
    for (key, bytes) in rows(&t.retained)? {
        match reencode::<Message>(&bytes) {
            Ok(v) => t.retained.insert(key.as_str(), v.as_slice()).map(drop)?,
            Err(e) => {
                t.quarantine("retained", &key, 0, &bytes, &e)?;
                t.retained.remove(key.as_str())?;
            }
        }
        n += 1;
    }
    Ok(n)
}

/// Rewrites every format-1 session record (version 1) as version 2; one
/// that does not decode is quarantined. Queue and retained records are
/// unchanged. Returns the records rewritten.
fn migrate_sessions_v1(t: &mut Tables<'_>) -> Result<u64, StoreError> {
    let mut n = 0;
    for (key, bytes) in rows(&t.sessions)? {
        match decode::<SessionRecord>(&bytes).and_then(|r| encode(&r)) {
            Ok(v) => t.sessions.insert(key.as_str(), v.as_slice()).map(drop)?,
            Err(e) => {
                t.quarantine("sessions", &key, 0, &bytes, &e)?;
                t.sessions.remove(key.as_str())?;
            }
        }
        n += 1;
    }
    Ok(n)
}

fn reencode<T: Versioned>(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    encode(&decode_legacy::<T>(bytes)?)
}

/// Every (key, value) of a string-keyed table, copied out so the table can
/// be written while walking the copy.
fn rows(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    table
        .iter()?
        .map(|row| {
            let (k, v) = row?;
            Ok((k.value().to_owned(), v.value().to_vec()))
        })
        .collect()
}
