//! Request bodies read from a real hyper connection: decoding, limits, and clients that stop
//! sending.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower_responses::body::{BodyError, read_request};
use tower_responses::error::ApiError;

/// What the server saw: the request it read, or the error.
type Seen = Result<Request<Bytes>, BodyError>;

/// A server that reads each request with `read_request` and echoes the body, or answers the
/// error in the OpenAI envelope.
async fn server(limit: usize) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let res = match read_request(req, limit).await {
                        Ok(req) => {
                            let body = req.body().clone();
                            let _ = tx.send(Ok(req));
                            Response::new(Full::new(body))
                        }
                        Err(err) => {
                            let res = ApiError::from(err_copy(&err)).into_response();
                            let _ = tx.send(Err(err));
                            res
                        }
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    (addr, rx)
}

/// `BodyError` is not `Clone` (it holds an `io::Error`); the tests only need the variant.
fn err_copy(err: &BodyError) -> BodyError {
    match err {
        BodyError::TooLarge { limit } => BodyError::TooLarge { limit: *limit },
        BodyError::UnsupportedEncoding(e) => BodyError::UnsupportedEncoding(e.clone()),
        BodyError::Decode { encoding, source } => BodyError::Decode {
            encoding: encoding.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        BodyError::Read(e) => BodyError::Read(e.to_string().into()),
    }
}

/// Reads a `Connection: close` answer to its end: (status, body).
async fn response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full header");
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test]
async fn chunked_zstd_body_is_decoded_and_reframed() {
    let (addr, mut seen) = server(1024 * 1024).await;
    let json = br#"{"model":"gpt-5-codex","stream":true,"store":false,"input":[]}"#;
    let compressed = zstd::encode_all(&json[..], 3).unwrap();

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/responses HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                content-encoding: zstd\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let (a, b) = compressed.split_at(compressed.len() / 2);
    stream.write_all(&chunk(a)).await.unwrap();
    stream.write_all(&chunk(b)).await.unwrap();
    stream.write_all(b"0\r\n\r\n").await.unwrap();

    let (status, body) = response(&mut stream).await;
    assert_eq!(status, 200);
    assert_eq!(body, json);
    let req = seen.recv().await.unwrap().unwrap();
    assert_eq!(
        req.headers()[header::CONTENT_LENGTH],
        json.len().to_string().as_str()
    );
    assert!(req.headers().get(header::CONTENT_ENCODING).is_none());
    assert!(req.headers().get(header::TRANSFER_ENCODING).is_none());
}

#[tokio::test]
async fn declared_oversize_is_answered_413_without_the_body() {
    let (addr, mut seen) = server(1024 * 1024).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Only the head is sent: the answer must not wait for 100 MB that never comes.
    let head = "POST /v1/responses HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                content-length: 100000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();

    let (status, body) = response(&mut stream).await;
    assert_eq!(status, 413);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "request_too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048576 bytes")
    );
    assert!(matches!(
        seen.recv().await.unwrap(),
        Err(BodyError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn endless_chunked_body_is_cut_at_the_limit() {
    let limit = 256 * 1024;
    let (addr, mut seen) = server(limit).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (_read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = "POST /v1/responses HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        write.write_all(head.as_bytes()).await?;
        let piece = chunk(&[b' '; 8 * 1024]);
        // Far more than the limit; the server must give up long before, so writes start
        // failing once it closes the connection.
        for _ in 0..100_000 {
            write.write_all(&piece).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    assert!(
        matches!(seen.recv().await.unwrap(), Err(BodyError::TooLarge { limit: l }) if l == limit)
    );
    assert!(
        writer.await.unwrap().is_err(),
        "the server kept reading an endless body"
    );
}

#[tokio::test]
async fn client_abort_mid_body_is_a_read_error() {
    let (addr, mut seen) = server(1024 * 1024).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'{'; 100]).await.unwrap();
    drop(stream);

    let err = seen.recv().await.unwrap().unwrap_err();
    assert!(matches!(err, BodyError::Read(_)), "{err:?}");
    let api = ApiError::from(err);
    assert_eq!(api.status, 400);
    assert_eq!(api.code.as_deref(), Some("body_read_error"));
}
