//! A reference model of what the XDP program decides for one frame, written from the
//! protocols' definitions rather than from the kernel's parser (`sipfilter-ebpf/src/parse.rs`)
//! so the two can disagree, and a generator of frames to compare them on (`tests/tests/
//! differential.rs`, `cargo xtask soak`).
//!
//! [`expect`] is the stateless part: how a frame is parsed (Ethernet with up to two VLAN tags,
//! IPv4 with options and fragments, IPv6 with up to six extension headers, UDP to the SIP
//! port) and how its SIP message is classified (the classifier is shared with the kernel: it
//! is pure logic, tested on its own). [`Model`] adds the state a sequence of frames builds:
//! the allowlist and denylist, the trust tiers (known sources as userspace lists them, every
//! other source unknown: its tight buckets throttle, stealth silences its OPTIONS), each
//! source's flood buckets and the bans that emptying one makes, and the header scan of an
//! unknown source's request for a scanner User-Agent (the scanner and the token matcher are
//! the shared pure logic; the window, the rounds and the order of the checks are the
//! model's) — under a clock that does not move (the test stops the program's). How sources
//! earn trust (the answers) and the call and quarantine rules have their own sequence tests.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sipfilter_common::{
    scan::{first_header_line, scan_lines, Found, Scan, Wanted, MAX_SCAN_ROUNDS, SCAN_LIMIT},
    sip::CLASSIFY_LEN,
    user_agent::{Candidates, ScannerUserAgents},
    Method, Outcome,
};

/// What the program must do with a frame: its outcome and the SIP method it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub outcome: Outcome,
    pub method: Option<Method>,
}

const SIP_PORT: u16 = 5060;
const TLS_PORT: u16 = 5061;
/// The connection budgets' place beside the rate classes in the model's token maps.
const CONNECT_CLASS: usize = 3;
/// How far into a frame the program promises to find the UDP header (and reads the start of
/// the SIP message); beyond it a frame is malformed for the program.
const MAX_HEADERS: usize = 1024;

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// The model's verdict on one frame (at least 14 bytes: BPF_PROG_TEST_RUN takes no less),
/// before any state: what a source with nothing against it gets.
pub fn expect(frame: &[u8]) -> Expected {
    expect_from(frame).0
}

/// [`expect`], with the source address of a frame it accepts as SIP.
pub fn expect_from(frame: &[u8]) -> (Expected, Option<IpAddr>) {
    let e = stateless(frame).0;
    if !matches!(e.outcome, Outcome::Accepted | Outcome::Segment | Outcome::Connection) {
        return (e, None);
    }
    // To a SIP port: the IP header is whole, after the tags.
    let mut at = 12;
    while matches!(be16(frame, at), Some(0x8100 | 0x88a8)) {
        at += 4;
    }
    let source = match be16(frame, at) {
        Some(0x0800) => <[u8; 4]>::try_from(&frame[at + 14..at + 18]).ok().map(IpAddr::from),
        Some(0x86dd) => <[u8; 16]>::try_from(&frame[at + 10..at + 26]).ok().map(IpAddr::from),
        _ => None,
    };
    (e, source)
}

/// [`expect`], with where the SIP message starts (after the CRLFs receivers skip).
/// The frame's verdict without state, where its SIP message starts, and whether it came
/// over TCP.
fn stateless(frame: &[u8]) -> (Expected, usize, bool) {
    let (e, start) = parse(frame);
    let (start, tcp) = start.unwrap_or((0, false));
    (e, start, tcp)
}

