//! The bounded SIP header scanner, shared by the ingress (requests) and egress (answers)
//! programs, the host tests and the fuzzer.
//!
//! It walks a message line by line, eight bytes at a time (a newline is found with a
//! word-at-a-time test, not byte by byte), looks only at the first word of each line for the
//! header names it wants, and stops as soon as it has them, at the empty line that ends the
//! headers, or at [`SCAN_LIMIT`] bytes. Values are read afterwards, each with its own small
//! bound. Every loop has a constant trip count so the verifier can prove it ends.
//!
//! What it understands: header names in any case, with whitespace before the colon, the
//! compact forms `t`/`f` of To/From, folded (continued) lines, and `sip:`, `sips:` and `tel:`
//! URIs with display names, parameters and ports. What it does not see (beyond the bound, or
//! a line longer than [`MAX_LINE`]) it reports as not found; callers pass such messages on
//! unjudged.

use crate::sip::{mask, word, Method};

/// Payload bytes the scanner reads at most. A REGISTER or a 401 from common PBXs has its To
/// and CSeq headers within the first 400 bytes even with two Via headers; 1024 leaves room for
/// four Vias and long display names while keeping the worst case bounded.
pub const SCAN_LIMIT: usize = 1024;
/// A header line longer than this (a Via with a huge branch, say) ends the scan.
pub const MAX_LINE: usize = 256;
/// Most lines one [`scan_lines`] call visits: a round. The kernel verifier walks a round once
/// per program and refuses much more than this (10 lines already exceeded its budget in the
/// inspection program); the kernel goes on in another program run (a tail call) from the
/// scan's `resume_at`, up to [`MAX_SCAN_ROUNDS`] rounds.
pub const MAX_LINES: usize = 8;
/// Rounds of [`MAX_LINES`] lines the kernel scans a message in at most: 32 header lines, more
/// than any phone sends before its User-Agent (a Yealink REGISTER has 12) and than an answer
/// carries before its CSeq through several proxies. What lies further down is counted
/// uninspected. Each round is a tail call (a few ns); the bound keeps a chain far from the
/// kernel's 33 tail calls.
pub const MAX_SCAN_ROUNDS: u32 = 4;
/// Bytes of an extension (URI user part) kept; longer ones are compared and shown by their
/// first 16 bytes.
pub const EXT_LEN: usize = 16;

/// A URI user part (an extension or a dialed number), zero-padded.
pub type Extension = [u8; EXT_LEN];

/// Word access to a message: the packet in the kernel, a slice on the host. Offsets are from
/// the start of the SIP payload.
///
/// Only whole words are read, bytes too (a byte is the low byte of the word at its offset):
/// the verifier follows one bounds check per 8-byte load reliably, while byte-by-byte checks
/// get merged by the compiler into forms it cannot follow. So the last seven bytes of a
/// message are never read; a SIP message ends with its empty line or body, never with a
/// header the scanner needs.
pub trait Bytes {
    /// The 8 bytes at `off` as a little-endian word, or None when they are not all there.
    fn word(&self, off: usize) -> Option<u64>;
    /// Whether the message goes on beyond the bytes `word` can read (the kernel reads a
    /// bounded window of it).
    #[inline(always)]
    fn truncated(&self) -> bool {
        false
    }
    /// Bytes readable: `word(off)` succeeds while `off + 8 <= len()`.
    fn len(&self) -> usize;
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The 8 bytes at `off`, zero-padded past the end of the message (a message's last
    /// seven bytes are read through its last whole word); None at or past the end.
    #[inline(always)]
    fn word_or_tail(&self, off: usize) -> Option<u64> {
        if let Some(w) = self.word(off) {
            return Some(w);
        }
        let len = self.len();
        if len < 8 || off >= len || off + 8 <= len {
            return None;
        }
        let last = self.word(len - 8)?;
        Some(last >> (8 * (off + 8 - len)))
    }
    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        self.word_or_tail(off).map(|w| w as u8)
    }
    /// `pos` (below [`SCAN_LIMIT`]) with what the kernel verifier knows of its range erased
    /// (see [`forget`]). The kernel's reader mixes in a zero the verifier cannot see through.
    #[inline(always)]
    fn forget(&self, pos: usize) -> usize {
        pos & (SCAN_LIMIT - 1)
    }
}

