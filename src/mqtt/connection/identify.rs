//! Who the client is, decided in the CONNECT exchange before the will is
//! built and before the router is asked (a refused client never touches a
//! session): the authentication chain, then the client-id binding
//! (`auth.client_id`). A refusal waits out the address's failure delay.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
use tokio::time::Instant;

use super::{ConnError, Shared};
use crate::auth::{AuthRequest, Identity, Password, Refusal};
use crate::config::ClientIdBinding;
use crate::metrics::ProtocolErrorReason as Why;
use crate::mqtt::transport::ConnCtx;

/// What the CONNECT is answered with.
pub(super) enum Decision {
    Accept(Identity),
    /// Refuse with this CONNACK code (the delay has been waited out).
    Refuse(Code),
}

/// Authenticates and binds. `client_id` may be replaced: an empty client id
/// (`assigned` is set) gets the user name under a binding.
pub(super) async fn identify(
    sh: &Shared,
    ctx: &ConnCtx,
    login: Option<&p5::Login>,
    client_id: &mut Arc<str>,
    assigned: &mut Option<String>,
    deadline: Instant,
) -> Result<Decision, ConnError> {
    let req = AuthRequest {
        listener: &ctx.listener.name,
        peer: Some(ctx.peer),
        client_id,
        username: login.map(|l| l.username.as_str()).filter(|u| !u.is_empty()),
        password: login
            .filter(|l| !l.password.is_empty())
            .map(|l| Password(bytes::Bytes::copy_from_slice(l.password.as_bytes()))),
        peer_identity: ctx.peer_identity.as_ref(),
    };
    let identity = match tokio::time::timeout_at(deadline, sh.auth.authenticate(&req)).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(refusal)) => return Ok(refused(sh, ctx, refusal).await),
        Err(_) => {
            return Err(ConnError::protocol(
                Why::ConnectTimeout,
                "authentication did not finish within the connect timeout".into(),
            ))
        }
    };
    let binding = sh.auth.config().client_id;
    match bound_id(
        binding,
        identity.username.as_deref(),
        client_id,
        assigned.is_some(),
    ) {
        Ok(None) => {}
        Ok(Some(id)) => {
            *assigned = Some(id.to_string());
            drop(req);
            *client_id = id;
        }
        Err(why) => {
            sh.auth
                .refuse(&req, identity.method.as_str(), Refusal::NotAuthorized, why);
            return Ok(refused(sh, ctx, Refusal::NotAuthorized).await);
        }
    }
    Ok(Decision::Accept(identity))
}

/// A refusal after the CONNECT checks (the router's session identity check):
/// counted, logged and delayed like the others.
pub(super) async fn refuse_later(
    sh: &Shared,
    ctx: &ConnCtx,
    client_id: &str,
    identity: &Identity,
    why: &str,
) -> Code {
    let req = AuthRequest {
        listener: &ctx.listener.name,
        peer: Some(ctx.peer),
        client_id,
        username: identity.username.as_deref(),
        password: None,
        peer_identity: None,
    };
    sh.auth
        .refuse(&req, identity.method.as_str(), Refusal::NotAuthorized, why);
    match refused(sh, ctx, Refusal::NotAuthorized).await {
        Decision::Refuse(code) => code,
        Decision::Accept(_) => Code::NotAuthorized,
    }
}

/// Records the failure and waits its delay: a sleep, no CPU (the per-IP
/// connection limit bounds how many one address can hold).
async fn refused(sh: &Shared, ctx: &ConnCtx, refusal: Refusal) -> Decision {
    let penalty = sh.auth.penalty(&ctx.listener.name, Some(ctx.peer));
    tokio::time::sleep(penalty.delay).await;
    Decision::Refuse(match refusal {
        Refusal::BadCredentials => Code::BadUserNamePassword,
        Refusal::NotAuthorized => Code::NotAuthorized,
    })
}

/// Applies `auth.client_id`: `Ok(None)` keeps the client id, `Ok(Some)`
/// replaces an assigned (empty) one with the user name, `Err` refuses.
fn bound_id(
    binding: ClientIdBinding,
    username: Option<&str>,
    client_id: &str,
    was_empty: bool,
) -> Result<Option<Arc<str>>, &'static str> {
    if binding == ClientIdBinding::Any {
        return Ok(None);
    }
    let Some(user) = username else {
        return Err("client-id binding needs a user name");
    };
    if was_empty {
        return Ok(Some(Arc::from(user)));
    }
    let allowed = client_id == user
        || (binding == ClientIdBinding::UsernamePrefix
            && client_id
                .strip_prefix(user)
                .is_some_and(|rest| rest.starts_with(['-', ':'])));
    if allowed {
        Ok(None)
    } else {
        Err("client id not allowed for this user name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClientIdBinding::*;

    #[test]
    fn binding_rules() {
        assert_eq!(bound_id(Any, None, "x", false), Ok(None));
        assert_eq!(bound_id(Username, Some("dev1"), "dev1", false), Ok(None));
        assert!(bound_id(Username, Some("dev1"), "dev2", false).is_err());
        assert!(bound_id(Username, Some("dev1"), "dev1-a", false).is_err());
        assert!(bound_id(Username, None, "dev1", false).is_err());
        assert_eq!(
            bound_id(Username, Some("dev1"), "mqb-123", true),
            Ok(Some(Arc::from("dev1")))
        );
        for ok in ["dev1", "dev1-a", "dev1:b", "dev1-"] {
            assert_eq!(
                bound_id(UsernamePrefix, Some("dev1"), ok, false),
                Ok(None),
                "{ok}"
            );
        }
        for bad in ["dev10", "dev", "xdev1", "dev1_a", "dev1/a"] {
            assert!(
                bound_id(UsernamePrefix, Some("dev1"), bad, false).is_err(),
                "{bad}"
            );
        }
    }
}
