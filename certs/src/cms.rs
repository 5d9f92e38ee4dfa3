//! CMS SignedData with one signer (RFC 5652), the envelope of BRSKI's JSON vouchers and voucher
//! requests (RFC 8366, RFC 8995 3.2): content encapsulated, signed attributes (content type,
//! signing time, message digest) and the signer's certificate included, which is what
//! `openssl cms -sign` makes and `openssl cms -verify` checks.
//!
//! [`verify`] proves that the signer certificate's key signed the content; whether that signer
//! is trusted (a MASA, a device's IDevID, a known registrar) is the caller's decision.

use ring::digest;
use ring::signature::{self, UnparsedPublicKey};
use thiserror::Error;
use yasna::models::{ObjectIdentifier, UTCTime};
use yasna::{ASN1Result, Tag};

use crate::key::{KeyKind, KeyPair};

/// Largest CMS message read: a voucher with its certificates is a few KiB.
pub const MAX_CMS: usize = 64 * 1024;

const OID_SIGNED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 2];
const OID_CONTENT_TYPE: &[u64] = &[1, 2, 840, 113549, 1, 9, 3];
const OID_MESSAGE_DIGEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 4];
const OID_SIGNING_TIME: &[u64] = &[1, 2, 840, 113549, 1, 9, 5];
const OID_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const OID_SHA384: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 2];
const OID_SHA512: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 3];
const OID_ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
const OID_ECDSA_SHA384: &[u64] = &[1, 2, 840, 10045, 4, 3, 3];
const OID_ED25519: &[u64] = &[1, 3, 101, 112];

/// Why a CMS message was refused. Never carries key material.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CmsError {
    /// Larger than [`MAX_CMS`].
    #[error("the CMS message is {0} bytes, more than {MAX_CMS}")]
    TooLarge(usize),
    /// Not a DER SignedData with one signer and encapsulated content.
    #[error("malformed CMS SignedData: {0}")]
    Malformed(String),
    /// The content is of another type than the one expected.
    #[error("the CMS content type is {found}, expected {expected}")]
    ContentType {
        /// The type expected (dotted OID).
        expected: String,
        /// The type found.
        found: String,
    },
    /// A digest or signature algorithm this implementation does not take.
    #[error("unsupported CMS algorithm {0}")]
    Algorithm(String),
    /// No certificate in the message (or given) matches the signer.
    #[error("the signer's certificate is not in the message")]
    NoSignerCertificate,
    /// The message digest attribute does not match the content.
    #[error("the content does not match its signed digest")]
    Digest,
    /// The signature does not verify with the signer's key.
    #[error("the CMS signature does not verify")]
    Signature,
}

/// A verified SignedData: its content and who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The encapsulated content.
    pub content: Vec<u8>,
    /// The signer's certificate (DER).
    pub signer: Vec<u8>,
    /// Every certificate the message carries (DER), the signer's included.
    pub certificates: Vec<Vec<u8>>,
}

fn oid(o: &[u64]) -> ObjectIdentifier {
    ObjectIdentifier::from_slice(o)
}

