//! The voucher and the voucher request (BRSKI, RFC 8995; fields of RFC 8366bis).
//!
//! Both are CBOR maps whose keys are the RFC 8366bis leaf names, signed as COSE_Sign1 as in
//! constrained BRSKI. Times are seconds since the Unix epoch. The voucher is signed by the
//! manufacturer's voucher-signing key (the MASA role); the voucher request by the device's
//! IDevID key.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cose::{self, Signed};
use crate::error::{DecodeError, SignatureError};
use crate::keys::{PublicKey, Signer};

/// Content type of a voucher's payload.
pub const VOUCHER_CONTENT_TYPE: &str = "application/vnd.onboarder.voucher+cbor";
/// Content type of a voucher request's payload.
pub const VOUCHER_REQUEST_CONTENT_TYPE: &str = "application/vnd.onboarder.voucher-request+cbor";
/// Largest signed voucher accepted (it carries one pinned CA certificate).
pub const MAX_VOUCHER: usize = 16 * 1024;
/// Largest signed voucher request accepted (it carries the registrar's certificate).
pub const MAX_VOUCHER_REQUEST: usize = 16 * 1024;
/// Clock skew tolerated between device, registrar and manufacturer, in seconds.
pub const CLOCK_SKEW: u64 = 300;

/// What the manufacturer asserts about the device's ownership (RFC 8366 `assertion`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assertion {
    /// Ownership verified by the manufacturer (sales records).
    Verified,
    /// The voucher was only logged.
    Logged,
    /// Proximity of the device to the registrar was shown.
    Proximity,
}

/// A voucher: the manufacturer's statement that `serial-number` belongs to the domain whose CA
/// is `pinned-domain-cert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    /// When the voucher was created.
    #[serde(rename = "created-on")]
    pub created_on: u64,
    /// When it stops being valid; required when there is no nonce.
    #[serde(
        rename = "expires-on",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_on: Option<u64>,
    /// The manufacturer's assertion.
    pub assertion: Assertion,
    /// Serial number of the device it is for.
    #[serde(rename = "serial-number")]
    pub serial_number: String,
    /// Key identifier of the IDevID's issuer (its authority key identifier).
    #[serde(
        rename = "idevid-issuer",
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_bytes"
    )]
    pub idevid_issuer: Option<Vec<u8>>,
    /// DER certificate of the domain CA the device must trust from now on.
    #[serde(rename = "pinned-domain-cert", with = "serde_bytes")]
    pub pinned_domain_cert: Vec<u8>,
    /// The device's nonce, for vouchers fetched online; absent for bulk-imported vouchers.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub nonce: Option<Vec<u8>>,
}

/// What a device knows about itself and its request, against which a voucher is checked.
#[derive(Debug, Clone, Copy)]
pub struct VoucherExpectation<'a> {
    /// The device's serial number.
    pub serial: &'a str,
    /// The authority key identifier of the device's IDevID.
    pub idevid_issuer: &'a [u8],
    /// The nonce the device sent in its voucher request.
    pub nonce: &'a [u8],
}

