//! Signed firmware: campaigns end to end, every refusal on the device, resumed downloads, and
//! a release that fails its health check.

use std::sync::atomic::Ordering;

use certs::factory::FirmwareRelease;
use device_agent::platform::FirmwareSlots;
use device_agent::platform::slots::{FileSlots, SELFTEST_FAIL};
use onboarder::core::campaign::CampaignOrder;
use onboarder::core::campaign::CampaignState;
use onboarder::core::record::{FirmwareJob, JobState};
use onboarder::service::OperatorError;
use onboarder::service::{CampaignSpec, Target};
use protocol::manifest::{FirmwareRefusal, ManifestError};
use protocol::message::Command;

use crate::harness::*;

pub(crate) fn image(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The world's manufacturer signs `img` as `version` and `sequence`; the owner uploads the
/// release. Its signed manifest and the release.
pub(crate) async fn publish(
    world: &World,
    img: &[u8],
    version: &str,
    sequence: u64,
) -> (Vec<u8>, onboarder::core::release::Release) {
    let manifest = world
        .manufacturer
        .sign_firmware(img, &FirmwareRelease::new(version, sequence), now())
        .unwrap();
    let r = world
        .server
        .service()
        .upload_release(&manifest, img, None)
        .await
        .unwrap();
    (manifest, r)
}

pub(crate) async fn trust_firmware(world: &World) {
    world
        .server
        .service()
        .import_firmware_key(
            &world.manufacturer.firmware_key().public_pem(),
            &world.manufacturer.config.name,
        )
        .await
        .unwrap();
}

/// Onboarded devices with their agents running.
pub(crate) async fn fleet(world: &World, serials: &[&str]) -> (Vec<Device>, Vec<Running>) {
    let devices: Vec<Device> = serials.iter().map(|s| world.device(s)).collect();
    world.expect(serials, 30).await;
    let running: Vec<Running> = devices
        .iter()
        .map(|d| Running::start(world.agent(d)))
        .collect();
    eventually(30, "the fleet connected", || {
        world.server.sessions().len() == serials.len()
    })
    .await;
    (devices, running)
}

pub(crate) async fn run_campaign(
    world: &World,
    digest: &str,
    serials: &[&str],
    waves: Vec<u8>,
    threshold: u8,
) -> String {
    run_campaign_over(world, digest, serials, waves, threshold, false).await
}

async fn run_campaign_over(
    world: &World,
    digest: &str,
    serials: &[&str],
    waves: Vec<u8>,
    threshold: u8,
    over_https: bool,
) -> String {
    let service = world.server.service();
    let campaign = service
        .create_campaign(CampaignSpec {
            release: digest.to_string(),
            target: Target::Devices(serials.iter().map(|s| s.to_string()).collect()),
            waves,
            failure_threshold: threshold,
            rate: None,
            wave_timeout: None,
            over_https,
            signed_urls: false,
            ramp: None,
        })
        .await
        .unwrap();
    service
        .order_campaign(&campaign.id, CampaignOrder::Start)
        .await
        .unwrap();
    campaign.id
}

pub(crate) fn job(world: &World, serial: &str) -> Option<FirmwareJob> {
    world.record(serial).unwrap().firmware_job
}

/// A campaign over HTTPS: the offer carries the image's URL on the HTTPS listener, and the
/// agents download it there with their LDevID (resuming with byte ranges), not over their
/// session; the update ends healthy as over QUIC. A campaign over HTTPS is refused when the
/// policy names no firmware URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_https_has_devices_download_the_image_over_https() {
    let port = free_port();
    let world = World::with_config(|c| {
        c.https_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        c.policy.firmware_url = Some(format!("https://localhost:{port}/firmware"));
    })
    .await;
    trust_firmware(&world).await;
    let refs = ["SN-WEB-1", "SN-WEB-2"];
    let (devices, running) = fleet(&world, &refs).await;
    // A bit over three ranges of 128 KiB, so a resumed download takes several.
    let img = image(400_000, 9);
    let (manifest, r) = publish(&world, &img, "3.0.0", 3).await;
    let service = world.server.service();
    let digest = certs::inspect::hex(&r.digest);
    // A device has the first 200,000 bytes already (an earlier attempt stopped there).
    FileSlots::new(&devices[0].state_dir.join("firmware"))
        .stage(&r.digest, 0, &img[..200_000])
        .unwrap();
    let id = run_campaign_over(&world, &digest, &refs, vec![100], 10, true).await;
    eventually(60, "the campaign", || {
        service.campaign(&id).unwrap().state == CampaignState::Completed
    })
    .await;
    assert_eq!(service.campaign_status(&id, true).unwrap().total.healthy, 2);
    let url = format!("https://localhost:{port}/firmware/{digest}");
    assert_eq!(
        job(&world, "SN-WEB-1").unwrap().url.as_deref(),
        Some(url.as_str())
    );
    for (r, expected) in running.into_iter().zip([400_000 - 200_000, 400_000]) {
        let stats = r.agent.stats();
        assert_eq!(stats.firmware_bytes_https.load(Ordering::Relaxed), expected);
        assert_eq!(stats.firmware_bytes.load(Ordering::Relaxed), expected);
        r.stop().await;
    }
    for d in &devices {
        let active = FileSlots::new(&d.state_dir.join("firmware")).active_image();
        assert_eq!(active.unwrap().unwrap(), img);
    }

    // Without a firmware URL in the policy, a campaign over HTTPS is refused.
    let plain = World::for_manufacturer(world.manufacturer.clone()).await;
    trust_firmware(&plain).await;
    let r = plain
        .server
        .service()
        .upload_release(&manifest, &img, None)
        .await
        .unwrap();
    let refused = plain
        .server
        .service()
        .create_campaign(CampaignSpec {
            release: certs::inspect::hex(&r.digest),
            target: Target::All,
            waves: vec![100],
            failure_threshold: 10,
            rate: None,
            wave_timeout: None,
            over_https: true,
            signed_urls: false,
            ramp: None,
        })
        .await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("firmware_url")),
        "{refused:?}"
    );
}

