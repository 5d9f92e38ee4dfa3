//! `onboarder rotate`, `revoke`, `decommission`, `ca` and `crl`: orders about devices and the
//! owner's CAs, followed until the devices have carried them out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use super::{follow, json, say};
use crate::config::layout;
use crate::control::RootStatus;
use crate::core::DeviceState;
use crate::core::roots::RootPhase;
use crate::error::{Error, Result};
use crate::operator::client::ApiClient;
use crate::operator::terminal::{shown, when};

/// `onboarder rotate`.
#[derive(clap::Args)]
pub struct RotateArgs {
    /// Devices to rotate (MAKER/SERIAL, or a serial only one manufacturer has).
    pub devices: Vec<String>,
    /// Every active device.
    #[arg(long, conflicts_with = "devices")]
    pub all: bool,
    /// Commands pushed per second at most.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Seconds to wait for the devices before summarising (0: do not wait).
    #[arg(long, default_value_t = 300)]
    pub wait: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `onboarder revoke`.
#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The device (MAKER/SERIAL, or a serial only one manufacturer has).
    pub device: String,
    /// RFC 5280 reason: unspecified, key-compromise, ca-compromise, affiliation-changed,
    /// superseded, cessation-of-operation, privilege-withdrawn.
    #[arg(long, default_value = "unspecified")]
    pub reason: certs::crl::Reason,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `onboarder decommission`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DecommissionArgs {
    #[command(subcommand)]
    command: Option<DecommissionCommand>,
    /// Devices to decommission (MAKER/SERIAL, or serials only one manufacturer has).
    #[arg(required = true)]
    devices: Vec<String>,
    /// Sanitization method: clear, or purge-cryptographic-erase.
    #[arg(long, default_value = "purge-cryptographic-erase")]
    method: String,
    /// Revoke everything without waiting for the device (it never answers): the record says
    /// decommissioned-unattested.
    #[arg(long, requires = "reason")]
    force: bool,
    /// Why (for --force; goes into the audit log).
    #[arg(long)]
    reason: Option<String>,
    /// Have each device hand its application data back before the wipe, encrypted to this age
    /// recipient (`age1...` from `age-keygen`, or a file holding one); fetch it with
    /// `decommission data DEVICE --out FILE` and decrypt it with `age -d -i KEY`.
    #[arg(long, value_name = "RECIPIENT")]
    export_data: Option<String>,
    /// Seconds to wait for the attestations (0: do not wait).
    #[arg(long, default_value_t = 300)]
    wait: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum DecommissionCommand {
    /// The certificate of sanitization (NIST SP 800-88) of an attested decommissioning.
    Certificate {
        /// The device.
        device: String,
        /// Also write the printable HTML document here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The encrypted application data a device handed back before its wipe (an age file:
    /// `age -d -i KEY FILE | tar -x`).
    Data {
        /// The device.
        device: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `onboarder ca`.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Start a new issuing CA under the owner root (needs the root's key,
    /// ca/owner-root-N.key). Every active device re-keys onto it; the old CA keeps publishing
    /// its CRL until its certificates expire.
    Rollover {
        /// Rotation commands pushed per second at most.
        #[arg(long)]
        rate: Option<u32>,
        /// Seconds to wait for the devices before summarising (0: do not wait).
        #[arg(long, default_value_t = 300)]
        wait: u64,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the owner root (needs the key of the one in force). The new root goes to every
    /// device and into EST cacerts first, linked to the old one by cross-certificates (RFC
    /// 7030 4.1.3); once every active device has it (or after the policy's
    /// root_distribution_wait), the issuing CA and the registrar move under it and every
    /// device re-keys; once no certificate or voucher depends on the old root, it is retired:
    /// out of the server's trust, the devices' and EST's, its key deleted.
    ///
    ///   onboarder ca root-rollover --wait 3600
    RootRollover {
        /// Seconds to follow the rollover before summarising (0: do not wait).
        #[arg(long, default_value_t = 300)]
        wait: u64,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where the owner roots stand: the root in force, a rollover under way and what holds it.
    Roots {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboarder crl`.
#[derive(Subcommand)]
pub enum CrlCommand {
    /// The CRLs last published (files in DIR/crl/, and GET /crl/issuing-ca-N.crl).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn rotate(client: &ApiClient, args: RotateArgs) -> Result<()> {
    if !args.all && args.devices.is_empty() {
        return Err(Error::Config("name devices or use --all".into()));
    }
    let order = client.rotate(&crate::operator::api::RotateRequest {
        devices: args.devices,
        all: args.all,
        rate: args.rate,
    })?;
    for (device, why) in &order.refused {
        eprintln!("not rotating {}: {}", shown(device), shown(why));
    }
    follow_rotation(client, order.at, order.accepted.len(), args.wait, args.json)
}

pub(super) fn revoke(client: &ApiClient, args: RevokeArgs) -> Result<()> {
    let d = client.revoke(&args.device, args.reason)?;
    if args.json {
        return json(&d);
    }
    let revoked: Vec<_> = d
        .certificates
        .iter()
        .filter(|c| matches!(c.status, crate::core::CertStatus::Revoked { .. }))
        .map(|c| c.serial.as_str())
        .collect();
    say!("revoked {} ({}): {}", d.id, args.reason, revoked.join(", "));
    say!("{} is {}", d.id, d.state);
    Ok(())
}

pub(super) fn ca(client: &ApiClient, cmd: CaCommand) -> Result<()> {
    let (rate, wait, json) = match cmd {
        CaCommand::Rollover { rate, wait, json } => (rate, wait, json),
        CaCommand::RootRollover { wait, json } => return root_rollover(client, wait, json),
        CaCommand::Roots { json: as_json } => {
            let status = client.roots()?;
            return if as_json {
                json(&status)
            } else {
                show_roots(&status)
            };
        }
    };
    let report = client.rollover(rate)?;
    eprintln!("issuing CA generation {} in force", report.generation);
    follow_rotation(
        client,
        report.rotation.at,
        report.rotation.accepted.len(),
        wait,
        json,
    )
}

pub(super) fn crl(client: &ApiClient, dir: &Path, cmd: CrlCommand) -> Result<()> {
    let CrlCommand::List { json: as_json } = cmd;
    let crls = client.crls()?;
    if as_json {
        return json(&crls);
    }
    for c in crls {
        say!(
            "issuing CA {}: CRL number {}, {} entries, next update {} ({})",
            c.generation,
            c.number,
            c.entries,
            when(c.next_update),
            dir.join(layout::crl(c.generation)).display()
        );
    }
    Ok(())
}

pub(super) fn decommission(client: &ApiClient, args: DecommissionArgs) -> Result<()> {
    if let Some(DecommissionCommand::Data { device, out }) = &args.command {
        let data = client.exported_data(device)?;
        std::fs::write(out, &data).map_err(|e| Error::io(out, e))?;
        say!(
            "wrote {} ({} bytes, sha256:{})",
            out.display(),
            data.len(),
            hex::encode(protocol::manifest::sha256(&data))
        );
        return Ok(());
    }
    if let Some(DecommissionCommand::Certificate {
        device,
        html,
        json: as_json,
    }) = args.command
    {
        let c = client.sanitization(&device)?;
        if let Some(path) = html {
            std::fs::write(&path, c.to_html()).map_err(|e| Error::io(&path, e))?;
            eprintln!("wrote {}", path.display());
        }
        if as_json {
            return super::emit(serde_json::to_string_pretty(&c)?);
        }
        say!("Certificate of Sanitization (NIST SP 800-88)");
        say!(
            "  device:       {} {} {} ({})",
            shown(&c.manufacturer),
            shown(&c.model),
            shown(&c.serial_number),
            c.device
        );
        say!("  method:       {}", c.sanitization_method);
        if let Some(t) = &c.data_transfer {
            say!(
                "  data handed back first: {} bytes sha256:{} encrypted to {}",
                t.bytes,
                t.sha256,
                shown(&t.recipient)
            );
        }
        for d in &c.sanitization_description {
            say!("                {}", shown(d));
        }
        say!(
            "  verification: {}",
            if c.verified { "passed" } else { "FAILED" }
        );
        say!("  tool:         {}", shown(&c.tool));
        say!("  validated:    {}", when(c.validated_on));
        say!("  attestation:  sha256:{}", c.attestation_sha256);
        say!("  destination:  {}", c.media_destination);
        return Ok(());
    }
    if args.force {
        let reason = args.reason.unwrap_or_default();
        for device in &args.devices {
            let d = client.force_decommission(device, &reason)?;
            say!("{} is {}", d.id, d.state);
        }
        return Ok(());
    }
    let method: protocol::attestation::WipeMethod =
        serde_json::from_value(serde_json::Value::String(args.method.clone())).map_err(|_| {
            Error::Config(format!(
                "unknown method {:?}: clear or purge-cryptographic-erase",
                args.method
            ))
        })?;
    let export_to = match args.export_data {
        // A file holding the recipient (as age's -R takes), or the recipient itself.
        Some(given) if std::path::Path::new(&given).is_file() => Some(
            std::fs::read_to_string(&given)
                .map_err(|e| Error::io(std::path::Path::new(&given), e))?
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("age1"))
                .ok_or_else(|| Error::Config(format!("{given}: no age1... recipient in it")))?
                .to_string(),
        ),
        other => other,
    };
    let order = client.decommission(args.devices, method, export_to)?;
    for (device, why) in &order.refused {
        eprintln!("not decommissioning {}: {}", shown(device), shown(why));
    }
    let bar = follow::bar(order.accepted.len(), "decommissioning");
    let states = follow::until(client, Duration::from_secs(args.wait), |client| {
        let states: Vec<(String, DeviceState)> = order
            .accepted
            .iter()
            .map(|id| {
                client
                    .device(&id.to_string())
                    .map(|d| (d.id.to_string(), d.state))
            })
            .collect::<Result<_, _>>()?;
        let done = states
            .iter()
            .filter(|(_, st)| *st != DeviceState::Decommissioning)
            .count();
        bar.set_position(done as u64);
        let all = done == states.len();
        Ok((states, all))
    })?;
    bar.finish_and_clear();
    let waiting: Vec<&str> = states
        .iter()
        .filter(|(_, st)| *st == DeviceState::Decommissioning)
        .map(|(s, _)| s.as_str())
        .collect();
    let done = states.len() - waiting.len();
    if args.json {
        json(&serde_json::json!({
            "decommissioned": done,
            "waiting": waiting,
            "refused": order.refused,
        }))?;
    } else {
        say!("decommissioned {done}, waiting for {}", waiting.len());
        if !waiting.is_empty() {
            say!("  waiting devices wipe when they next connect; `--force` revokes without them");
        }
    }
    if order.refused.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed("some devices were refused".into()))
    }
}

/// Shows the progress of the rotations ordered at `since` until none is pending or `wait`
/// seconds have passed, then prints the summary. Fails if any device failed.
fn root_rollover(client: &ApiClient, wait: u64, as_json: bool) -> Result<()> {
    let started = client.root_rollover()?;
    let generation = started.rollover.map_or(started.in_force, |r| r.generation);
    eprintln!("owner root {generation} made and being distributed");
    let bar = follow::bar(3, "root rollover");
    let status = follow::until(client, Duration::from_secs(wait), |client| {
        let status = client.roots()?;
        let phase = status.rollover.map(|r| r.phase);
        bar.set_position(match phase {
            Some(RootPhase::Distributing) => 0,
            Some(RootPhase::Moving) => 1,
            Some(RootPhase::Retiring) => 2,
            None => 3,
        });
        bar.set_message(match phase {
            Some(p) => format!("{p}"),
            None => "done".into(),
        });
        Ok((status, phase.is_none()))
    })?;
    bar.finish_and_clear();
    if as_json {
        return json(&status);
    }
    show_roots(&status)
}

fn show_roots(status: &RootStatus) -> Result<()> {
    say!(
        "owner root {} in force; devices trust {} root(s)",
        status.in_force,
        status.trusted
    );
    let Some(r) = status.rollover else {
        return Ok(());
    };
    say!(
        "rollover to owner root {}: {} since {}",
        r.generation,
        r.phase,
        when(r.phase_at)
    );
    say!(
        "  {} active devices without the new root, {} with a certificate under the old root, \
         {} expected devices with vouchers pinning it",
        status.awaiting_anchors,
        status.under_old_root,
        status.vouchers_for_old_root
    );
    for device in &status.holding {
        say!("  waiting for {}", shown(device));
    }
    Ok(())
}

fn follow_rotation(
    client: &ApiClient,
    since: u64,
    total: usize,
    wait: u64,
    as_json: bool,
) -> Result<()> {
    let bar = follow::bar(total, "rotating");
    let status = follow::until(client, Duration::from_secs(wait), |client| {
        let status = client.rotation_status(since)?;
        bar.set_position((status.rotated + status.failed) as u64);
        bar.set_message(format!("{} failed", status.failed));
        let done = status.pending == 0;
        Ok((status, done))
    })?;
    bar.finish_and_clear();
    if as_json {
        json(&serde_json::json!({
            "rotated": status.rotated,
            "pending": status.pending,
            "failed": status.failed,
            "pending_devices": status.pending_devices,
            "failures": status.failures,
        }))?;
    } else {
        say!(
            "rotated {}, pending {}, failed {}",
            status.rotated,
            status.pending,
            status.failed
        );
        for (device, why) in &status.failures {
            say!("  {device}: {}", shown(why));
        }
        if status.pending > 0 {
            say!("  pending devices rotate when they next connect");
        }
    }
    if status.failed == 0 {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "{} devices failed to rotate",
            status.failed
        )))
    }
}
