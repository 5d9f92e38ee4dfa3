//! `onboarder`: the server and its operator commands. A thin main: it parses arguments and calls
//! the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use onboarder::config::Config;
use onboarder::core::NetworkPolicy;
use onboarder::demo::{self, DemoOptions};
use onboarder::operator::client::ApiClient;
use onboarder::operator::terminal::shown;
use onboarder::server::{Listen, Server};

/// Trusted onboarding and lifecycle server for IoT devices.
///
/// Quick start:
///   onboarder demo --devices 100                 # everything, end to end, on loopback
///
/// Running your own:
///   onboarder init --org "Example Owner"         # owner CA, server certificate, admin token
///   onboarder serve &                            # QUIC for devices, admin API on loopback
///   onboarder anchor import acme/root-ca.pem --masa acme/masa.pem --name acme
///   onboarder voucher import vouchers.cbor
///   onboarder device list
///
/// Devices are named MAKER/SERIAL (the manufacturer's name or maker id, then the serial), or
/// by their serial alone when only one manufacturer has a device with it.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// Data directory of the onboarder.
    #[arg(
        short,
        long,
        global = true,
        env = "ONBOARDER_DIR",
        default_value = "onboarder-data"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: owner root and issuing CA, server certificate, admin token.
    Init {
        /// Data directory (overrides --dir).
        path: Option<PathBuf>,
        /// Organization name in the owner's certificates.
        #[arg(long, default_value = "Example Owner")]
        org: String,
        /// UDP address devices connect to.
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: std::net::SocketAddr,
        /// Admin API address (loopback only).
        #[arg(long, default_value = "127.0.0.1:4480")]
        api: std::net::SocketAddr,
        /// DNS names and IP addresses in the server certificate; the first is what devices
        /// check on operational sessions.
        #[arg(long = "name", default_values_t = ["onboarder.local".to_string(), "localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Wi-Fi network name given to devices.
        #[arg(long, default_value = "iot-devices")]
        ssid: String,
        /// Give devices an EAP-TLS profile (the LDevID is the credential) instead of a
        /// per-device Wi-Fi passphrase.
        #[arg(long)]
        eap_tls: bool,
        /// LDevID lifetime in days.
        #[arg(long, default_value_t = 90)]
        ldevid_days: u64,
    },
    /// Run the server until interrupted.
    Serve,
    /// Manufacturer trust anchors (which IDevIDs are accepted).
    #[command(subcommand)]
    Anchor(AnchorCommand),
    /// Vouchers (which devices are expected).
    #[command(subcommand)]
    Voucher(VoucherCommand),
    /// Devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Counters: devices per state, live sessions, refusals per code, refused handshakes and
    /// connections, audit entries left out, bytes of incomplete requests held.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-key devices: they renew their LDevID with a fresh key now (offline devices when
    /// they next connect). Shows progress and a summary; waits up to --wait seconds.
    Rotate {
        /// Devices to rotate (MAKER/SERIAL, or a serial only one manufacturer has).
        devices: Vec<String>,
        /// Every active device.
        #[arg(long, conflicts_with = "devices")]
        all: bool,
        /// Commands pushed per second at most.
        #[arg(long)]
        rate: Option<u32>,
        /// Seconds to wait for the devices before summarising (0: do not wait).
        #[arg(long, default_value_t = 300)]
        wait: u64,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every certificate of a device and quarantine it; its session ends, the CRL lists
    /// the certificates, and the handshake refuses them.
    Revoke {
        /// The device (MAKER/SERIAL, or a serial only one manufacturer has).
        device: String,
        /// RFC 5280 reason: unspecified, key-compromise, ca-compromise, affiliation-changed,
        /// superseded, cessation-of-operation, privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: certs::crl::Reason,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End of life: order devices to wipe themselves and attest it (or force it for devices
    /// that never answer), and print certificates of sanitization.
    Decommission(DecommissionArgs),
    /// The owner's certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificate revocation lists.
    #[command(subcommand)]
    Crl(CrlCommand),
    /// Firmware: signing keys and the release repository.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// Staged firmware rollouts.
    #[command(subcommand)]
    Campaign(CampaignCommand),
    /// Run every lifecycle phase with N real agents against a real server on loopback.
    Demo {
        /// Number of devices.
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Keep everything in this (new or empty) directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as JSON (the last line of stdout).
        #[arg(long)]
        json: bool,
        /// Devices working at the same time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Percentage of the fleet decommissioned in the last phase.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
        decommission: u8,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct DecommissionArgs {
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
}

#[derive(Subcommand)]
enum CaCommand {
    /// Start a new issuing CA under the owner root (needs ca/owner-root.key). Every active
    /// device re-keys onto it; the old CA keeps publishing its CRL until its certificates
    /// expire.
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
}

#[derive(Subcommand)]
enum FirmwareCommand {
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

#[derive(Subcommand)]
enum CampaignCommand {
    /// Create a campaign (start it with `campaign start`).
    Create {
        /// Release: version or image digest.
        #[arg(long)]
        release: String,
        /// Every active device.
        #[arg(long, conflicts_with_all = ["class", "devices"])]
        all: bool,
        /// Active devices of this class.
        #[arg(long, conflicts_with = "devices")]
        class: Option<String>,
        /// These devices (comma-separated; MAKER/SERIAL, or serials only one manufacturer has).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Cumulative percentages of the waves.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        waves: Vec<u8>,
        /// Pause when more than this percentage of the devices offered so far failed.
        #[arg(long, default_value_t = 5)]
        failure_threshold: u8,
        /// Offers per second at most.
        #[arg(long)]
        rate: Option<u32>,
        /// Offer the next wave after this many seconds even if some devices of the current one
        /// have not finished (an offline device keeps its offer and updates when it is back;
        /// the campaign completes when every device has). Without it, a wave waits for all.
        #[arg(long, value_name = "SECONDS")]
        wave_timeout: Option<u64>,
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

#[derive(Subcommand)]
enum CrlCommand {
    /// The CRLs last published (files in DIR/crl/, and GET /crl/issuing-ca-N.crl).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AnchorCommand {
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

#[derive(Subcommand)]
enum VoucherCommand {
    /// Import a voucher bundle (from `factory voucher`).
    Import {
        /// Bundle file (CBOR).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
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

#[derive(Subcommand)]
enum AuditCommand {
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

fn main() -> Result<()> {
    // Everything this process creates is for its owner only: the data directory holds keys
    // and the store, whose files its database library creates with the process umask.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                match cli.command {
                    Command::Serve => "info",
                    _ => "warn",
                }
                .into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Init {
            path,
            org,
            listen,
            api,
            names,
            ssid,
            eap_tls,
            ldevid_days,
        } => {
            let dir = path.unwrap_or(cli.dir);
            let mut config = Config::new(&org);
            config.quic_listen = listen;
            config.api_listen = api;
            config.policy.server_name = names.first().cloned().unwrap_or_default();
            config.server_names = names;
            config.policy.ldevid_lifetime = ldevid_days * 86_400;
            config.policy.network = if eap_tls {
                NetworkPolicy::EapTls { ssid }
            } else {
                NetworkPolicy::Wifi { ssid }
            };
            onboarder::pki::init(&dir, &config, certs::unix_now())
                .with_context(|| format!("initialising {}", dir.display()))?;
            println!("initialised {}", dir.display());
            println!(
                "  owner root CA: {}",
                dir.join(onboarder::config::layout::OWNER_ROOT).display()
            );
            println!(
                "  admin token:   {} (mode 0600)",
                dir.join(onboarder::config::layout::TOKEN).display()
            );
            println!("next: onboarder --dir {} serve", dir.display());
        }
        Command::Serve => runtime()?.block_on(serve(&cli.dir))?,
        Command::Anchor(cmd) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            match cmd {
                AnchorCommand::Import {
                    file,
                    masa,
                    name,
                    json,
                } => {
                    let import = onboarder::operator::AnchorImport {
                        pem: certs::files::read_pem_text(&file)?,
                        masa_pem: masa
                            .as_deref()
                            .map(certs::files::read_pem_text)
                            .transpose()?,
                        name,
                    };
                    let added = client.import_anchor(&import)?;
                    if json {
                        println!("{}", serde_json::to_string(&added)?);
                    } else if added.is_empty() {
                        println!("already imported");
                    } else {
                        for a in added {
                            println!(
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
                }
                AnchorCommand::List { json } => {
                    let anchors = client.anchors()?;
                    if json {
                        println!("{}", serde_json::to_string(&anchors)?);
                    } else {
                        println!("{:<16} {:<16} {:<7} SUBJECT", "NAME", "MAKER", "SIGNER");
                        for a in anchors {
                            println!(
                                "{:<16} {:<16} {:<7} {}",
                                a.name,
                                a.maker,
                                if a.voucher_signer { "yes" } else { "no" },
                                a.subject
                            );
                        }
                    }
                }
            }
        }
        Command::Voucher(VoucherCommand::Import { file, json }) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            let bundle = certs::files::read_limited(&file, protocol::voucher::MAX_BUNDLE as u64)?;
            let report = client.import_vouchers(&bundle)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "imported {}, updated {}, unchanged {}, rejected {}",
                    report.imported,
                    report.updated,
                    report.unchanged,
                    report.rejected.len()
                );
                if report.unverified > 0 {
                    println!(
                        "  {} accepted without a signature check: import their manufacturer's \
                         voucher signer with `anchor import --masa`",
                        report.unverified
                    );
                }
                for r in &report.rejected {
                    println!(
                        "  #{} {}: {}",
                        r.index,
                        shown(r.serial.as_deref().unwrap_or("?")),
                        shown(&r.reason)
                    );
                }
            }
            anyhow::ensure!(report.rejected.is_empty(), "some vouchers were rejected");
        }
        Command::Device(cmd) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            match cmd {
                DeviceCommand::List { json } => {
                    let devices = client.devices()?;
                    let names = Names::of(&client)?;
                    if json {
                        println!("{}", serde_json::to_string(&devices)?);
                    } else {
                        println!(
                            "{:<36} {:<12} {:<10} CERTIFICATE",
                            "DEVICE", "STATE", "FIRMWARE"
                        );
                        for d in devices {
                            let cert = d
                                .certificates
                                .iter()
                                .rev()
                                .find(|c| c.status == onboarder::core::CertStatus::Active)
                                .map_or("-".to_string(), |c| c.serial.clone());
                            println!(
                                "{:<36} {:<12} {:<10} {}",
                                names.device(&d.id),
                                d.state.to_string(),
                                shown(d.firmware_version.as_deref().unwrap_or("-")),
                                cert
                            );
                        }
                    }
                }
                DeviceCommand::Quarantine { device, reason } => {
                    let d = client.quarantine(&device, &reason)?;
                    println!("{} is {}", d.id, d.state);
                }
                DeviceCommand::ResetOnboarding { device, reason } => {
                    let d = client.reset_onboarding(&device, &reason)?;
                    println!("{} is {}; its IDevID is no longer pinned", d.id, d.state);
                }
                DeviceCommand::Show { device, json } => {
                    let d = client.device(&device)?;
                    if json {
                        println!("{}", serde_json::to_string(&d)?);
                    } else {
                        println!("device:    {}", Names::of(&client)?.device(&d.id));
                        println!("maker:     {}", d.maker);
                        println!("serial:    {}", d.serial);
                        println!("state:     {}", d.state);
                        if let Some(reason) = &d.quarantine_reason {
                            println!("why:       {}", shown(reason));
                        }
                        println!(
                            "firmware:  {}",
                            shown(d.firmware_version.as_deref().unwrap_or("-"))
                        );
                        println!(
                            "agent:     {}",
                            shown(d.agent_version.as_deref().unwrap_or("-"))
                        );
                        if let Some(n) = &d.network {
                            println!("network:   {} {}", n.kind, shown(&n.ssid));
                        }
                        for c in &d.certificates {
                            println!(
                                "cert:      {} {:?} until {}",
                                c.serial, c.status, c.not_after
                            );
                        }
                    }
                }
            }
        }
        Command::Audit(cmd) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            match cmd {
                AuditCommand::Show { from, limit, json } => {
                    let entries = client.audit(from, limit)?;
                    if json {
                        println!("{}", serde_json::to_string(&entries)?);
                    } else {
                        for e in entries {
                            println!(
                                "{:>8} {} {:<18} {:<24} {}",
                                e.seq,
                                e.event.at,
                                shown(&e.event.actor),
                                shown(&e.event.action),
                                shown(&e.event.detail)
                            );
                        }
                    }
                }
                AuditCommand::Verify { json } => {
                    let summary = client.verify_audit()?;
                    if json {
                        println!("{}", serde_json::to_string(&summary)?);
                    } else {
                        println!(
                            "audit chain intact: {} entries, head {}",
                            summary.entries, summary.head
                        );
                    }
                }
            }
        }
        Command::Stats { json } => {
            let stats = ApiClient::for_data_dir(&cli.dir)?.stats()?;
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                let states: Vec<String> = stats
                    .states
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect();
                println!("devices:                {}", states.join(", "));
                println!("sessions:               {}", stats.sessions);
                let refusals: Vec<String> = stats
                    .metrics
                    .refusals
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                println!("refusals:               {}", refusals.join(", "));
                println!(
                    "handshakes refused:     {}",
                    stats.metrics.handshakes_refused
                );
                println!(
                    "connections refused:    {}",
                    stats.metrics.connections_refused
                );
                println!("audit entries left out: {}", stats.metrics.audit_suppressed);
                println!("request bytes held:     {}", stats.frame_bytes_held);
            }
        }
        Command::Rotate {
            devices,
            all,
            rate,
            wait,
            json,
        } => {
            anyhow::ensure!(all || !devices.is_empty(), "name devices or use --all");
            let client = ApiClient::for_data_dir(&cli.dir)?;
            let order =
                client.rotate(&onboarder::operator::api::RotateRequest { devices, all, rate })?;
            for (device, why) in &order.refused {
                eprintln!("not rotating {}: {}", shown(device), shown(why));
            }
            follow_rotation(&client, order.at, order.accepted.len(), wait, json)?;
        }
        Command::Revoke {
            device,
            reason,
            json,
        } => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            let d = client.revoke(&device, reason)?;
            if json {
                println!("{}", serde_json::to_string(&d)?);
            } else {
                let revoked: Vec<_> = d
                    .certificates
                    .iter()
                    .filter(|c| matches!(c.status, onboarder::core::CertStatus::Revoked { .. }))
                    .map(|c| c.serial.as_str())
                    .collect();
                println!("revoked {} ({reason}): {}", d.id, revoked.join(", "));
                println!("{} is {}", d.id, d.state);
            }
        }
        Command::Decommission(args) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            decommission(&client, args)?;
        }
        Command::Ca(CaCommand::Rollover { rate, wait, json }) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            let report = client.rollover(rate)?;
            eprintln!("issuing CA generation {} in force", report.generation);
            follow_rotation(
                &client,
                report.rotation.at,
                report.rotation.accepted.len(),
                wait,
                json,
            )?;
        }
        Command::Crl(CrlCommand::List { json }) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            let crls = client.crls()?;
            if json {
                println!("{}", serde_json::to_string(&crls)?);
            } else {
                for c in crls {
                    println!(
                        "issuing CA {}: CRL number {}, {} entries, next update {} ({})",
                        c.generation,
                        c.number,
                        c.entries,
                        c.next_update,
                        cli.dir
                            .join(onboarder::config::layout::crl(c.generation))
                            .display()
                    );
                }
            }
        }
        Command::Firmware(cmd) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            match cmd {
                FirmwareCommand::KeyImport { file, vendor } => {
                    let key = client
                        .import_firmware_key(&vendor, &certs::files::read_pem_text(&file)?)?;
                    println!(
                        "trusting firmware of {} signed by sha256:{}",
                        key.vendor_id, key.fingerprint
                    );
                }
                FirmwareCommand::Upload {
                    image,
                    manifest,
                    json,
                } => {
                    let image =
                        certs::files::read_limited(&image, onboarder::store::images::MAX_IMAGE)?;
                    let manifest = certs::files::read_limited(
                        &manifest,
                        protocol::manifest::MAX_MANIFEST as u64,
                    )?;
                    let r = client.upload_release(&manifest, &image)?;
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        println!(
                            "release {} {} (sequence {}, {} bytes) sha256:{}",
                            r.class_id, r.version, r.sequence, r.size, r.digest
                        );
                    }
                }
                FirmwareCommand::List { json } => {
                    let releases = client.releases()?;
                    if json {
                        println!("{}", serde_json::to_string(&releases)?);
                    } else {
                        println!(
                            "{:<12} {:<10} {:>8} {:>10}  DIGEST",
                            "CLASS", "VERSION", "SEQUENCE", "BYTES"
                        );
                        for r in releases {
                            println!(
                                "{:<12} {:<10} {:>8} {:>10}  {}",
                                r.class_id, r.version, r.sequence, r.size, r.digest
                            );
                        }
                    }
                }
            }
        }
        Command::Campaign(cmd) => {
            let client = ApiClient::for_data_dir(&cli.dir)?;
            match cmd {
                CampaignCommand::Create {
                    release,
                    all,
                    class,
                    devices,
                    waves,
                    failure_threshold,
                    rate,
                    wave_timeout,
                    json,
                } => {
                    use onboarder::service::{CampaignSpec, Target};
                    let target = match (all, class) {
                        (true, _) => Target::All,
                        (_, Some(c)) => Target::Class(c),
                        _ if !devices.is_empty() => Target::Devices(devices),
                        _ => anyhow::bail!("choose --all, --class or --devices"),
                    };
                    let c = client.create_campaign(&CampaignSpec {
                        release,
                        target,
                        waves,
                        failure_threshold,
                        rate,
                        wave_timeout,
                    })?;
                    if json {
                        println!("{}", serde_json::to_string(&c)?);
                    } else {
                        let sizes: Vec<usize> = c.waves.iter().map(Vec::len).collect();
                        println!(
                            "created {}: {} in waves of {:?} devices; start it with: onboarder campaign start {}",
                            c.id, c.version, sizes, c.id
                        );
                    }
                }
                CampaignCommand::Start { id } => {
                    print_campaign(&client.order_campaign(&id, "start")?)
                }
                CampaignCommand::Pause { id } => {
                    print_campaign(&client.order_campaign(&id, "pause")?)
                }
                CampaignCommand::Resume { id } => {
                    print_campaign(&client.order_campaign(&id, "resume")?)
                }
                CampaignCommand::Abort { id } => {
                    print_campaign(&client.order_campaign(&id, "abort")?)
                }
                CampaignCommand::Status { id, devices, json } => {
                    let s = client.campaign_status(&id, devices || json)?;
                    if json {
                        println!("{}", serde_json::to_string(&s)?);
                    } else {
                        println!(
                            "{} ({}): {:?}, wave {} of {}",
                            s.id,
                            s.version,
                            s.state,
                            s.wave + 1,
                            s.waves.len()
                        );
                        println!(
                            "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                            "WAVE", "DEVICES", "WAITING", "ACTIVE", "HEALTHY", "FAILED", "SKIPPED"
                        );
                        for (i, t) in s.waves.iter().enumerate() {
                            println!(
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
                            let names = Names::of(&client)?;
                            for d in &s.devices {
                                println!(
                                    "  {:<36} wave {} {:<12} {:>9} bytes {}",
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
            }
        }
        Command::Demo {
            devices,
            out,
            json,
            concurrency,
            decommission,
        } => {
            let progress = std::io::stderr().is_terminal();
            let report = runtime()?.block_on(demo::run(DemoOptions {
                devices,
                out,
                concurrency,
                progress,
                decommission_percent: decommission,
            }))?;
            if !json {
                for (name, p) in &report.phases {
                    println!(
                        "{name:>12}: {} ok, {} failed in {:.2}s ({:.1}/s, p50 {:.1} ms, p99 {:.1} ms)",
                        p.ok, p.failed, p.seconds, p.per_second, p.p50_ms, p.p99_ms
                    );
                }
                if let Some(out) = &report.out {
                    println!("everything is in {}", out.display());
                }
            }
            println!("{}", serde_json::to_string(&report)?);
            let failed: usize = report.phases.values().map(|p| p.failed).sum();
            anyhow::ensure!(failed == 0, "{failed} device phases failed");
        }
    }
    Ok(())
}

fn decommission(client: &ApiClient, args: DecommissionArgs) -> Result<()> {
    use onboarder::core::DeviceState;
    if let Some(DecommissionCommand::Certificate { device, html, json }) = args.command {
        let c = client.sanitization(&device)?;
        if let Some(path) = html {
            std::fs::write(&path, c.to_html())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        } else {
            println!("Certificate of Sanitization (NIST SP 800-88)");
            println!(
                "  device:       {} {} {} ({})",
                shown(&c.manufacturer),
                shown(&c.model),
                shown(&c.serial_number),
                c.device
            );
            println!("  method:       {}", c.sanitization_method);
            for d in &c.sanitization_description {
                println!("                {}", shown(d));
            }
            println!(
                "  verification: {}",
                if c.verified { "passed" } else { "FAILED" }
            );
            println!("  tool:         {}", shown(&c.tool));
            println!("  attestation:  sha256:{}", c.attestation_sha256);
            println!("  destination:  {}", c.media_destination);
        }
        return Ok(());
    }
    if args.force {
        let reason = args.reason.unwrap_or_default();
        for device in &args.devices {
            let d = client.force_decommission(device, &reason)?;
            println!("{} is {}", d.id, d.state);
        }
        return Ok(());
    }
    let method: protocol::attestation::WipeMethod =
        serde_json::from_value(serde_json::Value::String(args.method.clone())).map_err(|_| {
            anyhow::anyhow!(
                "unknown method {:?}: clear or purge-cryptographic-erase",
                args.method
            )
        })?;
    let order = client.decommission(args.devices, method)?;
    for (device, why) in &order.refused {
        eprintln!("not decommissioning {}: {}", shown(device), shown(why));
    }
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(order.accepted.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.wait);
    let states = loop {
        let states: Vec<(String, DeviceState)> = order
            .accepted
            .iter()
            .map(|id| {
                client
                    .device(&id.to_string())
                    .map(|d| (d.id.to_string(), d.state))
            })
            .collect::<Result<_>>()?;
        let done = states
            .iter()
            .filter(|(_, st)| *st != DeviceState::Decommissioning)
            .count();
        bar.set_position(done as u64);
        if done == states.len() || std::time::Instant::now() >= deadline {
            break states;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    bar.finish_and_clear();
    let waiting: Vec<&str> = states
        .iter()
        .filter(|(_, st)| *st == DeviceState::Decommissioning)
        .map(|(s, _)| s.as_str())
        .collect();
    let done = states.len() - waiting.len();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "decommissioned": done, "waiting": waiting, "refused": order.refused })
        );
    } else {
        println!("decommissioned {done}, waiting for {}", waiting.len());
        if !waiting.is_empty() {
            println!(
                "  waiting devices wipe when they next connect; `--force` revokes without them"
            );
        }
    }
    anyhow::ensure!(order.refused.is_empty(), "some devices were refused");
    Ok(())
}

/// Manufacturers' names, to show devices as operators named their makers (`acme/SN-1`).
struct Names(std::collections::HashMap<onboarder::core::MakerId, String>);

impl Names {
    fn of(client: &ApiClient) -> Result<Names> {
        Ok(Names(
            client
                .anchors()?
                .into_iter()
                .map(|a| (a.maker, a.name))
                .collect(),
        ))
    }

    fn device(&self, id: &onboarder::core::DeviceId) -> String {
        match self.0.get(&id.maker) {
            Some(name) => format!("{name}/{}", id.serial),
            None => id.to_string(),
        }
    }
}

fn print_campaign(c: &onboarder::core::campaign::Campaign) {
    println!("{}: {:?}", c.id, c.state);
}

/// Shows the progress of the rotations ordered at `since` until none is pending or `wait`
/// seconds have passed, then prints the summary. Fails if any device failed.
fn follow_rotation(
    client: &ApiClient,
    since: u64,
    total: usize,
    wait: u64,
    json: bool,
) -> Result<()> {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("  rotating [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let status = loop {
        let status = client.rotation_status(since)?;
        bar.set_position((status.rotated + status.failed) as u64);
        bar.set_message(format!("{} failed", status.failed));
        if status.pending == 0 || std::time::Instant::now() >= deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "rotated": status.rotated,
                "pending": status.pending,
                "failed": status.failed,
                "pending_devices": status.pending_devices,
                "failures": status.failures,
            })
        );
    } else {
        println!(
            "rotated {}, pending {}, failed {}",
            status.rotated, status.pending, status.failed
        );
        for (device, why) in &status.failures {
            println!("  {device}: {}", shown(why));
        }
        if status.pending > 0 {
            println!("  pending devices rotate when they next connect");
        }
    }
    anyhow::ensure!(
        status.failed == 0,
        "{} devices failed to rotate",
        status.failed
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn serve(dir: &Path) -> Result<()> {
    let server = Server::start(dir, Listen::default())
        .await
        .with_context(|| format!("starting the onboarder in {}", dir.display()))?;
    println!(
        "onboarder serving devices on {} (QUIC), admin API on http://{}",
        server.quic_addr(),
        server.api_addr()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
