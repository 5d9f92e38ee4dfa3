//! The `onboarder` command line: the clap tree and what each command prints. Commands act
//! through the admin API of a running onboarder (found from its data directory), except
//! `init`, `serve`, `demo` and `radius`, which the binary runs itself.
//!
//! Output follows the habits of `kubectl` and `step`: a table or a few lines for people
//! (device-supplied text escaped, times in RFC 3339), `--json` for scripts, progress on stderr
//! when it is a terminal, and a non-zero exit when the command did not fully succeed.

mod audit;
mod devices;
mod firmware;
mod follow;
mod orders;
mod radius;
mod transparency;

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::client::ApiClient;
use crate::config::{Config, OnlineMasa, layout};
use crate::core::NetworkPolicy;
use crate::error::{Error, Result};

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
#[command(name = "onboarder", version, verbatim_doc_comment)]
pub struct Cli {
    /// Data directory of the onboarder.
    #[arg(
        short,
        long,
        global = true,
        env = "ONBOARDER_DIR",
        default_value = "onboarder-data"
    )]
    pub dir: PathBuf,
    /// How log lines look on stderr: `text` for people, `json` (one object per line) for a
    /// log collector such as journald's or Loki's.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The log format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Create a data directory: owner root and issuing CA, server certificate, admin token.
    Init(InitArgs),
    /// Run the server until interrupted.
    Serve(ServeArgs),
    /// Run every lifecycle phase with N real agents against a real server on loopback.
    Demo(DemoArgs),
    /// Manufacturer trust anchors (which IDevIDs are accepted).
    #[command(subcommand)]
    Anchor(devices::AnchorCommand),
    /// Vouchers (which devices are expected).
    #[command(subcommand)]
    Voucher(devices::VoucherCommand),
    /// Devices.
    #[command(subcommand)]
    Device(devices::DeviceCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Counters: devices per state, live sessions, refusals per code, refused handshakes and
    /// connections, audit entries left out, bytes of incomplete requests held.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-key devices: they renew their LDevID with a fresh key now (offline devices when
    /// they next connect). Shows progress and a summary; waits up to --wait seconds.
    Rotate(orders::RotateArgs),
    /// Revoke every certificate of a device and quarantine it; its session ends, the CRL lists
    /// the certificates, and the handshake refuses them.
    Revoke(orders::RevokeArgs),
    /// End of life: order devices to wipe themselves and attest it (or force it for devices
    /// that never answer), and print certificates of sanitization.
    Decommission(orders::DecommissionArgs),
    /// The owner's certificate authorities.
    #[command(subcommand)]
    Ca(orders::CaCommand),
    /// Certificate revocation lists.
    #[command(subcommand)]
    Crl(orders::CrlCommand),
    /// Firmware: signing keys and the release repository.
    #[command(subcommand)]
    Firmware(firmware::FirmwareCommand),
    /// Staged firmware rollouts.
    #[command(subcommand)]
    Campaign(firmware::CampaignCommand),
    /// Support periods: when security updates for a device class end, told to its devices
    /// ahead of time.
    #[command(subcommand)]
    Support(transparency::SupportCommand),
    /// Vulnerability status from VEX statements: which devices are affected, which release
    /// fixes them.
    #[command(subcommand)]
    Vex(transparency::VexCommand),
    /// A device's public live label: its URL (for anyone, no token), what it shows, and its
    /// QR code for the housing (`--qr label.png` or `label.svg`).
    LiveLabel {
        /// The device.
        device: String,
        /// Write the QR code to this file (PNG; SVG when it ends in .svg).
        #[arg(long, value_name = "FILE")]
        qr: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Network access through FreeRADIUS (EAP-TLS with the LDevID, per-device passphrases,
    /// per-device VLANs).
    #[command(subcommand)]
    Radius(radius::RadiusCommand),
    /// Print a shell completion script: `onboarder completions bash >
    /// /etc/bash_completion.d/onboarder` (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (onboarder.1 and one per command, onboarder-serve.1, ...) into
    /// DIR, for `man -l` or /usr/share/man/man1.
    Man {
        /// Where to write them.
        #[arg(default_value = ".")]
        out: PathBuf,
    },
}

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "onboarder", &mut std::io::stdout());
}

/// Writes the manual pages into `out`; returns how many.
pub fn man_pages(out: &std::path::Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(out)?;
    let mut command = <Cli as clap::CommandFactory>::command();
    // Carries the global options (--dir, --log-format) into every command's page.
    command.build();
    let mut written = 0;
    write_man(&command, "onboarder", out, &mut written)?;
    Ok(written)
}

