use super::*;
use crate::core::testkit::{Kit, NOW};
use certs::factory::{Manufacturer, ManufacturerConfig};

fn anchor_of(m: &Manufacturer, with_masa: bool) -> Anchor {
    let info = certs::CertInfo::parse(m.root_cert()).unwrap();
    Anchor {
        fingerprint: "f".into(),
        subject: info.subject.clone(),
        der: m.root_cert().to_vec(),
        added_at: NOW,
        maker: MakerId::of_spki(&info.spki_der),
        name: "m".into(),
        key_id: info.subject_key_id,
        masa: with_masa.then(|| m.masa_cert().to_vec()),
    }
}

#[test]
fn a_voucher_is_filed_under_the_maker_that_signed_it_or_refused() {
    let kit = Kit::new();
    let stranger = Manufacturer::create(ManufacturerConfig::new("Stranger"), NOW).unwrap();
    let signers = [Signer::of(&anchor_of(&kit.maker, true))];
    let v = |m: &Manufacturer, serial: &str| {
        m.voucher(serial, &kit.owner_root, NOW, NOW + 86_400)
            .unwrap()
    };
    let ours = v(&kit.maker, "SN-1");
    let theirs = v(&stranger, "SN-2");
    // Naming our maker's issuer, signed by someone else.
    let mut crossed = Voucher::parse_unverified(&ours).unwrap();
    crossed.serial_number = "SN-3".into();
    let crossed = crossed.sign(stranger.masa_key()).unwrap();
    let filed = file_vouchers(
        &[ours.clone(), theirs, crossed, ours, b"junk".to_vec()],
        &signers,
    );
    let first = filed[0].as_ref().unwrap();
    assert_eq!(first.id, kit.id("SN-1"));
    assert!(first.checked);
    assert!(
        filed[1]
            .as_ref()
            .unwrap_err()
            .1
            .contains("no imported manufacturer")
    );
    assert!(filed[2].as_ref().unwrap_err().1.contains("does not verify"));
    assert!(filed[3].as_ref().unwrap_err().1.contains("duplicate"));
    assert!(filed[4].is_err());
    // Without the maker's signer, the issuer it names files it, unchecked.
    let unsigned = [Signer::of(&anchor_of(&kit.maker, false))];
    let filed = file_vouchers(&[v(&kit.maker, "SN-4")], &unsigned);
    assert!(!filed[0].as_ref().unwrap().checked);
}

#[test]
fn vouchers_expect_devices_replace_theirs_and_leave_devices_further_on_alone() {
    let kit = Kit::new();
    let signers = [Signer::of(&anchor_of(&kit.maker, true))];
    let file = |bytes: &[u8]| {
        file_vouchers(&[bytes.to_vec()], &signers)
            .pop()
            .unwrap()
            .unwrap()
    };
    let bytes = kit
        .maker
        .voucher("SN-1", &kit.owner_root, NOW, NOW + 86_400)
        .unwrap();
    let filed = file(&bytes);
    let new = voucher(&filed, &bytes, None, &kit.registrar.roots, NOW).unwrap();
    let record = new.write.unwrap();
    assert_eq!(record.state, DeviceState::Expected);
    assert!(
        voucher(
            &filed,
            &bytes,
            Some(record.clone()),
            &kit.registrar.roots,
            NOW
        )
        .unwrap()
        .write
        .is_none()
    );
    let renewed = kit
        .maker
        .voucher("SN-1", &kit.owner_root, NOW, NOW + 2 * 86_400)
        .unwrap();
    let replaced = voucher(
        &file(&renewed),
        &renewed,
        Some(record.clone()),
        &kit.registrar.roots,
        NOW,
    )
    .unwrap();
    assert_eq!(replaced.events[0].action, "voucher-replaced");
    let mut active = record;
    active.state = DeviceState::Active;
    assert!(voucher(&filed, &renewed, Some(active), &kit.registrar.roots, NOW).is_err());
    // Another owner's, and an expired one.
    assert!(
        voucher(
            &filed,
            &bytes,
            None,
            &crate::core::OwnerRoots::new(vec![kit.maker.root_cert().to_vec()], Vec::new()),
            NOW
        )
        .is_err()
    );
    assert!(voucher(&filed, &bytes, None, &kit.registrar.roots, NOW + 86_400).is_err());
}

#[test]
fn anchors_get_unique_names_and_our_own_cas_are_refused() {
    let kit = Kit::new();
    let offered = |m: &Manufacturer| Offered {
        der: m.root_cert().to_vec(),
        info: certs::CertInfo::parse(m.root_cert()).unwrap(),
        fingerprint: crate::operator::sha256_hex(m.root_cert()),
    };
    let (first, events) = anchors(&[offered(&kit.maker)], None, None, &[], &[], NOW).unwrap();
    assert_eq!(first[0].name, "kit-devices");
    assert_eq!(events[0].action, "anchor-imported");
    // A second maker with the same organization gets another name.
    let twin = Manufacturer::create(ManufacturerConfig::new("Kit Devices"), NOW).unwrap();
    let (second, _) = anchors(&[offered(&twin)], None, None, &first, &[], NOW).unwrap();
    assert_eq!(second[0].name, "kit-devices-2");
    // A name another maker has is refused; ours is not a maker.
    assert!(
        anchors(
            &[offered(&twin)],
            None,
            Some("kit-devices"),
            &first,
            &[],
            NOW
        )
        .is_err()
    );
    let own = certs::CertInfo::parse(&kit.owner_root).unwrap();
    let as_maker = Offered {
        der: kit.owner_root.clone(),
        info: own.clone(),
        fingerprint: "x".into(),
    };
    assert!(anchors(&[as_maker], None, None, &[], &[own.spki_der], NOW).is_err());
    // The same anchor again with its signer: updated, not duplicated.
    let (updated, events) = anchors(
        &[offered(&kit.maker)],
        Some(kit.maker.masa_cert()),
        None,
        &first,
        &[],
        NOW,
    )
    .unwrap();
    assert_eq!(events[0].action, "anchor-updated");
    assert_eq!(updated[0].name, "kit-devices");
    assert!(updated[0].masa.is_some());
}
