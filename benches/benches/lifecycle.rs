//! The other hot operations: artefact verification, the codec of every message, a durable
//! store write, and the ceiling an onboarding is compared with (one mutual-TLS QUIC handshake,
//! both sides, plus the crypto of one onboarding).

use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::factory::{FirmwareRelease, Manufacturer, ManufacturerConfig};
use certs::{KeyKind, KeyPair, unix_now};
use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use criterion::{Criterion, criterion_group, criterion_main};
use onboarder::audit::AuditEvent;
use onboarder::core::DeviceRecord;
use onboarder::store::seal::{RecordCodec, SealingKey};
use onboarder::store::sled::SledStore;
use onboarder::store::{Change, DeviceWrite, Expect, Store};
use protocol::attestation::{WipeAttestation, WipeMethod, WipedTarget};
use protocol::manifest::Manifest;
use protocol::message::{
    self, Command, CommandReply, DeviceConfig, Enrollment, ErrorCode, FirmwareReport,
    FirmwareState, Hello, NetworkProfile, Request, Response, Status, Welcome, WireError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

fn artefacts(c: &mut Criterion) {
    let now = unix_now();
    let m = Manufacturer::create(ManufacturerConfig::new("Bench"), now).unwrap();
    let image = vec![7u8; 1024 * 1024];
    let manifest = m
        .sign_firmware(&image, &FirmwareRelease::new("1.0.1", 2), now)
        .unwrap();
    let key = m.firmware_key().public_key();
    c.bench_function("manifest verify", |b| {
        b.iter(|| Manifest::open(&manifest, &key).unwrap())
    });
    c.bench_function("image SHA-256 (1 MiB)", |b| {
        b.iter(|| protocol::manifest::sha256(&image))
    });

    let device = KeyPair::generate(KeyKind::P256).unwrap();
    let attestation = WipeAttestation {
        serial: "SN-1".into(),
        manufacturer: "Bench".into(),
        model: "sensor-1".into(),
        firmware_version: "1.0.0".into(),
        agent_version: "0.1.0".into(),
        nonce: vec![1; 32],
        method: WipeMethod::PurgeCryptographicErase,
        targets: vec![WipedTarget {
            target: "application-data".into(),
            bytes: 4096,
            method: WipeMethod::Clear,
            verification: "read-back".into(),
            verified: true,
        }],
        started_on: now,
        finished_on: now,
        exported: None,
    }
    .sign(&device)
    .unwrap();
    let device_key = device.public_key();
    c.bench_function("wipe attestation verify", |b| {
        b.iter(|| WipeAttestation::open(&attestation, &device_key).unwrap())
    });
}

/// Encode + decode of one message in its versioned envelope, as each side does per message.
fn roundtrip<T: Serialize + DeserializeOwned>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    msg: T,
) {
    group.bench_function(name, |b| {
        b.iter(|| message::decode::<T>(&message::encode(&msg), message::MAX_RESPONSE).unwrap())
    });
}

