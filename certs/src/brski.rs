//! BRSKI's JSON vouchers and voucher requests in CMS (RFC 8366, RFC 8995 3), beside the
//! COSE encoding our own agent speaks: the same fields, two envelopes. A signed voucher or
//! request is told apart by its first byte (a CMS ContentInfo is a DER SEQUENCE, a COSE_Sign1
//! is CBOR), so every place that opens one takes either.
//!
//! JSON times are RFC 3339, binary fields base64 (RFC 8366 2.3). A JSON request carries no
//! TLS session binding (BRSKI has none): its freshness is its nonce and creation time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use protocol::error::{DecodeError, SignatureError};
use protocol::keys::PublicKey;
use protocol::voucher::{Assertion, Voucher, VoucherError, VoucherRequest};
use serde_json::{Map, Value, json};

use crate::CertInfo;
use crate::cms::{self, CmsError};
use crate::key::KeyPair;

/// id-ct-animaJSONVoucher (RFC 8366 5.3): the CMS content type of JSON vouchers and requests.
pub const OID_JSON_VOUCHER: &[u64] = &[1, 2, 840, 113549, 1, 9, 16, 1, 40];
/// The media type of a CMS-signed voucher (RFC 8366 5.3).
pub const VOUCHER_CMS: &str = "application/voucher-cms+json";
/// The media type of a COSE-signed voucher (constrained BRSKI).
pub const VOUCHER_COSE: &str = "application/voucher-cose+cbor";

const VOUCHER_ROOT: &str = "ietf-voucher:voucher";
const REQUEST_ROOT: &str = "ietf-voucher-request:voucher";

/// How a voucher or voucher request is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// COSE_Sign1 over CBOR (our agent, constrained BRSKI).
    #[default]
    Cose,
    /// CMS SignedData over JSON (RFC 8366, RFC 8995).
    Cms,
}

impl Encoding {
    /// The encoding of a signed artefact, from its first byte.
    pub fn of(signed: &[u8]) -> Encoding {
        if signed.first() == Some(&0x30) {
            Encoding::Cms
        } else {
            Encoding::Cose
        }
    }

    /// The HTTP media type of a voucher in this encoding.
    pub fn voucher_media_type(self) -> &'static str {
        match self {
            Encoding::Cose => VOUCHER_COSE,
            Encoding::Cms => VOUCHER_CMS,
        }
    }
}

fn decode(message: String) -> VoucherError {
    VoucherError::Decode(DecodeError::Malformed(message))
}

impl From<CmsError> for VoucherError {
    fn from(e: CmsError) -> Self {
        match e {
            CmsError::TooLarge(size) => VoucherError::Decode(DecodeError::TooLarge {
                size,
                limit: cms::MAX_CMS,
            }),
            CmsError::Digest | CmsError::Signature | CmsError::NoSignerCertificate => {
                VoucherError::Signature(SignatureError::Invalid)
            }
            other => decode(other.to_string()),
        }
    }
}

fn time(secs: u64) -> String {
    crate::rfc3339(secs)
}

fn parse_time(field: &str, value: &Value) -> Result<u64, VoucherError> {
    value
        .as_str()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
        .ok_or_else(|| decode(format!("{field} is not an RFC 3339 time")))
}

fn bytes(field: &str, value: &Value) -> Result<Vec<u8>, VoucherError> {
    value
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| decode(format!("{field} is not base64")))
}

fn string(field: &str, value: &Value) -> Result<String, VoucherError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| decode(format!("{field} is not a string")))
}

fn assertion(value: &Value) -> Result<Assertion, VoucherError> {
    serde_json::from_value(value.clone()).map_err(|e| decode(format!("assertion: {e}")))
}

fn assertion_name(a: Assertion) -> Value {
    serde_json::to_value(a).unwrap_or(Value::Null)
}

