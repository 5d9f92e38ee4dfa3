//! COSE_Sign1 (RFC 9052) with one content type per kind of artefact.
//!
//! The algorithm and the content type sit in the protected header, so both are covered by the
//! signature: an artefact signed as one kind can never be accepted as another, and a signature
//! cannot be replayed under a different algorithm. Artefacts are written with the COSE_Sign1 tag
//! (18) so generic COSE tools recognise them; untagged input is accepted too.

use coset::{
    CborSerializable, ContentType, CoseSign1, CoseSign1Builder, HeaderBuilder,
    TaggedCborSerializable,
};

use crate::error::{DecodeError, SignatureError};
use crate::keys::{PublicKey, Signer};

/// Signs `payload` as an artefact of the given content type and returns the tagged COSE_Sign1.
pub fn sign(
    payload: Vec<u8>,
    content_type: &str,
    signer: &dyn Signer,
) -> Result<Vec<u8>, SignatureError> {
    let protected = HeaderBuilder::new()
        .algorithm(signer.algorithm().cose())
        .content_type(content_type.to_string())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .try_create_signature(&[], |tbs| signer.sign(tbs))?
        .build();
    sign1
        .to_tagged_vec()
        .map_err(|e| SignatureError::SigningFailed(format!("COSE encoding: {e:?}")))
}

/// A parsed, not yet verified, COSE_Sign1 of a known content type.
#[derive(Debug, Clone)]
pub struct Signed {
    sign1: CoseSign1,
}

impl Signed {
    /// Parses `bytes` (at most `limit` long) and checks that the protected content type is
    /// `content_type`. The signature is not checked yet: see [`Signed::verify`].
    pub fn parse(
        bytes: &[u8],
        limit: usize,
        content_type: &'static str,
    ) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| DecodeError::Malformed(format!("not a COSE_Sign1: {e:?}")))?;
        let found = match &sign1.protected.header.content_type {
            Some(ContentType::Text(t)) => t.clone(),
            Some(ContentType::Assigned(a)) => format!("{a:?}"),
            None => String::new(),
        };
        if found != content_type {
            return Err(DecodeError::WrongContentType {
                expected: content_type,
                found,
            });
        }
        if sign1.payload.is_none() {
            return Err(DecodeError::Malformed("detached payload".into()));
        }
        Ok(Self { sign1 })
    }

    /// The payload, before any signature check. Only for routing (for example to find which
    /// key should verify it); never act on it before [`Signed::verify`].
    pub fn payload_unverified(&self) -> &[u8] {
        self.sign1.payload.as_deref().unwrap_or_default()
    }

    /// Key identifier from the unprotected header, if any.
    pub fn key_id(&self) -> &[u8] {
        &self.sign1.unprotected.key_id
    }

    /// Verifies the signature with `key` and returns the payload. The protected algorithm must
    /// be the key's own algorithm.
    pub fn verify(&self, key: &PublicKey) -> Result<&[u8], SignatureError> {
        let expected = coset::Algorithm::Assigned(key.algorithm().cose());
        match &self.sign1.protected.header.alg {
            Some(alg) if *alg == expected => {}
            other => return Err(SignatureError::AlgorithmMismatch(format!("{other:?}"))),
        }
        self.sign1
            .verify_signature(&[], |sig, tbs| key.verify(tbs, sig))?;
        Ok(self.payload_unverified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Algorithm;
    use crate::keys::test_signers::{Ecdsa, Ed, P256};

    const CT: &str = "application/test+cbor";

    #[test]
    fn sign_and_verify_with_both_algorithms() {
        for signer in [
            Box::new(P256::generate()) as Box<dyn Signer>,
            Box::new(Ecdsa::generate(Algorithm::Es384)),
            Box::new(Ed::from_seed(3)),
        ] {
            let bytes = sign(b"payload".to_vec(), CT, signer.as_ref()).unwrap();
            assert_eq!(bytes[0], 0xd2, "tagged COSE_Sign1");
            let signed = Signed::parse(&bytes, 1024, CT).unwrap();
            assert_eq!(signed.verify(&signer.public_key()).unwrap(), b"payload");
        }
    }

    #[test]
    fn refuses_wrong_key_algorithm_content_type_and_tampering() {
        let p = P256::generate();
        let other = P256::generate();
        let ed = Ed::from_seed(4);
        let bytes = sign(b"payload".to_vec(), CT, &p).unwrap();
        let signed = Signed::parse(&bytes, 1024, CT).unwrap();
        assert_eq!(
            signed.verify(&other.public_key()),
            Err(SignatureError::Invalid)
        );
        assert!(matches!(
            signed.verify(&ed.public_key()),
            Err(SignatureError::AlgorithmMismatch(_))
        ));
        assert!(matches!(
            Signed::parse(&bytes, 1024, "application/other"),
            Err(DecodeError::WrongContentType { .. })
        ));
        assert!(matches!(
            Signed::parse(&bytes, 10, CT),
            Err(DecodeError::TooLarge { .. })
        ));
        // Flip one byte in every position of the payload: never verifies.
        let at = bytes.windows(7).position(|w| w == b"payload").unwrap();
        for i in at..at + 7 {
            let mut t = bytes.clone();
            t[i] ^= 1;
            let s = Signed::parse(&t, 1024, CT).unwrap();
            assert_eq!(s.verify(&p.public_key()), Err(SignatureError::Invalid));
        }
        // Garbage is a decode error, not a panic.
        assert!(Signed::parse(b"\x00\x01garbage", 1024, CT).is_err());
    }
}
