//! The data directory's disk fills up (a 64 MiB tmpfs mounted for the test): requests are
//! refused with a clear error, nothing acknowledged before is lost, and the server serves
//! again by itself once space returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use onboarder::core::{CertStatus, DeviceState};

use crate::harness::*;
use crate::rollover_kill::{Fleet, api, fleet_in};

/// A tmpfs of `mib` MiB, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount (util-linux)");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI and scripts/test run as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free.
    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk but for `leave` bytes, with a file returned for freeing it later.
fn fill(disk: &SmallDisk, leave: u64) -> PathBuf {
    let filler = disk.path().join("filler");
    let size = disk.free().saturating_sub(leave);
    let status = Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(status.success());
    filler
}

/// Devices whose vouchers are imported while there is room.
async fn expected(fleet: &Fleet, serials: &[String]) -> Vec<Device> {
    let owner_root =
        certs::files::read_cert(&fleet.data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let out = fleet.root.join("devices-out");
    let devices = serials
        .iter()
        .map(|s| Device::mint(&fleet.maker, &out, s))
        .collect();
    let vouchers: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| {
            fleet
                .maker
                .voucher(s, &owner_root, now(), now() + DAY)
                .unwrap()
        })
        .collect();
    api(&fleet.client, move |c| {
        c.import_vouchers(&protocol::voucher::encode_bundle(&vouchers))
            .unwrap()
    })
    .await;
    devices
}

/// Onboards `device`; the error when it cannot.
async fn onboard(fleet: &Fleet, device: &Device) -> Result<(), String> {
    let endpoint = device_agent::transport::quic::endpoint_for(fleet.quic).unwrap();
    let agent = device.agent(fleet.quic, &endpoint);
    agent.onboard().await.map(drop).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_clearly_loses_nothing_and_recovers_by_itself() {
    let disk = SmallDisk::mount(64);
    let mut fleet = fleet_in(disk.path(), "Disk Devices", "SN-DK", 20).await;
    fleet
        .until("the fleet onboarded", |c| {
            crate::rollover_kill::fleet_on(c, 1, 20)
        })
        .await;
    // A release ready to upload: the image store is on the same disk.
    let image = onboarder::exercise::incompressible_image(1 << 20, 9);
    let manifest = fleet
        .maker
        .sign_firmware(
            &image,
            &certs::factory::FirmwareRelease::new("2.0.0", 2),
            now(),
        )
        .unwrap();
    let (vendor, key) = (
        fleet.maker.config.name.clone(),
        fleet.maker.firmware_key().public_pem(),
    );
    api(&fleet.client, move |c| {
        c.import_firmware_key(&vendor, &key).unwrap()
    })
    .await;
    let serials: Vec<String> = (0..300).map(|i| format!("SN-DK-FULL-{i:03}")).collect();
    let waiting = expected(&fleet, &serials).await;
    let back = expected(&fleet, &["SN-DK-BACK".to_string()]).await;
    let filler = fill(&disk, onboarder::store::space::RESERVE + 256 * 1024);

    // Devices onboard until the disk refuses one: each refused clearly, none half done.
    let mut refused = Vec::new();
    let mut onboarded = Vec::new();
    for d in &waiting {
        match onboard(&fleet, d).await {
            Ok(()) => onboarded.push(d.serial()),
            Err(e) => refused.push((d.serial(), e)),
        }
        if refused.len() >= 3 {
            break;
        }
    }
    eprintln!(
        "full disk: {} onboarded before it filled, then refused: {:?}",
        onboarded.len(),
        refused
    );
    assert!(refused.len() >= 3, "the disk never filled");
    for (serial, why) in &refused {
        assert!(why.contains("disk is full"), "{serial}: {why}");
    }
    // A refused device holds what was acknowledged before the disk filled (its voucher's
    // acceptance and its certificate, if its enrollment was answered) and nothing of the
    // refused step: not active, no certificate confirmed.
    for (serial, _) in &refused {
        let s = serial.clone();
        let view = api(&fleet.client, move |c| c.device(&s).unwrap()).await;
        assert!(
            matches!(view.state, DeviceState::Expected | DeviceState::Onboarding),
            "{serial}: {:?}",
            view.state
        );
        assert!(
            view.certificates
                .iter()
                .all(|c| c.status == CertStatus::Issued),
            "{serial}: {:?}",
            view.certificates
        );
    }
    let upload = {
        let (manifest, image) = (manifest.clone(), image.clone());
        api(&fleet.client, move |c| {
            c.upload_release(&manifest, &image, None)
        })
        .await
    };
    let why = upload.unwrap_err().to_string();
    assert!(why.contains("disk is full"), "{why}");
    // What was acknowledged is there; the server still answers reads.
    let devices = api(&fleet.client, |c| c.devices()).await.unwrap();
    for s in &onboarded {
        let d = devices.iter().find(|d| &d.serial == s).unwrap();
        assert_eq!(d.state, DeviceState::Active, "{s}");
    }
    assert_eq!(
        devices
            .iter()
            .filter(|d| d.serial.starts_with("SN-DK0"))
            .filter(|d| d.state == DeviceState::Active)
            .count(),
        20
    );

    // Space returns: the server serves again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let began = Instant::now();
    loop {
        match onboard(&fleet, &back[0]).await {
            Ok(()) => break,
            Err(e) => assert!(
                began.elapsed() < Duration::from_secs(60),
                "not serving 60 s after space returned: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "full disk: serving again {:.1} s after space returned",
        began.elapsed().as_secs_f64()
    );
    // The devices refused while it was full onboard now, from wherever they were left.
    for (serial, _) in &refused {
        let d = waiting.iter().find(|d| &d.serial() == serial).unwrap();
        onboard(&fleet, d).await.unwrap();
        let s = serial.clone();
        let view = api(&fleet.client, move |c| c.device(&s).unwrap()).await;
        assert_eq!(view.state, DeviceState::Active, "{serial}");
    }
    api(&fleet.client, move |c| {
        c.upload_release(&manifest, &image, None)
    })
    .await
    .unwrap();
    let summary = api(&fleet.client, |c| c.verify_audit()).await.unwrap();
    assert!(summary.entries > 0);
    fleet.child.kill().unwrap();
    fleet.child.wait().unwrap();
}
