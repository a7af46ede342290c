//! Durability across restarts of the real `mqbridge` binary, run as a child
//! process on a fixed port and a temporary store directory.
//!
//! The pattern of most tests: a persistent 3.1.1 subscriber (CleanSession=0)
//! subscribes and goes offline, a publisher sends numbered messages ("0",
//! "1", ...) and waits for the acknowledgements, the gateway is stopped
//! (SIGTERM, SIGINT) or killed (SIGKILL) and started again on the same store,
//! and the subscriber comes back: every acknowledged message must arrive, in
//! publish order (and exactly once for QoS 2).
//!
//! Every child writes its log (`RUST_LOG=mqbridge=debug`, stdout and
//! stderr) to a file in the test's directory; failures print its end.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

use crate::free_port;

/// How long a graceful stop may take (the child runs with a 5 s grace period).
const STOP_WITHIN: Duration = Duration::from_secs(10);
const GRACE_SECS: &str = "5";

/// One gateway "installation": a port and a store directory that survive
/// restarts, and the currently running child process, if any.
struct Node {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// Number of times the binary was started (names the log files).
    runs: usize,
    extra_env: Vec<(String, String)>,
}

impl Node {
    /// Starts the binary on a fresh port and store.
    async fn start() -> Node {
        Node::start_with(&[]).await
    }

    /// As [`Node::start`] with extra `MQBRIDGE__*` variables for every run.
    async fn start_with(env: &[(&str, &str)]) -> Node {
        let mut n = Node {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            child: None,
            runs: 0,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        n.run().await;
        n
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("mqbridge-{run}.log"))
    }

