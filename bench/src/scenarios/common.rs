//! What the scenarios share: the figure one run measures, client options,
//! waiting for CONNACK, and the broker's resident memory at a plateau.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use rumqttc::{Event, EventLoop, MqttOptions, Packet};

use crate::peers::Broker;

/// A receiver that gets nothing for this long has all it will get.
pub const IDLE_END: Duration = Duration::from_secs(5);

/// What one run of a scenario measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    /// Messages per second (p2p), or KiB per connection (conn-idle).
    pub value: f64,
    pub unit: &'static str,
    /// p50 / p99 latency in µs (p2p only).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// p2p: messages delivered of those sent (QoS 0 may drop).
    pub delivered: Option<(usize, usize)>,
}

pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60))
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// A client like `AsyncClient::new`, with Nagle's algorithm off (rumqttc
/// leaves it on): otherwise small messages wait for the broker's delayed
/// ACK and every latency figure measures that, on every broker alike.
pub fn client(o: MqttOptions, cap: usize) -> (rumqttc::AsyncClient, EventLoop) {
    let (c, mut ev) = rumqttc::AsyncClient::new(o, cap);
    ev.network_options.set_tcp_nodelay(true);
    (c, ev)
}

/// Polls until CONNACK.
pub async fn connected(ev: &mut EventLoop) -> Result<()> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = ev.poll().await? {
            return Ok(());
        }
    }
}

/// RSS once three samples 300 ms apart agree within 1 %, or after 5 s.
pub async fn plateau(b: &Broker) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut samples = vec![b.rss_kib()?];
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        samples.push(b.rss_kib()?);
        let last3 = &samples[samples.len().saturating_sub(3)..];
        let (lo, hi) = (last3.iter().min(), last3.iter().max());
        if let (true, Some(lo), Some(hi)) = (last3.len() == 3, lo, hi) {
            if (hi - lo) * 100 <= *hi || Instant::now() > deadline {
                return Ok(*hi);
            }
        }
    }
}
