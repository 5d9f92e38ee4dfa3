//! The run loop: onboard, keep the operational session, answer commands, renew on time,
//! update firmware, and try again after failures with the delays of
//! [`crate::machine::backoff`].

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Agent, Stop};
use crate::error::AgentError;
use crate::machine::backoff::{self, Attempt};
use crate::machine::recovery;

impl Agent {
    /// Runs `op`, retrying transient failures (see [`AgentError::is_transient`]) with jittered
    /// exponential backoff (at least [`crate::Backoff::busy`] after a busy server) until
    /// `deadline` has passed.
    pub async fn retrying<T, F, Fut>(&self, deadline: Duration, mut op: F) -> Result<T, AgentError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AgentError>>,
    {
        let start = tokio::time::Instant::now();
        let mut waited = None;
        loop {
            let e = match op().await {
                Err(e) if e.is_transient() => e,
                other => return other,
            };
            let delay = backoff::wait(waited, failed(&e), &self.options.backoff)
                .unwrap_or(self.options.backoff.initial);
            if start.elapsed() + delay >= deadline {
                return Err(e);
            }
            tracing::debug!(serial = self.serial(), "retrying in {delay:?}: {e}");
            tokio::time::sleep(self.jitter(delay)).await;
            waited = Some(delay);
        }
    }

    /// Runs the device until `shutdown` completes or the owner decommissions it. After a
    /// decommissioning the device is bare (factory state) and the loop ends: what comes next
    /// (a new owner) is a new provisioning. A refused credential is tried again only after
    /// the long `Backoff::refused` delay.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut waited: Option<Duration> = None;
        loop {
            let sessions_before = self.stats.sessions.load(Ordering::Relaxed);
            let attempt = async {
                self.enroll_once().await?;
                let mut session = match self.connect().await {
                    Err(AgentError::CredentialRefused { reason, .. })
                        if recovery::done_with_owner(&self.load_state()?, reason) =>
                    {
                        tracing::warn!(
                            serial = self.serial(),
                            "the onboarder revoked this wiped device's credential before its \
                             attestation's answer arrived; forgetting the owner"
                        );
                        self.forget_owner(&mut self.load_state()?).await?;
                        return Ok(true);
                    }
                    Err(AgentError::CredentialRefused { reason, detail })
                        if recovery::reenroll_after(reason) =>
                    {
                        // Refused a new enrollment too: only the owner can change that, so it
                        // waits as long as any refused credential.
                        self.reenroll().await.map_err(|e| match e {
                            AgentError::Refused { message, .. } => AgentError::CredentialRefused {
                                reason,
                                detail: format!("{detail}; enrolling again refused: {message}"),
                            },
                            other => other,
                        })?;
                        self.connect().await?
                    }
                    other => other?,
                };
                loop {
                    match self.serve(&session).await? {
                        Stop::Closed => {
                            tracing::info!(
                                serial = self.serial(),
                                "session closed: {}",
                                session.closed().await
                            );
                            return Ok::<bool, AgentError>(false);
                        }
                        Stop::Renew => session = self.renew(session).await?,
                        Stop::Update { manifest, url } => {
                            session = self.update(session, manifest, url).await?
                        }
                        Stop::Decommission {
                            nonce,
                            method,
                            export_to,
                        } => {
                            self.decommission(&session, nonce, method, export_to)
                                .await?;
                            session.close();
                            return Ok::<bool, AgentError>(true);
                        }
                    }
                }
            };
            let result = tokio::select! {
                () = &mut shutdown => return Ok(()),
                result = attempt => result,
            };
            let had_session = self.stats.sessions.load(Ordering::Relaxed) > sessions_before;
            let outcome = match &result {
                Ok(true) => {
                    tracing::info!(
                        serial = self.serial(),
                        "decommissioned: back in the factory state"
                    );
                    return Ok(());
                }
                Ok(false) => Attempt::HadSession { failed: false },
                Err(_) if had_session => Attempt::HadSession { failed: true },
                Err(e) => failed(e),
            };
            waited = backoff::wait(waited, outcome, &self.options.backoff);
            if let Err(e) = result {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let delay = waited.unwrap_or(self.options.backoff.initial);
                if matches!(outcome, Attempt::Failed { permanent: true }) {
                    tracing::error!(serial = self.serial(), "{e}; trying again in {delay:?}");
                } else {
                    tracing::warn!(serial = self.serial(), "{e}; retrying in {delay:?}");
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(self.jitter(delay)) => {}
                }
            }
        }
    }
}

/// How an attempt that failed before any session ended, for the backoff.
fn failed(e: &AgentError) -> Attempt {
    match e {
        AgentError::Busy(_) => Attempt::Busy,
        e => Attempt::Failed {
            permanent: matches!(e, AgentError::CredentialRefused { .. }),
        },
    }
}