    /// The logs of every run so far, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for run in 1..=self.runs {
            let text = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
            s.push_str(&format!("----- run {run} -----\n{text}"));
        }
        s
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway is running").id()
    }

    /// Starts the binary (again) on the same store and waits until it is
    /// listening. The port stays the same unless something else took it
    /// while the gateway was down (other tests bind ephemeral ports too):
    /// then the gateway fails to bind and is started on a new port.
    async fn run(&mut self) {
        for _ in 0..5 {
            if self.try_run().await {
                return;
            }
            eprintln!("port {} was taken meanwhile; using another", self.port);
            self.port = free_port();
        }
        panic!("could not bind a port in 5 attempts\n{}", self.logs());
    }

    /// One start attempt; `false` if the listener port could not be bound.
    async fn try_run(&mut self) -> bool {
        assert!(self.child.is_none(), "gateway already running");
        self.runs += 1;
        let log_path = self.log_path(self.runs);
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = crate::mqbridge_command();
        // Relative default paths (the file backend's ./data/uplink) stay in the test directory.
        cmd.current_dir(self.dir.path());
        cmd.env("RUST_LOG", "mqbridge=debug")
            .env("NO_COLOR", "1")
            .env("MQBRIDGE__MQTT__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("MQBRIDGE__STORE__PATH", self.dir.path().join("store"))
            .env("MQBRIDGE__ADMIN__LISTEN", "")
            .env("MQBRIDGE__SERVER__SHUTDOWN_GRACE_SECS", GRACE_SECS)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // The log goes to stdout, errors to stderr: keep both, in order.
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn mqbridge"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                if log.contains("binding MQTT listener") {
                    return false;
                }
                panic!("mqbridge exited at start-up: {status}\n{}", self.logs());
            }
            // The log line (after the bind) tells our gateway from any other
            // process that might answer on the port.
            if log.contains("mqbridge started")
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                return true;
            }
            if Instant::now() > deadline {
                panic!("mqbridge did not listen within 20 s\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends `signal` (e.g. "TERM") with the `kill` utility.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Waits for the child to exit, at most `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                panic!(
                    "mqbridge did not exit within {limit:?} of the signal\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop with `signal` ("TERM" or "INT"): must exit with status 0,
    /// in bounded time, without running out of its grace period.
    async fn stop(&mut self, signal: &str) {
        self.signal(signal);
        let (status, took) = self.wait_exit(STOP_WITHIN).await;
        let logs = self.logs();
        assert!(
            status.success(),
            "SIG{signal}: expected exit status 0, got {status}\n{logs}"
        );
        let last = std::fs::read_to_string(self.log_path(self.runs)).unwrap_or_default();
        assert!(
            last.contains("mqbridge stopped"),
            "SIG{signal}: no orderly shutdown in the log\n{logs}"
        );
        assert!(
            !last.contains("grace period exceeded"),
            "SIG{signal}: shutdown ran out of its grace period ({took:?})\n{logs}"
        );
    }

    /// SIGKILL: no chance to flush anything.
    fn crash(&mut self) {
        let mut child = self.child.take().expect("gateway is running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap killed child");
    }

    fn opts(&self, id: &str, clean: bool) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", self.port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show the gateway's side (the end of each run's log).
            for run in 1..=self.runs {
                let text = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(300)..];
                eprintln!("----- mqbridge run {run} (last {} lines) -----", tail.len());
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls until CONNACK; returns its session-present flag.
async fn connack(ev: &mut EventLoop) -> bool {
    crate::common::within(10, async {
        loop {
            match ev.poll().await.expect("connect") {
                Event::Incoming(Packet::ConnAck(a)) => {
                    assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
                    return a.session_present;
                }
                _ => continue,
            }
        }
    })
    .await
}

/// Connects a client; returns it with its event loop and session-present flag.
async fn connect(node: &Node, id: &str, clean: bool) -> (AsyncClient, EventLoop, bool) {
    let (c, mut ev) = AsyncClient::new(node.opts(id, clean), 64);
    let present = connack(&mut ev).await;
    (c, ev, present)
}

/// Subscribes and waits for a successful SUBACK.
async fn subscribe(c: &AsyncClient, ev: &mut EventLoop, filter: &str, qos: QoS) {
    c.subscribe(filter, qos).await.unwrap();
    crate::common::within(10, async {
        loop {
            if let Event::Incoming(Packet::SubAck(a)) = ev.poll().await.expect("subscribe") {
                assert_eq!(
                    a.return_codes,
                    vec![rumqttc::SubscribeReasonCode::Success(qos)]
                );
                return;
            }
        }
    })
    .await
}

/// Sends DISCONNECT and polls until the gateway has closed the connection.
async fn disconnect(c: AsyncClient, mut ev: EventLoop) {
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
}

/// A persistent subscriber to `topic` that goes offline again.
async fn persistent_subscriber(node: &Node, id: &str, topic: &str, qos: QoS) {
    let (c, mut ev, _) = connect(node, id, false).await;
    subscribe(&c, &mut ev, topic, qos).await;
    disconnect(c, ev).await;
}

/// Publishes `"0".."n-1"` to `topic` and waits for every PUBACK (QoS 1) or
/// PUBCOMP (QoS 2). Returns the still connected publisher.
async fn publish_numbered(
    node: &Node,
    id: &str,
    topic: &str,
    qos: QoS,
    n: u32,
) -> (AsyncClient, EventLoop) {
    let (c, mut ev, _) = connect(node, id, true).await;
    let sender = c.clone();
    let topic = topic.to_string();
    let publishing = tokio::spawn(async move {
        for i in 0..n {
            sender
                .publish(topic.clone(), qos, false, i.to_string())
                .await
                .unwrap();
        }
    });
    let mut acks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acks < n {
        let Ok(polled) = tokio::time::timeout_at(deadline, ev.poll()).await else {
            panic!("only {acks} of {n} acks within 60 s\n{}", node.logs());
        };
        match polled.expect("publisher connection") {
            Event::Incoming(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => acks += 1,
            Event::Incoming(Packet::PubComp(_)) if qos == QoS::ExactlyOnce => acks += 1,
            _ => {}
        }
    }
    publishing.await.unwrap();
    (c, ev)
}

/// What a subscriber received: payload numbers in arrival order.
async fn receive_until(
    node: &Node,
    ev: &mut EventLoop,
    topic: &str,
    done: impl Fn(&[u32]) -> bool,
) -> Vec<u32> {
    receive_until_quiet(node, ev, topic, done, Duration::from_millis(1500)).await
}

/// [`receive_until`] with the listening time after `done` given.
async fn receive_until_quiet(
    node: &Node,
    ev: &mut EventLoop,
    topic: &str,
    done: impl Fn(&[u32]) -> bool,
    quiet: Duration,
) -> Vec<u32> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // After `done`, keep listening a little to catch duplicates and extras.
    let mut quiet_until: Option<tokio::time::Instant> = None;
    loop {
        let until = quiet_until.unwrap_or(deadline);
        let polled = match tokio::time::timeout_at(until, ev.poll()).await {
            Ok(p) => p,
            Err(_) if quiet_until.is_some() => return got,
            Err(_) => panic!(
                "subscriber incomplete after 60 s; got {} messages: {:?}\n{}",
                got.len(),
                summarize(&got),
                node.logs()
            ),
        };
        if let Event::Incoming(Packet::Publish(p)) = polled.expect("subscriber connection") {
            assert_eq!(p.topic, topic);
            let n: u32 = std::str::from_utf8(&p.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected payload {:?}", p.payload));
            got.push(n);
        }
        if quiet_until.is_none() && done(&got) {
            quiet_until = Some(tokio::time::Instant::now() + quiet);
        }
    }
}

/// Compact description of a received sequence for failure messages.
fn summarize(got: &[u32]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < got.len() {
        let start = got[i];
        let mut j = i;
        while j + 1 < got.len() && got[j + 1] == got[j] + 1 {
            j += 1;
        }
        runs.push(if i == j {
            start.to_string()
        } else {
            format!("{start}..={}", got[j])
        });
        i = j + 1;
    }
    runs.join(", ")
}

/// Checks a received sequence against the set that must arrive.
///
/// * every number in `required` is there;
/// * first arrivals are in increasing (publish) order;
/// * with `exactly_once`, nothing arrives twice.
fn check_received(got: &[u32], required: &HashSet<u32>, exactly_once: bool) {
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    let mut dups = Vec::new();
    for &n in got {
        if seen.insert(n) {
            firsts.push(n);
        } else {
            dups.push(n);
        }
    }
    let mut missing: Vec<u32> = required.difference(&seen).copied().collect();
    missing.sort_unstable();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost: {}; received: {}",
        missing.len(),
        summarize(&missing),
        summarize(got)
    );
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "order not kept; received: {}",
        summarize(got)
    );
    if exactly_once {
        assert!(
            dups.is_empty(),
            "QoS 2 duplicates: {}; received: {}",
            summarize(&dups),
            summarize(got)
        );
    } else if !dups.is_empty() {
        eprintln!("note: QoS 1 duplicates (allowed): {}", summarize(&dups));
    }
}

/// How the gateway goes down between publishing and reconnecting.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Int,
    Kill,
}

