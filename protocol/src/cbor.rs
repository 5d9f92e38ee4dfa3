//! CBOR encoding and size-limited decoding.
//!
//! Every decode takes an explicit limit: the caller states how large this kind of input may be,
//! and anything larger is refused before a single byte is parsed.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DecodeError;

/// Nesting depth allowed in any message; ours are never deeper than a handful of levels.
const RECURSION_LIMIT: usize = 32;

/// Encodes a value as CBOR.
///
/// Our message types are plain data (no maps with non-string keys, no custom serializers that
/// fail), and the target is a `Vec`, which cannot fail to grow; so encoding cannot fail.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if let Err(e) = ciborium::ser::into_writer(value, &mut out) {
        // Unreachable for the types of this crate; keep the process alive and make it visible.
        unreachable!("CBOR encoding of an in-memory value failed: {e}");
    }
    out
}

/// Decodes one CBOR value of type `T` that must fill `bytes` exactly and be at most `limit`
/// bytes long.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, RECURSION_LIMIT)
        .map_err(|e| DecodeError::Malformed(describe(e)))?;
    if !reader.is_empty() {
        return Err(DecodeError::Trailing(reader.len()));
    }
    Ok(value)
}

fn describe<E: std::fmt::Debug>(e: ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Io(e) => format!("truncated input ({e:?})"),
        ciborium::de::Error::Syntax(at) => format!("CBOR syntax error at byte {at}"),
        ciborium::de::Error::Semantic(at, msg) => match at {
            Some(at) => format!("{msg} (at byte {at})"),
            None => msg,
        },
        ciborium::de::Error::RecursionLimitExceeded => "nesting too deep".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        name: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn round_trip() {
        let s = Sample {
            name: "x".into(),
            data: vec![1, 2, 3],
        };
        let bytes = to_vec(&s);
        assert_eq!(from_slice::<Sample>(&bytes, 1024).unwrap(), s);
    }

    #[test]
    fn refuses_oversized_input_before_parsing() {
        let bytes = vec![0u8; 2000];
        assert_eq!(
            from_slice::<Sample>(&bytes, 1024),
            Err(DecodeError::TooLarge {
                size: 2000,
                limit: 1024
            })
        );
    }

    #[test]
    fn refuses_trailing_bytes_truncation_and_garbage() {
        let mut bytes = to_vec(&Sample {
            name: "x".into(),
            data: vec![],
        });
        bytes.push(0);
        assert_eq!(
            from_slice::<Sample>(&bytes, 1024),
            Err(DecodeError::Trailing(1))
        );
        bytes.pop();
        bytes.pop();
        assert!(matches!(
            from_slice::<Sample>(&bytes, 1024),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            from_slice::<Sample>(b"\xff\x00garbage", 1024),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_deep_nesting() {
        // 100 nested one-element arrays.
        let mut bytes = vec![0x81u8; 100];
        bytes.push(0x00);
        assert!(matches!(
            from_slice::<ciborium::Value>(&bytes, 1024),
            Err(DecodeError::Malformed(_))
        ));
    }
}
