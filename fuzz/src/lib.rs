//! What the fuzz targets share: keys to verify against, the semantic round trip, and how one
//! input becomes several messages.

use protocol::keys::PublicKey;
use serde::{Serialize, de::DeserializeOwned};

/// Keys that sign nothing the fuzzer has: a verification runs the whole path up to the
/// signature check, which then fails.
pub fn keys() -> [PublicKey; 2] {
    let ed25519 = PublicKey::ed25519(&[0x3b; 32]);
    // The P-256 generator point, uncompressed: a valid point whose private key is 1.
    let p256 = PublicKey::p256(&P256_G);
    match (ed25519, p256) {
        (Ok(a), Ok(b)) => [a, b],
        _ => unreachable!("fixed keys are valid"),
    }
}

const P256_G: [u8; 65] = [
    0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
    0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2,
    0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e,
    0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51,
    0xf5,
];

/// A value decoded from outside bytes survives encoding: decoding our encoding gives the same
/// value, and encoding that gives the same bytes (our encoder is deterministic; the decoder
/// accepts other encodings of a value too, so the input's own bytes need not come back).
pub fn round_trip<T>(value: &T, limit: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = protocol::cbor::to_vec(value);
    let again: T = match protocol::cbor::from_slice(&bytes, limit.max(bytes.len())) {
        Ok(v) => v,
        Err(e) => panic!("our encoding of {value:?} does not decode: {e}"),
    };
    assert_eq!(&again, value, "the value changed in a round trip");
    assert_eq!(
        protocol::cbor::to_vec(&again),
        bytes,
        "the encoding is not deterministic"
    );
}

/// One input as several messages, each preceded by its length (two bytes, big-endian; a
/// length beyond the end takes what is left). `scripts/fuzz seeds` writes sessions this way.
pub fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (m, tail) = rest.split_at(len);
        out.push(m);
        data = tail;
    }
    out
}
