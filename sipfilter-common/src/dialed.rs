//! The number a request dials (the user part of its Request-URI), reduced to E.164 digits so
//! that `+232…`, `00232…`, `011232…`, `9011232…` and `tel:+232-76-…` are one number to the
//! destination rules. Shared by the ingress program, the host tests and userspace (which
//! turns rule prefixes into the same keys).
//!
//! Digits are kept as nibbles, most significant first, top-aligned in a u64 ("digit
//! strings"): prefix tests and cuts are shifts and masks, which the kernel verifier walks in
//! straight lines; the destination rules are an LPM trie over those bytes, four bits a digit.

use crate::scan::{Bytes, SCAN_LIMIT};

/// Bytes of a Request-URI user read: 24 digits (an outside line, an international prefix and
/// a 15-digit E.164 number) with room for separators. A longer user is not a number this
/// reader vouches for: passed, counted uninspected.
pub const DIAL_LEN: usize = 32;
/// E.164 numbers have at most 15 digits.
pub const MAX_E164: usize = 15;
/// Digits a raw dial string may hold (outside line + international prefix + number).
pub const MAX_RAW: usize = 24;

/// A digit string: up to 16 digits as nibbles, top-aligned; `len` digits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digits {
    pub nibbles: u64,
    pub len: u32,
    pub _pad: u32,
}

impl Digits {
    pub const EMPTY: Digits = Digits {
        nibbles: 0,
        len: 0,
        _pad: 0,
    };

    /// Parses ASCII digits (up to 16); None for anything else.
    pub fn parse(s: &str) -> Option<Digits> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut d = Digits::EMPTY;
        for c in s.bytes() {
            d.nibbles |= ((c - b'0') as u64) << (60 - 4 * d.len);
            d.len += 1;
        }
        Some(d)
    }

    /// The LPM key bytes (network order: the first digit in the top nibble of byte 0).
    #[inline(always)]
    pub fn key_bytes(&self) -> [u8; 8] {
        self.nibbles.to_be_bytes()
    }

    pub fn text(&self) -> heapless_text::Text {
        let mut t = heapless_text::Text::default();
        for i in 0..self.len.min(16) {
            let d = ((self.nibbles >> (60 - 4 * i)) & 0xf) as u8;
            t.push(b'0' + d);
        }
        t
    }
}

/// Small fixed text without an allocator (the crate is no_std).
pub mod heapless_text {
    #[derive(Default, Clone, Copy)]
    pub struct Text {
        bytes: [u8; 24],
        len: usize,
    }
    impl Text {
        pub fn push(&mut self, c: u8) {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = c;
                self.len += 1;
            }
        }
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
        }
    }
}

/// A raw dial string of up to [`MAX_RAW`] digits: two top-aligned nibble words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Raw {
    hi: u64,
    lo: u64,
    len: usize,
}

impl Raw {
    #[inline(always)]
    fn starts_with(&self, p: &Digits) -> bool {
        let n = p.len as usize;
        if n == 0 || n > 8 || n > self.len {
            return false;
        }
        let shift = 64 - 4 * n;
        (self.hi >> shift) == (p.nibbles >> shift)
    }

    /// The string without its first `n` (≤ 8) digits.
    #[inline(always)]
    fn drop(&self, n: usize) -> Raw {
        if n == 0 || n > 8 || n > self.len {
            return *self;
        }
        let s = 4 * n;
        Raw {
            hi: (self.hi << s) | (self.lo >> (64 - s)),
            lo: self.lo << s,
            len: self.len - n,
        }
    }

    #[inline(always)]
    fn first(&self) -> u64 {
        self.hi >> 60
    }

    /// The first 15 digits as an E.164 number, or None when longer or starting with 0
    /// (no country code does).
    #[inline(always)]
    fn e164(&self) -> Option<Digits> {
        if self.len == 0 || self.len > MAX_E164 || self.first() == 0 {
            return None;
        }
        Some(Digits {
            nibbles: self.hi,
            len: self.len as u32,
            _pad: 0,
        })
    }
}

