//! The pool's own unit tests.

use super::*;

fn pool(keys: &[&str], strategy: Strategy) -> Pool {
    Pool::new(
        keys.iter()
            .map(|k| PoolMember::new(k.parse().unwrap()))
            .collect(),
    )
    .unwrap()
    .with_strategy(strategy)
}

const KEYS: [&str; 3] = [
    "sk-unit-aaaaaaaaaaaaaaaa-AAAA",
    "sk-unit-bbbbbbbbbbbbbbbb-BBBB",
    "sk-unit-cccccccccccccccc-CCCC",
];

fn picks(p: &Pool, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| p.pick(&[], None, None).unwrap().to_string())
        .collect()
}

#[test]
fn strategies_choose_as_documented() {
    let rr = pool(&KEYS, Strategy::RoundRobin);
    assert_eq!(
        picks(&rr, 3)
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );

    let ff = pool(&KEYS, Strategy::FillFirst);
    assert!(picks(&ff, 5).iter().all(|l| l == "key-1"));

    let lu = pool(&KEYS, Strategy::LeastUsed);
    lu.record_use("key-1");
    lu.record_use("key-2");
    assert_eq!(&*lu.pick(&[], None, None).unwrap(), "key-3");

    let mut members: Vec<PoolMember> = KEYS
        .iter()
        .map(|k| PoolMember::new(k.parse().unwrap()))
        .collect();
    members[0].weight = 8;
    let w = Pool::new(members)
        .unwrap()
        .with_strategy(Strategy::Weighted);
    let got = picks(&w, 1000);
    let heavy = got.iter().filter(|l| *l == "key-1").count();
    assert!(
        heavy > 650,
        "weight 8 of 10 should take most picks, took {heavy}"
    );

    let r = pool(&KEYS, Strategy::Random);
    assert_eq!(
        picks(&r, 200)
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
}

#[test]
fn a_pin_overrides_and_exclusions_and_cooldowns_are_skipped() {
    let p = pool(&KEYS, Strategy::FillFirst);
    assert_eq!(&*p.pick(&[], Some("key-3"), None).unwrap(), "key-3");
    let a: Arc<str> = Arc::from("key-1");
    assert_eq!(&*p.pick(&[a], None, None).unwrap(), "key-2");
    p.record_failure("key-2", &Failure::new(FailureClass::Overloaded));
    let a: Arc<str> = Arc::from("key-1");
    assert_eq!(&*p.pick(&[a], None, None).unwrap(), "key-3");
}

#[test]
fn a_session_keeps_its_primary_and_one_fallback() {
    let p = pool(&KEYS, Strategy::RoundRobin);
    p.record_served("s", "key-2");
    assert_eq!(&*p.pick(&[], None, Some("s")).unwrap(), "key-2");
    p.record_failure("key-2", &Failure::new(FailureClass::RateLimited));
    let other = p.pick(&[], None, Some("s")).unwrap();
    assert_ne!(&*other, "key-2");
    p.record_served("s", &other);
    // The binding does not move; the fallback is kept while the primary is out.
    assert_eq!(p.state().affinity("s").as_deref(), Some("key-2"));
    for _ in 0..5 {
        assert_eq!(p.pick(&[], None, Some("s")), Some(other.clone()));
    }
    assert_eq!(p.last_served("s").as_deref(), Some(&*other));
}

#[test]
fn one_request_probes_a_key_after_its_auth_cooldown() {
    let p = pool(&KEYS[..2], Strategy::FillFirst);
    let first = p.labels()[0].clone();
    p.state().set_cooldown(
        &first,
        Cooldown {
            until: Some(SystemTime::now() - Duration::from_secs(1)),
            class: FailureClass::Auth,
            reason: "expired".into(),
        },
    );
    // The first pick after the cooldown is the probe; the next keep away from it.
    assert_eq!(p.pick(&[], None, None), Some(first.clone()));
    assert_ne!(p.pick(&[], None, None), Some(first.clone()));
    // The probe succeeds: back in rotation.
    p.record_success(&first, &http::HeaderMap::new());
    assert_eq!(p.pick(&[], None, None), Some(first.clone()));
    // A probe refused again doubles the cooldown (strikes survive the expiry).
    p.record_failure(&first, &Failure::new(FailureClass::Auth));
    let once = p.cooldown_of(&first).unwrap().until.unwrap();
    p.record_failure(&first, &Failure::new(FailureClass::Auth));
    let twice = p.cooldown_of(&first).unwrap().until.unwrap();
    assert!(twice.duration_since(once).unwrap() > Duration::from_secs(50));
}

#[test]
fn cooldowns_follow_the_class() {
    let p = pool(&KEYS, Strategy::RoundRobin);
    for class in [
        FailureClass::ModelUnsupported,
        FailureClass::RouteNotFound,
        FailureClass::StaleConnection,
        FailureClass::InvalidRequest,
        FailureClass::ContentPolicy,
        FailureClass::ContextLength,
    ] {
        assert!(
            p.record_failure("key-1", &Failure::new(class)).is_none(),
            "{class:?}"
        );
    }
    // Overload: short, and longer only on repeats.
    let first = p
        .record_failure("key-2", &Failure::new(FailureClass::Overloaded))
        .unwrap();
    let second = p
        .record_failure("key-2", &Failure::new(FailureClass::Overloaded))
        .unwrap();
    let now = SystemTime::now();
    let d1 = first.until.unwrap().duration_since(now).unwrap_or_default();
    let d2 = second
        .until
        .unwrap()
        .duration_since(now)
        .unwrap_or_default();
    assert!(
        d1 <= Duration::from_secs(1) && d2 > d1 && d2 <= Duration::from_secs(2),
        "{d1:?} {d2:?}"
    );
    // A transport failure is never the credential's fault.
    assert!(
        p.record_failure("key-3", &Failure::transport(false, "reset"))
            .is_none()
    );
}

#[test]
fn usage_headers_at_100_percent_cool_before_failure() {
    let p = pool(&KEYS, Strategy::RoundRobin);
    let reset = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7 * 24 * 3600;
    let mut h = http::HeaderMap::new();
    h.insert("x-codex-primary-used-percent", "40".parse().unwrap());
    h.insert("x-codex-primary-window-minutes", "300".parse().unwrap());
    h.insert(
        "x-codex-primary-reset-at",
        (reset - 6 * 24 * 3600).to_string().parse().unwrap(),
    );
    h.insert("x-codex-secondary-used-percent", "100".parse().unwrap());
    h.insert("x-codex-secondary-window-minutes", "10080".parse().unwrap());
    h.insert(
        "x-codex-secondary-reset-at",
        reset.to_string().parse().unwrap(),
    );
    p.record_success("key-1", &h);
    let c = p.cooldown_of("key-1").expect("cooling");
    let until = c
        .until
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        until, reset,
        "the weekly window's reset, not the 5-hour one"
    );
}