/// Signed URLs: an offer's URL signed for its device and an hour lets any HTTP client (curl,
/// no client certificate) fetch the image while the device's update is in progress; a URL
/// with another signature, for another device, or past its hour is refused (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_lets_any_client_fetch_the_image_for_an_hour() {
    let port = free_port();
    let world = World::with_config(|c| {
        c.https_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        c.policy.firmware_url = Some(format!("https://localhost:{port}/firmware"));
    })
    .await;
    trust_firmware(&world).await;
    world.expect(&["SN-SIGNED", "SN-ELSE"], 30).await;
    for serial in ["SN-SIGNED", "SN-ELSE"] {
        world.agent(&world.device(serial)).onboard().await.unwrap();
    }
    let img = image(200_000, 3);
    let (_, r) = publish(&world, &img, "7.0.0", 7).await;
    let service = world.server.service();
    let campaign = service
        .create_campaign(CampaignSpec {
            release: certs::inspect::hex(&r.digest),
            target: Target::Devices(vec!["SN-SIGNED".into()]),
            waves: vec![100],
            failure_threshold: 100,
            rate: None,
            wave_timeout: None,
            over_https: true,
            signed_urls: true,
            ramp: None,
        })
        .await
        .unwrap();
    service
        .order_campaign(&campaign.id, CampaignOrder::Start)
        .await
        .unwrap();
    // The device is offline: its offer waits, and so does its URL.
    eventually(10, "the offer", || job(&world, "SN-SIGNED").is_some()).await;
    let url = job(&world, "SN-SIGNED").unwrap().url.unwrap();
    assert!(url.contains("&sig="), "{url}");
    let dir = tempfile::tempdir().unwrap();
    let fetch = |url: &str| -> (u16, Vec<u8>) {
        let out = dir.path().join("image");
        let status = std::process::Command::new("curl")
            .args(["--silent", "--write-out", "%{http_code}", "--cacert"])
            .arg(world.data.join(onboarder::config::layout::OWNER_ROOT))
            .arg("-o")
            .arg(&out)
            .arg(url)
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&status.stdout).parse().unwrap_or(0);
        (code, std::fs::read(&out).unwrap_or_default())
    };
    let (status, body) = fetch(&url);
    assert_eq!(status, 200);
    assert_eq!(body, img);
    let last = url.len() - 1;
    let flipped = if url.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &url[..last]);
    let elsewhere = url.replace("SN-SIGNED", "SN-ELSE");
    for bad in [tampered.as_str(), elsewhere.as_str()] {
        assert_eq!(fetch(bad).0, 403, "{bad}");
    }
    world.advance_clock(2 * 3600);
    assert_eq!(fetch(&url).0, 403, "expired");
}

