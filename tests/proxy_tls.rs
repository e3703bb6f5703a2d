//! Upstream HTTPS through rustls: a local TLS server with a CA generated for the test.

mod common;
#[path = "common/tls.rs"]
mod tls;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tower_responses::connect::UpstreamClientBuilder;

struct TlsUpstream {
    port: u16,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

async fn tls_upstream() -> TlsUpstream {
    let (acceptor, ca_der) = tls::localhost_acceptor();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let auth = req.headers().get("authorization").cloned();
                    let body = format!(
                        "event: response.completed\ndata: {}\n\n",
                        json!({"type": "response.completed", "path": req.uri().path(), "auth": auth.map(|a| a.to_str().unwrap().to_string())})
                    );
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsUpstream { port, ca_der }
}

#[tokio::test]
async fn forwards_over_tls_to_an_upstream_signed_by_a_trusted_ca() {
    let up = tls_upstream().await;
    let mut cfg = config_for(format!("https://localhost:{}/backend/v1", up.port));
    cfg.credentials = vec!["tls-upstream-key".parse().unwrap()];
    let proxy = start_proxy_with(
        cfg,
        UpstreamClientBuilder::new()
            .root_certificate_der(&up.ca_der)
            .unwrap(),
    )
    .await;
    let (s, _, body) = send_collect(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "m", "stream": true, "input": "hi"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(r#""path":"/backend/v1/responses""#), "{text}");
    assert!(text.contains("Bearer tls-upstream-key"), "{text}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_a_502() {
    let up = tls_upstream().await;
    let cfg = config_for(format!("https://localhost:{}/v1", up.port));
    // The webpki roots do not include the test CA.
    let proxy = start_proxy(cfg).await;
    let (s, _, body) = send_collect(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "m", "input": "hi"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(&body).as_deref(), Some("upstream_unavailable"));
}
