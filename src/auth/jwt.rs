//! JWT in the CONNECT password (docs/security.md section 2): one algorithm
//! (HS256, RS256 or ES256: no key confusion), `exp` required, `nbf` checked
//! when present, optional issuer and audience; a configured claim is the
//! user name, another optionally restricts the client id.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Where the keys come from.
pub enum Keys {
    /// The one key (HS256 secret or PEM public key).
    One(DecodingKey),
    /// A JWKS file: the token's `kid` picks the key; a token without `kid`
    /// is accepted only if the set holds one key.
    Set(HashMap<String, DecodingKey>),
}

/// The checked `[auth.jwt]` settings with their keys.
pub struct JwtVerifier {
    pub algorithm: Algorithm,
    pub keys: Keys,
    pub username_claim: String,
    pub client_id_claim: Option<String>,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            Keys::One(_) => 1,
            Keys::Set(s) => s.len(),
        };
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("keys", &keys)
            .field("username_claim", &self.username_claim)
            .field("client_id_claim", &self.client_id_claim)
            .finish_non_exhaustive()
    }
}

/// What the method says about a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a JWT: another method may take it.
    NotAJwt,
    /// A valid token for this user name.
    Valid { username: String },
    /// Invalid (signature, expiry, claims, user name mismatch).
    Invalid(&'static str),
    /// Valid, but not for this client id.
    WrongClientId,
}

/// Whether `s` has the shape of a compact JWS: three base64url segments.
pub fn looks_like_jwt(s: &[u8]) -> bool {
    let mut parts = 0;
    for seg in s.split(|&b| b == b'.') {
        parts += 1;
        if seg.is_empty()
            || !seg
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return false;
        }
    }
    parts == 3
}

impl JwtVerifier {
    pub fn new(
        algorithm: Algorithm,
        keys: Keys,
        username_claim: String,
        client_id_claim: Option<String>,
        issuer: Option<String>,
        audience: Option<String>,
        leeway_secs: u64,
    ) -> JwtVerifier {
        let mut validation = Validation::new(algorithm);
        // A configured issuer or audience must be in the token: the crate
        // checks them only when present unless they are required.
        let mut required = vec!["exp"];
        required.extend(issuer.as_ref().map(|_| "iss"));
        required.extend(audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        validation.leeway = leeway_secs;
        match &audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
        }
        JwtVerifier {
            algorithm,
            keys,
            username_claim,
            client_id_claim,
            validation,
        }
    }

