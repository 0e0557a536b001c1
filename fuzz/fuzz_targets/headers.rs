//! The shared SIP scanners the kernel programs run (header scan and its resumption, URI users,
//! CSeq, request identity, Call-ID, scanner User-Agents, dialed numbers), on any bytes: they
//! must never panic, and what they report must lie inside the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipfilter_common::{
    calls::call_id_hash,
    dialed::{DialPlan, Digits},
    scan::{
        cseq, first_header_line, framing, request_identity, scan_lines, uri_user, Framing, Scan, Wanted, SCAN_LIMIT,
    },
    user_agent::{Candidates, ScannerUserAgents, DEFAULT_TOKENS},
};

const ALL: Wanted = Wanted {
    via: true,
    to: true,
    from: true,
    cseq: true,
    call_id: true,
    user_agent: true,
    credentials: true,
    end: true,
};

fuzz_target!(|msg: &[u8]| {
    let mut scan = Scan {
        wanted: ALL,
        ..Scan::default()
    };
    if let Some(first) = first_header_line(msg, 0) {
        let mut at = first;
        // As the kernel does: rounds of lines, each going on where the last stopped.
        for _ in 0..4 {
            scan_lines(msg, at, &mut scan);
            let f = scan.found;
            for pos in [
                f.via_at,
                f.to_at,
                f.from_at,
                f.cseq_at,
                f.call_id_at,
                f.user_agent_at,
                f.resume_at,
            ] {
                assert!(
                    pos < SCAN_LIMIT && pos <= msg.len(),
                    "a position outside the message: {pos}"
                );
            }
            if f.resume_at == 0 {
                break;
            }
            assert!(f.resume_at > at, "a resumed scan goes forward");
            at = f.resume_at;
        }
    }
    let f = scan.found;
    if let Framing::Length(n) = framing(msg, &f) {
        assert!(f.body_at != 0 && n >= f.body_at, "a message ends after its headers");
    }
    let _ = uri_user(msg, f.to_at);
    let _ = uri_user(msg, f.from_at);
    let id = cseq(msg, f.cseq_at).map_or(0, |c| c.0);
    let _ = request_identity(msg, f.via_at, id);
    let _ = call_id_hash(msg, f.call_id_at);
    let mut rules = ScannerUserAgents::default();
    for t in DEFAULT_TOKENS {
        let _ = rules.add(t.as_bytes());
    }
    if let Some(i) = rules.find(msg, f.user_agent_at, &mut Candidates::default()) {
        assert!(i < DEFAULT_TOKENS.len());
    }
    let _ = DialPlan::default().dialed(msg, 0);
    let plan = DialPlan {
        outside_line: Digits::parse("0").unwrap_or(Digits::EMPTY),
        country_code: Digits::parse("49").unwrap_or(Digits::EMPTY),
        trunk_prefix: Digits::parse("0").unwrap_or(Digits::EMPTY),
        ..DialPlan::default()
    };
    let _ = plan.dialed(msg, 0);
});