impl Bytes for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    #[inline(always)]
    fn word(&self, off: usize) -> Option<u64> {
        let b = self.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOWER: u64 = 0x2020_2020_2020_2020;

/// Bit 7 of each byte of `w` that equals `b` (the classic has-zero-byte test on `w ^ b…`).
/// Only the lowest flagged byte is exact; callers use only that one.
#[inline(always)]
fn bytes_equal(w: u64, b: u8) -> u64 {
    let x = w ^ (ONES.wrapping_mul(b as u64));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Index (0..8) of the lowest flagged byte of a non-zero `bytes_equal` result. No count-
/// trailing-zeros instruction in BPF: a multiply moves the answer into the top byte.
#[inline(always)]
fn first_flagged(flags: u64) -> usize {
    let lowest = flags & flags.wrapping_neg();
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// Why positions are "forgotten": the mask changes no value, but every path through the
/// scan then reaches the next line with the same offset range [0, SCAN_LIMIT), and the kernel
/// verifier can prune all but one of them. Without it each line found at a different word is
/// a different state, and their number multiplies line after line.
#[inline(always)]
fn forget<B: Bytes + ?Sized>(b: &B, pos: usize) -> usize {
    b.forget(pos)
}

/// Position of the first `needle` at or after `pos`, looking at most `words` words ahead.
#[inline(always)]
fn find<B: Bytes + ?Sized>(b: &B, pos: usize, needle: u8, words: usize) -> Option<usize> {
    search(b, pos, needle, words).ok()
}

/// Why a search found nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missed {
    /// The message ended (fewer than eight bytes left).
    Ended,
    /// The scan's bound ([`SCAN_LIMIT`]) was reached with more message to read.
    Bound,
    /// The search's own bound (its words) was reached: a line longer than it.
    Line,
}

#[inline(always)]
fn search<B: Bytes + ?Sized>(b: &B, pos: usize, needle: u8, words: usize) -> Result<usize, Missed> {
    let mut p = pos;
    for _ in 0..words {
        if p >= SCAN_LIMIT {
            return Err(Missed::Bound);
        }
        let Some(w) = b.word(p) else {
            return Err(Missed::Ended);
        };
        let hit = bytes_equal(w, needle);
        if hit != 0 {
            let at = p + first_flagged(hit);
            if at >= SCAN_LIMIT {
                return Err(Missed::Bound);
            }
            // Every position a search finds has the same range for the verifier.
            return Ok(forget(b, at));
        }
        p += 8;
    }
    Err(Missed::Line)
}

/// Which header a line starts with (by its first word, in any case).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Header {
    Via,
    To,
    From,
    CSeq,
    CallId,
    UserAgent,
    Authorization,
    ContentLength,
    /// A line starting with whitespace: the continuation of the header above.
    Folded,
    Other,
    /// The empty line: the headers have ended.
    End,
}

/// Header name then optional whitespace then ':': `name_len` bytes of `lw` (lowercased) must
/// be the name and the next be ':', ' ' or a tab (lowercasing turns a tab into ')').
#[inline(always)]
fn named(lw: u64, name: u64, name_len: usize) -> bool {
    if lw & mask(name_len) != name {
        return false;
    }
    let next = ((lw >> (8 * name_len)) & 0xff) as u8;
    next == b':' || next == b' ' || next == b')'
}

#[inline(always)]
fn header<B: Bytes + ?Sized>(b: &B, line: usize, w: u64) -> Header {
    if w & 0xffff == word(b"\r\n") || w & 0xff == b'\n' as u64 {
        return Header::End;
    }
    let lw = w | LOWER;
    // By the first letter: most lines are compared with one or two names, not all of them.
    match lw as u8 {
        b't' if named(lw, word(b"to"), 2) || named(lw, word(b"t"), 1) => Header::To,
        b'v' if named(lw, word(b"via"), 3) || named(lw, word(b"v"), 1) => Header::Via,
        b'f' if named(lw, word(b"from"), 4) || named(lw, word(b"f"), 1) => Header::From,
        b'c' if named(lw, word(b"cseq"), 4) => Header::CSeq,
        b'c' | b'i' if named(lw, word(b"call-id"), 7) || named(lw, word(b"i"), 1) => Header::CallId,
        // Any byte between the words (`Content_Length`): what some PBXs' stream readers take
        // for Content-Length, sipfilter must too, or the two would frame a stream apart.
        b'c' if lw & mask(7) == word(b"content") => match b.word(line + 8) {
            Some(w2) if named(w2 | LOWER, word(b"length"), 6) => Header::ContentLength,
            _ => Header::Other,
        },
        b'l' if named(lw, word(b"l"), 1) => Header::ContentLength,
        b' ' | b'\t' => Header::Folded,
        b'u' if lw == word(b"user-age") => match b.word(line + 8) {
            Some(w2) if named(w2 | LOWER, word(b"nt"), 2) => Header::UserAgent,
            _ => Header::Other,
        },
        b'a' if lw == word(b"authoriz") => Header::Authorization,
        // Proxy-Authorization, not Proxy-Authenticate.
        b'p' if lw == word(b"proxy-au") => match b.word(line + 8) {
            Some(w2) if w2 | LOWER == word(b"thorizat") => Header::Authorization,
            _ => Header::Other,
        },
        _ => Header::Other,
    }
}

/// Where the values of the headers of interest start (0: absent), as the scan found them.
/// Read them with [`uri_user`] and [`cseq`]: only the ones the caller needs, once each (in
/// the kernel each read is a large piece of code for the verifier to walk).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Found {
    /// The first (topmost) Via: in an answer, the request's own, with its branch.
    pub via_at: usize,
    pub to_at: usize,
    pub from_at: usize,
    pub cseq_at: usize,
    pub call_id_at: usize,
    pub user_agent_at: usize,
    /// Authorization or Proxy-Authorization is present.
    pub credentials: bool,
    /// The scan ended before the end of the headers (bound reached, line too long): absent
    /// headers may lie beyond.
    pub incomplete: bool,
    /// Where the next unvisited header line starts when the scan stopped after [`MAX_LINES`]
    /// lines with more to read (0: it did not). [`scan_lines`] goes on from there: the kernel
    /// does so in a new program run (a tail call), each run with a verifier budget of its own.
    pub resume_at: usize,
    /// Content-Length's value (0: absent or not wanted). Only with [`Wanted::end`].
    pub content_length_at: usize,
    /// Where the body starts, just after the empty line that ends the headers (0: that line
    /// was not reached). Only with [`Wanted::end`].
    pub body_at: usize,
    /// `resume_at` is inside a line longer than [`MAX_LINE`], not at a line's start: what
    /// lies there is no header name.
    pub in_line: bool,
}

/// What a caller needs found before the scan may stop early.
#[derive(Clone, Copy, Default, Debug)]
pub struct Wanted {
    /// The top Via (its position, for [`request_identity`]).
    pub via: bool,
    pub to: bool,
    pub from: bool,
    pub cseq: bool,
    pub call_id: bool,
    pub user_agent: bool,
    pub credentials: bool,
    /// Where the message ends: its empty line and Content-Length (see [`framing`]).
    pub end: bool,
}

