//! Firmware updates of one device: offering a release, authorising downloads, and following
//! the device's reports (DESIGN 1.3, SUIT RFC 9124).
//!
//! The server never offers a release whose sequence number is not higher than the one the
//! device reports it runs, and records what the device really runs when it says so.

use protocol::message::{FirmwareReport, FirmwareState, Response};

use super::access::{known, ldevid, truncate, usable};
use super::decision::Decision;
use super::error::LifecycleError;
use super::identity::DeviceId;
use super::peer::{CredentialKind, DevicePeer};
use super::record::DeviceRecord;
use super::record::{FirmwareJob, JobState, MAX_JOB_TRANSITIONS};
use super::release::Release;
use super::state::DeviceState;
use crate::audit::AuditEvent;

/// Where a device downloads the image of `digest` when a campaign runs over HTTPS: the
/// policy's `firmware_url` and the image's SHA-256 (the route of the HTTPS listener, which
/// authorises the device by its LDevID); `None` over the device's session. A campaign over
/// HTTPS without a `firmware_url` is refused.
pub fn download_url(
    policy: &super::policy::Policy,
    over_https: bool,
    digest: &[u8],
) -> Result<Option<String>, LifecycleError> {
    if !over_https {
        return Ok(None);
    }
    let base = policy.firmware_url.as_deref().ok_or_else(|| {
        LifecycleError::BadRequest(
            "a campaign over HTTPS needs policy.firmware_url (set by `onboarder init` when \
             --https is on)"
                .into(),
        )
    })?;
    Ok(Some(format!(
        "{}/{}",
        base.trim_end_matches('/'),
        hex::encode(digest)
    )))
}

/// Offers `release` to the device in campaign `campaign`, to download from `url` if given. A
/// device that already runs this sequence number or a higher one gets a skipped job instead
/// (never an offer); an inactive device is refused.
pub fn offer(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    campaign: &str,
    release: &Release,
    url: Option<String>,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    record.require_state(&[DeviceState::Active], "a firmware update")?;
    if record
        .firmware_job
        .as_ref()
        .is_some_and(|j| j.campaign == campaign)
    {
        return Ok(Decision::reply(Response::Ack));
    }
    let state = if record.firmware_sequence >= release.sequence {
        JobState::Skipped {
            reason: format!(
                "the device runs sequence {}, the release is {}",
                record.firmware_sequence, release.sequence
            ),
        }
    } else if record
        .class_id
        .as_deref()
        .is_some_and(|c| c != release.class_id)
    {
        JobState::Skipped {
            reason: format!(
                "the device is a {}, the release is for {}",
                record.class_id.as_deref().unwrap_or_default(),
                release.class_id
            ),
        }
    } else {
        JobState::Offered
    };
    let action = if state == JobState::Offered {
        "firmware-offered"
    } else {
        "firmware-skipped"
    };
    record.firmware_job = Some(FirmwareJob::new(campaign, release, url, state, now));
    record.updated_at = now;
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            action,
            format!(
                "{} (sequence {}) by {campaign}",
                release.version, release.sequence
            ),
            now,
        )],
    ))
}

/// Whether the device may download image `digest`: only an image offered to it, while the
/// update is in progress.
pub fn authorize_download(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    digest: &[u8],
    now: u64,
    grace: u64,
) -> Result<(), LifecycleError> {
    peer.require(CredentialKind::Ldevid, "a firmware download")?;
    let record = usable(peer, record)?;
    ldevid(peer, &record, now, grace)?;
    match &record.firmware_job {
        Some(job) if job.digest == digest && !job.state.is_final() => Ok(()),
        _ => Err(LifecycleError::Unauthorized(
            "no firmware update with this digest is in progress for this device".into(),
        )),
    }
}

/// Authorises a download by a signed URL (the service checked its signature and expiry for
/// `id`): the device may still act and the image is the one of its update in progress.
pub fn authorize_signed_download(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    digest: &[u8],
) -> Result<(), LifecycleError> {
    let record = known(id, record)?;
    if record.state == DeviceState::Quarantined {
        return Err(LifecycleError::Quarantined(record.id));
    }
    record.require_state(&[DeviceState::Active], "a firmware download")?;
    match &record.firmware_job {
        Some(job) if job.digest == digest && !job.state.is_final() => Ok(()),
        _ => Err(LifecycleError::Unauthorized(
            "no firmware update with this digest is in progress for this device".into(),
        )),
    }
}

