//! `offline-drain`: S persistent sessions (default 10,000), each subscribed
//! at QoS 1 to its own topic, disconnected; a publisher queues 10 QoS 1
//! messages for each (waiting for every PUBACK); then all S reconnect at
//! once (clean session false) and the figure is the time from the first
//! reconnect to the last of the S×10 messages delivered. Every message must
//! arrive (counted once per session and sequence number), else the run
//! fails. Against Mosquitto (in memory, `persistence false`) and RabbitMQ's
//! MQTT plugin (a durable queue per session). Equal on every side:
//! sessions, messages per session, payload size, QoS, per-client queue and
//! in-flight window, the client library, and the reconnect pace (at most
//! [`CONNECTING`] handshakes outstanding, so the figure measures the drain
//! and not the listen backlog). p50/p99 are each message's delivery time
//! counted from the first reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use super::common::{connected, options, Measured};
use super::{Better, Variant};
use crate::peers::{Broker, Side};
use crate::Args;

/// Handshakes (TCP connect to CONNACK, and SUBSCRIBE while populating) in
/// flight at once; below every broker's listen backlog.
pub const CONNECTING: usize = 100;

/// A reconnected session that gets nothing for this long has all it will get.
const DRAIN_IDLE: Duration = Duration::from_secs(60);

/// How long a client waits for CONNACK: RabbitMQ's plugin, resuming 10,000
/// sessions at 100 handshakes at a time, answered some after more than 60 s
/// here (rumqttc gives up after 5 s by default).
const CONNECT_WAIT: u64 = 300;

pub fn variants(a: &Args) -> Vec<Variant> {
    let (bin, sessions, per, size) = (a.bin.clone(), a.drain_sessions, a.drain_queued, a.size);
    let sides = vec![Side::Mqbridge, Side::Mosquitto, Side::RabbitMqtt];
    vec![Variant::new(
        "offline-drain",
        sides,
        Better::Lower,
        move |side| {
            let bin = bin.clone();
            async move {
                raise_fd_limit(sessions + 256)?;
                let broker = Broker::start(side, &bin)?;
                offline_drain(&broker, sessions, per, size).await
            }
        },
    )]
}

/// Raises the soft open-file limit (inherited by the brokers started
/// after) to at least `want`, within the hard limit.
pub fn raise_fd_limit(want: usize) -> Result<()> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to our own struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let want = want as libc::rlim_t;
        if l.rlim_cur >= want {
            return Ok(());
        }
        if l.rlim_max < want {
            bail!(
                "{want} open files needed, hard limit {}: run under `ulimit -n {want}` or lower --drain-sessions",
                l.rlim_max
            );
        }
        l.rlim_cur = want;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A run-unique prefix for client ids and topics (a peer may outlive a round).
pub fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{:x}{:x}", std::process::id(), t & 0xff_ffff)
}

/// A client for a session of this scenario: persistent, and patient with a
/// broker busy resuming thousands of sessions ([`CONNECT_WAIT`]).
pub fn persistent(addr: std::net::SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = options(addr, id);
    o.set_clean_session(false);
    let (c, mut ev) = super::common::client(o, 16);
    ev.network_options.set_connection_timeout(CONNECT_WAIT);
    (c, ev)
}

/// Sends DISCONNECT and polls until it is written (flushing any PUBACKs
/// before it), within 10 s.
pub async fn disconnect(c: &AsyncClient, ev: &mut EventLoop) {
    if c.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Creates `n` persistent sessions `{prefix}-{i}`, each subscribed at QoS 1
/// to `{prefix}/{i}`, and disconnects them, [`CONNECTING`] at a time.
pub async fn create_sessions(b: &Broker, prefix: &str, n: usize) -> Result<()> {
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let (addr, prefix) = (b.addr, prefix.to_string());
        let side = b.side;
        tasks.spawn(async move {
            let _permit = permit;
            let (c, mut ev) = persistent(addr, &format!("{prefix}-{i}"));
            connected(&mut ev).await?;
            c.subscribe(format!("{prefix}/{i}"), QoS::AtLeastOnce)
                .await?;
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await? {
                    break;
                }
            }
            disconnect(&c, &mut ev).await;
            anyhow::Ok(())
        });
        // Reap as we go so that a failure stops the loop early.
        while let Some(done) = tasks.try_join_next() {
            done?.with_context(|| format!("{} creating sessions", side.name()))?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done?.with_context(|| format!("{} creating sessions", b.side.name()))?;
    }
    Ok(())
}

