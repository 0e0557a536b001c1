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
            " rule={} failures={} not_found={} extensions={}",
            rule(e.reason),
            e.failures,
            e.not_found,
            extensions(e).join(",")
        ));
        if e.device_port != 0 {
            line.push_str(&format!(" device={}", device(e)));
        }
    }
    if e.monitor != 0 {
        line.push_str(" monitor=true (not dropped)");
    }
    line
}

/// The device an answer-based event is about: `address:port` (`[v6]:port`).
pub fn device(e: &BanEvent) -> String {
    let source = display_source(&e.source, 128);
    if source.contains(':') {
        format!("[{source}]:{}", e.device_port)
    } else {
        format!("{source}:{}", e.device_port)
    }
}

/// Which rule of docs/judging.md made an answer-based ban.
fn rule(reason: u8) -> &'static str {
    match reason {
        ban_reason::AUTH_FAILURE => "failure-budget",
        ban_reason::NOT_FOUND => "not-found-budget",
        ban_reason::CRACKED => "moved-on-to-a-2xx",
        ban_reason::ENUMERATION => "unanswered-challenges",
        _ => "-",
    }
}

/// The alert for a suspect 2xx withheld once (None for other events): nobody is banned.
pub fn suspect_line(e: &BanEvent) -> Option<String> {
    if e.reason != ban_reason::SUSPECT {
        return None;
    }
    Some(format!(
        "SUSPECT extension={} source={} device={} after {} failures on other extensions: its 2xx withheld once (a phone retransmits and gets in; a robot that moved on does not){}",
        ext_str(&e.extension as &Extension),
        display_source(&e.source, 128),
        device(e),
        e.failures + e.not_found,
        if e.monitor != 0 {
            " (monitor mode: nothing withheld)"
        } else {
            ""
        }
    ))
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
        "CRACKED extension={} source={} device={} after {} failures on {} extensions — change its password{}",
        ext_str(&e.extension as &Extension),
        display_source(&e.source, 128),
        device(e),
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
            device_port: 5062,
            ..Default::default()
        };
        assert_eq!(
            cracked_line(&e).unwrap(),
            "CRACKED extension=202 source=203.0.113.9 device=203.0.113.9:5062 after 2 failures on 2 extensions — change its password"
        );
        let line = ban_line(&e, 64);
        assert!(line.contains("reason=cracked"), "{line}");
        assert!(line.contains("rule=moved-on-to-a-2xx"), "{line}");
        assert!(
            line.ends_with("extensions=202,200,201 device=203.0.113.9:5062"),
            "{line}"
        );
        assert!(suspect_line(&e).is_none());
        let suspect = BanEvent {
            reason: ban_reason::SUSPECT,
            duration_ns: 0,
            ..e
        };
        let alert = suspect_line(&suspect).unwrap();
        assert!(
            alert.starts_with("SUSPECT extension=202 source=203.0.113.9 device=203.0.113.9:5062"),
            "{alert}"
        );
    }
}
