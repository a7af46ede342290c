//! Shared helpers for the integration tests: start the gateway in-process on
//! a free port with its own store directory, and build rumqttc clients.
// Each test binary uses part of these helpers.
#![allow(dead_code)]

pub mod amqp;
pub mod certs;
pub mod downlink;
pub mod kafka;
pub mod service;

use std::net::SocketAddr;
use std::time::Duration;

use mqbridge::app::Gateway;
use mqbridge::config::Config;

pub struct TestGateway {
    pub gw: Gateway,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Config for tests: ephemeral port, temporary store, no admin endpoint.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.mqtt.listen = "127.0.0.1:0".into();
    cfg.admin.listen = String::new();
    cfg.store.path = dir.to_path_buf();
    // The default file backend writes under the test's own directory.
    for b in &mut cfg.bridge.backends {
        if let mqbridge::config::BackendConfig::File(f) = b {
            f.path = dir.join("uplink");
        }
    }
    cfg.session.expiry_check_interval_secs = 1;
    cfg
}

pub async fn start() -> TestGateway {
    start_with(|_| {}).await
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    f(&mut cfg);
    let cfg = cfg.validate().expect("test config is valid");
    let gw = Gateway::start(cfg).await.expect("gateway starts");
    let addr = gw.mqtt_addr;
    TestGateway { gw, addr, dir }
}

/// A 3.1.1 client options value for this gateway.
pub fn opts_v4(addr: SocketAddr, id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

pub fn opts_v5(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_start(clean);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(e) = expiry {
        o.set_session_expiry_interval(Some(e));
    }
    o
}

/// Runs `fut` with a timeout so a broken behaviour fails instead of hanging.
pub async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("timed out")
}

// ---------------------------------------------------------------------------
// Helpers for the broker_* behaviour tests.
//
// A connected client is a rumqttc client whose event loop is polled by a
// background task. Incoming PUBLISHes go to one channel, every other event
// (and the error that ends the connection) to another, so a test can wait
// for an acknowledgement without losing messages. The task stops at the
// first error, so a closed connection is never silently re-established.
// ---------------------------------------------------------------------------

/// Installs a test-friendly tracing subscriber (honours RUST_LOG).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// How long a test listens to conclude that nothing (more) arrives.
pub const QUIET: Duration = Duration::from_millis(1000);

/// A topic of its own for one control message.
fn control_topic() -> String {
    format!("control/{:08x}", rand::random::<u32>())
}

/// The `SocketAddr` of a client's (host, port).
fn socket_addr((host, port): (String, u16)) -> SocketAddr {
    format!("{host}:{port}")
        .parse()
        .expect("test gateways listen on an IP address")
}

/// Waits up to `dur` for the next item of `rx`; `None` on timeout or close.
async fn recv_for<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, dur: Duration) -> Option<T> {
    tokio::time::timeout(dur, rx.recv()).await.ok().flatten()
}

/// MQTT 3.1.1 clients.
pub mod b4 {
    use std::time::Duration;

