//! A CoAP session's messages in order, through the listener's message layer (deduplication,
//! Block1 reassembly, Block2 downloads).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    onboarder::fuzzing::coap_session(&onboarder_fuzz::messages(data));
});