async fn bring_down(node: &mut Node, how: Stop) {
    match how {
        Stop::Term => node.stop("TERM").await,
        Stop::Int => node.stop("INT").await,
        Stop::Kill => node.crash(),
    }
}

/// The offline-queue scenario shared by the graceful and crash tests.
async fn queued_messages_survive(qos: QoS, how: Stop) {
    const N: u32 = 200;
    let mut node = Node::start().await;
    persistent_subscriber(&node, "sub-1", "q/t", qos).await;
    let (publisher, pub_ev) = publish_numbered(&node, "pub-1", "q/t", qos, N).await;
    // Right after the last acknowledgement, with the publisher still connected.
    bring_down(&mut node, how).await;
    drop((publisher, pub_ev));
    node.run().await;

    let (c, mut ev, present) = connect(&node, "sub-1", false).await;
    assert!(
        present,
        "session not present after {how:?}\n{}",
        node.logs()
    );
    let got = receive_until(&node, &mut ev, "q/t", |g| {
        g.iter().copied().collect::<HashSet<_>>().len() >= N as usize
    })
    .await;
    check_received(&got, &(0..N).collect(), qos == QoS::ExactlyOnce);
    disconnect(c, ev).await;
    node.stop("TERM").await;
}

#[tokio::test]
async fn graceful_restart_delivers_queued_qos1() {
    queued_messages_survive(QoS::AtLeastOnce, Stop::Term).await;
}

#[tokio::test]
async fn graceful_restart_delivers_queued_qos2() {
    queued_messages_survive(QoS::ExactlyOnce, Stop::Term).await;
}

#[tokio::test]
async fn crash_after_acks_keeps_queued_qos1() {
    queued_messages_survive(QoS::AtLeastOnce, Stop::Kill).await;
}

#[tokio::test]
async fn crash_after_acks_keeps_queued_qos2() {
    queued_messages_survive(QoS::ExactlyOnce, Stop::Kill).await;
}