/// When the image's URL cannot be reached, the agent goes on over its session: the update
/// still ends healthy, nothing came over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_image_url_falls_back_to_the_session() {
    let nobody = free_port();
    let world = World::with_config(|c| {
        c.policy.firmware_url = Some(format!("https://localhost:{nobody}/firmware"));
    })
    .await;
    trust_firmware(&world).await;
    let (_, running) = fleet(&world, &["SN-NOWEB"]).await;
    let img = image(150_000, 4);
    let (_, r) = publish(&world, &img, "3.1.0", 3).await;
    let service = world.server.service();
    let digest = certs::inspect::hex(&r.digest);
    let id = run_campaign_over(&world, &digest, &["SN-NOWEB"], vec![100], 10, true).await;
    eventually(60, "the campaign", || {
        service.campaign(&id).unwrap().state == CampaignState::Completed
    })
    .await;
    assert_eq!(service.campaign_status(&id, true).unwrap().total.healthy, 1);
    for r in running {
        let stats = r.agent.stats();
        assert_eq!(stats.firmware_bytes_https.load(Ordering::Relaxed), 0);
        assert_eq!(stats.firmware_bytes.load(Ordering::Relaxed), 150_000);
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_updates_every_device_in_waves() {
    let world = World::new().await;
    trust_firmware(&world).await;
    let serials: Vec<String> = (0..10).map(|i| format!("SN-FW-{i:02}")).collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    let (devices, running) = fleet(&world, &refs).await;
    let img = image(300_000, 1);
    let (manifest, r) = publish(&world, &img, "2.0.0", 2).await;
    // Uploading again is idempotent; a tampered image is refused.
    world
        .server
        .service()
        .upload_release(&manifest, &img, None)
        .await
        .unwrap();
    let mut bad = img.clone();
    bad[7] ^= 1;
    assert!(matches!(
        world
            .server
            .service()
            .upload_release(&manifest, &bad, None)
            .await,
        Err(OperatorError::Release(ManifestError::WrongDigest))
    ));

    let id = run_campaign(
        &world,
        &certs::inspect::hex(&r.digest),
        &refs,
        vec![10, 50, 100],
        10,
    )
    .await;
    eventually(60, "the campaign", || {
        world.server.service().campaign(&id).unwrap().state == CampaignState::Completed
    })
    .await;
    let status = world.server.service().campaign_status(&id, true).unwrap();
    assert_eq!(status.total.healthy, 10, "{status:?}");
    let sizes: Vec<usize> = status.waves.iter().map(|w| w.devices).collect();
    assert_eq!(sizes, [1, 4, 5]);
    // The job index forgotten (as by a replica that starts to lead), a commit about one
    // device is heard before the campaign is looked at again: the campaign still counts all
    // of its devices, not the one just heard of.
    world.server.service().forget_jobs();
    world
        .server
        .service()
        .request_rotation(Some(vec![world.id(refs[0])]))
        .await
        .unwrap();
    let status = world.server.service().campaign_status(&id, false).unwrap();
    assert_eq!(status.total.healthy, 10, "{status:?}");
    for (d, s) in devices.iter().zip(&serials) {
        let record = world.record(s).unwrap();
        assert_eq!(record.firmware_version.as_deref(), Some("2.0.0"));
        assert_eq!(record.firmware_sequence, 2);
        assert_eq!(
            FileSlots::new(&d.state_dir.join("firmware"))
                .active_image()
                .unwrap()
                .unwrap(),
            img
        );
    }
    // A second campaign of the same release skips everyone: never offered twice.
    let again = run_campaign(
        &world,
        &certs::inspect::hex(&r.digest),
        &refs,
        vec![100],
        10,
    )
    .await;
    eventually(20, "the second campaign", || {
        world.server.service().campaign(&again).unwrap().state == CampaignState::Completed
    })
    .await;
    assert_eq!(
        world
            .server
            .service()
            .campaign_status(&again, true)
            .unwrap()
            .total
            .skipped,
        10
    );
    for r in running {
        assert_eq!(r.agent.stats().updates.load(Ordering::Relaxed), 1);
        r.stop().await;
    }
}

/// Plants an offer straight into the store and the image directory, as a compromised server
/// could, and pushes it: only the device's own checks stand in the way.
async fn offer_directly(world: &World, serial: &str, manifest: &[u8], image: &[u8]) {
    let claimed = protocol::manifest::Manifest::parse_unverified(manifest).unwrap();
    // Straight into the repository: no upload check.
    world
        .server
        .service()
        .images()
        .put(&claimed.digest, image)
        .unwrap();
    world
        .plant_job(
            serial,
            FirmwareJob {
                campaign: format!("planted-{}", claimed.version),
                digest: claimed.digest.clone(),
                manifest: manifest.to_vec(),
                url: None,
                version: claimed.version.clone(),
                sequence: claimed.sequence,
                state: JobState::Offered,
                bytes: 0,
                offered_at: now(),
                updated_at: now(),
                transitions: 0,
            },
        )
        .await;
    world
        .server
        .sessions()
        .push(
            &world.id(serial),
            &Command::Update {
                manifest: manifest.to_vec(),
                url: None,
            },
        )
        .await
        .unwrap();
}

/// `manifest` with the digest of `from` replaced by that of `to`, its signature left as it was.
fn retarget(manifest: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let sha = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let (old, new) = (sha(from), sha(to));
    let at = manifest
        .windows(old.len())
        .position(|w| w == old.as_slice())
        .expect("the manifest names its image's digest");
    let mut tampered = manifest.to_vec();
    tampered[at..at + new.len()].copy_from_slice(&new);
    assert_eq!(
        protocol::manifest::Manifest::parse_unverified(&tampered)
            .unwrap()
            .digest,
        new
    );
    tampered
}

async fn refused_with(
    world: &World,
    device: &Device,
    serial: &str,
    manifest: &[u8],
    image: &[u8],
    refusal: FirmwareRefusal,
) {
    let slots = FileSlots::new(&device.state_dir.join("firmware"));
    let before = (
        slots.active_image().unwrap(),
        world.record(serial).unwrap().firmware_sequence,
    );
    offer_directly(world, serial, manifest, image).await;
    eventually(20, "the device's verdict", || {
        job(world, serial).is_some_and(|j| j.state.is_final())
    })
    .await;
    match job(world, serial).unwrap().state {
        JobState::Failed {
            refusal: Some(r),
            reason,
        } => assert_eq!(r, refusal, "{reason}"),
        other => panic!("expected a refusal for {refusal:?}, got {other:?}"),
    }
    // Nothing installed, the counter untouched.
    assert_eq!(slots.active_image().unwrap(), before.0, "{refusal:?}");
    assert!(!slots.in_trial().unwrap());
    assert_eq!(
        world.record(serial).unwrap().firmware_sequence,
        before.1,
        "{refusal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_refuses_every_bad_image_and_manifest() {
    let world = World::new().await;
    trust_firmware(&world).await;
    let (devices, running) = fleet(&world, &["SN-GUARD"]).await;
    let d = &devices[0];
    let m = &world.manufacturer;
    let img = image(200_000, 2);
    let good = m
        .sign_firmware(&img, &FirmwareRelease::new("3.0.0", 3), now())
        .unwrap();

    let mut flipped = img.clone();
    flipped[100_000] ^= 0x10;
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &good,
        &flipped,
        FirmwareRefusal::WrongDigest,
    )
    .await;
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &good,
        &img[..150_000],
        FirmwareRefusal::WrongSize,
    )
    .await;
    let mut longer = img.clone();
    longer.extend_from_slice(b"appended");
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &good,
        &longer,
        FirmwareRefusal::WrongSize,
    )
    .await;

    let other_maker = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new(&m.config.name),
        now(),
    )
    .unwrap();
    let forged = other_maker
        .sign_firmware(&img, &FirmwareRelease::new("3.0.1", 4), now())
        .unwrap();
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &forged,
        &img,
        FirmwareRefusal::Signature,
    )
    .await;
    // The manufacturer's own manifest, altered after signing: it announces another image (the
    // planted one), and the signature no longer covers what it says.
    let other_image = image(200_000, 3);
    let tampered = retarget(&good, &img, &other_image);
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &tampered,
        &other_image,
        FirmwareRefusal::Signature,
    )
    .await;
    let gateway = m
        .sign_firmware(
            &img,
            &FirmwareRelease {
                class_id: Some("gateway-9"),
                ..FirmwareRelease::new("3.0.2", 5)
            },
            now(),
        )
        .unwrap();
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &gateway,
        &img,
        FirmwareRefusal::WrongClass,
    )
    .await;
    let expired = m
        .sign_firmware(
            &img,
            &FirmwareRelease {
                expires_on: Some(now() - 10),
                ..FirmwareRelease::new("3.0.3", 6)
            },
            now(),
        )
        .unwrap();
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &expired,
        &img,
        FirmwareRefusal::Expired,
    )
    .await;

    // Install sequence 7 for real, then a lower one (rollback) and another image claiming 7
    // (replay of the sequence) are refused.
    let v7 = m
        .sign_firmware(&img, &FirmwareRelease::new("3.1.0", 7), now())
        .unwrap();
    offer_directly(&world, "SN-GUARD", &v7, &img).await;
    eventually(20, "the real update", || {
        job(&world, "SN-GUARD").is_some_and(|j| j.state == JobState::Healthy)
    })
    .await;
    let other = image(200_000, 9);
    let old = m
        .sign_firmware(&other, &FirmwareRelease::new("2.9.0", 6), now())
        .unwrap();
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &old,
        &other,
        FirmwareRefusal::Rollback,
    )
    .await;
    let replay = m
        .sign_firmware(&other, &FirmwareRelease::new("3.1.0-again", 7), now())
        .unwrap();
    refused_with(
        &world,
        d,
        "SN-GUARD",
        &replay,
        &other,
        FirmwareRefusal::Rollback,
    )
    .await;
    assert_eq!(
        FileSlots::new(&d.state_dir.join("firmware"))
            .active_image()
            .unwrap()
            .unwrap(),
        img
    );
    // Each refusal was also a security event the device forwarded: in its history, in order,
    // the rollbacks as such, and none left pending on the device.
    eventually(20, "the security events reached the server", || {
        world.record("SN-GUARD").unwrap().security.recorded == 9
    })
    .await;
    let details: Vec<String> = world
        .audit()
        .into_iter()
        .filter(|e| e.event.action == "security-event")
        .map(|e| e.event.detail)
        .collect();
    assert_eq!(details.len(), 9, "{details:#?}");
    assert!(
        details[0].starts_with("#0 verification-failed"),
        "{details:#?}"
    );
    assert!(
        details[7].starts_with("#7 rollback-refused"),
        "{details:#?}"
    );
    assert!(
        details[8].starts_with("#8 rollback-refused"),
        "{details:#?}"
    );
    let tally = world.record("SN-GUARD").unwrap().security;
    assert_eq!((tally.next, tally.lost, tally.dropped), (9, 0, 0));
    let pending = {
        use device_agent::platform::StateStore;
        device_agent::platform::files::FileStateStore::new(&d.state_dir)
            .load()
            .unwrap()
            .unwrap()
            .security_events
    };
    assert!(pending.is_empty(), "{pending:?}");
    // Sent again (a lost answer): nothing new is written.
    let before = world.record("SN-GUARD").unwrap();
    let entries = world.audit().len();
    for r in running {
        r.stop().await;
    }
    let session = world.ldevid_session(d).await;
    let again = protocol::message::SecurityEvent {
        sequence: 3,
        at: now(),
        kind: protocol::message::SecurityEventKind::Tamper,
        detail: "replayed".into(),
    };
    let answer = session
        .call(&protocol::message::Request::SecurityEvents(vec![again]))
        .await
        .unwrap();
    assert_eq!(answer, protocol::message::Response::Ack);
    assert_eq!(world.record("SN-GUARD").unwrap().version, before.version);
    assert_eq!(world.audit().len(), entries);
}

