use super::*;

fn entry(client: &str, filter: &str, qos: u8) -> SubEntry {
    SubEntry {
        client: client.into(),
        group: None,
        filter: filter.into(),
        opts: SubOpts {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
        },
        covered: true,
    }
}

fn matched(tree: &SubTree, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    tree.matches(topic, &mut out);
    let mut v: Vec<String> = out
        .iter()
        .map(|e| format!("{}:{}", e.client, e.filter))
        .collect();
    v.sort();
    v
}

#[test]
fn filter_validation() {
    for ok in [
        "a", "a/b", "+", "#", "a/+/b", "a/#", "+/+", "/", "a//b", "$SYS/#",
    ] {
        assert!(valid_filter(ok), "{ok} should be valid");
    }
    for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "##", "a/\0"] {
        assert!(!valid_filter(bad), "{bad:?} should be invalid");
    }
    assert!(valid_topic_name("a/b"));
    for bad in ["", "a/+", "a/#", "x\0"] {
        assert!(!valid_topic_name(bad));
    }
}

#[test]
fn shared_syntax() {
    assert_eq!(parse_shared("$share/g/a/+"), Ok(Some(("g", "a/+"))));
    assert_eq!(parse_shared("a/b"), Ok(None));
    assert!(parse_shared("$share/g").is_err());
    assert!(parse_shared("$share//a").is_err());
    assert!(parse_shared("$share/g+/a").is_err());
}

#[test]
fn tree_matches_wildcards() {
    let mut t = SubTree::default();
    for (c, f) in [
        ("1", "a/b"),
        ("2", "a/+"),
        ("3", "a/#"),
        ("4", "#"),
        ("5", "+/b"),
        ("6", "a/b/c"),
    ] {
        t.insert(entry(c, f, 1));
    }
    assert_eq!(
        matched(&t, "a/b"),
        ["1:a/b", "2:a/+", "3:a/#", "4:#", "5:+/b"]
    );
    assert_eq!(matched(&t, "a"), ["3:a/#", "4:#"]);
    assert_eq!(matched(&t, "a/b/c"), ["3:a/#", "4:#", "6:a/b/c"]);
    assert_eq!(matched(&t, "x/y"), ["4:#"]);
}

/// `matches_any` agrees with `matches` on whether anything matches.
#[test]
fn tree_matches_any_agrees_with_matches() {
    let mut t = SubTree::default();
    assert!(!t.matches_any("a/b"));
    for (c, f) in [("1", "a/+/c"), ("2", "x/#"), ("3", "$SYS/x")] {
        t.insert(entry(c, f, 1));
    }
    for topic in [
        "a/b/c", "a/b", "x", "x/y/z", "y", "$SYS/x", "$SYS/y", "a/b/c/d",
    ] {
        assert_eq!(
            t.matches_any(topic),
            !matched(&t, topic).is_empty(),
            "{topic}"
        );
    }
}

#[test]
fn dollar_topics_skip_leading_wildcards() {
    let mut t = SubTree::default();
    for (c, f) in [("1", "#"), ("2", "+/x"), ("3", "$SYS/#"), ("4", "$SYS/x")] {
        t.insert(entry(c, f, 0));
    }
    assert_eq!(matched(&t, "$SYS/x"), ["3:$SYS/#", "4:$SYS/x"]);
    assert!(!filter_matches("#", "$SYS/x"));
    assert!(filter_matches("$SYS/#", "$SYS/x"));
}

#[test]
fn insert_replaces_and_remove_prunes() {
    let mut t = SubTree::default();
    assert!(!t.insert(entry("c", "a/+", 0)));
    assert!(t.insert(entry("c", "a/+", 2)));
    assert_eq!(t.len(), 1);
    let mut out = Vec::new();
    t.matches("a/x", &mut out);
    assert_eq!(out[0].opts.qos, 2);
    assert!(t.remove("a/+", "c", None));
    assert!(!t.remove("a/+", "c", None));
    assert!(t.is_empty());
    assert!(t.root.is_empty(), "empty nodes are pruned");
}

#[test]
fn filter_matches_agrees_with_tree() {
    let filters = ["a/b", "a/+", "a/#", "#", "+/+", "+", "a/+/c", "/#", "+/"];
    let topics = ["a", "a/b", "a/b/c", "/", "/x", "x", "a/", "$s/a"];
    for f in filters {
        let mut t = SubTree::default();
        t.insert(entry("c", f, 0));
        for topic in topics {
            assert_eq!(
                !matched(&t, topic).is_empty(),
                filter_matches(f, topic),
                "filter {f} topic {topic}"
            );
        }
    }
}