fn parse(frame: &[u8]) -> (Expected, Option<(usize, bool)>) {
    let verdict = |e: Expected| (e, None);
    let malformed = Expected {
        outcome: Outcome::Malformed,
        method: None,
    };
    let mut at = 12;
    let Some(mut ethertype) = be16(frame, at) else {
        return verdict(malformed);
    };
    at += 2;
    // 802.1Q or 802.1ad tags: two at most.
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            let Some(inner) = be16(frame, at + 2) else {
                return verdict(malformed);
            };
            ethertype = inner;
            at += 4;
        }
    }
    let l4 = match ethertype {
        0x0800 => match ipv4(frame, at) {
            Ok(l4) => l4,
            Err(e) => return verdict(e),
        },
        0x86dd => match ipv6(frame, at) {
            Ok(l4) => l4,
            Err(e) => return verdict(e),
        },
        0x8100 | 0x88a8 => return verdict(malformed),
        _ => {
            return verdict(Expected {
                outcome: Outcome::NotIp,
                method: None,
            })
        }
    };
    let (l4, tcp) = l4;
    // UDP: eight bytes of header; TCP: twenty at least.
    let header = if tcp { 20 } else { 8 };
    if l4 + header > frame.len() || l4 > MAX_HEADERS {
        return verdict(malformed);
    }
    let Some(dport) = be16(frame, l4 + 2) else {
        return verdict(malformed);
    };
    let mut start = l4 + 8;
    if tcp {
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        if doff < 20 {
            return verdict(malformed);
        }
        // The defaults: plain TCP SIP on 5060, TLS on 5061.
        if dport != SIP_PORT && dport != TLS_PORT {
            return verdict(Expected {
                outcome: Outcome::NotSipPort,
                method: None,
            });
        }
        let flags = frame[l4 + 13];
        if flags & 0x12 == 0x02 {
            return verdict(Expected {
                outcome: Outcome::Connection,
                method: None,
            });
        }
        if dport == TLS_PORT {
            return verdict(Expected {
                outcome: Outcome::Segment,
                method: None,
            });
        }
        start = l4 + doff;
    } else if dport != SIP_PORT {
        return verdict(Expected {
            outcome: Outcome::NotSipPort,
            method: None,
        });
    }
    // The message: receivers skip CRLFs before the start line (two at most here).
    for _ in 0..2 {
        if frame.get(start..start + 2) == Some(b"\r\n") {
            start += 2;
        }
    }
    let method = match frame.get(start..start + CLASSIFY_LEN) {
        Some(head) => sipfilter_common::classify(head.try_into().expect("16 bytes")),
        None => Method::Unknown,
    };
    // A TCP segment that starts no message is never judged.
    if tcp && method == Method::Unknown {
        return verdict(Expected {
            outcome: Outcome::Segment,
            method: None,
        });
    }
    (
        Expected {
            outcome: Outcome::Accepted,
            method: Some(method),
        },
        Some((start, tcp)),
    )
}

/// IPv4 at `at`: the UDP or TCP header's offset (and whether TCP), or the verdict.
fn ipv4(f: &[u8], at: usize) -> Result<(usize, bool), Expected> {
    let out = |o| Expected {
        outcome: o,
        method: None,
    };
    if at + 20 > f.len() {
        return Err(out(Outcome::Malformed));
    }
    let (version, ihl) = (f[at] >> 4, usize::from(f[at] & 0x0f) * 4);
    if version != 4 || ihl < 20 {
        return Err(out(Outcome::Malformed));
    }
    let fragment_offset = be16(f, at + 6).unwrap_or(0) & 0x1fff;
    if fragment_offset != 0 {
        return Err(out(Outcome::Fragment));
    }
    match f[at + 9] {
        17 => Ok((at + ihl, false)),
        6 => Ok((at + ihl, true)),
        _ => Err(out(Outcome::OtherTransport)),
    }
}

/// IPv6 at `at`, through its extension headers: the UDP or TCP header's offset (and whether
/// TCP), or the verdict.
fn ipv6(f: &[u8], at: usize) -> Result<(usize, bool), Expected> {
    let out = |o| Expected {
        outcome: o,
        method: None,
    };
    if at + 40 > f.len() || f[at] >> 4 != 6 {
        return Err(out(Outcome::Malformed));
    }
    let mut next = f[at + 6];
    let mut l4 = at + 40;
    let mut later_fragment = false;
    for _ in 0..6 {
        match next {
            0 | 43 | 60 => {
                if l4 + 2 > f.len() {
                    return Err(out(Outcome::Malformed));
                }
                next = f[l4];
                l4 += (usize::from(f[l4 + 1]) + 1) * 8;
            }
            44 => {
                if l4 + 8 > f.len() {
                    return Err(out(Outcome::Malformed));
                }
                next = f[l4];
                if be16(f, l4 + 2).unwrap_or(0) & 0xfff8 != 0 {
                    later_fragment = true;
                }
                l4 += 8;
            }
            _ => break,
        }
        if l4 > MAX_HEADERS {
            return Err(out(Outcome::Malformed));
        }
    }
    if later_fragment {
        return Err(out(Outcome::Fragment));
    }
    match next {
        17 => Ok((l4, false)),
        6 => Ok((l4, true)),
        0 | 43 | 60 | 44 => Err(out(Outcome::Malformed)),
        _ => Err(out(Outcome::OtherTransport)),
    }
}

