//! [`SettleQueue`]: items handed to a backend (or to the processor) whose
//! outcomes are taken strictly in hand-off order. Only the oldest item's
//! future is ever awaited, so an item counts as settled only after every
//! item before it: the per-device order of confirms and the "commit only
//! what is settled, in order" rule of the sources both rest on this.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};

/// A FIFO of in-flight items; see the module documentation.
#[derive(Debug)]
pub struct SettleQueue<T> {
    items: VecDeque<T>,
}

impl<T> Default for SettleQueue<T> {
    fn default() -> Self {
        SettleQueue {
            items: VecDeque::new(),
        }
    }
}

impl<T> SettleQueue<T> {
    pub fn new() -> SettleQueue<T> {
        SettleQueue::default()
    }

    /// The outcome of the oldest item, through `outcome` (which picks the
    /// item's future); never resolves while the queue is empty.
    ///
    /// Cancel-safe (for use in `select!`): the item stays at the front until
    /// the caller pops it, and its future keeps its progress.
    pub async fn oldest<F>(&mut self, outcome: impl FnOnce(&mut T) -> &mut F) -> F::Output
    where
        F: Future + Unpin,
    {
        match self.items.front_mut() {
            Some(item) => outcome(item).await,
            None => std::future::pending().await,
        }
    }
}

/// The queue is a `VecDeque` for everything but awaiting: push at the back,
/// pop at the front, requeue at the front after a failure.
impl<T> Deref for SettleQueue<T> {
    type Target = VecDeque<T>;
    fn deref(&self) -> &VecDeque<T> {
        &self.items
    }
}

impl<T> DerefMut for SettleQueue<T> {
    fn deref_mut(&mut self) -> &mut VecDeque<T> {
        &mut self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn outcomes_are_taken_in_hand_off_order() {
        let mut q = SettleQueue::new();
        let (tx1, rx1) = oneshot::channel::<u32>();
        let (tx2, rx2) = oneshot::channel::<u32>();
        q.push_back((1, rx1));
        q.push_back((2, rx2));
        // The younger item answers first: the queue still waits for the oldest.
        tx2.send(20).expect("receiver alive");
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), q.oldest(|(_, rx)| rx))
                .await;
        assert!(waited.is_err(), "resolved before the oldest answered");
        tx1.send(10).expect("receiver alive");
        assert_eq!(q.oldest(|(_, rx)| rx).await, Ok(10));
        assert_eq!(q.pop_front().map(|(n, _)| n), Some(1));
        assert_eq!(q.oldest(|(_, rx)| rx).await, Ok(20));
        assert_eq!(q.pop_front().map(|(n, _)| n), Some(2));
        assert!(q.is_empty());
    }
}
