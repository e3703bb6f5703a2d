//! `/metrics` as a Prometheus scraper reads it, after real traffic through the proxy and the
//! mock: the histograms (request duration, time to first content, upstream attempts) and the
//! series that were there before; separate proxies keep separate metrics; the layers report
//! to a `metrics` recorder the application installed.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::time::{Duration, SystemTime};

use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use tower::ServiceExt;
use tower_responses::body::ReplayBody;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::continuity::ContinuityConfig;
use tower_responses::credentials::Pool;
use tower_responses::metrics::Metrics;
use tower_responses::stack::ResponsesStack;
use tower_responses::testing::{MockUpstream, Reply, events};

const KEY_A: &str = "sk-test-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-test-bbbbbbbbbbbbbbbbbbbb-BBBB";
const LABEL_A: &str = "key-1";
const LABEL_B: &str = "key-2";

/// Between two events of every answer. The first content event is the third
/// (`response.output_item.added`), so each answer's first content comes at least two gaps in.
const GAP: Duration = Duration::from_millis(40);

fn body() -> serde_json::Value {
    json!({"model": "gpt-5.5", "stream": true, "input": [{"role": "user", "content": "hi"}]})
}

async fn scrape(proxy: &RunningProxy) -> (Scrape, String) {
    let req = Request::get(proxy.url("/metrics"))
        .body(Full::default())
        .unwrap();
    let (status, headers, bytes) = send_collect(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{headers:?}"
    );
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let scrape = Scrape::parse(text.as_bytes().lines()).expect("Prometheus text parses");
    (scrape, text)
}

fn labels_match(s: &prometheus_parse::Sample, labels: &[(&str, &str)]) -> bool {
    s.labels.len() == labels.len() && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
}

/// A counter, gauge or untyped (`_sum`, `_count`) sample.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels_match(s, labels))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// A histogram's buckets (upper bound, cumulative count), its sample count and sum.
struct Hist {
    buckets: Vec<(f64, f64)>,
    count: f64,
    sum: f64,
}

fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Hist {
    let buckets = scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            Value::Histogram(b) if s.metric == name && labels_match(s, labels) => {
                Some(b.iter().map(|c| (c.less_than, c.count)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {name}{labels:?}"));
    let count = value(scrape, &format!("{name}_count"), labels).expect("_count");
    let sum = value(scrape, &format!("{name}_sum"), labels).expect("_sum");
    Hist {
        buckets,
        count,
        sum,
    }
}

/// Buckets are cumulative and end at `+Inf` with every sample.
fn assert_sane(h: &Hist, name: &str) {
    assert!(h.buckets.len() > 5, "{name}: buckets {:?}", h.buckets);
    for w in h.buckets.windows(2) {
        assert!(
            w[0].0 < w[1].0 && w[0].1 <= w[1].1,
            "{name}: {:?}",
            h.buckets
        );
    }
    assert_eq!(
        h.buckets.last().copied(),
        Some((f64::INFINITY, h.count)),
        "{name}"
    );
    assert!(h.sum >= 0.0 && h.sum.is_finite(), "{name}: sum {}", h.sum);
}

/// Samples at or below `bound` seconds.
fn at_most(h: &Hist, bound: f64) -> f64 {
    h.buckets
        .iter()
        .find(|(le, _)| *le == bound)
        .map(|(_, c)| *c)
        .expect("bucket bound")
}

#[tokio::test]
async fn scrape_after_traffic_has_histograms_and_the_existing_series() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_default(Reply::auto().paced(GAP));
    // A's first answer is a rate limit before content: rotation moves that request to B.
    mock.push_for(
        KEY_A,
        Reply::sse(vec![
            events::created("resp_x"),
            events::failed(
                "resp_x",
                "rate_limit_exceeded",
                "Rate limit reached for gpt-5.5. Please try again in 20s.",
            ),
        ]),
    );
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = [KEY_A, KEY_B].iter().map(|k| k.parse().unwrap()).collect();
    let proxy = start_proxy(cfg).await;
    let c = client();
    for _ in 0..3 {
        let (s, _, b) = send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body())).await;
        let text = String::from_utf8_lossy(&b);
        assert_eq!(s, StatusCode::OK, "{text}");
        assert!(text.contains("response.completed"), "{text}");
    }
    let (s, _, _) = send_collect(
        &c,
        Request::get(proxy.url("/nowhere"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (scrape, text) = scrape(&proxy).await;
    let ok = [("route", "responses"), ("status", "200")];

    // The series that were there before.
    assert_eq!(
        value(&scrape, "tr_requests_total", &ok),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &scrape,
            "tr_requests_total",
            &[("route", "not_found"), ("status", "404")]
        ),
        Some(1.0)
    );
    let attempts: HashMap<(String, String), f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tr_credential_attempts_total")
        .map(|s| {
            let Value::Counter(v) = s.value else {
                panic!("attempts are a counter: {s:?}")
            };
            let l = |k| s.labels.get(k).unwrap_or_default().to_owned();
            ((l("credential"), l("outcome")), v)
        })
        .collect();
    assert_eq!(
        attempts.get(&(LABEL_A.into(), "rate_limited".into())),
        Some(&1.0),
        "{attempts:?}"
    );
    assert_eq!(attempts.values().sum::<f64>(), 4.0, "{attempts:?}");
    assert_eq!(
        value(&scrape, "tr_credential_failovers_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "tr_credential_healthy", &[("credential", LABEL_A)]),
        Some(0.0)
    );
    assert_eq!(
        value(&scrape, "tr_credential_healthy", &[("credential", LABEL_B)]),
        Some(1.0)
    );
    let until = value(
        &scrape,
        "tr_credential_cooldown_until_seconds",
        &[("credential", LABEL_A), ("class", "rate_limited")],
    )
    .expect("A's cooldown is on /metrics");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now + 10.0..now + 25.0).contains(&until),
        "cooling for the hinted 20 s: {until} at {now}"
    );
    assert!(value(&scrape, "tr_upstream_connections_opened", &[]).unwrap() >= 1.0);
    assert!(scrape.docs.contains_key("tr_requests_total"), "HELP lines");

    // Request duration: to the response head, which the hold-back sends with the first
    // content event, at least two gaps into each answer.
    let d = histogram(&scrape, "tr_request_duration_seconds", &ok);
    assert_sane(&d, "tr_request_duration_seconds");
    assert_eq!(d.count, 3.0);
    assert!(d.sum >= 3.0 * 2.0 * GAP.as_secs_f64(), "sum {}", d.sum);
    assert_eq!(
        at_most(&d, 0.05),
        0.0,
        "none under two gaps: {:?}",
        d.buckets
    );

    // Time to first content: one sample per answered stream.
    let f = histogram(&scrape, "tr_first_content_seconds", &[]);
    assert_sane(&f, "tr_first_content_seconds");
    assert_eq!(f.count, 3.0);
    assert!(f.sum >= 3.0 * 2.0 * GAP.as_secs_f64(), "sum {}", f.sum);
    assert!(
        f.sum <= d.sum,
        "first content {} after the head {}",
        f.sum,
        d.sum
    );

    // Upstream attempts, by credential and outcome; an answered attempt ends at its first
    // content.
    let limited = histogram(
        &scrape,
        "tr_upstream_attempt_seconds",
        &[("credential", LABEL_A), ("outcome", "rate_limited")],
    );
    assert_sane(&limited, "tr_upstream_attempt_seconds");
    assert_eq!(limited.count, 1.0);
    let answered: Vec<Hist> = [LABEL_A, LABEL_B]
        .iter()
        .filter(|l| attempts.contains_key(&(l.to_string(), "ok".into())))
        .map(|l| {
            histogram(
                &scrape,
                "tr_upstream_attempt_seconds",
                &[("credential", l), ("outcome", "ok")],
            )
        })
        .collect();
    assert_eq!(answered.iter().map(|h| h.count).sum::<f64>(), 3.0);
    for h in &answered {
        assert_sane(h, "tr_upstream_attempt_seconds");
        assert!(h.sum >= h.count * 2.0 * GAP.as_secs_f64(), "sum {}", h.sum);
    }
}

#[tokio::test]
async fn two_proxies_in_one_process_keep_separate_metrics() {
    let mock = MockUpstream::start().await.unwrap();
    let busy = start_proxy(config_for(mock.base_url())).await;
    let idle = start_proxy(config_for(mock.base_url())).await;
    let c = client();
    for _ in 0..2 {
        let (s, _, _) = send_collect(&c, json_req(&busy.url("/v1/responses"), None, body())).await;
        assert_eq!(s, StatusCode::OK);
    }
    let ok = [("route", "responses"), ("status", "200")];
    let (busy_scrape, _) = scrape(&busy).await;
    let (idle_scrape, idle_text) = scrape(&idle).await;
    assert_eq!(value(&busy_scrape, "tr_requests_total", &ok), Some(2.0));
    assert_eq!(
        histogram(&busy_scrape, "tr_first_content_seconds", &[]).count,
        2.0
    );
    assert_eq!(
        value(&idle_scrape, "tr_requests_total", &ok),
        None,
        "{idle_text}"
    );
    assert!(
        !idle_text.contains("tr_first_content_seconds"),
        "{idle_text}"
    );
    // The handle reads back what the scrape shows.
    assert_eq!(busy.metrics.get("tr_requests_total", &ok), Some(2.0));
    assert_eq!(idle.metrics.get("tr_requests_total", &ok), None);
}

#[tokio::test]
async fn layers_report_to_the_recorder_the_application_installed() {
    // This test binary's global recorder: only this test installs one.
    let theirs = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.01, 0.1, 1.0])
        .unwrap()
        .install_recorder()
        .expect("no other recorder in this test binary");
    let mock = MockUpstream::start().await.unwrap();
    mock.set_default(Reply::auto().paced(GAP));
    let svc = ResponsesStack::new()
        .metrics(Metrics::global())
        .client(&UpstreamClientBuilder::new());
    let req = Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(body().to_string()))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("response.completed"));

    let rendered = theirs.render();
    let scrape = Scrape::parse(rendered.as_bytes().lines()).unwrap();
    let f = histogram(&scrape, "tr_first_content_seconds", &[]);
    assert_eq!(f.count, 1.0, "{rendered}");
    assert!(f.sum >= 2.0 * GAP.as_secs_f64());
    assert_eq!(
        f.buckets.len(),
        4,
        "their buckets, not ours: {:?}",
        f.buckets
    );
    assert!(
        scrape.docs.contains_key("tr_first_content_seconds"),
        "{rendered}"
    );
}

