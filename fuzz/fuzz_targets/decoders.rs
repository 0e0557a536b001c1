//! The network clients' decoders: CrowdSec's decision stream and Go durations, DNS answers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 2 {
        let id = u16::from_be_bytes([data[0], data[1]]);
        if let Ok(records) = sipfilter::dns::parse_answer(data, id) {
            assert!(
                records.len() <= data.len() / 11,
                "more records than the answer can hold"
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sipfilter::crowdsec::parse_stream(text);
        if let Some(secs) = sipfilter::crowdsec::parse_go_duration(text) {
            assert!(!secs.is_nan());
        }
    }
});