fn windows(five: f64, weekly: f64) -> CredentialUsage {
    use crate::credentials::usage::{UsageWindow, WindowKind};
    let later = SystemTime::now() + Duration::from_secs(3600);
    CredentialUsage {
        windows: vec![
            UsageWindow {
                kind: WindowKind::FiveHour,
                used_percent: five,
                window_minutes: Some(300),
                reset_at: Some(later),
            },
            UsageWindow {
                kind: WindowKind::Weekly,
                used_percent: weekly,
                window_minutes: Some(10080),
                reset_at: Some(later),
            },
        ],
        ..Default::default()
    }
}

/// `headroom`, `soft_limit` and `reserve`, one row per situation: the usage of the three
/// keys, key-1's reserve, the session's binding, and the pick expected.
#[test]
fn usage_decides_the_pick_as_specified() {
    type Row = (
        [(f64, f64); 3],
        Option<Reserve>,
        Option<&'static str>,
        Strategy,
        &'static str,
    );
    let weekly_30 = Some(Reserve {
        weekly: Some(30.0),
        five_hour: None,
    });
    let rows: &[Row] = &[
        // headroom: the most left in the tightest window.
        (
            [(10.0, 80.0), (50.0, 20.0), (30.0, 30.0)],
            None,
            None,
            Strategy::Headroom,
            "key-3",
        ),
        (
            [(0.0, 0.0), (50.0, 20.0), (30.0, 30.0)],
            None,
            None,
            Strategy::Headroom,
            "key-1",
        ),
        // Past the soft limit, a new session goes elsewhere, whatever the strategy...
        (
            [(96.0, 10.0), (50.0, 20.0), (60.0, 30.0)],
            None,
            None,
            Strategy::FillFirst,
            "key-2",
        ),
        // ...but the session bound to it stays.
        (
            [(96.0, 10.0), (50.0, 20.0), (60.0, 30.0)],
            None,
            Some("key-1"),
            Strategy::FillFirst,
            "key-1",
        ),
        // All past it: the one with the most headroom still serves.
        (
            [(96.0, 10.0), (99.0, 20.0), (97.0, 30.0)],
            None,
            None,
            Strategy::Headroom,
            "key-1",
        ),
        // A reserve takes key-1 out while the others have quota...
        (
            [(0.0, 75.0), (50.0, 20.0), (60.0, 30.0)],
            weekly_30,
            None,
            Strategy::FillFirst,
            "key-2",
        ),
        // ...even for its bound session...
        (
            [(0.0, 75.0), (50.0, 20.0), (60.0, 30.0)],
            weekly_30,
            Some("key-1"),
            Strategy::FillFirst,
            "key-2",
        ),
        // ...and comes back as the last resort, after accounts past the soft limit.
        (
            [(0.0, 75.0), (96.0, 20.0), (60.0, 30.0)],
            weekly_30,
            None,
            Strategy::Headroom,
            "key-3",
        ),
        (
            [(0.0, 75.0), (96.0, 20.0), (97.0, 30.0)],
            weekly_30,
            None,
            Strategy::Headroom,
            "key-2",
        ),
    ];
    for (i, (usage, reserve, bound, strategy, want)) in rows.iter().enumerate() {
        let mut members: Vec<PoolMember> = KEYS
            .iter()
            .map(|k| PoolMember::new(k.parse().unwrap()))
            .collect();
        members[0].reserve = *reserve;
        let p = Pool::new(members).unwrap().with_strategy(*strategy);
        for (label, (five, weekly)) in ["key-1", "key-2", "key-3"].iter().zip(usage) {
            p.record_usage(label, windows(*five, *weekly));
        }
        if let Some(b) = bound {
            p.record_served("s", b);
        }
        let got = p.pick(&[], None, bound.map(|_| "s")).unwrap();
        assert_eq!(&*got, *want, "row {i}");
    }
    // Every key at its reserve or at 100 % cooled: the reserve still serves.
    let mut members: Vec<PoolMember> = KEYS[..2]
        .iter()
        .map(|k| PoolMember::new(k.parse().unwrap()))
        .collect();
    members[0].reserve = weekly_30;
    let p = Pool::new(members).unwrap();
    p.record_usage("key-1", windows(0.0, 90.0));
    p.record_failure("key-2", &Failure::new(FailureClass::QuotaExhausted));
    assert_eq!(p.pick(&[], None, None).as_deref(), Some("key-1"));
}

