//! The few ASN.1 structures rcgen cannot write and x509-parser does not decode for us:
//! the hardwareModuleName otherName (RFC 4108) and IA5String extensions (MUD URL, MASA URL).

use yasna::models::ObjectIdentifier;
use yasna::{ASN1Result, Tag};

/// id-on-hardwareModuleName (RFC 4108), as used by 802.1AR IDevIDs and RFC 8995 2.3.
pub const OID_HARDWARE_MODULE_NAME: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 4];
/// id-pe-mud-url (RFC 8520).
pub const OID_MUD_URL: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 25];
/// id-pe-masa-url (RFC 8995 2.3.2).
pub const OID_MASA_URL: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 32];
/// id-kp-cmcRA (RFC 6402): marks the registrar's certificate (RFC 8995 2.6).
pub const OID_KP_CMC_RA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 28];
/// subjectAltName.
pub const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
/// X.520 serialNumber attribute.
pub const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// PKCS#9 challengePassword, which carries the CSR's session binding (RFC 7030 3.5).
pub const OID_CHALLENGE_PASSWORD: &[u64] = &[1, 2, 840, 113549, 1, 9, 7];

/// The content of a subjectAltName extension holding one hardwareModuleName otherName.
pub fn hardware_module_name_san(hw_type: &[u64], hw_serial: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            // GeneralName ::= otherName [0] IMPLICIT OtherName
            w.next().write_tagged_implicit(Tag::context(0), |w| {
                w.write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(OID_HARDWARE_MODULE_NAME));
                    w.next().write_tagged(Tag::context(0), |w| {
                        w.write_sequence(|w| {
                            w.next().write_oid(&ObjectIdentifier::from_slice(hw_type));
                            w.next().write_bytes(hw_serial);
                        })
                    });
                })
            });
        })
    })
}

/// Decodes the value of a hardwareModuleName otherName (the `[0] EXPLICIT` part that follows
/// the type OID) into its hwType OID (dotted) and hwSerialNum.
pub fn parse_hardware_module_name(value: &[u8]) -> ASN1Result<(String, Vec<u8>)> {
    yasna::parse_der(value, |r| {
        r.read_tagged(Tag::context(0), |r| {
            r.read_sequence(|r| {
                let oid = r.next().read_oid()?;
                let serial = r.next().read_bytes()?;
                Ok((oid_to_string(&oid), serial))
            })
        })
    })
}

/// DER IA5String.
pub fn ia5_string(s: &str) -> Vec<u8> {
    yasna::construct_der(|w| w.write_ia5_string(s))
}

/// Decodes a DER IA5String.
pub fn parse_ia5_string(der: &[u8]) -> ASN1Result<String> {
    yasna::parse_der(der, |r| r.read_ia5_string())
}

/// DER `SET { UTF8String }`: the values of a single-valued PKCS#10 attribute.
pub fn utf8_string_set(s: &str) -> Vec<u8> {
    yasna::construct_der(|w| w.write_set(|w| w.next().write_utf8_string(s)))
}

/// EST CsrAttrs (RFC 7030 4.5.2) of our policy: the challengePassword (where the channel
/// binding goes), a P-256 key (id-ecPublicKey with prime256v1) and ECDSA with SHA-256.
pub fn est_csr_attributes() -> Vec<u8> {
    let oid = ObjectIdentifier::from_slice;
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_oid(&oid(OID_CHALLENGE_PASSWORD));
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[1, 2, 840, 10045, 2, 1]));
                w.next()
                    .write_set(|w| w.next().write_oid(&oid(&[1, 2, 840, 10045, 3, 1, 7])));
            });
            w.next().write_oid(&oid(&[1, 2, 840, 10045, 4, 3, 2]));
        })
    })
}

fn oid_to_string(oid: &ObjectIdentifier) -> String {
    oid.components()
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_module_name_round_trip() {
        let san = hardware_module_name_san(&[1, 3, 6, 1, 4, 1, 32473, 1], b"SN-1");
        // SEQUENCE { [0] { OID, [0] { SEQUENCE { OID, OCTET STRING } } } }
        let value = yasna::parse_der(&san, |r| {
            r.read_sequence(|r| {
                r.next().read_tagged_implicit(Tag::context(0), |r| {
                    r.read_sequence(|r| {
                        let oid = r.next().read_oid()?;
                        assert_eq!(oid.components().as_slice(), OID_HARDWARE_MODULE_NAME);
                        r.next().read_der()
                    })
                })
            })
        })
        .unwrap();
        let (hw_type, serial) = parse_hardware_module_name(&value).unwrap();
        assert_eq!(hw_type, "1.3.6.1.4.1.32473.1");
        assert_eq!(serial, b"SN-1");
    }
}
