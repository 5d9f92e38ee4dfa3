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

/// Filters of `device list` and `device query save`: every one given must hold.
#[derive(clap::Args, Debug, Default)]
pub struct Filters {
    /// Serial starts with this.
    #[arg(long)]
    serial: Option<String>,
    /// Lifecycle state (expected, onboarding, active, quarantined, decommissioning,
    /// decommissioned, decommissioned-unattested).
    #[arg(long, value_parser = state)]
    state: Option<crate::core::DeviceState>,
    /// Device class, as devices report it.
    #[arg(long)]
    class: Option<String>,
    /// Firmware version, as devices report it.
    #[arg(long)]
    firmware: Option<String>,
    /// Carries this tag (repeat for several).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Has this attribute (repeat for several).
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = name_value)]
    attrs: Vec<(String, String)>,
    /// Its certificate expires within this many days.
    #[arg(long, value_name = "DAYS")]
    expiring_within: Option<u64>,
}

fn state(s: &str) -> std::result::Result<crate::core::DeviceState, String> {
    crate::core::DeviceState::ALL
        .into_iter()
        .find(|state| state.to_string() == s)
        .ok_or_else(|| format!("no state {s:?}"))
}

fn name_value(s: &str) -> std::result::Result<(String, String), String> {
    crate::core::query::name_value(s).map_err(|e| e.to_string())
}

impl Filters {
    fn query(&self) -> crate::core::query::DeviceQuery {
        crate::core::query::DeviceQuery {
            serial: self.serial.clone(),
            state: self.state,
            class: self.class.clone(),
            firmware: self.firmware.clone(),
            tags: self.tags.clone(),
            attributes: self.attrs.iter().cloned().collect(),
            expires_before: self
                .expiring_within
                .map(|d| certs::unix_now().saturating_add(d.saturating_mul(86_400))),
        }
    }
}

/// `onboarder device query`.
#[derive(Subcommand)]
pub enum QueryCommand {
    /// Save a query under a name (campaigns target it with `campaign create --query NAME`;
    /// devices that match it later join them). Saving again replaces it.
    Save {
        /// Its name.
        name: String,
        #[command(flatten)]
        filters: Filters,
    },
    /// List saved queries.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboarder device`.
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// List devices: every one, or those the filters (or a saved query) match, found through
    /// the device index (`device list --state active --tag pilot --expiring-within 30`).
    List {
        #[command(flatten)]
        filters: Filters,
        /// A saved query (the filters given are added to it).
        #[arg(long)]
        query: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a device's operator tags and attributes.
    Label {
        /// The device.
        device: String,
        /// Add this tag (repeat for several).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Remove this tag.
        #[arg(long = "untag", value_name = "TAG")]
        untags: Vec<String>,
        /// Set this attribute.
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = name_value)]
        set: Vec<(String, String)>,
        /// Remove this attribute.
        #[arg(long = "unset", value_name = "NAME")]
        unset: Vec<String>,
    },
    /// Saved queries (groups of devices).
    #[command(subcommand)]
    Query(QueryCommand),
    /// Export a device's history for anyone to verify offline with the owner root alone:
    /// its audit entries, IDevID key and voucher, LDevIDs, firmware manifests, wipe
    /// attestation and certificate of sanitization, under a statement signed by the issuing
    /// CA (CBOR; `interop-tests/python/verify_history.py ROOT.pem FILE` checks it).
    History {
        /// The device.
        device: String,
        /// Where to write the bundle.
        #[arg(long, value_name = "FILE")]
        export: PathBuf,
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

/// Every device the filters (on top of the saved query, if any) match, page by page.
fn search_all(
    client: &ApiClient,
    filters: &Filters,
    query: Option<String>,
) -> Result<Vec<DeviceView>> {
    let q = filters.query();
    let list = |v: &[String]| (!v.is_empty()).then(|| v.join(","));
    let attrs: Vec<String> = q
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut params = crate::operator::api::SearchParams {
        query,
        serial: q.serial,
        state: q.state,
        class: q.class,
        firmware: q.firmware,
        tags: list(&q.tags),
        attrs: list(&attrs),
        expires_before: q.expires_before,
        after: None,
        limit: Some(crate::operator::api::MAX_PAGE),
    };
    let mut out = Vec::new();
    loop {
        let page = client.search(&params)?;
        out.extend(page.devices);
        match page.next {
            Some(next) => params.after = Some(next),
            None => return Ok(out),
        }
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
        DeviceCommand::List {
            filters,
            query,
            json: as_json,
        } => {
            let devices = if query.is_none() && filters.query() == Default::default() {
                client.devices()?
            } else {
                search_all(client, &filters, query)?
            };
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
        DeviceCommand::Label {
            device,
            tags,
            untags,
            set,
            unset,
        } => {
            let labels = crate::core::query::Labels {
                add_tags: tags.into_iter().collect(),
                remove_tags: untags.into_iter().collect(),
                set: set.into_iter().collect(),
                unset: unset.into_iter().collect(),
            };
            let d = client.label(&device, &labels)?;
            let tags: Vec<&str> = d.tags.iter().map(String::as_str).collect();
            let attrs: Vec<String> = d
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            say!(
                "{}: tags [{}], attributes [{}]",
                d.id,
                shown(&tags.join(", ")),
                shown(&attrs.join(", "))
            );
        }
        DeviceCommand::Query(QueryCommand::Save { name, filters }) => {
            client.save_query(&name, &filters.query())?;
            say!("saved query {name}");
        }
        DeviceCommand::Query(QueryCommand::List { json: as_json }) => {
            let queries = client.queries()?;
            if as_json {
                return json(&queries);
            }
            for (name, q) in queries {
                let text = serde_json::to_string(&q).unwrap_or_default();
                say!("{:<20} {}", shown(&name), shown(&text));
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
        DeviceCommand::History { device, export } => {
            let bundle = client.history(&device)?;
            std::fs::write(&export, &bundle).map_err(|e| crate::error::Error::io(&export, e))?;
            say!(
                "wrote {} ({} bytes, sha256:{})",
                export.display(),
                bundle.len(),
                hex::encode(protocol::manifest::sha256(&bundle))
            );
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
