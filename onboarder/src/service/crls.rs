//! Certificate revocation lists: one per issuing CA generation still responsible for live
//! certificates, each with a CRL number one higher than the last (kept in the store, and durable
//! before any CRL carrying it is published). The CRLs themselves are kept in the store too, so
//! that replicas which did not sign them serve them.

use serde::{Deserialize, Serialize};

use super::{OperatorError, Pending, Service};
use crate::store::Change;

/// One CRL as published.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crl {
    /// Issuing CA generation.
    pub generation: u32,
    /// CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: u64,
    /// nextUpdate.
    pub next_update: u64,
    /// Number of entries.
    pub entries: usize,
    /// The CRL, DER.
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// A CRL as kept in the store, for the replicas that did not sign it.
#[derive(Serialize, Deserialize)]
struct StoredCrl {
    crl: Crl,
    #[serde(with = "serde_bytes")]
    der: Vec<u8>,
}

/// The store's name of generation `n`'s CRL last published.
fn stored_name(generation: u32) -> String {
    format!("crl/{generation}")
}

impl Service {
    /// The CRLs last published (by this replica or another), from the store.
    pub fn published_crls(&self) -> Result<Vec<Crl>, OperatorError> {
        self.store
            .meta_prefix("crl/")?
            .into_iter()
            .map(|(name, value)| {
                let stored: StoredCrl = protocol::cbor::from_slice(&value, 64 * 1024 * 1024)
                    .map_err(|e| OperatorError::Internal(format!("stored {name}: {e}")))?;
                Ok(Crl {
                    der: stored.der,
                    ..stored.crl
                })
            })
            .collect()
    }

    /// Builds a fresh CRL for every issuing CA generation still responsible for live
    /// certificates, each with a CRL number one higher than the last, valid for `validity`
    /// seconds. Also returns when a grace period next ends (the next time the CRL changes by
    /// itself).
    pub async fn build_crls(
        &self,
        validity: u64,
    ) -> Result<(Vec<Crl>, Option<u64>), OperatorError> {
        let now = self.now();
        let registrar = self.registrar();
        let horizon = registrar.policy.ldevid_lifetime + registrar.policy.superseded_grace;
        let mut change = Change {
            forget_revocations: self.trust.expire(now),
            ..Change::default()
        };
        let (revocations, next_change) = self.trust.revocations(now);
        let mut crls = Vec::new();
        for generation in registrar.generations() {
            if generation
                .retired_at
                .is_some_and(|at| now > at.saturating_add(horizon))
            {
                continue;
            }
            let key = format!("crl-number/{}", generation.generation);
            let number = self
                .store
                .meta(&key)?
                .and_then(|v| v.try_into().ok())
                .map_or(0, u64::from_be_bytes)
                + 1;
            change.meta.push((key, number.to_be_bytes().to_vec()));
            let mut entries: Vec<certs::crl::RevokedCert> = revocations
                .iter()
                .filter(|r| r.issuer == generation.key_id)
                .filter_map(|r| {
                    Some(certs::crl::RevokedCert {
                        serial: certs::inspect::unhex(&r.cert_serial)?,
                        revoked_at: r.revoked_at,
                        reason: r.reason,
                    })
                })
                .collect();
            entries.sort_by(|a, b| a.serial.cmp(&b.serial));
            let der = certs::crl::build(&generation.ca, &entries, number, now, now + validity)
                .map_err(|e| OperatorError::Internal(format!("signing the CRL: {e}")))?;
            let crl = Crl {
                generation: generation.generation,
                number,
                this_update: now,
                next_update: now + validity,
                entries: entries.len(),
                der,
            };
            change.meta.push((
                stored_name(generation.generation),
                protocol::cbor::to_vec(&StoredCrl {
                    crl: crl.clone(),
                    der: crl.der.clone(),
                }),
            ));
            crls.push(crl);
        }
        // The numbers (and the CRLs, for the other replicas) are durable before any CRL
        // carrying them leaves this function.
        self.commit(|_| Ok::<_, OperatorError>(Pending::of(change.clone(), ())))
            .await?;
        Ok((crls, next_change))
    }
}
