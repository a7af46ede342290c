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

/// Client-controlled size limits on topic names and filters
/// (`mqtt.max_topic_levels`, `mqtt.max_topic_bytes`). They bound the memory
/// and the work one topic costs (tree nodes, matching, levels split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    pub max_levels: usize,
    pub max_bytes: usize,
}

/// A topic name or filter over a [`TopicLimits`] limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicLimitError {
    #[error("more than {max} topic levels (mqtt.max_topic_levels)")]
    TooManyLevels { max: usize },
    #[error("{bytes} bytes exceed mqtt.max_topic_bytes ({max})")]
    TooLong { bytes: usize, max: usize },
}

impl TopicLimitError {
    /// The metric label of this refusal.
    pub fn reason(self) -> crate::metrics::TopicLimitReason {
        match self {
            TopicLimitError::TooManyLevels { .. } => {
                crate::metrics::TopicLimitReason::TooManyLevels
            }
            TopicLimitError::TooLong { .. } => crate::metrics::TopicLimitReason::TooLong,
        }
    }
}

impl TopicLimits {
    /// Checks a topic name or filter; of a `$share/{group}/{filter}`, the
    /// filter part (what the tree holds), so any topic that may be published
    /// may also be subscribed to through a shared group.
    pub fn check(&self, topic: &str) -> Result<(), TopicLimitError> {
        let t = match parse_shared(topic) {
            Ok(Some((_, f))) => f,
            _ => topic,
        };
        if t.len() > self.max_bytes {
            return Err(TopicLimitError::TooLong {
                bytes: t.len(),
                max: self.max_bytes,
            });
        }
        // Bounded by max_bytes above, so this scan is too.
        if t.bytes().filter(|b| *b == b'/').count() >= self.max_levels {
            return Err(TopicLimitError::TooManyLevels {
                max: self.max_levels,
            });
        }
        Ok(())
    }
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
    /// The client's ACL allowed the whole filter when this was last checked
    /// (at subscribe time, CONNECT or an ACL reload): a delivery through it
    /// needs no check. Otherwise each delivery is checked (a stored
    /// subscription the rules no longer cover is filtered, not deleted).
    pub covered: bool,
}

#[derive(Default, Debug)]
struct Node {
    /// Boxed: a map's buckets hold one pointer each, not a whole node, and
    /// most nodes of a device fleet's tree have one child.
    children: HashMap<Box<str>, Box<Node>>,
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

/// Dismantles the subtree iteratively: the derived drop would recurse once
/// per level, and a deep enough branch would overflow the stack.
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack: Vec<Box<Node>> = self.children.drain().map(|(_, c)| c).collect();
        while let Some(mut n) = stack.pop() {
            stack.extend(n.children.drain().map(|(_, c)| c));
        }
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
        if list.capacity() == 0 {
            // Most filters have one subscriber: no room for four.
            list.reserve_exact(1);
        }
        list.push(entry);
        self.len += 1;
        false
    }

    /// The subscription of (client, group) on `filter`, if any.
    pub fn get_mut(
        &mut self,
        filter: &str,
        client: &str,
        group: Option<&str>,
    ) -> Option<&mut SubEntry> {
        let mut levels = filter.split('/').peekable();
        let mut node = &mut self.root;
        let mut multi = false;
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                multi = true;
                break;
            }
            node = node.children.get_mut(level)?;
        }
        let list = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        list.iter_mut()
            .find(|e| &*e.client == client && e.group.as_deref() == group)
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
    /// Iterative (the depth is client-controlled): walk down along the path,
    /// remove the entry, then prune the highest node that became empty.
    pub fn remove(&mut self, filter: &str, client: &str, group: Option<&str>) -> bool {
        let matches = |e: &SubEntry| &*e.client == client && e.group.as_deref() == group;
        let mut levels: Vec<&str> = filter.split('/').collect();
        let multi = levels.last() == Some(&"#");
        if multi {
            levels.pop();
        }
        // `prune_from`: index of the first level whose node may be cut off
        // once the entry is gone (every node below it would be empty).
        let mut prune_from = None;
        let mut node = &self.root;
        for (i, level) in levels.iter().enumerate() {
            let Some(child) = node.children.get(*level) else {
                return false;
            };
            // The target's own lists are checked after the removal, below.
            let sole_path = i + 1 == levels.len()
                || (child.children.len() == 1 && child.exact.is_empty() && child.multi.is_empty());
            match (prune_from, sole_path) {
                (None, true) => prune_from = Some(i),
                (Some(_), false) => prune_from = None,
                _ => {}
            }
            node = child;
        }
        let mut node = &mut self.root;
        for level in &levels {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            node = child;
        }
        let list = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let before = list.len();
        list.retain(|e| !matches(e));
        if before == list.len() {
            return false;
        }
        self.len -= 1;
        // The target itself must end up empty for its branch to go.
        if node.is_empty() {
            if let Some(k) = prune_from {
                let mut parent = &mut self.root;
                for level in &levels[..k] {
                    match parent.children.get_mut(*level) {
                        Some(c) => parent = c,
                        None => return true,
                    }
                }
                parent.children.remove(levels[k]);
            }
        }
        true
    }

    /// Pushes every subscription matching `topic` into `out`.
    /// Topics starting with `$` are not matched by a leading wildcard (MQTT-4.7.2-1).
    /// Iterative with an explicit stack: the topic depth is client-controlled.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<&'a SubEntry>) {
        self.visit(topic, |entries| {
            out.extend(entries);
            true
        });
    }

    /// Whether any subscription matches `topic` (stops at the first).
    pub fn matches_any(&self, topic: &str) -> bool {
        let mut any = false;
        self.visit(topic, |entries| {
            any = !entries.is_empty();
            !any
        });
        any
    }

    /// Hands each group of entries matching `topic` to `f` until it returns
    /// false.
    fn visit<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a [SubEntry]) -> bool) {
        let levels: Vec<&str> = topic.split('/').collect();
        // (node, index of the next level, wildcards allowed at this node)
        let mut stack = vec![(&self.root, 0usize, !topic.starts_with('$'))];
        while let Some((node, i, wild)) = stack.pop() {
            if wild && !f(&node.multi) {
                return;
            }
            let Some(level) = levels.get(i) else {
                if !f(&node.exact) {
                    return;
                }
                continue;
            };
            if let Some(child) = node.children.get(*level) {
                stack.push((child, i + 1, true));
            }
            if wild {
                if let Some(child) = node.children.get("+") {
                    stack.push((child, i + 1, true));
                }
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
