//! The fixture table: every row a description, a frame from the packet builder, the verdict
//! the program must give and the counters that must move, run through the real program with
//! BPF_PROG_TEST_RUN (in the style of Katran's test fixtures).
//!
//! BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header, so truncation rows
//! start at 14 bytes: "cut after the Ethernet header" is the shortest frame a NIC delivers.

use std::net::{Ipv4Addr, Ipv6Addr};

use sipfilter_common::{
    counters::AnswerKind,
    scan::{MAX_LINES, MAX_SCAN_ROUNDS},
    Method, Outcome, Verdict,
};
use sipfilter_tests::{
    harness::{action_name, TestFilter, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    packet::{sip_answer, sip_request, sip_response, PacketBuilder as P, TPID_8021AD, TPID_8021Q},
    peer::Peer,
};

struct Row {
    what: String,
    frame: Vec<u8>,
    action: u32,
    outcome: Outcome,
    method: Option<Method>,
}

const METHODS: [(&str, Method); 14] = [
    ("REGISTER", Method::Register),
    ("INVITE", Method::Invite),
    ("OPTIONS", Method::Options),
    ("ACK", Method::Ack),
    ("BYE", Method::Bye),
    ("CANCEL", Method::Cancel),
    ("SUBSCRIBE", Method::Subscribe),
    ("NOTIFY", Method::Notify),
    ("MESSAGE", Method::Message),
    ("INFO", Method::Info),
    ("PRACK", Method::Prack),
    ("UPDATE", Method::Update),
    ("REFER", Method::Refer),
    ("PUBLISH", Method::Publish),
];

fn src4() -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 7)
}
fn src6() -> Ipv6Addr {
    "2001:db8:77::7".parse().unwrap()
}
fn dst4() -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1)
}

fn pass(what: impl Into<String>, frame: Vec<u8>, outcome: Outcome, method: Option<Method>) -> Row {
    Row {
        what: what.into(),
        frame,
        action: XDP_PASS,
        outcome,
        method,
    }
}

