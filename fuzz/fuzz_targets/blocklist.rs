//! Blocklist imports, plain and APIBAN JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = sipfilter::blocklist::parse(text) {
            for r in &p.rejected {
                assert!(!r.error.is_empty(), "a rejected entry says why");
            }
        }
    }
});
