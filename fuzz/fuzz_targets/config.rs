//! The configuration file: any text is refused with file:line or accepted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match sipfilter::config::Config::parse(text, std::path::Path::new("/nonexistent/fuzz.toml")) {
            Ok(c) => {
                let _ = c.kernel_config();
                let _ = c.scanner_rules();
            }
            Err(e) => {
                let shown = e.to_string();
                assert!(shown.starts_with("/nonexistent/"), "an error names the file: {shown}");
            }
        }
    }
});
