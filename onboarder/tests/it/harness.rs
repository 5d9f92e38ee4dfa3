//! One harness for every integration test: a manufacturer, an onboarder with its real sled
//! store in a temporary directory, started in-process on loopback port 0, and helpers to mint
//! devices and drive real agents (or a hand-driven client for hostile inputs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{Birth, Identity, KeyKind};
use device_agent::transport::quic::{self, Session, Timeouts};
use device_agent::{Agent, AgentOptions, Backoff};
use onboarder::audit::AuditEntry;
use onboarder::config::Config;
use onboarder::core::{DeviceId, DeviceRecord, MakerId};
use onboarder::masa::FactoryMasa;
use onboarder::server::Server;
use protocol::message::{Request, Response};

pub const DAY: u64 = 86_400;

pub struct World {
    /// The one clock of the server, its TLS and every agent of this world (see
    /// [`World::advance_clock`]).
    pub clock: device_agent::Clock,
    pub dir: tempfile::TempDir,
    pub manufacturer: Arc<Manufacturer>,
    pub data: PathBuf,
    pub server: Server,
    pub owner_root: Vec<u8>,
    pub endpoint: quinn::Endpoint,
}

pub fn now() -> u64 {
    certs::unix_now()
}

impl World {
    pub async fn new() -> World {
        World::with_config(|_| {}).await
    }

    pub async fn with_config(edit: impl FnOnce(&mut Config)) -> World {
        let manufacturer =
            Arc::new(Manufacturer::create(ManufacturerConfig::new("Test Devices"), now()).unwrap());
        World::build(manufacturer, edit, false).await
    }

    /// A world whose onboarder asks the manufacturer's MASA for a nonced voucher at each
    /// voucher request.
    pub async fn with_masa() -> World {
        let manufacturer =
            Arc::new(Manufacturer::create(ManufacturerConfig::new("Test Devices"), now()).unwrap());
        World::build(manufacturer, |_| {}, true).await
    }

    /// Another owner of devices made by `manufacturer`.
    pub async fn for_manufacturer(manufacturer: Arc<Manufacturer>) -> World {
        World::build(manufacturer, |_| {}, false).await
    }

    /// Another owner of devices made by `manufacturer`, its configuration edited first.
    pub async fn for_manufacturer_with(
        manufacturer: Arc<Manufacturer>,
        edit: impl FnOnce(&mut Config),
    ) -> World {
        World::build(manufacturer, edit, false).await
    }

