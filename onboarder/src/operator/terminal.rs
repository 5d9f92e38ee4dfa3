//! Text from devices, shown to people.
//!
//! Devices choose some of what operators read: voucher-status and failure reasons, firmware
//! and agent versions, the fields of a wipe attestation. Printed as they are, control
//! characters in them could move the cursor, recolour or erase lines, and forge output (a fake
//! audit entry, say). Human output passes such text through [`shown`]; JSON output is escaped
//! by the encoder already. Times are shown in RFC 3339 ([`when`]).

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0, DEL, C1) and every bidirectional-formatting
/// character written as a `\u{..}` escape, so it prints as one inert line.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `secs` since the epoch as an RFC 3339 UTC time (`2026-12-02T05:22:38Z`), for people.
pub fn when(secs: u64) -> String {
    certs::rfc3339(secs)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(when(1_796_191_070), "2026-12-02T05:57:50Z");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(shown("plain text 1.2.3"), Cow::Borrowed(_)));
        assert_eq!(
            shown("bad\n      42 1700000000 operator anchor-imported\x1b[2K"),
            "bad\\u{a}      42 1700000000 operator anchor-imported\\u{1b}[2K"
        );
        assert_eq!(shown("a\u{202e}b\u{9b}c\x7f"), "a\\u{202e}b\\u{9b}c\\u{7f}");
    }
}
