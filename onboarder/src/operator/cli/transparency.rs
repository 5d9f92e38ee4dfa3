//! `onboarder support`, `vex` and `live-label`: what the owner publishes about its devices'
//! security.

use std::path::PathBuf;

use clap::Subcommand;

use super::{json, say};
use crate::core::support::{SupportStatus, date};
use crate::error::{Error, Result};
use crate::operator::api::SupportRequest;
use crate::operator::client::ApiClient;

/// `onboarder support`.
#[derive(Subcommand)]
pub enum SupportCommand {
    /// Set when security updates for a device class end. Its devices are told (a command they
    /// record and confirm), the console and the labels flag it, and the audit log says when
    /// the notice began and when support ended.
    Set {
        /// The device class (model), as devices report it.
        class: String,
        /// The day security updates end (YYYY-MM-DD, UTC).
        #[arg(long, value_name = "DAY")]
        ends_on: String,
        /// Days ahead that devices and operators are told.
        #[arg(long, default_value_t = 90)]
        notice_days: u32,
    },
    /// List support periods.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboarder vex`.
#[derive(Subcommand)]
pub enum VexCommand {
    /// Import VEX statements (OpenVEX or CycloneDX VEX JSON) about releases on record. Name a
    /// release by its package URL (`firmware list --json` prints it: pkg:generic/VENDOR/
    /// CLASS@VERSION) or its image's SHA-256.
    Import {
        /// The document.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Per vulnerability and affected release: the active devices on it, the release that
    /// fixes it, and the campaign that would (`--json` prints it, ready for `POST
    /// /v1/campaigns`).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn support(client: &ApiClient, cmd: SupportCommand) -> Result<()> {
    match cmd {
        SupportCommand::Set {
            class,
            ends_on,
            notice_days,
        } => {
            let p = client.set_support(
                &class,
                &SupportRequest {
                    ends_on,
                    notice_days,
                },
            )?;
            say!(
                "security updates for {} end on {}; devices are told {} days ahead",
                p.class,
                date(p.ends_on),
                p.notice_days
            );
        }
        SupportCommand::List { json: as_json } => {
            let periods = client.support()?;
            if as_json {
                return json(&periods);
            }
            say!("{:<20} {:<12} {:>6}", "CLASS", "ENDS ON", "NOTICE");
            for p in periods {
                say!(
                    "{:<20} {:<12} {:>5}d",
                    p.class,
                    date(p.ends_on),
                    p.notice_days
                );
            }
        }
    }
    Ok(())
}

pub(super) fn vex(client: &ApiClient, cmd: VexCommand) -> Result<()> {
    match cmd {
        VexCommand::Import {
            file,
            json: as_json,
        } => {
            let document = certs::files::read_limited(&file, crate::core::vex::MAX_VEX as u64)?;
            let report = client.import_vex(&document)?;
            if as_json {
                return json(&report);
            }
            say!(
                "{} statements kept from sha256:{}",
                report.statements.len(),
                report.document
            );
            for p in &report.unknown_products {
                say!("  not a release on record, skipped: {p}");
            }
        }
        VexCommand::Status { json: as_json } => {
            let plans = client.vulnerabilities()?;
            if as_json {
                return json(&plans);
            }
            say!(
                "{:<20} {:<10} {:<10} {:>7}",
                "VULNERABILITY",
                "RELEASE",
                "FIXED IN",
                "DEVICES"
            );
            for p in plans {
                say!(
                    "{:<20} {:<10} {:<10} {:>7}",
                    p.vulnerability,
                    p.affected_release,
                    p.fixed_in.as_deref().unwrap_or("-"),
                    p.devices.len()
                );
            }
        }
    }
    Ok(())
}

/// `onboarder live-label DEVICE`: the label's URL and what it shows; `--qr FILE` writes its
/// QR code (PNG, or SVG for a name ending in `.svg`) for printing.
pub(super) fn live_label(
    client: &ApiClient,
    device: &str,
    qr: Option<PathBuf>,
    as_json: bool,
) -> Result<()> {
    let label = client.device_label(device)?;
    if let Some(path) = qr {
        let svg = path.extension().is_some_and(|e| e == "svg");
        let bytes = if svg {
            crate::operator::qr::svg(&label.url).map(String::into_bytes)
        } else {
            crate::operator::qr::png(&label.url)
        }
        .map_err(|e| Error::Config(e.to_string()))?;
        std::fs::write(&path, bytes)
            .map_err(|e| Error::os(format!("writing {}", path.display()), e))?;
    }
    if as_json {
        return json(&label);
    }
    say!("{}", label.url);
    if let Some(s) = &label.support {
        let status = match s.status {
            SupportStatus::Unknown => "no end date published",
            SupportStatus::Supported => "supported",
            SupportStatus::Ending => "ending",
            SupportStatus::Unsupported => "UNSUPPORTED",
        };
        say!(
            "  security updates: {status}{}",
            s.ends_on
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    if let Some(v) = &label.vulnerabilities {
        say!("  vulnerabilities: {}", v.status);
        for e in &v.exposures {
            say!(
                "    {} fixed in {}",
                e.vulnerability,
                e.fixed_in.as_deref().unwrap_or("(no fix yet)")
            );
        }
    }
    Ok(())
}
