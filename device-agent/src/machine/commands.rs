//! Answers to commands pushed by the server.

use protocol::message::{Command, CommandReply, ErrorCode, WireError};

/// The reply to `command`.
pub fn reply(command: &Command) -> CommandReply {
    match command {
        Command::Ping { nonce } => CommandReply::Pong { nonce: *nonce },
        _ => CommandReply::Error(WireError {
            code: ErrorCode::Unsupported,
            message: "command not supported by this agent".into(),
        }),
    }
}
