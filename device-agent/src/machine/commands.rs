//! Answers to commands pushed by the server, and what the agent must do after answering.

use protocol::message::{Command, CommandReply, ErrorCode, WireError};

/// Work a command leaves for the agent.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing more.
    None,
    /// Renew the LDevID with a fresh key now.
    Renew,
    /// Install the firmware of this signed manifest, downloaded from `url` over HTTPS when
    /// the offer gave one.
    Update {
        /// The signed manifest.
        manifest: Vec<u8>,
        /// Where to download the image.
        url: Option<String>,
    },
    /// Trust these owner roots (DER) in place of those the device has, once checked: the
    /// reply says whether they were taken, so the driver makes it.
    TrustAnchors(Vec<Vec<u8>>),
    /// Wipe everything of the owner and attest it, bound to this nonce.
    Decommission {
        /// The server's nonce.
        nonce: Vec<u8>,
        /// The method asked for.
        method: protocol::attestation::WipeMethod,
        /// Hand the application data back first, encrypted to this age recipient.
        export_to: Option<String>,
    },
    /// Record that security updates end on this date (seconds since the epoch) and confirm it.
    SupportNotice {
        /// When they end.
        ends_on: u64,
    },
}

/// The reply to `command`, and what to do next.
pub fn handle(command: &Command) -> (CommandReply, Action) {
    match command {
        Command::Ping { nonce } => (CommandReply::Pong { nonce: *nonce }, Action::None),
        Command::Rotate => (CommandReply::Accepted, Action::Renew),
        Command::Update { manifest, url } => (
            CommandReply::Accepted,
            Action::Update {
                manifest: manifest.clone(),
                url: url.clone(),
            },
        ),
        Command::Decommission {
            nonce,
            method,
            export_to,
        } => (
            CommandReply::Accepted,
            Action::Decommission {
                nonce: nonce.clone(),
                method: *method,
                export_to: export_to.clone(),
            },
        ),
        Command::TrustAnchors { anchors } => (
            CommandReply::Accepted,
            Action::TrustAnchors(anchors.iter().map(|a| a.to_vec()).collect()),
        ),
        Command::SupportNotice { ends_on, .. } => (
            CommandReply::Accepted,
            Action::SupportNotice { ends_on: *ends_on },
        ),
        _ => (
            unsupported("command not supported by this agent"),
            Action::None,
        ),
    }
}

/// The reply to a command the agent's checks refused.
pub fn refused(e: &crate::error::AgentError) -> CommandReply {
    CommandReply::Error(WireError {
        code: ErrorCode::BadRequest,
        message: e.to_string(),
    })
}

/// The reply to a command this agent cannot carry out (or not even decode).
pub fn unsupported(why: &str) -> CommandReply {
    CommandReply::Error(WireError {
        code: ErrorCode::Unsupported,
        message: why.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use protocol::attestation::WipeMethod;

    use super::*;

    #[test]
    fn each_command_gets_its_reply_and_leaves_its_work() {
        assert_eq!(
            handle(&Command::Ping { nonce: 7 }),
            (CommandReply::Pong { nonce: 7 }, Action::None)
        );
        assert_eq!(
            handle(&Command::Rotate),
            (CommandReply::Accepted, Action::Renew)
        );
        assert_eq!(
            handle(&Command::Update {
                manifest: vec![1, 2],
                url: Some("https://h/firmware/ab".into()),
            }),
            (
                CommandReply::Accepted,
                Action::Update {
                    manifest: vec![1, 2],
                    url: Some("https://h/firmware/ab".into())
                }
            )
        );
        assert_eq!(
            handle(&Command::Decommission {
                nonce: vec![3; 16],
                method: WipeMethod::PurgeCryptographicErase,
                export_to: None,
            }),
            (
                CommandReply::Accepted,
                Action::Decommission {
                    nonce: vec![3; 16],
                    method: WipeMethod::PurgeCryptographicErase,
                    export_to: None,
                }
            )
        );
        assert_eq!(
            handle(&Command::TrustAnchors {
                anchors: vec![vec![4; 8].into()]
            }),
            (
                CommandReply::Accepted,
                Action::TrustAnchors(vec![vec![4; 8]])
            )
        );
        assert_eq!(
            handle(&Command::SupportNotice {
                class_id: "c".into(),
                ends_on: 9
            }),
            (CommandReply::Accepted, Action::SupportNotice { ends_on: 9 })
        );
        match unsupported("no") {
            CommandReply::Error(e) => assert_eq!(e.code, ErrorCode::Unsupported),
            other => panic!("unexpected {other:?}"),
        }
    }
}