/// Publishes messages number `range` of a round robin over the sessions'
/// topics `{prefix}/{i}` (message k to session k % sessions, sequence
/// number k / sessions in the payload's bytes 12..16), QoS 1, `size` bytes,
/// and waits for every PUBACK.
pub async fn queue_messages(
    b: &Broker,
    prefix: &str,
    sessions: usize,
    range: std::ops::Range<usize>,
    size: usize,
) -> Result<()> {
    let (publ, mut ev) = super::common::client(options(b.addr, &format!("{prefix}-pub")), 1000);
    connected(&mut ev).await.context("publisher connect")?;
    let total = range.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match tokio::time::timeout(Duration::from_secs(60), ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("publisher: {e} after {acked} PUBACKs"),
                Err(_) => bail!("publisher: no PUBACK for 60 s after {acked}"),
            }
        }
        Ok(ev)
    });
    let mut payload = vec![0u8; size.max(16)];
    for k in range {
        let (i, seq) = (k % sessions.max(1), k / sessions.max(1));
        payload[8..12].copy_from_slice(&(i as u32).to_be_bytes());
        payload[12..16].copy_from_slice(&(seq as u32).to_be_bytes());
        publ.publish(
            format!("{prefix}/{i}"),
            QoS::AtLeastOnce,
            false,
            payload.clone(),
        )
        .await?;
    }
    let mut ev = acks.await??;
    disconnect(&publ, &mut ev).await;
    Ok(())
}

pub async fn offline_drain(
    b: &Broker,
    sessions: usize,
    per: usize,
    size: usize,
) -> Result<Measured> {
    let prefix = format!("drain-{}", run_id());
    let t = Instant::now();
    create_sessions(b, &prefix, sessions).await?;
    let created = t.elapsed();
    queue_messages(b, &prefix, sessions, 0..sessions * per, size).await?;
    eprintln!(
        "offline-drain {}: {sessions} sessions created in {:.1} s, {} messages queued in {:.1} s",
        b.side.name(),
        created.as_secs_f64(),
        sessions * per,
        (t.elapsed() - created).as_secs_f64()
    );

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..sessions {
        let permit = gate.clone().acquire_owned().await?;
        let (b_addr, side, id) = (b.addr, b.side, format!("{prefix}-{i}"));
        let hist = hist.clone();
        tasks.spawn(async move {
            let began = Instant::now();
            let (c, mut ev) = persistent(b_addr, &id);
            let mut seen = vec![false; per];
            let mut local = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut got = 0;
            let mut permit = Some(permit);
            let (mut last, mut connack, mut present) = (start, start, false);
            let mut ended = String::new();
            while got < per {
                // Until CONNACK (the permit is held) rumqttc's own timeout.
                let idle = match permit {
                    Some(_) => Duration::from_secs(CONNECT_WAIT + 1),
                    None => DRAIN_IDLE,
                };
                match tokio::time::timeout(idle, ev.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        connack = Instant::now();
                        present = ack.session_present;
                        drop(permit.take());
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let seq = p
                            .payload
                            .get(12..16)
                            .and_then(|s| s.try_into().ok())
                            .map_or(usize::MAX, |s| u32::from_be_bytes(s) as usize);
                        if let Some(slot) = seen.get_mut(seq).filter(|s| !**s) {
                            *slot = true;
                            got += 1;
                            last = Instant::now();
                            let _ = local.record(last.duration_since(start).as_micros() as u64);
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        ended = format!("{e}");
                        break;
                    }
                    Err(_) => {
                        ended = "idle".to_string();
                        break;
                    }
                }
            }
            drop(permit);
            disconnect(&c, &mut ev).await;
            let _ = hist.lock().await.add(&local);
            let short = (got < per).then(|| {
                format!(
                    "{} {id}: {got} of {per}, session present {present}, ended: {ended}",
                    side.name()
                )
            });
            // The handshake's own time, not the wait for a permit.
            let handshake = connack.saturating_duration_since(began);
            anyhow::Ok((got, last, connack, handshake, short))
        });
    }
    let (mut delivered, mut last, mut connacks, mut shorts) = (0, start, start, 0usize);
    let mut handshakes = Vec::with_capacity(sessions);
    while let Some(done) = tasks.join_next().await {
        let (got, at, connack, handshake, short) = done??;
        delivered += got;
        last = last.max(at);
        connacks = connacks.max(connack);
        handshakes.push(handshake.as_secs_f64() * 1e3);
        if let Some(short) = short {
            // A few examples of what went wrong, not thousands of lines.
            shorts += 1;
            if shorts <= 5 {
                eprintln!("{short}");
            }
        }
    }
    // To tell the drain from the reconnects: when the last CONNACK came,
    // and how long one reconnect took (connect to CONNACK).
    handshakes.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let i = ((handshakes.len() as f64 * q) as usize).min(handshakes.len().saturating_sub(1));
        handshakes.get(i).copied().unwrap_or(0.0)
    };
    eprintln!(
        "offline-drain {}: last CONNACK after {:.0} ms; reconnect to CONNACK p50 {:.1} ms, p99 {:.1} ms",
        b.side.name(),
        connacks.duration_since(start).as_secs_f64() * 1e3,
        pct(0.5),
        pct(0.99)
    );
    let expected = sessions * per;
    if delivered < expected {
        bail!(
            "{} delivered {delivered} of {expected} queued messages ({shorts} sessions short)",
            b.side.name()
        );
    }
    let h = hist.lock().await;
    Ok(Measured {
        value: last.duration_since(start).as_secs_f64() * 1e3,
        unit: "ms",
        p50_us: Some(h.value_at_quantile(0.5)),
        p99_us: Some(h.value_at_quantile(0.99)),
        delivered: Some((delivered, expected)),
    })
}
