//! Keep-alive negotiation against `mqtt.max_keepalive_secs` (a cap, as
//! Mosquitto's `max_keepalive`): nobody's keep-alive is shortened without
//! being told.

use crate::mqtt::codec::Version;

/// The keep-alive a connection runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Seconds used for the connection (0 = never closed for silence).
    pub secs: u16,
    /// 5.0 Server Keep Alive to announce in CONNACK, when it differs from the request.
    pub announce: Option<u16>,
}

/// The keep-alive for a client that asked for `asked`, or `None` when a
/// 3.1.1 client asked for more than the cap (0 counts as more): it cannot be
/// told a shorter one, so it is refused.
pub fn negotiate(version: Version, asked: u16, max: Option<u16>) -> Option<KeepAlive> {
    let over = |max: u16| asked == 0 || asked > max;
    match max {
        Some(max) if over(max) => match version {
            Version::V5 => Some(KeepAlive {
                secs: max,
                announce: Some(max),
            }),
            Version::V311 => None,
        },
        _ => Some(KeepAlive {
            secs: asked,
            announce: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ka(secs: u16, announce: Option<u16>) -> Option<KeepAlive> {
        Some(KeepAlive { secs, announce })
    }

    #[test]
    fn without_a_cap_the_client_keeps_its_own() {
        for v in [Version::V311, Version::V5] {
            assert_eq!(negotiate(v, 0, None), ka(0, None));
            assert_eq!(negotiate(v, 600, None), ka(600, None));
        }
    }

    #[test]
    fn v5_over_the_cap_or_zero_is_told_the_cap() {
        assert_eq!(negotiate(Version::V5, 600, Some(60)), ka(60, Some(60)));
        assert_eq!(negotiate(Version::V5, 0, Some(60)), ka(60, Some(60)));
        assert_eq!(negotiate(Version::V5, 60, Some(60)), ka(60, None));
        assert_eq!(negotiate(Version::V5, 5, Some(60)), ka(5, None));
    }

    #[test]
    fn v311_over_the_cap_or_zero_is_refused() {
        assert_eq!(negotiate(Version::V311, 61, Some(60)), None);
        assert_eq!(negotiate(Version::V311, 0, Some(60)), None);
        assert_eq!(negotiate(Version::V311, 60, Some(60)), ka(60, None));
        assert_eq!(negotiate(Version::V311, 5, Some(60)), ka(5, None));
    }
}