/// Slots whose storage dies once `limit` bytes are staged: the device loses power half way
/// through a download.
struct DyingSlots {
    inner: FileSlots,
    limit: u64,
}

impl FirmwareSlots for DyingSlots {
    fn staged_len(&self, d: &[u8]) -> Result<u64, device_agent::PlatformError> {
        self.inner.staged_len(d)
    }
    fn stage(
        &self,
        d: &[u8],
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), device_agent::PlatformError> {
        if offset + bytes.len() as u64 > self.limit {
            return Err(device_agent::PlatformError::Firmware("power lost".into()));
        }
        self.inner.stage(d, offset, bytes)
    }
    fn staged_digest(&self, d: &[u8]) -> Result<(u64, [u8; 32]), device_agent::PlatformError> {
        self.inner.staged_digest(d)
    }
    fn discard(&self, d: &[u8]) -> Result<(), device_agent::PlatformError> {
        self.inner.discard(d)
    }
    fn install(&self, d: &[u8], m: &[u8]) -> Result<(), device_agent::PlatformError> {
        self.inner.install(d, m)
    }
    fn boot_trial(&self) -> Result<(), device_agent::PlatformError> {
        self.inner.boot_trial()
    }
    fn self_test(&self) -> Result<(), String> {
        self.inner.self_test()
    }
    fn commit(&self) -> Result<(), device_agent::PlatformError> {
        self.inner.commit()
    }
    fn rollback(&self) -> Result<(), device_agent::PlatformError> {
        self.inner.rollback()
    }
    fn in_trial(&self) -> Result<bool, device_agent::PlatformError> {
        self.inner.in_trial()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_only_the_rest() {
    let world = World::new().await;
    trust_firmware(&world).await;
    let device = world.device("SN-RESUME");
    world.expect(&["SN-RESUME"], 30).await;
    world.agent(&device).onboard().await.unwrap();
    let size = 1024 * 1024 + 12_345;
    let img = image(size, 3);
    let (_, r) = publish(&world, &img, "4.0.0", 1).await;

    // The first life of the device: its storage dies half way through the download.
    let identity = std::sync::Arc::new(device.identity());
    let mut platform = device_agent::platform::Platform::files(
        &device.identity_dir,
        &device.state_dir,
        certs::KeyKind::P256,
    );
    platform.slots = std::sync::Arc::new(DyingSlots {
        inner: FileSlots::new(&device.state_dir.join("firmware")),
        limit: size as u64 / 2,
    });
    let dying = device_agent::Agent::new(
        identity,
        platform,
        world.server.quic_addr(),
        world.endpoint.clone(),
        fast_options(),
    );
    let first = Running::start(dying);
    eventually(10, "the session", || {
        world.server.sessions().is_connected(&world.id("SN-RESUME"))
    })
    .await;
    run_campaign(
        &world,
        &certs::inspect::hex(&r.digest),
        &["SN-RESUME"],
        vec![100],
        50,
    )
    .await;
    eventually(30, "the failure", || {
        first.agent.stats().failures.load(Ordering::SeqCst) > 0
    })
    .await;
    let agent = first.agent.clone();
    first.stop().await;
    let held = FileSlots::new(&device.state_dir.join("firmware"))
        .staged_len(&r.digest)
        .unwrap();
    assert!(held > 0 && held <= size as u64 / 2, "{held}");
    assert_eq!(
        agent.stats().firmware_bytes.load(Ordering::SeqCst) % held,
        0
    );

    // Back to life: the offer is in its welcome, and it fetches only what it lacks.
    let second = Running::start(world.agent(&device));
    eventually(30, "the update", || {
        job(&world, "SN-RESUME").is_some_and(|j| j.state == JobState::Healthy)
    })
    .await;
    let rest = second.agent.stats().firmware_bytes.load(Ordering::SeqCst);
    assert_eq!(rest, size as u64 - held);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_does_not_hold_back_the_next_wave_past_its_timeout() {
    let world = World::new().await;
    trust_firmware(&world).await;
    let refs = ["SN-WT-0", "SN-WT-1", "SN-WT-2"];
    let (devices, mut running) = fleet(&world, &refs).await;
    // SN-WT-0, in the first wave, goes silent.
    running.remove(0).stop().await;
    eventually(10, "the silent device's session to end", || {
        world.server.sessions().len() == 2
    })
    .await;
    let img = image(50_000, 9);
    let (_, r) = publish(&world, &img, "6.0.0", 6).await;
    let service = world.server.service();
    let campaign = service
        .create_campaign(CampaignSpec {
            release: certs::inspect::hex(&r.digest),
            target: Target::Devices(refs.iter().map(|s| s.to_string()).collect()),
            waves: vec![50, 100],
            failure_threshold: 0,
            rate: None,
            wave_timeout: Some(2),
            over_https: false,
            signed_urls: false,
            ramp: None,
        })
        .await
        .unwrap();
    assert_eq!(
        campaign.waves[0],
        [world.id("SN-WT-0"), world.id("SN-WT-1")]
    );
    let id = campaign.id;
    service
        .order_campaign(&id, CampaignOrder::Start)
        .await
        .unwrap();

    eventually(30, "the second wave updated", || {
        job(&world, "SN-WT-2").is_some_and(|j| j.state == JobState::Healthy)
    })
    .await;
    // The silent device keeps its offer, and the campaign is not complete without it.
    assert_eq!(
        job(&world, "SN-WT-0").map(|j| j.state),
        Some(JobState::Offered)
    );
    let status = service.campaign_status(&id, false).unwrap();
    assert_eq!(status.wave, 1);
    assert_eq!(status.state, CampaignState::Running);
    assert!(
        world
            .audit()
            .iter()
            .any(|e| e.event.action == "campaign-wave"
                && e.event
                    .detail
                    .contains("timed out with 1 of its devices not over")),
        "the audit log says why the wave moved on"
    );
    // Back online, it finds the offer in its welcome, updates, and the campaign completes.
    running.push(Running::start(world.agent(&devices[0])));
    eventually(30, "the campaign to complete", || {
        service.campaign(&id).unwrap().state == CampaignState::Completed
    })
    .await;
    assert_eq!(
        service.campaign_status(&id, false).unwrap().total.healthy,
        3
    );
    for r in running {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_release_rolls_back_and_pauses_the_campaign() {
    let world = World::new().await;
    trust_firmware(&world).await;
    let serials: Vec<String> = (0..20).map(|i| format!("SN-SICK-{i:02}")).collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    let (devices, running) = fleet(&world, &refs).await;
    let mut img = image(100_000, 4);
    img[50_000..50_000 + SELFTEST_FAIL.len()].copy_from_slice(SELFTEST_FAIL);
    let (_, r) = publish(&world, &img, "5.0.0", 1).await;
    let id = run_campaign(
        &world,
        &certs::inspect::hex(&r.digest),
        &refs,
        vec![10, 50, 100],
        10,
    )
    .await;
    eventually(60, "the campaign to pause", || {
        matches!(
            world.server.service().campaign(&id).unwrap().state,
            CampaignState::Paused { .. }
        )
    })
    .await;
    // The first failure pauses the campaign; the other device of the wave, already under way,
    // fails on its own a moment later.
    eventually(20, "both devices of the first wave to fail", || {
        world
            .server
            .service()
            .campaign_status(&id, false)
            .unwrap()
            .waves[0]
            .failed
            == 2
    })
    .await;
    let status = world.server.service().campaign_status(&id, true).unwrap();
    assert_eq!(status.wave, 0);
    assert_eq!(status.waves[0].failed, 2, "{status:?}");
    for w in &status.waves[1..] {
        assert_eq!(w.waiting, w.devices, "later waves untouched: {status:?}");
    }
    for p in status.devices.iter().filter(|p| p.wave == 0) {
        assert_eq!(p.state, "rolled-back");
        assert!(p.reason.as_deref().unwrap_or("").contains("self-test"));
        let d = devices
            .iter()
            .zip(&serials)
            .find(|(_, s)| **s == p.device.serial)
            .unwrap()
            .0;
        // Back on the factory image, reporting its old version.
        assert!(
            FileSlots::new(&d.state_dir.join("firmware"))
                .active_image()
                .unwrap()
                .is_none()
        );
        eventually(10, "the old version reported", || {
            world
                .record(&p.device.serial)
                .unwrap()
                .firmware_version
                .as_deref()
                == Some("1.0.0")
        })
        .await;
        assert_eq!(world.record(&p.device.serial).unwrap().firmware_sequence, 0);
    }
    // It stays paused: the engine's next steps offer the release to nobody.
    for _ in 0..3 {
        assert!(
            world
                .server
                .service()
                .campaign_tick()
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(matches!(
        world.server.service().campaign(&id).unwrap().state,
        CampaignState::Paused { .. }
    ));
    for r in running {
        r.stop().await;
    }
}

/// curl fetching the image `hex` from the world's HTTPS listener into `out` (printing the
/// status), with `client`'s LDevID if given.
fn curl_image(
    world: &World,
    client: Option<&Device>,
    hex: &str,
    out: &std::path::Path,
) -> std::process::Command {
    let port = world.server.https_addr().unwrap().port();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["--silent", "--write-out", "%{http_code}", "-o"])
        .arg(out)
        .arg("--cacert")
        .arg(world.data.join(onboarder::config::layout::OWNER_ROOT));
    if let Some(d) = client {
        cmd.arg("--cert")
            .arg(d.state_dir.join("ldevid.pem"))
            .arg("--key")
            .arg(d.state_dir.join("ldevid.key"));
    }
    cmd.arg(format!("https://localhost:{port}/firmware/{hex}"));
    cmd
}

/// An offered image downloads over HTTPS with a plain client (curl) and the device's LDevID:
/// whole, or by byte ranges to resume; another device, a birth certificate or no certificate
/// gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offered_image_downloads_over_https_whole_or_by_ranges() {
    let world = World::new().await;
    trust_firmware(&world).await;
    world.expect(&["SN-HTTPS", "SN-OTHER"], 30).await;
    let device = world.device("SN-HTTPS");
    let other = world.device("SN-OTHER");
    world.agent(&device).onboard().await.unwrap();
    world.agent(&other).onboard().await.unwrap();
    let img = image(300_000, 7);
    let (_, r) = publish(&world, &img, "6.0.0", 1).await;
    let hex = certs::inspect::hex(&r.digest);
    run_campaign(&world, &hex, &["SN-HTTPS"], vec![100], 100).await;
    eventually(10, "the offer", || job(&world, "SN-HTTPS").is_some()).await;

    let dir = tempfile::tempdir().unwrap();
    let get = |client: Option<&Device>, range: Option<&str>, name: &str| {
        let out = dir.path().join(name);
        let mut cmd = curl_image(&world, client, &hex, &out);
        if let Some(range) = range {
            cmd.args(["-H", &format!("Range: bytes={range}")]);
        }
        let status = cmd.output().unwrap();
        let code: u16 = String::from_utf8_lossy(&status.stdout).parse().unwrap_or(0);
        (code, std::fs::read(&out).unwrap_or_default())
    };
    assert_eq!(get(Some(&device), None, "whole"), (200, img.clone()));
    assert_eq!(
        get(Some(&device), Some("1000-1999"), "part"),
        (206, img[1000..2000].to_vec())
    );
    assert_eq!(
        get(Some(&device), Some("299990-"), "tail"),
        (206, img[299_990..].to_vec())
    );
    assert_eq!(get(Some(&device), Some("400000-"), "past").0, 416);
    assert_eq!(get(Some(&device), Some("9-1"), "backwards").0, 416);
    let (code, _) = get(Some(&other), None, "other");
    assert!(matches!(code, 403 | 409), "{code}");
    assert_eq!(get(None, None, "anonymous").0, 401);
}

/// An HTTPS download reads its next chunk within a server-wide turn only when the connection
/// has room for it: a client that stops reading holds no turn, and the same image still
/// downloads whole at full speed beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_no_chunk_turn() {
    let world = World::new().await;
    trust_firmware(&world).await;
    world.expect(&["SN-SLOW"], 30).await;
    let device = world.device("SN-SLOW");
    world.agent(&device).onboard().await.unwrap();
    let img = image(8 * 1024 * 1024, 3);
    let (_, r) = publish(&world, &img, "6.1.0", 1).await;
    let hex = certs::inspect::hex(&r.digest);
    run_campaign(&world, &hex, &["SN-SLOW"], vec![100], 100).await;
    eventually(10, "the offer", || job(&world, "SN-SLOW").is_some()).await;

    let dir = tempfile::tempdir().unwrap();
    let curl = |out: &std::path::Path| curl_image(&world, Some(&device), &hex, out);
    let slow_out = dir.path().join("slow");
    let mut slow = curl(&slow_out)
        .args(["--limit-rate", "4k"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(10, "the slow download under way", || {
        std::fs::metadata(&slow_out).is_ok_and(|m| m.len() > 0)
    })
    .await;
    eventually(10, "no chunk turn held", || {
        world.server.firmware_chunks_in_flight() == 0
    })
    .await;

    let fast_out = dir.path().join("fast");
    let fast = curl(&fast_out).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&fast.stdout), "200");
    assert!(std::fs::read(&fast_out).unwrap() == img, "the whole image");

    assert!(slow.try_wait().unwrap().is_none(), "still reading slowly");
    assert!(std::fs::metadata(&slow_out).unwrap().len() < img.len() as u64 / 4);
    assert_eq!(world.server.firmware_chunks_in_flight(), 0);
    slow.kill().unwrap();
    slow.wait().unwrap();
}

/// A campaign on a saved query: the devices that match it at the start are updated, and so are
/// devices that come to match it later (onboarded and tagged after the start), which join the
/// running campaign; devices that do not match are left alone. Its offer rate ramps up, and
/// the steps show in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_on_a_saved_query_takes_devices_that_match_later_and_ramps_up() {
    use onboarder::core::query::{DeviceQuery, Labels};
    let world = World::new().await;
    trust_firmware(&world).await;
    let service = world.server.service();
    let pilot = Labels {
        add_tags: ["pilot".to_string()].into(),
        ..Labels::default()
    };
    let first = ["SN-Q-0", "SN-Q-1", "SN-Q-2"];
    let (_, mut running) = fleet(&world, &first).await;
    for serial in &first[..2] {
        service.label(&world.id(serial), &pilot).await.unwrap();
    }
    service
        .save_query(
            "pilots",
            &DeviceQuery {
                tags: vec!["pilot".into()],
                ..DeviceQuery::default()
            },
        )
        .await
        .unwrap();
    let img = image(50_000, 3);
    let (_, r) = publish(&world, &img, "3.0.0", 3).await;
    let campaign = service
        .create_campaign(CampaignSpec {
            release: certs::inspect::hex(&r.digest),
            target: Target::Query("pilots".into()),
            waves: vec![50, 100],
            failure_threshold: 10,
            rate: Some(16),
            wave_timeout: None,
            over_https: false,
            signed_urls: false,
            ramp: Some(onboarder::service::RampSpec {
                start: 1,
                factor: 2,
                every: 1,
            }),
        })
        .await
        .unwrap();
    assert_eq!(campaign.waves.iter().map(Vec::len).sum::<usize>(), 2);
    service
        .order_campaign(&campaign.id, CampaignOrder::Start)
        .await
        .unwrap();
    // Two more devices onboard after the start; one is tagged and joins.
    let later = ["SN-Q-3", "SN-Q-4"];
    world.expect(&later, 30).await;
    for serial in later {
        running.push(Running::start(world.agent(&world.device(serial))));
    }
    eventually(30, "the later devices onboarded", || {
        later
            .iter()
            .all(|s| world.record(s).map(|r| r.state) == Some(onboarder::core::DeviceState::Active))
    })
    .await;
    service.label(&world.id("SN-Q-3"), &pilot).await.unwrap();
    eventually(60, "the matching devices updated", || {
        ["SN-Q-0", "SN-Q-1", "SN-Q-3"]
            .iter()
            .all(|s| job(&world, s).is_some_and(|j| j.state == JobState::Healthy))
    })
    .await;
    eventually(20, "the ramp to step up", || {
        service
            .campaign_status(&campaign.id, false)
            .unwrap()
            .ramp_steps
            .len()
            >= 3
    })
    .await;
    // The job index is noted when the store's commit returns, a moment after the records
    // read above are visible: status agrees with them once that commit has returned (a
    // device's report is answered only then).
    eventually(20, "the campaign's status to count 3 healthy", || {
        service
            .campaign_status(&campaign.id, false)
            .unwrap()
            .total
            .healthy
            == 3
    })
    .await;
    let status = service.campaign_status(&campaign.id, false).unwrap();
    assert_eq!(status.total.healthy, 3, "{status:?}");
    assert_eq!(status.query.as_deref(), Some("pilots"));
    assert_eq!(status.ramp_steps[..3], [1, 2, 4], "{status:?}");
    assert_eq!(status.offer_rate, status.ramp_steps.last().copied());
    // A campaign on a query keeps waiting for devices that come to match.
    assert_eq!(status.state, CampaignState::Running);
    for s in ["SN-Q-2", "SN-Q-4"] {
        assert!(job(&world, s).is_none(), "{s} does not match the query");
    }
    let actions: Vec<String> = world.audit().into_iter().map(|e| e.event.action).collect();
    assert!(
        actions.iter().any(|a| a == "campaign-joined"),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| a == "campaign-ramp"), "{actions:?}");
    world.assert_tallies_agree();
    for r in running {
        r.stop().await;
    }
}

/// A release whose manifest names an SBOM is kept only with that very document, and the
/// onboarder serves it per release and per device (for what each device runs now). Refused
/// uploads store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_keeps_the_sbom_its_manifest_names_and_serves_it_per_device() {
    use onboarder::core::sbom::SbomError;
    let world = World::new().await;
    trust_firmware(&world).await;
    let (_, running) = fleet(&world, &["SN-SBOM-0"]).await;
    let img = image(30_000, 5);
    let doc: &[u8] = br#"{"bomFormat": "CycloneDX", "specVersion": "1.5",
        "components": [{"type": "library", "name": "libfoo", "version": "1.2.3"}]}"#;
    let signed = FirmwareRelease {
        sbom: Some(protocol::manifest::SbomRef {
            format: "cyclonedx".into(),
            uri: "https://maker.example/fw/5.0.0.cdx.json".into(),
            digest: protocol::manifest::sha256(doc).to_vec(),
        }),
        ..FirmwareRelease::new("5.0.0", 5)
    };
    let manifest = world
        .manufacturer
        .sign_firmware(&img, &signed, now())
        .unwrap();
    let service = world.server.service();
    let audit_before = world.audit().len();
    let mut tampered = doc.to_vec();
    tampered[20] ^= 1;
    assert!(matches!(
        service.upload_release(&manifest, &img, None).await,
        Err(OperatorError::Sbom(SbomError::Missing(_)))
    ));
    assert!(matches!(
        service
            .upload_release(&manifest, &img, Some(&tampered))
            .await,
        Err(OperatorError::Sbom(SbomError::WrongDigest))
    ));
    assert!(service.releases().unwrap().is_empty(), "nothing stored");
    assert_eq!(world.audit().len(), audit_before);

