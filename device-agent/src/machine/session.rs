//! The operational session: which certificate opens it, what is delivered first, and which
//! command or deadline ends serving it.

use protocol::message::{Command, FirmwareReport};

use super::commands::{self, Action};
use super::{AgentState, Renewal};
use crate::error::AgentError;

/// Which certificate to open the operational session with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The renewed one, stored but not confirmed: using it confirms it.
    Renewal(Renewal),
    /// The current one.
    Current,
}

/// The certificate to try first.
pub fn credential(state: &AgentState) -> Result<Credential, AgentError> {
    match (&state.renewal, &state.ldevid) {
        (Some(renewal), _) => Ok(Credential::Renewal(renewal.clone())),
        (None, Some(_)) => Ok(Credential::Current),
        (None, None) => Err(AgentError::Protocol("the device is not onboarded".into())),
    }
}

/// The state once a renewed certificate was confirmed by use: it becomes the current one,
/// renewed again at `renew_at`.
pub fn promoted(state: &AgentState, renewal: Renewal, renew_at: u64) -> AgentState {
    let mut next = state.clone();
    next.ldevid = Some(renewal.ldevid);
    next.chain = renewal.chain;
    if let Some(config) = renewal.config {
        next.config = Some(config);
    }
    next.renewal = None;
    next.renew_at = Some(renew_at);
    next
}

/// What must go to the server as soon as a session is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing.
    Nothing,
    /// The wipe attestation of a decommissioning interrupted by a crash: deliver it, then the
    /// device is bare.
    Attestation(Vec<u8>),
    /// A firmware report not delivered yet.
    Report(FirmwareReport),
}

/// What the next session must deliver first.
pub fn pending(state: &AgentState) -> Delivery {
    if let Some(signed) = &state.pending_attestation {
        return Delivery::Attestation(signed.clone());
    }
    match &state.pending_report {
        Some(report) => Delivery::Report(report.clone()),
        None => Delivery::Nothing,
    }
}

/// Why serving a session stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The session closed.
    Closed,
    /// The LDevID must be renewed (it is due, or the server asked).
    Renew,
    /// A firmware update was offered: the signed manifest, and where to download the image
    /// over HTTPS if the offer said.
    Update {
        /// The signed manifest.
        manifest: Vec<u8>,
        /// The image's URL.
        url: Option<String>,
    },
    /// The owner decommissions the device.
    Decommission {
        /// The server's nonce.
        nonce: Vec<u8>,
        /// The method asked for.
        method: protocol::attestation::WipeMethod,
        /// Hand the application data back first, encrypted to this age recipient.
        export_to: Option<String>,
    },
}

/// The stop a command's action asks for, if any.
pub fn stop_for(action: Action) -> Option<Stop> {
    match action {
        Action::None | Action::TrustAnchors(_) | Action::SupportNotice { .. } => None,
        Action::Renew => Some(Stop::Renew),
        Action::Update { manifest, url } => Some(Stop::Update { manifest, url }),
        Action::Decommission {
            nonce,
            method,
            export_to,
        } => Some(Stop::Decommission {
            nonce,
            method,
            export_to,
        }),
    }
}

/// The first stop the commands of a welcome ask for, if any (they are carried out before
/// anything pushed).
pub fn welcome(commands: &[Command]) -> Option<Stop> {
    commands
        .iter()
        .find_map(|c| stop_for(commands::handle(c).1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_welcome_stops_at_its_first_order() {
        assert_eq!(welcome(&[]), None);
        assert_eq!(welcome(&[Command::Ping { nonce: 1 }]), None);
        assert_eq!(
            welcome(&[Command::Ping { nonce: 1 }, Command::Rotate]),
            Some(Stop::Renew)
        );
    }

    #[test]
    fn the_renewed_certificate_is_tried_first_and_promoted_on_use() {
        let mut state = AgentState::factory("1.0.0");
        assert!(credential(&state).is_err());
        state.ldevid = Some(vec![1]);
        assert_eq!(credential(&state).unwrap(), Credential::Current);
        let settings = |heartbeat_secs| protocol::message::DeviceConfig {
            server_name: "onboarder.local".into(),
            heartbeat_secs,
        };
        state.config = Some(settings(10));
        let renewal = Renewal {
            ldevid: vec![2],
            chain: vec![],
            config: Some(settings(25)),
        };
        state.renewal = Some(renewal.clone());
        assert_eq!(
            credential(&state).unwrap(),
            Credential::Renewal(renewal.clone())
        );
        let next = promoted(&state, renewal.clone(), 99);
        assert_eq!(next.ldevid, Some(vec![2]));
        assert_eq!(next.renewal, None);
        assert_eq!(next.renew_at, Some(99));
        assert_eq!(
            next.config,
            Some(settings(25)),
            "the settings of the re-key"
        );
        // A renewal stored before settings came with it keeps the device's own.
        let older = Renewal {
            config: None,
            ..renewal
        };
        assert_eq!(promoted(&state, older, 99).config, Some(settings(10)));
    }

    #[test]
    fn an_attestation_goes_before_a_report() {
        let mut state = AgentState::factory("1.0.0");
        assert_eq!(pending(&state), Delivery::Nothing);
        state.pending_report = Some(FirmwareReport::progress(
            &[1],
            protocol::message::FirmwareState::Healthy,
            0,
        ));
        assert!(matches!(pending(&state), Delivery::Report(_)));
        state.pending_attestation = Some(vec![9]);
        assert_eq!(pending(&state), Delivery::Attestation(vec![9]));
    }
}
