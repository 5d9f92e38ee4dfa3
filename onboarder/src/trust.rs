//! The trust anchors client certificates are checked against: the imported manufacturer roots
//! (for IDevIDs) and the owner root (for LDevIDs).
//!
//! The set is parsed once and swapped whole when an operator imports an anchor, so a handshake
//! only takes a cheap reference to the current set.

use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor};

/// A parsed, shareable set of trust anchors.
#[derive(Debug, Default)]
pub struct TrustStore {
    current: RwLock<Arc<Vec<TrustAnchor<'static>>>>,
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

    /// Checks that `der` can serve as a trust anchor.
    pub fn check_anchor(der: &[u8]) -> Result<(), String> {
        webpki::anchor_from_trusted_cert(&CertificateDer::from(der))
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }
}
