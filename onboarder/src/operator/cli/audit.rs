//! `onboarder audit` and `stats`: the tamper-evident log and the counters.

use clap::Subcommand;

use super::{json, say};
use crate::error::Result;
use crate::operator::client::ApiClient;
use crate::operator::terminal::{shown, when};

/// `onboarder audit`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Show audit entries: the newest, or from a sequence number on.
    Show {
        /// First sequence number (default: the newest --limit entries).
        #[arg(long)]
        from: Option<u64>,
        /// Number of entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify the hash chain of the whole log.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn audit(client: &ApiClient, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Show {
            from,
            limit,
            json: as_json,
        } => {
            let entries = client.audit(from, limit)?;
            if as_json {
                return json(&entries);
            }
            for e in entries {
                say!(
                    "{:>8} {} {:<18} {:<24} {}",
                    e.seq,
                    when(e.event.at),
                    shown(&e.event.actor),
                    shown(&e.event.action),
                    shown(&e.event.detail)
                );
            }
        }
        AuditCommand::Verify { json: as_json } => {
            let summary = client.verify_audit()?;
            if as_json {
                return json(&summary);
            }
            say!(
                "audit chain intact: {} entries, head {}",
                summary.entries,
                summary.head
            );
        }
    }
    Ok(())
}

pub(super) fn stats(client: &ApiClient, as_json: bool) -> Result<()> {
    let stats = client.stats()?;
    if as_json {
        return json(&stats);
    }
    let list = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!("devices:                {}", list(&stats.states));
    say!("sessions:               {}", stats.sessions);
    say!("refusals:               {}", list(&stats.metrics.refusals));
    say!(
        "handshakes refused:     {}",
        stats.metrics.handshakes_refused
    );
    say!(
        "connections refused:    {}",
        stats.metrics.connections_refused
    );
    say!("audit entries left out: {}", stats.metrics.audit_suppressed);
    say!("request bytes held:     {}", stats.frame_bytes_held);
    say!(
        "firmware chunks served: {}",
        stats.firmware_chunks_in_flight
    );
    Ok(())
}
