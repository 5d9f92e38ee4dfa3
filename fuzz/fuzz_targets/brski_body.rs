//! BRSKI bodies over HTTPS: status reports (JSON) and CMS-signed voucher requests.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    onboarder::fuzzing::brski_status(data);
    let _ = certs::cms::verify(data, &[1, 2, 840, 113549, 1, 7, 1], &[]);
});
