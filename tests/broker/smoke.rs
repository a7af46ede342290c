use crate::common::*;
use rumqttc::{AsyncClient, Event, Packet, QoS};

#[tokio::test]
async fn publish_subscribe_qos1_v4() {
    let t = start().await;
    let (sub, mut sub_ev) = AsyncClient::new(opts_v4(t.addr, "sub", true), 10);
    sub.subscribe("a/+", QoS::AtLeastOnce).await.unwrap();
    within(5, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_ev.poll().await.unwrap() {
                break;
            }
        }
    })
    .await;
    let (publ, mut pub_ev) = AsyncClient::new(opts_v4(t.addr, "pub", true), 10);
    publ.publish("a/b", QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    let p = within(5, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_ev.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await;
    assert_eq!(p.topic, "a/b");
    assert_eq!(&p.payload[..], b"hello");
    t.gw.shutdown().await;
}