fn codecs(c: &mut Criterion) {
    let digest = vec![0xab; 32];
    let der = || ByteBuf::from(vec![0x30; 500]);
    let mut group = c.benchmark_group("CBOR");
    // Sizes are those of the real artefacts: a voucher request or voucher is ~700 bytes, a
    // P-256 CSR ~400, a certificate ~500.
    roundtrip(
        &mut group,
        "request: voucher request",
        Request::VoucherRequest(vec![0xd2; 700]),
    );
    let ok = Status {
        ok: true,
        reason: None,
    };
    roundtrip(
        &mut group,
        "request: voucher status",
        Request::VoucherStatus(ok.clone()),
    );
    roundtrip(
        &mut group,
        "request: enroll",
        Request::enroll(vec![0x30; 400]),
    );
    roundtrip(
        &mut group,
        "request: enroll status",
        Request::EnrollStatus(ok),
    );
    let hello = Hello {
        agent_version: "0.1.0".into(),
        firmware_version: "1.0.0".into(),
        firmware_sequence: 1,
        class_id: "sensor-1".into(),
        hardware: device_agent::hardware_facts(),
        anchors: None,
    };
    roundtrip(&mut group, "request: hello", Request::Hello(hello));
    roundtrip(
        &mut group,
        "request: reenroll",
        Request::Reenroll {
            csr: vec![0x30; 400],
        },
    );
    roundtrip(
        &mut group,
        "request: firmware chunk",
        Request::FirmwareChunk {
            digest: digest.clone(),
            offset: 1 << 20,
            length: message::MAX_CHUNK,
        },
    );
    roundtrip(
        &mut group,
        "request: firmware status",
        Request::FirmwareStatus(FirmwareReport::progress(
            &digest,
            FirmwareState::Healthy,
            1 << 20,
        )),
    );
    roundtrip(
        &mut group,
        "request: wipe attestation",
        Request::WipeAttestation(vec![0xd2; 900]),
    );
    roundtrip(
        &mut group,
        "response: voucher",
        Response::Voucher(vec![0xd2; 700]),
    );
    roundtrip(
        &mut group,
        "response: enrolled",
        Response::Enrolled(Box::new(Enrollment {
            certificate: vec![0x30; 500],
            chain: vec![der(), der()],
            network: NetworkProfile::EapTls {
                ssid: "plant-floor".into(),
                identity: "SN-000001".into(),
                ca_chain: vec![der()],
            },
            config: DeviceConfig {
                server_name: "onboarder.example".into(),
                heartbeat_secs: 30,
            },
        })),
    );
    roundtrip(&mut group, "response: ack", Response::Ack);
    roundtrip(
        &mut group,
        "response: welcome (one command)",
        Response::Welcome(Welcome {
            commands: vec![Command::Rotate],
        }),
    );
    roundtrip(
        &mut group,
        "response: firmware chunk (128 KiB)",
        Response::Chunk(vec![1; 128 * 1024]),
    );
    roundtrip(
        &mut group,
        "response: error",
        Response::Error(WireError {
            code: ErrorCode::WrongState,
            message: "SN-000001 is active".into(),
        }),
    );
    roundtrip(&mut group, "command: ping", Command::Ping { nonce: 7 });
    roundtrip(&mut group, "command: rotate", Command::Rotate);
    roundtrip(
        &mut group,
        "command: update",
        Command::Update {
            manifest: vec![0xd2; 400],
            url: None,
        },
    );
    roundtrip(
        &mut group,
        "command: decommission",
        Command::Decommission {
            nonce: vec![1; 32],
            method: WipeMethod::Clear,
            export_to: None,
        },
    );
    roundtrip(
        &mut group,
        "command: trust anchors",
        Command::TrustAnchors {
            anchors: vec![der()],
        },
    );
    roundtrip(
        &mut group,
        "command reply: pong",
        CommandReply::Pong { nonce: 7 },
    );
    roundtrip(
        &mut group,
        "command reply: accepted",
        CommandReply::Accepted,
    );
    let mut record = DeviceRecord::expected(device_id(1), vec![0xd2; 900], Some(1), 1);
    record.network = Some(protocol::message::NetworkProfile::Wifi {
        ssid: "iot".into(),
        psk: "0123456789abcdef0123456789abcdef".into(),
    });
    let codec = RecordCodec::new(SealingKey::from_bytes(&[7; 32]).unwrap());
    group.bench_function(
        "encode + decode a device record (network credentials sealed)",
        |b| {
            b.iter(|| {
                let bytes = codec.encode(&record).unwrap();
                codec.decode(b"d", &bytes).unwrap()
            })
        },
    );
    group.finish();
}

