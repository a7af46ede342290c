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
