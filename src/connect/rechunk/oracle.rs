//! The differential check of the re-framing, with hyper as the oracle: the same scripted
//! connection read by hyper's client straight and through [`Tagged`] (which re-frames) must
//! give the same responses, bodies, trailers and failures, whatever the reads' boundaries.
//! The unit tests and the `rechunk` fuzz target both run it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::rt::{Read, ReadBufCursor, Write};

use crate::connect::{ConnTag, Tagged};

/// A connection whose reads are scripted: each exchange's pieces become readable once its
/// request is written; an empty piece is the upstream closing.
pub(crate) struct Scripted {
    exchanges: VecDeque<VecDeque<Vec<u8>>>,
    current: VecDeque<Vec<u8>>,
    waker: Option<Waker>,
    closed: bool,
    /// Reads that returned bytes, counted for the caller.
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Scripted {
    fn new(exchanges: Vec<Vec<Vec<u8>>>) -> Self {
        Scripted {
            exchanges: exchanges.into_iter().map(VecDeque::from).collect(),
            current: VecDeque::new(),
            waker: None,
            closed: false,
            reads: Default::default(),
        }
    }
}

impl Read for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let Some(piece) = self.current.front_mut() else {
            self.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        if piece.is_empty() {
            self.closed = true;
            return Poll::Ready(Ok(()));
        }
        let n = piece.len().min(buf.remaining());
        buf.put_slice(&piece[..n]);
        piece.drain(..n);
        if piece.is_empty() {
            self.current.pop_front();
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl Write for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.current.is_empty() {
            if let Some(next) = self.exchanges.pop_front() {
                self.current = next;
            }
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a client saw of one exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// The request failed before a response.
    NoResponse,
    /// A response, and what its body brought.
    Response {
        /// Its status.
        status: u16,
        /// Its data, all frames together.
        data: Vec<u8>,
        /// Its trailers, as text pairs.
        trailers: Option<Vec<(String, String)>>,
        /// Whether the body failed.
        failed: bool,
    },
}

/// One exchange: the request's method and the bytes the upstream answers, in pieces.
pub struct Exchange {
    /// `GET`, `POST` or `HEAD`.
    pub method: &'static str,
    /// What the upstream sends, read by read; an empty piece closes the connection.
    pub pieces: Vec<Vec<u8>>,
}

/// How much work hyper did for a run.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Data frames hyper produced.
    pub frames: usize,
    /// Reads of the connection that returned bytes.
    pub reads: usize,
}

/// Runs the exchanges on one connection, `rechunk`ed or straight, and how many data frames
/// hyper produced in all.
pub fn run(exchanges: &[Exchange], rechunk: bool) -> (Vec<Seen>, Counts) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            let script = Scripted::new(exchanges.iter().map(|e| e.pieces.clone()).collect());
            let reads = script.reads.clone();
            let (mut sender, conn) = if rechunk {
                let (s, c) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(Tagged::new(
                    script,
                    ConnTag::new(1),
                ))
                .await
                .unwrap();
                (s, tokio::spawn(async move { c.await.is_ok() }))
            } else {
                let (s, c) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(script)
                    .await
                    .unwrap();
                (s, tokio::spawn(async move { c.await.is_ok() }))
            };
            let mut seen = Vec::new();
            let mut frames = 0;
            for e in exchanges {
                if sender.ready().await.is_err() {
                    seen.push(Seen::NoResponse);
                    continue;
                }
                let body = if e.method == "POST" {
                    Bytes::from_static(b"{}")
                } else {
                    Bytes::new()
                };
                let req = http::Request::builder()
                    .method(e.method)
                    .uri("/v1/responses")
                    .header("host", "upstream")
                    .body(Full::new(body))
                    .unwrap();
                let res = match sender.send_request(req).await {
                    Ok(res) => res,
                    Err(_) => {
                        seen.push(Seen::NoResponse);
                        continue;
                    }
                };
                let status = res.status().as_u16();
                let mut body = res.into_body();
                let mut data = Vec::new();
                let mut trailers = None;
                let mut failed = false;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => match frame.into_data() {
                            Ok(d) => {
                                frames += 1;
                                data.extend_from_slice(&d);
                            }
                            Err(frame) => {
                                let t = frame.into_trailers().unwrap();
                                trailers = Some(
                                    t.iter()
                                        .map(|(k, v)| {
                                            (
                                                k.to_string(),
                                                String::from_utf8_lossy(v.as_bytes()).into(),
                                            )
                                        })
                                        .collect(),
                                );
                            }
                        },
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                seen.push(Seen::Response {
                    status,
                    data,
                    trailers,
                    failed,
                });
            }
            drop(sender);
            let _ = conn.await;
            let reads = reads.load(std::sync::atomic::Ordering::Relaxed);
            (seen, Counts { frames, reads })
        })
        .await
        .expect("a scripted connection finishes")
    })
}
