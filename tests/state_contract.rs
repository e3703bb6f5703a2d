//! One contract for every `PoolState` store, run against the in-memory store and against
//! `RedisState` on a real `redis-server`. Each case writes through one handle and reads
//! through another: for memory they are the same store, for Redis two replicas' stores on one
//! server (what one writes, the other must see, with the same semantics).

#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower_responses::classify::FailureClass;
use tower_responses::credentials::usage::{CredentialUsage, UsageWindow, WindowKind};
use tower_responses::credentials::{
    Claim, Cooldown, MemoryState, PoolState, RedisState, RedisStateConfig,
};

fn cool(class: FailureClass, secs: Option<u64>, reason: &str) -> Cooldown {
    Cooldown {
        until: secs.map(|s| SystemTime::now() + Duration::from_secs(s)),
        class,
        reason: reason.into(),
    }
}

/// Polls `f` until it holds, for at most 3 s (a shared store reads back once a second).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 3 s: {what}");
}

/// The contract. `a` and `b` are two handles on one store.
async fn contract(a: Arc<dyn PoolState>, b: Arc<dyn PoolState>) {
    // Both tell the store their credentials, as a pool does.
    a.watch_credentials(&["k", "j", "used"]);
    b.watch_credentials(&["k", "j", "used"]);

    // Cooldowns only grow: a week's quota is not shortened by a rate limit or a 5xx, from
    // either handle; the other handle sees the week.
    let week = cool(
        FailureClass::QuotaExhausted,
        Some(7 * 86400),
        "usage_limit_reached",
    );
    assert!(a.set_cooldown("k", week.clone()));
    eventually("b sees a's quota cooldown", || {
        b.cooldown("k")
            .is_some_and(|c| c.class == FailureClass::QuotaExhausted)
    })
    .await;
    assert!(!b.set_cooldown("k", cool(FailureClass::RateLimited, Some(2), "429")));
    assert!(!a.set_cooldown("k", cool(FailureClass::Transient, Some(1), "5xx")));
    // Concurrent writers: b writes a shorter hard one before it has seen a's longer one.
    assert!(a.set_cooldown("j", cool(FailureClass::RateLimited, Some(3600), "long")));
    b.set_cooldown("j", cool(FailureClass::RateLimited, Some(5), "short"));
    eventually("both keep the longer cooldown", || {
        [&a, &b].iter().all(|s| {
            s.cooldown("j")
                .is_some_and(|c| c.reason == "long" && c.active(SystemTime::now()))
        })
    })
    .await;
    // The deadline itself is kept, not moved.
    let until = a.cooldown("k").unwrap().until.unwrap();
    let secs = until
        .duration_since(week.until.unwrap())
        .unwrap_or_else(|e| e.duration());
    assert!(
        secs < Duration::from_millis(5),
        "deadline moved by {secs:?}"
    );
    // An open-ended auth cooldown outlasts everything.
    assert!(b.set_cooldown("k", cool(FailureClass::Auth, None, "owner_refresh_needed")));
    eventually("a sees the open-ended auth cooldown", || {
        a.cooldown("k").is_some_and(|c| c.until.is_none())
    })
    .await;
    assert!(!a.set_cooldown(
        "k",
        cool(FailureClass::QuotaExhausted, Some(30 * 86400), "q")
    ));
    // A clear ends it everywhere.
    a.clear("k");
    assert!(a.cooldown("k").is_none());
    eventually("b sees the clear", || b.cooldown("k").is_none()).await;

    // Use counts add up across handles.
    for _ in 0..3 {
        a.record_use("used");
    }
    for _ in 0..2 {
        b.record_use("used");
    }
    eventually("uses add up", || a.uses("used") >= 5 && b.uses("used") >= 5).await;

    // Session bindings written by one are read by the other.
    assert_eq!(b.session("sess-1"), None);
    a.bind("sess-1", "key-2");
    eventually("b reads a's session binding", || {
        b.affinity("sess-1").as_deref() == Some("key-2")
    })
    .await;

    // Owners: stored, settled, then found by the other handle at once (no waiting for a
    // read-back); expired ones are gone.
    a.put_owner(
        "resp_1",
        "key-3",
        SystemTime::now() + Duration::from_secs(3600),
    );
    a.owners_settled(a.owner_mark()).await;
    assert_eq!(b.find_owner("resp_1").await.as_deref(), Some("key-3"));
    assert_eq!(
        b.owner("resp_1", SystemTime::now()).as_deref(),
        Some("key-3")
    );
    assert_eq!(b.find_owner("resp_unknown").await, None);
    a.put_owner(
        "resp_old",
        "key-3",
        SystemTime::now() - Duration::from_secs(1),
    );
    a.owners_settled(a.owner_mark()).await;
    assert_eq!(b.find_owner("resp_old").await, None);

    // Usage snapshots: the latest report of a credential, as written.
    let ms = |secs: u64| {
        let t = SystemTime::now() + Duration::from_secs(secs);
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        SystemTime::UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64)
    };
    let usage = CredentialUsage {
        windows: vec![UsageWindow {
            kind: WindowKind::Weekly,
            used_percent: 100.0,
            window_minutes: Some(10080),
            reset_at: Some(ms(3 * 86400)),
        }],
        plan_type: Some("plus".into()),
        seen_at: Some(ms(0)),
        ..CredentialUsage::default()
    };
    a.put_usage("k", &usage);
    eventually("b reads a's usage snapshot", || {
        b.usage("k").as_ref() == Some(&usage)
    })
    .await;

    // Learned facts: shared until their deadline.
    let hour = SystemTime::now() + Duration::from_secs(3600);
    assert!(b.facts("param").is_empty());
    a.learn_fact("param", "http://up foo_bar", hour);
    a.learn_fact(
        "param",
        "http://up gone",
        SystemTime::now() - Duration::from_secs(1),
    );
    eventually("b learns a's fact", || {
        b.facts("param") == ["http://up foo_bar"]
    })
    .await;
    assert!(b.facts("compact").is_empty());

    // Refresh claims: one holder at a time; only the holder releases.
    let ttl = Duration::from_secs(30);
    assert_eq!(
        a.claim_refresh("login", "replica-a", ttl).await,
        Claim::Granted
    );
    assert_eq!(
        b.claim_refresh("login", "replica-b", ttl).await,
        Claim::Held
    );
    b.release_refresh("login", "replica-b").await;
    assert_eq!(
        b.claim_refresh("login", "replica-b", ttl).await,
        Claim::Held
    );
    a.release_refresh("login", "replica-a").await;
    assert_eq!(
        b.claim_refresh("login", "replica-b", ttl).await,
        Claim::Granted
    );
    b.release_refresh("login", "replica-b").await;
    // A claim expires by itself.
    assert_eq!(
        a.claim_refresh("short", "replica-a", Duration::from_millis(50))
            .await,
        Claim::Granted
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        b.claim_refresh("short", "replica-b", ttl).await,
        Claim::Granted
    );

    // Token pairs: written only over the pair that was refreshed.
    assert_eq!(a.token_pair("login").await, Ok(None));
    assert_eq!(
        a.swap_token_pair("login", "rt-0", "rt-1", "pair-1").await,
        Ok(true)
    );
    assert_eq!(
        b.token_pair("login").await.unwrap().as_deref(),
        Some("pair-1")
    );
    // b refreshed the old pair too (a lost race): its pair is not stored.
    assert_eq!(
        b.swap_token_pair("login", "rt-0", "rt-1b", "pair-1b").await,
        Ok(false)
    );
    assert_eq!(
        b.swap_token_pair("login", "rt-1", "rt-2", "pair-2").await,
        Ok(true)
    );
    assert_eq!(
        a.token_pair("login").await.unwrap().as_deref(),
        Some("pair-2")
    );
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let s: Arc<dyn PoolState> = Arc::new(MemoryState::default());
    assert!(!s.is_shared());
    contract(s.clone(), s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_the_contract() {
    let redis = redis_server::RedisServer::start();
    let config = RedisStateConfig::new(redis.url()).prefix("contract");
    let a = RedisState::start(config.clone(), None).unwrap();
    let b = RedisState::start(config, None).unwrap();
    assert!(
        a.wait_for_read(Duration::from_secs(5)).await,
        "a never read"
    );
    assert!(
        b.wait_for_read(Duration::from_secs(5)).await,
        "b never read"
    );
    assert!(a.is_up() && b.is_up());
    assert!(a.is_shared());
    contract(Arc::new(a), Arc::new(b)).await;
    // What it stored: a cooldown key carries its deadline as a TTL.
    let pttl = redis.command(&["PTTL", "contract:cool:j"]);
    let ms: i64 = pttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ms > 3_500_000 && ms <= 3_600_000, "TTL {ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shorter_cooldowns_from_concurrent_writers_never_win() {
    let redis = redis_server::RedisServer::start();
    let config = RedisStateConfig::new(redis.url()).prefix("race");
    let stores: Vec<Arc<RedisState>> = (0..4)
        .map(|_| Arc::new(RedisState::start(config.clone(), None).unwrap()))
        .collect();
    for s in &stores {
        assert!(s.wait_for_read(Duration::from_secs(5)).await);
        s.watch_credentials(&["k"]);
    }
    // Each writer sets a different deadline at once; none has seen the others'.
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.clone();
            tokio::spawn(async move {
                let secs = [60, 3600, 5, 600][i];
                s.set_cooldown(
                    "k",
                    cool(FailureClass::RateLimited, Some(secs), &format!("{secs}s")),
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    eventually("every replica converges on the longest", || {
        stores
            .iter()
            .all(|s| s.cooldown("k").is_some_and(|c| c.reason == "3600s"))
    })
    .await;
    // And a later, shorter one from any of them changes nothing.
    stores[2].set_cooldown(
        "k",
        cool(FailureClass::QuotaExhausted, Some(10), "short quota"),
    );
    stores[0].wait_for_read(Duration::from_secs(3)).await;
    stores[0].wait_for_read(Duration::from_secs(3)).await;
    assert_eq!(stores[0].cooldown("k").unwrap().reason, "3600s");
}
