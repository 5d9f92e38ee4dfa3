//! Vouchers: COSE_Sign1 (ours), CMS-signed JSON (RFC 8995, from a MASA), and the bundles an
//! owner imports.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::voucher::{self, MAX_VOUCHER, Voucher};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = Voucher::parse_unverified(data) {
        onboarder_fuzz::round_trip(&v, MAX_VOUCHER);
    }
    for key in &onboarder_fuzz::keys() {
        assert!(
            Voucher::open(data, key).is_err(),
            "a voucher signed by no one opened"
        );
        assert!(certs::brski::open_voucher(data, key).is_err());
    }
    let _ = certs::brski::parse_voucher_unverified(data);
    let _ = certs::brski::voucher_from_json(data);
    let _ = voucher::decode_bundle(data);
});