/// Records a device's report on its update.
pub fn report(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    report: FirmwareReport,
    now: u64,
    grace: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Ldevid, "a firmware report")?;
    let mut record = usable(peer, record)?;
    ldevid(peer, &record, now, grace)?;
    let Some(job) = record
        .firmware_job
        .as_mut()
        .filter(|j| j.digest == report.digest)
    else {
        return Err(LifecycleError::BadRequest(
            "no firmware update with this digest was offered".into(),
        ));
    };
    let reason = truncate(report.reason.clone());
    let state = match report.state {
        FirmwareState::Downloading => JobState::Downloading,
        FirmwareState::Verified => JobState::Verified,
        FirmwareState::Installed => JobState::Installed,
        FirmwareState::Healthy => JobState::Healthy,
        FirmwareState::RolledBack => JobState::RolledBack {
            reason: reason.clone(),
        },
        _ => JobState::Failed {
            reason: reason.clone(),
            refusal: report.refusal,
        },
    };
    if job.state == state && job.bytes == report.bytes {
        return Ok(Decision::reply(Response::Ack));
    }
    if job.state.is_final() {
        // A late or repeated report after the end changes nothing.
        return Ok(Decision::reply(Response::Ack));
    }
    let action = format!("firmware-{}", state.name());
    let detail = format!("{} (sequence {}) {reason}", job.version, job.sequence);
    let changed_state = job.state != state;
    if changed_state && !state.is_final() && job.transitions >= MAX_JOB_TRANSITIONS {
        return Err(LifecycleError::BadRequest(format!(
            "this update changed state {} times; only its outcome is taken now",
            job.transitions
        )));
    }
    job.transitions += u32::from(changed_state);
    job.state = state;
    job.bytes = report.bytes;
    job.updated_at = now;
    if job.state == JobState::Healthy {
        record.firmware_version = Some(job.version.clone());
        record.firmware_sequence = job.sequence;
    }
    record.updated_at = now;
    Ok(Decision::ack(
        record,
        if changed_state {
            vec![AuditEvent::device(
                &peer.id,
                &action,
                detail.trim_end(),
                now,
            )]
        } else {
            Vec::new()
        },
    ))
}

/// Cancels the device's update if it belongs to `campaign` and has not started.
pub fn cancel(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    campaign: &str,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    match record.firmware_job.as_mut() {
        Some(job) if job.campaign == campaign && job.state == JobState::Offered => {
            job.state = JobState::Cancelled;
            job.updated_at = now;
        }
        _ => return Ok(Decision::reply(Response::Ack)),
    }
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "firmware-cancelled",
            campaign,
            now,
        )],
    ))
}