/// The fields under `root` in a JSON voucher or request.
fn fields(json: &[u8], root: &str) -> Result<Map<String, Value>, VoucherError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| decode(format!("not JSON: {e}")))?;
    match value.get(root) {
        Some(Value::Object(map)) => Ok(map.clone()),
        _ => Err(decode(format!("no {root:?} object"))),
    }
}

fn required<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a Value, VoucherError> {
    map.get(field)
        .ok_or_else(|| decode(format!("{field} is missing")))
}

/// A voucher as RFC 8366 JSON.
pub fn voucher_json(v: &Voucher) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("created-on".into(), json!(time(v.created_on)));
    if let Some(e) = v.expires_on {
        map.insert("expires-on".into(), json!(time(e)));
    }
    map.insert("assertion".into(), assertion_name(v.assertion));
    map.insert("serial-number".into(), json!(v.serial_number));
    if let Some(i) = &v.idevid_issuer {
        map.insert("idevid-issuer".into(), json!(B64.encode(i)));
    }
    map.insert(
        "pinned-domain-cert".into(),
        json!(B64.encode(&v.pinned_domain_cert)),
    );
    if let Some(n) = &v.nonce {
        map.insert("nonce".into(), json!(B64.encode(n)));
    }
    json!({ VOUCHER_ROOT: map }).to_string().into_bytes()
}

/// A voucher from RFC 8366 JSON.
pub fn voucher_from_json(json: &[u8]) -> Result<Voucher, VoucherError> {
    let map = fields(json, VOUCHER_ROOT)?;
    let optional = |field: &str| map.get(field).filter(|v| !v.is_null());
    Ok(Voucher {
        created_on: parse_time("created-on", required(&map, "created-on")?)?,
        expires_on: optional("expires-on")
            .map(|v| parse_time("expires-on", v))
            .transpose()?,
        assertion: assertion(required(&map, "assertion")?)?,
        serial_number: string("serial-number", required(&map, "serial-number")?)?,
        idevid_issuer: optional("idevid-issuer")
            .map(|v| bytes("idevid-issuer", v))
            .transpose()?,
        pinned_domain_cert: bytes("pinned-domain-cert", required(&map, "pinned-domain-cert")?)?,
        nonce: optional("nonce").map(|v| bytes("nonce", v)).transpose()?,
    })
}

/// Signs `voucher` as the MASA (`key`, certificate `cert`) in `encoding`.
pub fn sign_voucher(
    voucher: &Voucher,
    encoding: Encoding,
    key: &KeyPair,
    cert: &[u8],
    now: u64,
) -> Result<Vec<u8>, crate::CertError> {
    match encoding {
        Encoding::Cose => Ok(voucher.sign(key)?),
        Encoding::Cms => cms::sign(
            OID_JSON_VOUCHER,
            &voucher_json(voucher),
            key,
            cert,
            &[],
            now,
        ),
    }
}

/// Verifies a voucher in either encoding with the MASA's public key and decodes it. A CMS
/// voucher must be signed by a certificate of that key.
pub fn open_voucher(signed: &[u8], masa_key: &PublicKey) -> Result<Voucher, VoucherError> {
    match Encoding::of(signed) {
        Encoding::Cose => Voucher::open(signed, masa_key),
        Encoding::Cms => {
            let verified = cms::verify(signed, OID_JSON_VOUCHER, &[])?;
            signed_by(&verified.signer, masa_key)?;
            voucher_from_json(&verified.content)
        }
    }
}

/// Decodes a voucher in either encoding without checking its signature: for filing vouchers
/// by serial, or reading back one already verified.
pub fn parse_voucher_unverified(signed: &[u8]) -> Result<Voucher, VoucherError> {
    match Encoding::of(signed) {
        Encoding::Cose => Ok(Voucher::parse_unverified(signed)?),
        Encoding::Cms => {
            let verified = cms::verify(signed, OID_JSON_VOUCHER, &[])?;
            voucher_from_json(&verified.content)
        }
    }
}