/// How the PBX's users dial out (docs/judging.md, "Destination rules").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialPlan {
    /// The digit(s) for an outside line (`9`), or empty.
    pub outside_line: Digits,
    /// International call prefixes, tried in order (`00`, `011`; unused: empty).
    pub international: [Digits; 2],
    /// The PBX's own country code (`49`, `1`), or empty: national numbers are then not
    /// reduced to E.164 and no destination rule applies to them.
    pub country_code: Digits,
    /// The national trunk prefix (`0`, or `1` in North America) that starts a national number.
    pub trunk_prefix: Digits,
}

impl Default for DialPlan {
    fn default() -> Self {
        DialPlan {
            outside_line: Digits::EMPTY,
            international: [
                Digits::parse("00").unwrap_or(Digits::EMPTY),
                Digits::parse("011").unwrap_or(Digits::EMPTY),
            ],
            country_code: Digits::EMPTY,
            trunk_prefix: Digits::EMPTY,
        }
    }
}

/// What a Request-URI dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialed {
    /// No number: a name (`alice`), a service code (`*97`), no user part.
    NotANumber,
    /// Longer than the reader's bound, or not within the scan window: passed, counted.
    Unreadable,
    /// A national or local number the dial plan cannot reduce to E.164.
    Local,
    /// A national number reduced to E.164 (the PBX's own country).
    National(Digits),
    /// An international number, E.164 digits.
    International(Digits),
}

impl DialPlan {
    /// Reduces a raw dial string.
    #[inline(always)]
    fn reduce(&self, raw: Raw, plus: bool) -> Dialed {
        if plus {
            return match raw.e164() {
                Some(d) => self.international_or_home(d),
                None => Dialed::Unreadable,
            };
        }
        // After the outside line first (a German PBX with outside line 0 dials 000232…),
        // then the digits as they are.
        let after_line = if self.outside_line.len != 0 && raw.starts_with(&self.outside_line) {
            Some(raw.drop(self.outside_line.len as usize))
        } else {
            None
        };
        let mut too_long = false;
        for candidate in [after_line, Some(raw)] {
            let Some(c) = candidate else { continue };
            for p in &self.international {
                if c.starts_with(p) {
                    let rest = c.drop(p.len as usize);
                    match rest.e164() {
                        Some(d) => return self.international_or_home(d),
                        None => too_long |= rest.len > MAX_E164,
                    }
                }
            }
        }
        if too_long {
            // An international call prefix, then more digits than any E.164 number has:
            // nothing this reader vouches for.
            return Dialed::Unreadable;
        }
        if self.country_code.len != 0 {
            for candidate in [after_line, Some(raw)] {
                let Some(c) = candidate else { continue };
                if self.trunk_prefix.len == 0 || c.starts_with(&self.trunk_prefix) {
                    let rest = c.drop(self.trunk_prefix.len as usize);
                    let cc = self.country_code.len as usize;
                    if rest.len == 0 || rest.len + cc > MAX_E164 || rest.first() == 0 {
                        continue;
                    }
                    let nibbles = self.country_code.nibbles | (rest.hi >> (4 * cc));
                    return Dialed::National(Digits {
                        nibbles,
                        len: (rest.len + cc) as u32,
                        _pad: 0,
                    });
                }
            }
        }
        Dialed::Local
    }

    /// An international-form number in the PBX's own country is a national call.
    #[inline(always)]
    fn international_or_home(&self, d: Digits) -> Dialed {
        let cc = self.country_code.len;
        if cc != 0 && cc <= d.len {
            let shift = 64 - 4 * cc;
            if d.nibbles >> shift == self.country_code.nibbles >> shift {
                return Dialed::National(d);
            }
        }
        Dialed::International(d)
    }