/// Why a voucher was refused.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VoucherError {
    /// The voucher could not be decoded.
    #[error("voucher: {0}")]
    Decode(#[from] DecodeError),
    /// The voucher's signature is not the manufacturer's.
    #[error("voucher signature: {0}")]
    Signature(#[from] SignatureError),
    /// The voucher is for another device.
    #[error("voucher is for serial {found}, not {expected}")]
    WrongSerial {
        /// This device's serial.
        expected: String,
        /// The serial in the voucher.
        found: String,
    },
    /// The voucher names another IDevID issuer.
    #[error("voucher names another IDevID issuer")]
    WrongIssuer,
    /// The voucher's nonce is not the one this device sent.
    #[error("voucher nonce does not match the request")]
    NonceMismatch,
    /// The voucher has expired.
    #[error("voucher expired at {expires_on} (now {now})")]
    Expired {
        /// Expiry in the voucher.
        expires_on: u64,
        /// The device's current time.
        now: u64,
    },
    /// The voucher was created in the future.
    #[error("voucher created in the future ({created_on}, now {now})")]
    NotYetValid {
        /// Creation time in the voucher.
        created_on: u64,
        /// The device's current time.
        now: u64,
    },
    /// The voucher has neither a nonce nor an expiry, so its freshness cannot be judged.
    #[error("voucher has neither nonce nor expiry")]
    NoFreshness,
}

impl Voucher {
    /// Signs the voucher with the manufacturer's voucher-signing key.
    pub fn sign(&self, signer: &dyn Signer) -> Result<Vec<u8>, SignatureError> {
        cose::sign(crate::cbor::to_vec(self), VOUCHER_CONTENT_TYPE, signer)
    }

    /// Decodes a signed voucher without checking its signature: for a registrar that files
    /// vouchers by serial. A device must use [`Voucher::open`].
    pub fn parse_unverified(bytes: &[u8]) -> Result<Voucher, DecodeError> {
        let signed = Signed::parse(bytes, MAX_VOUCHER, VOUCHER_CONTENT_TYPE)?;
        crate::cbor::from_slice(signed.payload_unverified(), MAX_VOUCHER)
    }

    /// Verifies a signed voucher with the manufacturer's voucher-signing key and decodes it.
    pub fn open(bytes: &[u8], masa_key: &PublicKey) -> Result<Voucher, VoucherError> {
        let signed = Signed::parse(bytes, MAX_VOUCHER, VOUCHER_CONTENT_TYPE)?;
        let payload = signed.verify(masa_key)?;
        Ok(crate::cbor::from_slice(payload, MAX_VOUCHER)?)
    }

    /// The device's checks of RFC 8995 5.6 beyond the signature: its own serial, its IDevID
    /// issuer, and freshness (the nonce it sent, or an expiry that has not passed).
    pub fn check(&self, expect: &VoucherExpectation<'_>, now: u64) -> Result<(), VoucherError> {
        if self.serial_number != expect.serial {
            return Err(VoucherError::WrongSerial {
                expected: expect.serial.to_string(),
                found: self.serial_number.clone(),
            });
        }
        if let Some(issuer) = &self.idevid_issuer
            && issuer.as_slice() != expect.idevid_issuer
        {
            return Err(VoucherError::WrongIssuer);
        }
        if self.created_on > now.saturating_add(CLOCK_SKEW) {
            return Err(VoucherError::NotYetValid {
                created_on: self.created_on,
                now,
            });
        }
        if let Some(expires_on) = self.expires_on
            && expires_on <= now
        {
            return Err(VoucherError::Expired { expires_on, now });
        }
        match (&self.nonce, self.expires_on) {
            (Some(nonce), _) if nonce.as_slice() != expect.nonce => {
                Err(VoucherError::NonceMismatch)
            }
            (Some(_), _) | (None, Some(_)) => Ok(()),
            (None, None) => Err(VoucherError::NoFreshness),
        }
    }
}

/// A voucher request (RFC 8995 3.3), sent by the device to the registrar and signed with the
/// device's IDevID key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherRequest {
    /// When the device made the request.
    #[serde(rename = "created-on")]
    pub created_on: u64,
    /// Always `proximity`: the device is talking to the registrar directly.
    pub assertion: Assertion,
    /// The device's serial number (the registrar trusts the IDevID's, not this one).
    #[serde(rename = "serial-number")]
    pub serial_number: String,
    /// A fresh random nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// DER certificate the registrar presented in the TLS handshake, as the device saw it.
    #[serde(rename = "proximity-registrar-cert", with = "serde_bytes")]
    pub proximity_registrar_cert: Vec<u8>,
    /// TLS exporter value of the session the request was made in, so it cannot be replayed
    /// in another session.
    #[serde(rename = "session-binding", with = "serde_bytes")]
    pub session_binding: Vec<u8>,
}

impl VoucherRequest {
    /// Signs the request with the device's IDevID key.
    pub fn sign(&self, signer: &dyn Signer) -> Result<Vec<u8>, SignatureError> {
        cose::sign(
            crate::cbor::to_vec(self),
            VOUCHER_REQUEST_CONTENT_TYPE,
            signer,
        )
    }

    /// Verifies a signed request with the IDevID's public key and decodes it.
    pub fn open(bytes: &[u8], idevid_key: &PublicKey) -> Result<VoucherRequest, VoucherError> {
        let signed = Signed::parse(bytes, MAX_VOUCHER_REQUEST, VOUCHER_REQUEST_CONTENT_TYPE)?;
        let payload = signed.verify(idevid_key)?;
        Ok(crate::cbor::from_slice(payload, MAX_VOUCHER_REQUEST)?)
    }
}