fn dotted(o: &ObjectIdentifier) -> String {
    o.components()
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The digest and signature algorithms for a key kind (RFC 5754, RFC 8419).
fn algorithms(kind: KeyKind) -> (&'static [u64], &'static [u64], &'static digest::Algorithm) {
    match kind {
        KeyKind::P256 => (OID_SHA256, OID_ECDSA_SHA256, &digest::SHA256),
        KeyKind::P384 => (OID_SHA384, OID_ECDSA_SHA384, &digest::SHA384),
        KeyKind::Ed25519 => (OID_SHA512, OID_ED25519, &digest::SHA512),
    }
}

/// Signs `content` of type `content_type` with `key`, whose certificate is `signer_cert`; the
/// message carries `signer_cert` and then `chain` (DER).
pub fn sign(
    content_type: &[u64],
    content: &[u8],
    key: &KeyPair,
    signer_cert: &[u8],
    chain: &[&[u8]],
    now: u64,
) -> Result<Vec<u8>, crate::CertError> {
    let cert = x509_parser::parse_x509_certificate(signer_cert)
        .map_err(|e| crate::CertError::Parse {
            what: "signer certificate",
            detail: e.to_string(),
        })?
        .1;
    let (digest_oid, signature_oid, digest_alg) = algorithms(key.kind());
    let when = utc_time(now)?;
    let mut attributes = [
        attribute(OID_CONTENT_TYPE, |w| w.write_oid(&oid(content_type))),
        attribute(OID_SIGNING_TIME, |w| w.write_utctime(&when)),
        attribute(OID_MESSAGE_DIGEST, |w| {
            w.write_bytes(digest::digest(digest_alg, content).as_ref())
        }),
    ];
    // DER orders a SET OF by encoding.
    attributes.sort();
    let attributes = attributes.concat();
    let to_sign = yasna::construct_der(|w| {
        w.write_set(|w| {
            w.next().write_der(&attributes);
        })
    });
    // rcgen's signer gives the X.509 (ASN.1) form of ECDSA signatures that CMS uses.
    let signature = rcgen::SigningKey::sign(key, &to_sign)
        .map_err(|e| crate::CertError::Generate(format!("CMS signature: {e}")))?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_oid(&oid(OID_SIGNED_DATA));
            w.next().write_tagged(Tag::context(0), |w| {
                w.write_sequence(|w| {
                    // Version 3: the content is not id-data (RFC 5652 5.1).
                    w.next().write_u8(3);
                    w.next().write_set(|w| algorithm_id(w.next(), digest_oid));
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(content_type));
                        w.next()
                            .write_tagged(Tag::context(0), |w| w.write_bytes(content));
                    });
                    w.next().write_tagged_implicit(Tag::context(0), |w| {
                        w.write_sequence(|w| {
                            w.next().write_der(signer_cert);
                            for c in chain {
                                w.next().write_der(c);
                            }
                        })
                    });
                    w.next().write_set(|w| {
                        w.next().write_sequence(|w| {
                            w.next().write_u8(1);
                            w.next().write_sequence(|w| {
                                w.next().write_der(cert.tbs_certificate.issuer.as_raw());
                                w.next()
                                    .write_bigint_bytes(cert.tbs_certificate.raw_serial(), true);
                            });
                            algorithm_id(w.next(), digest_oid);
                            w.next().write_tagged_implicit(Tag::context(0), |w| {
                                w.write_set(|w| {
                                    w.next().write_der(&attributes);
                                })
                            });
                            algorithm_id(w.next(), signature_oid);
                            w.next().write_bytes(&signature);
                        })
                    });
                })
            });
        })
    }))
}

/// `now` as an ASN.1 UTCTime (years 1950-2049, RFC 5280 4.1.2.5.1).
fn utc_time(now: u64) -> Result<UTCTime, crate::CertError> {
    let bad = || crate::CertError::Generate(format!("signing time {now} out of range"));
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(now).map_err(|_| bad())?)
        .map_err(|_| bad())?;
    if !(1950..2050).contains(&t.year()) {
        return Err(bad());
    }
    let text = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    UTCTime::parse(text.as_bytes()).ok_or_else(bad)
}

fn attribute(kind: &[u64], value: impl FnOnce(yasna::DERWriter<'_>)) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_oid(&oid(kind));
            w.next().write_set(|w| value(w.next()));
        })
    })
}

fn algorithm_id(w: yasna::DERWriter<'_>, algorithm: &[u64]) {
    w.write_sequence(|w| w.next().write_oid(&oid(algorithm)));
}

/// What a SignedData holds, before any check.
struct Parsed {
    content_type: ObjectIdentifier,
    content: Vec<u8>,
    certificates: Vec<Vec<u8>>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
    digest: ObjectIdentifier,
    /// The signed attributes as DER `SET OF` (the bytes the signature covers).
    attributes: Option<Vec<u8>>,
    signature_alg: ObjectIdentifier,
    signature: Vec<u8>,
}

fn malformed<E: std::fmt::Display>(e: E) -> CmsError {
    CmsError::Malformed(e.to_string())
}

fn parse(der: &[u8]) -> ASN1Result<Parsed> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            if r.next().read_oid()? != oid(OID_SIGNED_DATA) {
                return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid));
            }
            r.next().read_tagged(Tag::context(0), |r| {
                r.read_sequence(|r| {
                    r.next().read_u8()?;
                    r.next().read_der()?; // digestAlgorithms
                    let (content_type, content) = r.next().read_sequence(|r| {
                        let kind = r.next().read_oid()?;
                        let content = r.next().read_tagged(Tag::context(0), |r| r.read_bytes())?;
                        Ok((kind, content))
                    })?;
                    let certificates = r
                        .read_optional(|r| {
                            r.read_tagged_implicit(Tag::context(0), |r| {
                                let mut certs = Vec::new();
                                r.read_sequence_of(|r| {
                                    certs.push(r.read_der()?);
                                    Ok(())
                                })?;
                                Ok(certs)
                            })
                        })?
                        .unwrap_or_default();
                    // CRLs are not used.
                    skip_tagged(r, 1)?;
                    let mut signers = Vec::new();
                    r.next().read_set_of(|r| {
                        signers.push(r.read_der()?);
                        Ok(())
                    })?;
                    let [signer] = signers.as_slice() else {
                        return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid));
                    };
                    let signer = parse_signer(signer)?;
                    Ok(Parsed {
                        content_type,
                        content,
                        certificates,
                        ..signer
                    })
                })
            })
        })
    })
}