/// A small deterministic generator (xorshift64*): a failing case is reproduced from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// SIP text a frame may carry: start lines of every kind, keep-alives, garbage.
fn sip_text(r: &mut Rng) -> Vec<u8> {
    const STARTS: &[&[u8]] = &[
        b"REGISTER sip:pbx SIP/2.0\r\n",
        b"INVITE sip:+23276123456@pbx SIP/2.0\r\n",
        b"OPTIONS sip:100@pbx SIP/2.0\r\n",
        b"SIP/2.0 200 OK\r\n",
        b"\r\nREGISTER sip:pbx SIP/2.0\r\n",
        b"\r\n\r\nBYE sip:x SIP/2.0\r\n",
        b"\r\n\r\n\r\nACK sip:x SIP/2.0\r\n",
        b"register sip:x SIP/2.0\r\n",
        b"REGISTERX sip:x SIP/2.0\r\n",
        b"SUBSCRIBE sip:x SIP/2.0\r\n",
        b"\r\n\r\n",
        b"",
        b"GET / HTTP/1.1\r\n",
    ];
    // Scanners rarely (1 in 100): a pool source must live long enough to empty its
    // buckets too.
    const BENIGN: &[&[u8]] = &[
        b"User-Agent: Yealink SIP-T46S\r\n",
        b"User-Agent : fri\r\n endly-scanner\r\n",
        b"X-User-Agent: friendly-scanner\r\n",
        b"",
    ];
    const SCANNERS: &[&[u8]] = &[
        b"User-Agent: friendly-scanner\r\n",
        b"user-agent:   SIPVicious 0.3.4\r\n",
        b"User-Agent: pplsip\r\n",
        b"User-Agent: Linphone (sipsak-like)\r\n",
    ];
    let mut t = STARTS[r.below(STARTS.len() as u64) as usize].to_vec();
    t.extend_from_slice(b"Via: SIP/2.0/UDP 10.0.0.1\r\nCall-ID: x\r\n");
    // Lines before the User-Agent: none to past the program's 32-line bound.
    for i in 0..r.below(40) {
        t.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(r.below(30) as usize)).as_bytes());
    }
    let agents = if r.chance(1) { SCANNERS } else { BENIGN };
    t.extend_from_slice(agents[r.below(agents.len() as u64) as usize]);
    t.extend_from_slice(b"\r\n");
    let cut = r.below(t.len() as u64 + 1) as usize;
    t.truncate(if r.chance(20) { cut } else { t.len() });
    t
}

/// A frame: a valid one from the layers below (VLAN tags, IPv4 with options and fragments,
/// IPv6 with extension headers, UDP to the SIP port or another), then maybe mutated
/// (truncated, bytes flipped, random bytes). Its source is random.
pub fn frame(r: &mut Rng) -> Vec<u8> {
    frame_among(r, &[], 0)
}

