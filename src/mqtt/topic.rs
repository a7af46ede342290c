//! Topic names, topic filters, shared-subscription syntax and the
//! subscription tree used to match a PUBLISH against every filter.

use std::collections::HashMap;
use std::sync::Arc;

/// A topic name a client may publish to (MQTT-4.7.1/4.7.3).
pub fn valid_topic_name(t: &str) -> bool {
    !t.is_empty() && t.len() <= 65535 && !t.contains(['+', '#', '\0'])
}

/// A topic filter (MQTT-4.7.1): `#` only as the whole last level, `+` a whole level.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > 65535 || f.contains('\0') {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// A `$share/` filter without a valid group name or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidSharedFilter;

/// Splits `$share/{group}/{filter}` into `(group, filter)`; `Ok(None)` for a
/// plain filter.
pub fn parse_shared(f: &str) -> Result<Option<(&str, &str)>, InvalidSharedFilter> {
    let Some(rest) = f.strip_prefix("$share/") else {
        return Ok(None);
    };
    let (group, filter) = rest.split_once('/').ok_or(InvalidSharedFilter)?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_filter(filter) {
        return Err(InvalidSharedFilter);
    }
    Ok(Some((group, filter)))
}

/// Subscription options (MQTT 5 3.8.3.1; 3.1.1 uses the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

/// One subscription as the tree holds it.
#[derive(Debug, Clone)]
pub struct SubEntry {
    pub client: Arc<str>,
    /// Shared-subscription group, if any.
    pub group: Option<Arc<str>>,
    /// The filter as subscribed (without `$share/group/`), for shared-group keys.
    pub filter: Arc<str>,
    pub opts: SubOpts,
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Filters ending exactly at this node.
    exact: Vec<SubEntry>,
    /// Filters ending with `#` below this node (`a/#` lives on `a`).
    multi: Vec<SubEntry>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.exact.is_empty() && self.multi.is_empty()
    }
}

/// Subscription tree: matching cost grows with topic depth, not with the
/// number of subscriptions.
#[derive(Default, Debug)]
pub struct SubTree {
    root: Node,
    len: usize,
}

impl SubTree {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts or replaces the subscription of (client, group) on `entry.filter`.
    /// Returns true if it already existed.
    pub fn insert(&mut self, entry: SubEntry) -> bool {
        let filter = entry.filter.clone();
        let (node, multi) = Self::walk_mut(&mut self.root, &filter);
        let list = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        if let Some(e) = list
            .iter_mut()
            .find(|e| e.client == entry.client && e.group == entry.group)
        {
            *e = entry;
            return true;
        }
        list.push(entry);
        self.len += 1;
        false
    }

    fn walk_mut<'a>(mut node: &'a mut Node, filter: &str) -> (&'a mut Node, bool) {
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return (node, true);
            }
            node = node.children.entry(level.into()).or_default();
        }
        (node, false)
    }

    /// Removes the subscription of (client, group) on `filter`; true if it existed.
    pub fn remove(&mut self, filter: &str, client: &str, group: Option<&str>) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, client, group);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node, levels: &[&str], client: &str, group: Option<&str>) -> bool {
        let matches = |e: &SubEntry| &*e.client == client && e.group.as_deref() == group;
        let list = match levels {
            [] => &mut node.exact,
            ["#"] => &mut node.multi,
            [first, rest @ ..] => {
                let Some(child) = node.children.get_mut(*first) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, client, group);
                if child.is_empty() {
                    node.children.remove(*first);
                }
                return removed;
            }
        };
        let before = list.len();
        list.retain(|e| !matches(e));
        before != list.len()
    }

    /// Pushes every subscription matching `topic` into `out`.
    /// Topics starting with `$` are not matched by a leading wildcard (MQTT-4.7.2-1).
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<&'a SubEntry>) {
        let dollar = topic.starts_with('$');
        let levels: Vec<&str> = topic.split('/').collect();
        Self::match_at(&self.root, &levels, dollar, out);
    }

    fn match_at<'a>(node: &'a Node, levels: &[&str], no_wild: bool, out: &mut Vec<&'a SubEntry>) {
        if !no_wild {
            out.extend(node.multi.iter());
        }
        let Some((first, rest)) = levels.split_first() else {
            out.extend(node.exact.iter());
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::match_at(child, rest, false, out);
        }
        if !no_wild {
            if let Some(child) = node.children.get("+") {
                Self::match_at(child, rest, false, out);
            }
        }
    }
}

/// Whether `topic` matches `filter` (used for retained messages on subscribe).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests;
