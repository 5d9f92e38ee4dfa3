//! Voucher requests a pledge signs with its IDevID key: COSE_Sign1 (ours) and CMS-signed JSON
//! (RFC 8995, from BRSKI clients), and a registrar's voucher request as a MASA reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::voucher::VoucherRequest;

fuzz_target!(|data: &[u8]| {
    for key in &onboarder_fuzz::keys() {
        assert!(
            VoucherRequest::open(data, key).is_err(),
            "a request signed by no one opened"
        );
        assert!(certs::brski::open_request(data, key).is_err());
    }
    let _ = certs::brski::request_from_json(data);
    let _ = certs::brski::request_certificates(data);
    let _ = certs::brski::open_registrar_request(data);
});
