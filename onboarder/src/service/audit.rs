//! Audit entries that go with no state change: the notes and refusals devices cause, within
//! the audit budget ([`crate::core::audit_budget`]), its summaries, and events about the
//! onboarder itself.

use super::{Pending, Service};
use crate::audit::AuditEvent;
use crate::store::{Change, StoreError};

impl Service {
    /// The entries of `events` that the audit budget admits now (each of kind `kind`), with the
    /// summaries of windows that just ended.
    pub(super) fn within_budget(
        &self,
        events: Vec<AuditEvent>,
        kind: impl Fn(&AuditEvent) -> String,
        now: u64,
    ) -> Vec<AuditEvent> {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for event in events {
            let kind = kind(&event);
            let admitted = budget.admit(event, &kind, now);
            if !admitted.iter().any(|e| e.action != "audit-suppressed") {
                self.metrics.audit_suppressed(1);
            }
            out.extend(admitted);
        }
        out
    }

    /// Writes audit entries that go with no state change (best effort: they must not fail
    /// louder than what they record).
    pub(super) async fn commit_audit(&self, audit: Vec<AuditEvent>) {
        if audit.is_empty() {
            return;
        }
        let change = Change {
            audit,
            ..Change::default()
        };
        if let Err(e) = self
            .commit(|_| Ok::<_, StoreError>(Pending::of(change.clone(), ())))
            .await
        {
            tracing::warn!("could not write audit entries: {e}");
        }
    }

    /// Writes the summaries of the audit budget's windows that have ended (called now and then,
    /// so a flood that stopped is still summed up).
    pub async fn flush_audit_budget(&self) {
        let now = self.now();
        let summaries = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush(now);
        self.commit_audit(summaries).await;
    }

    /// Appends an event about the onboarder itself (a rollover, a renewal) to the audit log.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let change = Change {
            audit: vec![event],
            ..Change::default()
        };
        self.commit(|_| Ok::<_, StoreError>(Pending::of(change.clone(), ())))
            .await
    }
}
