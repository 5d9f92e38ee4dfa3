//! Real traffic for the fuzzers' seed corpora (feature `capture`, never in a product build).
//!
//! With `DEVICE_AGENT_CAPTURE=DIR` set, every message the agent sends or receives is written to
//! `DIR/KIND/DIGEST` (the digest of its bytes, so a message seen many times is one file), and so
//! is what travels inside one: the voucher request, voucher, CSR, certificate, manifest and wipe
//! attestation. `scripts/fuzz seeds` runs the demo with this feature and picks each fuzz
//! target's seed corpus from the directory.

use std::path::PathBuf;
use std::sync::OnceLock;

use protocol::message::{self, Command, Request, Response};

fn directory() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("DEVICE_AGENT_CAPTURE").map(PathBuf::from))
        .as_ref()
}

/// Keeps `bytes` as a sample of `kind`. Best effort: capture never fails a session.
pub fn record(kind: &str, bytes: &[u8]) {
    let Some(dir) = directory() else { return };
    let dir = dir.join(kind);
    let name: String = protocol::manifest::sha256(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(name), bytes));
}

/// A request about to be sent, and what it carries.
pub fn request(request: &Request) {
    record("request", &message::encode(request));
    match request {
        Request::VoucherRequest(signed) => record("voucher-request", signed),
        Request::Enroll { csr, .. } | Request::Reenroll { csr } => record("csr", csr),
        Request::WipeAttestation(signed) => record("attestation", signed),
        _ => {}
    }
}

/// A response as received, and what it carries.
pub fn response(response: &Response) {
    record("response", &message::encode(response));
    match response {
        Response::Voucher(signed) => record("voucher", signed),
        Response::Enrolled(enrollment) => {
            record("certificate", &enrollment.certificate);
            for ca in &enrollment.chain {
                record("certificate", ca);
            }
        }
        Response::Welcome(welcome) => welcome.commands.iter().for_each(command_inside),
        _ => {}
    }
}

/// A command as received, and what it carries.
pub fn command(command: &Command) {
    record("command", &message::encode(command));
    command_inside(command);
}

fn command_inside(command: &Command) {
    match command {
        Command::Update { manifest, .. } => record("manifest", manifest),
        Command::TrustAnchors { anchors } => {
            anchors.iter().for_each(|a| record("certificate", a));
        }
        _ => {}
    }
}
