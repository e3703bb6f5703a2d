use std::io::Read;

use bytes::Bytes;
use http::HeaderValue;

use super::BodyError;

/// Decodes a body by its `Content-Encoding`: `zstd`, `gzip` (`x-gzip`), `deflate` (zlib, or
/// raw deflate as some clients send it), `br`, `identity`, or a comma-separated chain of
/// them (undone last-applied first). The decoded size is bounded by `limit`, so a
/// decompression bomb fails with [`BodyError::TooLarge`] after at most `limit + 1` bytes of
/// output.
pub fn decode(encoding: &HeaderValue, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let text = encoding.to_str().map_err(|_| {
        BodyError::UnsupportedEncoding(String::from_utf8_lossy(encoding.as_bytes()).into_owned())
    })?;
    let codings: Vec<String> = text
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    // Check every coding before doing any work, so an unknown one fails fast.
    if let Some(bad) = codings.iter().find(|c| !KNOWN.contains(&c.as_str())) {
        return Err(BodyError::UnsupportedEncoding(bad.clone()));
    }
    let mut body = body;
    for coding in codings.iter().rev() {
        body = decode_one(coding, body, limit)?;
    }
    Ok(body)
}

const KNOWN: [&str; 6] = ["identity", "zstd", "gzip", "x-gzip", "deflate", "br"];

fn decode_one(coding: &str, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let input = &body[..];
    let reader: Box<dyn Read + '_> = match coding {
        "identity" => return Ok(body),
        "zstd" => {
            Box::new(zstd::stream::read::Decoder::new(input).map_err(|e| decode_err(coding, e))?)
        }
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(input)),
        "deflate" if looks_like_zlib(input) => Box::new(flate2::read::ZlibDecoder::new(input)),
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(input)),
        "br" => Box::new(brotli_decompressor::Decompressor::new(input, 16 * 1024)),
        other => return Err(BodyError::UnsupportedEncoding(other.to_string())),
    };
    let mut out = Vec::with_capacity(input.len().saturating_mul(4).min(limit).max(64));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| decode_err(coding, e))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

fn decode_err(coding: &str, source: std::io::Error) -> BodyError {
    BodyError::Decode {
        encoding: coding.to_string(),
        source,
    }
}

/// RFC 1950: compression method 8 and a header checksum divisible by 31.
fn looks_like_zlib(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const TEXT: &[u8] =
        br#"{"model":"gpt-5.5","input":[{"role":"user","content":"hello hello hello"}]}"#;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn br(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(b).unwrap();
        }
        out
    }

    #[test]
    fn round_trips_each_encoding() {
        let zlib = {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(TEXT).unwrap();
            e.finish().unwrap()
        };
        let raw_deflate = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(TEXT).unwrap();
            e.finish().unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("zstd", zstd::encode_all(TEXT, 3).unwrap()),
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("deflate", zlib),
            ("deflate", raw_deflate),
            ("br", br(TEXT)),
            ("identity", TEXT.to_vec()),
            (" ZSTD ", zstd::encode_all(TEXT, 3).unwrap()),
            ("gzip, br", br(&gzip(TEXT))),
        ];
        for (enc, data) in cases {
            let out = decode(&hv(enc), Bytes::from(data), 1 << 20)
                .unwrap_or_else(|e| panic!("{enc}: {e}"));
            assert_eq!(&out[..], TEXT, "{enc}");
        }
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        let bombs = [
            ("zstd", zstd::encode_all(&zeros[..], 3).unwrap()),
            ("gzip", gzip(&zeros)),
            ("br", br(&zeros)),
        ];
        for (enc, data) in bombs {
            assert!(data.len() < 1 << 20, "{enc} bomb is small: {}", data.len());
            let err = decode(&hv(enc), Bytes::from(data), 1 << 20).unwrap_err();
            assert!(
                matches!(err, BodyError::TooLarge { limit } if limit == 1 << 20),
                "{enc}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_and_unknown_encodings_fail_clearly() {
        let err = decode(&hv("gzip"), Bytes::from_static(b"not gzip at all"), 1024).unwrap_err();
        assert!(matches!(err, BodyError::Decode { .. }), "{err}");
        let err = decode(
            &hv("zstd"),
            Bytes::from_static(b"\x28\xb5\x2f\xfd garbage"),
            1024,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Decode { .. }), "{err}");
        let err = decode(&hv("compress"), Bytes::from_static(b"x"), 1024).unwrap_err();
        assert!(matches!(err, BodyError::UnsupportedEncoding(ref e) if e == "compress"));
        let err = decode(&hv("gzip, snappy"), Bytes::from_static(b"x"), 1024).unwrap_err();
        assert!(matches!(err, BodyError::UnsupportedEncoding(_)));
    }
}