impl Wanted {
    /// Nothing: [`Wanted::with`] adds what a caller needs.
    pub const NONE: Wanted = Wanted {
        via: false,
        to: false,
        from: false,
        cseq: false,
        call_id: false,
        user_agent: false,
        credentials: false,
        end: false,
    };
}

/// Walks the header lines after the start line. `start`: the offset of the start line.
///
/// It only notes where the wanted headers' values start; callers read the values they need.
/// (Reading them inside the loop would make the kernel verifier walk the URI reader once for
/// every line at which a header can be found.) At most [`MAX_LINES`] lines are visited; the
/// answer's `resume_at` says where [`scan_lines`] would go on.
#[inline(always)]
pub fn scan_headers<B: Bytes + ?Sized>(b: &B, start: usize, wanted: Wanted) -> Found {
    match first_header_line(b, start) {
        Some(first) => {
            let mut scan = Scan {
                wanted,
                found: Found::default(),
            };
            scan_lines(b, first, &mut scan);
            scan.found
        }
        None => Found {
            incomplete: true,
            ..Found::default()
        },
    }
}

/// Where the first header line starts (after the start line at `start`), for [`scan_lines`].
#[inline(always)]
pub fn first_header_line<B: Bytes + ?Sized>(b: &B, start: usize) -> Option<usize> {
    find(b, start, b'\n', MAX_LINE / 8).map(|nl| nl + 1)
}

/// A scan in progress: what is wanted and what has been found. In the kernel it lives in map
/// memory, and every field is read and written there as the scan goes (volatile accesses):
/// the verifier does not track values in map memory, so the paths through a line that found
/// different headers reach the next line in the same state and are pruned, instead of
/// multiplying line after line.
#[derive(Clone, Copy, Default, Debug)]
pub struct Scan {
    pub wanted: Wanted,
    pub found: Found,
}

#[inline(always)]
fn get<T: Copy>(x: &T) -> T {
    // SAFETY: a plain read of a valid reference.
    unsafe { core::ptr::read_volatile(x) }
}

#[inline(always)]
fn put<T>(x: &mut T, v: T) {
    // SAFETY: a plain write through a valid reference.
    unsafe { core::ptr::write_volatile(x, v) }
}

/// Whether the scan holds everything it wants.
#[inline(always)]
fn complete(s: &Scan) -> bool {
    let (w, f) = (&s.wanted, &s.found);
    (!get(&w.via) || get(&f.via_at) != 0)
        && (!get(&w.to) || get(&f.to_at) != 0)
        && (!get(&w.from) || get(&f.from_at) != 0)
        && (!get(&w.cseq) || get(&f.cseq_at) != 0)
        && (!get(&w.call_id) || get(&f.call_id_at) != 0)
        && (!get(&w.user_agent) || get(&f.user_agent_at) != 0)
        && (!get(&w.credentials) || get(&f.credentials))
        && (!get(&w.end) || get(&f.body_at) != 0)
}

/// Notes a header's value position unless one is noted already (the first one counts);
/// whether it did.
#[inline(always)]
fn note<B: Bytes + ?Sized>(b: &B, wanted: &bool, at: &mut usize, line: usize) -> bool {
    if get(wanted) && get(at) == 0 {
        put(at, after_colon(b, line));
        return true;
    }
    false
}

/// Goes on with a scan at the header line that starts at `first` (the start of the headers,
/// or a `resume_at`), adding to what `scan` holds; visits at most [`MAX_LINES`] lines.
#[inline(always)]
pub fn scan_lines<B: Bytes + ?Sized>(b: &B, first: usize, scan: &mut Scan) {
    put(&mut scan.found.incomplete, false);
    put(&mut scan.found.resume_at, 0);
    let mut next = Some(first);
    let mut lines = 0;
    while let Some(at) = next {
        next = None;
        if at >= SCAN_LIMIT {
            put(&mut scan.found.incomplete, true);
            break;
        }
        if lines == MAX_LINES {
            put(&mut scan.found.incomplete, true);
            put(&mut scan.found.resume_at, forget(b, at));
            break;
        }
        lines += 1;
        let pos = forget(b, at);
        let Some(w) = b.word(pos) else {
            // Fewer than eight bytes left: no header of interest fits there.
            put(&mut scan.found.incomplete, b.truncated());
            break;
        };
        let (w_, f) = (&scan.wanted, &mut scan.found);
        // The rest of a line longer than MAX_LINE bytes (a digest Authorization with a long
        // nonce) is skipped like a line of no interest: a chunk boundary is no header name.
        let kind = if get(&f.in_line) {
            Header::Other
        } else {
            header(b, pos, w)
        };
        let noted = match kind {
            Header::End => {
                let blank = if w & 0xff == b'\n' as u64 { 1 } else { 2 };
                put(&mut f.body_at, pos + blank);
                break;
            }
            Header::Via => note(b, &w_.via, &mut f.via_at, pos),
            Header::To => note(b, &w_.to, &mut f.to_at, pos),
            Header::From => note(b, &w_.from, &mut f.from_at, pos),
            Header::CSeq => note(b, &w_.cseq, &mut f.cseq_at, pos),
            Header::CallId => note(b, &w_.call_id, &mut f.call_id_at, pos),
            Header::UserAgent => note(b, &w_.user_agent, &mut f.user_agent_at, pos),
            Header::ContentLength => {
                // A second one, or one whose value cannot be found: the message's end is
                // whatever the PBX makes of it, so it cannot be told here.
                let v = if get(&f.content_length_at) == 0 {
                    after_colon(b, pos)
                } else {
                    0
                };
                put(&mut f.content_length_at, if v == 0 { AMBIGUOUS } else { v });
                false
            }
            // A folded line may be read by a PBX as a header of its own, a Content-Length
            // among them: the message's end cannot be told either.
            Header::Folded => {
                put(&mut f.content_length_at, AMBIGUOUS);
                false
            }
            Header::Authorization => {
                put(&mut f.credentials, true);
                true
            }
            Header::Other => false,
        };
        // Only a line that added something can complete the scan.
        if noted && complete(scan) {
            break;
        }
        match search(b, pos, b'\n', MAX_LINE / 8) {
            Ok(nl) => {
                put(&mut scan.found.in_line, false);
                next = Some(nl + 1);
            }
            Err(Missed::Line) if get(&scan.wanted.end) => {
                // Only a scan for the message's end goes on through a long line (a chunk
                // counts as a line against the bounds): the others stop, as they always did.
                put(&mut scan.found.in_line, true);
                next = Some(pos + MAX_LINE);
            }
            Err(missed) => put(&mut scan.found.incomplete, missed != Missed::Ended || b.truncated()),
        }
    }
}

