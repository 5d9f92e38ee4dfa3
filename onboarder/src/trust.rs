//! What client certificates are checked against at the handshake: the imported manufacturer
//! roots (for IDevIDs), the owner root and our issuing CAs (for LDevIDs), and the certificates
//! we no longer accept (revoked, or superseded past their grace period).
//!
//! The anchor set is parsed once and swapped whole when an operator imports an anchor, so a
//! handshake only takes a cheap reference to the current set. It also tells which maker an
//! IDevID belongs to: the anchor its verified path ends at, never a name or key id the
//! certificate merely claims.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::core::MakerId;
use crate::store::Revocation;

/// The anchors in force: every one accepted at the handshake, and the maker of each
/// manufacturer anchor (by its SubjectPublicKeyInfo as webpki holds it).
#[derive(Debug, Default)]
pub struct Anchors {
    /// Every anchor.
    pub all: Vec<TrustAnchor<'static>>,
    makers: HashMap<Vec<u8>, MakerId>,
}

/// A parsed, shareable set of trust anchors and the revoked certificates.
#[derive(Debug, Default)]
pub struct TrustStore {
    current: RwLock<Arc<Anchors>>,
    revoked: RwLock<HashMap<String, Revocation>>,
}

fn parse_anchor(der: &[u8]) -> Option<TrustAnchor<'static>> {
    webpki::anchor_from_trusted_cert(&CertificateDer::from(der))
        .ok()
        .map(|a| a.to_owned())
}

impl TrustStore {
    /// Replaces the whole set: the manufacturers' anchors (DER, with the maker each stands
    /// for) and our own (owner root, issuing CAs). Certificates that are not usable anchors are
    /// skipped (they were checked at import).
    pub fn replace(&self, makers: &[(MakerId, Vec<u8>)], ours: &[Vec<u8>]) {
        let mut anchors = Anchors::default();
        for (maker, der) in makers {
            if let Some(anchor) = parse_anchor(der) {
                anchors
                    .makers
                    .insert(anchor.subject_public_key_info.to_vec(), maker.clone());
                anchors.all.push(anchor);
            }
        }
        anchors
            .all
            .extend(ours.iter().filter_map(|der| parse_anchor(der)));
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the value is
        // still a complete set.
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(anchors);
    }

    /// The current set.
    pub fn snapshot(&self) -> Arc<Anchors> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The maker of an IDevID: the manufacturer anchor its path (through `intermediates`)
    /// verifies to at `now`, or `None` if it verifies to none of them. The handshake already
    /// checked the path; checking it again here is what tells which anchor it ended at.
    pub fn maker_of(&self, leaf: &[u8], intermediates: &[Vec<u8>], now: u64) -> Option<MakerId> {
        let anchors = self.snapshot();
        let leaf = CertificateDer::from(leaf);
        let cert = webpki::EndEntityCert::try_from(&leaf).ok()?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let path = cert
            .verify_for_usage(
                certs::chain::ALGORITHMS,
                &anchors.all,
                &intermediates,
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .ok()?;
        anchors
            .makers
            .get(path.anchor().subject_public_key_info.as_ref())
            .cloned()
    }

    /// Adds (or replaces) revocations.
    pub fn revoke(&self, entries: impl IntoIterator<Item = Revocation>) {
        let mut map = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        for r in entries {
            map.insert(r.cert_serial.clone(), r);
        }
    }

    /// Whether the certificate with serial `cert_serial` (hex) is refused at `now`.
    pub fn is_revoked(&self, cert_serial: &str, now: u64) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cert_serial)
            .is_some_and(|r| r.effective_at <= now)
    }

    /// Drops the entries of certificates expired at `now` (nothing lists or refuses them any
    /// more) and returns their serials, for the store to forget them too.
    pub fn expire(&self, now: u64) -> Vec<String> {
        let mut map = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<String> = map
            .values()
            .filter(|r| r.not_after <= now)
            .map(|r| r.cert_serial.clone())
            .collect();
        for serial in &expired {
            map.remove(serial);
        }
        expired
    }

    /// Revocations in force at `now`, and the earliest time a pending one (a grace period)
    /// takes effect.
    pub fn revocations(&self, now: u64) -> (Vec<Revocation>, Option<u64>) {
        let map = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        let next = map
            .values()
            .filter(|r| r.effective_at > now)
            .map(|r| r.effective_at)
            .min();
        let active = map
            .values()
            .filter(|r| r.effective_at <= now && r.not_after > now)
            .cloned()
            .collect();
        (active, next)
    }

    /// Checks a client certificate at a handshake, whatever the transport: a path from `leaf`
    /// through `intermediates` to an anchor in force, for client authentication, at `now`,
    /// and not revoked.
    pub fn verify_client(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), webpki::Error> {
        let anchors = self.snapshot();
        let cert = webpki::EndEntityCert::try_from(leaf)?;
        cert.verify_for_usage(
            certs::chain::ALGORITHMS,
            &anchors.all,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )?;
        let serial = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| certs::inspect::hex(c.raw_serial()))
            .map_err(|_| webpki::Error::BadDer)?;
        if self.is_revoked(&serial, now.as_secs()) {
            return Err(webpki::Error::CertRevoked);
        }
        Ok(())
    }

    /// Checks that `der` can serve as a trust anchor.
    pub fn check_anchor(der: &[u8]) -> Result<(), String> {
        webpki::anchor_from_trusted_cert(&CertificateDer::from(der))
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }
}