    use rumqttc::{
        AsyncClient, ConnAck, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
        SubAck,
    };
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
    use tokio::task::JoinHandle;

    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        pub publishes: UnboundedReceiver<Publish>,
        pub events: UnboundedReceiver<Result<Event, ConnectionError>>,
        /// The gateway's address (for control messages).
        addr: std::net::SocketAddr,
        task: JoinHandle<()>,
    }

    /// Connects and returns the CONNACK or the error that refused it.
    pub async fn try_connect(opts: MqttOptions) -> Result<Client, ConnectionError> {
        let addr = super::socket_addr(opts.broker_address());
        let (client, mut ev) = AsyncClient::new(opts, 100);
        let connack = loop {
            match super::within(10, ev.poll()).await? {
                Event::Incoming(Packet::ConnAck(c)) => break c,
                _ => continue,
            }
        };
        Ok(spawn(client, ev, connack, addr))
    }

    pub async fn connect(opts: MqttOptions) -> Client {
        try_connect(opts).await.expect("client connects")
    }

    /// Connects and polls only up to CONNACK: afterwards the client sends
    /// nothing (no PINGREQ) although its socket stays open.
    pub async fn connect_frozen(opts: MqttOptions) -> (AsyncClient, EventLoop, ConnAck) {
        let (client, mut ev) = AsyncClient::new(opts, 100);
        loop {
            if let Event::Incoming(Packet::ConnAck(c)) =
                super::within(10, ev.poll()).await.expect("client connects")
            {
                return (client, ev, c);
            }
        }
    }

    fn spawn(
        client: AsyncClient,
        mut ev: EventLoop,
        connack: ConnAck,
        addr: std::net::SocketAddr,
    ) -> Client {
        let (ptx, publishes) = unbounded_channel();
        let (etx, events) = unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ptx.send(p);
                    }
                    Ok(e) => {
                        let _ = etx.send(Ok(e));
                    }
                    Err(e) => {
                        let _ = etx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Client {
            client,
            connack,
            publishes,
            events,
            addr,
            task,
        }
    }

    impl Client {
        pub fn session_present(&self) -> bool {
            self.connack.session_present
        }

        /// Next non-publish event; panics if the connection ended.
        async fn next_event(&mut self) -> Event {
            match self.events.recv().await {
                Some(Ok(e)) => e,
                Some(Err(e)) => panic!("connection ended: {e:?}"),
                None => panic!("connection ended"),
            }
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("client connection open");
            super::within(10, async {
                loop {
                    if let Event::Incoming(Packet::SubAck(s)) = self.next_event().await {
                        return s;
                    }
                }
            })
            .await
        }

        /// Publishes and, for QoS 1/2, waits for the PUBACK/PUBCOMP.
        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
            self.client
                .publish(topic, qos, retain, payload.to_vec())
                .await
                .expect("client connection open");
            super::within(10, async {
                loop {
                    match self.next_event().await {
                        Event::Outgoing(rumqttc::Outgoing::Publish(_))
                            if qos == QoS::AtMostOnce =>
                        {
                            return
                        }
                        Event::Incoming(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => return,
                        Event::Incoming(Packet::PubComp(_)) if qos == QoS::ExactlyOnce => return,
                        _ => {}
                    }
                }
            })
            .await
        }

        /// The next `n` messages; fails the test if they don't come.
        pub async fn expect_publishes(&mut self, n: usize) -> Vec<Publish> {
            let mut v = Vec::with_capacity(n);
            super::within(10, async {
                while v.len() < n {
                    match self.publishes.recv().await {
                        Some(p) => v.push(p),
                        None => panic!("connection ended after {} of {n} messages", v.len()),
                    }
                }
            })
            .await;
            v
        }

        /// Every message that arrives until nothing has come for `super::QUIET`:
        /// only for messages a backend may still send at any time; for the
        /// broker's own routing, [`Client::until_control`] proves more.
        pub async fn drain(&mut self) -> Vec<Publish> {
            let mut v = Vec::new();
            while let Some(p) = super::recv_for(&mut self.publishes, super::QUIET).await {
                v.push(p);
            }
            v
        }

        /// Everything this client receives before a control message that is
        /// published after this call on a topic of its own: once that came,
        /// anything routed to the client earlier has come too (the session
        /// delivers in order), so "nothing (more) arrives" means something.
        pub async fn until_control(&mut self) -> Vec<Publish> {
            let topic = super::control_topic();
            self.subscribe(&topic, QoS::AtLeastOnce).await;
            publish_all(self.addr, &topic, QoS::AtLeastOnce, &["control".into()]).await;
            let mut before = Vec::new();
            super::within(10, async {
                loop {
                    match self.publishes.recv().await {
                        Some(p) if p.topic == topic => return,
                        Some(p) => before.push(p),
                        None => panic!("connection ended before the control message"),
                    }
                }
            })
            .await;
            before
        }

        /// Waits for the server to close the connection; returns the error seen.
        pub async fn closed(&mut self) -> ConnectionError {
            super::within(10, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return e,
                        None => panic!("event task ended without an error"),
                    }
                }
            })
            .await
        }

        /// Sends DISCONNECT and waits until the connection is closed.
        pub async fn disconnect(mut self) {
            self.client
                .disconnect()
                .await
                .expect("client connection open");
            self.closed().await;
            let _ = self.task.await;
        }

        /// Drops the connection without DISCONNECT (an abnormal close).
        pub async fn kill(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    /// Payloads as strings, for readable assertions.
    pub fn payloads(v: &[Publish]) -> Vec<String> {
        v.iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    }

    /// Connects a clean publisher, publishes every payload to `topic` (each
    /// acknowledged for QoS 1/2) and disconnects.
    pub async fn publish_all(
        addr: std::net::SocketAddr,
        topic: &str,
        qos: QoS,
        payloads: &[String],
    ) {
        let id = format!("pub-{}", rand::random::<u32>());
        let mut p = connect(super::opts_v4(addr, &id, true)).await;
        for m in payloads {
            p.publish(topic, qos, false, m.as_bytes()).await;
        }
        p.disconnect().await;
    }

    /// `prefix00`, `prefix01`, ...
    pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:02}")).collect()
    }

    pub fn keep_alive(opts: &mut MqttOptions, secs: u64) {
        opts.set_keep_alive(Duration::from_secs(secs));
    }
}