fn parse_signer(der: &[u8]) -> ASN1Result<Parsed> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            if r.next().read_u8()? != 1 {
                // Version 3 names the signer by key identifier, which we do not send.
                return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid));
            }
            let (issuer, serial) = r.next().read_sequence(|r| {
                let issuer = r.next().read_der()?;
                let serial = r.next().read_bigint_bytes()?.0;
                Ok((issuer, serial))
            })?;
            let digest = r.next().read_sequence(|r| {
                let o = r.next().read_oid()?;
                r.read_optional(|r| r.read_null())?;
                Ok(o)
            })?;
            let attributes = r.read_optional(|r| {
                r.read_tagged_implicit(Tag::context(0), |r| {
                    let mut items = Vec::new();
                    r.read_set_of(|r| {
                        items.push(r.read_der()?);
                        Ok(())
                    })?;
                    Ok(items)
                })
            })?;
            let signature_alg = r.next().read_sequence(|r| {
                let o = r.next().read_oid()?;
                r.read_optional(|r| r.read_null())?;
                Ok(o)
            })?;
            let signature = r.next().read_bytes()?;
            // Unsigned attributes are not used.
            skip_tagged(r, 1)?;
            Ok(Parsed {
                content_type: oid(&[0]),
                content: Vec::new(),
                certificates: Vec::new(),
                issuer,
                serial,
                digest,
                attributes: attributes.map(|items| {
                    yasna::construct_der(|w| {
                        w.write_set(|w| {
                            for item in &items {
                                w.next().write_der(item);
                            }
                        })
                    })
                }),
                signature_alg,
                signature,
            })
        })
    })
}

/// Skips an optional element tagged `[number]` (yasna's implicit tagging does not check the
/// tag of an element read whole).
fn skip_tagged(r: &mut yasna::BERReaderSeq<'_, '_>, number: u64) -> ASN1Result<()> {
    r.read_optional(|r| {
        if r.lookahead_tag()? != Tag::context(number) {
            return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid));
        }
        r.read_der()
    })?;
    Ok(())
}

/// The value of the signed attribute `kind`, if present once.
fn attribute_value(attributes: &[u8], kind: &[u64]) -> Result<Option<Vec<u8>>, CmsError> {
    let mut found = Vec::new();
    yasna::parse_der(attributes, |r| {
        r.read_set_of(|r| {
            r.read_sequence(|r| {
                let o = r.next().read_oid()?;
                let mut values = Vec::new();
                r.next().read_set_of(|r| {
                    values.push(r.read_der()?);
                    Ok(())
                })?;
                if o == oid(kind) {
                    found.push(values);
                }
                Ok(())
            })
        })
    })
    .map_err(malformed)?;
    match found.as_slice() {
        [] => Ok(None),
        [values] if values.len() == 1 => Ok(values.first().cloned()),
        _ => Err(CmsError::Malformed(format!(
            "attribute {} more than once",
            dotted(&oid(kind))
        ))),
    }
}

