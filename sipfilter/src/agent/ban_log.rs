//! The agent's log line for each ban the programs report (and the CRACKED alert).

use sipfilter::addr::display_source;
use sipfilter_common::{
    counters::ban_reason,
    scan::{ext_str, Extension},
    BanEvent, Method,
};

/// The extensions a ban event names, in order, without blanks or repeats.
pub fn extensions(e: &BanEvent) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ext in std::iter::once(&e.extension).chain(e.tried.iter()) {
        let s = ext_str(ext);
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

fn answer_based(reason: u8) -> bool {
    matches!(
        reason,
        ban_reason::AUTH_FAILURE | ban_reason::NOT_FOUND | ban_reason::CRACKED | ban_reason::ENUMERATION
    )
}

/// One line per ban: `ban source=… reason=… method=… duration=…s strike=…`, with the answers'
/// figures and the extensions tried for bans made by reading the PBX's answers.
pub fn ban_line(e: &BanEvent, ipv6_prefix: u8) -> String {
    let method = Method::from_u8(e.method).map_or("unknown", Method::name);
    // A prefix ban's source is the prefix itself.
    let source = if e.reason == ban_reason::PREFIX {
        format!("{}/{ipv6_prefix}", display_source(&e.source, 128))
    } else {
        display_source(&e.source, 128)
    };
    let mut line = format!(
        "ban source={} reason={} method={} duration={}s strike={}",
        source,
        ban_reason::name(e.reason),
        method,
        e.duration_ns / 1_000_000_000,
        e.strike,
    );
    if answer_based(e.reason) {
        line.push_str(&format!(
            " failures={} not_found={} extensions={}",
            e.failures,
            e.not_found,
            extensions(e).join(",")
        ));
    }
    if e.monitor != 0 {
        line.push_str(" monitor=true (not dropped)");
    }
    line
}

/// The alert for a cracked extension (None for other bans).
pub fn cracked_line(e: &BanEvent) -> Option<String> {
    if e.reason != ban_reason::CRACKED {
        return None;
    }
    let others = e
        .tried
        .iter()
        .filter(|t| !ext_str(t).is_empty() && **t != e.extension)
        .count();
    Some(format!(
        "CRACKED extension={} source={} after {} failures on {} extensions — change its password{}",
        ext_str(&e.extension as &Extension),
        display_source(&e.source, 128),
        e.failures + e.not_found,
        others,
        if e.monitor != 0 {
            " (monitor mode: nothing dropped)"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipfilter::addr::source_key;
    use sipfilter_common::scan::ext_from;

    #[test]
    fn cracked_event_names_the_extension_the_source_and_the_others_tried() {
        let e = BanEvent {
            source: source_key("203.0.113.9".parse().unwrap(), 64),
            duration_ns: 300_000_000_000,
            strike: 1,
            reason: ban_reason::CRACKED,
            method: Method::Register as u8,
            failures: 1,
            not_found: 1,
            extension: ext_from("202"),
            tried: [ext_from("200"), ext_from("201"), [0; 16], [0; 16]],
            ..Default::default()
        };
        assert_eq!(
            cracked_line(&e).unwrap(),
            "CRACKED extension=202 source=203.0.113.9 after 2 failures on 2 extensions — change its password"
        );
        assert!(ban_line(&e, 64).contains("reason=cracked"));
        assert!(ban_line(&e, 64).ends_with("extensions=202,200,201"));
    }
}
