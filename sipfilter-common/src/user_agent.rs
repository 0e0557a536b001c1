//! Scanner User-Agents: the substrings (any case) that name an attack tool, and the bounded
//! search of a request's User-Agent value for them. Shared by the ingress program, the host
//! tests and userspace (which builds [`ScannerUserAgents`] from the configuration).

use crate::scan::{Bytes, MAX_LINE, SCAN_LIMIT};

/// Tokens a configuration may list.
pub const MAX_TOKENS: usize = 24;
/// Longest token, bytes.
pub const TOKEN_LEN: usize = 16;
/// Shortest token: the search's filter is keyed by a token's first three bytes.
pub const MIN_TOKEN_LEN: usize = 3;
/// Bytes of a User-Agent value searched: scanner tools put their name first or early
/// ("friendly-scanner", "sipcli/v1.8", "VaxSIPUserAgent/3.1"); 64 bytes also reach a token
/// after a product name and version. A longer value is searched in its first 64 bytes only.
pub const WINDOW: usize = 64;

/// Positions the filter passes on to the full comparison at most: a User-Agent of a real
/// phone has none or one (the filter has ~2% of its bits set); a longer list's chance of
/// hiding a scanner's token behind four false hits is negligible.
pub const CANDIDATES: usize = 4;

/// Where the filter found possible token starts (see [`ScannerUserAgents::find`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Candidates {
    pub at: [usize; CANDIDATES],
    pub count: u32,
    pub _pad: u32,
}

#[inline(always)]
fn get<T: Copy>(x: &T) -> T {
    // SAFETY: a plain read of a valid reference (volatile: see `find`).
    unsafe { core::ptr::read_volatile(x) }
}

#[inline(always)]
fn put<T>(x: &mut T, v: T) {
    // SAFETY: a plain write through a valid reference.
    unsafe { core::ptr::write_volatile(x, v) }
}

/// Bits of the first-three-bytes filter.
const FILTER_BITS: usize = 1024;
const LOWER: u64 = 0x2020_2020_2020_2020;

/// The scanner tokens as the kernel holds them (one record in the `scanner_user_agents` map).
///
/// Letters compare in any case: both sides have bit 5 of every byte set (which lowercases
/// ASCII letters; it also equates a few control characters with punctuation, which a
/// User-Agent value does not carry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannerUserAgents {
    /// A bit per hash of a token's first three (lowercased) bytes: a position whose bytes
    /// hash to a clear bit starts no token, and is passed with one load and one test.
    pub filter: [u64; FILTER_BITS / 64],
    /// Each token's bytes, lowercased, as two little-endian words (zero-padded).
    pub tokens: [[u64; 2]; MAX_TOKENS],
    /// Each token's byte masks for those words: a comparison is two ANDs and two compares,
    /// with no branch on the token's length.
    pub masks: [[u64; 2]; MAX_TOKENS],
    pub lens: [u8; MAX_TOKENS],
    pub count: u32,
    pub _pad: u32,
}

impl Default for ScannerUserAgents {
    fn default() -> Self {
        ScannerUserAgents {
            filter: [0; FILTER_BITS / 64],
            tokens: [[0; 2]; MAX_TOKENS],
            masks: [[0; 2]; MAX_TOKENS],
            lens: [0; MAX_TOKENS],
            count: 0,
            _pad: 0,
        }
    }
}