    let base = format!("http://{}", world.server.api_addr());
    let client = onboarder::operator::client::ApiClient::new(
        &base,
        onboarder::pki::token(&world.data).unwrap(),
    );
    let uploaded = tokio::task::spawn_blocking(move || {
        client.upload_release(&manifest, &img, Some(doc)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(uploaded.sbom_format.as_deref(), Some("cyclonedx"));
    let id = run_campaign(&world, &uploaded.digest, &["SN-SBOM-0"], vec![100], 10).await;
    eventually(60, "the campaign", || {
        service.campaign(&id).unwrap().state == CampaignState::Completed
    })
    .await;
    let token = onboarder::pki::token(&world.data).unwrap();
    let served = tokio::task::spawn_blocking(move || {
        [
            "/v1/firmware/releases/5.0.0/sbom",
            "/v1/devices/SN-SBOM-0/sbom",
        ]
        .map(|path| {
            let response = ureq::get(format!("{base}{path}"))
                .header("Authorization", format!("Bearer {token}"))
                .call()
                .unwrap();
            let kind = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_string();
            (kind, response.into_body().read_to_vec().unwrap())
        })
    })
    .await
    .unwrap();
    for (kind, body) in served {
        assert_eq!(kind, "application/vnd.cyclonedx+json");
        assert_eq!(body, doc);
    }
    for r in running {
        r.stop().await;
    }
}