#[test]
fn topic_limits_count_levels_and_bytes() {
    let l = TopicLimits {
        max_levels: 3,
        max_bytes: 10,
    };
    assert_eq!(l.check("a/b/c"), Ok(()));
    assert_eq!(
        l.check("a/b/c/d"),
        Err(TopicLimitError::TooManyLevels { max: 3 })
    );
    assert_eq!(l.check("//"), Ok(()), "empty levels count: 3 here");
    assert!(l.check("///").is_err());
    assert_eq!(
        l.check("abcdefghijk"),
        Err(TopicLimitError::TooLong { bytes: 11, max: 10 })
    );
    // Of a shared subscription, the filter part counts.
    assert_eq!(l.check("$share/group/a/b/c"), Ok(()));
    assert!(l.check("$share/group/a/b/c/d").is_err());
}

/// Insert, match, remove and drop must not recurse per level: a topic far
/// deeper than any limit allows would overflow the test thread's stack.
#[test]
fn deep_filters_do_not_recurse() {
    let deep = vec!["x"; 200_000].join("/");
    let mut t = SubTree::default();
    t.insert(entry("c", &deep, 1));
    t.insert(entry("d", &format!("{deep}/#"), 1));
    t.insert(entry("e", &format!("{deep}/+"), 1));
    assert_eq!(
        matched(&t, &deep),
        [format!("c:{deep}"), format!("d:{deep}/#")]
    );
    assert_eq!(matched(&t, &format!("{deep}/x")).len(), 2);
    assert!(t.remove(&deep, "c", None));
    assert!(t.remove(&format!("{deep}/+"), "e", None));
    assert!(!t.root.is_empty(), "d's branch is still there");
    assert!(t.remove(&format!("{deep}/#"), "d", None));
    assert!(t.root.is_empty());
    // A deep tree dropped as a whole.
    t.insert(entry("c", &deep, 1));
    drop(t);
}

#[test]
fn remove_prunes_only_the_dead_branch() {
    let mut t = SubTree::default();
    t.insert(entry("1", "a/b/c/d", 0));
    t.insert(entry("2", "a/b", 0));
    t.insert(entry("3", "a/x/#", 0));
    assert!(t.remove("a/b/c/d", "1", None));
    // a/b stays (it holds 2), its c/d branch is gone.
    let b = &t.root.children["a"].children["b"];
    assert!(b.children.is_empty());
    assert_eq!(matched(&t, "a/b"), ["2:a/b"]);
    assert!(t.remove("a/b", "2", None));
    assert_eq!(t.root.children["a"].children.len(), 1, "only x remains");
    assert!(t.remove("a/x/#", "3", None));
    assert!(t.root.is_empty());
    // Removing what is not there changes nothing.
    t.insert(entry("1", "a/b", 0));
    assert!(!t.remove("a/b/c", "1", None));
    assert!(!t.remove("a/b", "other", None));
    assert_eq!(matched(&t, "a/b"), ["1:a/b"]);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A level of a filter: plain (incl. empty and `$`), `+`, or `#` (last only).
    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "$s", "+"]);
        (prop::collection::vec(level, 1..5), any::<bool>())
            .prop_map(|(mut v, multi)| {
                if multi {
                    v.push("#");
                }
                v.join("/")
            })
            .prop_filter("filters are not empty", |f| !f.is_empty())
    }

    fn topic() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "$s", "c"]);
        prop::collection::vec(level, 1..6).prop_map(|v| v.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The tree finds exactly the filters the naive matcher accepts, and
        /// removing them all leaves an empty tree.
        #[test]
        fn tree_agrees_with_filter_matches(
            filters in prop::collection::vec(filter(), 1..12),
            topics in prop::collection::vec(topic(), 1..8),
        ) {
            let mut t = SubTree::default();
            for (i, f) in filters.iter().enumerate() {
                prop_assert!(valid_filter(f), "generated {f:?}");
                t.insert(entry(&i.to_string(), f, 0));
            }
            for topic in &topics {
                let mut want: Vec<String> = filters
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| filter_matches(f, topic))
                    .map(|(i, f)| format!("{i}:{f}"))
                    .collect();
                want.sort();
                prop_assert_eq!(matched(&t, topic), want, "topic {:?}", topic);
            }
            for (i, f) in filters.iter().enumerate() {
                prop_assert!(t.remove(f, &i.to_string(), None));
            }
            prop_assert!(t.is_empty());
            prop_assert!(t.root.is_empty(), "every node pruned");
        }
    }
}
