//! Which offsets may be committed: the next offset after the last settled
//! command of each partition this consumer owns.
//!
//! Shared (behind a mutex) between the source task, which records settled
//! commands, and the consumer context, which commits before partitions are
//! revoked. Commands are settled in consumption order, so a recorded offset
//! means every command consumed before it in its partition was settled too.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use rdkafka::{Offset, TopicPartitionList};

type Partition = (String, i32);

#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Partitions assigned to this consumer now. A command of a partition
    /// revoked while it was in flight is not recorded: its new owner
    /// consumes it again, and committing for a partition we no longer own
    /// could only move the group's position back.
    assigned: HashSet<Partition>,
    /// Next offset to consume, per partition: everything before is settled.
    done: HashMap<Partition, i64>,
    /// Something was recorded (or a commit failed) since the last commit.
    dirty: bool,
    /// Commands recorded since the last commit.
    since_commit: usize,
}

/// The ledger behind a mutex that a panic elsewhere does not make unusable
/// (its data stays consistent: every update is a single insert or remove).
#[derive(Debug, Default)]
pub(super) struct Shared(Mutex<Ledger>);

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ledger {
    pub(super) fn assign(&mut self, parts: impl IntoIterator<Item = Partition>) {
        self.assigned.extend(parts);
    }

    /// Forgets revoked partitions (call after committing what they had).
    pub(super) fn revoke(&mut self, parts: impl IntoIterator<Item = Partition>) {
        for p in parts {
            self.assigned.remove(&p);
            self.done.remove(&p);
        }
    }

    /// A command was stored or settled without delivery.
    pub(super) fn settled(&mut self, topic: &str, partition: i32, offset: i64) {
        let key = (topic.to_string(), partition);
        if !self.assigned.contains(&key) {
            return;
        }
        let next = offset.saturating_add(1);
        let entry = self.done.entry(key).or_insert(next);
        *entry = (*entry).max(next);
        self.dirty = true;
        self.since_commit += 1;
    }

    pub(super) fn since_commit(&self) -> usize {
        self.since_commit
    }

    /// The offsets to commit if anything changed since the last call.
    pub(super) fn take_changes(&mut self) -> Option<TopicPartitionList> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.since_commit = 0;
        self.all()
    }

    /// Every offset this consumer may commit (None if there is none).
    pub(super) fn all(&self) -> Option<TopicPartitionList> {
        if self.done.is_empty() {
            return None;
        }
        let mut tpl = TopicPartitionList::with_capacity(self.done.len());
        for ((topic, partition), next) in &self.done {
            // Cannot fail for a plain offset on a partition just added.
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        Some(tpl)
    }

    /// A commit failed: commit again at the next opportunity.
    pub(super) fn commit_failed(&mut self) {
        self.dirty = true;
    }

    #[cfg(test)]
    pub(super) fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.done.get(&(topic.to_string(), partition)).copied()
    }
}