fn device_id(n: u64) -> onboarder::core::DeviceId {
    onboarder::core::DeviceId::new(
        onboarder::core::MakerId::of_spki(b"bench"),
        &format!("SN-{n:09}"),
    )
    .unwrap()
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async {
        SledStore::open(dir.path(), SealingKey::from_bytes(&[7; 32]).unwrap()).unwrap()
    });
    let mut n = 0u64;
    let mut group = c.benchmark_group("store");
    group.bench_function("state change + audit entry, flushed (one writer)", |b| {
        b.iter(|| {
            n += 1;
            let record = DeviceRecord::expected(device_id(n), vec![0xd2; 900], None, n);
            rt.block_on(store.commit(Change {
                devices: vec![DeviceWrite {
                    record,
                    expect: Expect::Absent,
                }],
                audit: vec![AuditEvent::operator(None, "bench", "", n)],
                ..Change::default()
            }))
            .unwrap()
        })
    });
    group.bench_function(
        "64 concurrent state changes (group commit), per change",
        |b| {
            b.iter_custom(|iters| {
                let rounds = iters.div_ceil(64);
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..rounds {
                        let commits = (0..64).map(|_| {
                            n += 1;
                            let record =
                                DeviceRecord::expected(device_id(n), vec![0xd2; 900], None, n);
                            store.commit(Change {
                                devices: vec![DeviceWrite {
                                    record,
                                    expect: Expect::Absent,
                                }],
                                audit: vec![AuditEvent::operator(None, "bench", "", n)],
                                ..Change::default()
                            })
                        });
                        let tasks: Vec<_> = commits.map(tokio::spawn).collect();
                        for t in tasks {
                            t.await.unwrap().unwrap();
                        }
                    }
                    // Time per change, scaled to the `iters` criterion asked for.
                    start.elapsed().mul_f64(iters as f64 / (rounds * 64) as f64)
                })
            })
        },
    );
    group.finish();
}

/// The ceiling: what one onboarding cannot cost less than on this machine.
fn ceiling(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bench = rt.block_on(benches::Bench::start());
    let device = bench
        .manufacturer
        .mint("SN-CEILING", KeyKind::P256, unix_now())
        .unwrap();
    let key: Arc<dyn device_agent::platform::DeviceKey> =
        Arc::new(KeyPair::from_pkcs8_der(device.key.pkcs8_der()).unwrap());
    let endpoint = {
        let _guard = rt.enter();
        device_agent::transport::quic::endpoint_for(bench.server.quic_addr()).unwrap()
    };
    let config = device_agent::transport::quic::provisional_config(
        std::slice::from_ref(&device.identity.idevid),
        key,
        Default::default(),
    )
    .unwrap();
    let mut group = c.benchmark_group("ceiling");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("mutual-TLS QUIC handshake, both sides", |b| {
        b.iter(|| {
            rt.block_on(async {
                let s = device_agent::transport::quic::Session::connect(
                    &endpoint,
                    config.clone(),
                    bench.server.quic_addr(),
                    None,
                )
                .await
                .unwrap();
                // The first stream shows the server accepted the certificate.
                s.binding().unwrap();
                s.close();
            })
        })
    });
    // The crypto of one onboarding beyond the handshake, both sides (benches::ceiling).
    let crypto = benches::ceiling::LifecycleCrypto::new(&bench.manufacturer).unwrap();
    group.bench_function("crypto of one onboarding, both sides", |b| {
        b.iter(|| {
            crypto.device_voucher().unwrap();
            crypto.server_voucher().unwrap();
            crypto.device_enroll().unwrap();
            crypto.server_enroll().unwrap();
        })
    });
    group.finish();
}

/// The console's reads at 100,000 devices: the overview's counts come from the store's tallies
/// (one read), a page of devices from a range of keys; beside them, what counting by reading
/// every record (the overview before the tallies) costs.
fn console(c: &mut Criterion) {
    const DEVICES: u64 = 100_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async {
        SledStore::open(dir.path(), SealingKey::from_bytes(&[7; 32]).unwrap()).unwrap()
    });
    // Created through the store, 1,000 per write, each write moving the tallies as the
    // service's loop would.
    for chunk in 0..DEVICES / 1000 {
        let devices: Vec<DeviceWrite> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|n| DeviceWrite {
                record: DeviceRecord::expected(device_id(n), vec![0xd2; 900], None, n),
                expect: Expect::Absent,
            })
            .collect();
        rt.block_on(store.commit(Change {
            devices,
            tallies: vec![("state/expected".into(), 1000)],
            ..Change::default()
        }))
        .unwrap();
    }
    let middle = device_id(DEVICES / 2);
    let mut group = c.benchmark_group("console, 100,000 devices");
    group.bench_function("overview: devices per state (tallies)", |b| {
        b.iter(|| {
            let tallies = store.tallies().unwrap();
            assert_eq!(tallies.get("state/expected"), Some(&(DEVICES as i64)));
        })
    });
    group.bench_function("a page of 50 devices after a serial", |b| {
        b.iter(|| assert_eq!(store.devices(Some(&middle), 50).unwrap().len(), 50))
    });
    group.sample_size(10);
    group.bench_function(
        "counting by reading every record (before the tallies)",
        |b| {
            b.iter(|| {
                let (mut after, mut n) = (None, 0u64);
                loop {
                    let page = store.devices(after.as_ref(), 1000).unwrap();
                    let Some(last) = page.last() else { break };
                    after = Some(last.id.clone());
                    n += page.len() as u64;
                }
                assert_eq!(n, DEVICES);
            })
        },
    );
    group.finish();
}

