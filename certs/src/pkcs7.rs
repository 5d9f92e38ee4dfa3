//! PKCS#7 / CMS "certs-only" messages (RFC 5652 SignedData with no signers), the way EST
//! (RFC 7030 4.1.3, 4.2.3) hands out certificates: a SignedData whose content is empty and
//! whose `certificates` field carries them.

use yasna::models::ObjectIdentifier;
use yasna::{ASN1Result, Tag};

/// id-signedData (RFC 5652 5.1).
const OID_SIGNED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 2];
/// id-data (RFC 5652 4).
const OID_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];

/// A certs-only message holding `certs` (DER), in order.
pub fn certs_only(certs: &[&[u8]]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next()
                .write_oid(&ObjectIdentifier::from_slice(OID_SIGNED_DATA));
            w.next().write_tagged(Tag::context(0), |w| {
                w.write_sequence(|w| {
                    w.next().write_u8(1); // version
                    w.next().write_set(|_| {}); // digestAlgorithms
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&ObjectIdentifier::from_slice(OID_DATA));
                    });
                    w.next().write_tagged_implicit(Tag::context(0), |w| {
                        // Written as a SET OF in the order given (DER would sort; every EST
                        // client, openssl included, takes them in this order).
                        w.write_sequence_of(|w| {
                            for cert in certs {
                                w.next().write_der(cert);
                            }
                        })
                    });
                    w.next().write_set(|_| {}); // signerInfos
                })
            });
        })
    })
}

/// The certificates of a certs-only message (or of any SignedData), DER, in order.
pub fn certificates(der: &[u8]) -> ASN1Result<Vec<Vec<u8>>> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let oid = r.next().read_oid()?;
            if oid != ObjectIdentifier::from_slice(OID_SIGNED_DATA) {
                return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid));
            }
            r.next().read_tagged(Tag::context(0), |r| {
                r.read_sequence(|r| {
                    r.next().read_u8()?;
                    r.next().read_der()?; // digestAlgorithms
                    r.next().read_der()?; // encapContentInfo
                    let certs = r.read_optional(|r| {
                        r.read_tagged_implicit(Tag::context(0), |r| {
                            let mut certs = Vec::new();
                            r.read_sequence_of(|r| {
                                certs.push(r.read_der()?);
                                Ok(())
                            })?;
                            Ok(certs)
                        })
                    })?;
                    // crls [1] and signerInfos follow; not needed.
                    while r.read_optional(|r| r.read_der())?.is_some() {}
                    Ok(certs.unwrap_or_default())
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_come_back_in_order() {
        let a = yasna::construct_der(|w| w.write_sequence(|w| w.next().write_u8(1)));
        let b = yasna::construct_der(|w| w.write_sequence(|w| w.next().write_u8(2)));
        let message = certs_only(&[&a, &b]);
        assert_eq!(certificates(&message).unwrap(), vec![a, b]);
        assert!(certificates(b"\x30\x00").is_err());
    }
}
