//! The driver's careful mode, with a backend that behaves like an AMQP
//! channel closed by one bad record: every record in flight on that
//! connection fails with `Suspect`.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use super::*;
use crate::bridge::contract::{BoxError, BoxFuture};
use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::Record;

#[derive(Default)]
struct State {
    /// Per connection: a bad record was sent on it.
    poisoned: Vec<bool>,
    /// Per connection: most records in flight at once.
    most_in_flight: Vec<usize>,
    in_flight: usize,
}

struct Poisonable {
    state: Arc<Mutex<State>>,
    /// Confirms wait while this is false.
    gate: watch::Receiver<bool>,
}

impl Sink for Poisonable {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        let mut st = self.state.lock().expect("state");
        st.poisoned.push(false);
        st.most_in_flight.push(0);
        st.in_flight = 0;
        Box::pin(async { Ok(()) })
    }

    fn send<'a>(&'a mut self, record: &'a Record) -> BoxFuture<'a, Result<Pending, BoxError>> {
        let conn = {
            let mut st = self.state.lock().expect("state");
            let conn = st.poisoned.len() - 1;
            st.poisoned[conn] |= record.payload.as_ref() == b"bad";
            st.in_flight += 1;
            st.most_in_flight[conn] = st.most_in_flight[conn].max(st.in_flight);
            conn
        };
        let (state, mut gate) = (self.state.clone(), self.gate.clone());
        let pending: Pending = Box::pin(async move {
            let _ = gate.wait_for(|open| *open).await;
            let mut st = state.lock().expect("state");
            st.in_flight = st.in_flight.saturating_sub(1);
            if st.poisoned[conn] {
                Delivery::Suspect("channel closed: 404".into())
            } else {
                Delivery::Confirmed
            }
        });
        Box::pin(async move { Ok(pending) })
    }
}

#[tokio::test(start_paused = true)]
async fn the_culprit_of_a_closed_connection_is_found_and_only_it_is_refused() {
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let state = Arc::new(Mutex::new(State::default()));
    let (open, gate) = watch::channel(false);
    let sink = Poisonable {
        state: state.clone(),
        gate,
    };
    let running = run_sink(
        "p",
        Box::new(sink),
        metrics.backend("p"),
        16,
        &TaskTracker::new(),
    );
    let payloads = ["0", "1", "2", "bad", "4", "5"];
    let mut answers = Vec::new();
    for p in payloads {
        let (confirm, answer) = oneshot::channel();
        let record = Record {
            route: "r".into(),
            counters: metrics.route("r"),
            client_id: "c".into(),
            target: "t".into(),
            key: None,
            payload: Bytes::from_static(p.as_bytes()),
            headers: Vec::new(),
            content_type: None,
        };
        let envelope = Envelope {
            record,
            confirm: Some(confirm),
        };
        running
            .handle
            .tx
            .send(envelope)
            .await
            .expect("driver alive");
        answers.push(answer);
    }
    // Everything is in flight on the first connection before it dies.
    let first = || state.lock().expect("state").most_in_flight.first().copied();
    while first() < Some(payloads.len()) {
        tokio::task::yield_now().await;
    }
    open.send_replace(true);
    for (p, answer) in payloads.iter().zip(answers) {
        // Virtual time: without careful mode the driver would retry forever.
        let got = tokio::time::timeout(Duration::from_secs(600), answer)
            .await
            .expect("answered in time")
            .expect("answered");
        if *p == "bad" {
            assert!(matches!(got, Err(SinkError::Rejected(_))), "{p}: {got:?}");
        } else {
            assert_eq!(got, Ok(()), "{p}");
        }
    }
    let st = state.lock().expect("state");
    // First: all six at once; then one at a time until the culprit was
    // refused (its connection closed), then one at a time for the rest.
    assert_eq!(st.most_in_flight, [6, 1, 1]);
    assert_eq!(st.poisoned, [true, true, false]);
}