/// A device of the search bench's fleet: mostly active, four classes, three firmware versions,
/// twenty sites, 1% tagged `pilot`, certificates expiring over a year.
fn inventory_device(n: u64, base: u64) -> DeviceRecord {
    use onboarder::core::{CertStatus, DeviceState, IssuedCert};
    let mut r = DeviceRecord::expected(device_id(n), vec![0xd2; 900], None, n);
    r.state = match n % 20 {
        0 => DeviceState::Expected,
        1 => DeviceState::Decommissioned,
        _ => DeviceState::Active,
    };
    r.class_id = Some(format!("thermo-v{}", n % 4));
    r.firmware_version = Some(format!("1.{}.0", n % 3));
    r.attributes
        .insert("site".into(), format!("plant-{}", n % 20));
    if n.is_multiple_of(100) {
        r.tags.insert("pilot".into());
    }
    r.certificates.push(IssuedCert {
        serial: format!("{n:016x}"),
        der: vec![0x30; 600],
        public_key: vec![4; 65],
        issuer: vec![1; 20],
        issued_at: base,
        not_after: base + (n % 365) * 86_400,
        status: CertStatus::Active,
    });
    r
}

/// The dashboard's reads at 100,000 devices written through the store with their tallies and
/// index entries: the overview from the tallies, and searches that walk the device index (a
/// page of 50 each), from the rarest term to one that finds nothing and stops at the scan
/// budget.
///
/// With `ONBOARDER_BENCH_POSTGRES` set to the URL of an empty database, the same runs on the
/// PostgreSQL store too (`inventory on PostgreSQL`).
fn inventory(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = || SealingKey::from_bytes(&[7; 32]).unwrap();
    let sled: Box<dyn Store> =
        rt.block_on(async { Box::new(SledStore::open(dir.path(), key()).unwrap()) });
    inventory_on(c, &rt, "inventory, 100,000 devices", sled.as_ref());
    if let Ok(url) = std::env::var("ONBOARDER_BENCH_POSTGRES") {
        let pg: Box<dyn Store> = rt.block_on(async {
            Box::new(onboarder::store::postgres::PgStore::open(&url, key()).unwrap())
        });
        inventory_on(
            c,
            &rt,
            "inventory on PostgreSQL, 100,000 devices",
            pg.as_ref(),
        );
    }
}