/// How a message of a byte stream (SIP over TCP) ends, from a scan with [`Wanted::end`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    /// It is this many bytes long (headers, empty line, Content-Length bytes of body): a next
    /// message may start there.
    Length(usize),
    /// Its headers run to the end of the bytes read and no more: nothing follows it here.
    Fills,
    /// Where it ends cannot be told: its headers go on beyond the scan's bounds, or its
    /// Content-Length is not a number.
    Unknown,
}

/// Where the message ends (RFC 3261 §18.3: on a stream, Content-Length frames the message; a
/// message without one is taken to have no body, as receivers read it).
#[inline(always)]
pub fn framing<B: Bytes + ?Sized>(b: &B, found: &Found) -> Framing {
    let body = get(&found.body_at);
    if body == 0 {
        return if get(&found.incomplete) {
            Framing::Unknown
        } else {
            Framing::Fills
        };
    }
    let at = get(&found.content_length_at);
    if at == 0 {
        return Framing::Length(body);
    }
    match content_length(b, at) {
        Some(n) => Framing::Length(body + n as usize),
        None => Framing::Unknown,
    }
}

/// `Found::content_length_at` of a message whose Content-Length is ambiguous (two of them,
/// one without a readable value, a folded line): beyond every real position.
const AMBIGUOUS: usize = SCAN_LIMIT;

/// Most digits of a Content-Length read: 9,999,999 bytes is beyond any SIP message.
const CONTENT_LENGTH_DIGITS: usize = 7;

/// The value of the Content-Length header whose value starts at `value`: digits after
/// optional whitespace, ended by whitespace, `;` or the line end.
#[inline(never)]
pub fn content_length<B: Bytes + ?Sized>(b: &B, value: usize) -> Option<u32> {
    if value == 0 || value >= SCAN_LIMIT {
        return None;
    }
    let mut at = forget(b, value);
    for _ in 0..4 {
        match b.byte(at) {
            Some(b' ') | Some(b'\t') => at += 1,
            _ => break,
        }
    }
    let w = b.word_or_tail(forget(b, at))?;
    let mut n: u32 = 0;
    let mut digits = 0;
    for i in 0..CONTENT_LENGTH_DIGITS + 1 {
        let c = (w >> (8 * i)) as u8;
        if !c.is_ascii_digit() {
            // Strict, as PBXs read it: digits, then whitespace or the line's end.
            let ends = matches!(c, b'\r' | b'\n' | b' ' | b'\t' | 0);
            return (digits > 0 && ends).then_some(n);
        }
        if i == CONTENT_LENGTH_DIGITS {
            return None;
        }
        n = n * 10 + (c - b'0') as u32;
        digits += 1;
    }
    None
}

/// The byte after the colon of the header line at `line` (0 when there is none nearby).
#[inline(always)]
fn after_colon<B: Bytes + ?Sized>(b: &B, line: usize) -> usize {
    match find(b, line, b':', 4) {
        Some(c) if c + 1 < SCAN_LIMIT => forget(b, c + 1),
        _ => 0,
    }
}

/// The end (the '\n') of the logical header line whose value starts at `value`: one folded
/// continuation line (starting with a space or tab) is followed.
#[inline(always)]
fn value_end<B: Bytes + ?Sized>(b: &B, value: usize) -> Option<usize> {
    let nl = find(b, value, b'\n', MAX_LINE / 8)?;
    match b.byte(nl + 1) {
        Some(b' ') | Some(b'\t') => find(b, nl + 1, b'\n', MAX_LINE / 8),
        _ => Some(nl),
    }
}

/// The user part of the first `sip:`, `sips:` or `tel:` URI in the header value at `value`
/// (To, From), up to its `@` (SIP) or its `;`/`>`/end (tel). None when there is no URI with
/// a user part within the header.
// Not inlined: its unrolled loops would crowd the caller's 512-byte stack; as its own BPF
// function it has a frame of its own, and only packets that need a user pay for the call.
#[inline(never)]
pub fn uri_user<B: Bytes + ?Sized>(b: &B, value: usize) -> Option<Extension> {
    if value == 0 {
        return None;
    }
    if value >= SCAN_LIMIT {
        return None;
    }
    let value = forget(b, value);
    let end = value_end(b, value)?;
    let mut pos = value;
    // A display name may hold colons of its own: try the first few.
    for _ in 0..4 {
        let colon = find(b, pos, b':', 16)?;
        if colon >= end || colon >= SCAN_LIMIT {
            return None;
        }
        let colon = forget(b, colon);
        if colon >= value + 3 {
            // Laundered: a compiler that knows colon >= 3 reads bytes at (colon - 3) + k as
            // colon + (k - 3), a negative offset older verifiers (6.1) cannot bound.
            let w = b.word(forget(b, colon - 3))? | LOWER;
            let (s0, s1, s2) = (w as u8, (w >> 8) as u8, (w >> 16) as u8);
            let sip = (s0 == b's' && s1 == b'i' && s2 == b'p') || (s0 == b'i' && s1 == b'p' && s2 == b's');
            let tel = s0 == b't' && s1 == b'e' && s2 == b'l';
            if sip || tel {
                return user_part(b, colon + 1, tel);
            }
        }
        pos = colon + 1;
    }
    None
}

