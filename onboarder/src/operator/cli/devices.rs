//! `onboarder anchor`, `voucher` and `device`: which manufacturers are trusted, which devices
//! are expected, and where each device stands.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Subcommand;

use super::{json, say};
use crate::core::{CertStatus, DeviceId, MakerId};
use crate::error::{Error, Result};
use crate::operator::client::ApiClient;
use crate::operator::terminal::{shown, when};
use crate::operator::views::DeviceView;

/// `onboarder anchor`.
#[derive(Subcommand)]
pub enum AnchorCommand {
    /// Trust a manufacturer: its root CA certificate (PEM), and its voucher signer so that
    /// vouchers are checked at import. Importing it again updates its name and signer.
    Import {
        /// PEM file with the root CA certificate(s) (the `root-ca.pem` of `factory init`).
        file: PathBuf,
        /// The manufacturer's voucher-signing (MASA) certificate (the `masa.pem` of `factory
        /// init`). Without it, vouchers are filed by the IDevID issuer they name and only the
        /// devices check their signature.
        #[arg(long, value_name = "PEM")]
        masa: Option<PathBuf>,
        /// A short name for the manufacturer that commands accept (`acme/SN-1`); default: from
        /// the certificate's organization.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List imported anchors.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboarder voucher`.
#[derive(Subcommand)]
pub enum VoucherCommand {
    /// Import a voucher bundle (from `factory voucher`).
    Import {
        /// Bundle file (CBOR).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboarder device`.
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// List devices.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one device.
    Show {
        /// The device (MAKER/SERIAL, or a serial only one manufacturer has).
        device: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Quarantine a device: all its requests are refused (its certificates stay valid).
    Quarantine {
        /// The device.
        device: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Put a device stuck in onboarding back to expected: the IDevID that accepted its voucher
    /// is no longer pinned, and certificates issued but never confirmed are revoked. For a
    /// device whose onboarding was started by another (a clone, a mix-up).
    ResetOnboarding {
        /// The device.
        device: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
}

/// Manufacturers' names, to show devices as operators named their makers (`acme/SN-1`).
pub(super) struct Names(HashMap<MakerId, String>);

impl Names {
    pub(super) fn of(client: &ApiClient) -> Result<Names> {
        Ok(Names(
            client
                .anchors()?
                .into_iter()
                .map(|a| (a.maker, a.name))
                .collect(),
        ))
    }

    pub(super) fn device(&self, id: &DeviceId) -> String {
        match self.0.get(&id.maker) {
            Some(name) => format!("{name}/{}", id.serial),
            None => id.to_string(),
        }
    }
}

pub(super) fn anchor(client: &ApiClient, cmd: AnchorCommand) -> Result<()> {
    match cmd {
        AnchorCommand::Import {
            file,
            masa,
            name,
            json: as_json,
        } => {
            let import = crate::operator::AnchorImport {
                pem: certs::files::read_pem_text(&file)?,
                masa_pem: masa
                    .as_deref()
                    .map(certs::files::read_pem_text)
                    .transpose()?,
                name,
            };
            let added = client.import_anchor(&import)?;
            if as_json {
                return json(&added);
            }
            if added.is_empty() {
                say!("already imported");
            }
            for a in added {
                say!(
                    "trusting {} as {} (maker {}){}",
                    a.subject,
                    a.name,
                    a.maker,
                    if a.voucher_signer {
                        ", vouchers checked against its signer"
                    } else {
                        "; no voucher signer: give --masa to check vouchers"
                    }
                );
            }
        }
        AnchorCommand::List { json: as_json } => {
            let anchors = client.anchors()?;
            if as_json {
                return json(&anchors);
            }
            say!("{:<16} {:<16} {:<7} SUBJECT", "NAME", "MAKER", "SIGNER");
            for a in anchors {
                say!(
                    "{:<16} {:<16} {:<7} {}",
                    a.name,
                    a.maker,
                    if a.voucher_signer { "yes" } else { "no" },
                    a.subject
                );
            }
        }
    }
    Ok(())
}

pub(super) fn voucher(client: &ApiClient, cmd: VoucherCommand) -> Result<()> {
    let VoucherCommand::Import {
        file,
        json: as_json,
    } = cmd;
    let bundle = certs::files::read_limited(&file, protocol::voucher::MAX_BUNDLE as u64)?;
    let report = client.import_vouchers(&bundle)?;
    if as_json {
        json(&report)?;
    } else {
        say!(
            "imported {}, updated {}, unchanged {}, rejected {}",
            report.imported,
            report.updated,
            report.unchanged,
            report.rejected.len()
        );
        if report.unverified > 0 {
            say!(
                "  {} accepted without a signature check: import their manufacturer's voucher \
                 signer with `anchor import --masa`",
                report.unverified
            );
        }
        for r in &report.rejected {
            say!(
                "  #{} {}: {}",
                r.index,
                shown(r.serial.as_deref().unwrap_or("?")),
                shown(&r.reason)
            );
        }
    }
    if report.rejected.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed("some vouchers were rejected".into()))
    }
}

/// The current certificate of a device, as listed: its serial and issuing CA generation.
fn current_certificate(d: &DeviceView) -> String {
    d.certificates
        .iter()
        .rev()
        .find(|c| c.status == CertStatus::Active)
        .map_or("-".to_string(), |c| match c.generation {
            Some(g) => format!("{} (CA {g})", c.serial),
            None => c.serial.clone(),
        })
}

pub(super) fn device(client: &ApiClient, cmd: DeviceCommand) -> Result<()> {
    match cmd {
        DeviceCommand::List { json: as_json } => {
            let devices = client.devices()?;
            if as_json {
                return json(&devices);
            }
            let names = Names::of(client)?;
            say!(
                "{:<32} {:<26} {:<10} CERTIFICATE",
                "DEVICE",
                "STATE",
                "FIRMWARE"
            );
            for d in devices {
                say!(
                    "{:<32} {:<26} {:<10} {}",
                    names.device(&d.id),
                    d.state.to_string(),
                    shown(d.firmware_version.as_deref().unwrap_or("-")),
                    current_certificate(&d)
                );
            }
        }
        DeviceCommand::Quarantine { device, reason } => {
            let d = client.quarantine(&device, &reason)?;
            say!("{} is {}", d.id, d.state);
        }
        DeviceCommand::ResetOnboarding { device, reason } => {
            let d = client.reset_onboarding(&device, &reason)?;
            say!("{} is {}; its IDevID is no longer pinned", d.id, d.state);
        }
        DeviceCommand::Show {
            device,
            json: as_json,
        } => {
            let d = client.device(&device)?;
            if as_json {
                return json(&d);
            }
            say!("device:    {}", Names::of(client)?.device(&d.id));
            say!("maker:     {}", d.maker);
            say!("serial:    {}", d.serial);
            say!("state:     {} since {}", d.state, when(d.updated_at));
            if let Some(reason) = &d.quarantine_reason {
                say!("why:       {}", shown(reason));
            }
            say!(
                "firmware:  {}",
                shown(d.firmware_version.as_deref().unwrap_or("-"))
            );
            say!(
                "agent:     {}",
                shown(d.agent_version.as_deref().unwrap_or("-"))
            );
            for (name, value) in &d.hardware {
                say!("hardware:  {}={}", shown(name), shown(value));
            }
            if let Some(n) = &d.network {
                say!("network:   {} {}", n.kind, shown(&n.ssid));
            }
            for c in &d.certificates {
                say!(
                    "cert:      {} {:?} CA {} until {}",
                    c.serial,
                    c.status,
                    c.generation.map_or("?".to_string(), |g| g.to_string()),
                    when(c.not_after)
                );
            }
        }
    }
    Ok(())
}
