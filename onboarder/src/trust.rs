//! What client certificates are checked against at the handshake: the imported manufacturer
//! roots (for IDevIDs), the owner root (for LDevIDs), and the certificates we no longer accept
//! (revoked, or superseded past their grace period).
//!
//! The anchor set is parsed once and swapped whole when an operator imports an anchor, so a
//! handshake only takes a cheap reference to the current set.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::store::Revocation;

/// A parsed, shareable set of trust anchors and the revoked certificates.
#[derive(Debug, Default)]
pub struct TrustStore {
    current: RwLock<Arc<Vec<TrustAnchor<'static>>>>,
    revoked: RwLock<HashMap<String, Revocation>>,
}

impl TrustStore {
    /// A set built from DER certificates; certificates that are not usable anchors are skipped
    /// (they were checked at import).
    pub fn new(anchors: &[Vec<u8>]) -> Self {
        let store = TrustStore::default();
        store.replace(anchors);
        store
    }

    /// Replaces the whole set.
    pub fn replace(&self, anchors: &[Vec<u8>]) {
        let parsed: Vec<TrustAnchor<'static>> = anchors
            .iter()
            .filter_map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the value is
        // still a complete set.
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(parsed);
    }

    /// The current set.
    pub fn snapshot(&self) -> Arc<Vec<TrustAnchor<'static>>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Checks that `der` can serve as a trust anchor.
    pub fn check_anchor(der: &[u8]) -> Result<(), String> {
        webpki::anchor_from_trusted_cert(&CertificateDer::from(der))
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }
}