/// Largest voucher bundle accepted in one import (tens of thousands of vouchers).
pub const MAX_BUNDLE: usize = 64 * 1024 * 1024;

/// Encodes signed vouchers as a bundle for bulk import: a versioned CBOR array of byte strings.
pub fn encode_bundle(vouchers: &[Vec<u8>]) -> Vec<u8> {
    let items: Vec<&serde_bytes::Bytes> = vouchers
        .iter()
        .map(|v| serde_bytes::Bytes::new(v))
        .collect();
    crate::message::encode(&items)
}

/// Decodes a voucher bundle (the vouchers themselves are not checked here).
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
    let items: Vec<serde_bytes::ByteBuf> = crate::message::decode(bytes, MAX_BUNDLE)?;
    Ok(items.into_iter().map(|b| b.into_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::test_signers::P256;

    fn voucher() -> Voucher {
        Voucher {
            created_on: 1_000,
            expires_on: Some(2_000),
            assertion: Assertion::Verified,
            serial_number: "SN1".into(),
            idevid_issuer: Some(vec![1, 2, 3]),
            pinned_domain_cert: vec![0x30, 0x03, 1, 2, 3],
            nonce: None,
        }
    }

    fn expect<'a>(nonce: &'a [u8]) -> VoucherExpectation<'a> {
        VoucherExpectation {
            serial: "SN1",
            idevid_issuer: &[1, 2, 3],
            nonce,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let masa = P256::generate();
        let bytes = voucher().sign(&masa).unwrap();
        let v = Voucher::open(&bytes, &masa.public_key()).unwrap();
        assert_eq!(v, voucher());
        assert_eq!(Voucher::parse_unverified(&bytes).unwrap(), voucher());
        v.check(&expect(b"n"), 1_500).unwrap();
    }

    #[test]
    fn refusals() {
        let masa = P256::generate();
        let bytes = voucher().sign(&masa).unwrap();
        assert_eq!(
            Voucher::open(&bytes, &P256::generate().public_key()),
            Err(VoucherError::Signature(SignatureError::Invalid))
        );
        let v = voucher();
        assert_eq!(
            v.check(&expect(b"n"), 2_000),
            Err(VoucherError::Expired {
                expires_on: 2_000,
                now: 2_000
            })
        );
        assert!(matches!(
            v.check(
                &VoucherExpectation {
                    serial: "SN2",
                    ..expect(b"n")
                },
                1_500
            ),
            Err(VoucherError::WrongSerial { .. })
        ));
        assert_eq!(
            v.check(
                &VoucherExpectation {
                    idevid_issuer: &[9],
                    ..expect(b"n")
                },
                1_500
            ),
            Err(VoucherError::WrongIssuer)
        );
        assert!(matches!(
            v.check(&expect(b"n"), 100),
            Err(VoucherError::NotYetValid { .. })
        ));
        let nonced = Voucher {
            nonce: Some(b"abc".to_vec()),
            expires_on: None,
            ..voucher()
        };
        nonced.check(&expect(b"abc"), 1_500).unwrap();
        assert_eq!(
            nonced.check(&expect(b"abd"), 1_500),
            Err(VoucherError::NonceMismatch)
        );
        let stale = Voucher {
            expires_on: None,
            ..voucher()
        };
        assert_eq!(
            stale.check(&expect(b"n"), 1_500),
            Err(VoucherError::NoFreshness)
        );
    }

    #[test]
    fn bundles_round_trip() {
        let vouchers = vec![vec![1, 2], vec![3]];
        assert_eq!(decode_bundle(&encode_bundle(&vouchers)).unwrap(), vouchers);
        assert!(decode_bundle(b"junk").is_err());
    }

    #[test]
    fn a_voucher_request_is_not_a_voucher() {
        let key = P256::generate();
        let req = VoucherRequest {
            created_on: 1,
            assertion: Assertion::Proximity,
            serial_number: "SN1".into(),
            nonce: vec![7; 16],
            proximity_registrar_cert: vec![1],
            session_binding: vec![2; 32],
        };
        let bytes = req.sign(&key).unwrap();
        assert_eq!(
            VoucherRequest::open(&bytes, &key.public_key()).unwrap(),
            req
        );
        assert!(matches!(
            Voucher::open(&bytes, &key.public_key()),
            Err(VoucherError::Decode(DecodeError::WrongContentType { .. }))
        ));
    }
}
