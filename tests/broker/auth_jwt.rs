//! JWT in the password field (docs/security.md section 2), tokens minted
//! here: valid, expired, not yet valid, wrong signature, a client-id claim
//! that differs; HS256 with a secret file, ES256 with a PEM public key,
//! RS256 with a two-key JWKS picked by `kid`, and HS256 signed with the RSA
//! public key (key confusion) refused.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mqbridge::config::Config;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C5;
use rumqttc::ConnectReturnCode as C4;
use serde_json::json;

use crate::common::{self, b4, b5, opts_v4, opts_v5, service, TestGateway};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
    json!({"sub": sub, "exp": now() + exp_in, "cid": sub})
}

fn mint(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
    key: &EncodingKey,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).expect("token")
}

async fn start_jwt(f: impl FnOnce(&mut Config)) -> TestGateway {
    common::start_with(|cfg| {
        cfg.auth.methods = vec!["jwt".into()];
        cfg.auth.allow_anonymous = false;
        cfg.auth.jwt.client_id_claim = "cid".into();
        cfg.auth.jwt.leeway_secs = 0;
        cfg.auth.failure_delay_after = 1000;
        f(cfg);
    })
    .await
}

/// Logs in as devA (3.1.1 needs a user name with a password; it must equal
/// the token's claim) with client id `id`.
fn v4(t: &TestGateway, id: &str, token: &str) -> rumqttc::MqttOptions {
    let mut o = opts_v4(t.addr, id, true);
    o.set_credentials(USER, token);
    o
}

fn v5(t: &TestGateway, id: &str, token: &str) -> rumqttc::v5::MqttOptions {
    let mut o = opts_v5(t.addr, id, true, None);
    o.set_credentials(USER, token);
    o
}

/// The user name the tokens are for, unless a test says otherwise.
const USER: &str = "devA";

async fn v4_code(o: rumqttc::MqttOptions) -> C4 {
    match b4::try_connect(o).await {
        Ok(c) => {
            c.disconnect().await;
            C4::Success
        }
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK, got {e:?}"),
    }
}

async fn v5_code(o: rumqttc::v5::MqttOptions) -> C5 {
    match b5::try_connect(o).await {
        Ok(c) => {
            c.disconnect().await;
            C5::Success
        }
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK, got {e:?}"),
    }
}

#[tokio::test]
async fn hs256_valid_expired_early_forged_and_wrong_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef-test";
    let file = dir.path().join("jwt.key");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let t = start_jwt(|cfg| {
        cfg.auth.jwt.algorithm = "HS256".into();
        cfg.auth.jwt.secret_file = file.clone();
    })
    .await;
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let valid = mint(Algorithm::HS256, None, &claims("devA", 600), &key);
    assert_eq!(v4_code(v4(&t, "devA", &valid)).await, C4::Success);
    assert_eq!(v5_code(v5(&t, "devA", &valid)).await, C5::Success);
    // The CONNECT user name may repeat the claim, never contradict it.
    let mut o = opts_v4(t.addr, "devA", true);
    o.set_credentials("devA", valid.as_str());
    assert_eq!(v4_code(o).await, C4::Success);
    let mut o = opts_v4(t.addr, "devA", true);
    o.set_credentials("devB", valid.as_str());
    assert_eq!(v4_code(o).await, C4::BadUserNamePassword);

    let expired = mint(Algorithm::HS256, None, &claims("devA", -60), &key);
    let mut early = claims("devA", 600);
    early["nbf"] = json!(now() + 300);
    let early = mint(Algorithm::HS256, None, &early, &key);
    let other = EncodingKey::from_secret(b"another-secret-another-secret-!!").unwrap();
    let forged = mint(Algorithm::HS256, None, &claims("devA", 600), &other);
    for (what, token) in [
        ("expired", &expired),
        ("nbf ahead", &early),
        ("forged", &forged),
    ] {
        assert_eq!(
            v4_code(v4(&t, "devA", token)).await,
            C4::BadUserNamePassword,
            "{what}"
        );
        assert_eq!(
            v5_code(v5(&t, "devA", token)).await,
            C5::BadUserNamePassword,
            "{what}"
        );
    }
    // A valid token for devA, used with another client id.
    assert_eq!(v4_code(v4(&t, "devB", &valid)).await, C4::NotAuthorized);
    assert_eq!(v5_code(v5(&t, "devB", &valid)).await, C5::NotAuthorized);
    // Not a JWT at all, and no other method: bad credentials.
    assert_eq!(
        v4_code(v4(&t, "devA", "hunter2")).await,
        C4::BadUserNamePassword
    );
    t.gw.shutdown().await;
}

