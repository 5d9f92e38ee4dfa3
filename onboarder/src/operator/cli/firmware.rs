//! `onboarder firmware` and `campaign`: the release repository and staged rollouts.

use std::path::PathBuf;

use clap::Subcommand;

use super::devices::Names;
use super::{json, say};
use crate::core::campaign::{Campaign, CampaignOrder};
use crate::error::Result;
use crate::operator::client::ApiClient;
use crate::operator::terminal::shown;
use crate::service::{CampaignSpec, RampSpec, Target};

/// `onboarder firmware`.
#[derive(Subcommand)]
pub enum FirmwareCommand {
    /// Trust a manufacturer's firmware-signing key (the `firmware.pub` of `factory init`).
    KeyImport {
        /// PEM public key.
        file: PathBuf,
        /// Vendor id it signs for (the manufacturer's name).
        #[arg(long)]
        vendor: String,
    },
    /// Upload a release: the manifest is verified with the vendor's key and the image against
    /// the manifest before anything is stored.
    Upload {
        /// The image.
        image: PathBuf,
        /// Its signed manifest (from `factory sign-firmware`).
        manifest: PathBuf,
        /// The SBOM the manifest names (CycloneDX or SPDX JSON; its SHA-256 must be the
        /// manifest's).
        #[arg(long, value_name = "FILE")]
        sbom: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List releases.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `onboarder campaign`.
#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign (start it with `campaign start`).
    Create {
        /// Release: version or image digest.
        #[arg(long)]
        release: String,
        /// Every active device.
        #[arg(long, conflicts_with_all = ["class", "devices", "query"])]
        all: bool,
        /// Active devices of this class.
        #[arg(long, conflicts_with_all = ["devices", "query"])]
        class: Option<String>,
        /// Active devices a saved query matches, now and later (devices that come to match
        /// it join the running campaign; see `onboarder device query save`).
        #[arg(long, conflicts_with = "devices")]
        query: Option<String>,
        /// These devices (comma-separated; MAKER/SERIAL, or serials only one manufacturer has).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Cumulative percentages of the waves.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        waves: Vec<u8>,
        /// Pause when more than this percentage of the devices offered so far failed.
        #[arg(long, default_value_t = 5)]
        failure_threshold: u8,
        /// Offers per second at most (with --ramp-start: the ceiling of the ramp).
        #[arg(long)]
        rate: Option<u32>,
        /// Start at this many offers per second and multiply by --ramp-factor every
        /// --ramp-every seconds while failures stay under the threshold.
        #[arg(long, value_name = "OFFERS_PER_SECOND")]
        ramp_start: Option<u32>,
        /// Multiplier of each ramp step.
        #[arg(long, default_value_t = 2, requires = "ramp_start")]
        ramp_factor: u32,
        /// Seconds between ramp steps.
        #[arg(
            long,
            default_value_t = 10,
            requires = "ramp_start",
            value_name = "SECONDS"
        )]
        ramp_every: u64,
        /// Offer the next wave after this many seconds even if some devices of the current one
        /// have not finished (an offline device keeps its offer and updates when it is back;
        /// the campaign completes when every device has). Without it, a wave waits for all.
        #[arg(long, value_name = "SECONDS")]
        wave_timeout: Option<u64>,
        /// Devices download the image over HTTPS (the offer carries its URL on the HTTPS
        /// listener, which resumes with byte ranges) instead of over their QUIC session.
        #[arg(long)]
        over_https: bool,
        /// With --over-https: sign each device's URL (valid an hour), so that any HTTP client
        /// may fetch it without the device's certificate.
        #[arg(long, requires = "over_https")]
        signed_urls: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a campaign.
    Start {
        /// Campaign id.
        id: String,
    },
    /// Pause a campaign (devices already updating finish).
    Pause {
        /// Campaign id.
        id: String,
    },
    /// Resume a paused campaign.
    Resume {
        /// Campaign id.
        id: String,
    },
    /// Abort a campaign (offers not acted on are cancelled).
    Abort {
        /// Campaign id.
        id: String,
    },
    /// Progress per wave (and per device with --devices).
    Status {
        /// Campaign id.
        id: String,
        /// List every device.
        #[arg(long)]
        devices: bool,
        /// Print JSON (always with the devices).
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn firmware(client: &ApiClient, cmd: FirmwareCommand) -> Result<()> {
    match cmd {
        FirmwareCommand::KeyImport { file, vendor } => {
            let key = client.import_firmware_key(&vendor, &certs::files::read_pem_text(&file)?)?;
            say!(
                "trusting firmware of {} signed by sha256:{}",
                key.vendor_id,
                key.fingerprint
            );
        }
        FirmwareCommand::Upload {
            image,
            manifest,
            sbom,
            json: as_json,
        } => {
            let image = certs::files::read_limited(&image, crate::store::images::MAX_IMAGE)?;
            let manifest =
                certs::files::read_limited(&manifest, protocol::manifest::MAX_MANIFEST as u64)?;
            let sbom = sbom
                .map(|f| certs::files::read_limited(&f, crate::core::sbom::MAX_SBOM as u64))
                .transpose()?;
            let r = client.upload_release(&manifest, &image, sbom.as_deref())?;
            if as_json {
                return json(&r);
            }
            say!(
                "release {} {} (sequence {}, {} bytes) sha256:{}",
                r.class_id,
                r.version,
                r.sequence,
                r.size,
                r.digest
            );
        }
        FirmwareCommand::List { json: as_json } => {
            let releases = client.releases()?;
            if as_json {
                return json(&releases);
            }
            say!(
                "{:<12} {:<10} {:>8} {:>10}  DIGEST",
                "CLASS",
                "VERSION",
                "SEQUENCE",
                "BYTES"
            );
            for r in releases {
                say!(
                    "{:<12} {:<10} {:>8} {:>10}  {}",
                    r.class_id,
                    r.version,
                    r.sequence,
                    r.size,
                    r.digest
                );
            }
        }
    }
    Ok(())
}

fn print_campaign(c: &Campaign) -> Result<()> {
    say!("{}: {}", c.id, c.state.name());
    Ok(())
}

pub(super) fn campaign(client: &ApiClient, cmd: CampaignCommand) -> Result<()> {
    match cmd {
        CampaignCommand::Create {
            release,
            all,
            class,
            query,
            devices,
            waves,
            failure_threshold,
            rate,
            ramp_start,
            ramp_factor,
            ramp_every,
            wave_timeout,
            over_https,
            signed_urls,
            json: as_json,
        } => {
            let target = match (all, class, query) {
                (true, _, _) => Target::All,
                (_, Some(c), _) => Target::Class(c),
                (_, _, Some(q)) => Target::Query(q),
                _ if !devices.is_empty() => Target::Devices(devices),
                _ => {
                    return Err(crate::error::Error::Config(
                        "choose --all, --class, --query or --devices".into(),
                    ));
                }
            };
            let c = client.create_campaign(&CampaignSpec {
                release,
                target,
                waves,
                failure_threshold,
                rate,
                wave_timeout,
                over_https,
                signed_urls,
                ramp: ramp_start.map(|start| RampSpec {
                    start,
                    factor: ramp_factor,
                    every: ramp_every,
                }),
            })?;
            if as_json {
                return json(&c);
            }
            let sizes: Vec<usize> = c.waves.iter().map(Vec::len).collect();
            say!(
                "created {}: {} in waves of {:?} devices; start it with: onboarder campaign start {}",
                c.id,
                c.version,
                sizes,
                c.id
            );
        }
        CampaignCommand::Start { id } => {
            print_campaign(&client.order_campaign(&id, CampaignOrder::Start)?)?
        }
        CampaignCommand::Pause { id } => {
            print_campaign(&client.order_campaign(&id, CampaignOrder::Pause)?)?
        }
        CampaignCommand::Resume { id } => {
            print_campaign(&client.order_campaign(&id, CampaignOrder::Resume)?)?
        }
        CampaignCommand::Abort { id } => {
            print_campaign(&client.order_campaign(&id, CampaignOrder::Abort)?)?
        }
        CampaignCommand::Status {
            id,
            devices,
            json: as_json,
        } => {
            let s = client.campaign_status(&id, devices || as_json)?;
            if as_json {
                return json(&s);
            }
            say!(
                "{} ({}): {}, wave {} of {}",
                s.id,
                s.version,
                s.state.name(),
                s.wave + 1,
                s.waves.len()
            );
            say!(
                "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "WAVE",
                "DEVICES",
                "WAITING",
                "ACTIVE",
                "HEALTHY",
                "FAILED",
                "SKIPPED"
            );
            for (i, t) in s.waves.iter().enumerate() {
                say!(
                    "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    i + 1,
                    t.devices,
                    t.waiting,
                    t.in_progress,
                    t.healthy,
                    t.failed,
                    t.skipped
                );
            }
            if devices {
                let names = Names::of(client)?;
                for d in &s.devices {
                    say!(
                        "  {:<32} wave {} {:<12} {:>9} bytes {}",
                        names.device(&d.device),
                        d.wave + 1,
                        d.state,
                        d.bytes,
                        shown(d.reason.as_deref().unwrap_or(""))
                    );
                }
            }
        }
    }
    Ok(())
}
