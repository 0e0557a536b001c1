//! The agent's own files, which a crash, a full disk or a hand edit may have damaged: the
//! state file, the audit trail and the blocked-call record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sipfilter::state_file::parse(text);
        for line in text.lines() {
            let _ = serde_json_line::<sipfilter::event_log::Event>(line);
            let _ = serde_json_line::<sipfilter::fraud_file::BlockedCall>(line);
        }
    }
});

fn serde_json_line<T: for<'a> serde::Deserialize<'a>>(line: &str) -> Option<T> {
    serde_json::from_str(line).ok()
}
