//! A device that abuses the protocol cannot fill the server's disk or memory: its refusals and
//! notes are counted, and written to the audit log within a budget; its incomplete requests
//! are held within budgets and dropped when they stall.

use std::sync::Arc;
use std::time::Duration;

use protocol::message::{ErrorCode, Request, Status};
use protocol::{frame, message};

use crate::harness::*;

/// The audit entries a flood of one device may cause in one budget window: five per kind
/// (refused:BadRequest, voucher-issued, voucher-rejected).
const FLOOD_AUDIT_BOUND: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_device_is_counted_not_written_and_others_still_onboard() {
    let world = World::new().await;
    let flooder = world.device("SN-FLOOD");
    let honest = world.device("SN-HONEST");
    world.expect(&["SN-FLOOD", "SN-HONEST"], 30).await;
    let audit_before = world.audit().len();
    let flood_id = world.id("SN-FLOOD");

    const EACH: usize = 400;
    let session = Arc::new(world.raw_session(&flooder).await);
    let birth = Arc::new(flooder.birth());
    let flood = {
        let session = session.clone();
        let birth = birth.clone();
        async move {
            let garbage = frame::encode(b"\xff\xfe not a message \x00").unwrap();
            let rejected = Request::VoucherStatus(Status {
                ok: false,
                reason: Some("no thanks".into()),
            });
            let request = voucher_request(&birth, &session);
            for _ in 0..EACH {
                let (a, b, c) = tokio::join!(
                    session.exchange_raw(&garbage),
                    session.exchange(&rejected),
                    session.exchange(&request),
                );
                assert_eq!(code_of(&a.unwrap()), ErrorCode::BadRequest);
                assert!(matches!(b.unwrap(), protocol::message::Response::Ack));
                assert!(matches!(
                    c.unwrap(),
                    protocol::message::Response::Voucher(_)
                ));
            }
        }
    };
    // A real device onboards during the flood, once the server is refusing it.
    let onboard = async {
        eventually(30, "the flood under way", || {
            let refused = world.server.service().metrics().snapshot().refusals;
            refused.get("BadRequest").copied().unwrap_or(0) >= 20
        })
        .await;
        world.agent(&honest).onboard().await
    };
    let ((), onboarded) = tokio::join!(flood, onboard);
    onboarded.unwrap();
    assert_eq!(
        world.record("SN-HONEST").unwrap().state,
        onboarder::core::DeviceState::Active
    );

    // The log grew by a bounded number of entries for the flooder.
    let audit = world.audit();
    let from_flooder = audit[audit_before..]
        .iter()
        .filter(|e| e.event.device.as_ref() == Some(&flood_id))
        .count();
    assert!(
        from_flooder <= FLOOD_AUDIT_BOUND,
        "{from_flooder} entries for {} requests",
        3 * EACH
    );
    // Nothing else grew but the honest device's own story.
    let honest_id = world.id("SN-HONEST");
    assert!(
        audit[audit_before..]
            .iter()
            .all(|e| e.event.device.as_ref() == Some(&flood_id)
                || e.event.device.as_ref() == Some(&honest_id))
    );
    // The counters show every refusal and what the log did not take.
    let stats = world.server.service().metrics().snapshot();
    assert!(stats.refusals.get("BadRequest").copied().unwrap_or(0) >= EACH as u64);
    assert!(stats.audit_suppressed >= (3 * EACH - FLOOD_AUDIT_BOUND) as u64);
    // The flooder's record is as it was: its notes changed nothing.
    let record = world.record("SN-FLOOD").unwrap();
    assert_eq!(record.state, onboarder::core::DeviceState::Expected);
    assert!(record.idevid_key.is_none());
    session.close();

    // When the window ends, one summary per kind says how much was left out.
    world.advance_clock(61);
    world.server.service().flush_audit_budget().await;
    let summaries: Vec<_> = world
        .audit()
        .into_iter()
        .filter(|e| {
            e.event.device.as_ref() == Some(&flood_id) && e.event.action == "audit-suppressed"
        })
        .collect();
    assert_eq!(summaries.len(), 3, "{summaries:?}");
    let left_out: usize = summaries
        .iter()
        .map(|e| {
            e.event
                .detail
                .split(' ')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(left_out + from_flooder, 3 * EACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_frames_cost_nothing_until_their_bytes_arrive_and_stay_within_budget() {
    let world = World::with_config(|c| {
        c.limits.frame_bytes_per_connection = 32 * 1024;
        c.limits.frame_bytes_total = 1024 * 1024;
    })
    .await;
    let device = world.device("SN-HOLD");
    world.expect(&["SN-HOLD"], 30).await;
    let announced = message::MAX_REQUEST as u32;
    // 60 connections, 16 streams each, every frame announcing 64 KiB and sending 4 KiB: 3.75
    // MiB would be held without the budgets.
    let mut connections = Vec::new();
    for _ in 0..60 {
        let conn = world.raw_connection(&device).await;
        let mut streams = Vec::new();
        for _ in 0..16 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&announced.to_be_bytes()).await.unwrap();
            send.write_all(&[0xa5; 4096]).await.unwrap();
            streams.push((send, recv));
        }
        connections.push((conn, streams));
    }
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(world.server.frame_bytes_held());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak > 0, "nothing was held");
    assert!(peak <= 1024 * 1024, "held {peak} bytes");
    // Frames over a budget were refused as busy, not held.
    let stats = world.server.service().metrics().snapshot();
    assert!(
        stats.refusals.get("Unavailable").copied().unwrap_or(0) > 0,
        "{stats:?}"
    );
    // Stalled frames are dropped: everything is released.
    eventually(10, "the stalled frames dropped", || {
        world.server.frame_bytes_held() == 0
    })
    .await;
    drop(connections);
    // And the device itself is still served.
    world.agent(&device).onboard().await.unwrap();
}

/// A device whose update flips between two states writes a bounded number of audited changes:
/// after [`onboarder::core::record::MAX_JOB_TRANSITIONS`] only the update's outcome is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flipping_its_update_state_cannot_grow_the_log() {
    use onboarder::core::record::{FirmwareJob, JobState, MAX_JOB_TRANSITIONS};
    use protocol::message::{FirmwareReport, FirmwareState};
    let world = World::new().await;
    let device = world.device("SN-FLIP");
    world.expect(&["SN-FLIP"], 30).await;
    world.agent(&device).onboard().await.unwrap();
    let digest = vec![7u8; 32];
    world
        .plant_job(
            "SN-FLIP",
            FirmwareJob {
                campaign: "c-flip".into(),
                digest: digest.clone(),
                manifest: Vec::new(),
                url: None,
                version: "9.9.9".into(),
                sequence: 9,
                state: JobState::Offered,
                bytes: 0,
                offered_at: now(),
                updated_at: now(),
                transitions: 0,
            },
        )
        .await;
    let before = world.audit().len();
    let session = world.ldevid_session(&device).await;
    let report = |state| Request::FirmwareStatus(FirmwareReport::progress(&digest, state, 1));
    for _ in 0..100 {
        for state in [FirmwareState::Downloading, FirmwareState::Verified] {
            session.exchange(&report(state)).await.unwrap();
        }
    }
    let grown = world.audit().len() - before;
    assert!(
        grown <= MAX_JOB_TRANSITIONS as usize + 5,
        "{grown} entries for 200 reports"
    );
    // The outcome is still taken.
    let r = session
        .exchange(&report(FirmwareState::Failed))
        .await
        .unwrap();
    assert!(matches!(r, protocol::message::Response::Ack), "{r:?}");
    let job = world.record("SN-FLIP").unwrap().firmware_job.unwrap();
    assert!(matches!(job.state, JobState::Failed { .. }));
    session.close();
}