/// Bit 7 of each byte of `w` that ends a URI user (`@ ; > ? , :`, whitespace, line end);
/// exact for the lowest one.
#[inline(always)]
fn user_delimiters(w: u64) -> u64 {
    bytes_equal(w, b'@')
        | bytes_equal(w, b';')
        | bytes_equal(w, b'>')
        | bytes_equal(w, b'?')
        | bytes_equal(w, b',')
        | bytes_equal(w, b':')
        | bytes_equal(w, b' ')
        | bytes_equal(w, b'\r')
        | bytes_equal(w, b'\n')
}

/// The URI user that starts at `at`: bytes up to the first delimiter, at most [`EXT_LEN`]
/// kept (a longer user is cut, not refused). The user must end within 64 bytes, and a SIP
/// user must be followed by its `@` (after an optional password). A word at a time: the
/// delimiters of a word are found together, no byte-by-byte branches.
#[inline(always)]
fn user_part<B: Bytes + ?Sized>(b: &B, at: usize, tel: bool) -> Option<Extension> {
    let (mut lo, mut hi) = (0u64, 0u64);
    for k in 0..8usize {
        let w = b.word(at + 8 * k)?;
        let d = user_delimiters(w);
        if d == 0 {
            if k == 0 {
                lo = w;
            } else if k == 1 {
                hi = w;
            }
            continue;
        }
        let i = first_flagged(d);
        if k == 0 && i == 0 {
            return None;
        }
        let part = w & mask(i);
        if k == 0 {
            lo = part;
        } else if k == 1 {
            hi = part;
        }
        let c = (w >> (8 * i)) as u8;
        let mut ext = [0u8; EXT_LEN];
        ext[..8].copy_from_slice(&lo.to_le_bytes());
        ext[8..].copy_from_slice(&hi.to_le_bytes());
        if tel {
            return if c == b'@' || c == b':' { None } else { Some(ext) };
        }
        return match c {
            b'@' => Some(ext),
            // sip:user:password@host
            b':' => find(b, at + 8 * k + i, b'@', 8).map(|_| ext),
            _ => None,
        };
    }
    None
}

/// The CSeq header's identity and method (`CSeq: 2 REGISTER`). The identity is the first 16
/// bytes of the value folded to 32 bits: the same for a retransmission (the header is copied
/// verbatim into every answer), different once the number changes. No number is parsed:
/// digit-by-digit parsing makes the kernel verifier walk every digit count separately.
#[inline(never)]
pub fn cseq<B: Bytes + ?Sized>(b: &B, value: usize) -> Option<(u32, Method)> {
    if value == 0 || value >= SCAN_LIMIT {
        return None;
    }
    let value = forget(b, value);
    let w0 = b.word_or_tail(value)?;
    let w1 = b.word_or_tail(value + 8).unwrap_or(0);
    let mixed = w0 ^ w1.rotate_left(29);
    let id = (mixed as u32) ^ ((mixed >> 32) as u32);
    // The method follows the number and whitespace, within the first 16 bytes.
    for k in 2..16 {
        let Some(before) = b.byte(value + k - 1) else {
            break;
        };
        if before != b' ' && before != b'\t' {
            continue;
        }
        let Some(token) = b.word_or_tail(value + k) else {
            break;
        };
        // The byte after an 8-letter token (REGISTER); past the end reads as the line end.
        let m = method_token(token, Some(b.byte(value + k + 8).unwrap_or(b'\n')));
        if m != Method::Unknown {
            return Some((id, m));
        }
    }
    Some((id, Method::Unknown))
}

/// What tells one request from another for the answers' bookkeeping: the top Via (whose
/// branch is new for every request and the same for its retransmissions, RFC 3261 §8.1.1.7)
/// folded with the CSeq identity. Robots such as svcrack keep Call-ID and CSeq for every
/// guess; only the branch changes. The first 96 bytes of the Via value are folded, enough to
/// reach the branch after an IPv6 sent-by.
#[inline(always)]
pub fn request_identity<B: Bytes + ?Sized>(b: &B, via_at: usize, cseq_id: u32) -> u32 {
    let mut h: u64 = cseq_id as u64;
    if via_at != 0 && via_at < SCAN_LIMIT {
        let at = forget(b, via_at);
        for k in 0..12 {
            let w = b.word_or_tail(at + 8 * k).unwrap_or(0);
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
        }
    }
    (h as u32) ^ ((h >> 32) as u32)
}

/// The method of a CSeq's method token (which ends at whitespace or the line end).
#[inline(always)]
fn method_token(w: u64, ninth: Option<u8>) -> Method {
    // A zero byte is the padding past the end of the message: the token ends there too.
    let ends = |c: u8| c == b'\r' || c == b'\n' || c == b' ' || c == b'\t' || c == 0;
    let ends_at = |n: usize| ends(((w >> (8 * n)) & 0xff) as u8);
    if w == word(b"REGISTER") && ninth.is_some_and(ends) {
        return Method::Register;
    }
    if w & mask(6) == word(b"INVITE") && ends_at(6) {
        return Method::Invite;
    }
    if w & mask(7) == word(b"OPTIONS") && ends_at(7) {
        return Method::Options;
    }
    if w & mask(7) == word(b"MESSAGE") && ends_at(7) {
        return Method::Message;
    }
    if w == word(b"SUBSCRIB") {
        return Method::Subscribe;
    }
    if w & mask(3) == word(b"BYE") && ends_at(3) {
        return Method::Bye;
    }
    Method::Unknown
}