/// `openssl genpkey` with these options into `dir/name`; `None` when the
/// tool is missing (recorded; fails under CI).
fn genpkey(dir: &Path, name: &str, opts: &[&str]) -> Option<PathBuf> {
    let path = dir.join(name);
    let status = std::process::Command::new("openssl")
        .args(["genpkey", "-out"])
        .arg(&path)
        .args(opts)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some(path),
        Ok(s) => panic!("openssl genpkey {opts:?} failed: {s}"),
        Err(_) => {
            service::missing("openssl (Debian package openssl)");
            None
        }
    }
}

fn public_pem(private: &Path) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(private)
        .output()
        .expect("openssl pkey");
    assert!(out.status.success(), "openssl pkey -pubout failed");
    out.stdout
}

#[tokio::test]
async fn es256_with_a_pem_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let Some(private) = genpkey(dir.path(), "ec.pem", &ec) else {
        return;
    };
    let Some(stranger) = genpkey(dir.path(), "ec2.pem", &ec) else {
        return;
    };
    let public = dir.path().join("ec.pub");
    std::fs::write(&public, public_pem(&private)).unwrap();
    let t = start_jwt(|cfg| {
        cfg.auth.jwt.algorithm = "ES256".into();
        cfg.auth.jwt.public_key_file = public.clone();
    })
    .await;
    let key = EncodingKey::from_ec_pem(&std::fs::read(&private).unwrap()).unwrap();
    let valid = mint(Algorithm::ES256, None, &claims("devA", 600), &key);
    assert_eq!(v5_code(v5(&t, "devA", &valid)).await, C5::Success);
    let other = EncodingKey::from_ec_pem(&std::fs::read(&stranger).unwrap()).unwrap();
    let forged = mint(Algorithm::ES256, None, &claims("devA", 600), &other);
    assert_eq!(
        v5_code(v5(&t, "devA", &forged)).await,
        C5::BadUserNamePassword
    );
    let expired = mint(Algorithm::ES256, None, &claims("devA", -60), &key);
    assert_eq!(
        v4_code(v4(&t, "devA", &expired)).await,
        C4::BadUserNamePassword
    );
    assert_eq!(v4_code(v4(&t, "devB", &valid)).await, C4::NotAuthorized);
    t.gw.shutdown().await;
}

#[tokio::test]
async fn rs256_jwks_picks_the_key_by_kid_and_refuses_key_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    let (Some(k1), Some(k2)) = (
        genpkey(dir.path(), "k1.pem", &rsa),
        genpkey(dir.path(), "k2.pem", &rsa),
    ) else {
        return;
    };
    let e1 = EncodingKey::from_rsa_pem(&std::fs::read(&k1).unwrap()).unwrap();
    let e2 = EncodingKey::from_rsa_pem(&std::fs::read(&k2).unwrap()).unwrap();
    let jwk = |key: &EncodingKey, kid: &str| {
        let mut j = Jwk::from_encoding_key(key, Algorithm::RS256).expect("jwk");
        j.common.key_id = Some(kid.into());
        j
    };
    let set = JwkSet {
        keys: vec![jwk(&e1, "one"), jwk(&e2, "two")],
    };
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&set).unwrap()).unwrap();
    let t = start_jwt(|cfg| {
        cfg.auth.jwt.algorithm = "RS256".into();
        cfg.auth.jwt.jwks_file = jwks.clone();
    })
    .await;
    let c = claims("devA", 600);
    for (kid, key) in [("one", &e1), ("two", &e2)] {
        let token = mint(Algorithm::RS256, Some(kid), &c, key);
        assert_eq!(v4_code(v4(&t, "devA", &token)).await, C4::Success, "{kid}");
    }
    // Signed by key two, claiming key one; an unknown kid; no kid in a set of two.
    for (what, kid) in [
        ("wrong kid", Some("one")),
        ("unknown kid", Some("three")),
        ("no kid", None),
    ] {
        let token = mint(Algorithm::RS256, kid, &c, &e2);
        assert_eq!(
            v4_code(v4(&t, "devA", &token)).await,
            C4::BadUserNamePassword,
            "{what}"
        );
    }
    // Key confusion: HS256 with the public key's PEM as the HMAC secret.
    let public = public_pem(&k1);
    let confused = mint(
        Algorithm::HS256,
        Some("one"),
        &c,
        &EncodingKey::from_secret(&public).unwrap(),
    );
    assert_eq!(
        v4_code(v4(&t, "devA", &confused)).await,
        C4::BadUserNamePassword
    );
    t.gw.shutdown().await;
}

