//! `factory`: the device maker's tool. Creates a manufacturer (root CA, voucher-signing key,
//! firmware-signing key), mints IDevID bundles, and signs vouchers for an owner.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{KeyKind, files, unix_now};
use clap::{Parser, Subcommand, ValueEnum};

/// Manufacturer tool: birth certificates (IDevIDs) and ownership vouchers.
///
/// Typical use:
///   factory init ./acme --name "Acme Sensors"
///   factory mint --dir ./acme --count 10 --out ./devices
///   factory certify --dir ./acme device.csr --out ./devices/SN-000042   (key made on the device)
///   factory voucher --dir ./acme --owner-ca owner-root.pem --serials-from ./devices --out vouchers.cbor
///   factory voucher --dir ./acme --owner-ca owner-root.pem --serial SN-1 --format cms --each ./v --out v.cbor
///   factory sign-firmware --dir ./acme image.bin --version 1.1.0 --sequence 2
#[derive(Parser)]
#[command(name = "factory", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a manufacturer: root CA, voucher-signing key and certificate, firmware key.
    Init {
        /// Directory to create (must not hold a manufacturer already).
        dir: PathBuf,
        /// Manufacturer name (organization in every certificate).
        #[arg(long, default_value = "Example Devices")]
        name: String,
        /// Product model name.
        #[arg(long, default_value = "sensor-1")]
        model: String,
        /// Prefix of minted serial numbers.
        #[arg(long, default_value = "SN")]
        serial_prefix: String,
        /// Hardware type OID for the hardwareModuleName.
        #[arg(long, default_value = certs::factory::DEFAULT_HW_TYPE)]
        hw_type: String,
        /// MUD URL to put in every IDevID (RFC 8520).
        #[arg(long)]
        mud_url: Option<String>,
        /// MASA URL to put in every IDevID (RFC 8995 2.3.2).
        #[arg(long)]
        masa_url: Option<String>,
    },
    /// Mint device birth identities: one directory per device with its IDevID, key and anchors.
    Mint {
        /// Manufacturer directory.
        #[arg(long, env = "FACTORY_DIR", default_value = "manufacturer")]
        dir: PathBuf,
        /// Number of devices.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Where to write the device directories (`OUT/SERIAL/`).
        #[arg(long)]
        out: PathBuf,
        /// Key type of the device keys.
        #[arg(long, value_enum, default_value_t = KeyType::P256)]
        key_type: KeyType,
        /// Print the minted serials as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Certify a key the device made itself (in its secure element): writes the device's
    /// identity directory (IDevID and anchors, no key) from the CSR `device-agent make-key`
    /// printed. The CSR's signature proves the device holds the key; its subject
    /// serialNumber is the serial.
    Certify {
        /// Manufacturer directory.
        #[arg(long, env = "FACTORY_DIR", default_value = "manufacturer")]
        dir: PathBuf,
        /// The device's CSR (PEM or DER).
        csr: PathBuf,
        /// The device's identity directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Print the serial as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign vouchers that give devices to an owner, for the owner's bulk import.
    Voucher {
        /// Manufacturer directory.
        #[arg(long, env = "FACTORY_DIR", default_value = "manufacturer")]
        dir: PathBuf,
        /// The owner's root CA certificate (PEM), pinned in each voucher.
        #[arg(long)]
        owner_ca: PathBuf,
        /// Serial numbers to sign vouchers for.
        #[arg(long = "serial")]
        serials: Vec<String>,
        /// A directory written by `mint --out`: every device in it gets a voucher.
        #[arg(long)]
        serials_from: Option<PathBuf>,
        /// Days until the vouchers expire.
        #[arg(long, default_value_t = 30)]
        expires_in_days: u64,
        /// Output bundle (CBOR), what `onboarder import vouchers` takes.
        #[arg(long)]
        out: PathBuf,
        /// How each voucher is signed: `cose` (COSE_Sign1, what our agent reads) or `cms`
        /// (CMS-signed JSON, RFC 8366, what BRSKI pledges and `openssl cms -verify` read).
        #[arg(long, value_enum, default_value_t = VoucherFormat::Cose)]
        format: VoucherFormat,
        /// Also write each voucher on its own, as DIR/SERIAL.voucher (for `openssl cms`).
        #[arg(long, value_name = "DIR")]
        each: Option<PathBuf>,
    },
    /// The manufacturer's online voucher service (MASA, RFC 8995 5.5).
    #[command(subcommand)]
    Masa(MasaCommand),
    /// Sign a firmware image: writes its manifest (COSE_Sign1, Ed25519), verifiable by any COSE
    /// library with firmware.pub.
    SignFirmware {
        /// Manufacturer directory.
        #[arg(long, env = "FACTORY_DIR", default_value = "manufacturer")]
        dir: PathBuf,
        /// The image.
        image: PathBuf,
        /// Human-readable version.
        #[arg(long)]
        version: String,
        /// Anti-rollback sequence number: must grow with every release.
        #[arg(long)]
        sequence: u64,
        /// Device class the image is for (default: the manufacturer's model).
        #[arg(long)]
        class: Option<String>,
        /// Days until devices must no longer install it.
        #[arg(long)]
        expires_in_days: Option<u64>,
        /// Days from now until this manufacturer's security updates for the class end (signed
        /// into the manifest: owners take it as the class's support period unless they set
        /// their own).
        #[arg(long)]
        support_days: Option<u64>,
        /// SBOM document shipped with the release (its digest goes into the manifest).
        #[arg(long, requires = "sbom_uri")]
        sbom: Option<PathBuf>,
        /// Where the SBOM is published.
        #[arg(long)]
        sbom_uri: Option<String>,
        /// SBOM format.
        #[arg(long, value_enum, default_value_t = SbomFormat::Cyclonedx)]
        sbom_format: SbomFormat,
        /// Output manifest (default: IMAGE.manifest).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MasaCommand {
    /// Answer registrars' voucher requests over HTTPS until interrupted: a nonced voucher,
    /// CMS-signed JSON (or COSE for a COSE pledge request), pinning the owner whose registrar
    /// asked, for any device of this manufacturer; every voucher is logged in
    /// DIR/masa-log.jsonl and registrars read it back with requestauditlog.
    ///
    ///   factory masa serve --dir ./acme --owner owner-root.pem --name masa.acme.example
    #[command(verbatim_doc_comment)]
    Serve {
        /// Manufacturer directory.
        #[arg(long, env = "FACTORY_DIR", default_value = "manufacturer")]
        dir: PathBuf,
        /// An owner that bought devices: its root CA certificate (PEM). Registrars whose
        /// certificate chains to it get vouchers pinning it. Repeat for several owners.
        #[arg(long = "owner", required = true, value_name = "ROOT_PEM")]
        owners: Vec<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:9443")]
        listen: std::net::SocketAddr,
        /// Names for the MASA's TLS certificate (issued by the manufacturer root at start);
        /// the IDevIDs' MASA URL should name one.
        #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_string()])]
        names: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum VoucherFormat {
    Cose,
    Cms,
}

#[derive(Clone, Copy, ValueEnum)]
enum SbomFormat {
    Cyclonedx,
    Spdx,
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyType {
    P256,
    P384,
    Ed25519,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let now = unix_now();
    match cli.command {
        Command::Init {
            dir,
            name,
            model,
            serial_prefix,
            hw_type,
            mud_url,
            masa_url,
        } => {
            if dir.join(certs::factory::layout::CONFIG).exists() {
                bail!("{} already holds a manufacturer", dir.display());
            }
            let config = ManufacturerConfig {
                model,
                serial_prefix,
                hw_type,
                mud_url,
                masa_url,
                ..ManufacturerConfig::new(&name)
            };
            let m = Manufacturer::create(config, now)?;
            m.save(&dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            println!("created manufacturer {name:?} in {}", dir.display());
            println!(
                "  root CA:        {}",
                dir.join(certs::factory::layout::ROOT_CERT).display()
            );
            println!(
                "  voucher signer: {}",
                dir.join(certs::factory::layout::MASA_CERT).display()
            );
            println!(
                "  firmware key:   {}",
                dir.join(certs::factory::layout::FIRMWARE_PUB).display()
            );
        }
        Command::Mint {
            dir,
            count,
            out,
            key_type,
            json,
        } => {
            let mut m = Manufacturer::load(&dir)
                .with_context(|| format!("loading manufacturer from {}", dir.display()))?;
            let kind = match key_type {
                KeyType::P256 => KeyKind::P256,
                KeyType::P384 => KeyKind::P384,
                KeyType::Ed25519 => KeyKind::Ed25519,
            };
            let mut serials = Vec::new();
            for _ in 0..count {
                let serial = m.next_serial();
                m.mint(&serial, kind, now)?.save(&out.join(&serial))?;
                // Save the counter after every device so a crash never reuses a serial.
                m.save_config(&dir)?;
                serials.push(serial);
            }
            if json {
                println!("{}", serde_json::json!({ "minted": serials }));
            } else {
                for s in &serials {
                    println!("{}", out.join(s).display());
                }
            }
        }
        Command::Certify {
            dir,
            csr,
            out,
            json,
        } => {
            let m = Manufacturer::load(&dir)
                .with_context(|| format!("loading manufacturer from {}", dir.display()))?;
            let bytes = files::read_limited(&csr, certs::csr::MAX_CSR as u64 * 2)
                .with_context(|| format!("reading {}", csr.display()))?;
            let der = match pem::parse(&bytes) {
                Ok(block) => block.into_contents(),
                Err(_) => bytes,
            };
            let identity = m
                .certify(&der, now)
                .with_context(|| format!("certifying {}", csr.display()))?;
            identity.save(&out)?;
            if json {
                println!("{}", serde_json::json!({ "certified": identity.serial }));
            } else {
                println!("certified {} in {}", identity.serial, out.display());
            }
        }
        Command::Voucher {
            dir,
            owner_ca,
            mut serials,
            serials_from,
            expires_in_days,
            out,
            format,
            each,
        } => {
            let m = Manufacturer::load(&dir)
                .with_context(|| format!("loading manufacturer from {}", dir.display()))?;
            let owner = files::read_cert(&owner_ca)?;
            if let Some(from) = serials_from {
                for entry in std::fs::read_dir(&from)
                    .with_context(|| format!("reading {}", from.display()))?
                {
                    let entry = entry?;
                    if entry
                        .path()
                        .join(certs::identity::layout::IDEVID_CERT)
                        .exists()
                    {
                        serials.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            serials.sort();
            serials.dedup();
            if serials.is_empty() {
                bail!("no serials given (use --serial or --serials-from)");
            }
            let expires = now + expires_in_days * 86_400;
            let encoding = match format {
                VoucherFormat::Cose => certs::brski::Encoding::Cose,
                VoucherFormat::Cms => certs::brski::Encoding::Cms,
            };
            let vouchers = serials
                .iter()
                .map(|s| m.voucher_in(encoding, s, &owner, now, expires))
                .collect::<Result<Vec<_>, _>>()?;
            files::write_public(&out, &protocol::voucher::encode_bundle(&vouchers))?;
            if let Some(each) = each {
                for (serial, voucher) in serials.iter().zip(&vouchers) {
                    files::write_public(&each.join(format!("{serial}.voucher")), voucher)?;
                }
            }
            println!("signed {} vouchers into {}", vouchers.len(), out.display());
        }
        Command::Masa(MasaCommand::Serve {
            dir,
            owners,
            listen,
            names,
        }) => masa_serve(&dir, &owners, listen, &names, now)?,
        Command::SignFirmware {
            dir,
            image,
            version,
            sequence,
            class,
            expires_in_days,
            support_days,
            sbom,
            sbom_uri,
            sbom_format,
            out,
        } => {
            let m = Manufacturer::load(&dir)
                .with_context(|| format!("loading manufacturer from {}", dir.display()))?;
            let bytes =
                std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            let sbom = match (sbom, sbom_uri) {
                (Some(path), Some(uri)) => Some(protocol::manifest::SbomRef {
                    format: match sbom_format {
                        SbomFormat::Cyclonedx => "cyclonedx",
                        SbomFormat::Spdx => "spdx",
                    }
                    .into(),
                    uri,
                    digest: protocol::manifest::sha256(
                        &std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )
                    .to_vec(),
                }),
                _ => None,
            };
            let manifest = m.sign_firmware(
                &bytes,
                &certs::factory::FirmwareRelease {
                    version: &version,
                    sequence,
                    class_id: class.as_deref(),
                    expires_on: expires_in_days.map(|d| now + d * 86_400),
                    sbom,
                    support_ends_on: support_days.map(|d| now + d * 86_400),
                },
                now,
            )?;
            let out = out.unwrap_or_else(|| {
                let mut name = image.clone().into_os_string();
                name.push(".manifest");
                PathBuf::from(name)
            });
            files::write_public(&out, &manifest)?;
            println!(
                "signed {} ({} bytes, sha256 {}) as version {version}, sequence {sequence}: {}",
                image.display(),
                bytes.len(),
                certs::inspect::hex(&protocol::manifest::sha256(&bytes)),
                out.display()
            );
        }
    }
    Ok(())
}

/// Runs the MASA until Ctrl-C or SIGTERM.
fn masa_serve(
    dir: &std::path::Path,
    owners: &[PathBuf],
    listen: std::net::SocketAddr,
    names: &[String],
    now: u64,
) -> Result<()> {
    use std::sync::Arc;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let m = Manufacturer::load(dir)
        .with_context(|| format!("loading manufacturer from {}", dir.display()))?;
    let owners = owners
        .iter()
        .map(|p| files::read_cert(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let (chain, key) = m.masa_tls(names, now)?;
    let tls = certs::masa::serve::tls_config(&chain, &key).map_err(anyhow::Error::msg)?;
    let masa = Arc::new(certs::masa::MasaService::new(
        m,
        owners,
        Some(&dir.join(certs::factory::layout::MASA_LOG)),
    )?);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (ready, bound) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(certs::masa::serve::serve(listen, tls, masa, ready, stopped));
        match bound.await {
            Ok(addr) => println!("MASA listening on https://{addr}"),
            Err(_) => {
                return match server.await {
                    Ok(Err(e)) => {
                        Err(anyhow::Error::new(e).context(format!("listening on {listen}")))
                    }
                    _ => Err(anyhow::anyhow!("the MASA stopped before listening")),
                };
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop.send(true);
        let _ = server.await;
        Ok(())
    })
}
