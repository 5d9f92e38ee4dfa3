//! Certificates devices present (IDevIDs, with their HardwareModuleName) and the chains an
//! owner imports, as our code reads them after the TLS library.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = certs::inspect::CertInfo::parse(data) {
        let _ = info.device_serial();
    }
    let _ = certs::der::parse_hardware_module_name(data);
    let anchors = [data.to_vec()];
    let _ = certs::chain::verify(
        data,
        &[],
        &anchors,
        1_800_000_000,
        certs::chain::Usage::ClientAuth,
    );
});
