//! Topic names, filters, `$share/` parsing and the subscription tree
//! (`mqtt::topic`), with `filter_matches` as the oracle for the tree.
//!
//! The input is lines of (lossy) UTF-8; each line is one step:
//! - `s<c><filter>`: client `c` subscribes (accepted as the connection does:
//!   `valid_filter` and `parse_shared`),
//! - `u<c><filter>`: client `c` unsubscribes,
//! - anything else: a topic name published; the tree must return exactly the
//!   subscriptions whose filter `filter_matches` the topic.
//!
//! A model map checks `insert`/`remove` results and `len`; at the end every
//! subscription is removed and the tree must be as empty as a new one.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use mqbridge::mqtt::topic::{
    filter_matches, parse_shared, valid_filter, valid_topic_name, SubEntry, SubOpts, SubTree,
};

/// (filter in the tree, client, shared group)
type Key = (String, String, Option<String>);

/// Properties of the validators that hold for any string.
fn check_validators(s: &str) {
    if valid_topic_name(s) {
        assert!(valid_filter(s), "a topic name is also a filter: {s:?}");
        assert!(filter_matches(s, s), "a topic name matches itself: {s:?}");
    }
    if let Ok(Some((group, filter))) = parse_shared(s) {
        assert!(!group.is_empty() && !group.contains(['+', '#', '/']));
        assert!(valid_filter(filter));
        assert_eq!(s, format!("$share/{group}/{filter}"));
    }
}

/// The key the router uses for a subscribe/unsubscribe to `raw`, if accepted.
fn key_of(raw: &str, client: &str) -> Option<Key> {
    if !valid_filter(raw) {
        return None;
    }
    match parse_shared(raw) {
        Ok(Some((g, f))) => Some((f.to_string(), client.to_string(), Some(g.to_string()))),
        Ok(None) => Some((raw.to_string(), client.to_string(), None)),
        Err(_) => None,
    }
}

fn check_match(tree: &SubTree, model: &BTreeMap<Key, ()>, topic: &str) {
    let mut found = Vec::new();
    tree.matches(topic, &mut found);
    let mut got: Vec<Key> = found
        .iter()
        .map(|e| {
            let group = e.group.as_deref().map(str::to_string);
            (e.filter.to_string(), e.client.to_string(), group)
        })
        .collect();
    got.sort();
    let want: Vec<Key> = model
        .keys()
        .filter(|(f, _, _)| filter_matches(f, topic))
        .cloned()
        .collect();
    assert_eq!(got, want, "topic {topic:?}");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut tree = SubTree::default();
    let mut model = BTreeMap::new();
    let opts = SubOpts {
        qos: 1,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
        subscription_id: None,
    };
    for line in text.split('\n').take(64) {
        check_validators(line);
        let mut chars = line.chars();
        let (op, client) = (chars.next(), chars.next().map(|c| u32::from(c) % 4));
        let rest = chars.as_str();
        match (op, client) {
            (Some('s'), Some(c)) => {
                check_validators(rest);
                let Some(key) = key_of(rest, &format!("c{c}")) else {
                    continue;
                };
                let entry = SubEntry {
                    client: Arc::from(key.1.as_str()),
                    group: key.2.as_deref().map(Arc::from),
                    filter: Arc::from(key.0.as_str()),
                    opts,
                    covered: true,
                };
                let existed = tree.insert(entry);
                assert_eq!(existed, model.insert(key, ()).is_some());
            }
            (Some('u'), Some(c)) => {
                check_validators(rest);
                let Some(key) = key_of(rest, &format!("c{c}")) else {
                    continue;
                };
                let removed = tree.remove(&key.0, &key.1, key.2.as_deref());
                assert_eq!(removed, model.remove(&key).is_some());
            }
            _ if valid_topic_name(line) => check_match(&tree, &model, line),
            _ => {}
        }
        assert_eq!(tree.len(), model.len());
    }
    for (filter, client, group) in model.keys() {
        assert!(tree.remove(filter, client, group.as_deref()));
    }
    assert!(tree.is_empty());
    // Removal prunes the nodes it emptied: nothing is left behind.
    assert_eq!(format!("{tree:?}"), format!("{:?}", SubTree::default()));
});
