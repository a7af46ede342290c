//! The topic filter of an ACL rule, split into levels once, and the three
//! questions the checks ask of it: does a topic match it, does it cover a
//! subscription filter, does it intersect another filter.
//!
//! All three follow MQTT's matching (`mqtt::topic::filter_matches`): `+` is
//! one level (possibly empty), `#` the rest including none (`a/#` matches
//! `a`), and a topic starting with `$` is not matched by a wildcard at the
//! first level (MQTT-4.7.2-1), so only rules starting with `$` reach it.

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    Exact(Box<str>),
    /// `+`
    Plus,
    /// `#` (always the last level)
    Hash,
}

/// A topic filter split into levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    levels: Box<[Level]>,
}

fn dollar(l: Option<&Level>) -> bool {
    matches!(l, Some(Level::Exact(s)) if s.starts_with('$'))
}

impl Filter {
    /// Splits `f`, which the caller has checked with `valid_filter`.
    pub fn parse(f: &str) -> Filter {
        let levels = f
            .split('/')
            .map(|l| match l {
                "+" => Level::Plus,
                "#" => Level::Hash,
                s => Level::Exact(s.into()),
            })
            .collect();
        Filter { levels }
    }

    /// Whether `topic` (a topic name) matches. No allocation: this runs for
    /// every PUBLISH, and for deliveries that need a check.
    pub fn matches(&self, topic: &str) -> bool {
        let dollar = topic.starts_with('$');
        let mut t = topic.split('/');
        for (i, l) in self.levels.iter().enumerate() {
            match l {
                Level::Hash => return !(i == 0 && dollar),
                Level::Plus => {
                    if (i == 0 && dollar) || t.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(s) => {
                    if t.next() != Some(&**s) {
                        return false;
                    }
                }
            }
        }
        t.next().is_none()
    }

    /// Whether every topic matching `f` matches `self`.
    pub fn covers(&self, f: &Filter) -> bool {
        let (a, f) = (&self.levels, &f.levels);
        let mut i = 0;
        loop {
            match (a.get(i), f.get(i)) {
                // The rest of any topic; at the first level, not a `$` topic.
                (Some(Level::Hash), fl) => return !(i == 0 && dollar(fl)),
                (None, None) => return true,
                // At the first level `#` is every (non-`$`) topic, which
                // `+/#` covers too; further down it includes the parent
                // (`a/#` matches `a`), which only `#` covers.
                (Some(Level::Plus), Some(Level::Hash)) if i == 0 => {
                    return matches!(a.get(1), Some(Level::Hash))
                }
                (_, Some(Level::Hash)) => return false,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::Plus), fl @ Some(_)) => {
                    if i == 0 && dollar(fl) {
                        return false;
                    }
                }
                (Some(Level::Exact(_)), Some(Level::Plus)) => return false,
                (Some(Level::Exact(x)), Some(Level::Exact(y))) => {
                    if x != y {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }

    /// Whether some topic matches both `self` and `o`.
    pub fn intersects(&self, o: &Filter) -> bool {
        let (a, b) = (&self.levels, &o.levels);
        let mut i = 0;
        loop {
            match (a.get(i), b.get(i)) {
                (None, None) => return true,
                // Any remainder of the other has a matching topic; only the
                // `$` rule at the first level can rule it out.
                (Some(Level::Hash), other) | (other, Some(Level::Hash)) => {
                    return !(i == 0 && dollar(other))
                }
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::Plus), Some(Level::Plus)) => {}
                (Some(Level::Plus), x @ Some(Level::Exact(_)))
                | (x @ Some(Level::Exact(_)), Some(Level::Plus)) => {
                    if i == 0 && dollar(x) {
                        return false;
                    }
                }
                (Some(Level::Exact(x)), Some(Level::Exact(y))) => {
                    if x != y {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }
}
