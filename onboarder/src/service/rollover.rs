//! The CA rollover as one decision that survives a crash: the service records it (with its
//! audit entry) before anything else happens, and clears it only once every active device on an
//! older generation has been ordered to re-key. A server that died in between finds the
//! decision at start and finishes it (`control::rollover`).

use serde::{Deserialize, Serialize};

use super::{OperatorError, OrderReport, Pending, Service};
use crate::audit::AuditEvent;
use crate::core::{self, DeviceState};
use crate::store::Change;

/// Where the decided rollover is kept until it is carried out.
const ROLLOVER: &str = "ca-rollover";

/// A rollover decided and not yet carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRollover {
    /// The issuing CA generation it brings into force.
    pub generation: u32,
    /// When it was decided.
    pub at: u64,
}

impl Service {
    /// The rollover decided and not yet carried out, if any.
    pub fn pending_rollover(&self) -> Result<Option<PendingRollover>, OperatorError> {
        match self.store.meta(ROLLOVER)? {
            Some(bytes) if !bytes.is_empty() => protocol::cbor::from_slice(&bytes, 1024)
                .map(Some)
                .map_err(|e| OperatorError::Internal(format!("the pending rollover: {e}"))),
            _ => Ok(None),
        }
    }

    /// Decides a rollover to `generation`: durable, and audited, before any file is written.
    pub async fn begin_rollover(&self, generation: u32) -> Result<PendingRollover, OperatorError> {
        self.commit(|now| {
            let pending = PendingRollover {
                generation,
                at: now,
            };
            let change = Change {
                meta: vec![(ROLLOVER.into(), protocol::cbor::to_vec(&pending))],
                audit: vec![AuditEvent::operator(
                    None,
                    "ca-rollover",
                    format!("issuing CA generation {generation} decided"),
                    now,
                )],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, pending))
        })
        .await
    }

    /// Orders every active device whose certificate does not come from the issuing CA in force
    /// to re-key (devices with a rotation already pending keep it).
    pub async fn rotate_onto_current_ca(&self) -> Result<OrderReport, OperatorError> {
        let current = self.registrar().issuing.key_id.clone();
        let mut stale = Vec::new();
        self.each_device(|d| {
            let on_current = d.active_certificate().is_some_and(|c| c.issuer == current);
            if d.state == DeviceState::Active && !on_current {
                stale.push(d.id.clone());
            }
        })?;
        self.order(&stale, |id, record, now| {
            core::revoke::request_rotation(id, record, now)
        })
        .await
    }

    /// Clears a rollover once carried out.
    pub async fn end_rollover(
        &self,
        rollover: PendingRollover,
        ordered: usize,
    ) -> Result<(), OperatorError> {
        self.commit(|now| {
            let change = Change {
                meta: vec![(ROLLOVER.into(), Vec::new())],
                audit: vec![AuditEvent::operator(
                    None,
                    "ca-rollover-done",
                    format!(
                        "issuing CA generation {} in force; {ordered} devices ordered to re-key",
                        rollover.generation
                    ),
                    now,
                )],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, ()))
        })
        .await
    }
}
