//! Benchmarks of the onboarder. `cargo bench -p benches` runs the criterion benchmarks in
//! `benches/`; this library holds what they share.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ceiling;
pub mod est;

use std::path::PathBuf;
use std::sync::Arc;

use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{KeyKind, unix_now};
use onboarder::config::Config;
use onboarder::server::{Listen, Server};

/// A manufacturer and a running onboarder on loopback, with its store in a temporary
/// directory.
pub struct Bench {
    /// Keeps the temporary directory alive.
    pub dir: tempfile::TempDir,
    /// The manufacturer.
    pub manufacturer: Arc<Manufacturer>,
    /// The running server.
    pub server: Server,
    /// The owner root, DER.
    pub owner_root: Vec<u8>,
    next: std::sync::atomic::AtomicUsize,
}

impl Bench {
    /// Starts everything.
    pub async fn start() -> Bench {
        let dir = tempfile::tempdir().expect("temporary directory");
        let manufacturer = Arc::new(
            Manufacturer::create(ManufacturerConfig::new("Bench Devices"), unix_now())
                .expect("manufacturer"),
        );
        let data = dir.path().join("onboarder");
        let mut config = Config::new("Bench Owner");
        config.quic_listen = "127.0.0.1:0".parse().expect("address");
        config.api_listen = "127.0.0.1:0".parse().expect("address");
        onboarder::pki::init(&data, &config, unix_now()).expect("init");
        let server = Server::start(&data, Listen::default())
            .await
            .expect("server");
        server
            .service()
            .import_anchor(&onboarder::operator::AnchorImport {
                pem: certs::files::cert_pem(manufacturer.root_cert()),
                masa_pem: Some(certs::files::cert_pem(manufacturer.masa_cert())),
                name: None,
            })
            .await
            .expect("anchor");
        let owner_root = certs::files::read_cert(&data.join(onboarder::config::layout::OWNER_ROOT))
            .expect("owner root");
        Bench {
            dir,
            manufacturer,
            server,
            owner_root,
            next: Default::default(),
        }
    }

    /// Mints `n` new devices, imports their vouchers, and returns their (identity, state)
    /// directories.
    pub async fn devices(&self, n: usize) -> Vec<(PathBuf, PathBuf)> {
        let now = unix_now();
        let first = self.next.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        let mut dirs = Vec::with_capacity(n);
        let mut vouchers = Vec::with_capacity(n);
        for i in first..first + n {
            let serial = format!("SN-B{i:07}");
            let root = self.dir.path().join("devices").join(&serial);
            let identity = self
                .manufacturer
                .mint(&serial, KeyKind::P256, now)
                .expect("mint");
            identity.save(&root.join("identity")).expect("save");
            std::fs::create_dir_all(root.join("state")).expect("state dir");
            vouchers.push(
                self.manufacturer
                    .voucher(&serial, &self.owner_root, now, now + 86_400)
                    .expect("voucher"),
            );
            dirs.push((root.join("identity"), root.join("state")));
        }
        self.server
            .service()
            .import_vouchers(&protocol::voucher::encode_bundle(&vouchers))
            .await
            .expect("import");
        dirs
    }
}