    /// The number the Request-URI of a request dials; `start` is the offset of its start
    /// line (`INVITE sip:+232…@host SIP/2.0`).
    #[inline(always)]
    pub fn dialed<B: Bytes + ?Sized>(&self, b: &B, start: usize) -> Dialed {
        // The URI follows the method and one space.
        let Some(w) = b.word(start) else {
            return Dialed::Unreadable;
        };
        let mut sp = 8;
        for i in 0..8 {
            if (w >> (8 * i)) as u8 == b' ' {
                sp = i;
                break;
            }
        }
        if sp == 8 {
            return Dialed::Unreadable;
        }
        let uri = start + sp + 1;
        if uri >= SCAN_LIMIT {
            return Dialed::Unreadable;
        }
        // Laundered (see `Bytes::forget`): one state for the verifier, whatever the method.
        let uri = b.forget(uri);
        let Some(scheme) = b.word_or_tail(uri) else {
            return Dialed::Unreadable;
        };
        let lw = scheme | 0x2020_2020_2020_2020;
        let user = if lw & 0xffff_ffff == u32::from_le_bytes(*b"sip:") as u64
            || lw & 0xffff_ffff == u32::from_le_bytes(*b"tel:") as u64
        {
            uri + 4
        } else if lw & 0xff_ffff_ffff == u64::from_le_bytes(*b"sips:\0\0\0") {
            uri + 5
        } else {
            return Dialed::NotANumber;
        };
        self.number_at(b, user)
    }

