//! `wss://` upstream sockets go through the crate's own rustls connector: a TLS front with a
//! CA made for the test, relaying to the mock upstream's WebSocket on 127.0.0.1.

#[path = "common/tls.rs"]
mod tls;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::credentials::{Pool, PoolMember};
use tower_responses::testing::{MockUpstream, WsReply};
use tower_responses::websocket::{Carrier, Delivery, SocketCarrier, Turn};

/// A TLS listener for `localhost` that relays every connection to `to`; returns its port and
/// the CA certificate that signed it.
async fn tls_front(to: std::net::SocketAddr) -> (u16, CertificateDer<'static>) {
    let (acceptor, ca) = tls::localhost_acceptor();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, ca)
}

fn turn(text: &str) -> Turn {
    let body =
        json!({"model": "gpt-5", "input": [{"role": "user", "content": text}], "stream": true});
    let mut frame = body.clone();
    frame["type"] = json!("response.create");
    Turn {
        frame,
        full: body,
        headers: http::HeaderMap::new(),
    }
}

async fn run(c: &mut SocketCarrier, t: Turn) -> Vec<Delivery> {
    let events = c.send(t).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), events.collect::<Vec<_>>())
        .await
        .expect("the turn ended within 20 s")
}

#[tokio::test]
async fn wss_through_the_crates_tls_with_its_roots() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_ws(WsReply::text("over TLS"));
    let (port, ca) = tls_front(mock.addr()).await;
    let pool = Arc::new(
        Pool::new(vec![PoolMember::new(
            "sk-tls-aaaaaaaaaaaaaaaa".parse().unwrap(),
        )])
        .unwrap(),
    );

    // Trusting the test CA: the socket opens, the turn is answered.
    let builder = UpstreamClientBuilder::new()
        .root_certificate_der(ca.as_ref())
        .unwrap();
    let base = format!("wss://localhost:{port}/v1");
    let mut c = SocketCarrier::new(pool.clone(), builder.connector(), &base).unwrap();
    let events = run(&mut c, turn("hi")).await;
    let Some(Delivery::Event(last)) = events.last() else {
        panic!("{events:?}")
    };
    assert!(
        last.contains("response.completed") && last.contains("over TLS"),
        "{last}"
    );
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 1);
    assert_eq!(sockets[0].path, "/v1/responses");
    assert_eq!(
        sockets[0].credential.as_deref(),
        Some("sk-tls-aaaaaaaaaaaaaaaa")
    );

    // With the default (webpki) roots the test CA is not trusted: nothing is sent, and the
    // client is told the upstream could not be reached.
    let mut c = SocketCarrier::new(pool, UpstreamClientBuilder::new().connector(), &base).unwrap();
    let events = run(&mut c, turn("hi")).await;
    match events.last() {
        Some(Delivery::Error(e)) => {
            assert_eq!(e.status.as_u16(), 502);
            assert_eq!(e.code.as_deref(), Some("upstream_unavailable"));
            assert!(
                e.message.contains("could not open the upstream WebSocket"),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(
        mock.ws_sockets().len(),
        1,
        "the untrusted front never reached the mock"
    );
}