#[inline(always)]
fn filter_bit(first3: u64) -> usize {
    ((first3 & 0xff_ffff).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize
}

#[inline(always)]
fn mask(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

impl ScannerUserAgents {
    /// Adds a token; Err names the problem (length, or the list is full).
    pub fn add(&mut self, token: &[u8]) -> Result<(), &'static str> {
        if token.len() < MIN_TOKEN_LEN {
            return Err("a User-Agent token needs at least 3 characters");
        }
        if token.len() > TOKEN_LEN {
            return Err("a User-Agent token has at most 16 characters");
        }
        if token.iter().any(|c| !(0x20..0x7f).contains(c)) {
            return Err("a User-Agent token is printable ASCII");
        }
        let i = self.count as usize;
        if i >= MAX_TOKENS {
            return Err("at most 24 User-Agent tokens");
        }
        let mut bytes = [0u8; TOKEN_LEN];
        bytes[..token.len()].copy_from_slice(token);
        let lo = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) | LOWER & mask(token.len());
        let hi =
            u64::from_le_bytes(bytes[8..].try_into().unwrap_or([0; 8])) | LOWER & mask(token.len().saturating_sub(8));
        self.tokens[i] = [lo, hi];
        self.masks[i] = [mask(token.len()), mask(token.len().saturating_sub(8))];
        self.lens[i] = token.len() as u8;
        let bit = filter_bit(lo);
        self.filter[bit / 64] |= 1 << (bit % 64);
        self.count += 1;
        Ok(())
    }

    /// The first token found in the User-Agent value at `value` (from [`crate::scan::Found`]),
    /// searched within its line and its first [`WINDOW`] bytes: its index, or None.
    ///
    /// Two passes: the filter picks up to [`CANDIDATES`] positions where a token may start,
    /// then only those are compared with every token. `scratch` holds the positions: in the
    /// kernel it is map memory (read and written as volatile), so the verifier walks the second
    /// pass once, not once per way the first pass can end.
    #[inline(always)]
    pub fn find<B: Bytes + ?Sized>(&self, b: &B, value: usize, scratch: &mut Candidates) -> Option<usize> {
        if value == 0 || value >= SCAN_LIMIT || self.count == 0 {
            return None;
        }
        let value = b.forget(value);
        // Laundered (see `Bytes::forget`): every way out of the line search gives the end a
        // different range.
        let end = line_end(b, value);
        let end = b.forget(end.min(SCAN_LIMIT - 1));
        put(&mut scratch.count, 0);
        for k in 0..WINDOW {
            let at = value + k;
            if at + MIN_TOKEN_LEN > end {
                break;
            }
            let Some(w0) = b.word_or_tail(at) else {
                break;
            };
            let bit = filter_bit(w0 | LOWER);
            let Some(f) = self.filter.get(bit / 64) else {
                continue;
            };
            if (f >> (bit % 64)) & 1 != 0 {
                let n = get(&scratch.count);
                if let Some(slot) = scratch.at.get_mut(n as usize) {
                    put(slot, at);
                    put(&mut scratch.count, n + 1);
                } else {
                    break;
                }
            }
        }
        for c in 0..CANDIDATES {
            if c >= get(&scratch.count) as usize {
                break;
            }
            let Some(slot) = scratch.at.get(c) else {
                break;
            };
            let at = b.forget(get(slot));
            let Some(w0) = b.word_or_tail(at) else {
                continue;
            };
            let w1 = b.word_or_tail(at + 8).unwrap_or(0);
            let room = end.saturating_sub(at);
            if let Some(i) = self.token_among(w0 | LOWER, w1 | LOWER, room) {
                return Some(i);
            }
        }
        None
    }

    /// The first token that the 16 bytes (w0, w1) start with, of at most `room` bytes.
    #[inline(always)]
    fn token_among(&self, w0: u64, w1: u64, room: usize) -> Option<usize> {
        for i in 0..MAX_TOKENS {
            let (Some(t), Some(m), Some(&len)) = (self.tokens.get(i), self.masks.get(i), self.lens.get(i)) else {
                return None;
            };
            if len != 0 && len as usize <= room && w0 & m[0] == t[0] && w1 & m[1] == t[1] {
                return Some(i);
            }
        }
        None
    }

    /// Token `i` as text (lowercased), for logs and metrics.
    pub fn token(&self, i: usize) -> [u8; TOKEN_LEN] {
        let mut out = [0u8; TOKEN_LEN];
        if let (Some(t), Some(&len)) = (self.tokens.get(i), self.lens.get(i)) {
            out[..8].copy_from_slice(&t[0].to_le_bytes());
            out[8..].copy_from_slice(&t[1].to_le_bytes());
            out[len as usize..].fill(0);
        }
        out
    }
}

/// The end of the header value that starts at `value` (the '\r' or '\n' of its line, or of
/// its continuation line when it is folded: the next line starts with a space or a tab), or
/// where reading stops.
#[inline(always)]
fn line_end<B: Bytes + ?Sized>(b: &B, value: usize) -> usize {
    let mut p = value;
    for _ in 0..(MAX_LINE / 8) {
        let Some(w) = b.word_or_tail(p) else {
            return p;
        };
        let hit = has(w, b'\r') | has(w, b'\n') | has(w, 0);
        if hit != 0 {
            let lowest = hit & hit.wrapping_neg();
            let at = p + ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize;
            // "\r\n" then a space or tab: the value goes on.
            match b.word(b.forget(at)) {
                Some(w) if w as u8 == b'\r' && matches!((w >> 16) as u8, b' ' | b'\t') => {
                    p = at + 3;
                    continue;
                }
                _ => return at,
            }
        }
        p += 8;
    }
    p
}

