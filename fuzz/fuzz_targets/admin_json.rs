//! The admin API's bodies: the first byte picks the body type.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, body)) = data.split_first() {
        onboarder::fuzzing::admin_body(kind, body);
    }
});
