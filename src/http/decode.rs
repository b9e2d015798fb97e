//! Request body decoding: size limits before allocation, gzip with a decompressed cap (no
//! gzip bombs), and the media types browsers actually send (`text/plain` from sendBeacon).

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use crate::config::HttpConfig;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    cfg: &HttpConfig,
) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && mime != "text/plain" && !mime.is_empty() {
            return Err(ApiError::UnsupportedMediaType(
                ct.chars().take(100).collect(),
            ));
        }
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let gzip_declared = match encoding.as_deref() {
        None | Some("") | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(ApiError::UnsupportedEncoding(
                other.chars().take(50).collect(),
            ))
        }
    };
    let limit = cfg.max_body_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::BodyTooLarge { limit });
        }
    }
    let raw = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::BodyTooLarge { limit })
        }
        Err(_) => return Err(ApiError::BodyRead),
    };
    if raw.is_empty() {
        return Err(ApiError::EmptyBody);
    }
    if gzip_declared || raw.starts_with(&GZIP_MAGIC) {
        return gunzip(&raw, cfg.max_decompressed_bytes);
    }
    Ok(raw)
}

/// Decompresses at most `cap` bytes; a body that inflates past it is refused before more is
/// allocated.
pub(super) fn gunzip(raw: &[u8], cap: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(cap));
    let mut dec = flate2::read::MultiGzDecoder::new(raw).take(cap as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| ApiError::InvalidGzip(e.to_string()))?;
    if out.len() > cap {
        return Err(ApiError::DecompressedTooLarge { limit: cap });
    }
    if out.is_empty() {
        return Err(ApiError::EmptyBody);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_is_capped() {
        let bomb = gz(&vec![0u8; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024, "a small body");
        match gunzip(&bomb, 4 * 1024 * 1024) {
            Err(ApiError::DecompressedTooLarge { limit }) => assert_eq!(limit, 4 * 1024 * 1024),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gzip_round_trip_and_garbage() {
        assert_eq!(&gunzip(&gz(b"{\"a\":1}"), 1024).unwrap()[..], b"{\"a\":1}");
        assert!(matches!(
            gunzip(&[0x1f, 0x8b, 1, 2, 3], 1024),
            Err(ApiError::InvalidGzip(_))
        ));
    }
}