/// Verifies a SignedData of `content_type` and returns its content and signer. The signer's
/// certificate is looked for in the message and then in `known` (DER).
pub fn verify(der: &[u8], content_type: &[u64], known: &[&[u8]]) -> Result<Verified, CmsError> {
    if der.len() > MAX_CMS {
        return Err(CmsError::TooLarge(der.len()));
    }
    let p = parse(der).map_err(malformed)?;
    if p.content_type != oid(content_type) {
        return Err(CmsError::ContentType {
            expected: dotted(&oid(content_type)),
            found: dotted(&p.content_type),
        });
    }
    let signer = p
        .certificates
        .iter()
        .map(Vec::as_slice)
        .chain(known.iter().copied())
        .find(|c| {
            x509_parser::parse_x509_certificate(c).is_ok_and(|(_, cert)| {
                cert.tbs_certificate.issuer.as_raw() == p.issuer.as_slice()
                    && trim(cert.tbs_certificate.raw_serial()) == trim(&p.serial)
            })
        })
        .ok_or(CmsError::NoSignerCertificate)?
        .to_vec();
    let digest_alg = if p.digest == oid(OID_SHA256) {
        &digest::SHA256
    } else if p.digest == oid(OID_SHA384) {
        &digest::SHA384
    } else if p.digest == oid(OID_SHA512) {
        &digest::SHA512
    } else {
        return Err(CmsError::Algorithm(dotted(&p.digest)));
    };
    let content_digest = digest::digest(digest_alg, &p.content);
    let signed: Vec<u8> = match &p.attributes {
        Some(attributes) => {
            let declared = attribute_value(attributes, OID_CONTENT_TYPE)?
                .ok_or_else(|| CmsError::Malformed("no content-type attribute".into()))?;
            let declared = yasna::parse_der(&declared, |r| r.read_oid()).map_err(malformed)?;
            if declared != p.content_type {
                return Err(CmsError::Malformed(
                    "the content-type attribute names another type".into(),
                ));
            }
            let md = attribute_value(attributes, OID_MESSAGE_DIGEST)?
                .ok_or_else(|| CmsError::Malformed("no message-digest attribute".into()))?;
            let md = yasna::parse_der(&md, |r| r.read_bytes()).map_err(malformed)?;
            if md != content_digest.as_ref() {
                return Err(CmsError::Digest);
            }
            attributes.clone()
        }
        None => p.content.clone(),
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&signer).map_err(malformed)?;
    let key = cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref();
    let algorithm: &dyn signature::VerificationAlgorithm =
        match (dotted(&p.signature_alg).as_str(), key.len()) {
            ("1.2.840.10045.4.3.2", 65) => &signature::ECDSA_P256_SHA256_ASN1,
            ("1.2.840.10045.4.3.3", 97) => &signature::ECDSA_P384_SHA384_ASN1,
            ("1.2.840.10045.4.3.2", 97) => &signature::ECDSA_P384_SHA256_ASN1,
            ("1.2.840.10045.4.3.3", 65) => &signature::ECDSA_P256_SHA384_ASN1,
            ("1.3.101.112", 32) => &signature::ED25519,
            (other, _) => return Err(CmsError::Algorithm(other.to_string())),
        };
    UnparsedPublicKey::new(algorithm, key)
        .verify(&signed, &p.signature)
        .map_err(|_| CmsError::Signature)?;
    Ok(Verified {
        content: p.content,
        signer,
        certificates: p.certificates,
    })
}

/// An INTEGER's bytes without leading zero padding.
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{Ca, CaName, Validity};

    const JSON: &[u64] = &[1, 2, 840, 113549, 1, 9, 16, 1, 40];

    fn signer(kind: KeyKind) -> Ca {
        Ca::root(
            &CaName {
                organization: "Test".into(),
                common_name: "CMS test signer".into(),
            },
            KeyPair::generate(kind).unwrap(),
            Validity::starting(1_000_000, 86_400),
            &[1],
        )
        .unwrap()
    }

    #[test]
    fn signed_content_verifies_for_every_key_kind() {
        for kind in [KeyKind::P256, KeyKind::P384, KeyKind::Ed25519] {
            let ca = signer(kind);
            let der = sign(JSON, b"{\"a\":1}", ca.key(), ca.cert_der(), &[], 1_000_100).unwrap();
            let v = verify(&der, JSON, &[]).unwrap();
            assert_eq!(v.content, b"{\"a\":1}");
            assert_eq!(v.signer, ca.cert_der());
        }
    }

    #[test]
    fn tampered_wrong_type_and_oversized_messages_are_refused() {
        let ca = signer(KeyKind::P256);
        let der = sign(
            JSON,
            b"{\"serial\":\"A\"}",
            ca.key(),
            ca.cert_der(),
            &[],
            1_000_100,
        )
        .unwrap();
        // The content changed after signing.
        let at = der.windows(3).position(|w| w == b"\"A\"").unwrap();
        let mut tampered = der.clone();
        tampered[at + 1] = b'B';
        assert_eq!(verify(&tampered, JSON, &[]), Err(CmsError::Digest));
        // The signature changed.
        let mut forged = der.clone();
        let last = forged.len() - 2;
        forged[last] ^= 1;
        assert!(matches!(
            verify(&forged, JSON, &[]),
            Err(CmsError::Signature | CmsError::Malformed(_))
        ));
        assert!(matches!(
            verify(&der, &[1, 2, 3], &[]),
            Err(CmsError::ContentType { .. })
        ));
        assert_eq!(
            verify(&vec![0x30; MAX_CMS + 1], JSON, &[]),
            Err(CmsError::TooLarge(MAX_CMS + 1))
        );
        assert!(matches!(
            verify(b"garbage", JSON, &[]),
            Err(CmsError::Malformed(_))
        ));
    }
}
