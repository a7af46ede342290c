//! Load generator for side-by-side measurements against any MQTT 3.1.1
//! broker (mqbridge, Mosquitto, ...): `P` publishers each send `N` messages
//! at QoS `Q` to `bench/<p>`; one subscriber on `bench/#` counts them.
//! Prints messages/s end to end (first publish to last delivery).
//!
//!   cargo run --release --example loadgen -- 127.0.0.1:1883 4 20000 1 [clean|persistent]

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:1883".into());
    let publishers: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let per: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let q = qos(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1));
    let persistent = args.get(5).is_some_and(|s| s == "persistent");
    let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
    let port: u16 = port.parse().expect("port");
    let total = publishers * per;

    let mut o = MqttOptions::new(format!("loadgen-sub-{}", std::process::id()), host, port);
    o.set_clean_session(!persistent)
        .set_keep_alive(Duration::from_secs(60))
        .set_inflight(1000);
    let (sub, mut sub_ev) = AsyncClient::new(o, 1000);
    sub.subscribe("bench/#", q).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_ev.poll().await {
            break;
        }
    }
    let receiver = tokio::spawn(async move {
        let mut got = 0usize;
        let mut last = Instant::now();
        while got < total {
            match tokio::time::timeout(Duration::from_secs(10), sub_ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => {
                    got += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber: {e}"),
                Err(_) => break,
            }
        }
        (got, last)
    });
    let start = Instant::now();
    for p in 0..publishers {
        let mut o = MqttOptions::new(
            format!("loadgen-pub-{p}-{}", std::process::id()),
            host,
            port,
        );
        o.set_keep_alive(Duration::from_secs(60)).set_inflight(100);
        let (c, mut ev) = AsyncClient::new(o, 1000);
        tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        tokio::spawn(async move {
            let payload = vec![b'x'; 64];
            for _ in 0..per {
                if c.publish(format!("bench/{p}"), q, false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let (got, last) = receiver.await.expect("receiver");
    let secs = (last - start).as_secs_f64();
    println!(
        "{addr} publishers={publishers} messages={total} qos={q:?} persistent={persistent}: received {got} in {secs:.2} s = {:.0} msg/s",
        got as f64 / secs
    );
}