#[tokio::test]
async fn sigint_restart_delivers_queued_qos1() {
    queued_messages_survive(QoS::AtLeastOnce, Stop::Int).await;
}

/// SIGKILL while a publisher is streaming: whatever was acknowledged before
/// the kill (PUBACK for QoS 1, PUBREC for QoS 2, which hands ownership to the
/// server) is delivered after the restart.
async fn crash_mid_stream(qos: QoS) {
    const TOTAL: u32 = 5000;
    const KILL_AFTER: usize = 300;
    let mut node = Node::start_with(&[("MQBRIDGE__SESSION__MAX_QUEUED_MESSAGES", "100000")]).await;
    persistent_subscriber(&node, "sub-2", "s/t", qos).await;

    let (c, mut ev, _) = connect(&node, "pub-2", true).await;
    let sender = c.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..TOTAL {
            if sender
                .publish("s/t", qos, false, i.to_string())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    // Packet ids are reused, but not while outstanding: map each outstanding
    // id to the message it was sent with, in send order.
    let mut next_index = 0u32;
    let mut outstanding: HashMap<u16, u32> = HashMap::new();
    let mut acked: HashSet<u32> = HashSet::new();
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let Ok(polled) = tokio::time::timeout_at(deadline, ev.poll()).await else {
            panic!("publisher stalled\n{}", node.logs());
        };
        let event = match polled {
            Ok(e) => e,
            Err(e) => {
                assert!(killed, "publisher failed before the kill: {e:?}");
                break;
            }
        };
        let ack = match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                assert!(outstanding.insert(pkid, next_index).is_none());
                next_index += 1;
                None
            }
            Event::Incoming(Packet::PubAck(a)) if qos == QoS::AtLeastOnce => Some(a.pkid),
            Event::Incoming(Packet::PubRec(a)) if qos == QoS::ExactlyOnce => Some(a.pkid),
            _ => None,
        };
        if let Some(pkid) = ack {
            let idx = outstanding
                .remove(&pkid)
                .expect("ack for a known packet id");
            acked.insert(idx);
        }
        // Kill with messages on the wire (sent, not yet acknowledged).
        if !killed && acked.len() >= KILL_AFTER && !outstanding.is_empty() {
            node.crash();
            killed = true;
            // Acks already in our socket buffer are still read below: they were
            // sent by the gateway, so they count too.
        }
    }
    publishing.abort();
    drop(c);
    eprintln!(
        "sent {next_index}, acknowledged {} before the kill",
        acked.len()
    );

    node.run().await;
    let (c, mut ev, present) = connect(&node, "sub-2", false).await;
    assert!(present, "session not present after crash\n{}", node.logs());
    let got = receive_until(&node, &mut ev, "s/t", |g| {
        let seen: HashSet<u32> = g.iter().copied().collect();
        acked.is_subset(&seen)
    })
    .await;
    check_received(&got, &acked, qos == QoS::ExactlyOnce);
    disconnect(c, ev).await;
    node.stop("TERM").await;
}