fn signed_by(cert: &[u8], key: &PublicKey) -> Result<(), VoucherError> {
    let info = CertInfo::parse(cert).map_err(|e| decode(format!("signer certificate: {e}")))?;
    if info.public_key == *key {
        Ok(())
    } else {
        Err(VoucherError::Signature(SignatureError::Invalid))
    }
}

/// A pledge's voucher request as RFC 8995 JSON (no session binding).
pub fn request_json(r: &VoucherRequest) -> Vec<u8> {
    json!({ REQUEST_ROOT: {
        "created-on": time(r.created_on),
        "assertion": assertion_name(r.assertion),
        "serial-number": r.serial_number,
        "nonce": B64.encode(&r.nonce),
        "proximity-registrar-cert": B64.encode(&r.proximity_registrar_cert),
    }})
    .to_string()
    .into_bytes()
}

/// A pledge's voucher request from RFC 8995 JSON.
pub fn request_from_json(json: &[u8]) -> Result<VoucherRequest, VoucherError> {
    let map = fields(json, REQUEST_ROOT)?;
    Ok(VoucherRequest {
        created_on: parse_time("created-on", required(&map, "created-on")?)?,
        assertion: map
            .get("assertion")
            .map(assertion)
            .transpose()?
            .unwrap_or(Assertion::Proximity),
        serial_number: string("serial-number", required(&map, "serial-number")?)?,
        nonce: bytes("nonce", required(&map, "nonce")?)?,
        proximity_registrar_cert: bytes(
            "proximity-registrar-cert",
            required(&map, "proximity-registrar-cert")?,
        )?,
        session_binding: Vec::new(),
    })
}

/// Verifies a pledge's voucher request in either encoding with its IDevID's public key and
/// decodes it. A CMS request must be signed by a certificate of that key.
pub fn open_request(signed: &[u8], idevid_key: &PublicKey) -> Result<VoucherRequest, VoucherError> {
    match Encoding::of(signed) {
        Encoding::Cose => VoucherRequest::open(signed, idevid_key),
        Encoding::Cms => {
            let verified = cms::verify(signed, OID_JSON_VOUCHER, &[])?;
            signed_by(&verified.signer, idevid_key)?;
            request_from_json(&verified.content)
        }
    }
}

/// What a registrar asks a MASA (RFC 8995 5.5): a nonced voucher for a pledge, carrying the
/// pledge's own signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarRequest {
    /// When the registrar made it.
    pub created_on: u64,
    /// The pledge's serial number.
    pub serial_number: String,
    /// The pledge's nonce.
    pub nonce: Vec<u8>,
    /// The pledge's signed voucher request, as it sent it (either encoding).
    pub prior_signed_voucher_request: Vec<u8>,
}

/// Signs a registrar voucher request with the registrar's key; the message carries the
/// registrar's certificate, then `chain` (up to the owner's root, which the MASA pins), then
/// `pledge_idevid` (a COSE request does not carry it).
pub fn sign_registrar_request(
    request: &RegistrarRequest,
    key: &KeyPair,
    cert: &[u8],
    chain: &[&[u8]],
    now: u64,
) -> Result<Vec<u8>, crate::CertError> {
    let json = json!({ REQUEST_ROOT: {
        "created-on": time(request.created_on),
        "assertion": "proximity",
        "serial-number": request.serial_number,
        "nonce": B64.encode(&request.nonce),
        "prior-signed-voucher-request": B64.encode(&request.prior_signed_voucher_request),
    }})
    .to_string();
    cms::sign(OID_JSON_VOUCHER, json.as_bytes(), key, cert, chain, now)
}

/// A verified registrar request and what its message carried: the MASA decides whether it
/// knows the signer.
#[derive(Debug, Clone)]
pub struct OpenedRegistrarRequest {
    /// The request.
    pub request: RegistrarRequest,
    /// The registrar's certificate (DER).
    pub signer: Vec<u8>,
    /// Every certificate in the message (DER).
    pub certificates: Vec<Vec<u8>>,
}