fn table() -> Vec<Row> {
    let mut rows = Vec::new();

    // Every request method, IPv4 and IPv6, plain Ethernet.
    for (name, m) in METHODS {
        rows.push(pass(
            format!("IPv4 {name}"),
            P::sip4(src4(), name).build().bytes,
            Outcome::Accepted,
            Some(m),
        ));
    }
    for (name, m) in [
        ("REGISTER", Method::Register),
        ("INVITE", Method::Invite),
        ("OPTIONS", Method::Options),
        ("BYE", Method::Bye),
    ] {
        rows.push(pass(
            format!("IPv6 {name}"),
            P::sip6(src6(), name).build().bytes,
            Outcome::Accepted,
            Some(m),
        ));
    }

    // Responses and things that are not SIP messages but arrive on the SIP port.
    for status in ["200 OK", "401 Unauthorized", "404 Not Found"] {
        rows.push(pass(
            format!("IPv4 response {status}"),
            P::udp4(src4(), dst4(), 5060, 5060, &sip_response(status)).build().bytes,
            Outcome::Accepted,
            Some(Method::Response),
        ));
    }
    rows.push(pass(
        "IPv6 response 200",
        P::udp6(
            src6(),
            "2001:db8::1".parse().unwrap(),
            5060,
            5060,
            &sip_response("200 OK"),
        )
        .build()
        .bytes,
        Outcome::Accepted,
        Some(Method::Response),
    ));
    for (what, payload) in [
        ("CRLF keep-alive", &b"\r\n\r\n"[..]),
        ("empty UDP payload", b""),
        ("HTTP request on the SIP port", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("lower-case method", b"register sip:200@pbx SIP/2.0\r\n\r\n"),
        ("method glued to a letter", b"REGISTERX sip:200@pbx SIP/2.0\r\n\r\n"),
        (
            "random bytes",
            &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        ),
    ] {
        rows.push(pass(
            what,
            P::udp4(src4(), dst4(), 5060, 5060, payload).build().bytes,
            Outcome::Accepted,
            Some(Method::Unknown),
        ));
    }

    // Receivers ignore CRLFs before the start line: so does the classifier (up to two).
    for (what, payload, method) in [
        (
            "CRLF then REGISTER",
            &b"\r\nREGISTER sip:200@pbx SIP/2.0\r\n\r\n"[..],
            Method::Register,
        ),
        (
            "two CRLFs then INVITE",
            b"\r\n\r\nINVITE sip:200@pbx SIP/2.0\r\n\r\n",
            Method::Invite,
        ),
        (
            "three CRLFs then REGISTER",
            b"\r\n\r\n\r\nREGISTER sip:200@pbx SIP/2.0\r\n\r\n",
            Method::Unknown,
        ),
    ] {
        rows.push(pass(
            what,
            P::udp4(src4(), dst4(), 5060, 5060, payload).build().bytes,
            Outcome::Accepted,
            Some(method),
        ));
    }

    // Traffic that is not SIP by port or protocol.
    for (what, dport) in [
        ("REGISTER to 5061 (TLS port)", 5061),
        ("DNS query", 53),
        ("reply to an ephemeral port", 40000),
    ] {
        rows.push(pass(
            what,
            P::udp4(src4(), dst4(), 5060, dport, &sip_request("REGISTER", "200"))
                .build()
                .bytes,
            Outcome::NotSipPort,
            None,
        ));
    }
    // TCP: a segment that starts a message is read like a datagram; the rest is judged by
    // the lists and bans alone.
    rows.push(pass(
        "TCP: a REGISTER at the start of a segment",
        P::sip4(src4(), "REGISTER").tcp().build().bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));
    rows.push(pass(
        "TCP: a REGISTER after 12 bytes of options",
        P::sip4(src4(), "REGISTER").tcp_options(12).build().bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));
    rows.push(pass(
        "TCP: a SYN",
        P::sip4(src4(), "REGISTER").syn().build().bytes,
        Outcome::Connection,
        None,
    ));
    for (what, flags) in [("an ACK", 0x10), ("a FIN", 0x11), ("an RST", 0x04), ("a SYN-ACK", 0x12)] {
        let mut b = P::sip4(src4(), "REGISTER").tcp_flags(flags);
        b = b.truncate_payload();
        rows.push(pass(format!("TCP: {what}"), b.build().bytes, Outcome::Segment, None));
    }
    rows.push(pass(
        "TCP: a continuation (no start line)",
        P::udp4(
            src4(),
            dst4(),
            40000,
            5060,
            b"Contact: <sip:201@10.0.0.2;transport=tcp>\r\n\r\n",
        )
        .tcp()
        .build()
        .bytes,
        Outcome::Segment,
        None,
    ));
    rows.push(pass(
        "TCP: TLS data to 5061",
        P::udp4(
            src4(),
            dst4(),
            40000,
            5061,
            &[0x17, 0x03, 0x03, 0, 40, 1, 2, 3, 4, 5, 6, 7],
        )
        .tcp()
        .build()
        .bytes,
        Outcome::Segment,
        None,
    ));
    rows.push(pass(
        "TCP to another port",
        P::udp4(src4(), dst4(), 40000, 5070, &sip_request("REGISTER", "201"))
            .tcp()
            .build()
            .bytes,
        Outcome::NotSipPort,
        None,
    ));
    rows.push(pass(
        "ICMP echo",
        P::sip4(src4(), "REGISTER").icmp().build().bytes,
        Outcome::OtherTransport,
        None,
    ));
    rows.push(pass(
        "IPv6 TCP: a REGISTER",
        P::sip6(src6(), "REGISTER").tcp().build().bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));
    rows.push(pass(
        "IPv6 TCP: a SYN",
        P::sip6(src6(), "REGISTER").syn().build().bytes,
        Outcome::Connection,
        None,
    ));
    rows.push(pass(
        "ARP",
        P::other_ethertype(0x0806).build().bytes,
        Outcome::NotIp,
        None,
    ));
    rows.push(pass(
        "LLDP",
        P::other_ethertype(0x88cc).build().bytes,
        Outcome::NotIp,
        None,
    ));
    rows.push(pass(
        "VLAN-tagged ARP",
        P::other_ethertype(0x0806).vlan(TPID_8021Q, 5).build().bytes,
        Outcome::NotIp,
        None,
    ));

    // IPv4 header variants.
    for opts in [4, 8, 20, 40] {
        rows.push(pass(
            format!("IPv4 with {opts} bytes of options"),
            P::sip4(src4(), "REGISTER").ip_options(opts).build().bytes,
            Outcome::Accepted,
            Some(Method::Register),
        ));
    }
    let mut bad_ihl = P::sip4(src4(), "REGISTER").build();
    bad_ihl.bytes[14] = 0x44; // IHL 4 words < 20 bytes
    rows.push(pass("IPv4 IHL below 5", bad_ihl.bytes, Outcome::Malformed, None));
    let mut bad_version = P::sip4(src4(), "REGISTER").build();
    bad_version.bytes[14] = 0x55;
    rows.push(pass(
        "IPv4 EtherType carrying version 5",
        bad_version.bytes,
        Outcome::Malformed,
        None,
    ));
    let mut huge_ihl = P::udp4(src4(), dst4(), 5060, 5060, b"").build();
    huge_ihl.bytes[14] = 0x4f; // 60-byte header in a frame that ends after 28 bytes of IP
    rows.push(pass(
        "IPv4 IHL past the end of the frame",
        huge_ihl.bytes,
        Outcome::Malformed,
        None,
    ));

    // Fragments: the first carries the UDP header and is judged, later ones cannot be.
    rows.push(pass(
        "IPv4 first fragment of a REGISTER",
        P::sip4(src4(), "REGISTER").fragment(0, true).build().bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));
    rows.push(pass(
        "IPv4 later fragment",
        P::sip4(src4(), "REGISTER").fragment(185, false).build().bytes,
        Outcome::Fragment,
        None,
    ));
    rows.push(pass(
        "IPv6 first fragment of an INVITE",
        P::sip6(src6(), "INVITE").fragment(0, true).build().bytes,
        Outcome::Accepted,
        Some(Method::Invite),
    ));
    rows.push(pass(
        "IPv6 later fragment",
        P::sip6(src6(), "INVITE").fragment(100, false).build().bytes,
        Outcome::Fragment,
        None,
    ));

    // IPv6 extension headers.
    for (what, exts) in [
        ("hop-by-hop", vec![(0u8, 8usize)]),
        ("routing", vec![(43, 24)]),
        ("destination options", vec![(60, 16)]),
        (
            "hop-by-hop, destination options, routing",
            vec![(0, 8), (60, 8), (43, 24)],
        ),
        (
            "six headers (the walk's limit)",
            vec![(0, 8), (60, 8), (43, 8), (60, 8), (60, 8), (60, 8)],
        ),
    ] {
        let mut b = P::sip6(src6(), "REGISTER");
        for (p, l) in exts {
            b = b.ext(p, l);
        }
        rows.push(pass(
            format!("IPv6 REGISTER after {what}"),
            b.build().bytes,
            Outcome::Accepted,
            Some(Method::Register),
        ));
    }
    let mut seven = P::sip6(src6(), "REGISTER");
    for _ in 0..7 {
        seven = seven.ext(60, 8);
    }
    rows.push(pass(
        "IPv6 with seven extension headers",
        seven.build().bytes,
        Outcome::Malformed,
        None,
    ));
    rows.push(pass(
        "IPv6 TCP after a hop-by-hop header",
        P::sip6(src6(), "REGISTER").ext(0, 8).tcp().build().bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));

    // VLAN tags.
    rows.push(pass(
        "802.1Q IPv4 REGISTER",
        P::sip4(src4(), "REGISTER").vlan(TPID_8021Q, 100).build().bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));
    rows.push(pass(
        "802.1Q IPv6 INVITE",
        P::sip6(src6(), "INVITE").vlan(TPID_8021Q, 100).build().bytes,
        Outcome::Accepted,
        Some(Method::Invite),
    ));
    rows.push(pass(
        "QinQ (802.1ad + 802.1Q) IPv4 INVITE",
        P::sip4(src4(), "INVITE")
            .vlan(TPID_8021AD, 10)
            .vlan(TPID_8021Q, 20)
            .build()
            .bytes,
        Outcome::Accepted,
        Some(Method::Invite),
    ));
    rows.push(pass(
        "QinQ IPv6 OPTIONS",
        P::sip6(src6(), "OPTIONS")
            .vlan(TPID_8021AD, 10)
            .vlan(TPID_8021Q, 20)
            .build()
            .bytes,
        Outcome::Accepted,
        Some(Method::Options),
    ));
    rows.push(pass(
        "two 802.1Q tags",
        P::sip4(src4(), "REGISTER")
            .vlan(TPID_8021Q, 10)
            .vlan(TPID_8021Q, 20)
            .build()
            .bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));
    rows.push(pass(
        "three tags",
        P::sip4(src4(), "REGISTER")
            .vlan(TPID_8021AD, 1)
            .vlan(TPID_8021Q, 2)
            .vlan(TPID_8021Q, 3)
            .build()
            .bytes,
        Outcome::Malformed,
        None,
    ));
    rows.push(pass(
        "QinQ TCP",
        P::sip4(src4(), "REGISTER")
            .vlan(TPID_8021AD, 10)
            .vlan(TPID_8021Q, 20)
            .tcp()
            .build()
            .bytes,
        Outcome::Accepted,
        Some(Method::Register),
    ));

    // Truncated frames: cut at every layer boundary and inside every header.
    let v4 = P::sip4(src4(), "REGISTER").vlan(TPID_8021Q, 7).build();
    let ip = v4.offset_of("ip").unwrap();
    let l4 = v4.offset_of("l4").unwrap();
    let payload = v4.offset_of("payload").unwrap();
    for (what, len, outcome, method) in [
        ("IPv4/VLAN cut after the Ethernet header", 14, Outcome::Malformed, None),
        ("IPv4/VLAN cut inside the tag", 16, Outcome::Malformed, None),
        ("IPv4/VLAN cut after the tag", ip, Outcome::Malformed, None),
        ("IPv4/VLAN cut inside the IP header", ip + 10, Outcome::Malformed, None),
        ("IPv4/VLAN cut after the IP header", l4, Outcome::Malformed, None),
        ("IPv4/VLAN cut inside the UDP header", l4 + 4, Outcome::Malformed, None),
        (
            "IPv4/VLAN cut after the UDP header",
            payload,
            Outcome::Accepted,
            Some(Method::Unknown),
        ),
        (
            "IPv4/VLAN cut 8 bytes into the SIP line",
            payload + 8,
            Outcome::Accepted,
            Some(Method::Unknown),
        ),
        (
            "IPv4/VLAN cut 16 bytes into the SIP line",
            payload + 16,
            Outcome::Accepted,
            Some(Method::Register),
        ),
    ] {
        rows.push(pass(what, v4.truncated(len), outcome, method));
    }
    let v6 = P::sip6(src6(), "INVITE").ext(0, 8).build();
    let ip = v6.offset_of("ip").unwrap();
    let ext = v6.offset_of("ext").unwrap();
    let l4 = v6.offset_of("l4").unwrap();
    let payload = v6.offset_of("payload").unwrap();
    for (what, len, outcome, method) in [
        ("IPv6 cut after the Ethernet header", ip, Outcome::Malformed, None),
        ("IPv6 cut inside the IPv6 header", ip + 20, Outcome::Malformed, None),
        ("IPv6 cut after the IPv6 header", ext, Outcome::Malformed, None),
        (
            "IPv6 cut inside the hop-by-hop header",
            ext + 1,
            Outcome::Malformed,
            None,
        ),
        ("IPv6 cut after the hop-by-hop header", l4, Outcome::Malformed, None),
        ("IPv6 cut inside the UDP header", l4 + 6, Outcome::Malformed, None),
        (
            "IPv6 cut after the UDP header",
            payload,
            Outcome::Accepted,
            Some(Method::Unknown),
        ),
    ] {
        rows.push(pass(what, v6.truncated(len), outcome, method));
    }
    let plain = P::sip4(src4(), "REGISTER").build();
    rows.push(pass(
        "IPv4 cut after the Ethernet header",
        plain.truncated(14),
        Outcome::Malformed,
        None,
    ));

    rows
}

#[test]
fn fixture_table() -> anyhow::Result<()> {
    let rows = table();
    assert!(rows.len() >= 60, "the table has {} rows", rows.len());
    let filter = TestFilter::new()?;
    let mut failures = Vec::new();
    for row in &rows {
        let before = filter.counters()?;
        let action = filter.run(&row.frame)?;
        let after = filter.counters()?;

        let verdict = if row.action == XDP_DROP {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
        let mut problems = Vec::new();
        if action != row.action {
            problems.push(format!(
                "verdict {} (expected {})",
                action_name(action),
                action_name(row.action)
            ));
        }
        for v in Verdict::ALL {
            let moved = after.verdict(v) - before.verdict(v);
            let want = u64::from(v == verdict);
            if moved != want {
                problems.push(format!(
                    "verdict counter {} moved by {moved}, expected {want}",
                    v.name()
                ));
            }
        }
        for o in Outcome::ALL {
            let moved = after.outcome(o) - before.outcome(o);
            let want = u64::from(o == row.outcome);
            if moved != want {
                problems.push(format!(
                    "outcome counter {} moved by {moved}, expected {want}",
                    o.name()
                ));
            }
        }
        for m in Method::ALL {
            let moved = after.method(m) - before.method(m);
            let want = u64::from(Some(m) == row.method);
            if moved != want {
                problems.push(format!("method counter {} moved by {moved}, expected {want}", m.name()));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", row.what, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // Nothing in the table is an attack: no row may have created a ban.
    assert!(filter.loaded.maps.bans()?.is_empty());
    Ok(())
}

/// A row of the answers (egress) program's table: what it must count for an outgoing frame.
struct AnswerRow {
    what: String,
    frame: Vec<u8>,
    /// The answer kind counted (None: not an answer from a SIP port, nothing counted).
    kind: Option<AnswerKind>,
    /// Counted as uninspected: an answer worth judging whose headers could not be read.
    uninspected: bool,
}

fn answer(what: impl Into<String>, payload: &[u8], kind: Option<AnswerKind>, uninspected: bool) -> AnswerRow {
    AnswerRow {
        what: what.into(),
        frame: P::answer4(src4(), payload).build().bytes,
        kind,
        uninspected,
    }
}

fn answer_table() -> Vec<AnswerRow> {
    use AnswerKind::*;
    let mut rows = Vec::new();
    for (status, method, kind) in [
        ("100 Trying", "INVITE", Provisional),
        ("180 Ringing", "INVITE", Provisional),
        ("200 OK", "REGISTER", Success),
        ("200 OK", "INVITE", Success),
        ("202 Accepted", "REFER", Success),
        ("401 Unauthorized", "REGISTER", Challenge),
        ("407 Proxy Authentication Required", "INVITE", Challenge),
        ("403 Forbidden", "REGISTER", Forbidden),
        ("404 Not Found", "REGISTER", NotFound),
        ("484 Address Incomplete", "INVITE", NotFound),
        ("604 Does Not Exist Anywhere", "INVITE", NotFound),
        ("486 Busy Here", "INVITE", OtherFailure),
        ("503 Service Unavailable", "REGISTER", OtherFailure),
    ] {
        rows.push(answer(
            format!("{status} to {method}"),
            &sip_answer(status, method, 2, "201", "201"),
            Some(kind),
            false,
        ));
    }
    // Header forms the scanner must read: compact, lower case, spaces before the colon,
    // a folded To, a display name with a colon, a tel: URI.
    for (what, text) in [
        ("compact t/f headers", "SIP/2.0 401 Unauthorized\r\nv: SIP/2.0/UDP x\r\nf: <sip:201@h>;tag=1\r\nt: <sip:201@h>\r\ni: c@x\r\nCSeq: 2 REGISTER\r\n\r\n"),
        ("lower-case names", "SIP/2.0 404 Not Found\r\nvia: SIP/2.0/UDP x\r\nfrom: <sip:7@h>;tag=1\r\nto: <sip:7@h>\r\ncseq: 1 REGISTER\r\n\r\n"),
        ("spaces before colons", "SIP/2.0 403 Forbidden\r\nFrom  : <sip:7@h>;tag=1\r\nTo  :  <sip:7@h>\r\nCSeq :  9   REGISTER\r\n\r\n"),
        ("folded To header", "SIP/2.0 401 Unauthorized\r\nFrom: <sip:7@h>;tag=1\r\nTo:\r\n  \"Desk: 7\" <sip:7@h>\r\nCSeq: 3 REGISTER\r\n\r\n"),
        ("tel: caller of an INVITE", "SIP/2.0 407 Proxy Authentication Required\r\nFrom: <tel:+4930123;phone-context=x>;tag=1\r\nTo: <sip:900@h>\r\nCSeq: 1 INVITE\r\n\r\n"),
    ] {
        let kind = match &text[8..11] {
            "401" | "407" => Challenge,
            "403" => Forbidden,
            _ => NotFound,
        };
        rows.push(answer(what, text.as_bytes(), Some(kind), false));
    }
    // Answers worth judging whose headers cannot be read: counted, passed, not judged.
    rows.push(answer(
        "401 with no headers",
        b"SIP/2.0 401 Unauthorized\r\n\r\n",
        Some(Challenge),
        true,
    ));
    rows.push(answer(
        "404 without a CSeq",
        b"SIP/2.0 404 Not Found\r\nTo: <sip:7@h>\r\nFrom: <sip:7@h>\r\n\r\n",
        Some(NotFound),
        true,
    ));
    rows.push(answer(
        "401 whose To has no user",
        b"SIP/2.0 401 Unauthorized\r\nTo: <sip:pbx.example>\r\nCSeq: 1 REGISTER\r\n\r\n",
        Some(Challenge),
        true,
    ));
    // The line bound: MAX_SCAN_ROUNDS rounds of MAX_LINES lines (32). Short Vias keep both
    // messages well inside the byte bound, so the line bound is what decides.
    let bound = MAX_SCAN_ROUNDS as usize * MAX_LINES;
    let vias = |n: usize| {
        let mut m = b"SIP/2.0 401 Unauthorized\r\n".to_vec();
        for i in 0..n {
            m.extend_from_slice(format!("v: SIP/2.0/UDP p{i}\r\n").as_bytes());
        }
        m.extend_from_slice(b"From: <sip:201@h>;tag=1\r\nTo: <sip:201@h>\r\nCSeq: 1 REGISTER\r\n\r\n");
        m
    };
    rows.push(answer(
        format!("CSeq on line {} (the last the bound reads)", bound),
        &vias(bound - 3),
        Some(Challenge),
        false,
    ));
    rows.push(answer(
        format!("CSeq on line {} (beyond the line bound)", bound + 1),
        &vias(bound - 2),
        Some(Challenge),
        true,
    ));
    // Through three proxies (four Vias, each 60 bytes).
    let mut proxied = b"SIP/2.0 401 Unauthorized\r\n".to_vec();
    for i in 0..3 {
        proxied.extend_from_slice(format!("Via: SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bK-p{i}\r\n").as_bytes());
    }
    proxied.extend_from_slice(&sip_answer("401 Unauthorized", "REGISTER", 2, "201", "201")[26..]);
    rows.push(answer(
        "401 through three proxies (4 Vias)",
        &proxied,
        Some(Challenge),
        false,
    ));
    let full = sip_answer("401 Unauthorized", "REGISTER", 2, "201", "201");
    for cut in [40, 120, 160] {
        rows.push(answer(
            format!("401 cut at {cut} payload bytes"),
            &full[..cut],
            Some(Challenge),
            true,
        ));
    }
    // Not answers from a SIP port: nothing counted.
    rows.push(answer(
        "a request the PBX sends",
        &sip_request("OPTIONS", "201"),
        None,
        false,
    ));
    rows.push(answer(
        "not SIP from the SIP port",
        b"HTTP/1.1 200 OK\r\n\r\n",
        None,
        false,
    ));
    rows.push(answer(
        "a bad status code",
        b"SIP/2.0 2x0 OK\r\nCSeq: 1 REGISTER\r\n\r\n",
        None,
        false,
    ));
    rows.push(AnswerRow {
        what: "an answer from another port".into(),
        frame: P::udp4(dst4(), src4(), 5070, 5060, &full).build().bytes,
        kind: None,
        uninspected: false,
    });
    rows.push(AnswerRow {
        what: "a 401 over TCP from the SIP port".into(),
        frame: P::udp4(dst4(), src4(), 5060, 40000, &full).tcp().build().bytes,
        kind: Some(AnswerKind::Challenge),
        uninspected: false,
    });
    rows.push(AnswerRow {
        what: "IPv6 401 in a VLAN".into(),
        frame: P::udp6("2001:db8::1".parse().unwrap(), src6(), 5060, 5060, &full)
            .vlan(TPID_8021Q, 7)
            .build()
            .bytes,
        kind: Some(Challenge),
        uninspected: false,
    });
    rows
}

#[test]
fn answer_table_through_the_answers_program() -> anyhow::Result<()> {
    let rows = answer_table();
    let filter = TestFilter::new()?;
    let mut failures = Vec::new();
    for row in &rows {
        let before = filter.counters()?;
        let action = filter.run_answer(&row.frame)?;
        let after = filter.counters()?;
        let mut problems = Vec::new();
        if action != TC_ACT_OK {
            problems.push(format!("action {action}: the answers program must never drop these"));
        }
        for k in AnswerKind::ALL {
            let moved = after.answers[k as usize] - before.answers[k as usize];
            let want = u64::from(Some(k) == row.kind);
            if moved != want {
                problems.push(format!("answer counter {} moved by {moved}, expected {want}", k.name()));
            }
        }
        let moved = after.uninspected - before.uninspected;
        if moved != u64::from(row.uninspected) {
            problems.push(format!(
                "uninspected moved by {moved}, expected {}",
                u64::from(row.uninspected)
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", row.what, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A row of the judgement table: registrations by devices (source ports) of one address,
/// each step a device's REGISTER, 401, REGISTER with credentials and the PBX's final answer
/// ("200 OK", or "401 Unauthorized" for a wrong password); what the last answer must meet.
/// `known`: the address registered line 299 cleanly (port 5999) before the steps.
struct JudgementRow {
    what: &'static str,
    known: bool,
    steps: &'static [(u16, &'static str, &'static str)],
    /// The TC action on the last step's final answer (TC_ACT_SHOT: withheld); None: one of
    /// its REGISTERs was dropped (banned).
    last: Option<u32>,
    ban: Option<u8>,
    suspect: u64,
}

const OK: &str = "200 OK";
const WRONG: &str = "401 Unauthorized";

fn judgement_table() -> Vec<JudgementRow> {
    use sipfilter_common::counters::ban_reason::{AUTH_FAILURE, CRACKED};
    let row = |what, known, steps, last, ban, suspect| JudgementRow {
        what,
        known,
        steps,
        last,
        ban,
        suspect,
    };
    vec![
        row(
            "one device fails 200, then 201's 2xx: it moved on (the seed robot)",
            false,
            &[(5060, "200", WRONG), (5060, "201", OK)],
            Some(TC_ACT_SHOT),
            Some(CRACKED),
            0,
        ),
        row(
            "one device fails 200 and 201, then 202's 2xx",
            false,
            &[(5060, "200", WRONG), (5060, "201", WRONG), (5060, "202", OK)],
            Some(TC_ACT_SHOT),
            Some(CRACKED),
            0,
        ),
        row(
            "one device fails its own line, then gets its 2xx (password fixed)",
            false,
            &[(5060, "201", WRONG), (5060, "201", OK)],
            Some(TC_ACT_OK),
            None,
            0,
        ),
        row(
            "a device fails its own line twice, then its 2xx",
            false,
            &[(5060, "201", WRONG), (5060, "201", WRONG), (5060, "201", OK)],
            Some(TC_ACT_OK),
            None,
            0,
        ),
        row(
            "a device guesses its own line's password fast: the failure budget, not cracked",
            false,
            &[
                (5060, "201", WRONG),
                (5060, "201", WRONG),
                (5060, "201", WRONG),
                (5060, "201", OK),
            ],
            None,
            Some(AUTH_FAILURE),
            0,
        ),
        row(
            "one device fails 200, another device's 2xx for 201",
            false,
            &[(5060, "200", WRONG), (5062, "201", OK)],
            Some(TC_ACT_OK),
            None,
            0,
        ),
        row(
            "two devices fail their lines, a third's 2xx: ambiguous, withheld once",
            false,
            &[(5060, "200", WRONG), (5062, "202", WRONG), (5064, "201", OK)],
            Some(TC_ACT_SHOT),
            None,
            1,
        ),
        row(
            "known: a device fails 200, then 201's 2xx: withheld once, no ban",
            true,
            &[(5060, "200", WRONG), (5060, "201", OK)],
            Some(TC_ACT_SHOT),
            None,
            1,
        ),
        row(
            "known: four devices with stale passwords, a fifth's 2xx",
            true,
            &[
                (5060, "203", WRONG),
                (5062, "207", WRONG),
                (5064, "211", WRONG),
                (5066, "215", WRONG),
                (5068, "201", OK),
            ],
            Some(TC_ACT_OK),
            None,
            0,
        ),
        row(
            "known: a multi-line device registers 301, fails 302, refreshes 301",
            true,
            &[(5060, "301", OK), (5060, "302", WRONG), (5060, "301", OK)],
            Some(TC_ACT_OK),
            None,
            0,
        ),
        row(
            "a multi-line device registers 301 and 303, fails 302, refreshes 303",
            false,
            &[
                (5060, "301", OK),
                (5060, "303", OK),
                (5060, "302", WRONG),
                (5060, "303", OK),
            ],
            Some(TC_ACT_OK),
            None,
            0,
        ),
    ]
}

#[test]
fn judgement_table_through_both_programs() -> anyhow::Result<()> {
    let rows = judgement_table();
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let mut config = sipfilter_common::KernelConfig::default();
        config.flags |= sipfilter_common::config::FLAG_TRUST | sipfilter_common::config::FLAG_WITHHOLD;
        let mut f = TestFilter::with_config(&config)?;
        let ip = Ipv4Addr::new(198, 18, 0, 10 + i as u8);
        if row.known {
            let mut first = Peer::device(&f, ip, 5999);
            first.login_with_credentials("299", OK);
        }
        let mut last = None;
        let mut cseqs = std::collections::HashMap::new();
        for (port, ext, status) in row.steps {
            let mut p = Peer::device(&f, ip, *port);
            p.cseq = *cseqs.get(port).unwrap_or(&0);
            last = p.login_with_credentials(ext, status);
            cseqs.insert(*port, p.cseq + 10);
        }
        let mut problems = Vec::new();
        if last != row.last {
            let name = |a: Option<u32>| match a {
                None => "a REGISTER dropped",
                Some(TC_ACT_OK) => "passed",
                Some(TC_ACT_SHOT) => "withheld",
                Some(_) => "another TC action",
            };
            problems.push(format!("last answer: {}, expected {}", name(last), name(row.last)));
        }
        let events = f.ban_events();
        let ban = events
            .iter()
            .find(|e| e.reason != sipfilter_common::counters::ban_reason::SUSPECT)
            .map(|e| e.reason);
        if ban != row.ban {
            problems.push(format!("ban {ban:?}, expected {:?}", row.ban));
        }
        let suspect = f.counters()?.suspect;
        if suspect != row.suspect {
            problems.push(format!("suspect {suspect}, expected {}", row.suspect));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", row.what, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A row of the request table: what the inspection must make of a request from a source
/// that is neither known nor allowlisted (each row from its own address).
struct RequestRow {
    what: String,
    payload: Vec<u8>,
    outcome: Outcome,
    /// The ban reason the row must leave (None: no ban).
    ban: Option<&'static str>,
    /// Counted as a scanner match.
    scanner: bool,
    /// The call rule counted (index of `Counters::calls_blocked`).
    call_rule: Option<usize>,
    /// Counted as uninspected.
    uninspected: bool,
    /// Sent as the first fragment of a larger datagram.
    first_fragment: bool,
    /// Sent as one TCP segment rather than a datagram.
    tcp: bool,
}

/// A phone-like request: eight header lines before the User-Agent (so the scan needs a second
/// round to reach it), `extra` lines before those.
fn request(method: &str, ruri: &str, ua: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         {extra}\
         Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-77\r\n\
         Max-Forwards: 70\r\n\
         From: \"Desk\" <sip:201@pbx.example>;tag=1\r\n\
         To: <sip:dest@pbx.example>\r\n\
         Call-ID: 77-{method}@198.51.100.7\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:201@198.51.100.7:5060>\r\n\
         Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
         User-Agent: {ua}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

const PHONE: &str = "Yealink SIP-T46S 66.86.0.15";

fn request_row(what: impl Into<String>, payload: Vec<u8>, outcome: Outcome) -> RequestRow {
    RequestRow {
        what: what.into(),
        payload,
        outcome,
        ban: None,
        scanner: false,
        call_rule: None,
        uninspected: false,
        first_fragment: false,
        tcp: false,
    }
}

fn scanner(what: &str, payload: Vec<u8>) -> RequestRow {
    RequestRow {
        ban: Some("scanner"),
        scanner: true,
        ..request_row(what, payload, Outcome::Scanner)
    }
}

fn denied(what: &str, ruri: &str) -> RequestRow {
    RequestRow {
        call_rule: Some(0),
        ..request_row(
            format!("INVITE {what} ({ruri})"),
            request("INVITE", ruri, PHONE, ""),
            Outcome::Destination,
        )
    }
}

fn request_table() -> Vec<RequestRow> {
    let mut rows = Vec::new();
    // Scanner User-Agents: any case, any method, late in the headers; not elsewhere.
    rows.push(scanner(
        "OPTIONS from svmap",
        request("OPTIONS", "sip:100@pbx.example", "friendly-scanner", ""),
    ));
    rows.push(scanner(
        "REGISTER, token in capitals",
        request("REGISTER", "sip:pbx.example", "FRIENDLY-SCANNER", ""),
    ));
    rows.push(scanner(
        "INVITE, token after a product name",
        request("INVITE", "sip:201@pbx.example", "Mozilla/5.0 sipcli/v1.8", ""),
    ));
    let many: String = (0..20).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    rows.push(scanner(
        "User-Agent on line 29 (four scan rounds)",
        request("OPTIONS", "sip:100@pbx.example", "VaxSIPUserAgent/3.1", &many),
    ));
    rows.push(scanner(
        "lower-case header name, tab before the value",
        b"OPTIONS sip:100@pbx.example SIP/2.0\r\nv: SIP/2.0/UDP x\r\nuser-agent:\tsipsak 0.9.6\r\n\r\n".to_vec(),
    ));
    rows.push(scanner(
        "a folded User-Agent",
        b"OPTIONS sip:100@pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP x\r\nUser-Agent:\r\n  friendly-scanner\r\nTo: <sip:100@pbx.example>\r\n\r\n".to_vec(),
    ));
    let too_many: String = (0..40).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    rows.push(RequestRow {
        uninspected: true,
        ..request_row(
            "User-Agent beyond the line bound",
            request("OPTIONS", "sip:100@pbx.example", "friendly-scanner", &too_many),
            Outcome::Stealth,
        )
    });
    let whole = request("REGISTER", "sip:pbx.example", "friendly-scanner", "");
    rows.push(RequestRow {
        uninspected: true,
        first_fragment: true,
        ..request_row(
            "first IP fragment ending before the User-Agent",
            whole[..whole.len() - 60].to_vec(),
            Outcome::Accepted,
        )
    });
    rows.push(request_row(
        "a phone's REGISTER",
        request("REGISTER", "sip:pbx.example", PHONE, ""),
        Outcome::Accepted,
    ));
    rows.push(request_row(
        "a scanner token in another header only",
        request(
            "REGISTER",
            "sip:pbx.example",
            PHONE,
            "Contact: <sip:sipvicious@10.0.0.1>\r\n",
        ),
        Outcome::Accepted,
    ));
    rows.push(request_row(
        "a response naming a scanner is not a request",
        b"SIP/2.0 200 OK\r\nVia: x\r\nUser-Agent: friendly-scanner\r\nCSeq: 1 OPTIONS\r\n\r\n".to_vec(),
        Outcome::Accepted,
    ));

    // Destinations: every dial format of +232 76 123 456 reduces to one number.
    for (what, ruri) in [
        ("+CC", "sip:+23276123456@pbx.example"),
        ("00CC", "sip:0023276123456@pbx.example"),
        ("011CC", "sip:01123276123456@pbx.example"),
        ("outside line then 011", "sip:901123276123456@pbx.example"),
        ("outside line then 00", "sip:90023276123456@pbx.example"),
        ("tel: URI with separators", "tel:+232-76-123-456;phone-context=+232"),
        (
            "sips: URI with port and parameters",
            "sips:0023276123456@pbx.example:5061;user=phone",
        ),
        ("escaped plus", "sip:%2B23276123456@pbx.example"),
        ("non-geographic +881", "sip:+8816123456@pbx.example"),
        ("NANP premium 1-900", "sip:+19005551234@pbx.example"),
    ] {
        rows.push(denied(what, ruri));
    }
    rows.push(RequestRow {
        call_rule: Some(0),
        ..request_row(
            "MESSAGE to +232",
            request("MESSAGE", "sip:+23276123456@pbx.example", PHONE, ""),
            Outcome::Destination,
        )
    });
    for (what, ruri) in [
        (
            "an allowed range inside a denied country",
            "sip:+23276001234@pbx.example",
        ),
        ("a national number", "sip:0301234567@pbx.example"),
        ("an international number not denied", "sip:+12125551234@pbx.example"),
        ("an extension", "sip:201@pbx.example"),
        ("a name", "sip:alice@pbx.example"),
        ("+1 242 is the Bahamas, not the USA", "sip:+12125550000@pbx.example"),
    ] {
        rows.push(request_row(
            format!("INVITE {what} ({ruri})"),
            request("INVITE", ruri, PHONE, ""),
            Outcome::Accepted,
        ));
    }
    rows.push(RequestRow {
        call_rule: Some(0),
        ..denied("the Bahamas inside +1", "sip:+12425551234@pbx.example")
    });
    rows.push(RequestRow {
        uninspected: true,
        ..request_row(
            "INVITE to a number longer than E.164",
            request("INVITE", "sip:+2327612345678901@pbx.example", PHONE, ""),
            Outcome::Accepted,
        )
    });
    rows.push(RequestRow {
        uninspected: true,
        ..request_row(
            "INVITE to a separated number longer than E.164",
            request("INVITE", "sip:00-232-76-123-456-000-000-000-0@pbx.example", PHONE, ""),
            Outcome::Accepted,
        )
    });
    rows.push(RequestRow {
        uninspected: true,
        ..request_row(
            "INVITE to a user longer than the dial bound (32 bytes)",
            request(
                "INVITE",
                "sip:002327612345600000000000000000000000@pbx.example",
                PHONE,
                "",
            ),
            Outcome::Accepted,
        )
    });
    rows.extend(segment_rows());
    rows
}

/// Several messages in one TCP segment (a robot's pipelining): each is framed by its
/// Content-Length and judged as if it came alone, up to four; an unknown source's segment
/// that holds more, or a message whose end cannot be told, is dropped unbanned.
fn segment_rows() -> Vec<RequestRow> {
    let tcp = |what: &str, parts: &[&[u8]], outcome: Outcome| RequestRow {
        tcp: true,
        ..request_row(format!("TCP segment: {what}"), parts.concat(), outcome)
    };
    let register = request("REGISTER", "sip:pbx.example", PHONE, "");
    let premium = request("INVITE", "sip:+23276123456@pbx.example", PHONE, "");
    let scanning = request("OPTIONS", "sip:100@pbx.example", "friendly-scanner", "");
    let sdp =
        b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let with_body = String::from_utf8(request("INVITE", "sip:201@pbx.example", PHONE, ""))
        .unwrap()
        .replace("Content-Length: 0", &format!("Content-Length: {}", sdp.len()))
        .into_bytes();
    let long_auth = format!(
        "Authorization: Digest username=\"201\", realm=\"pbx\", nonce=\"{}\", response=\"0\"\r\n",
        "a".repeat(400)
    );
    let authorized = request("REGISTER", "sip:pbx.example", PHONE, &long_auth);
    let padded: String = (0..40).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    let unframeable = request("REGISTER", "sip:pbx.example", PHONE, &padded);
    let mut rows = vec![
        tcp("two REGISTERs", &[&register, &register], Outcome::Accepted),
        tcp(
            "a REGISTER then keep-alive CRLFs",
            &[&register, b"\r\n\r\n"],
            Outcome::Accepted,
        ),
        RequestRow {
            call_rule: Some(0),
            ..tcp(
                "a REGISTER then an INVITE to +232",
                &[&register, &premium],
                Outcome::Destination,
            )
        },
        RequestRow {
            call_rule: Some(0),
            ..tcp(
                "three REGISTERs then an INVITE to +232 (the fourth message)",
                &[&register, &register, &register, &premium],
                Outcome::Destination,
            )
        },
        RequestRow {
            call_rule: Some(0),
            ..tcp(
                "a REGISTER with a 450-byte Authorization line, then an INVITE to +232",
                &[&authorized, &premium],
                Outcome::Destination,
            )
        },
        RequestRow {
            ban: Some("scanner"),
            scanner: true,
            ..tcp(
                "an INVITE with a body, then a scanner's OPTIONS",
                &[&with_body, sdp, &scanning],
                Outcome::Scanner,
            )
        },
        tcp(
            "five REGISTERs: more than four messages",
            &[&register, &register, &register, &register, &register],
            Outcome::Throttled,
        ),
        RequestRow {
            uninspected: true,
            ..tcp(
                "a REGISTER padded beyond the scan's bounds, then an INVITE to +232",
                &[&unframeable, &premium],
                Outcome::Throttled,
            )
        },
        // Framings a PBX could read otherwise than sipfilter: not trusted from an unknown source.
        tcp(
            "two Content-Lengths (900, then 0), then an INVITE to +232",
            &[
                &String::from_utf8(register.clone())
                    .unwrap()
                    .replace("Content-Length: 0", "Content-Length: 900\r\nContent-Length: 0")
                    .into_bytes(),
                &premium,
            ],
            Outcome::Throttled,
        ),
        tcp(
            "a folded header line, then an INVITE to +232",
            &[
                &request(
                    "REGISTER",
                    "sip:pbx.example",
                    PHONE,
                    "X-Note: a\r\n Content-Length: 40\r\n",
                ),
                &premium,
            ],
            Outcome::Throttled,
        ),
        RequestRow {
            uninspected: true,
            ..tcp(
                "a start line over 256 bytes, then an INVITE to +232",
                &[
                    &request("REGISTER", &format!("sip:{}@pbx.example", "2".repeat(300)), PHONE, ""),
                    &premium,
                ],
                Outcome::Throttled,
            )
        },
        tcp(
            "a REGISTER, then bytes that start no message",
            &[&register, b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"],
            Outcome::Throttled,
        ),
        RequestRow {
            call_rule: Some(0),
            ..tcp(
                "Content_Length (any byte between the words) framing an INVITE to +232",
                &[
                    &String::from_utf8(register.clone())
                        .unwrap()
                        .replace("Content-Length: 0", "Content_Length: 0")
                        .into_bytes(),
                    &premium,
                ],
                Outcome::Destination,
            )
        },
        // A message that goes on in the next segment: that one would start inside it, and what
        // follows it there would be judged by nobody. An unknown source's message must fit.
        tcp(
            "an INVITE whose body runs past the segment",
            &[&with_body, &sdp[..10]],
            Outcome::Throttled,
        ),
        tcp(
            "a REGISTER whose headers go on in the next segment",
            &[&register[..200]],
            Outcome::Throttled,
        ),
        tcp(
            "a REGISTER announcing a body the segment does not carry",
            &[&String::from_utf8(register.clone())
                .unwrap()
                .replace("Content-Length: 0", "Content-Length: 40")
                .into_bytes()],
            Outcome::Throttled,
        ),
    ];
    for r in &mut rows {
        r.what = r.what.replace("\r\n", "");
    }
    rows
}

#[test]
fn request_table_through_the_inspection() -> anyhow::Result<()> {
    let config = sipfilter::config::Config::parse(
        "[calls]\nallow = [\"+232 76 00\"]\noutside_line = \"9\"\n",
        std::path::Path::new("request-table.toml"),
    )?;
    let rows = request_table();
    let mut filter = TestFilter::with_settings(&config)?;
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let src = Ipv4Addr::new(198, 51, 100, 10 + i as u8);
        let mut frame = P::udp4(src, dst4(), 5060, 5060, &row.payload);
        if row.tcp {
            frame = frame.tcp();
        }
        if row.first_fragment {
            frame = frame.fragment(0, true);
        }
        let frame = frame.build().bytes;
        let before = filter.counters()?;
        let action = filter.run(&frame)?;
        let after = filter.counters()?;
        let mut problems = Vec::new();
        let want = if row.outcome.drops() { XDP_DROP } else { XDP_PASS };
        if action != want {
            problems.push(format!(
                "verdict {} (expected {})",
                action_name(action),
                action_name(want)
            ));
        }
        for o in Outcome::ALL {
            let moved = after.outcome(o) - before.outcome(o);
            if moved != u64::from(o == row.outcome) {
                problems.push(format!("outcome {} moved by {moved}", o.name()));
            }
        }
        let scanned = after.scanner_tokens.iter().sum::<u64>() - before.scanner_tokens.iter().sum::<u64>();
        if scanned != u64::from(row.scanner) {
            problems.push(format!("scanner matches moved by {scanned}"));
        }
        for k in 0..3 {
            let moved = after.calls_blocked[k] - before.calls_blocked[k];
            if moved != u64::from(row.call_rule == Some(k)) {
                problems.push(format!("calls blocked [{k}] moved by {moved}"));
            }
        }
        let moved = after.requests_uninspected - before.requests_uninspected;
        if moved != u64::from(row.uninspected) {
            problems.push(format!("uninspected moved by {moved}"));
        }
        let ban = filter
            .loaded
            .maps
            .bans()?
            .into_iter()
            .find(|(k, _)| *k == sipfilter_common::SourceKey::from_v4(src.octets()))
            .map(|(_, b)| sipfilter_common::counters::ban_reason::name(b.reason));
        if ban != row.ban {
            problems.push(format!("ban {ban:?}, expected {:?}", row.ban));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", row.what, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // One event per blocked call, naming the caller and the number.
    let events = filter.call_events();
    let blocked = rows.iter().filter(|r| r.call_rule.is_some()).count();
    assert_eq!(events.len(), blocked, "call events");
    let first = events
        .iter()
        .find(|e| e.number_len == 11)
        .expect("the +232 call's event");
    assert_eq!(sipfilter_common::scan::ext_str(&first.extension), "201");
    assert_eq!(first.number >> 20, 0x232_7612_3456, "E.164 digits as nibbles");
    Ok(())
}