/// Marks a device that cannot take the release (not active) as skipped, so its wave can end.
pub fn skip(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    campaign: &str,
    release: &Release,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    let reason = format!("the device is {}", record.state);
    let state = JobState::Skipped {
        reason: reason.clone(),
    };
    record.firmware_job = Some(FirmwareJob::new(campaign, release, None, state, now));
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "firmware-skipped",
            reason,
            now,
        )],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testkit::{Kit, NOW};
    use protocol::message::ErrorCode;

    fn release(sequence: u64, class: &str) -> Release {
        Release {
            digest: vec![sequence as u8; 32],
            manifest: vec![1],
            vendor_id: "Kit Devices".into(),
            class_id: class.into(),
            sequence,
            version: format!("{sequence}.0"),
            size: 100,
            uploaded_at: NOW,
            sbom: None,
        }
    }

    fn report(digest: &[u8], state: FirmwareState) -> FirmwareReport {
        FirmwareReport::progress(digest, state, 1)
    }

    #[test]
    fn offers_never_go_backwards_nor_to_another_class_nor_to_inactive_devices() {
        let kit = Kit::new();
        let (mut record, _, _) = kit.onboarded("SN-1");
        record.class_id = Some("sensor-1".into());
        record.firmware_sequence = 5;
        let id = record.id.clone();
        let job = |d: Decision| d.write.unwrap().firmware_job.unwrap().state;
        assert!(matches!(
            job(offer(
                &id,
                Some(record.clone()),
                "c",
                &release(5, "sensor-1"),
                None,
                NOW
            )
            .unwrap()),
            JobState::Skipped { .. }
        ));
        assert!(matches!(
            job(offer(
                &id,
                Some(record.clone()),
                "c",
                &release(6, "other"),
                None,
                NOW
            )
            .unwrap()),
            JobState::Skipped { .. }
        ));
        let offered = offer(
            &id,
            Some(record.clone()),
            "c",
            &release(6, "sensor-1"),
            None,
            NOW,
        )
        .unwrap();
        let offered = offered.write.unwrap();
        assert_eq!(
            offered.firmware_job.as_ref().unwrap().state,
            JobState::Offered
        );
        // The same campaign again changes nothing.
        assert!(
            offer(&id, Some(offered), "c", &release(6, "sensor-1"), None, NOW)
                .unwrap()
                .write
                .is_none()
        );
        let expected = kit.expected("SN-2");
        assert_eq!(
            offer(
                &expected.id.clone(),
                Some(expected),
                "c",
                &release(6, "sensor-1"),
                None,
                NOW
            )
            .unwrap_err()
            .code(),
            ErrorCode::WrongState
        );
    }

    #[test]
    fn downloads_are_for_the_offered_image_only_over_the_ldevid() {
        let kit = Kit::new();
        let (record, _, peer) = kit.onboarded("SN-1");
        let (_, idevid) = kit.device("SN-1");
        let id = record.id.clone();
        let r = release(6, "sensor-1");
        let offered = offer(&id, Some(record), "c", &r, None, NOW)
            .unwrap()
            .write
            .unwrap();
        authorize_download(&peer, Some(offered.clone()), &r.digest, NOW, 0).unwrap();
        let code = |e: Result<(), LifecycleError>| e.unwrap_err().code();
        assert_eq!(
            code(authorize_download(
                &peer,
                Some(offered.clone()),
                &[0; 32],
                NOW,
                0
            )),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(authorize_download(
                &idevid,
                Some(offered),
                &r.digest,
                NOW,
                0
            )),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn reports_move_the_job_and_a_flip_flop_is_cut_off() {
        let kit = Kit::new();
        let (record, _, peer) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let r = release(6, "sensor-1");
        let mut record = offer(&id, Some(record), "c", &r, None, NOW)
            .unwrap()
            .write
            .unwrap();
        let e = crate::core::firmware::report(
            &peer,
            Some(record.clone()),
            report(&[0; 32], FirmwareState::Downloading),
            NOW,
            0,
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest, "an image never offered");
        let mut flips = 0;
        for i in 0..100 {
            let state = if i % 2 == 0 {
                FirmwareState::Downloading
            } else {
                FirmwareState::Verified
            };
            match crate::core::firmware::report(
                &peer,
                Some(record.clone()),
                report(&r.digest, state),
                NOW,
                0,
            ) {
                Ok(d) => {
                    if let Some(w) = d.write {
                        record = w;
                        flips += 1;
                    }
                }
                Err(e) => assert_eq!(e.code(), ErrorCode::BadRequest),
            }
        }
        assert_eq!(flips, MAX_JOB_TRANSITIONS as usize);
        // The outcome is still taken, and it is final.
        let healthy = crate::core::firmware::report(
            &peer,
            Some(record),
            report(&r.digest, FirmwareState::Healthy),
            NOW,
            0,
        )
        .unwrap()
        .write
        .unwrap();
        assert_eq!(healthy.firmware_sequence, 6);
        assert!(
            crate::core::firmware::report(
                &peer,
                Some(healthy),
                report(&r.digest, FirmwareState::Downloading),
                NOW,
                0
            )
            .unwrap()
            .write
            .is_none()
        );
    }

    #[test]
    fn a_refusal_is_recorded_with_its_code_and_leaves_the_firmware_alone() {
        let kit = Kit::new();
        let (record, _, peer) = kit.onboarded("SN-1");
        let r = release(6, "sensor-1");
        let record = offer(&record.id.clone(), Some(record), "c", &r, None, NOW)
            .unwrap()
            .write
            .unwrap();
        let refusal = protocol::manifest::ManifestError::Rollback {
            offered: 6,
            installed: 9,
        };
        let failed = crate::core::firmware::report(
            &peer,
            Some(record.clone()),
            FirmwareReport::refused(&r.digest, &refusal),
            NOW,
            0,
        )
        .unwrap()
        .write
        .unwrap();
        let job = failed.firmware_job.as_ref().unwrap();
        assert!(matches!(
            &job.state,
            JobState::Failed {
                refusal: Some(protocol::manifest::FirmwareRefusal::Rollback),
                reason,
            } if reason.contains("rollback")
        ));
        assert_eq!(failed.firmware_sequence, record.firmware_sequence);
        assert_eq!(failed.firmware_version, record.firmware_version);
    }

    #[test]
    fn cancelling_touches_only_offers_not_acted_on() {
        let kit = Kit::new();
        let (record, _, _) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let offered = offer(&id, Some(record), "c", &release(6, "s"), None, NOW)
            .unwrap()
            .write
            .unwrap();
        let cancelled = cancel(&id, Some(offered.clone()), "c", NOW)
            .unwrap()
            .write
            .unwrap();
        assert_eq!(cancelled.firmware_job.unwrap().state, JobState::Cancelled);
        assert!(
            cancel(&id, Some(offered), "another", NOW)
                .unwrap()
                .write
                .is_none()
        );
    }
}