/// MQTT 5.0 clients.
pub mod b5 {
    use rumqttc::v5::mqttbytes::v5::{
        ConnAck, Filter, Packet, Publish, PublishProperties, SubAck, SubscribeProperties,
    };
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
    use tokio::task::JoinHandle;

    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        pub publishes: UnboundedReceiver<Publish>,
        pub events: UnboundedReceiver<Result<Event, ConnectionError>>,
        addr: std::net::SocketAddr,
        task: JoinHandle<()>,
    }

    pub async fn try_connect(opts: MqttOptions) -> Result<Client, ConnectionError> {
        let addr = super::socket_addr(opts.broker_address());
        let (client, mut ev) = AsyncClient::new(opts, 100);
        let connack = loop {
            match super::within(10, ev.poll()).await? {
                Event::Incoming(Packet::ConnAck(c)) => break c,
                _ => continue,
            }
        };
        Ok(spawn(client, ev, connack, addr))
    }

    pub async fn connect(opts: MqttOptions) -> Client {
        try_connect(opts).await.expect("client connects")
    }

    fn spawn(
        client: AsyncClient,
        mut ev: EventLoop,
        connack: ConnAck,
        addr: std::net::SocketAddr,
    ) -> Client {
        let (ptx, publishes) = unbounded_channel();
        let (etx, events) = unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ptx.send(p);
                    }
                    Ok(e) => {
                        let _ = etx.send(Ok(e));
                    }
                    Err(e) => {
                        let _ = etx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Client {
            client,
            connack,
            publishes,
            events,
            addr,
            task,
        }
    }

    impl Client {
        pub fn session_present(&self) -> bool {
            self.connack.session_present
        }

        async fn next_event(&mut self) -> Event {
            match self.events.recv().await {
                Some(Ok(e)) => e,
                Some(Err(e)) => panic!("connection ended: {e:?}"),
                None => panic!("connection ended"),
            }
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
            self.subscribe_with(Filter::new(filter, qos), None).await
        }

        /// SUBSCRIBE with full options and an optional subscription identifier.
        pub async fn subscribe_with(&mut self, filter: Filter, sub_id: Option<usize>) -> SubAck {
            let props = sub_id.map(|id| SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            });
            match props {
                Some(p) => self
                    .client
                    .subscribe_many_with_properties([filter], p)
                    .await
                    .expect("client connection open"),
                None => self
                    .client
                    .subscribe_many([filter])
                    .await
                    .expect("client connection open"),
            }
            super::within(10, async {
                loop {
                    if let Event::Incoming(Packet::SubAck(s)) = self.next_event().await {
                        return s;
                    }
                }
            })
            .await
        }

        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
            self.publish_with(topic, qos, retain, payload, PublishProperties::default())
                .await
        }

        /// Publishes with properties and, for QoS 1/2, waits for the PUBACK/PUBCOMP.
        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: &[u8],
            props: PublishProperties,
        ) {
            self.client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), props)
                .await
                .expect("client connection open");
            super::within(10, async {
                loop {
                    match self.next_event().await {
                        Event::Outgoing(rumqttc::Outgoing::Publish(_))
                            if qos == QoS::AtMostOnce =>
                        {
                            return
                        }
                        Event::Incoming(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => return,
                        Event::Incoming(Packet::PubComp(_)) if qos == QoS::ExactlyOnce => return,
                        _ => {}
                    }
                }
            })
            .await
        }

        pub async fn expect_publishes(&mut self, n: usize) -> Vec<Publish> {
            let mut v = Vec::with_capacity(n);
            super::within(10, async {
                while v.len() < n {
                    match self.publishes.recv().await {
                        Some(p) => v.push(p),
                        None => panic!("connection ended after {} of {n} messages", v.len()),
                    }
                }
            })
            .await;
            v
        }

        pub async fn drain(&mut self) -> Vec<Publish> {
            let mut v = Vec::new();
            while let Some(p) = super::recv_for(&mut self.publishes, super::QUIET).await {
                v.push(p);
            }
            v
        }

        /// As [`super::b4::Client::until_control`].
        pub async fn until_control(&mut self) -> Vec<Publish> {
            let control = super::control_topic();
            self.subscribe(&control, QoS::AtLeastOnce).await;
            super::b4::publish_all(
                self.addr,
                &control,
                rumqttc::QoS::AtLeastOnce,
                &["control".into()],
            )
            .await;
            let mut before = Vec::new();
            super::within(10, async {
                loop {
                    match self.publishes.recv().await {
                        Some(p) if topic(&p) == control => return,
                        Some(p) => before.push(p),
                        None => panic!("connection ended before the control message"),
                    }
                }
            })
            .await;
            before
        }

        pub async fn closed(&mut self) -> ConnectionError {
            super::within(10, async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return e,
                        None => panic!("event task ended without an error"),
                    }
                }
            })
            .await
        }

        pub async fn disconnect(mut self) {
            self.client
                .disconnect()
                .await
                .expect("client connection open");
            self.closed().await;
            let _ = self.task.await;
        }

        pub async fn kill(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    pub fn payloads(v: &[Publish]) -> Vec<String> {
        v.iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    }

    pub fn topic(p: &Publish) -> String {
        String::from_utf8_lossy(&p.topic).into_owned()
    }
}