#[inline(always)]
fn has(w: u64, c: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = w ^ ONES.wrapping_mul(c as u64);
    x.wrapping_sub(ONES) & !x & 0x8080_8080_8080_8080
}

/// The tokens shipped as the default list (docs/judging.md, "Scanner User-Agents", gives each
/// one's provenance and the ones left out).
pub const DEFAULT_TOKENS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "VaxSIPUserAgent",
    "pplsip",
    "sundayddr",
    "iWar",
    "sip-scan",
    "SIPScan",
    "sipsak",
    "SimpleSIP",
    "VoIPSec",
    "siptest",
    "Nmap NSE",
];

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::scan::{scan_headers, Wanted};

    fn rules(tokens: &[&str]) -> ScannerUserAgents {
        let mut r = ScannerUserAgents::default();
        for t in tokens {
            r.add(t.as_bytes()).unwrap();
        }
        r
    }

    fn matched(r: &ScannerUserAgents, msg: &[u8]) -> Option<usize> {
        let w = Wanted {
            user_agent: true,
            ..Wanted::NONE
        };
        r.find(msg, scan_headers(msg, 0, w).user_agent_at, &mut Candidates::default())
    }

    #[test]
    fn tokens_match_in_any_case_and_position_within_the_value_only() {
        let r = rules(DEFAULT_TOKENS);
        let m = |ua: &str| {
            let msg = std::format!(
                "OPTIONS sip:100@h SIP/2.0\r\nVia: x\r\nUser-Agent: {ua}\r\nContact: <sip:sipvicious@h>\r\n\r\n"
            );
            matched(&r, msg.as_bytes())
        };
        assert_eq!(m("friendly-scanner"), Some(0));
        assert_eq!(m("FRIENDLY-SCANNER"), Some(0));
        assert_eq!(m("Mozilla sipcli/v1.8"), Some(2));
        assert_eq!(m("VaxSIPUserAgent/3.1"), Some(3));
        assert_eq!(m("iwar"), Some(6));
        assert_eq!(m("Yealink SIP-T46S 66.86.0.15"), None);
        assert_eq!(m("Grandstream GXP2170 1.0.11.23"), None);
        // "sipvicious" in another header is not the User-Agent.
        assert_eq!(m("Zoiper rv2.10"), None);
        // A token cut by the line end does not match.
        assert_eq!(m("friendly-scanne"), None);
        let lower = b"OPTIONS sip:h SIP/2.0\r\nuser-agent   :\tsipsak 0.9.6\r\n\r\n";
        assert_eq!(matched(&r, lower), Some(9));
        let folded = b"OPTIONS sip:h SIP/2.0\r\nUser-Agent:\r\n   friendly-scanner\r\nTo: x\r\n\r\n";
        assert_eq!(matched(&r, folded), Some(0));
    }

    #[test]
    fn the_search_is_bounded_to_the_window() {
        let r = rules(&["sipcli"]);
        let pad = "x".repeat(WINDOW);
        let msg = std::format!("OPTIONS sip:h SIP/2.0\r\nUser-Agent: {pad}sipcli\r\n\r\n");
        assert_eq!(matched(&r, msg.as_bytes()), None);
        let msg = std::format!(
            "OPTIONS sip:h SIP/2.0\r\nUser-Agent: {}sipcli\r\n\r\n",
            &pad[..WINDOW - 8]
        );
        assert_eq!(matched(&r, msg.as_bytes()), Some(0));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let mut r = ScannerUserAgents::default();
        assert!(r.add(b"").is_err());
        assert!(r.add(b"ab").is_err());
        assert!(r.add(b"a-token-longer-than-16").is_err());
        for i in 0..MAX_TOKENS {
            r.add(std::format!("tok{i:02}").as_bytes()).unwrap();
        }
        assert!(r.add(b"one-too-many").is_err());
        assert_eq!(&r.token(3)[..5], b"tok03");
    }

    #[test]
    fn truncated_messages_never_panic() {
        let r = rules(DEFAULT_TOKENS);
        let msg = b"OPTIONS sip:h SIP/2.0\r\nUser-Agent: friendly-scanner\r\n\r\n";
        for n in 0..msg.len() {
            let _ = matched(&r, &msg[..n]);
        }
    }
}
