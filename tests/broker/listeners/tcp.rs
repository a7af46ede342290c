//! A second plain TCP listener beside `mqtt.listen`: one broker behind
//! both, connection ids unique across them, the `listener` label.

use rumqttc::QoS;

use crate::common::{b4, opts_v4, scrape, start_with, within};

fn second_tcp(c: &mut mqbridge::config::Config) {
    c.admin.listen = "127.0.0.1:0".into();
    c.mqtt
        .listeners
        .push(mqbridge::config::listeners::ListenerConfig {
            name: "second".into(),
            kind: "tcp".into(),
            listen: "127.0.0.1:0".into(),
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_certificates: "none".into(),
            min_tls_version: "1.2".into(),
            path: String::new(),
            auth: None,
            allow_anonymous: None,
        });
}

/// A message crosses listeners; a client id taken over from the other
/// listener ends the first connection (the router told the two apart by
/// their ids); each listener counts its own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tcp_listeners_share_one_broker() {
    let t = start_with(second_tcp).await;
    let second = t.gw.listener_addr("second").expect("second listener bound");
    assert_eq!(t.gw.listener_addr("tcp"), Some(t.addr));
    assert_ne!(second, t.addr);

    let mut sub = b4::connect(opts_v4(t.addr, "on-tcp", true)).await;
    sub.subscribe("cross/#", QoS::AtLeastOnce).await;
    let mut publ = b4::connect(opts_v4(second, "on-second", true)).await;
    publ.publish("cross/a", QoS::AtLeastOnce, false, b"hello")
        .await;
    let got = sub.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), ["hello"]);

    // Same client id on the other listener: a takeover, not a confusion.
    let mut twin = b4::connect(opts_v4(second, "on-tcp", true)).await;
    within(10, sub.closed()).await;
    twin.subscribe("cross/#", QoS::AtLeastOnce).await;
    publ.publish("cross/b", QoS::AtLeastOnce, false, b"again")
        .await;
    assert_eq!(b4::payloads(&twin.expect_publishes(1).await), ["again"]);

    let accepted = |l: &str| {
        format!("mqbridge_mqtt_connections_total{{listener=\"{l}\",result=\"accepted\"}}")
    };
    assert_eq!(scrape(&t, &accepted("tcp")).await, Some(1.0));
    assert_eq!(scrape(&t, &accepted("second")).await, Some(2.0));
    assert_eq!(
        scrape(&t, "mqbridge_mqtt_connections_active{listener=\"second\"}").await,
        Some(2.0)
    );
    assert_eq!(
        scrape(&t, "mqbridge_session_takeovers_total").await,
        Some(1.0)
    );
    t.gw.shutdown().await;
}

/// With `mqtt.listen` off, the first `[[mqtt.listeners]]` entry is the
/// gateway's address and there is no `tcp` listener.
#[tokio::test]
async fn plain_listener_can_be_turned_off() {
    let t = start_with(|c| {
        second_tcp(c);
        c.mqtt.listen = String::new();
    })
    .await;
    assert_eq!(t.gw.listener_addr("tcp"), None);
    assert_eq!(t.gw.listener_addr("second"), Some(t.addr));
    let mut c = b4::connect(opts_v4(t.addr, "only", true)).await;
    c.subscribe("x", QoS::AtMostOnce).await;
    t.gw.shutdown().await;
}