/// Raw packets, for checks a client library would hide.
pub mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A CONNECT packet: protocol level 4 (3.1.1) or 5, no will, no login,
    /// keep-alive 60 s, empty 5.0 properties.
    pub fn connect_packet(level: u8, client_id: &str, clean: bool) -> Vec<u8> {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level];
        body.push(if clean { 0x02 } else { 0x00 });
        body.extend_from_slice(&60u16.to_be_bytes());
        if level == 5 {
            body.push(0x00);
        }
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        assert!(body.len() < 128, "keep the test packet short");
        let mut p = vec![0x10, body.len() as u8];
        p.extend(body);
        p
    }

    /// Connects, sends `packet` and returns the socket.
    pub async fn send(addr: std::net::SocketAddr, packet: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("tcp connect");
        s.write_all(packet).await.expect("write");
        s
    }

    /// Reads one whole packet (fixed header included); `None` at end of stream.
    pub async fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).await.is_err() {
            return None;
        }
        let mut packet = vec![first[0]];
        let mut len = 0usize;
        for shift in 0..4 {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            packet.push(b[0]);
            len |= ((b[0] & 0x7f) as usize) << (7 * shift);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        packet.extend(body);
        Some(packet)
    }

    /// Everything the server sends until it closes the connection.
    pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        all
    }
}

