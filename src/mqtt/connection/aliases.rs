//! Outgoing topic aliases (MQTT 5.0 3.3.2.3.4): a repeated topic is sent as
//! a two-byte alias instead of the whole name, which is most of a small
//! message on a metered link. Per connection (the spec resets them on every
//! connect), never more than the client's Topic Alias Maximum nor our own
//! cap; when full, the least recently used alias is reassigned.

use std::collections::HashMap;

/// How to send one PUBLISH's topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// No alias: the topic as is.
    None,
    /// Topic and a (new or reassigned) alias: the client learns the mapping.
    Assign(u16),
    /// The alias alone, with an empty topic name.
    Known(u16),
}

/// The alias table of one connection. Bounded by `max` entries.
#[derive(Debug, Default)]
pub struct OutAliases {
    max: u16,
    /// Topic -> (alias, last use).
    by_topic: HashMap<String, (u16, u64)>,
    clock: u64,
}

impl OutAliases {
    /// `client_max`: the client's Topic Alias Maximum (0 or absent: none);
    /// `our_max`: `mqtt.max_outgoing_topic_aliases`.
    pub fn new(client_max: u16, our_max: u16) -> OutAliases {
        OutAliases {
            max: client_max.min(our_max),
            ..OutAliases::default()
        }
    }

    /// How `topic` would be sent now; nothing changes until [`Self::sent`].
    pub fn lookup(&self, topic: &str) -> AliasUse {
        if self.max == 0 || topic.is_empty() {
            return AliasUse::None;
        }
        if let Some((alias, _)) = self.by_topic.get(topic) {
            return AliasUse::Known(*alias);
        }
        let len = self.by_topic.len();
        if len < usize::from(self.max) {
            // Aliases 1..=max; entries are only ever replaced, so the next free one is len + 1.
            return AliasUse::Assign(len as u16 + 1);
        }
        // Least recently used: a scan, bounded by `max` and only on a miss.
        let lru = self.by_topic.values().min_by_key(|(_, used)| *used);
        lru.map_or(AliasUse::None, |(alias, _)| AliasUse::Assign(*alias))
    }

    /// Records that the PUBLISH went out as `how` said (a PUBLISH that was not
    /// written must not teach the table an alias the client never saw).
    pub fn sent(&mut self, topic: &str, how: AliasUse) {
        self.clock += 1;
        match how {
            AliasUse::None => {}
            AliasUse::Known(_) => {
                if let Some(e) = self.by_topic.get_mut(topic) {
                    e.1 = self.clock;
                }
            }
            AliasUse::Assign(alias) => {
                self.by_topic.retain(|_, (a, _)| *a != alias);
                self.by_topic.insert(topic.to_string(), (alias, self.clock));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(t: &mut OutAliases, topic: &str) -> AliasUse {
        let how = t.lookup(topic);
        t.sent(topic, how);
        how
    }

    #[test]
    fn assigns_then_reuses_and_replaces_the_least_recently_used() {
        let mut t = OutAliases::new(2, 64);
        assert_eq!(send(&mut t, "a"), AliasUse::Assign(1));
        assert_eq!(send(&mut t, "a"), AliasUse::Known(1));
        assert_eq!(send(&mut t, "b"), AliasUse::Assign(2));
        assert_eq!(send(&mut t, "a"), AliasUse::Known(1));
        // Full: "b" is the least recently used, its alias goes to "c".
        assert_eq!(send(&mut t, "c"), AliasUse::Assign(2));
        assert_eq!(send(&mut t, "b"), AliasUse::Assign(1));
        assert_eq!(send(&mut t, "c"), AliasUse::Known(2));
        assert!(t.by_topic.len() <= 2);
    }

    #[test]
    fn none_when_the_client_allows_none_and_capped_by_ours() {
        let mut t = OutAliases::new(0, 64);
        assert_eq!(send(&mut t, "a"), AliasUse::None);
        let mut t = OutAliases::new(100, 1);
        assert_eq!(send(&mut t, "a"), AliasUse::Assign(1));
        assert_eq!(send(&mut t, "b"), AliasUse::Assign(1));
        assert_eq!(send(&mut t, "a"), AliasUse::Assign(1));
    }

    #[test]
    fn an_unsent_assignment_is_not_learned() {
        let t = OutAliases::new(2, 64);
        assert_eq!(t.lookup("a"), AliasUse::Assign(1));
        assert_eq!(t.lookup("a"), AliasUse::Assign(1));
    }
}
