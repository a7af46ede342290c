use std::sync::Arc;

use proptest::prelude::*;

use super::file::parse;
use super::*;
use crate::mqtt::topic::{filter_matches, valid_filter};

/// Every topic of 1..=max_levels levels over `alphabet`.
fn topics(alphabet: &[&str], max_levels: usize) -> Vec<String> {
    let mut all: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
    let mut last = all.clone();
    for _ in 1..max_levels {
        let next: Vec<String> = last
            .iter()
            .flat_map(|t| alphabet.iter().map(move |l| format!("{t}/{l}")))
            .collect();
        all.extend(next.iter().cloned());
        last = next;
    }
    all
}

fn filter_strategy() -> impl Strategy<Value = String> {
    let level = prop::sample::select(vec!["a", "b", "", "$s", "+"]);
    (prop::collection::vec(level, 0..4), any::<bool>()).prop_map(|(levels, hash)| {
        if levels.is_empty() {
            return "#".to_string();
        }
        let mut f = levels.join("/");
        if hash {
            f.push_str("/#");
        }
        f
    })
}

/// Topics over the filters' literals and others, one level longer than either.
fn domain() -> Vec<String> {
    topics(&["a", "b", "", "$s", "z"], 5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn matches_agrees_with_filter_matches(f in filter_strategy()) {
        prop_assume!(valid_filter(&f));
        let parsed = Filter::parse(&f);
        for t in domain() {
            prop_assert_eq!(parsed.matches(&t), filter_matches(&f, &t), "{} vs {}", f, t);
        }
    }

    /// covers(A, F) exactly when no topic matches F but not A.
    #[test]
    fn covers_is_sound_and_complete(a in filter_strategy(), f in filter_strategy()) {
        let covers = Filter::parse(&a).covers(&Filter::parse(&f));
        let counter = domain()
            .into_iter()
            .find(|t| filter_matches(&f, t) && !filter_matches(&a, t));
        prop_assert_eq!(covers, counter.is_none(), "{} covers {}? counterexample {:?}", a, f, counter);
    }

    /// intersects(A, B) exactly when some topic matches both.
    #[test]
    fn intersects_is_sound_and_complete(a in filter_strategy(), b in filter_strategy()) {
        let both = Filter::parse(&a).intersects(&Filter::parse(&b));
        let witness = domain()
            .into_iter()
            .find(|t| filter_matches(&a, t) && filter_matches(&b, t));
        prop_assert_eq!(both, witness.is_some(), "{} meets {}? witness {:?}", a, b, witness);
        prop_assert_eq!(both, Filter::parse(&b).intersects(&Filter::parse(&a)));
    }

    /// A subscription the ACL accepts never matches a topic it may not read.
    #[test]
    fn accepted_filters_only_reach_readable_topics(
        rules in prop::collection::vec((any::<bool>(), filter_strategy()), 0..4),
        f in filter_strategy(),
    ) {
        let rules = rules
            .into_iter()
            .map(|(allow, topic)| Rule {
                permission: if allow { Permission::Allow } else { Permission::Deny },
                action: RuleAction::Subscribe,
                who: Who::Everyone,
                topic,
                substitute: false,
            })
            .collect();
        let acl = acl_of(rules, "c", None);
        if acl.may_subscribe(&f) {
            for t in domain().iter().filter(|t| filter_matches(&f, t)) {
                prop_assert!(acl.may_read(t), "{} accepted but {} not readable", f, t);
            }
        }
    }
}

fn acl_of(rules: Vec<Rule>, client: &str, user: Option<&str>) -> ClientAcl {
    let rules = AclRules::new(rules, None).expect("no file");
    let client: Arc<str> = client.into();
    let user: Option<Arc<str>> = user.map(Into::into);
    rules.compile(&client, user.as_ref())
}

fn rule(permission: Permission, action: RuleAction, topic: &str) -> Rule {
    Rule {
        permission,
        action,
        who: Who::Everyone,
        topic: topic.into(),
        substitute: true,
    }
}

/// The reference layout: devices publish below `devices/<user>/` (not their
/// commands) and subscribe to their own commands only.
fn reference() -> Vec<Rule> {
    use Permission::*;
    use RuleAction::*;
    vec![
        rule(Deny, Publish, "devices/%u/commands/#"),
        rule(Allow, Publish, "devices/%u/#"),
        rule(Allow, Subscribe, "devices/%u/commands"),
    ]
}

#[test]
fn reference_rules_keep_a_device_in_its_lane() {
    let a = acl_of(reference(), "devA", Some("devA"));
    assert!(a.may_publish("devices/devA/telemetry"));
    assert!(a.may_publish("devices/devA/telemetry/x"));
    assert!(
        !a.may_publish("devices/devA/commands"),
        "own commands: deny first"
    );
    assert!(!a.may_publish("devices/devB/commands"));
    assert!(!a.may_publish("devices/devB/telemetry"));
    assert!(a.may_subscribe("devices/devA/commands"));
    assert!(a.may_read("devices/devA/commands"));
    assert!(!a.may_subscribe("devices/+/commands"), "wider than allowed");
    assert!(!a.may_subscribe("devices/#"));
    assert!(!a.may_subscribe("#"));
    assert!(!a.may_read("devices/devB/commands"));
}

#[test]
fn no_rules_allow_everything_but_dollar_publishing() {
    let open = acl_of(Vec::new(), "x", None);
    assert!(open.is_open());
    assert!(open.may_publish("a/b"));
    assert!(open.may_subscribe("#"));
    assert!(open.may_read("$SYS/x"));
    assert!(!open.may_publish("$SYS/x"));
    assert!(!open.may_publish("$foo"));
}

#[test]
fn rules_for_others_leave_a_client_with_nothing() {
    let mut r = rule(Permission::Allow, RuleAction::Both, "#");
    r.who = Who::Users(vec!["ops".into()]);
    let ops = acl_of(vec![r.clone()], "o", Some("ops"));
    assert!(ops.may_publish("x") && ops.may_subscribe("#"));
    let other = acl_of(vec![r], "d", Some("dev"));
    assert!(!other.may_publish("x") && !other.may_subscribe("x") && !other.may_read("x"));
}

#[test]
fn substitution_refuses_values_that_would_change_the_filter() {
    for (client, user) in [("a/b", "a/b"), ("+", "+"), ("#", "#"), ("", "")] {
        let mut rules = reference();
        rules.push(rule(Permission::Allow, RuleAction::Both, "c/%c"));
        let acl = acl_of(rules, client, Some(user));
        assert!(!acl.may_publish(&format!("devices/{user}/x")), "{user:?}");
        assert!(!acl.may_publish(&format!("c/{client}")), "{client:?}");
        assert!(!acl.may_publish("devices/a/b/x"));
    }
    // %u without a user name: the rule does not apply.
    let anon = acl_of(reference(), "devA", None);
    assert!(!anon.may_publish("devices/devA/x"));
    assert!(!anon.may_publish("devices//x"));
}

#[test]
fn a_deny_before_the_covering_allow_refuses_the_subscription() {
    use Permission::*;
    use RuleAction::*;
    let rules = vec![
        rule(Deny, Subscribe, "a/secret"),
        rule(Allow, Subscribe, "a/#"),
    ];
    let acl = acl_of(rules, "c", None);
    assert!(!acl.may_subscribe("a/#"), "intersects the deny");
    assert!(!acl.may_subscribe("a/+"));
    assert!(acl.may_subscribe("a/public/#"));
    assert!(acl.may_read("a/x"));
    assert!(!acl.may_read("a/secret"));
    // A union of allows is not attempted.
    let rules = vec![rule(Allow, Subscribe, "a/x"), rule(Allow, Subscribe, "a/y")];
    assert!(!acl_of(rules, "c", None).may_subscribe("a/+"));
}

#[test]
fn mosquitto_file_grammar() {
    let text = "# comment\n\
                \n\
                topic read public/#\n\
                user devA\n\
                topic readwrite devices/devA/#\n\
                topic deny devices/devA/commands/secret\n\
                topic write   has space/x \r\n\
                user ops team\n\
                topic #\n\
                pattern read devices/%u/commands\n\
                pattern deny %c/private\n";
    let rules = parse(text).expect("valid file");
    let order: Vec<(Permission, bool, &str)> = rules
        .iter()
        .map(|r| (r.permission, r.substitute, r.topic.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            (Permission::Deny, false, "devices/devA/commands/secret"),
            (Permission::Allow, false, "public/#"),
            (Permission::Allow, false, "devices/devA/#"),
            (Permission::Allow, false, "has space/x"),
            (Permission::Allow, false, "#"),
            (Permission::Deny, true, "%c/private"),
            (Permission::Allow, true, "devices/%u/commands"),
        ]
    );
    assert_eq!(rules[1].who, Who::Anonymous);
    assert_eq!(rules[1].action, RuleAction::Subscribe);
    assert_eq!(rules[3].action, RuleAction::Publish);
    assert_eq!(rules[4].who, Who::Users(vec!["ops team".into()]));
    assert_eq!(rules[4].action, RuleAction::Both);
    assert_eq!(rules[0].action, RuleAction::Both);

    let rules = AclRules::new(rules, None).expect("no file");
    let dev_a = rules.compile(&"devA".into(), Some(&"devA".into()));
    assert!(dev_a.may_publish("devices/devA/x"));
    assert!(!dev_a.may_publish("devices/devA/commands/secret"));
    assert!(!dev_a.may_read("public/x"), "anonymous only");
    let anon = rules.compile(&"devA".into(), None);
    assert!(anon.may_subscribe("public/#"));
    assert!(!anon.may_publish("public/x"));
    assert!(!anon.may_read("devA/private"));
}

#[test]
fn mosquitto_file_errors_name_the_line() {
    for (text, line) in [
        ("topic read a\nbogus x\n", 2),
        ("user\n", 1),
        ("\n\ntopic read\n", 3),
        ("topic a/#/b\n", 1),
        ("pattern deny\n", 1),
        ("topic\ta\n", 1),
    ] {
        match parse(text) {
            Err((n, _)) => assert_eq!(n, line, "{text:?}"),
            Ok(r) => panic!("{text:?} parsed as {r:?}"),
        }
    }
}

fn problems(cfg: &crate::config::Config) -> Vec<String> {
    match cfg.validate() {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn config_rules_are_validated_with_their_keys() {
    use crate::config::{AclRuleConfig, Config};
    let mut cfg = Config::default();
    let good = AclRuleConfig {
        permission: "allow".into(),
        action: "both".into(),
        topic: "devices/%u/#".into(),
        users: None,
    };
    cfg.acl.rules = vec![
        good.clone(),
        AclRuleConfig {
            permission: "permit".into(),
            action: "read".into(),
            topic: "a/#/b".into(),
            users: Some(vec![]),
        },
        AclRuleConfig {
            users: Some(vec!["ops".into(), String::new()]),
            ..good.clone()
        },
    ];
    let p = problems(&cfg);
    for key in [
        "acl.rules[1].permission",
        "acl.rules[1].action",
        "acl.rules[1].topic",
        "acl.rules[1].users",
        "acl.rules[2].users",
    ] {
        assert!(p.iter().any(|e| e.starts_with(key)), "{key} in {p:?}");
    }
    assert!(!p.iter().any(|e| e.starts_with("acl.rules[0]")), "{p:?}");
    cfg.acl.rules = vec![good];
    let v = cfg.validate().expect("valid");
    assert_eq!(v.acl_rules().rules().len(), 1);
}

#[test]
fn a_bad_acl_file_is_a_config_error_naming_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acl");
    std::fs::write(
        &path,
        "user devA\ntopic readwrite devices/devA/#\ntopik x\n",
    )
    .expect("write");
    let mut cfg = crate::config::Config::default();
    cfg.acl.file = path.clone();
    let p = problems(&cfg);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("acl.file: ") && p[0].contains("line 3"),
        "{p:?}"
    );
    cfg.acl.file = dir.path().join("missing");
    let p = problems(&cfg);
    assert!(p.len() == 1 && p[0].starts_with("acl.file: "), "{p:?}");
}

#[test]
fn the_reference_acl_file_keeps_devices_in_their_lanes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/acl-reference.acl");
    let rules = AclRules::new(Vec::new(), Some(path)).expect("reference file parses");
    let a = rules.compile(&"devA".into(), Some(&"devA".into()));
    assert!(a.may_publish("devices/devA/telemetry"));
    assert!(!a.may_publish("devices/devB/commands"));
    assert!(a.may_subscribe("devices/devA/commands"));
    assert!(!a.may_subscribe("devices/+/commands"));
    assert!(!a.may_read("devices/devB/commands"));
}