fn inventory_on(c: &mut Criterion, rt: &tokio::runtime::Runtime, title: &str, store: &dyn Store) {
    use onboarder::core::DeviceState;
    use onboarder::core::query::DeviceQuery;
    const DEVICES: u64 = 100_000;
    let base = unix_now();
    for chunk in 0..DEVICES / 1000 {
        let records: Vec<DeviceRecord> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|n| inventory_device(n, base))
            .collect();
        let (tallies, index) = onboarder::store::derive_all(&records);
        let devices = records
            .into_iter()
            .map(|record| DeviceWrite {
                record,
                expect: Expect::Absent,
            })
            .collect();
        rt.block_on(store.commit(Change {
            devices,
            tallies: tallies.into_iter().collect(),
            index: index.into_iter().map(|(k, id)| (k, Some(id))).collect(),
            ..Change::default()
        }))
        .unwrap();
    }
    let mut group = c.benchmark_group(title);
    group.bench_function("overview: tallies, certificates expiring in 30 days", |b| {
        b.iter(|| {
            let tallies = store.tallies().unwrap();
            let today = base / 86_400;
            let soon: i64 = (today..today + 30)
                .filter_map(|d| tallies.get(&onboarder::store::expiry_tally(d)))
                .sum();
            assert!(soon > 0);
            assert_eq!(tallies.get("state/active"), Some(&90_000));
        })
    });
    let cases = [
        (
            "search: serial prefix",
            DeviceQuery {
                serial: Some("SN-000050".into()),
                ..DeviceQuery::default()
            },
            50,
        ),
        (
            "search: state and class",
            DeviceQuery {
                state: Some(DeviceState::Active),
                class: Some("thermo-v1".into()),
                ..DeviceQuery::default()
            },
            50,
        ),
        (
            "search: tag and attribute (the tag is rarest)",
            DeviceQuery {
                tags: vec!["pilot".into()],
                attributes: [("site".to_string(), "plant-0".to_string())].into(),
                ..DeviceQuery::default()
            },
            50,
        ),
        (
            "search: firmware, expiring within 10 days (1 in 37 on the walk match)",
            DeviceQuery {
                firmware: Some("1.1.0".into()),
                expires_before: Some(base + 10 * 86_400),
                ..DeviceQuery::default()
            },
            // What the walk meets within its budget: firmware 1.1.0 is n = 1 mod 3 (walked in
            // serial order), expiring within 10 days is n mod 365 < 10.
            (0..DEVICES)
                .filter(|n| n % 3 == 1)
                .take(onboarder::service::SCAN_BUDGET)
                .filter(|n| n % 365 < 10)
                .count()
                .min(50),
        ),
        (
            "search: nothing matches (stops at the scan budget)",
            DeviceQuery {
                class: Some("thermo-v1".into()),
                attributes: [("site".to_string(), "plant-2".to_string())].into(),
                ..DeviceQuery::default()
            },
            0,
        ),
    ];
    for (name, query, found) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let page = onboarder::service::search(store, &query, None, 50).unwrap();
                assert_eq!(page.devices.len(), found, "{name}");
            })
        });
    }
    group.finish();
}

/// What a public label request costs besides the store reads: the label made from the record,
/// 20 releases of the class and 200 VEX statements, and its QR code as PNG and SVG.
fn transparency(c: &mut Criterion) {
    use onboarder::core::label::{self, LabelFacts, LabelField};
    use onboarder::core::release::Release;
    use onboarder::core::vex::{Statement, VexStatus};
    let releases: Vec<Release> = (1..=20u64)
        .map(|n| Release {
            digest: vec![n as u8; 32],
            manifest: Vec::new(),
            vendor_id: "acme".into(),
            class_id: "sensor-1".into(),
            sequence: n,
            version: format!("1.{n}.0"),
            size: 1 << 20,
            uploaded_at: 0,
            sbom: None,
        })
        .collect();
    let statements: Vec<Statement> = (0..200u64)
        .map(|n| Statement {
            vulnerability: format!("CVE-2026-{:04}", n / 10),
            release: certs::inspect::hex(&[(n % 20 + 1) as u8; 32]),
            status: if n % 20 < 10 {
                VexStatus::Affected
            } else {
                VexStatus::Fixed
            },
            detail: None,
            document: "00".repeat(32),
        })
        .collect();
    let mut record = DeviceRecord::expected(device_id(1), vec![0xd2; 900], None, 0);
    record.class_id = Some("sensor-1".into());
    record.firmware_version = Some("1.5.0".into());
    record.firmware_sequence = 5;
    let show = LabelField::ALL.into_iter().collect();
    let url =
        "https://onboarder.example:8443/label/OWNjZmU0ZTQ2YjA1YzQ3Mi9TTi0wMDAwMDE.AbCdEfGhIjKlMnOp";
    let mut group = c.benchmark_group("transparency");
    group.bench_function("label: 20 releases, 200 VEX statements", |b| {
        b.iter(|| {
            label::label(
                LabelFacts {
                    record: &record,
                    manufacturer: Some("Acme".into()),
                    releases: &releases,
                    statements: &statements,
                    support: None,
                    url: url.into(),
                    now: 1,
                },
                &show,
            )
        })
    });
    group.bench_function("label QR code, PNG", |b| {
        b.iter(|| onboarder::operator::qr::png(url).unwrap())
    });
    group.bench_function("label QR code, SVG", |b| {
        b.iter(|| onboarder::operator::qr::svg(url).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    artefacts,
    codecs,
    store,
    ceiling,
    console,
    inventory,
    transparency
);
criterion_main!(benches);
