//! What the HTTPS interop tests share: an onboarder with its HTTPS listener on a port known
//! before it starts (certificates name it), a maker it trusts, and the shell clients.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use certs::factory::Manufacturer;
use onboarder::core::DeviceId;
use onboarder::server::{Listen, Server};
use onboarder::service::Service;

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// openssl's output (stdout and stderr), asserting it succeeded.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

/// The `factory` binary of the `certs` package, built beside this test (by `cargo test
/// --workspace`, or here if it is missing).
pub fn factory_binary() -> PathBuf {
    binary("certs", "factory")
}

/// The binary `name` of `package`, built beside this test (by `cargo test --workspace`, or
/// here if it is missing).
pub fn binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = profile_dir.join(name);
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", name])
            .status()
            .unwrap();
        assert!(status.success());
    }
    binary
}

/// A port free now, for a listener started later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An owner's onboarder with its HTTPS listener on `localhost:port`.
pub struct Owner {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub service: Arc<Service>,
    pub port: u16,
    pub owner_root: PathBuf,
}

impl Owner {
    pub async fn start(name: &str) -> Owner {
        Owner::start_with(name, |_| {}).await
    }

    /// An owner whose configuration `tune` changed first.
    pub async fn start_with(
        name: &str,
        tune: impl FnOnce(&mut onboarder::config::Config),
    ) -> Owner {
        Owner::start_prepared(name, tune, |_, _| {}).await
    }

    /// An owner whose configuration `tune` changed first, and whose data directory `prepare`
    /// (given it and the owner's temporary directory) works on before the server starts.
    pub async fn start_prepared(
        name: &str,
        tune: impl FnOnce(&mut onboarder::config::Config),
        prepare: impl FnOnce(&Path, &Path),
    ) -> Owner {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("onboarder");
        let mut config = onboarder::config::Config::new(name);
        config.quic_listen = "127.0.0.1:0".parse().unwrap();
        config.api_listen = "127.0.0.1:0".parse().unwrap();
        tune(&mut config);
        // The CRL distribution point names the HTTPS port, so it is chosen before the start.
        let port = free_port();
        config.policy.crl_url = Some(format!("https://localhost:{port}/crl"));
        onboarder::pki::init(&data, &config, certs::unix_now()).unwrap();
        prepare(&data, dir.path());
        let server = Server::start(
            &data,
            Listen {
                https: Some(format!("127.0.0.1:{port}").parse().unwrap()),
                ..Listen::default()
            },
        )
        .await
        .unwrap();
        Owner {
            service: server.service().clone(),
            owner_root: data.join(onboarder::config::layout::OWNER_ROOT),
            dir,
            server,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn owner_root_der(&self) -> Vec<u8> {
        certs::files::read_cert(&self.owner_root).unwrap()
    }

    /// Trusts `maker`'s IDevIDs and vouchers.
    pub async fn import_maker(&self, maker: &Manufacturer, name: &str) {
        self.service
            .import_anchor(&onboarder::service::AnchorImport {
                pem: certs::files::cert_pem(maker.root_cert()),
                masa_pem: Some(certs::files::cert_pem(maker.masa_cert())),
                name: Some(name.into()),
            })
            .await
            .unwrap();
    }

    pub async fn import_voucher(&self, voucher: Vec<u8>) {
        let report = self
            .service
            .import_vouchers(&protocol::voucher::encode_bundle(&[voucher]))
            .await
            .unwrap();
        assert_eq!(report.imported, 1, "{report:?}");
    }

    /// The device's audit actions, oldest first.
    pub fn actions(&self, id: &DeviceId) -> Vec<String> {
        self.service
            .audit_entries(1, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.event.device.as_ref() == Some(id))
            .map(|e| e.event.action)
            .collect()
    }
}

/// Runs `scripts/NAME` with `env`; its output, asserting it succeeded.
pub fn script(name: &str, env: &[(&str, &Path)], vars: &[(&str, &str)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let mut command = Command::new("bash");
    command.arg(&script);
    for (k, v) in env {
        command.env(k, v);
    }
    for (k, v) in vars {
        command.env(k, v);
    }
    let out = command
        .output()
        .expect("bash, curl and openssl are installed by scripts/test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name}: {text}");
    text
}

/// Asserts that a TLS client presenting `cert` is refused in the handshake (curl exit 35 or
/// 56) when it posts to `url`.
pub fn refused_in_handshake(owner: &Owner, cert: &Path, key: &Path, url: &str) {
    let refused = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(&owner.owner_root)
        .args(["--cert", path(cert), "--key", path(key)])
        .args(["-H", "Content-Type: application/pkcs10", "--data", "AAAA"])
        .arg(url)
        .output()
        .unwrap();
    let code = refused.status.code();
    assert!(
        matches!(code, Some(35 | 56)),
        "{code:?}: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