#[tokio::test]
async fn crash_mid_stream_keeps_acked_qos1() {
    crash_mid_stream(QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn crash_mid_stream_keeps_acked_qos2() {
    crash_mid_stream(QoS::ExactlyOnce).await;
}

/// The subscription itself (not only queued messages) is durable: messages
/// published after the restart, while the subscriber is still offline, reach it.
async fn subscription_survives(how: Stop) {
    let mut node = Node::start().await;
    persistent_subscriber(&node, "sub-3", "keep/+", QoS::AtLeastOnce).await;
    bring_down(&mut node, how).await;
    node.run().await;

    let (publisher, pub_ev) =
        publish_numbered(&node, "pub-3", "keep/x", QoS::AtLeastOnce, 20).await;
    disconnect(publisher, pub_ev).await;
    let (c, mut ev, present) = connect(&node, "sub-3", false).await;
    assert!(
        present,
        "session not present after {how:?}\n{}",
        node.logs()
    );
    let got = receive_until(&node, &mut ev, "keep/x", |g| g.len() >= 20).await;
    check_received(&got, &(0..20).collect(), false);
    disconnect(c, ev).await;
    node.stop("TERM").await;
}

#[tokio::test]
async fn subscription_survives_graceful_restart() {
    subscription_survives(Stop::Term).await;
}

#[tokio::test]
async fn subscription_survives_crash() {
    subscription_survives(Stop::Kill).await;
}

/// Publishes one retained QoS 1 message and waits for its PUBACK.
async fn publish_retained(node: &Node, id: &str, topic: &str, payload: &str) {
    let (c, mut ev, _) = connect(node, id, true).await;
    c.publish(topic, QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
    crate::common::within(10, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.expect("publisher") {
                return;
            }
        }
    })
    .await;
    disconnect(c, ev).await;
}

/// Retained messages (and the clearing of one) persist across a restart.
async fn retained_survives(how: Stop) {
    let mut node = Node::start().await;
    publish_retained(&node, "pub-4", "r/a", "old").await;
    publish_retained(&node, "pub-4", "r/a", "kept").await;
    publish_retained(&node, "pub-4", "r/b", "gone").await;
    publish_retained(&node, "pub-4", "r/b", "").await;
    bring_down(&mut node, how).await;
    node.run().await;

    let (c, mut ev, _) = connect(&node, "sub-4", true).await;
    c.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = ev.poll().await.expect("subscriber") {
                got.push((p.topic.clone(), p.payload.clone(), p.retain));
            }
        }
    })
    .await;
    assert_eq!(
        got,
        vec![("r/a".to_string(), bytes::Bytes::from("kept"), true)],
        "retained messages after {how:?}\n{}",
        node.logs()
    );
    disconnect(c, ev).await;
    node.stop("TERM").await;
}

#[tokio::test]
async fn retained_survives_graceful_restart() {
    retained_survives(Stop::Term).await;
}

#[tokio::test]
async fn retained_survives_crash() {
    retained_survives(Stop::Kill).await;
}

/// SIGINT and SIGTERM stop the gateway with exit status 0 while a client is
/// connected; the client sees its connection end; the store opens again.
async fn signal_with_client_connected(signal: &str) {
    let mut node = Node::start().await;
    let (c, mut ev, _) = connect(&node, "idle", false).await;
    subscribe(&c, &mut ev, "i/t", QoS::AtLeastOnce).await;
    node.stop(signal).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if ev.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "client connection still open after exit");
    drop(c);
    node.run().await;
    let (c, ev, present) = connect(&node, "idle", false).await;
    assert!(present, "session lost across SIG{signal}\n{}", node.logs());
    disconnect(c, ev).await;
    node.stop(signal).await;
}

#[tokio::test]
async fn sigint_exits_cleanly() {
    signal_with_client_connected("INT").await;
}

#[tokio::test]
async fn sigterm_exits_cleanly_with_client_connected() {
    signal_with_client_connected("TERM").await;
}

/// Messages delivered to an online subscriber that never acknowledged them
/// (manual acks, never given) are delivered again after the restart.
async fn unacked_deliveries_survive(how: Stop) {
    const N: u32 = 20;
    let mut node = Node::start().await;
    let mut o = node.opts("sub-5", false);
    o.set_manual_acks(true);
    let (c, mut ev) = AsyncClient::new(o, 64);
    connack(&mut ev).await;
    subscribe(&c, &mut ev, "u/t", QoS::AtLeastOnce).await;
    let (publisher, pub_ev) = publish_numbered(&node, "pub-5", "u/t", QoS::AtLeastOnce, N).await;
    let first = receive_until(&node, &mut ev, "u/t", |g| g.len() >= N as usize).await;
    check_received(&first, &(0..N).collect(), true);
    bring_down(&mut node, how).await;
    drop((publisher, pub_ev, c, ev));
    node.run().await;

    let (c, mut ev, present) = connect(&node, "sub-5", false).await;
    assert!(
        present,
        "session not present after {how:?}\n{}",
        node.logs()
    );
    let again = receive_until(&node, &mut ev, "u/t", |g| {
        g.iter().copied().collect::<HashSet<_>>().len() >= N as usize
    })
    .await;
    check_received(&again, &(0..N).collect(), false);
    disconnect(c, ev).await;
    node.stop("TERM").await;
}

#[tokio::test]
async fn unacked_deliveries_survive_graceful_restart() {
    unacked_deliveries_survive(Stop::Term).await;
}