/// `password_file` and `jwt` in one chain: each device uses its own kind of
/// credential.
#[tokio::test]
async fn password_file_and_jwt_in_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwords");
    mqbridge::auth::passwd::update(
        &pw,
        "devP",
        &mqbridge::auth::passwd::Change::Set {
            password: b"pw-p".to_vec(),
            iterations: 10,
        },
    )
    .unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    let file = dir.path().join("jwt.key");
    std::fs::write(&file, secret).unwrap();
    let t = start_jwt(|cfg| {
        cfg.auth.methods = vec!["password_file".into(), "jwt".into()];
        cfg.auth.password_file = pw.clone();
        cfg.auth.jwt.algorithm = "HS256".into();
        cfg.auth.jwt.secret_file = file.clone();
    })
    .await;
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let token = mint(Algorithm::HS256, None, &claims("devJ", 600), &key);
    let mut o = opts_v4(t.addr, "devJ", true);
    o.set_credentials("devJ", token.as_str());
    assert_eq!(v4_code(o).await, C4::Success);
    let mut o = opts_v4(t.addr, "devP", true);
    o.set_credentials("devP", "pw-p");
    assert_eq!(v4_code(o).await, C4::Success);
    let mut o = opts_v4(t.addr, "devP", true);
    o.set_credentials("devP", "nope");
    assert_eq!(v4_code(o).await, C4::BadUserNamePassword);
    t.gw.shutdown().await;
}

/// A 5.0 CONNECT with a password and no user name (allowed in 5.0, not in
/// 3.1.1), built by hand: rumqttc always sends a user name with one.
fn connect_v5_password_only(client_id: &str, password: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 5, 0x42];
    body.extend_from_slice(&60u16.to_be_bytes());
    body.push(0x00);
    for field in [client_id.as_bytes(), password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        packet.push(b);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// The token alone (no user name) is enough on 5.0: the claim is the user
/// name. CONNACK reason 0 for a valid token, 0x86 for a forged one.
#[tokio::test]
async fn v5_token_without_a_user_name() {
    use crate::common::raw;
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    let file = dir.path().join("jwt.key");
    std::fs::write(&file, secret).unwrap();
    let t = start_jwt(|cfg| {
        cfg.auth.jwt.algorithm = "HS256".into();
        cfg.auth.jwt.secret_file = file.clone();
    })
    .await;
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let other = EncodingKey::from_secret(b"another-secret-another-secret-!!").unwrap();
    for (key, want) in [(&key, 0x00u8), (&other, 0x86)] {
        let token = mint(Algorithm::HS256, None, &claims("devA", 600), key);
        let mut s = raw::send(t.addr, &connect_v5_password_only("devA", token.as_bytes())).await;
        let ack = common::within(10, raw::read_packet(&mut s))
            .await
            .expect("a CONNACK");
        assert_eq!(ack[0], 0x20, "CONNACK: {ack:?}");
        assert_eq!(ack[3], want, "reason code: {ack:?}");
    }
    t.gw.shutdown().await;
}
