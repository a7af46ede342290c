//! Supervised tasks: everything the gateway spawns runs on one
//! [`TaskTracker`] and sees one [`CancellationToken`].
//!
//! Shutdown is then one question with an answer: cancel the token, close the
//! tracker, wait for it within the grace period, and name the tasks that are
//! still running ([`Tasks::shutdown`]). Each task is spawned under a static
//! name (low cardinality: "mqtt connection", not a client id) and counted
//! while it runs, so what did not finish is reported by name and count.
//!
//! Long-lived tasks ([`Tasks::supervise`], [`Tasks::watch`]) are also
//! watched: one that ends (returns or panics) before the token is cancelled
//! is a failure, reported on the channel returned by [`Tasks::new`]. The
//! gateway then stops and exits non-zero, so that a process supervisor
//! restarts it from the store, instead of running half-dead (for example
//! accepting clients with no router).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Failures kept until the gateway reads them. The first one is what stops
/// the gateway; when full, later ones are dropped (they are logged anyway).
const FAILURE_CHANNEL: usize = 16;

/// A long-lived task that ended before shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskFailure {
    /// The name it was spawned under.
    pub task: &'static str,
    /// Whether it panicked (otherwise it returned).
    pub panicked: bool,
}

/// Running tasks per name.
type Live = Arc<Mutex<BTreeMap<&'static str, usize>>>;

/// The gateway's task set: tracker, stop signal, running counts, failures.
/// Cheap to clone; every clone is the same set.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    live: Live,
    failed: mpsc::Sender<TaskFailure>,
}

/// Counts one running task under its name; uncounts it when dropped, which
/// also happens when the task panics or is aborted.
struct Running {
    live: Live,
    name: &'static str,
}

impl Running {
    fn new(live: &Live, name: &'static str) -> Running {
        *lock(live).entry(name).or_default() += 1;
        Running {
            live: live.clone(),
            name,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut live = lock(&self.live);
        if let Some(n) = live.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                live.remove(self.name);
            }
        }
    }
}

/// The counts stay meaningful after a panic elsewhere: a plain map of integers
/// has no invariant a panic could break.
fn lock(live: &Live) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, usize>> {
    live.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tasks {
    /// A new task set, and the receiver of its long-lived tasks' failures.
    pub fn new() -> (Tasks, mpsc::Receiver<TaskFailure>) {
        let (failed, failures) = mpsc::channel(FAILURE_CHANNEL);
        let tasks = Tasks {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            live: Live::default(),
            failed,
        };
        (tasks, failures)
    }

    /// The stop signal every task watches.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The tracker every task is spawned on, for code that spawns on it
    /// directly (prefer [`Tasks::spawn`], which also names the task).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Resolves once the stop signal is given.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.cancel.clone().cancelled_owned()
    }

    /// Spawns a tracked task, counted under `name` while it runs.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = Running::new(&self.live, name);
        self.tracker.spawn(async move {
            let out = fut.await;
            drop(running);
            out
        })
    }

    /// Spawns a long-lived task: tracked, and a failure if it ends before the
    /// stop signal.
    pub fn supervise<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.spawn(name, fut);
        self.watch(name, handle);
    }

    /// Watches a long-lived task spawned elsewhere (e.g. by a backend): it
    /// is waited for on shutdown under `name`, and is a failure if it ends
    /// before the stop signal.
    pub fn watch(&self, name: &'static str, handle: JoinHandle<()>) {
        let cancel = self.cancel.clone();
        let failed = self.failed.clone();
        // Counted as the task itself: the watcher ends exactly when it does.
        let running = Running::new(&self.live, name);
        self.tracker.spawn(async move {
            let result = handle.await;
            drop(running);
            if cancel.is_cancelled() {
                return;
            }
            let panicked = result.as_ref().is_err_and(|e| e.is_panic());
            tracing::error!(
                task = name,
                panicked,
                "a gateway task ended unexpectedly; stopping the gateway"
            );
            let _ = failed.try_send(TaskFailure {
                task: name,
                panicked,
            });
        });
    }

    /// Names and counts of the tasks running now.
    pub fn running(&self) -> BTreeMap<&'static str, usize> {
        lock(&self.live).clone()
    }

    /// Gives the stop signal, then waits up to `grace` for every task.
    /// Returns the tasks still running when the grace period ended (empty
    /// when everything finished).
    pub async fn shutdown(&self, grace: Duration) -> BTreeMap<&'static str, usize> {
        self.cancel.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => BTreeMap::new(),
            Err(_) => self.running(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_names_what_did_not_finish() {
        let (tasks, _failures) = Tasks::new();
        let stop = tasks.cancelled();
        tasks.spawn("polite", stop);
        tasks.spawn("stubborn", std::future::pending::<()>());
        tasks.spawn("stubborn", std::future::pending::<()>());
        let left = tasks.shutdown(Duration::from_secs(10)).await;
        assert_eq!(left, BTreeMap::from([("stubborn", 2)]));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_tasks_that_finish_within_the_grace() {
        let (tasks, _failures) = Tasks::new();
        let stop = tasks.cancelled();
        tasks.spawn("slow to stop", async move {
            stop.await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let started = tokio::time::Instant::now();
        let left = tasks.shutdown(Duration::from_secs(10)).await;
        assert!(left.is_empty(), "{left:?}");
        // Paused time: exactly the task's own 5 s passed, not the grace.
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(tasks.running().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_lived_task_that_ends_early_is_a_failure() {
        let (tasks, mut failures) = Tasks::new();
        tasks.supervise("returns", async {});
        tasks.supervise("panics", async { panic!("injected") });
        let mut seen = vec![failures.recv().await, failures.recv().await];
        seen.sort_by_key(|f| f.map(|f| f.task));
        assert_eq!(
            seen,
            vec![
                Some(TaskFailure {
                    task: "panics",
                    panicked: true
                }),
                Some(TaskFailure {
                    task: "returns",
                    panicked: false
                }),
            ]
        );
        assert!(tasks.running().is_empty(), "{:?}", tasks.running());
    }

    #[tokio::test(start_paused = true)]
    async fn ending_after_the_stop_signal_is_no_failure() {
        let (tasks, mut failures) = Tasks::new();
        let stop = tasks.cancelled();
        tasks.supervise("listener", stop);
        let left = tasks.shutdown(Duration::from_secs(1)).await;
        assert!(left.is_empty(), "{left:?}");
        drop(tasks);
        assert_eq!(failures.recv().await, None);
    }
}