/// [`frame`], from a source of `pool` (of the frame's IP version) `percent` of the time: a
/// few sources sending many frames, so that buckets empty and bans are made.
pub fn frame_among(r: &mut Rng, pool: &[IpAddr], percent: u64) -> Vec<u8> {
    let v4: Vec<[u8; 4]> = pool
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<[u8; 16]> = pool
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        })
        .collect();
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for _ in 0..r.below(4) {
        f.extend_from_slice(if r.chance(50) { &[0x81, 0x00] } else { &[0x88, 0xa8] });
        f.extend_from_slice(&(r.below(4096) as u16).to_be_bytes());
    }
    let payload = sip_text(r);
    let dport: u16 = if r.chance(80) { SIP_PORT } else { r.below(65536) as u16 };
    let mut udp = Vec::new();
    udp.extend_from_slice(&5060u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    let proto = if r.chance(90) { 17u8 } else { r.below(256) as u8 };
    match r.below(10) {
        0 => {
            // Not IP.
            f.extend_from_slice(&(r.below(65536) as u16).to_be_bytes());
            f.extend((0..r.below(80)).map(|_| r.below(256) as u8));
        }
        1..=5 => {
            f.extend_from_slice(&[0x08, 0x00]);
            let options = 4 * r.below(11) as usize;
            let ihl = 5 + options / 4;
            f.push(0x40 | ihl as u8);
            f.push(0);
            f.extend_from_slice(&((20 + options + udp.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 1]);
            let frag: u16 = match r.below(10) {
                0 => 0x2000,                 // more fragments, first
                1 => r.below(0x2000) as u16, // a later fragment (or offset 0)
                _ => 0x4000,                 // don't fragment
            };
            f.extend_from_slice(&frag.to_be_bytes());
            f.push(64);
            f.push(proto);
            f.extend_from_slice(&[0, 0]);
            match (v4.is_empty(), r.chance(percent)) {
                (false, true) => f.extend_from_slice(&v4[r.below(v4.len() as u64) as usize]),
                _ => f.extend((0..4).map(|_| r.below(256) as u8)),
            }
            f.extend_from_slice(&[192, 0, 2, 1]);
            f.extend(std::iter::repeat_n(1u8, options));
            f.extend_from_slice(&udp);
        }
        _ => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut exts = Vec::new();
            let count = r.below(8);
            let kinds: Vec<u8> = (0..count).map(|_| [0u8, 43, 60, 44][r.below(4) as usize]).collect();
            for (i, k) in kinds.iter().enumerate() {
                let next = kinds.get(i + 1).copied().unwrap_or(proto);
                if *k == 44 {
                    let off: u16 = if r.chance(20) { (r.below(0x2000) as u16) << 3 } else { 1 };
                    exts.extend_from_slice(&[next, 0]);
                    exts.extend_from_slice(&off.to_be_bytes());
                    exts.extend_from_slice(&[0, 0, 0, 1]);
                } else {
                    let len = r.below(3) as u8;
                    exts.push(next);
                    exts.push(len);
                    exts.extend(std::iter::repeat_n(0u8, 6 + 8 * usize::from(len)));
                }
            }
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((exts.len() + udp.len()) as u16).to_be_bytes());
            f.push(kinds.first().copied().unwrap_or(proto));
            f.push(64);
            match (v6.is_empty(), r.chance(percent)) {
                (false, true) => f.extend_from_slice(&v6[r.below(v6.len() as u64) as usize]),
                _ => f.extend((0..16).map(|_| r.below(256) as u8)),
            }
            f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&exts);
            f.extend_from_slice(&udp);
        }
    }
    // Mutations.
    if r.chance(15) {
        let keep = 14 + r.below(f.len().saturating_sub(14) as u64 + 1) as usize;
        f.truncate(keep.min(f.len()));
    }
    if r.chance(15) {
        for _ in 0..=r.below(3) {
            let i = r.below(f.len() as u64) as usize;
            f[i] ^= 1 << r.below(8);
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f
}

/// The state a sequence of frames builds, as the program must keep it: see the module's
/// comment for what is and is not modelled.
pub struct Model {
    /// Each rate class's flood burst (the class of a method is the shared `Method::class`).
    bursts: [u64; 3],
    /// Each rate class's tight burst, for unknown sources.
    unknown_bursts: [u64; 3],
    allow: Vec<(IpAddr, u8)>,
    deny: Vec<(IpAddr, u8)>,
    /// The sources known to the program; everyone else is unknown.
    known: Vec<IpAddr>,
    /// Stealth: unknown sources' OPTIONS dropped unanswered.
    stealth: bool,
    /// The scanner User-Agent tokens unknown sources' requests are read for, if on.
    scanners: Option<ScannerUserAgents>,
    /// Flood tokens left, by source and class; a source starts with full buckets.
    tokens: HashMap<(IpAddr, usize), u64>,
    /// Tight tokens left (unknown sources), by source and class.
    tight: HashMap<(IpAddr, usize), u64>,
    /// The sources banned so far (each address is its own source: the /128 default).
    pub banned: BTreeSet<IpAddr>,
}

impl Model {
    /// Trust tiers on (`unknown_bursts`, `known`) with stealth for OPTIONS.
    pub fn new(
        bursts: [u64; 3],
        unknown_bursts: [u64; 3],
        allow: &[(IpAddr, u8)],
        deny: &[(IpAddr, u8)],
        known: &[IpAddr],
    ) -> Model {
        Model {
            bursts,
            unknown_bursts,
            allow: allow.to_vec(),
            deny: deny.to_vec(),
            known: known.to_vec(),
            stealth: true,
            scanners: None,
            tokens: HashMap::new(),
            tight: HashMap::new(),
            banned: BTreeSet::new(),
        }
    }

    /// Reads unknown sources' requests for these scanner User-Agent tokens.
    pub fn with_scanners(mut self, rules: ScannerUserAgents) -> Model {
        self.scanners = Some(rules);
        self
    }

    /// What the program must do with the next frame, and the state it leaves.
    pub fn judge(&mut self, frame: &[u8]) -> Expected {
        let (e, source) = expect_from(frame);
        let (_, start, tcp) = stateless(frame);
        let Some(source) = source else {
            return e;
        };
        let outcome = |outcome| Expected {
            outcome,
            method: e.method,
        };
        // The allowlist before everything (an allowlisted address is never dropped), then the
        // denylist, then a ban.
        if self.allow.iter().any(|n| within(source, *n)) {
            return outcome(Outcome::Allowlisted);
        }
        if self.deny.iter().any(|n| within(source, *n)) {
            return outcome(Outcome::Denylisted);
        }
        if self.banned.contains(&source) {
            return outcome(Outcome::Banned);
        }
        let known = self.known.contains(&source);
        let Some(method) = e.method else {
            // A TCP segment: nothing more to judge, or a SYN and its connection budgets (the
            // defaults: 150 back to back for every source, banning; 20 for an unknown one).
            if e.outcome != Outcome::Connection {
                return e;
            }
            let left = self.tokens.entry((source, CONNECT_CLASS)).or_insert(150);
            if *left == 0 {
                self.banned.insert(source);
                return outcome(Outcome::RateConnection);
            }
            *left -= 1;
            if known {
                return e;
            }
            let tight = self.tight.entry((source, CONNECT_CLASS)).or_insert(20);
            if *tight == 0 {
                return outcome(Outcome::ConnectionThrottled);
            }
            *tight -= 1;
            return e;
        };
        // An unknown source's request (not an answer or a keep-alive) is read for its
        // User-Agent, once it is within its rate.
        // A message over TCP is always read, for where it ends (another may follow it in
        // the segment; the generator sends one per segment, the fixture table several).
        let read_agent = !known && self.scanners.is_some() && !matches!(method, Method::Response | Method::Unknown);
        let read = tcp || read_agent;
        let silenced = !known && self.stealth && method == Method::Options;
        // Stealth comes before the buckets when nothing is to be read: a silenced probe costs
        // the source no token. Otherwise it waits for the read (a probe that names a scanner
        // is banned, not only silenced).
        if silenced && !read {
            return outcome(Outcome::Stealth);
        }
        let class = method.class() as usize;
        let left = self.tokens.entry((source, class)).or_insert(self.bursts[class]);
        if *left == 0 {
            // The first request over the flood burst is dropped and bans its source.
            self.banned.insert(source);
            return outcome(Outcome::rate_limited(method.class()));
        }
        *left -= 1;
        if known {
            return outcome(Outcome::Accepted);
        }
        // An unknown source also draws from its tight bucket: over it, dropped, not banned.
        let tight = self.tight.entry((source, class)).or_insert(self.unknown_bursts[class]);
        if *tight == 0 {
            return outcome(Outcome::Throttled);
        }
        *tight -= 1;
        if read_agent && self.names_a_scanner(&frame[start..]) {
            self.banned.insert(source);
            return outcome(Outcome::Scanner);
        }
        if silenced {
            return outcome(Outcome::Stealth);
        }
        outcome(Outcome::Accepted)
    }

    /// Whether the message's User-Agent holds a scanner token, as far as the program reads:
    /// its first [`SCAN_LIMIT`] bytes (none at all below 8), [`MAX_SCAN_ROUNDS`] rounds of
    /// header lines.
    fn names_a_scanner(&self, message: &[u8]) -> bool {
        let Some(rules) = &self.scanners else {
            return false;
        };
        if message.len() < 8 {
            return false;
        }
        let window = &message[..message.len().min(SCAN_LIMIT)];
        let Some(first) = first_header_line(window, 0) else {
            return false;
        };
        let mut scan = Scan {
            wanted: Wanted {
                user_agent: true,
                ..Wanted::NONE
            },
            found: Found {
                resume_at: first,
                ..Found::default()
            },
        };
        for _ in 0..MAX_SCAN_ROUNDS {
            scan_lines(window, scan.found.resume_at, &mut scan);
            if scan.found.resume_at == 0 {
                break;
            }
        }
        let at = scan.found.user_agent_at;
        at != 0 && rules.find(window, at, &mut Candidates::default()).is_some()
    }
}

/// Whether `addr` is in the network `(net, len)` (of the same IP version).
fn within(addr: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The sources the differential test sends most frames from: 16 IPv4 and 8 IPv6 addresses,
/// some of them inside [`POOL_ALLOWLIST`] and [`POOL_DENYLIST`].
pub fn pool() -> Vec<IpAddr> {
    let mut p: Vec<IpAddr> = (1..=16).map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i))).collect();
    p.extend((1..=8).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, i))));
    p
}

