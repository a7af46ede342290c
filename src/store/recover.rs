//! Start-up read: session records, queue indexes, incoming QoS 2 ids and
//! retained messages. Queued bodies are never read here, so start-up cost
//! grows with the number of entries, not with their payload bytes.
//!
//! Corrupt values are logged and skipped instead of failing start-up: one bad
//! record must not keep every other client from reconnecting.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, WriteTransaction};

use super::tables::{decode, state_from_u8, Tables};
use super::{IndexEntry, Recovered, RecoveredSession, StoreError};

/// Reads what start-up needs and deletes orphaned queue / QoS 2 rows (rows of a
/// client with no session record at all). Runs in `txn`; the caller commits.
pub(super) fn recover(txn: &WriteTransaction) -> Result<Recovered, StoreError> {
    let mut tables = Tables::open(txn)?;
    let (mut sessions, corrupt) = read_sessions(&tables)?;
    let mut orphans = BTreeSet::new();

    for row in tables.index.iter()? {
        let (key, value) = row?;
        let (client_id, seq) = key.value();
        let (size, state_byte) = value.value();
        if let Some(session) = sessions.get_mut(client_id) {
            match state_from_u8(state_byte) {
                Some(state) => session.index.push(IndexEntry { seq, size, state }),
                None => tracing::warn!(
                    client_id,
                    seq,
                    state_byte,
                    "bad queue index state; entry skipped"
                ),
            }
        } else if !corrupt.contains(client_id) {
            orphans.insert(client_id.to_owned());
        }
    }
    for row in tables.qos2.iter()? {
        let (key, _) = row?;
        let (client_id, pkid) = key.value();
        if let Some(session) = sessions.get_mut(client_id) {
            session.incoming_qos2.push(pkid);
        } else if !corrupt.contains(client_id) {
            orphans.insert(client_id.to_owned());
        }
    }

    // Rows under a corrupt record are kept: deleting them would turn a decode
    // problem (e.g. a format change) into silent data loss.
    if !orphans.is_empty() {
        for client_id in &orphans {
            tables.purge_client_rows(client_id)?;
        }
        tracing::warn!(
            clients = orphans.len(),
            "deleted queue rows of clients without a session record"
        );
    }

    let retained = read_retained(&tables)?;
    Ok(Recovered {
        sessions: sessions.into_values().collect(),
        retained,
    })
}

/// Decodes every session record; returns the good ones by client id and the
/// ids whose record could not be decoded.
fn read_sessions(
    tables: &Tables<'_>,
) -> Result<(BTreeMap<String, RecoveredSession>, BTreeSet<String>), StoreError> {
    let mut sessions = BTreeMap::new();
    let mut corrupt = BTreeSet::new();
    for row in tables.sessions.iter()? {
        let (key, value) = row?;
        let client_id = key.value();
        match decode(value.value()) {
            Ok(record) => {
                let session = RecoveredSession {
                    client_id: client_id.to_owned(),
                    record,
                    index: Vec::new(),
                    incoming_qos2: Vec::new(),
                };
                sessions.insert(client_id.to_owned(), session);
            }
            Err(e) => {
                tracing::warn!(client_id, error = %e, "corrupt session record; session skipped");
                corrupt.insert(client_id.to_owned());
            }
        }
    }
    Ok((sessions, corrupt))
}

fn read_retained(tables: &Tables<'_>) -> Result<Vec<crate::mqtt::message::Message>, StoreError> {
    let mut retained = Vec::new();
    for row in tables.retained.iter()? {
        let (key, value) = row?;
        match decode(value.value()) {
            Ok(message) => retained.push(message),
            Err(e) => {
                tracing::warn!(topic = key.value(), error = %e, "corrupt retained message skipped")
            }
        }
    }
    Ok(retained)
}
