//! `restart`: mqbridge's start-up with a store holding S persistent sessions
//! (default 10,000; issue: 100,000) and M queued messages: the time from
//! spawning the process to the first CONNACK (TCP connect + CONNECT of a
//! fresh client), and the resident memory right after it. No peer: the
//! targets are < 2 s and RSS proportional to sessions, not to queued
//! messages, so each figure is reported for two queue sizes with the same
//! sessions, M/10 then M (`restart-s{S}-q{M}` in ms, `…-rss` in KiB).
//!
//! The store is populated once through MQTT with mqbridge running (sessions
//! subscribed at QoS 1 to their own topic and disconnected, then messages
//! published round robin over them at QoS 1, `--size` bytes each), stopped
//! with SIGTERM, topped up to M before the second size, and restarted once
//! per round; the populate times are printed. Each round also checks that a
//! stored session is still there (CONNACK session present).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{Event, Packet};
use tokio::sync::Mutex;

use super::common::{options, Measured};
use super::offline_drain::{create_sessions, disconnect, queue_messages, run_id};
use super::{Better, Variant};
use crate::peers::{Broker, Side};
use crate::Args;

/// The store shared by the variants, populated up to what each needs.
struct Store {
    dir: tempfile::TempDir,
    prefix: String,
    sessions: usize,
    queued: usize,
}

pub fn variants(a: &Args) -> Vec<Variant> {
    let store: Arc<Mutex<Option<Store>>> = Arc::default();
    let s = a.restart_sessions;
    let mut out = Vec::new();
    for m in [a.restart_queued / 10, a.restart_queued] {
        for rss in [false, true] {
            let (bin, size, store) = (a.bin.clone(), a.size, store.clone());
            let name = format!("restart-s{s}-q{m}{}", if rss { "-rss" } else { "" });
            out.push(Variant::new(
                name,
                vec![Side::Mqbridge],
                Better::Lower,
                move |_| {
                    let (bin, store) = (bin.clone(), store.clone());
                    async move {
                        let mut store = store.lock().await;
                        let st = populate(&mut store, &bin, s, m, size).await?;
                        let (ms, kib) = restart(&bin, st).await?;
                        Ok(Measured {
                            value: if rss { kib as f64 } else { ms },
                            unit: if rss { "KiB" } else { "ms" },
                            p50_us: None,
                            p99_us: None,
                            delivered: None,
                        })
                    }
                },
            ));
        }
    }
    out
}

/// Brings the store to `sessions` sessions and `queued` messages (creating
/// it on first use), with mqbridge running only while it populates.
async fn populate<'a>(
    store: &'a mut Option<Store>,
    bin: &Path,
    sessions: usize,
    queued: usize,
    size: usize,
) -> Result<&'a Store> {
    let st = match store {
        Some(st) => st,
        None => store.insert(Store {
            dir: tempfile::tempdir()?,
            prefix: format!("rs-{}", run_id()),
            sessions: 0,
            queued: 0,
        }),
    };
    if st.sessions >= sessions && st.queued >= queued {
        return Ok(st);
    }
    let b = start_on(bin, st)?;
    if st.sessions < sessions {
        let t = Instant::now();
        create_sessions(&b, &st.prefix, sessions).await?;
        st.sessions = sessions;
        eprintln!(
            "restart: {sessions} sessions created in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    if st.queued < queued {
        let t = Instant::now();
        queue_messages(&b, &st.prefix, st.sessions, st.queued..queued, size).await?;
        eprintln!(
            "restart: {} messages queued in {:.1} s (store now {queued})",
            queued - st.queued,
            t.elapsed().as_secs_f64()
        );
        st.queued = queued;
    }
    b.stop().context("stopping mqbridge after populating")?;
    Ok(st)
}

/// mqbridge on the shared store (not in its own temporary directory).
fn start_on(bin: &Path, st: &Store) -> Result<Broker> {
    let path = st.dir.path().join("store").to_string_lossy().into_owned();
    Broker::start_with_env(
        Side::Mqbridge,
        bin,
        None,
        &[("MQBRIDGE__STORE__PATH", path)],
    )
}

/// Starts mqbridge on the store: ms from spawning it to a fresh client's
/// CONNACK, and its RSS (KiB) right then. Stops it with SIGTERM after
/// checking that a stored session survived.
async fn restart(bin: &Path, st: &Store) -> Result<(f64, u64)> {
    let start = Instant::now();
    let b = start_on(bin, st)?;
    let (probe, mut ev) =
        super::common::client(options(b.addr, &format!("{}-probe", st.prefix)), 16);
    wait_connack(&mut ev).await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let kib = b.rss_kib()?;
    disconnect(&probe, &mut ev).await;

    // A stored session reconnecting must find its session. Manual acks and
    // disconnecting right away leave its queue as it was (unacknowledged
    // QoS 1 is resent).
    let mut o = options(b.addr, &format!("{}-0", st.prefix));
    o.set_clean_session(false).set_manual_acks(true);
    let (c, mut ev) = super::common::client(o, 16);
    if !wait_connack(&mut ev).await? {
        bail!("restart: the stored session {}-0 was not found", st.prefix);
    }
    disconnect(&c, &mut ev).await;
    b.stop().context("stopping mqbridge after a restart")?;
    Ok((ms, kib))
}

/// Polls until CONNACK (within 60 s): whether the session was present.
async fn wait_connack(ev: &mut rumqttc::EventLoop) -> Result<bool> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) = ev.poll().await? {
                return Ok(ack.session_present);
            }
        }
    })
    .await
    .context("no CONNACK within 60 s")?
}