/// Sources known to the program in the differential test (put in its known-sources table as
/// the agent would after their registrations): two of the pool's IPv4 addresses on no list,
/// one IPv6.
pub fn pool_known() -> Vec<IpAddr> {
    ["198.51.100.4", "198.51.100.5", "2001:db8:5::6"]
        .iter()
        .map(|a| a.parse().expect("a literal address"))
        .collect()
}

/// Networks allowlisted for the differential test: 198.51.100.0/30 (.1–.3 of the pool) and
/// 2001:db8:5::/126 (::1–::3).
pub const POOL_ALLOWLIST: &[(&str, u8)] = &[("198.51.100.0", 30), ("2001:db8:5::", 126)];
/// Networks denylisted: 198.51.100.8/30 (.8–.11) and 2001:db8:5::4/127 (::4, ::5).
pub const POOL_DENYLIST: &[(&str, u8)] = &[("198.51.100.8", 30), ("2001:db8:5::4", 127)];

/// A list of [`POOL_ALLOWLIST`] or [`POOL_DENYLIST`] as addresses and lengths.
pub fn networks(list: &[(&str, u8)]) -> Vec<(IpAddr, u8)> {
    list.iter()
        .map(|(a, l)| (a.parse().expect("a literal address"), *l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_reads_plain_frames_as_the_protocols_say() {
        let f = crate::packet::PacketBuilder::sip4("192.0.2.7".parse().unwrap(), "REGISTER")
            .build()
            .bytes;
        assert_eq!(
            expect(&f),
            Expected {
                outcome: Outcome::Accepted,
                method: Some(Method::Register)
            }
        );
        let f = crate::packet::PacketBuilder::sip6("2001:db8::7".parse().unwrap(), "INVITE")
            .ext(0, 8)
            .build()
            .bytes;
        assert_eq!(
            expect(&f),
            Expected {
                outcome: Outcome::Accepted,
                method: Some(Method::Invite)
            }
        );
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            let f = frame(&mut r);
            assert!(f.len() >= 14);
            let _ = expect(&f);
        }
    }
}