fn write_man(
    command: &clap::Command,
    name: &str,
    out: &std::path::Path,
    written: &mut usize,
) -> std::io::Result<()> {
    let page = command.clone().name(name.to_string());
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text)?;
    std::fs::write(out.join(format!("{name}.1")), text)?;
    *written += 1;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_man(sub, &format!("{name}-{}", sub.get_name()), out, written)?;
    }
    Ok(())
}

/// `onboarder init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// Data directory (overrides --dir).
    pub path: Option<PathBuf>,
    /// Organization name in the owner's certificates.
    #[arg(long, default_value = "Example Owner")]
    pub org: String,
    /// UDP address devices connect to.
    #[arg(long, default_value = "0.0.0.0:4433")]
    pub listen: SocketAddr,
    /// Admin API address (loopback only).
    #[arg(long, default_value = "127.0.0.1:4480")]
    pub api: SocketAddr,
    /// TCP address of the standard interfaces (EST over HTTPS); `off` for none.
    #[arg(long, default_value = "0.0.0.0:8443", value_parser = parse_https)]
    pub https: HttpsListen,
    /// UDP address of CoAP over DTLS for constrained devices (EST-coaps, RFC 9148); `off` for
    /// none.
    #[arg(long, default_value = "0.0.0.0:5684", value_parser = parse_https)]
    pub coap: HttpsListen,
    /// DNS names and IP addresses in the server certificate; the first is what devices check
    /// on operational sessions.
    #[arg(long = "name", default_values_t = ["onboarder.local".to_string(), "localhost".to_string(), "127.0.0.1".to_string()])]
    pub names: Vec<String>,
    /// Wi-Fi network name given to devices.
    #[arg(long, default_value = "iot-devices")]
    pub ssid: String,
    /// Give devices an EAP-TLS profile (the LDevID is the credential) instead of a
    /// per-device Wi-Fi passphrase.
    #[arg(long)]
    pub eap_tls: bool,
    /// LDevID lifetime in days.
    #[arg(long, default_value_t = 90)]
    pub ldevid_days: u64,
    /// Ask manufacturers' MASAs online for nonced vouchers (RFC 8995): `off` (vouchers are
    /// imported), `auto` (the MASA each IDevID names), or a URL (`https://masa.example:9443`)
    /// asked when an IDevID names none.
    #[arg(long, default_value = "off", value_name = "off|auto|URL")]
    pub masa: String,
    /// Admit a device no voucher was imported for when its maker's MASA vouches for it to
    /// this owner (needs --masa).
    #[arg(long)]
    pub admit_vouched: bool,
    /// Keep the state in this PostgreSQL database (see `serve --store`) instead of the
    /// embedded store.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// `onboarder serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Keep the state in this PostgreSQL database instead of the data directory's embedded
    /// store (`postgres://user@host/db`, or libpq's `host=/run/postgresql dbname=onboarder`):
    /// several onboarders on one database, each with a copy of the data directory, act as one.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// UDP address for devices, instead of the configured one (a second replica on the same
    /// machine needs its own).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin API address, instead of the configured one (loopback only).
    #[arg(long, value_name = "ADDR")]
    pub api: Option<SocketAddr>,
    /// HTTPS address, instead of the configured one.
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// CoAPS (UDP) address, instead of the configured one.
    #[arg(long, value_name = "ADDR")]
    pub coap: Option<SocketAddr>,
}

/// `onboarder demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Keep everything in this (new or empty) directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON (the last line of stdout).
    #[arg(long)]
    pub json: bool,
    /// Devices working at the same time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Percentage of the fleet decommissioned in the last phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub decommission: u8,
    /// How the devices reach the onboarder: quic, https (our protocol over HTTPS) or coap
    /// (CoAP over DTLS, as constrained devices do).
    #[arg(long, default_value_t = device_agent::transport::Transport::Quic)]
    pub transport: device_agent::transport::Transport,
}

/// Writes one line to stdout. A reader that went away (`| head`) ends the command quietly
/// (see [`is_broken_pipe`]).
pub(crate) fn emit(line: impl Display) -> Result<()> {
    writeln!(std::io::stdout().lock(), "{line}").map_err(|e| Error::os("writing the output", e))
}

/// Prints a line to stdout, returning from the function when stdout is gone.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::operator::cli::emit(format_args!($($arg)*))?
    };
}
pub(crate) use say;