/// A 3.1.1 device publishing `n` QoS 1 messages `"{id}:{i}"` to
/// `devices/{id}/telemetry`, one every `gap`; returns when each PUBACK came.
pub async fn paced_device(
    addr: SocketAddr,
    id: String,
    n: usize,
    gap: Duration,
) -> Vec<std::time::Instant> {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let (c, mut ev) = AsyncClient::new(opts_v4(addr, &id, true), n + 10);
    let topic = format!("devices/{id}/telemetry");
    tokio::spawn(async move {
        for i in 0..n {
            c.publish(topic.as_str(), QoS::AtLeastOnce, false, format!("{id}:{i}"))
                .await
                .unwrap();
            tokio::time::sleep(gap).await;
        }
    });
    let mut acked = Vec::new();
    while acked.len() < n {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked.push(std::time::Instant::now()),
            Ok(_) => {}
            Err(e) => panic!("device connection failed: {e}"),
        }
    }
    acked
}

/// The longest time between two consecutive PUBACKs of any device.
pub fn longest_gap(acks: &[Vec<std::time::Instant>]) -> Duration {
    acks.iter()
        .flat_map(|a| a.windows(2).map(|w| w[1] - w[0]))
        .max()
        .unwrap_or_default()
}

/// After an outage that started at `down_at` and lasted `outage`: some
/// PUBACK was held back for most of it, and PUBACKs resumed afterwards.
/// Returns the longest gap between two PUBACKs.
pub fn assert_acks_waited(
    acks: &[Vec<std::time::Instant>],
    down_at: std::time::Instant,
    outage: Duration,
) -> Duration {
    let longest = longest_gap(acks);
    assert!(
        longest >= outage / 2,
        "no PUBACK was held back during the outage (longest gap {longest:?})"
    );
    assert!(
        acks.iter().flatten().any(|a| *a > down_at + outage),
        "acks resumed after the outage"
    );
    longest
}

/// Of the payloads `"{prefix}{d}:{i}"` every paced device sent, those never
/// received, and how many were received more than once.
pub fn missing_and_duplicates(
    seen: &std::collections::HashMap<String, usize>,
    prefix: &str,
    devices: usize,
    per: usize,
) -> (Vec<String>, usize) {
    let missing = (0..devices)
        .flat_map(|d| (0..per).map(move |i| format!("{prefix}{d}:{i}")))
        .filter(|id| !seen.contains_key(id))
        .collect();
    (missing, seen.values().map(|n| n - 1).sum())
}

/// The gateway's bridge as in config/kafka.toml: one Kafka backend at
/// `addr` (creating its topics) and the telemetry route to `topic`.
pub fn kafka_bridge(cfg: &mut mqbridge::config::Config, addr: &str, topic: &str) {
    use mqbridge::config::{AckMode, BackendConfig, KafkaBackend, UplinkRoute};
    cfg.bridge.backends = vec![BackendConfig::Kafka(KafkaBackend {
        name: "kafka".into(),
        bootstrap_servers: addr.into(),
        compression: "lz4".into(),
        create_topics: true,
        topic_partitions: 3,
        topic_replication: 1,
        properties: vec![],
        ..KafkaBackend::default()
    })];
    cfg.bridge.uplink = vec![UplinkRoute {
        name: "telemetry".into(),
        filter: "devices/+/telemetry/#".into(),
        backend: "kafka".into(),
        target: topic.into(),
        key: None,
        routing_key: None,
        ack: AckMode::Backend,
        give_up_secs: 0,
        spool_max_bytes: 1 << 30,
    }];
}

/// The value of one sample (name with its labels, exactly as exported) from
/// the admin endpoint's `GET /metrics`; the gateway needs `admin.listen` set.
pub async fn scrape(t: &TestGateway, sample: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = t.gw.admin_addr.expect("admin endpoint enabled");
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    within(5, s.read_to_string(&mut body)).await.ok()?;
    body.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
