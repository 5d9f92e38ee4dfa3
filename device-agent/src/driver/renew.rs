//! Renewal: a fresh key, a CSR bound to the session, the renewed certificate checked and
//! stored beside the current one until a session with it confirms it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use protocol::message::{Enrollment, Request, Response};

use super::{Agent, blocking, failure, unexpected};
use crate::error::AgentError;
use crate::machine::{Renewal, renewal};
use crate::platform::DeviceKey;
use crate::transport::Session;

impl Agent {
    /// The pending LDevID key from an interrupted attempt, or a fresh one. Reusing it makes
    /// the server answer with the certificate it may already have issued for it.
    pub(super) async fn pending_key(&self) -> Result<Arc<dyn DeviceKey>, AgentError> {
        let keys = self.keys.clone();
        blocking(move || match keys.pending_ldevid_key()? {
            Some(k) => Ok(k),
            None => keys.create_pending_ldevid_key(),
        })
        .await
    }

    pub(super) async fn commit_pending_key(&self) -> Result<(), AgentError> {
        let keys = self.keys.clone();
        blocking(move || keys.commit_pending_ldevid_key()).await
    }

    /// First half of a renewal: a fresh key (or the pending one of an interrupted attempt), a
    /// CSR bound to `session`, and the server's answer, checked.
    pub async fn request_renewal(&self, session: &Session) -> Result<Enrollment, AgentError> {
        let state = self.load_state()?;
        let key = self.pending_key().await?;
        let csr = self.csr(key.clone(), session.binding()?.to_vec()).await?;
        let enrollment = match session.call(&Request::Reenroll { csr }).await? {
            Response::Enrolled(e) => *e,
            other => return Err(unexpected("a renewed certificate", &other)),
        };
        if let Err(e) = renewal::check_renewal(
            &enrollment,
            &self.identity.serial,
            &key.public_key(),
            &state.roots(),
            self.now(),
        ) {
            self.report(session, Request::EnrollStatus(failure(&e)))
                .await;
            return Err(e);
        }
        Ok(enrollment)
    }

    /// Second half: stores the renewed certificate next to the current one. The next
    /// [`Agent::connect`] uses and thereby confirms it.
    pub async fn store_renewal(&self, enrollment: Enrollment) -> Result<(), AgentError> {
        let mut state = self.load_state()?;
        state.renewal = Some(Renewal {
            ldevid: enrollment.certificate,
            chain: enrollment.chain,
            config: Some(enrollment.config),
        });
        self.save(&state).await
    }

    /// Renews the LDevID with a fresh key over `session`, and returns the session opened with
    /// the new certificate.
    pub async fn renew(&self, session: Session) -> Result<Session, AgentError> {
        let started = std::time::Instant::now();
        let enrollment = self.request_renewal(&session).await?;
        self.store_renewal(enrollment).await?;
        session.close();
        let session = self.connect().await?;
        self.stats
            .last_renewal_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(session)
    }
}