    /// Checks `password` as a token for a CONNECT with this user name (may
    /// be absent) and client id.
    pub fn check(&self, password: &[u8], username: Option<&str>, client_id: &str) -> Outcome {
        if !looks_like_jwt(password) {
            return Outcome::NotAJwt;
        }
        // ASCII, as checked above.
        let token = String::from_utf8_lossy(password);
        let key = match &self.keys {
            Keys::One(k) => k,
            Keys::Set(set) => {
                let kid = jsonwebtoken::decode_header(token.as_ref())
                    .ok()
                    .and_then(|h| h.kid);
                let key = match kid {
                    Some(kid) => set.get(&kid),
                    None if set.len() == 1 => set.values().next(),
                    None => None,
                };
                match key {
                    Some(k) => k,
                    None => return Outcome::Invalid("no key for the token's kid"),
                }
            }
        };
        let claims =
            match jsonwebtoken::decode::<Map<String, Value>>(token.as_ref(), key, &self.validation)
            {
                Ok(data) => data.claims,
                Err(_) => return Outcome::Invalid("token rejected (signature, expiry or claims)"),
            };
        let Some(Value::String(user)) = claims.get(&self.username_claim) else {
            return Outcome::Invalid("the user name claim is missing");
        };
        if user.is_empty() {
            return Outcome::Invalid("the user name claim is empty");
        }
        if username.is_some_and(|u| u != user) {
            return Outcome::Invalid("the CONNECT user name differs from the token's");
        }
        if let Some(claim) = &self.client_id_claim {
            match claims.get(claim) {
                None => {}
                Some(Value::String(id)) if id == client_id => {}
                Some(_) => return Outcome::WrongClientId,
            }
        }
        Outcome::Valid {
            username: user.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn hs(client_id_claim: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(
            Algorithm::HS256,
            Keys::One(DecodingKey::from_secret(b"secret").unwrap()),
            "sub".into(),
            client_id_claim.map(str::to_string),
            None,
            None,
            0,
        )
    }

    fn token(claims: Value, secret: &[u8]) -> Vec<u8> {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
        .into_bytes()
    }

    #[test]
    fn shape() {
        assert!(looks_like_jwt(b"a.b.c"));
        assert!(looks_like_jwt(b"eyJ-_.x_Y.z9"));
        for s in [
            &b"a.b"[..],
            b"a..c",
            b"a.b.c.d",
            b"a.b.c=",
            b"pass word",
            b"",
        ] {
            assert!(!looks_like_jwt(s), "{s:?}");
        }
    }

    #[test]
    fn claims() {
        let v = hs(Some("cid"));
        let exp = now() + 600;
        let good = token(serde_json::json!({"sub": "dev1", "exp": exp}), b"secret");
        assert_eq!(
            v.check(&good, None, "any"),
            Outcome::Valid {
                username: "dev1".into()
            }
        );
        assert_eq!(
            v.check(&good, Some("dev1"), "x"),
            Outcome::Valid {
                username: "dev1".into()
            }
        );
        assert!(matches!(
            v.check(&good, Some("dev2"), "x"),
            Outcome::Invalid(_)
        ));
        let forged = token(serde_json::json!({"sub": "dev1", "exp": exp}), b"other");
        assert!(matches!(v.check(&forged, None, "x"), Outcome::Invalid(_)));
        let expired = token(
            serde_json::json!({"sub": "dev1", "exp": now() - 60}),
            b"secret",
        );
        assert!(matches!(v.check(&expired, None, "x"), Outcome::Invalid(_)));
        let no_exp = token(serde_json::json!({"sub": "dev1"}), b"secret");
        assert!(matches!(v.check(&no_exp, None, "x"), Outcome::Invalid(_)));
        let early = token(
            serde_json::json!({"sub": "dev1", "exp": exp, "nbf": now() + 300}),
            b"secret",
        );
        assert!(matches!(v.check(&early, None, "x"), Outcome::Invalid(_)));
        let bound = token(
            serde_json::json!({"sub": "dev1", "exp": exp, "cid": "dev1-a"}),
            b"secret",
        );
        assert!(matches!(
            v.check(&bound, None, "dev1-a"),
            Outcome::Valid { .. }
        ));
        assert_eq!(v.check(&bound, None, "dev2"), Outcome::WrongClientId);
        assert_eq!(v.check(b"hunter2", None, "x"), Outcome::NotAJwt);
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let v = JwtVerifier::new(
            Algorithm::HS256,
            Keys::One(DecodingKey::from_secret(b"secret").unwrap()),
            "sub".into(),
            None,
            Some("fleet-idp".into()),
            Some("mqbridge".into()),
            0,
        );
        let exp = now() + 600;
        let with = |iss: &str, aud: &str| {
            token(
                serde_json::json!({"sub": "dev1", "exp": exp, "iss": iss, "aud": aud}),
                b"secret",
            )
        };
        assert!(matches!(
            v.check(&with("fleet-idp", "mqbridge"), None, "x"),
            Outcome::Valid { .. }
        ));
        assert!(matches!(
            v.check(&with("someone", "mqbridge"), None, "x"),
            Outcome::Invalid(_)
        ));
        assert!(matches!(
            v.check(&with("fleet-idp", "other"), None, "x"),
            Outcome::Invalid(_)
        ));
        let bare = token(serde_json::json!({"sub": "dev1", "exp": exp}), b"secret");
        assert!(matches!(v.check(&bare, None, "x"), Outcome::Invalid(_)));
    }
}