/// Prints `value` as one line of JSON.
pub(crate) fn json(value: &impl serde::Serialize) -> Result<()> {
    emit(serde_json::to_string(value)?)
}

/// Whether `error` only says that the reader of stdout went away.
pub fn is_broken_pipe(error: &Error) -> bool {
    matches!(error, Error::Os { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Where the HTTPS listener goes, if anywhere (`off`).
#[derive(Debug, Clone, Copy)]
pub struct HttpsListen(Option<SocketAddr>);

fn parse_https(text: &str) -> std::result::Result<HttpsListen, String> {
    match text {
        "off" => Ok(HttpsListen(None)),
        _ => text
            .parse()
            .map(|addr| HttpsListen(Some(addr)))
            .map_err(|e| format!("{e}: an address or `off`")),
    }
}

/// Creates a data directory as `onboarder init` asked.
pub fn init(dir: PathBuf, args: InitArgs) -> Result<()> {
    let dir = args.path.unwrap_or(dir);
    let mut config = Config::new(&args.org);
    config.quic_listen = args.listen;
    config.api_listen = args.api;
    config.https_listen = args.https.0;
    config.coap_listen = args.coap.0;
    let https_base = match (args.https.0, args.names.first()) {
        (Some(https), Some(name)) => Some(format!("https://{name}:{}", https.port())),
        _ => None,
    };
    config.policy.crl_url = https_base.as_ref().map(|b| format!("{b}/crl"));
    config.policy.firmware_url = https_base.map(|b| format!("{b}/firmware"));
    config.policy.server_name = args.names.first().cloned().unwrap_or_default();
    config.server_names = args.names;
    config.policy.ldevid_lifetime = args.ldevid_days * 86_400;
    config.online_masa = match args.masa.as_str() {
        "off" => None,
        "auto" => Some(OnlineMasa { url: None }),
        url if url.starts_with("https://") => Some(OnlineMasa {
            url: Some(url.to_string()),
        }),
        other => {
            return Err(Error::Config(format!(
                "--masa {other:?}: `off`, `auto` or an https:// URL"
            )));
        }
    };
    if args.admit_vouched && config.online_masa.is_none() {
        return Err(Error::Config(
            "--admit-vouched needs a MASA to vouch (--masa auto or a URL)".into(),
        ));
    }
    config.policy.admit_vouched = args.admit_vouched;
    config.store = args.store;
    config.policy.network = if args.eap_tls {
        NetworkPolicy::EapTls { ssid: args.ssid }
    } else {
        NetworkPolicy::Wifi { ssid: args.ssid }
    };
    crate::pki::init(&dir, &config, certs::unix_now())?;
    say!("initialised {}", dir.display());
    say!(
        "  owner root CA: {}",
        dir.join(layout::OWNER_ROOT).display()
    );
    say!(
        "  admin token:   {} (mode 0600)",
        dir.join(layout::TOKEN).display()
    );
    say!("next: onboarder --dir {} serve", dir.display());
    Ok(())
}

pub use radius::radius;

/// Runs an operator command against the onboarder whose data directory is `dir`.
pub fn run(dir: PathBuf, command: Command) -> Result<()> {
    let client = ApiClient::for_data_dir(&dir)?;
    match command {
        Command::Init(_)
        | Command::Serve(_)
        | Command::Demo(_)
        | Command::Radius(_)
        | Command::Completions { .. }
        | Command::Man { .. } => Err(Error::Config(
            "init, serve, demo and radius are run by the onboarder binary itself".into(),
        )),
        Command::Anchor(cmd) => devices::anchor(&client, cmd),
        Command::Voucher(cmd) => devices::voucher(&client, cmd),
        Command::Device(cmd) => devices::device(&client, cmd),
        Command::Audit(cmd) => audit::audit(&client, cmd),
        Command::Stats { json } => audit::stats(&client, json),
        Command::Rotate(args) => orders::rotate(&client, args),
        Command::Revoke(args) => orders::revoke(&client, args),
        Command::Decommission(args) => orders::decommission(&client, args),
        Command::Ca(cmd) => orders::ca(&client, cmd),
        Command::Crl(cmd) => orders::crl(&client, &dir, cmd),
        Command::Firmware(cmd) => firmware::firmware(&client, cmd),
        Command::Campaign(cmd) => firmware::campaign(&client, cmd),
        Command::Support(cmd) => transparency::support(&client, cmd),
        Command::Vex(cmd) => transparency::vex(&client, cmd),
        Command::LiveLabel { device, qr, json } => {
            transparency::live_label(&client, &device, qr, json)
        }
    }
}
