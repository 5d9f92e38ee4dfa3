//! The owner roots a `TrustAnchors` command gives, checked before the device trusts them in
//! place of those it has (an owner-root rollover). The command only comes on an operational
//! session, whose server the device authenticated with the roots it trusts now; and a set is
//! taken only if it still authenticates that server and the device's own certificate, so no
//! command can cut the device off from its owner.

use certs::CertInfo;
use certs::chain::{self, Usage};
use protocol::message::MAX_TRUST_ANCHORS;

use super::onboarding::check_registrar;
use crate::error::AgentError;

/// Checks `roots` (DER) against the server chain of the session they came on and the device's
/// LDevID chain (leaf first), at `now`.
pub fn check(
    roots: &[Vec<u8>],
    server_chain: &[Vec<u8>],
    ldevid_chain: &[Vec<u8>],
    now: u64,
) -> Result<(), AgentError> {
    let bad = |m: String| AgentError::BadAnchors(m);
    if roots.is_empty() || roots.len() > MAX_TRUST_ANCHORS {
        return Err(bad(format!(
            "{} roots; between 1 and {MAX_TRUST_ANCHORS} are taken",
            roots.len()
        )));
    }
    for root in roots {
        let info = CertInfo::parse(root).map_err(|e| bad(e.to_string()))?;
        if !info.is_ca || info.subject != info.issuer {
            return Err(bad(format!("{} is not a root CA", info.subject)));
        }
    }
    check_registrar(roots, server_chain, now)
        .map_err(|e| bad(format!("they would not authenticate this server: {e}")))?;
    let (leaf, intermediates) = ldevid_chain
        .split_first()
        .ok_or_else(|| bad("the device has no LDevID".into()))?;
    chain::verify(leaf, intermediates, roots, now, Usage::ClientAuth)
        .map_err(|e| bad(format!("they would not authenticate this device: {e}")))
}

#[cfg(test)]
mod tests {
    use certs::ca::random_serial;
    use certs::profile::{LdevidProfile, issue_ldevid, issue_registrar};
    use certs::{Ca, CaName, KeyKind, KeyPair, Validity};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn ca(name: &str, parent: Option<&Ca>) -> Ca {
        let n = CaName {
            organization: "Owner".into(),
            common_name: name.into(),
        };
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let validity = Validity::starting(NOW, 365 * 86_400);
        match parent {
            None => Ca::root(&n, key, validity, &random_serial().unwrap()).unwrap(),
            Some(p) => p
                .intermediate(&n, key, validity, &random_serial().unwrap())
                .unwrap(),
        }
    }

    #[test]
    fn roots_are_taken_only_if_they_keep_server_and_device_reachable() {
        let old = ca("Root 1", None);
        let new = ca("Root 2", None);
        let issuing = ca("Issuing 1", Some(&old));
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let server = issue_registrar(
            &issuing,
            "Owner",
            &["onboarder.local".into()],
            &key,
            Validity::starting(NOW, 86_400),
            &random_serial().unwrap(),
        )
        .unwrap();
        let server_chain = vec![server, issuing.cert_der().to_vec()];
        let device_key = KeyPair::generate(KeyKind::P256).unwrap();
        let ldevid = issue_ldevid(
            &issuing,
            &LdevidProfile {
                serial: "SN-1",
                common_name: "SN-1",
                organization: "Owner",
                crl_url: None,
            },
            &device_key.spki_der(),
            Validity::starting(NOW, 86_400),
            &random_serial().unwrap(),
        )
        .unwrap();
        let device_chain = vec![ldevid, issuing.cert_der().to_vec()];
        let (old_der, new_der) = (old.cert_der().to_vec(), new.cert_der().to_vec());

        // Old and new: taken.
        check(
            &[old_der.clone(), new_der.clone()],
            &server_chain,
            &device_chain,
            NOW,
        )
        .unwrap();
        // The new one alone while the server and the device are under the old: refused.
        let refused = |roots: &[Vec<u8>]| {
            matches!(
                check(roots, &server_chain, &device_chain, NOW),
                Err(AgentError::BadAnchors(_))
            )
        };
        assert!(refused(std::slice::from_ref(&new_der)));
        // Nothing, too many, or something that is not a root.
        assert!(refused(&[]));
        assert!(refused(&vec![old_der.clone(); MAX_TRUST_ANCHORS + 1]));
        assert!(refused(&[old_der.clone(), issuing.cert_der().to_vec()]));
        assert!(refused(&[old_der, b"not a certificate".to_vec()]));
    }
}
