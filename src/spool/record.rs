//! Record framing. Wire format, little-endian:
//!
//! ```text
//! segment  = MAGIC (8 bytes, "CTSPOOL1") record*
//! record   = len: u32 | crc: u32 | appended_ms: u64 | payload: [u8; len]
//! crc      = CRC32C(len bytes ++ appended_ms bytes ++ payload)
//! ```
//!
//! The CRC covers the length, so a torn or flipped length is caught like a torn payload.

pub(crate) const MAGIC: &[u8; 8] = b"CTSPOOL1";
pub(crate) const HEADER_LEN: usize = 16;
/// A record larger than this is corrupt by definition (requests are capped far below it).
pub(crate) const MAX_RECORD_LEN: u32 = 256 * 1024 * 1024;

/// Appends one framed record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, appended_ms: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &appended_ms.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn framed_len(payload_len: usize) -> u64 {
    (HEADER_LEN + payload_len) as u64
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) crc: u32,
    pub(crate) appended_ms: u64,
}

pub(crate) fn parse_header(b: &[u8; HEADER_LEN]) -> Header {
    Header {
        len: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
        crc: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
        appended_ms: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
    }
}

pub(crate) fn verify(h: &Header, payload: &[u8]) -> bool {
    let mut crc = crc32c::crc32c(&h.len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &h.appended_ms.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    crc == h.crc && payload.len() == h.len as usize
}

/// Why a frame could not be read; the writer's recovery truncates at the first one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes than a header or than the header's length: a torn write.
    Torn,
    /// Length out of bounds or checksum mismatch.
    Corrupt,
}

/// Parses the frame at the start of `buf`; returns (header, payload range end).
pub(crate) fn decode(buf: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Torn);
    }
    let h = parse_header(buf[..HEADER_LEN].try_into().expect("header"));
    if h.len > MAX_RECORD_LEN {
        return Err(FrameError::Corrupt);
    }
    let end = HEADER_LEN + h.len as usize;
    if buf.len() < end {
        return Err(FrameError::Torn);
    }
    let payload = &buf[HEADER_LEN..end];
    if !verify(&h, payload) {
        return Err(FrameError::Corrupt);
    }
    Ok((h, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, b"hello");
        encode(&mut buf, 43, b"");
        let (h, p) = decode(&buf).unwrap();
        assert_eq!((h.appended_ms, p), (42, &b"hello"[..]));
        let rest = &buf[framed_len(5) as usize..];
        let (h, p) = decode(rest).unwrap();
        assert_eq!((h.appended_ms, p.len()), (43, 0));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"{\"a\":1}");
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(decode(&b).is_err(), "flip at {byte}:{bit} undetected");
            }
        }
    }

    #[test]
    fn truncation_is_torn() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"payload");
        for cut in 0..buf.len() {
            assert_eq!(
                decode(&buf[..cut]).unwrap_err(),
                FrameError::Torn,
                "cut {cut}"
            );
        }
    }
}