#[tokio::test]
async fn an_evicted_session_leaves_the_rendered_metrics() {
    let mock = MockUpstream::start().await.unwrap();
    let metrics = Metrics::new();
    // Continuity (and its session accounting) runs with a credential pool.
    let pool = Pool::new(vec![KEY_A.parse().unwrap()]).unwrap();
    let svc = ResponsesStack::new()
        .pool(std::sync::Arc::new(pool))
        .continuity(ContinuityConfig {
            max_sessions: 2,
            ..ContinuityConfig::default()
        })
        .metrics(metrics.clone())
        .client(&UpstreamClientBuilder::new());
    for session in ["sess-1", "sess-2", "sess-3"] {
        let req = Request::post(format!("{}/responses", mock.base_url()))
            .header("content-type", "application/json")
            .header("session_id", session)
            .body(ReplayBody::new(body().to_string()))
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    let rendered = metrics.render();
    let scrape = Scrape::parse(rendered.as_bytes().lines()).unwrap();
    let turns = |s: &str| value(&scrape, "tr_session_turns", &[("session", s)]);
    assert_eq!(
        turns("sess-1"),
        None,
        "the oldest session is gone: {rendered}"
    );
    assert_eq!(turns("sess-2"), Some(1.0), "{rendered}");
    assert_eq!(turns("sess-3"), Some(1.0), "{rendered}");
    assert_eq!(
        value(&scrape, "tr_turns_total", &[]),
        Some(3.0),
        "{rendered}"
    );
    assert_eq!(
        metrics.get("tr_session_turns", &[("session", "sess-1")]),
        None
    );
}
