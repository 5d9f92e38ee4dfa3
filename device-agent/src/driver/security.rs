//! Security events: recorded in the device's state first, then forwarded to the onboarder,
//! which keeps them in the device's history.

use protocol::message::{Request, Response, SecurityEventKind};

use super::Agent;
use crate::error::AgentError;
use crate::machine::security;
use crate::transport::Session;

impl Agent {
    /// Records a security event and, with a session, forwards what is pending at once (else
    /// the next session does).
    pub async fn security_event(
        &self,
        session: Option<&Session>,
        kind: SecurityEventKind,
        detail: &str,
    ) -> Result<(), AgentError> {
        let state = self.load_state()?;
        self.save(&security::recorded(&state, kind, detail, self.now()))
            .await?;
        tracing::warn!(serial = self.serial(), ?kind, "security event: {detail}");
        if let Some(session) = session {
            self.forward_security_events(session).await;
        }
        Ok(())
    }

    /// Tamper seen by the platform (an enclosure switch, a changed boot measurement): for the
    /// maker's platform code to call.
    pub async fn report_tamper(&self, detail: &str) -> Result<(), AgentError> {
        self.security_event(None, SecurityEventKind::Tamper, detail)
            .await
    }

    /// Forwards the pending security events on `session` and forgets them once acknowledged
    /// (best effort: what is not delivered goes with the next session).
    pub(super) async fn forward_security_events(&self, session: &Session) {
        let Ok(state) = self.load_state() else { return };
        let Some(last) = state.security_events.last().map(|e| e.sequence) else {
            return;
        };
        let request = Request::SecurityEvents(state.security_events.clone());
        match session.call(&request).await {
            Ok(Response::Ack) => {
                if let Ok(now) = self.load_state()
                    && let Err(e) = self.save(&security::delivered(&now, last)).await
                {
                    tracing::warn!(serial = self.serial(), "security events: {e}");
                }
            }
            Ok(other) => tracing::warn!(serial = self.serial(), "security events: {other:?}"),
            Err(e) => tracing::debug!(serial = self.serial(), "security events not delivered: {e}"),
        }
    }
}