    async fn build(
        manufacturer: Arc<Manufacturer>,
        edit: impl FnOnce(&mut Config),
        masa: bool,
    ) -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("onboarder");
        let mut config = Config::new("Test Owner");
        config.quic_listen = "127.0.0.1:0".parse().unwrap();
        config.api_listen = "127.0.0.1:0".parse().unwrap();
        // Agents notice a dead connection within a second or two.
        config.policy.heartbeat_secs = 1;
        config.store = test_store();
        edit(&mut config);
        let https_chosen = config.https_listen;
        onboarder::pki::init(&data, &config, now()).unwrap();
        let clock = device_agent::Clock::system();
        let server_clock = clock.clone();
        let server_clock: onboarder::service::Clock = Arc::new(move || server_clock.now());
        let masa = masa.then(|| {
            let masa = FactoryMasa::new(manufacturer.clone(), server_clock.clone()).unwrap();
            Arc::new(masa) as Arc<dyn onboarder::masa::Masa>
        });
        let server = Server::start_with(
            &data,
            onboarder::server::Options {
                clock: Some(server_clock),
                masa,
                // HTTPS on a port of its own unless the test chose one (certificates and offers
                // name it).
                listen: onboarder::server::Listen {
                    https: https_chosen
                        .is_none()
                        .then(|| "127.0.0.1:0".parse().unwrap()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let owner_root =
            certs::files::read_cert(&data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
        let endpoint = quic::endpoint_for(server.quic_addr()).unwrap();
        World {
            clock,
            dir,
            manufacturer,
            data,
            server,
            owner_root,
            endpoint,
        }
    }

    /// Mints a device of this world's manufacturer.
    pub fn device(&self, serial: &str) -> Device {
        Device::mint(&self.manufacturer, self.dir.path(), serial)
    }

    /// Imports the manufacturer anchor and a voucher (valid `days`) for each serial.
    pub async fn expect(&self, serials: &[&str], days: u64) {
        self.expect_from(&self.manufacturer, serials, days).await;
    }

    /// Imports `m`'s anchor (with its voucher signer) and a voucher of `m` for each serial.
    pub async fn expect_from(&self, m: &Manufacturer, serials: &[&str], days: u64) {
        let service = self.server.service();
        service.import_anchor(&anchor_import(m)).await.unwrap();
        let vouchers: Vec<Vec<u8>> = serials
            .iter()
            .map(|s| {
                m.voucher(s, &self.owner_root, now(), now() + days * DAY)
                    .unwrap()
            })
            .collect();
        let report = service
            .import_vouchers(&protocol::voucher::encode_bundle(&vouchers))
            .await
            .unwrap();
        assert!(report.rejected.is_empty(), "{report:?}");
    }

    /// The id of this world's manufacturer's device `serial`.
    pub fn id(&self, serial: &str) -> DeviceId {
        id_of(&self.manufacturer, serial)
    }

    /// The agent of `device`, on this world's clock.
    pub fn agent(&self, device: &Device) -> Agent {
        device.agent_with(
            self.server.quic_addr(),
            &self.endpoint,
            AgentOptions {
                clock: self.clock.clone(),
                ..fast_options()
            },
        )
    }

    /// The record of this world's manufacturer's device `serial`.
    pub fn record(&self, serial: &str) -> Option<DeviceRecord> {
        self.record_of(&self.id(serial))
    }

    /// Checks that the tallies and the device index the store moved with every write (what
    /// the overview, `stats` and searches read) agree with what the records themselves say.
    pub fn assert_tallies_agree(&self) {
        let service = self.server.service();
        let mut counted = std::collections::BTreeMap::new();
        let mut keys = std::collections::BTreeMap::new();
        for record in service.devices(None, 100_000).unwrap() {
            let mut names = onboarder::core::query::terms_of(&record);
            names.extend(
                record
                    .certificates
                    .iter()
                    .map(|c| format!("certificates/{}", c.status.name())),
            );
            if let Some(at) = onboarder::core::query::expiry(&record) {
                names.push(format!("expires-on/{:08}", at / 86_400));
            }
            for name in names {
                *counted.entry(name).or_insert(0i64) += 1;
            }
            for key in onboarder::core::query::index_keys(&record) {
                keys.insert(key, record.id.clone());
            }
        }
        let mut tallies = service.store().tallies().unwrap();
        tallies.retain(|_, n| *n != 0);
        assert_eq!(tallies, counted);
        let index: std::collections::BTreeMap<_, _> = service
            .store()
            .index("", None, 1_000_000)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(index, keys);
    }

    /// The record of device `id`.
    pub fn record_of(&self, id: &DeviceId) -> Option<DeviceRecord> {
        self.server.service().store().device(id).unwrap()
    }

    pub fn audit(&self) -> Vec<AuditEntry> {
        self.server.service().store().audit(1, 1_000_000).unwrap()
    }

    /// Audit actions recorded for this world's manufacturer's device `serial`, in order.
    pub fn actions(&self, serial: &str) -> Vec<String> {
        self.actions_of(&self.id(serial))
    }

    /// Audit actions recorded for device `id`, in order.
    pub fn actions_of(&self, id: &DeviceId) -> Vec<String> {
        self.audit()
            .into_iter()
            .filter(|e| e.event.device.as_ref() == Some(id))
            .map(|e| e.event.action)
            .collect()
    }

    /// A hand-driven LDevID session (no hello), with the credential the device holds.
    pub async fn ldevid_session(&self, device: &Device) -> Session {
        use device_agent::platform::KeyStore;
        let state: device_agent::machine::AgentState = {
            use device_agent::platform::StateStore;
            device_agent::platform::files::FileStateStore::new(&device.state_dir)
                .load()
                .unwrap()
                .unwrap()
        };
        let keys = device_agent::platform::files::FileKeyStore::new(
            &device.identity_dir,
            &device.state_dir,
            KeyKind::P256,
        );
        let chain = vec![state.ldevid.clone().unwrap(), state.chain[0].to_vec()];
        let config = quic::operational_config(
            &chain,
            keys.ldevid_key().unwrap().unwrap(),
            &state.roots(),
            Timeouts::default(),
            &self.clock,
        )
        .unwrap();
        let name = state.config.unwrap().server_name;
        Session::connect(&self.endpoint, config, self.server.quic_addr(), Some(&name))
            .await
            .unwrap()
    }

    /// Writes `job` onto `serial`'s record straight into the store, past every check of the
    /// service, as a compromised server could.
    pub async fn plant_job(&self, serial: &str, job: onboarder::core::record::FirmwareJob) {
        let mut record = self.record(serial).unwrap();
        let expect = onboarder::store::Expect::Version(record.version);
        record.firmware_job = Some(job);
        self.server
            .service()
            .store()
            .commit(onboarder::store::Change {
                devices: vec![onboarder::store::DeviceWrite { record, expect }],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Moves the clock of the server, its TLS and this world's agents `secs` seconds on.
    pub fn advance_clock(&self, secs: u64) {
        self.clock.advance(secs);
    }

    /// A bare QUIC connection authenticated with the device's IDevID, for hand-built clients
    /// that write streams byte by byte.
    pub async fn raw_connection(&self, device: &Device) -> quinn::Connection {
        self.try_raw_connection(device).await.unwrap()
    }

    /// A bare IDevID connection, or why the server would not have it.
    pub async fn try_raw_connection(
        &self,
        device: &Device,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        self.endpoint
            .connect_with(
                idevid_config(device),
                self.server.quic_addr(),
                "onboarder.invalid",
            )
            .unwrap()
            .await
    }

    /// A hand-driven IDevID session for hostile inputs.
    pub async fn raw_session(&self, device: &Device) -> Session {
        Session::connect(
            &self.endpoint,
            idevid_config(device),
            self.server.quic_addr(),
            None,
        )
        .await
        .unwrap()
    }
}

/// The onboarding TLS configuration of `device` (its IDevID).
pub fn idevid_config(device: &Device) -> quinn::ClientConfig {
    let birth = device.birth();
    let key: Arc<dyn device_agent::platform::DeviceKey> = Arc::new(birth.key);
    quic::provisional_config(
        std::slice::from_ref(&birth.identity.idevid),
        key,
        Timeouts::default(),
    )
    .unwrap()
}

/// What an owner leaves in a device's state directory (the firmware slots are not the owner's).
const OWNER_FILES: [&str; 7] = [
    device_agent::platform::layout::STATE,
    device_agent::platform::layout::LDEVID_KEY,
    device_agent::platform::layout::PENDING_KEY,
    device_agent::platform::layout::LDEVID_CERT,
    device_agent::platform::layout::CHAIN,
    device_agent::platform::layout::NETWORK,
    "data",
];

/// A device on disk: its factory identity and its agent state directory.
pub struct Device {
    serial: String,
    pub identity_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Device {
    pub fn mint(m: &Manufacturer, root: &Path, serial: &str) -> Device {
        let dir = root.join("devices").join(serial);
        let identity_dir = dir.join("identity");
        let state_dir = dir.join("state");
        m.mint(serial, KeyKind::P256, now())
            .unwrap()
            .save(&identity_dir)
            .unwrap();
        std::fs::create_dir_all(&state_dir).unwrap();
        Device {
            serial: serial.to_string(),
            identity_dir,
            state_dir,
        }
    }

    pub fn at(serial: &str, identity_dir: PathBuf, state_dir: PathBuf) -> Device {
        Device {
            serial: serial.to_string(),
            identity_dir,
            state_dir,
        }
    }

    pub fn serial(&self) -> String {
        self.serial.clone()
    }

    /// The device's certificates.
    pub fn identity(&self) -> Identity {
        Identity::load(&self.identity_dir, now()).unwrap()
    }

    /// The device's certificates and its IDevID key.
    pub fn birth(&self) -> Birth {
        Birth::load(&self.identity_dir, now()).unwrap()
    }

    pub fn agent(&self, server: std::net::SocketAddr, endpoint: &quinn::Endpoint) -> Agent {
        self.agent_with(server, endpoint, fast_options())
    }

    pub fn agent_with(
        &self,
        server: std::net::SocketAddr,
        endpoint: &quinn::Endpoint,
        options: AgentOptions,
    ) -> Agent {
        Agent::with_files(
            &self.identity_dir,
            &self.state_dir,
            server,
            endpoint.clone(),
            options,
        )
        .unwrap()
    }

    /// No trace of an owner: no agent state, no LDevID key (current or pending), certificate
    /// or chain, no network credentials and no owner data.
    pub fn is_factory_fresh(&self) -> bool {
        self.owner_files().is_empty()
    }

    /// The files of an owner this device still holds.
    pub fn owner_files(&self) -> Vec<&'static str> {
        OWNER_FILES
            .into_iter()
            .filter(|name| self.state_dir.join(name).exists())
            .collect()
    }
}

/// The store the battery runs on: with `ONBOARDER_TEST_BACKEND=postgres`, a fresh schema of
/// the database `ONBOARDER_TEST_POSTGRES` names (`scripts/test` runs the suite that way too);
/// else the embedded store.
pub fn test_store() -> Option<String> {
    match std::env::var("ONBOARDER_TEST_BACKEND").as_deref() {
        Ok("postgres") => {
            let base = std::env::var("ONBOARDER_TEST_POSTGRES")
                .expect("ONBOARDER_TEST_BACKEND=postgres needs ONBOARDER_TEST_POSTGRES");
            Some(onboarder::store::postgres::fresh_schema(&base).unwrap())
        }
        Ok("sled") | Err(_) => None,
        Ok(other) => panic!("ONBOARDER_TEST_BACKEND={other}: sled or postgres"),
    }
}

/// Agent settings for tests: quick retries and quick detection of a dead server.
pub fn fast_options() -> AgentOptions {
    AgentOptions {
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            idle: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            coap_ack: Duration::from_millis(500),
        },
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            busy: Duration::from_secs(1),
            refused: Duration::from_secs(5),
        },
        ..AgentOptions::default()
    }
}

/// The wire error code of a response, or a panic naming what came instead.
pub fn code_of(response: &Response) -> protocol::message::ErrorCode {
    match response {
        Response::Error(e) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A signed voucher request as the real agent would build it, for `session`.
pub fn voucher_request(birth: &Birth, session: &Session) -> Request {
    voucher_request_for(
        birth,
        &session.server_chain()[0],
        &session.binding().unwrap(),
    )
}

/// A signed voucher request naming `registrar`, bound to `binding`.
pub fn voucher_request_for(birth: &Birth, registrar: &[u8], binding: &[u8]) -> Request {
    let req = device_agent::machine::onboarding::voucher_request(
        &birth.identity,
        &[7; 16],
        registrar,
        binding,
        now(),
    );
    Request::VoucherRequest(req.sign(&birth.key).unwrap())
}

/// Tells the server, over a hand-driven session, that the device accepts its voucher (what the
/// real agent does before it sends its CSR).
pub async fn accept_voucher(session: &Session) {
    let status = Request::VoucherStatus(protocol::message::Status {
        ok: true,
        reason: None,
    });
    assert!(matches!(
        session.call(&status).await.unwrap(),
        Response::Ack
    ));
}

/// An agent running its `run` loop in the background.
pub struct Running {
    pub agent: std::sync::Arc<Agent>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(agent: Agent) -> Running {
        let agent = std::sync::Arc::new(agent);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let runner = agent.clone();
        let task = tokio::spawn(async move {
            runner
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        });
        Running { agent, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Every file under `dir`, recursively, with its bytes. A file that vanishes while it is
/// walked is left out: a stopped agent's last state write may still be renaming its temporary
/// file on the blocking pool, and what is gone is not on the disk.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            match std::fs::read(&path) {
                Ok(bytes) => out.push((path, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
    out
}

/// A TCP port free now, for a listener started later (certificates or offers name it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The code of the server's refusal an onboarding ended with.
pub fn refused(
    result: Result<device_agent::machine::AgentState, device_agent::AgentError>,
) -> protocol::message::ErrorCode {
    match result {
        Err(device_agent::AgentError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits (polling) until `check` holds, for at most `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The public key of the device's current LDevID, as stored on the device.
pub fn device_key(device: &Device) -> protocol::keys::PublicKey {
    let cert = certs::files::read_cert(&device.state_dir.join("ldevid.pem")).unwrap();
    certs::CertInfo::parse(&cert).unwrap().public_key
}

/// The maker id of `m`'s devices.
pub fn maker_of(m: &Manufacturer) -> MakerId {
    MakerId::of_spki(&certs::CertInfo::parse(m.root_cert()).unwrap().spki_der)
}

/// The id of `m`'s device `serial`.
pub fn id_of(m: &Manufacturer, serial: &str) -> DeviceId {
    DeviceId::new(maker_of(m), serial).unwrap()
}

/// What an operator imports to trust `m`: its root and its voucher signer.
pub fn anchor_import(m: &Manufacturer) -> onboarder::operator::AnchorImport {
    onboarder::operator::AnchorImport {
        pem: certs::files::cert_pem(m.root_cert()),
        masa_pem: Some(certs::files::cert_pem(m.masa_cert())),
        name: None,
    }
}

/// The "factory fresh" check itself: any one owner file is enough to fail it.
#[test]
fn factory_fresh_notices_every_owner_file() {
    let m = Manufacturer::create(ManufacturerConfig::new("Test Devices"), now()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let device = Device::mint(&m, dir.path(), "SN-FRESH");
    assert!(device.is_factory_fresh());
    for name in OWNER_FILES {
        let path = device.state_dir.join(name);
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(device.owner_files(), [name]);
        std::fs::remove_file(&path).unwrap();
    }
    assert!(device.is_factory_fresh());
}
