//! Kafka over SSL and SASL: the typed keys reach librdkafka (built with
//! OpenSSL) and it speaks them on the wire.
//!
//! - SSL: tansu 0.6.0 never serves TLS (it builds an acceptor and does not
//!   use it), so the broker side here is a rustls listener of the test with a
//!   certificate of the test's CA: librdkafka must complete the handshake
//!   (so `ssl_ca_file` reached it, and the host name was checked) and send
//!   its first Kafka request inside TLS. With another CA it must refuse.
//! - SASL: a stub broker reads the client's SaslHandshake and the
//!   mechanism it names (see the test for why not tansu).

use std::sync::Arc;
use std::time::Duration;

use mqbridge::bridge::kafka;
use mqbridge::bridge::metrics::BridgeMetrics;
use mqbridge::config::KafkaBackend;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::common::certs;

const PATIENCE: Duration = Duration::from_secs(20);

/// A TLS listener with a certificate for 127.0.0.1 signed by `ca`; resolves
/// to the Kafka API key of the first request read inside TLS, or the
/// handshake error.
async fn tls_kafka_stub(ca: &certs::Ca) -> (u16, tokio::task::JoinHandle<Result<i16, String>>) {
    let (chain, key) = ca.server();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        // A Kafka request: i32 size, then i16 api_key.
        let mut head = [0u8; 6];
        tls.read_exact(&mut head).await.map_err(|e| e.to_string())?;
        Ok(i16::from_be_bytes([head[4], head[5]]))
    });
    (port, served)
}

fn ssl_backend(port: u16, ca_file: std::path::PathBuf) -> KafkaBackend {
    KafkaBackend {
        name: "kafka-ssl".into(),
        bootstrap_servers: format!("127.0.0.1:{port}"),
        security_protocol: "ssl".into(),
        ssl_ca_file: Some(ca_file),
        ..KafkaBackend::default()
    }
}

#[tokio::test]
async fn ssl_handshake_with_the_configured_ca_and_refusal_with_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::Ca::new("kafka test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let metrics = BridgeMetrics::new(&mut Registry::default());

    let (port, served) = tls_kafka_stub(&ca).await;
    let tasks = TaskTracker::new();
    let sink = kafka::start(
        &ssl_backend(port, ca_file),
        vec!["t".into()],
        metrics.backend("ssl"),
        8,
        &tasks,
    )
    .await
    .expect("start");
    let api_key = tokio::time::timeout(PATIENCE, served)
        .await
        .expect("librdkafka connected in time")
        .expect("stub task")
        .expect("TLS handshake and a request inside it");
    // ApiVersions (18) first, or Metadata (3) for a client that skips it.
    assert!(
        matches!(api_key, 18 | 3),
        "not a Kafka request: api key {api_key}"
    );
    drop(sink);

    let other = certs::Ca::new("some other CA");
    let other_file = other.write(dir.path(), "other.pem");
    let (port, served) = tls_kafka_stub(&ca).await;
    let _sink = kafka::start(
        &ssl_backend(port, other_file),
        vec!["t".into()],
        metrics.backend("ssl2"),
        8,
        &tasks,
    )
    .await
    .expect("start");
    let refused = tokio::time::timeout(PATIENCE, served)
        .await
        .expect("librdkafka connected in time")
        .expect("stub task");
    assert!(
        refused.is_err(),
        "handshake accepted a certificate of an untrusted CA: {refused:?}"
    );
}

/// A stub broker that answers ApiVersions (offering SaslHandshake 0-1 and
/// SaslAuthenticate 0-2) and returns the next request: (api key, body
/// after the request header).
async fn sasl_kafka_stub() -> (u16, tokio::task::JoinHandle<(i16, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        loop {
            let request = read_request(&mut tcp).await;
            let api_key = i16::from_be_bytes([request[0], request[1]]);
            if api_key != 18 {
                // Header v1: api_key, api_version, correlation_id, then
                // client_id (i16 length + bytes).
                let id_len =
                    usize::try_from(i16::from_be_bytes([request[8], request[9]])).unwrap_or(0);
                return (api_key, request[10 + id_len..].to_vec());
            }
            let version = i16::from_be_bytes([request[2], request[3]]);
            let response = api_versions(version, &request[4..8]);
            tcp.write_all(&response).await.expect("respond");
        }
    });
    (port, served)
}

async fn read_request(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    let size = tcp.read_i32().await.expect("size");
    let mut request = vec![0u8; usize::try_from(size).expect("size")];
    tcp.read_exact(&mut request).await.expect("request");
    request
}

/// An ApiVersions response (header v0 whatever the version, KIP-511).
fn api_versions(version: i16, correlation_id: &[u8]) -> Vec<u8> {
    const APIS: [(i16, i16, i16); 3] = [(3, 0, 1), (17, 0, 1), (36, 0, 2)];
    let mut body = correlation_id.to_vec();
    body.extend(0i16.to_be_bytes()); // error_code
    if version >= 3 {
        body.push(u8::try_from(APIS.len() + 1).expect("small")); // compact array
        for (key, min, max) in APIS {
            body.extend(key.to_be_bytes());
            body.extend(min.to_be_bytes());
            body.extend(max.to_be_bytes());
            body.push(0); // tagged fields
        }
        body.extend(0i32.to_be_bytes()); // throttle_time_ms
        body.push(0); // tagged fields
    } else {
        body.extend(i32::try_from(APIS.len()).expect("small").to_be_bytes());
        for (key, min, max) in APIS {
            body.extend(key.to_be_bytes());
            body.extend(min.to_be_bytes());
            body.extend(max.to_be_bytes());
        }
        if version >= 1 {
            body.extend(0i32.to_be_bytes()); // throttle_time_ms
        }
    }
    let mut framed = i32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    framed.extend(body);
    framed
}

/// With SASL, the client's request after ApiVersions is SaslHandshake (17)
/// naming the configured mechanism: `security_protocol` and `sasl_mechanism` reached librdkafka,
/// which was built with SCRAM support. (tansu with `--authentication` offers
/// SCRAM only, and its users can only be created by an authenticated client
/// on its in-memory storage, so no end-to-end SASL run here.)
#[tokio::test]
async fn sasl_handshake_names_the_configured_mechanism() {
    let metrics = BridgeMetrics::new(&mut Registry::default());
    let tasks = TaskTracker::new();
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let (port, served) = sasl_kafka_stub().await;
        let cfg = KafkaBackend {
            name: "kafka-sasl".into(),
            bootstrap_servers: format!("127.0.0.1:{port}"),
            security_protocol: "sasl_plaintext".into(),
            sasl_mechanism: mechanism.into(),
            sasl_username: "mqbridge".into(),
            sasl_password: "test-password".into(),
            ..KafkaBackend::default()
        };
        let _sink = kafka::start(
            &cfg,
            vec!["t".into()],
            metrics.backend(mechanism),
            8,
            &tasks,
        )
        .await
        .expect("start");
        let (api_key, body) = tokio::time::timeout(PATIENCE, served)
            .await
            .expect("librdkafka connected in time")
            .expect("stub task");
        assert_eq!(api_key, 17, "not a SaslHandshake");
        let len = usize::try_from(i16::from_be_bytes([body[0], body[1]])).expect("length");
        assert_eq!(&body[2..2 + len], mechanism.as_bytes());
    }
}