#[tokio::test]
async fn unacked_deliveries_survive_crash() {
    unacked_deliveries_survive(Stop::Kill).await;
}

/// Recovery is repeatable: killed again right after a restart (before any
/// client came back), the store still holds the queue.
#[tokio::test]
async fn repeated_crashes_keep_queue() {
    const N: u32 = 50;
    let mut node = Node::start().await;
    persistent_subscriber(&node, "sub-6", "c/t", QoS::ExactlyOnce).await;
    let (publisher, pub_ev) = publish_numbered(&node, "pub-6", "c/t", QoS::ExactlyOnce, N).await;
    node.crash();
    drop((publisher, pub_ev));
    for _ in 0..3 {
        node.run().await;
        node.crash();
    }
    node.run().await;
    let (c, mut ev, present) = connect(&node, "sub-6", false).await;
    assert!(present, "session lost\n{}", node.logs());
    let got = receive_until(&node, &mut ev, "c/t", |g| g.len() >= N as usize).await;
    check_received(&got, &(0..N).collect(), true);
    disconnect(c, ev).await;
    node.stop("TERM").await;
}

/// Many persistent sessions, each with its own queue, all come back after a crash.
#[tokio::test]
async fn many_sessions_survive_crash() {
    const SESSIONS: u32 = 40;
    const PER: u32 = 10;
    let mut node = Node::start().await;
    for s in 0..SESSIONS {
        persistent_subscriber(
            &node,
            &format!("many-{s}"),
            &format!("m/{s}"),
            QoS::AtLeastOnce,
        )
        .await;
    }
    let (c, mut ev, _) = connect(&node, "pub-7", true).await;
    let sender = c.clone();
    tokio::spawn(async move {
        for i in 0..PER {
            for s in 0..SESSIONS {
                sender
                    .publish(format!("m/{s}"), QoS::AtLeastOnce, false, i.to_string())
                    .await
                    .unwrap();
            }
        }
    });
    let mut acks = 0;
    crate::common::within(60, async {
        while acks < SESSIONS * PER {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.expect("publisher") {
                acks += 1;
            }
        }
    })
    .await;
    node.crash();
    drop((c, ev));
    node.run().await;
    for s in 0..SESSIONS {
        let (c, mut ev, present) = connect(&node, &format!("many-{s}"), false).await;
        assert!(present, "session many-{s} lost\n{}", node.logs());
        let topic = format!("m/{s}");
        let got = receive_until_quiet(
            &node,
            &mut ev,
            &topic,
            |g| g.len() >= PER as usize,
            Duration::from_millis(200),
        )
        .await;
        check_received(&got, &(0..PER).collect(), false);
        disconnect(c, ev).await;
    }
    node.stop("TERM").await;
}

/// Session expiry counts the time across a restart and fires at the deadline
/// (the backstop sweep is hourly here): with a 4 s expiry, a session is
/// present 2 s after its disconnect and gone at 5 s, a restart in between.
#[tokio::test]
async fn session_expiry_deadline_holds_across_a_restart() {
    let mut node = Node::start_with(&[
        ("MQBRIDGE__SESSION__V311_SESSION_EXPIRY_SECS", "4"),
        ("MQBRIDGE__SESSION__EXPIRY_CHECK_INTERVAL_SECS", "3600"),
    ])
    .await;
    persistent_subscriber(&node, "exp-early", "exp/+", QoS::AtLeastOnce).await;
    persistent_subscriber(&node, "exp-late", "exp/+", QoS::AtLeastOnce).await;
    let offline = std::time::Instant::now();
    node.stop("TERM").await;
    node.run().await;
    let until = |secs: f64| offline + Duration::from_secs_f64(secs);
    tokio::time::sleep_until(until(2.0).into()).await;
    let (c, ev, present) = connect(&node, "exp-early", false).await;
    assert!(
        present,
        "session gone 2 s into a 4 s expiry\n{}",
        node.logs()
    );
    disconnect(c, ev).await;
    tokio::time::sleep_until(until(5.0).into()).await;
    let (c, ev, present) = connect(&node, "exp-late", false).await;
    assert!(
        !present,
        "session present 5 s into a 4 s expiry\n{}",
        node.logs()
    );
    disconnect(c, ev).await;
    node.stop("TERM").await;
}