/// The three-digit status code of a response (`SIP/2.0 401 …`), from the payload's second
/// word; None when those bytes are not three digits and a space.
#[inline(always)]
pub fn status_code(second_word: u64) -> Option<u16> {
    let d0 = (second_word & 0xff) as u8;
    let d1 = ((second_word >> 8) & 0xff) as u8;
    let d2 = ((second_word >> 16) & 0xff) as u8;
    let sp = ((second_word >> 24) & 0xff) as u8;
    if !(b'1'..=b'6').contains(&d0) || !d1.is_ascii_digit() || !d2.is_ascii_digit() || sp != b' ' {
        return None;
    }
    Some((d0 - b'0') as u16 * 100 + (d1 - b'0') as u16 * 10 + (d2 - b'0') as u16)
}

/// An extension as text (for logs and the CLI): its bytes up to the first zero.
pub fn ext_str(ext: &Extension) -> &str {
    let n = ext.iter().position(|&c| c == 0).unwrap_or(EXT_LEN);
    core::str::from_utf8(&ext[..n]).unwrap_or("?")
}

/// An extension from text (cut to [`EXT_LEN`] bytes, as the scanner keeps it).
pub fn ext_from(s: &str) -> Extension {
    let mut e = [0u8; EXT_LEN];
    let n = s.len().min(EXT_LEN);
    e[..n].copy_from_slice(&s.as_bytes()[..n]);
    e
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    const ALL: Wanted = Wanted {
        via: true,
        to: true,
        from: true,
        cseq: true,
        call_id: true,
        user_agent: true,
        credentials: true,
        end: false,
    };

    /// The To or From user of a message, as callers read it.
    fn user(msg: &[u8], f: impl Fn(&Found) -> usize) -> Option<Extension> {
        uri_user(msg, f(&scan_headers(msg, 0, ALL)))
    }

    fn cseq_of(msg: &[u8]) -> Option<(u32, Method)> {
        cseq(msg, scan_headers(msg, 0, ALL).cseq_at)
    }

    const REPLY_401: &[u8] = b"SIP/2.0 401 Unauthorized\r\n\
Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-1;rport=5060;received=198.51.100.7\r\n\
From: \"Robot\" <sip:201@pbx.example>;tag=abc\r\n\
To: <sip:201@pbx.example>;tag=xyz\r\n\
Call-ID: 1-2@10.0.0.2\r\n\
CSeq: 7 REGISTER\r\n\
WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n\"\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn finds_to_and_cseq_of_a_401() {
        let f = scan_headers(REPLY_401, 0, ALL);
        assert!(!f.incomplete);
        assert_eq!(uri_user(REPLY_401, f.to_at), Some(ext_from("201")));
        assert_eq!(cseq_of(REPLY_401).map(|c| c.1), Some(Method::Register));
        assert!(!f.credentials);
        assert_eq!(status_code(REPLY_401.word(8).unwrap()), Some(401));
    }

    #[test]
    fn compact_lowercase_and_spaced_names() {
        let msg = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP x\r\nf: <sip:300@h>\r\nt :  \"A: B\" <sips:4711@h:5061;transport=tls>\r\ncseq:  12   INVITE\r\n\r\n";
        assert_eq!(user(msg, |f| f.to_at), Some(ext_from("4711")));
        assert_eq!(user(msg, |f| f.from_at), Some(ext_from("300")));
        let c = cseq_of(&msg[..]);
        assert_eq!(c.map(|c| c.1), Some(Method::Invite));
        // The identity changes with the number, not with a retransmission.
        assert_eq!(c, cseq_of(&msg[..]));
        let next = b"SIP/2.0 200 OK\r\nf: <sip:300@h>\r\nt: <sip:1@h>\r\ncseq:  13   INVITE\r\n\r\n";
        assert_ne!(cseq_of(&next[..]).map(|c| c.0), c.map(|c| c.0));
        let upper = b"SIP/2.0 200 OK\r\nTO: sip:55@h\r\nCSEQ: 1 REGISTER\r\n\r\n";
        assert_eq!(user(upper, |f| f.to_at), Some(ext_from("55")));
    }

    #[test]
    fn folded_header_and_tel_uri() {
        let msg =
            b"INVITE tel:+232123 SIP/2.0\r\nTo:\r\n <tel:+232-76-123;phone-context=x>\r\nFrom: <sip:201@h>\r\n\r\n";
        assert_eq!(user(msg, |f| f.to_at), Some(ext_from("+232-76-123")));
    }

    #[test]
    fn credentials_are_seen_in_either_header_and_not_confused_with_challenges() {
        let with = b"REGISTER sip:h SIP/2.0\r\nTo: <sip:1@h>\r\nAuthorization: Digest username=\"1\"\r\n\r\n";
        assert!(scan_headers(&with[..], 0, ALL).credentials);
        let proxy = b"INVITE sip:2@h SIP/2.0\r\nproxy-authorization: Digest x\r\n\r\n";
        assert!(scan_headers(&proxy[..], 0, ALL).credentials);
        let challenge = b"SIP/2.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Digest x\r\n\r\n";
        assert!(!scan_headers(&challenge[..], 0, ALL).credentials);
    }

    #[test]
    fn uri_without_user_or_outside_the_header_is_none() {
        let msg = b"SIP/2.0 200 OK\r\nTo: <sip:pbx.example>\r\nContact: <sip:201@h>\r\n\r\n";
        assert_eq!(user(msg, |f| f.to_at), None);
        let msg = b"SIP/2.0 200 OK\r\nTo: nobody\r\nContact: <sip:201@h>\r\n\r\n";
        assert_eq!(user(msg, |f| f.to_at), None);
    }

    #[test]
    fn headers_beyond_the_bound_are_not_seen_and_the_scan_says_so() {
        let mut msg = b"SIP/2.0 401 Unauthorized\r\n".to_vec();
        while msg.len() < SCAN_LIMIT + 10 {
            msg.extend_from_slice(b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-xxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
        msg.extend_from_slice(b"To: <sip:201@h>\r\nCSeq: 1 REGISTER\r\n\r\n");
        let f = scan_headers(&msg[..], 0, ALL);
        assert!(f.incomplete);
        assert_eq!(f.to_at, 0);
    }

    #[test]
    fn truncated_messages_never_panic_and_never_invent_a_user() {
        for n in 0..REPLY_401.len() {
            let m = &REPLY_401[..n];
            let f = scan_headers(m, 0, ALL);
            let _ = cseq(m, f.cseq_at);
            if let Some(u) = uri_user(m, f.to_at) {
                assert_eq!(u, ext_from("201"), "cut at {n}");
            }
        }
    }

    #[test]
    fn long_users_are_cut_to_sixteen_bytes() {
        let msg = b"SIP/2.0 200 OK\r\nTo: <sip:12345678901234567890@h>\r\n\r\n";
        assert_eq!(user(msg, |f| f.to_at), Some(ext_from("1234567890123456")));
    }

    #[test]
    fn short_answers_with_odd_header_forms_are_read() {
        for (text, user) in [
            (&b"SIP/2.0 401 Unauthorized\r\nv: SIP/2.0/UDP x\r\nf: <sip:201@h>;tag=1\r\nt: <sip:201@h>\r\ni: c@x\r\nCSeq: 2 REGISTER\r\n\r\n"[..], "201"),
            (b"SIP/2.0 404 Not Found\r\nvia: SIP/2.0/UDP x\r\nfrom: <sip:7@h>;tag=1\r\nto: <sip:7@h>\r\ncseq: 1 REGISTER\r\n\r\n", "7"),
            (b"SIP/2.0 403 Forbidden\r\nFrom  : <sip:7@h>;tag=1\r\nTo  :  <sip:7@h>\r\nCSeq :  9   REGISTER\r\n\r\n", "7"),
            (b"SIP/2.0 401 Unauthorized\r\nFrom: <sip:7@h>;tag=1\r\nTo:\r\n  \"Desk: 7\" <sip:7@h>\r\nCSeq: 3 REGISTER\r\n\r\n", "7"),
        ] {
            let w = Wanted { to: true, cseq: true, ..Wanted::NONE };
            let f = scan_headers(text, 0, w);
            assert_eq!(cseq(text, f.cseq_at).map(|c| c.1), Some(Method::Register), "{}", core::str::from_utf8(text).unwrap());
            assert_eq!(uri_user(text, f.to_at), Some(ext_from(user)), "{}", core::str::from_utf8(text).unwrap());
        }
    }

    #[test]
    fn the_request_identity_follows_the_via_branch_not_only_the_cseq() {
        let answer = |branch: &str, cseq: u32| {
            format!("SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP [2001:db8:1234:5678:9abc:def0:1234:5678]:5060;rport;branch=z9hG4bK-{branch}\r\nTo: <sip:201@h>\r\nCSeq: {cseq} REGISTER\r\n\r\n").into_bytes()
        };
        let id = |m: &[u8]| {
            let f = scan_headers(m, 0, ALL);
            request_identity(m, f.via_at, cseq(m, f.cseq_at).unwrap().0)
        };
        assert_eq!(id(&answer("a1", 2)), id(&answer("a1", 2)), "a retransmission");
        assert_ne!(
            id(&answer("a1", 2)),
            id(&answer("a2", 2)),
            "svcrack: same CSeq, new branch"
        );
        assert_ne!(id(&answer("a1", 2)), id(&answer("a1", 3)), "a new CSeq");
    }

    /// How a scan for the end frames `msg`, scanning round after round as the kernel does.
    fn frame(msg: &[u8]) -> Framing {
        let mut scan = Scan {
            wanted: Wanted {
                end: true,
                ..Wanted::NONE
            },
            found: Found::default(),
        };
        let mut at = first_header_line(msg, 0).unwrap();
        for _ in 0..MAX_SCAN_ROUNDS {
            scan_lines(msg, at, &mut scan);
            if scan.found.resume_at == 0 {
                break;
            }
            at = scan.found.resume_at;
        }
        framing(msg, &scan.found)
    }

    const REGISTER: &[u8] = b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK-1\r\n\
To: <sip:201@pbx>\r\nFrom: <sip:201@pbx>;tag=1\r\nCall-ID: a\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn frames_pipelined_messages_by_content_length() {
        let invite = b"INVITE sip:+23276123456@pbx SIP/2.0\r\nl: 5\r\n\r\nv=0\r\n";
        let two = [REGISTER, &invite[..]].concat();
        assert_eq!(frame(&two), Framing::Length(REGISTER.len()));
        // A body is skipped by its length, compact form and odd spacing included.
        let with_body = [&invite[..], REGISTER].concat();
        assert_eq!(frame(&with_body), Framing::Length(invite.len()));
        let spaced =
            b"OPTIONS sip:pbx SIP/2.0\r\ncontent-length :   12 \r\n\r\n0123456789abREGISTER sip:pbx SIP/2.0\r\n";
        assert_eq!(frame(spaced), Framing::Length(spaced.len() - 26));
        // No Content-Length: no body.
        let bare = b"OPTIONS sip:pbx SIP/2.0\r\nTo: <sip:1@h>\r\n\r\nOPTIONS sip:pbx SIP/2.0\r\n\r\n";
        assert_eq!(frame(bare), Framing::Length(42));
        // Bare LF line ends.
        let lf = b"OPTIONS sip:pbx SIP/2.0\nl: 0\n\nOPTIONS sip:pbx SIP/2.0\n\n";
        assert_eq!(frame(lf), Framing::Length(30));
    }

    #[test]
    fn a_message_alone_fills_its_bytes() {
        // The empty line is in the last seven bytes, where no word is read: nothing follows.
        assert_eq!(frame(REGISTER), Framing::Fills);
        // Headers cut by the end of a segment: the rest is in the next one.
        assert_eq!(frame(&REGISTER[..60]), Framing::Fills);
    }

    #[test]
    fn long_lines_are_walked_through_when_the_end_is_wanted() {
        let nonce = "n".repeat(400);
        let msg = format!(
            "REGISTER sip:pbx SIP/2.0\r\nAuthorization: Digest nonce=\"{nonce}\", response=\"x\"\r\nTo: <sip:201@h>\r\nContent-Length: 0\r\n\r\nOPTIONS sip:pbx SIP/2.0\r\n\r\n"
        );
        let first = msg.find("OPTIONS").unwrap();
        assert_eq!(frame(msg.as_bytes()), Framing::Length(first));
        // A chunk of a long line that looks like a header is not one.
        let tricky = format!(
            "REGISTER sip:pbx SIP/2.0\r\nX-Pad: {}t: <sip:999@h>\r\nTo: <sip:201@h>\r\n\r\n",
            "p".repeat(256 - 7)
        );
        let mut scan = Scan {
            wanted: Wanted {
                end: true,
                to: true,
                ..Wanted::NONE
            },
            found: Found::default(),
        };
        scan_lines(
            tricky.as_bytes(),
            first_header_line(tricky.as_bytes(), 0).unwrap(),
            &mut scan,
        );
        assert_eq!(uri_user(tricky.as_bytes(), scan.found.to_at), Some(ext_from("201")));
        // Without the end wanted, a long line still ends the scan, incomplete, as before.
        let f = scan_headers(msg.as_bytes(), 0, ALL);
        assert!(f.incomplete);
        assert_eq!(f.to_at, 0);
    }

    #[test]
    fn a_content_length_the_pbx_could_read_otherwise_is_not_trusted() {
        let tail = "OPTIONS sip:pbx SIP/2.0\r\n\r\n";
        // Two of them (a PBX may take either), one with no colon in reach, a folded line.
        for headers in [
            "Content-Length: 900\r\nContent-Length: 0\r\n",
            "l: 0\r\nContent-Length: 0\r\n",
            &format!("Content-Length{}: 0\r\n", " ".repeat(40)),
            "To: <sip:1@h>\r\n Content-Length: 60\r\n",
            "Content-Length: 5;x\r\n",
        ] {
            let m = format!("REGISTER sip:pbx SIP/2.0\r\n{headers}\r\n{tail}");
            assert_eq!(frame(m.as_bytes()), Framing::Unknown, "{headers:?}");
        }
        // Any byte between the words is still Content-Length, as PBXs' stream readers take it.
        let m = format!("REGISTER sip:pbx SIP/2.0\r\nContent_Length: 3\r\n\r\nabc{tail}");
        assert_eq!(frame(m.as_bytes()), Framing::Length(m.len() - tail.len()));
        // Content-Type is not Content-Length.
        let m = format!("REGISTER sip:pbx SIP/2.0\r\nContent-Type: application/sdp\r\n\r\n{tail}");
        assert_eq!(frame(m.as_bytes()), Framing::Length(m.len() - tail.len()));
    }

    #[test]
    fn unframeable_messages_say_so() {
        // Headers beyond the scan's bounds: more lines than the rounds read.
        let many = format!(
            "OPTIONS sip:pbx SIP/2.0\r\n{}\r\nOPTIONS sip:pbx SIP/2.0\r\n\r\n",
            "X: y\r\n".repeat(40)
        );
        assert_eq!(frame(many.as_bytes()), Framing::Unknown);
        // Beyond SCAN_LIMIT bytes.
        let long = format!(
            "OPTIONS sip:pbx SIP/2.0\r\n{}\r\n",
            format!("X-Pad: {}\r\n", "p".repeat(200)).repeat(6)
        );
        assert_eq!(frame(long.as_bytes()), Framing::Unknown);
        // A Content-Length that is not a number, or too long to be one.
        for bad in ["x", "-1", "99999999", "1e3", ""] {
            let m = format!("OPTIONS sip:pbx SIP/2.0\r\nContent-Length: {bad}\r\n\r\nOPTIONS sip:pbx SIP/2.0\r\n\r\n");
            assert_eq!(frame(m.as_bytes()), Framing::Unknown, "{bad:?}");
        }
    }

    #[test]
    fn word_helpers() {
        for i in 0..8 {
            let mut bytes = [b'x'; 8];
            bytes[i] = b'\n';
            if i < 7 {
                bytes[7] = b'\n';
            }
            let w = u64::from_le_bytes(bytes);
            assert_eq!(first_flagged(bytes_equal(w, b'\n')), i);
        }
        assert_eq!(status_code(u64::from_le_bytes(*b"404 Not ")), Some(404));
        assert_eq!(status_code(u64::from_le_bytes(*b"4x4 Not ")), None);
        assert_eq!(status_code(u64::from_le_bytes(*b"7004 Not")), None);
    }
}