/// Verifies a registrar voucher request's CMS signature (by the certificate it carries) and
/// decodes it.
pub fn open_registrar_request(signed: &[u8]) -> Result<OpenedRegistrarRequest, VoucherError> {
    let verified = cms::verify(signed, OID_JSON_VOUCHER, &[])?;
    let map = fields(&verified.content, REQUEST_ROOT)?;
    Ok(OpenedRegistrarRequest {
        request: RegistrarRequest {
            created_on: parse_time("created-on", required(&map, "created-on")?)?,
            serial_number: string("serial-number", required(&map, "serial-number")?)?,
            nonce: bytes("nonce", required(&map, "nonce")?)?,
            prior_signed_voucher_request: bytes(
                "prior-signed-voucher-request",
                required(&map, "prior-signed-voucher-request")?,
            )?,
        },
        signer: verified.signer,
        certificates: verified.certificates,
    })
}

/// The certificates a pledge's CMS request carries (its IDevID among them); none for COSE.
pub fn request_certificates(signed: &[u8]) -> Vec<Vec<u8>> {
    match Encoding::of(signed) {
        Encoding::Cose => Vec::new(),
        Encoding::Cms => cms::verify(signed, OID_JSON_VOUCHER, &[])
            .map(|v| v.certificates)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyKind;

    fn voucher(nonce: Option<Vec<u8>>) -> Voucher {
        Voucher {
            created_on: 1_790_000_000,
            expires_on: nonce.is_none().then_some(1_800_000_000),
            assertion: Assertion::Verified,
            serial_number: "SN-1".into(),
            idevid_issuer: Some(vec![1, 2, 3]),
            pinned_domain_cert: vec![0x30, 3, 1, 2, 3],
            nonce,
        }
    }

    #[test]
    fn a_voucher_reads_back_the_same_in_json() {
        for v in [voucher(None), voucher(Some(vec![9; 16]))] {
            assert_eq!(voucher_from_json(&voucher_json(&v)).unwrap(), v);
        }
        let text = String::from_utf8(voucher_json(&voucher(None))).unwrap();
        assert!(text.contains("\"ietf-voucher:voucher\""), "{text}");
        assert!(text.contains("\"created-on\":\"2026-09-21T"), "{text}");
    }

    #[test]
    fn both_encodings_open_with_the_masa_key_only() {
        let masa = crate::factory::Manufacturer::create(
            crate::factory::ManufacturerConfig::new("Acme"),
            1_790_000_000,
        )
        .unwrap();
        let other = KeyPair::generate(KeyKind::P256).unwrap();
        let v = voucher(None);
        for encoding in [Encoding::Cose, Encoding::Cms] {
            let signed = sign_voucher(
                &v,
                encoding,
                masa.masa_key(),
                masa.masa_cert(),
                1_790_000_000,
            )
            .unwrap();
            assert_eq!(Encoding::of(&signed), encoding);
            assert_eq!(
                open_voucher(&signed, &masa.masa_key().public_key()).unwrap(),
                v
            );
            assert_eq!(parse_voucher_unverified(&signed).unwrap(), v);
            assert!(matches!(
                open_voucher(&signed, &other.public_key()),
                Err(VoucherError::Signature(_))
            ));
        }
    }

    #[test]
    fn malformed_json_is_refused_with_the_field() {
        for (json, what) in [
            (&b"{}"[..], "ietf-voucher:voucher"),
            (
                br#"{"ietf-voucher:voucher":{"assertion":"verified"}}"#,
                "created-on",
            ),
            (
                br#"{"ietf-voucher:voucher":{"created-on":"yesterday"}}"#,
                "RFC 3339",
            ),
            (b"not json", "not JSON"),
        ] {
            let e = voucher_from_json(json).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}
