//! EST enrollment bodies (RFC 7030): base64 PKCS#10 with line breaks anywhere.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| onboarder::fuzzing::est_body(data));
