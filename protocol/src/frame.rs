//! Length-prefixed framing for QUIC streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of payload. The reader
//! learns the length before it allocates, so a peer cannot make it buffer more than the limit.

use thiserror::Error;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Largest frame either side sends or accepts. Large enough for a certificate chain or a
/// firmware chunk, small enough that a connection's buffer stays bounded.
pub const MAX_FRAME: usize = 256 * 1024;

/// Why a frame was refused.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The announced or actual payload is larger than the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// Limit that applied.
        limit: usize,
    },
    /// The input ended before the announced payload was complete.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes announced (header included).
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// An empty payload carries no message.
    #[error("empty frame")]
    Empty,
}

/// Frames `payload`. Refuses payloads over [`MAX_FRAME`].
pub fn encode(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload.len())?);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The header of a frame of `len` payload bytes, for writers that send the payload from its
/// own buffer (no copy). Refuses lengths over [`MAX_FRAME`].
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            size: len,
            limit: MAX_FRAME,
        });
    }
    // The check above bounds the length far below u32::MAX.
    Ok((len as u32).to_be_bytes())
}

/// Reads a frame header and returns the payload length, refusing one above `limit` (which is
/// itself capped at [`MAX_FRAME`]) or an empty one.
pub fn payload_len(header: [u8; HEADER_LEN], limit: usize) -> Result<usize, FrameError> {
    let limit = limit.min(MAX_FRAME);
    let size = u32::from_be_bytes(header) as usize;
    if size == 0 {
        return Err(FrameError::Empty);
    }
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    Ok(size)
}

/// Splits one complete frame held in `bytes` (as read to the end of a stream) and returns its
/// payload. The frame must fill `bytes` exactly.
pub fn decode(bytes: &[u8], limit: usize) -> Result<&[u8], FrameError> {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got: bytes.len(),
        });
    };
    let len = payload_len(*header, limit)?;
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::Truncated {
            expected: HEADER_LEN + len,
            got: bytes.len(),
        }),
        std::cmp::Ordering::Greater => Err(FrameError::TooLarge {
            size: rest.len(),
            limit: len,
        }),
        std::cmp::Ordering::Equal => Ok(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let framed = encode(b"hello").unwrap();
        assert_eq!(&framed[..4], &[0, 0, 0, 5]);
        assert_eq!(decode(&framed, 100).unwrap(), b"hello");
    }

    #[test]
    fn refuses_oversize_truncation_and_empty() {
        let framed = encode(&[7u8; 64]).unwrap();
        assert_eq!(
            decode(&framed, 10),
            Err(FrameError::TooLarge {
                size: 64,
                limit: 10
            })
        );
        assert!(matches!(
            decode(&framed[..30], 100),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&framed[..2], 100),
            Err(FrameError::Truncated { .. })
        ));
        assert_eq!(payload_len([0, 0, 0, 0], 10), Err(FrameError::Empty));
        assert!(matches!(
            payload_len([0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(FrameError::TooLarge {
                limit: MAX_FRAME,
                ..
            })
        ));
        assert!(encode(&vec![0u8; MAX_FRAME + 1]).is_err());
    }
}