#[test]
fn reload_keeps_the_old_rules_when_the_file_goes_bad() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acl");
    std::fs::write(&path, "pattern readwrite a/%c/#\n").expect("write");
    let acl = Acl::new(
        AclRules::new(Vec::new(), Some(path.clone())).expect("valid"),
        AclMetrics::unregistered(),
    );
    let client: Arc<str> = "c1".into();
    let mut conn = acl.compile(&client, None);
    assert!(conn.current(&acl).may_publish("a/c1/x"));
    std::fs::write(&path, "pattern readwrite b/%c/#\n").expect("write");
    assert!(acl.reload().expect("good file"));
    assert!(!conn.current(&acl).may_publish("a/c1/x"), "recompiled");
    assert!(conn.current(&acl).may_publish("b/c1/x"));
    assert!(
        !acl.reload().expect("unchanged"),
        "same rules: no new generation"
    );
    std::fs::write(&path, "nonsense\n").expect("write");
    assert!(acl.reload().is_err());
    assert!(conn.current(&acl).may_publish("b/c1/x"), "old rules kept");
}

#[test]
fn per_user_rules_keep_their_place_among_the_others() {
    use Permission::*;
    use RuleAction::*;
    let for_users = |p, topic: &str, users: &[&str]| Rule {
        who: Who::Users(users.iter().map(|u| Arc::from(*u)).collect()),
        ..rule(p, Publish, topic)
    };
    let rules = vec![
        for_users(Allow, "a/#", &["u1", "u1"]),
        rule(Deny, Publish, "a/x"),
        for_users(Allow, "a/#", &["u2"]),
        rule(Allow, Publish, "b/%u"),
    ];
    let u1 = acl_of(rules.clone(), "c", Some("u1"));
    assert!(u1.may_publish("a/x"), "u1's allow comes before the deny");
    assert!(u1.may_publish("b/u1") && !u1.may_publish("b/u2"));
    let u2 = acl_of(rules.clone(), "c", Some("u2"));
    assert!(!u2.may_publish("a/x"), "the deny comes before u2's allow");
    assert!(u2.may_publish("a/y"));
    let other = acl_of(rules, "c", Some("u3"));
    assert!(!other.may_publish("a/y") && other.may_publish("b/u3"));
}
