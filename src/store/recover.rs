//! Start-up read: session records, queue indexes, incoming QoS 2 ids and
//! retained messages. Queued bodies are never read here, so start-up cost
//! grows with the number of entries, not with their payload bytes.
//!
//! A record that cannot be decoded is moved to the quarantine table (logged
//! with its key and counted) instead of failing start-up: one bad record
//! must not keep every other client from reconnecting, and it is kept for an
//! operator rather than skipped.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, WriteTransaction};

use super::tables::{decode, state_from_u8, Tables};
use super::{IndexEntry, Recovered, RecoveredSession, StoreError};

/// Reads what start-up needs and deletes orphaned queue / QoS 2 rows (rows of a
/// client with no session record at all). Runs in `txn`; the caller commits.
pub(super) fn recover(txn: &WriteTransaction) -> Result<Recovered, StoreError> {
    let mut tables = Tables::open(txn)?;
    super::migrate::check_and_migrate(txn, &mut tables)?;
    let mut sessions = read_sessions(&mut tables)?;
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
        } else {
            orphans.insert(client_id.to_owned());
        }
    }
    for row in tables.qos2.iter()? {
        let (key, _) = row?;
        let (client_id, pkid) = key.value();
        if let Some(session) = sessions.get_mut(client_id) {
            session.incoming_qos2.push(pkid);
        } else {
            orphans.insert(client_id.to_owned());
        }
    }

    if !orphans.is_empty() {
        for client_id in &orphans {
            tables.purge_client_rows(client_id)?;
        }
        tracing::warn!(
            clients = orphans.len(),
            "deleted queue rows of clients without a session record"
        );
    }

    let retained = read_retained(&mut tables)?;
    let mut cluster_positions = Vec::new();
    for row in tables.positions.iter()? {
        let (p, o) = row?;
        cluster_positions.push((p.value(), o.value()));
    }
    Ok(Recovered {
        sessions: sessions.into_values().collect(),
        retained,
        quarantined: tables.quarantined,
        cluster_positions,
    })
}

/// Decodes every session record. An undecodable one is quarantined with
/// its queued bodies (which would otherwise be purged as orphans, or
/// overwritten by a new session of that client).
fn read_sessions(
    tables: &mut Tables<'_>,
) -> Result<BTreeMap<String, RecoveredSession>, StoreError> {
    let mut sessions = BTreeMap::new();
    let mut corrupt = Vec::new();
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
            Err(e) => corrupt.push((client_id.to_owned(), value.value().to_vec(), e)),
        }
    }
    for (client_id, bytes, e) in corrupt {
        tables.quarantine("sessions", &client_id, 0, &bytes, &e)?;
        tables.sessions.remove(client_id.as_str())?;
        let bodies: Vec<(u64, Vec<u8>)> = tables
            .queue
            .range((client_id.as_str(), 0u64)..=(client_id.as_str(), u64::MAX))?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().1, v.value().to_vec()))
            })
            .collect::<Result<_, StoreError>>()?;
        for (seq, body) in bodies {
            tables
                .quarantine
                .insert(("queue", client_id.as_str(), seq), body.as_slice())?;
            tables.quarantined += 1;
        }
        tables.purge_client_rows(&client_id)?;
    }
    Ok(sessions)
}

fn read_retained(
    tables: &mut Tables<'_>,
) -> Result<Vec<crate::mqtt::message::Message>, StoreError> {
    let mut retained = Vec::new();
    let mut corrupt = Vec::new();
    for row in tables.retained.iter()? {
        let (key, value) = row?;
        match decode(value.value()) {
            Ok(message) => retained.push(message),
            Err(e) => corrupt.push((key.value().to_owned(), value.value().to_vec(), e)),
        }
    }
    for (topic, bytes, e) in corrupt {
        tables.quarantine("retained", &topic, 0, &bytes, &e)?;
        tables.retained.remove(topic.as_str())?;
    }
    Ok(retained)
}