    /// Reads the digits of the URI user at `at` (visual separators `-.()` skipped, a leading
    /// `+` or `%2B` marking the international form) up to its end (`@ ; > ? :`, space or
    /// line end).
    #[inline(always)]
    fn number_at<B: Bytes + ?Sized>(&self, b: &B, at: usize) -> Dialed {
        let mut words = [0u64; DIAL_LEN / 8];
        for (k, w) in words.iter_mut().enumerate() {
            // Past the message's end reads as zero bytes, which end the user.
            *w = b.word_or_tail(at + 8 * k).unwrap_or(0);
        }
        let mut raw = Raw::default();
        let mut plus = false;
        let mut skip = 0usize;
        let head = words[0] & 0xff_ffff;
        if head & 0xff == b'+' as u64 {
            plus = true;
            skip = 1;
        } else if head | 0x20_0000 == u32::from_le_bytes(*b"%2b\0") as u64 {
            plus = true;
            skip = 3;
        }
        let mut ended = false;
        for i in 0..DIAL_LEN {
            if i < skip {
                continue;
            }
            let c = (words[i / 8] >> (8 * (i % 8))) as u8;
            match c {
                b'0'..=b'9' => {
                    if raw.len >= MAX_RAW {
                        return Dialed::Unreadable;
                    }
                    // The count laundered: the verifier would otherwise walk the rest of the
                    // loop once per count of digits seen so far.
                    raw.len = b.forget(raw.len);
                    if raw.len >= MAX_RAW {
                        return Dialed::Unreadable;
                    }
                    let d = (c - b'0') as u64;
                    if raw.len < 16 {
                        raw.hi |= d << (60 - 4 * raw.len);
                    } else {
                        raw.lo |= d << (60 - 4 * (raw.len - 16));
                    }
                    raw.len += 1;
                }
                b'-' | b'.' | b'(' | b')' => {}
                b'@' | b';' | b'>' | b'?' | b':' | b' ' | b'\r' | b'\n' | 0 => {
                    ended = true;
                    break;
                }
                _ => return Dialed::NotANumber,
            }
        }
        if !ended {
            return Dialed::Unreadable;
        }
        if raw.len == 0 {
            return Dialed::NotANumber;
        }
        self.reduce(raw, plus)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn plan(outside: &str, cc: &str, trunk: &str) -> DialPlan {
        let d = |s: &str| Digits::parse(s).unwrap_or(Digits::EMPTY);
        DialPlan {
            outside_line: d(outside),
            country_code: d(cc),
            trunk_prefix: d(trunk),
            ..DialPlan::default()
        }
    }

    fn dial(p: &DialPlan, uri: &str) -> Dialed {
        let msg = std::format!("INVITE {uri} SIP/2.0\r\nVia: x\r\n\r\n");
        p.dialed(msg.as_bytes(), 0)
    }

    fn intl(s: &str) -> Dialed {
        Dialed::International(Digits::parse(s).unwrap())
    }

    #[test]
    fn every_international_form_is_one_number() {
        let p = plan("9", "", "");
        for uri in [
            "sip:+23276123456@pbx",
            "sip:0023276123456@pbx;user=phone",
            "sip:01123276123456@pbx",
            "sip:901123276123456@pbx",
            "sip:90023276123456@pbx:5060",
            "SIPS:+232-76-123-456@pbx",
            "tel:+232.76.(123)456;phone-context=+232",
            "sip:%2B23276123456@pbx",
            "sip:+23276123456:secret@pbx",
        ] {
            assert_eq!(dial(&p, uri), intl("23276123456"), "{uri}");
        }
    }

    #[test]
    fn national_and_local_numbers() {
        let p = plan("", "", "");
        assert_eq!(dial(&p, "sip:0301234567@pbx"), Dialed::Local);
        assert_eq!(dial(&p, "sip:201@pbx"), Dialed::Local);
        let de = plan("", "49", "0");
        assert_eq!(
            dial(&de, "sip:0301234567@pbx"),
            Dialed::National(Digits::parse("49301234567").unwrap())
        );
        assert_eq!(
            dial(&de, "sip:+49301234567@pbx"),
            Dialed::National(Digits::parse("49301234567").unwrap())
        );
        assert_eq!(dial(&de, "sip:201@pbx"), Dialed::Local);
        // Outside line 0 in Germany: 0 then 00232…
        let de0 = plan("0", "49", "0");
        assert_eq!(dial(&de0, "sip:00023276123456@pbx"), intl("23276123456"));
        assert_eq!(dial(&de0, "sip:0023276123456@pbx"), intl("23276123456"));
        // North America: 1 + area code is the national form of +1…, which is E.164 already.
        let us = plan("9", "1", "1");
        assert_eq!(
            dial(&us, "sip:918095551234@pbx"),
            Dialed::National(Digits::parse("18095551234").unwrap())
        );
    }

    #[test]
    fn what_is_not_a_number() {
        let p = DialPlan::default();
        assert_eq!(dial(&p, "sip:alice@pbx"), Dialed::NotANumber);
        assert_eq!(dial(&p, "sip:*97@pbx"), Dialed::NotANumber);
        assert_eq!(dial(&p, "urn:service:sos"), Dialed::NotANumber);
        assert_eq!(dial(&p, "sip:+@pbx"), Dialed::NotANumber);
        assert_eq!(dial(&p, "sip:00232761234567890123456789@pbx"), Dialed::Unreadable);
        assert_eq!(dial(&p, "sip:+2-3-2-7-6-1-2-3-4-5-6-7-8-9-0-1@pbx"), Dialed::Unreadable);
        // More than 15 digits after the prefix is no E.164 number.
        assert_eq!(dial(&p, "sip:+1234567890123456@pbx"), Dialed::Unreadable);
        assert_eq!(dial(&p, "sip:00-232-76-123-456-000-000-000-0@pbx"), Dialed::Unreadable);
    }

    #[test]
    fn truncated_requests_never_panic() {
        let msg = b"INVITE sip:+23276123456@pbx SIP/2.0\r\n";
        let p = DialPlan::default();
        for n in 0..msg.len() {
            let _ = p.dialed(&msg[..n], 0);
        }
    }

    #[test]
    fn digits_text_and_keys() {
        let d = Digits::parse("232").unwrap();
        assert_eq!(d.text().as_str(), "232");
        assert_eq!(d.key_bytes()[..2], [0x23, 0x20]);
        assert!(Digits::parse("12a").is_none());
        assert!(Digits::parse("").is_none());
    }
}
