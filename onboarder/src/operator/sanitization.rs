//! The certificate of sanitization as a printable HTML document, for people; the certificate
//! itself is made by the core from the verified evidence ([`crate::core::sanitization`]).

use crate::core::sanitization::SanitizationCertificate;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

impl SanitizationCertificate {
    /// A printable HTML document.
    pub fn to_html(&self) -> String {
        let row =
            |k: &str, v: &str| format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(k), escape(v));
        let rows = |k: &str, vs: &[String]| row(k, &vs.join("; "));
        let mut body = String::new();
        body.push_str("<h2>Person performing sanitization</h2><table>\n");
        body.push_str(&row("Performed by", &self.person_performing));
        body.push_str(&row("Organization", &self.organization));
        body.push_str("</table><h2>Media information</h2><table>\n");
        body.push_str(&row("Manufacturer", &self.manufacturer));
        body.push_str(&row("Model", &self.model));
        body.push_str(&row("Serial number", &self.serial_number));
        body.push_str(&row("Media type", &self.media_type));
        body.push_str(&row("Media source", &self.media_source));
        body.push_str("</table><h2>Sanitization details</h2><table>\n");
        body.push_str(&row("Method type", &self.sanitization_method));
        body.push_str(&rows("Method used", &self.sanitization_description));
        body.push_str(&row("Tool used (version)", &self.tool));
        body.push_str(&row("Firmware version", &self.firmware_version));
        body.push_str(&rows("Verification method", &self.verification_method));
        body.push_str(&row("Verified", if self.verified { "yes" } else { "NO" }));
        body.push_str(&row("Started", &super::terminal::when(self.started_on)));
        body.push_str(&row("Finished", &super::terminal::when(self.finished_on)));
        if let Some(t) = &self.data_transfer {
            body.push_str("</table><h2>Data transferred before sanitization</h2><table>\n");
            body.push_str(&row("Encrypted to", &t.recipient));
            body.push_str(&row("Ciphertext SHA-256", &t.sha256));
            body.push_str(&row("Bytes", &t.bytes.to_string()));
            if let Some(at) = t.received_on {
                body.push_str(&row(
                    "Received by the onboarder",
                    &super::terminal::when(at),
                ));
            }
        }
        body.push_str("</table><h2>Media destination</h2><table>\n");
        body.push_str(&row("Destination", &self.media_destination));
        body.push_str("</table><h2>Validation</h2><table>\n");
        body.push_str(&row("Validated by", &self.validated_by));
        body.push_str(&row("Date", &super::terminal::when(self.validated_on)));
        body.push_str(&row("Server nonce", &self.nonce));
        body.push_str(&row("Attestation SHA-256", &self.attestation_sha256));
        body.push_str(
            "</table><h2>Evidence</h2><p>Signed wipe attestation (COSE_Sign1, hex):</p>\n",
        );
        body.push_str(&format!(
            "<pre class=\"hex\">{}</pre>\n",
            escape(&self.attestation)
        ));
        body.push_str("<p>Signed by the device certificate:</p>\n");
        body.push_str(&format!(
            "<pre>{}</pre>\n",
            escape(&self.signer_certificate)
        ));
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
             <title>Certificate of Sanitization: {serial}</title>\n\
             <style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}\
             table{{border-collapse:collapse;width:100%}}th,td{{border:1px solid #999;padding:.3em;\
             text-align:left;vertical-align:top}}th{{width:14em;background:#eee}}\
             pre{{white-space:pre-wrap;word-break:break-all;font-size:.75em}}\
             @media print{{body{{margin:0}}}}</style></head><body>\n\
             <h1>Certificate of Sanitization</h1>\n\
             <p>After NIST SP 800-88 Rev. 1, appendix G. Filled from the device's signed wipe \
             attestation, verified by the onboarder.</p>\n{body}</body></html>\n",
            serial = escape(&self.serial_number)
        )
    }
}
