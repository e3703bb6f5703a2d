//! Raw HTTP/1.1 over TCP for edge tests: send exact bytes, read every response until the
//! server closes, and parse what came back. Used by tests/edge_*.rs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response as it came off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `{"error":{"message","type",...}}` with `Content-Type: application/json`.
    pub fn is_envelope(&self) -> bool {
        let json = self
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json"));
        let v: serde_json::Value = match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(_) => return false,
        };
        json && v["error"]["message"].is_string() && v["error"]["type"].is_string()
    }
}

/// What a connection did with the bytes it was sent.
#[derive(Debug)]
pub struct Exchange {
    pub responses: Vec<RawResponse>,
    /// The server closed (or reset) the connection before `wait` ran out.
    pub closed: bool,
    /// Bytes after the last complete response.
    pub trailing: Vec<u8>,
}

/// Connects, writes `bytes` (keeping the write side open, as a slow client would), and reads
/// until the server closes the connection or `wait` runs out.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Exchange {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let closed = tokio::time::timeout(wait, async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .is_ok();
        (got, closed)
    });
    // The server may close before it has read everything: a failed write is an answer too.
    let _ = wr.write_all(bytes).await;
    let (got, closed) = reader.await.expect("reader");
    drop(wr);
    let (responses, trailing) = parse_responses(&got);
    Exchange {
        responses,
        closed,
        trailing,
    }
}

/// Splits a byte stream into responses (`Content-Length` or chunked bodies).
pub fn parse_responses(mut data: &[u8]) -> (Vec<RawResponse>, Vec<u8>) {
    let mut out = Vec::new();
    while let Some(end) = find(data, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&data[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok());
        let Some(status) = status else { break };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let rest = &data[end + 4..];
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let (body, used) = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            match dechunk(rest) {
                Some(x) => x,
                None => break,
            }
        } else {
            let len: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if rest.len() < len {
                break;
            }
            (rest[..len].to_vec(), len)
        };
        out.push(RawResponse {
            status,
            headers,
            body,
        });
        data = &rest[used..];
    }
    (out, data.to_vec())
}

fn dechunk(mut data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let start = data.len();
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            let end = find(data, b"\r\n")?;
            data = &data[end + 2..];
            return Some((body, start - data.len()));
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
