//! The owner-root rollover as a durable decision, as the CA rollover is (`rollover`): recorded
//! with its audit entry before anything is done, moved from phase to phase by the control
//! (`control::roots`) as the core's rules allow (`core::roots`), and cleared when the old root
//! is retired. A server that dies in between finds it at start and goes on.

use super::{OperatorError, Pending, Service};
use crate::audit::AuditEvent;
use crate::core::DeviceId;
use crate::core::roots::{self, RootPhase, RootProgress, RootRollover};
use crate::store::Change;

/// Where the rollover under way is kept.
const ROOT_ROLLOVER: &str = "root-rollover";

impl Service {
    /// The owner-root rollover under way, if any.
    pub fn pending_root_rollover(&self) -> Result<Option<RootRollover>, OperatorError> {
        match self.store.meta(ROOT_ROLLOVER)? {
            Some(bytes) if !bytes.is_empty() => protocol::cbor::from_slice(&bytes, 1024)
                .map(Some)
                .map_err(|e| OperatorError::Internal(format!("the pending root rollover: {e}"))),
            _ => Ok(None),
        }
    }

    /// Records `rollover` (a new one, or one entering a phase), audited as `event`.
    async fn record_root_rollover(
        &self,
        rollover: Option<RootRollover>,
        event: &str,
        detail: String,
    ) -> Result<(), OperatorError> {
        self.commit(|now| {
            let change = Change {
                meta: vec![(
                    ROOT_ROLLOVER.into(),
                    rollover
                        .as_ref()
                        .map(protocol::cbor::to_vec)
                        .unwrap_or_default(),
                )],
                audit: vec![AuditEvent::operator(None, event, detail.clone(), now)],
                ..Change::default()
            };
            Ok::<_, OperatorError>(Pending::of(change, ()))
        })
        .await
    }

    /// Decides a rollover to owner root `generation`: durable, and audited, before any file is
    /// written.
    pub async fn begin_root_rollover(
        &self,
        generation: u32,
    ) -> Result<RootRollover, OperatorError> {
        let now = self.now();
        let rollover = RootRollover {
            generation,
            phase: RootPhase::Distributing,
            decided_at: now,
            phase_at: now,
        };
        self.record_root_rollover(
            Some(rollover),
            "root-rollover",
            format!("owner root {generation} decided"),
        )
        .await?;
        Ok(rollover)
    }

    /// Moves `rollover` into `phase`.
    pub async fn enter_root_phase(
        &self,
        rollover: RootRollover,
        phase: RootPhase,
        detail: String,
    ) -> Result<RootRollover, OperatorError> {
        let next = RootRollover {
            phase,
            phase_at: self.now(),
            ..rollover
        };
        self.record_root_rollover(
            Some(next),
            "root-rollover-phase",
            format!("{phase}: {detail}"),
        )
        .await?;
        Ok(next)
    }

    /// Clears a rollover whose old root is retired.
    pub async fn end_root_rollover(&self, rollover: RootRollover) -> Result<(), OperatorError> {
        self.record_root_rollover(
            None,
            "root-retired",
            format!(
                "owner root {} retired: nothing chains to it; owner root {} alone in force",
                rollover.generation - 1,
                rollover.generation
            ),
        )
        .await
    }

    /// What holds the rollover whose old root is `old_root` (DER): one pass over the devices.
    pub fn root_progress(&self, old_root: &[u8]) -> Result<RootProgress, OperatorError> {
        let (registrar, now) = (self.registrar(), self.now());
        let mut progress = RootProgress::default();
        self.each_device(|d| progress.note(&registrar, old_root, d, now))?;
        Ok(progress)
    }

    /// Records that each device of `ids` took the owner roots whose digest is `digest`.
    pub async fn anchors_accepted(
        &self,
        ids: &[DeviceId],
        digest: [u8; 32],
    ) -> Result<(), OperatorError> {
        self.order(ids, |id, record, now| {
            roots::anchors_accepted(record, id, &digest, now)
        })
        .await
        .map(|_| ())
    }
}
