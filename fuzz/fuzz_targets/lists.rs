//! List files (CIDRs, number prefixes), durations and host names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sipfilter::config::parse_prefixes(text, "fuzz.txt", true);
        for line in text.lines() {
            if let Ok(c) = line.trim().parse::<sipfilter::Cidr>() {
                // What is printed parses back to the same.
                let again: sipfilter::Cidr = c.to_string().parse().expect("a printed CIDR parses");
                assert_eq!(again.to_string(), c.to_string());
            }
            let _ = sipfilter::duration::parse_duration(line);
            let _ = sipfilter::dns::is_host_name(line);
        }
    }
});
