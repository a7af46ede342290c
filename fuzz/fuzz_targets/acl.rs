//! The ACL (`mqbridge::acl`): Mosquitto's `acl_file` grammar on any text,
//! the compiled checks, and the filter questions with `filter_matches` as
//! the oracle.
//!
//! The input is (lossy) UTF-8: an `acl_file`, then optionally a line `---`
//! and lines of topics and filters. The file must parse or name a line that
//! exists; when it parses it is compiled for a client with and without a
//! user name, and a filter it accepts must only reach topics it may read,
//! and no `$` topic may be published. Every pair of consecutive valid
//! filters (A, F): `covers(A, F)` means each topic matching F matches A,
//! `intersects` holds for a topic matching both and is symmetric.
#![no_main]

use std::sync::Arc;

use mqbridge::acl::{file::parse, AclRules, Filter};
use mqbridge::mqtt::topic::{filter_matches, valid_filter, valid_topic_name};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (file, rest) = text.split_once("\n---\n").unwrap_or((&text, ""));
    let lines: Vec<&str> = rest.split('\n').take(64).collect();
    let topics: Vec<&str> = lines.iter().copied().filter(|l| valid_topic_name(l)).collect();
    let filters: Vec<&str> = lines.iter().copied().filter(|l| valid_filter(l)).collect();
    match parse(file) {
        Ok(rules) => {
            let rules = AclRules::new(rules, None).expect("no file to read");
            let client: Arc<str> = "c".into();
            for user in [None, Some(Arc::<str>::from("u"))] {
                let acl = rules.compile(&client, user.as_ref());
                for t in &topics {
                    assert!(!(t.starts_with('$') && acl.may_publish(t)), "{t:?}");
                }
                for f in filters.iter().filter(|f| acl.may_subscribe(f)) {
                    for t in topics.iter().filter(|t| filter_matches(f, t)) {
                        assert!(acl.may_read(t), "{f:?} granted, {t:?} not readable");
                    }
                }
            }
        }
        Err((line, _)) => assert!(line >= 1 && line <= file.lines().count(), "line {line}"),
    }
    for pair in filters.windows(2) {
        let (a, f) = (Filter::parse(pair[0]), Filter::parse(pair[1]));
        for t in &topics {
            assert_eq!(a.matches(t), filter_matches(pair[0], t), "{:?} {t:?}", pair[0]);
            if a.covers(&f) && filter_matches(pair[1], t) {
                assert!(filter_matches(pair[0], t), "{pair:?} covers, but not {t:?}");
            }
            if filter_matches(pair[0], t) && filter_matches(pair[1], t) {
                assert!(a.intersects(&f), "{pair:?} both match {t:?}");
            }
        }
        assert_eq!(a.intersects(&f), f.intersects(&a), "{pair:?}");
    }
});
