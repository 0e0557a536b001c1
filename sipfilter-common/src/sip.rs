//! SIP message classification from the first bytes of a UDP payload.

/// What a SIP datagram is, from its first line. The order is the counter slot order.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Register = 0,
    Invite,
    Options,
    Ack,
    Bye,
    Cancel,
    Subscribe,
    Notify,
    Message,
    Info,
    Prack,
    Update,
    Refer,
    Publish,
    /// A response (`SIP/2.0 ` status line).
    Response,
    /// Anything else on a SIP port: keep-alive CRLFs, short or non-SIP payloads.
    Unknown,
}

impl Method {
    pub const COUNT: usize = 16;
    pub const ALL: [Method; Method::COUNT] = [
        Method::Register,
        Method::Invite,
        Method::Options,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Subscribe,
        Method::Notify,
        Method::Message,
        Method::Info,
        Method::Prack,
        Method::Update,
        Method::Refer,
        Method::Publish,
        Method::Response,
        Method::Unknown,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Method::Register => "REGISTER",
            Method::Invite => "INVITE",
            Method::Options => "OPTIONS",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Message => "MESSAGE",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Publish => "PUBLISH",
            Method::Response => "response",
            Method::Unknown => "unknown",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Method> {
        if (v as usize) < Method::COUNT {
            Some(Method::ALL[v as usize])
        } else {
            None
        }
    }

    /// The token bucket this message draws from.
    #[inline(always)]
    pub const fn class(self) -> RateClass {
        match self {
            Method::Register => RateClass::Register,
            Method::Invite => RateClass::Invite,
            _ => RateClass::Other,
        }
    }
}

/// Per-source token buckets. REGISTER and INVITE have their own because they are what the
/// attack steps (enumeration, cracking, toll fraud) send in volume; everything else shares one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateClass {
    Register = 0,
    Invite = 1,
    Other = 2,
}

impl RateClass {
    pub const COUNT: usize = 3;
    pub const ALL: [RateClass; RateClass::COUNT] = [RateClass::Register, RateClass::Invite, RateClass::Other];

    pub const fn name(self) -> &'static str {
        match self {
            RateClass::Register => "register",
            RateClass::Invite => "invite",
            RateClass::Other => "other",
        }
    }

    pub const fn from_u8(v: u8) -> Option<RateClass> {
        match v {
            0 => Some(RateClass::Register),
            1 => Some(RateClass::Invite),
            2 => Some(RateClass::Other),
            _ => None,
        }
    }
}

/// How many payload bytes [`classify`] looks at. Every SIP request line is longer
/// ("ACK sip:a@b SIP/2.0\r\n" is 21 bytes), so a shorter payload is not a SIP message.
pub const CLASSIFY_LEN: usize = 16;

/// Builds the little-endian u64 of the first `N` (≤ 8) bytes of `s`: the value a load of
/// the payload's first eight bytes has after masking to `N` bytes.
pub(crate) const fn word(s: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() && i < 8 {
        v |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// The low `n` bytes of a word.
pub(crate) const fn mask(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// Classifies a SIP datagram by its first [`CLASSIFY_LEN`] payload bytes.
///
/// Methods are case-sensitive tokens followed by one space (RFC 3261 §7.1), so the
/// comparison is on exact bytes: two 64-bit compares at most per candidate, no loops, which
/// keeps the verifier and the per-packet cost happy.
#[inline(always)]
pub fn classify(head: &[u8; CLASSIFY_LEN]) -> Method {
    let w0 = u64::from_le_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
    let b8 = head[8];
    let b9 = head[9];

    // Eight-byte tokens (including the trailing space where the token is seven letters).
    if w0 == word(b"REGISTER") {
        return if b8 == b' ' { Method::Register } else { Method::Unknown };
    }
    if w0 == word(b"SUBSCRIB") {
        return if b8 == b'E' && b9 == b' ' {
            Method::Subscribe
        } else {
            Method::Unknown
        };
    }
    if w0 == word(b"SIP/2.0 ") {
        return Method::Response;
    }
    if w0 == word(b"OPTIONS ") {
        return Method::Options;
    }
    if w0 == word(b"MESSAGE ") {
        return Method::Message;
    }
    if w0 == word(b"PUBLISH ") {
        return Method::Publish;
    }
    let w7 = w0 & mask(7);
    if w7 == word(b"INVITE ") {
        return Method::Invite;
    }
    if w7 == word(b"CANCEL ") {
        return Method::Cancel;
    }
    if w7 == word(b"NOTIFY ") {
        return Method::Notify;
    }
    if w7 == word(b"UPDATE ") {
        return Method::Update;
    }
    let w6 = w0 & mask(6);
    if w6 == word(b"PRACK ") {
        return Method::Prack;
    }
    if w6 == word(b"REFER ") {
        return Method::Refer;
    }
    if w0 & mask(5) == word(b"INFO ") {
        return Method::Info;
    }
    let w4 = w0 & mask(4);
    if w4 == word(b"ACK ") {
        return Method::Ack;
    }
    if w4 == word(b"BYE ") {
        return Method::Bye;
    }
    Method::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &[u8]) -> [u8; CLASSIFY_LEN] {
        let mut h = [0u8; CLASSIFY_LEN];
        let n = s.len().min(CLASSIFY_LEN);
        h[..n].copy_from_slice(&s[..n]);
        h
    }

    #[test]
    fn every_method_is_recognised_by_its_request_line() {
        for m in Method::ALL {
            let line = match m {
                Method::Response => continue,
                Method::Unknown => continue,
                _ => m.name(),
            };
            let mut buf = [0u8; 64];
            let text = b" sip:200@pbx.example SIP/2.0\r\n";
            buf[..line.len()].copy_from_slice(line.as_bytes());
            buf[line.len()..line.len() + text.len()].copy_from_slice(text);
            assert_eq!(classify(&head(&buf)), m, "{}", line);
        }
        assert_eq!(classify(&head(b"SIP/2.0 401 Unauthorized\r\n")), Method::Response);
    }

    #[test]
    fn near_misses_are_unknown() {
        for s in [
            &b"register sip:x SIP/2.0"[..],
            b"REGISTERX sip:x SIP/2.0",
            b"SUBSCRIBER sip:x SIP/2.0",
            b"INVITEX sip:x SIP/2.0",
            b"ACKX sip:x SIP/2.0",
            b"SIP/2.1 200 OK\r\n",
            b"\r\n\r\n",
            b"",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(classify(&head(s)), Method::Unknown, "{:?}", s);
        }
    }

    #[test]
    fn classification_of_every_single_byte_change_never_panics() {
        let base = head(b"REGISTER sip:200@x SIP/2.0");
        for i in 0..CLASSIFY_LEN {
            for b in 0..=255u8 {
                let mut h = base;
                h[i] = b;
                let _ = classify(&h);
            }
        }
    }

    #[test]
    fn classes_group_methods() {
        assert_eq!(Method::Register.class(), RateClass::Register);
        assert_eq!(Method::Invite.class(), RateClass::Invite);
        assert_eq!(Method::Options.class(), RateClass::Other);
        assert_eq!(Method::Response.class(), RateClass::Other);
        for (i, m) in Method::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            assert_eq!(Method::from_u8(i as u8), Some(*m));
        }
        assert_eq!(Method::from_u8(Method::COUNT as u8), None);
    }
}