#[test]
fn reply_headers_are_kept_as_the_credentials_windows() {
    let p = pool(&KEYS, Strategy::Headroom);
    let mut h = http::HeaderMap::new();
    h.insert("x-codex-primary-used-percent", "12".parse().unwrap());
    h.insert("x-codex-primary-window-minutes", "10080".parse().unwrap());
    h.insert("x-codex-secondary-used-percent", "64".parse().unwrap());
    h.insert("x-codex-secondary-window-minutes", "300".parse().unwrap());
    p.record_success("key-2", &h);
    let u = p.usage_of("key-2").unwrap();
    use crate::credentials::usage::WindowKind;
    assert_eq!(u.window(WindowKind::Weekly).unwrap().used_percent, 12.0);
    assert_eq!(u.window(WindowKind::FiveHour).unwrap().used_percent, 64.0);
    assert!(p.usage_of("key-1").is_none());
}

#[test]
fn an_auth_cooldown_ends_when_the_auth_file_changes() {
    let dir = std::env::temp_dir().join(format!("tr-pool-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("auth.json");
    std::fs::write(
        &path,
        r#"{"tokens":{"access_token":"old-token","account_id":"acct"}}"#,
    )
    .unwrap();
    let p = Pool::new(vec![PoolMember::new(
        format!("codex-auth:{}", path.display()).parse().unwrap(),
    )])
    .unwrap();
    let label = p.labels()[0].to_string();
    p.record_failure(&label, &Failure::new(FailureClass::Auth));
    assert!(
        p.pick(&[], None, None).is_none(),
        "out until the file changes"
    );
    // A new login rewrites the file (a later mtime).
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::write(
        &path,
        r#"{"tokens":{"access_token":"new-token","account_id":"acct"}}"#,
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    // The file is looked at once a second at most: wait for it, boundedly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while p.pick(&[], None, None).is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.pick(&[], None, None).as_deref(), Some(label.as_str()));
    assert_eq!(
        p.entry(&label).unwrap().credential().token.expose(),
        "new-token"
    );
    // The header values built at load were built again for the new login.
    let h = applied_both_ways(&p, &label);
    assert_eq!(h[http::header::AUTHORIZATION], "Bearer new-token");
    std::fs::remove_dir_all(&dir).ok();
}

/// The headers `Entry::apply` (values built at load) leaves on a client's request, checked
/// equal to what `Credential::apply` (built at the call) leaves.
fn applied_both_ways(p: &Pool, label: &str) -> http::HeaderMap {
    let mut client = http::HeaderMap::new();
    for (k, v) in [
        ("authorization", "Bearer client-key"),
        ("chatgpt-account-id", "client-acct"),
        ("openai-organization", "org-x"),
        ("openai-project", "proj-x"),
        ("x-keep", "1"),
    ] {
        client.insert(k, v.parse().unwrap());
    }
    let entry = p.entry(label).unwrap();
    let mut built_once = client.clone();
    entry.apply(&mut built_once);
    let mut built_now = client;
    entry.credential().apply(&mut built_now);
    assert_eq!(built_once, built_now);
    for (name, v) in &built_once {
        assert_eq!(v.is_sensitive(), built_now[name].is_sensitive(), "{name}");
    }
    built_once
}

#[test]
fn prepared_credential_headers_are_what_applying_the_credential_gives() {
    let dir = std::env::temp_dir().join(format!("tr-pool-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("auth.json");
    std::fs::write(
        &path,
        r#"{"tokens":{"access_token":"login-token","account_id":"acct-1"}}"#,
    )
    .unwrap();
    let p = Pool::new(vec![
        PoolMember::new("sk-one-aaaaaaaaaaaaaaaaaaaa".parse().unwrap()),
        PoolMember::new(format!("codex-auth:{}", path.display()).parse().unwrap()),
    ])
    .unwrap();
    let labels = p.labels();
    let key = applied_both_ways(&p, &labels[0]);
    assert_eq!(
        key[http::header::AUTHORIZATION],
        "Bearer sk-one-aaaaaaaaaaaaaaaaaaaa"
    );
    assert!(key[http::header::AUTHORIZATION].is_sensitive());
    assert!(!key.contains_key("chatgpt-account-id"));
    assert!(!key.contains_key("openai-organization") && !key.contains_key("openai-project"));
    let login = applied_both_ways(&p, &labels[1]);
    assert_eq!(login[http::header::AUTHORIZATION], "Bearer login-token");
    assert_eq!(login["chatgpt-account-id"], "acct-1");
    assert!(login["chatgpt-account-id"].is_sensitive());
    assert_eq!(login["x-keep"], "1");
    std::fs::remove_dir_all(&dir).ok();
}
