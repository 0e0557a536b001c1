//! A small builder for the frames the tests feed the program: Ethernet (with 802.1Q /
//! 802.1ad tags), IPv4 (options, fragments) or IPv6 (extension headers), then UDP, TCP or
//! ICMP. It records where each layer starts so tests can truncate at every boundary.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

#[derive(Clone, Debug)]
pub enum L3 {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// Bytes of IP options (a multiple of 4, at most 40).
        options_len: usize,
        /// Fragment offset in 8-byte units, and the more-fragments flag.
        frag_offset: u16,
        more_fragments: bool,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        /// Extension headers in order, each (protocol number, length in bytes).
        ext: Vec<(u8, usize)>,
        /// Fragment offset for a fragment extension header, in 8-byte units.
        frag_offset: u16,
    },
    /// Some other EtherType (ARP, say) with an opaque body.
    Other { ether_type: u16 },
}

#[derive(Clone, Debug)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    /// A TCP segment with these flags (0x18 PSH|ACK for data, 0x02 a SYN) and this many
    /// bytes of options (NOPs).
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        options_len: usize,
    },
    Icmp,
}

#[derive(Clone, Debug)]
pub struct PacketBuilder {
    tags: Vec<(u16, u16)>,
    l3: L3,
    l4: L4,
    payload: Vec<u8>,
}

/// A built frame and the offsets where its layers start.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// (layer name, offset) in order: "eth", "vlan"…, "ip", "ext"…, "l4", "payload".
    pub layers: Vec<(&'static str, usize)>,
}

impl Frame {
    /// The frame cut to `len` bytes.
    pub fn truncated(&self, len: usize) -> Vec<u8> {
        self.bytes[..len.min(self.bytes.len())].to_vec()
    }
    pub fn offset_of(&self, layer: &str) -> Option<usize> {
        self.layers.iter().find(|(n, _)| *n == layer).map(|(_, o)| *o)
    }
}

/// A minimal SIP request for a method, as a phone or a scanner sends it.
pub fn sip_request(method: &str, user: &str) -> Vec<u8> {
    format!(
        "{method} sip:{user}@pbx.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{user}\r\n\
         From: <sip:{user}@pbx.example>;tag=1\r\n\
         To: <sip:{user}@pbx.example>\r\n\
         Call-ID: {user}@192.0.2.10\r\n\
         CSeq: 1 {method}\r\n\
         User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

pub fn sip_response(status: &str) -> Vec<u8> {
    format!("SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 192.0.2.10\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// A SIP answer as a registrar sends it (kamailio's header order): `status` (e.g. "401
/// Unauthorized") to the request `CSeq: {cseq} {method}` of `from_user` concerning `to_user`.
pub fn sip_answer(status: &str, method: &str, cseq: u32, from_user: &str, to_user: &str) -> Vec<u8> {
    let challenge = if status.starts_with("401") {
        "WWW-Authenticate: Digest realm=\"pbx.example\", nonce=\"5f1f0c0ffee\", qop=\"auth\"\r\n"
    } else if status.starts_with("407") {
        "Proxy-Authenticate: Digest realm=\"pbx.example\", nonce=\"5f1f0c0ffee\", qop=\"auth\"\r\n"
    } else {
        ""
    };
    format!(
        "SIP/2.0 {status}\r\n\
         Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-{cseq};rport=5060;received=198.51.100.7\r\n\
         From: <sip:{from_user}@pbx.example>;tag=1\r\n\
         To: <sip:{to_user}@pbx.example>;tag=srv{cseq}\r\n\
         Call-ID: {from_user}-{method}@198.51.100.7\r\n\
         CSeq: {cseq} {method}\r\n\
         {challenge}\
         Server: kamailio (5.6.3 (x86_64/linux))\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A SIP request from `from_user` to `to_user` (REGISTER: both the same), with CSeq `cseq`.
pub fn sip_request_from(method: &str, from_user: &str, to_user: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:{to_user}@pbx.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-{cseq}\r\n\
         From: <sip:{from_user}@pbx.example>;tag=1\r\n\
         To: <sip:{to_user}@pbx.example>\r\n\
         Call-ID: {from_user}-{method}@198.51.100.7\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

impl PacketBuilder {
    /// An answer from the PBX (192.0.2.1:5060) to `peer`:5060.
    pub fn answer4(peer: Ipv4Addr, payload: &[u8]) -> Self {
        Self::udp4(Ipv4Addr::new(192, 0, 2, 1), peer, 5060, 5060, payload)
    }

    /// A request from `src`:5060 to the PBX.
    pub fn request4(src: Ipv4Addr, payload: &[u8]) -> Self {
        Self::udp4(src, Ipv4Addr::new(192, 0, 2, 1), 5060, 5060, payload)
    }

    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Self {
        PacketBuilder {
            tags: Vec::new(),
            l3: L3::V4 {
                src,
                dst,
                options_len: 0,
                frag_offset: 0,
                more_fragments: false,
            },
            l4: L4::Udp { sport, dport },
            payload: payload.to_vec(),
        }
    }

    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Self {
        PacketBuilder {
            tags: Vec::new(),
            l3: L3::V6 {
                src,
                dst,
                ext: Vec::new(),
                frag_offset: 0,
            },
            l4: L4::Udp { sport, dport },
            payload: payload.to_vec(),
        }
    }

    /// A SIP request over UDP/IPv4 to port 5060.
    pub fn sip4(src: Ipv4Addr, method: &str) -> Self {
        Self::udp4(
            src,
            Ipv4Addr::new(192, 0, 2, 1),
            5060,
            5060,
            &sip_request(method, "200"),
        )
    }

    /// A SIP request over UDP/IPv6 to port 5060.
    pub fn sip6(src: Ipv6Addr, method: &str) -> Self {
        Self::udp6(
            src,
            "2001:db8::1".parse().unwrap(),
            5060,
            5060,
            &sip_request(method, "200"),
        )
    }

    pub fn other_ethertype(ether_type: u16) -> Self {
        PacketBuilder {
            tags: Vec::new(),
            l3: L3::Other { ether_type },
            l4: L4::Icmp,
            payload: vec![0; 28],
        }
    }

    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.tags.push((tpid, vid));
        self
    }

    /// The payload in a TCP data segment (PSH|ACK) instead of a datagram.
    pub fn tcp(mut self) -> Self {
        if let L4::Udp { sport, dport } = self.l4 {
            self.l4 = L4::Tcp {
                sport,
                dport,
                flags: 0x18,
                options_len: 0,
            };
        }
        self
    }

    /// A TCP segment with these flags (made TCP first if it was not).
    pub fn tcp_flags(mut self, f: u8) -> Self {
        self = self.tcp();
        if let L4::Tcp { flags, .. } = &mut self.l4 {
            *flags = f;
        }
        self
    }

    /// No payload (an ACK, FIN or RST).
    pub fn truncate_payload(mut self) -> Self {
        self.payload.clear();
        self
    }

    /// A connection's first SYN, with no payload.
    pub fn syn(mut self) -> Self {
        self.payload.clear();
        self.tcp_flags(0x02)
    }

    /// TCP options (a multiple of 4 bytes, at most 40).
    pub fn tcp_options(mut self, len: usize) -> Self {
        self = self.tcp();
        if let L4::Tcp { options_len, .. } = &mut self.l4 {
            *options_len = len;
        }
        self
    }

    pub fn icmp(mut self) -> Self {
        self.l4 = L4::Icmp;
        self
    }

    pub fn ip_options(mut self, len: usize) -> Self {
        if let L3::V4 { options_len, .. } = &mut self.l3 {
            *options_len = len;
        }
        self
    }

    pub fn fragment(mut self, offset_units: u16, more: bool) -> Self {
        match &mut self.l3 {
            L3::V4 {
                frag_offset,
                more_fragments,
                ..
            } => {
                *frag_offset = offset_units;
                *more_fragments = more;
            }
            L3::V6 { ext, frag_offset, .. } => {
                ext.push((44, 8));
                *frag_offset = offset_units;
            }
            L3::Other { .. } => {}
        }
        self
    }

    /// Adds an IPv6 extension header (0 hop-by-hop, 43 routing, 60 destination options, 44 fragment).
    pub fn ext(mut self, proto: u8, len: usize) -> Self {
        if let L3::V6 { ext, .. } = &mut self.l3 {
            ext.push((proto, len));
        }
        self
    }

    pub fn build(&self) -> Frame {
        let mut b = Vec::with_capacity(128 + self.payload.len());
        let mut layers = vec![("eth", 0)];
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        let l3_type = match &self.l3 {
            L3::V4 { .. } => 0x0800u16,
            L3::V6 { .. } => 0x86dd,
            L3::Other { ether_type } => *ether_type,
        };
        for (tpid, vid) in &self.tags {
            b.extend_from_slice(&tpid.to_be_bytes());
            layers.push(("vlan", b.len()));
            b.extend_from_slice(&vid.to_be_bytes());
        }
        b.extend_from_slice(&l3_type.to_be_bytes());

        let l4 = self.l4_bytes();
        match &self.l3 {
            L3::V4 {
                src,
                dst,
                options_len,
                frag_offset,
                more_fragments,
            } => {
                layers.push(("ip", b.len()));
                let ihl = 20 + options_len;
                let total = ihl + l4.len();
                let mut h = vec![0u8; ihl];
                h[0] = 0x40 | (ihl / 4) as u8;
                h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                let frags = (*frag_offset & 0x1fff) | if *more_fragments { 0x2000 } else { 0 };
                h[6..8].copy_from_slice(&frags.to_be_bytes());
                h[8] = 64;
                h[9] = self.l4_proto();
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                for (i, byte) in h[20..].iter_mut().enumerate() {
                    // NOPs, then end-of-options: valid option bytes.
                    *byte = if i + 1 == *options_len { 0 } else { 1 };
                }
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                b.extend_from_slice(&h);
            }
            L3::V6 {
                src,
                dst,
                ext,
                frag_offset,
            } => {
                layers.push(("ip", b.len()));
                let ext_len: usize = ext.iter().map(|(_, l)| l).sum();
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                h[6] = ext.first().map_or(self.l4_proto(), |(p, _)| *p);
                h[7] = 64;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                b.extend_from_slice(&h);
                for (i, (proto, len)) in ext.iter().enumerate() {
                    layers.push(("ext", b.len()));
                    let next = ext.get(i + 1).map_or(self.l4_proto(), |(p, _)| *p);
                    let mut e = vec![0u8; *len];
                    e[0] = next;
                    if *proto == 44 {
                        e[2..4].copy_from_slice(&((*frag_offset << 3) | 1).to_be_bytes());
                    } else {
                        e[1] = (len / 8 - 1) as u8;
                    }
                    b.extend_from_slice(&e);
                }
            }
            L3::Other { .. } => {
                layers.push(("ip", b.len()));
                b.extend_from_slice(&self.payload);
                return Frame { bytes: b, layers };
            }
        }
        layers.push(("l4", b.len()));
        let payload_at = b.len() + (l4.len() - self.payload.len());
        b.extend_from_slice(&l4);
        layers.push(("payload", payload_at));
        Frame { bytes: b, layers }
    }

    fn l4_proto(&self) -> u8 {
        match self.l4 {
            L4::Udp { .. } => 17,
            L4::Tcp { .. } => 6,
            L4::Icmp => 1,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.l4 {
            L4::Udp { sport, dport } => {
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            L4::Tcp {
                sport,
                dport,
                flags,
                options_len,
            } => {
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&[0; 8]);
                out.push((((20 + options_len) / 4) as u8) << 4);
                out.push(flags);
                out.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
                out.extend(std::iter::repeat_n(1u8, options_len));
            }
            L4::Icmp => out.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]),
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

fn checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_where_the_headers_are() {
        let f = PacketBuilder::sip4(Ipv4Addr::new(10, 0, 0, 1), "REGISTER")
            .vlan(TPID_8021AD, 10)
            .vlan(TPID_8021Q, 20)
            .ip_options(8)
            .build();
        assert_eq!(f.offset_of("ip"), Some(22));
        assert_eq!(f.offset_of("l4"), Some(22 + 28));
        assert_eq!(&f.bytes[f.offset_of("payload").unwrap()..][..9], b"REGISTER ");
        assert_eq!(checksum(&f.bytes[22..50]), 0);
    }

    #[test]
    fn ipv6_extension_chain() {
        let f = PacketBuilder::sip6("2001:db8::2".parse().unwrap(), "INVITE")
            .ext(0, 8)
            .ext(60, 16)
            .build();
        let ip = f.offset_of("ip").unwrap();
        assert_eq!(f.bytes[ip + 6], 0);
        assert_eq!(f.bytes[ip + 40], 60);
        assert_eq!(f.bytes[ip + 48], 17);
        assert_eq!(f.bytes[ip + 49], 1);
        assert_eq!(&f.bytes[f.offset_of("payload").unwrap()..][..7], b"INVITE ");
    }
}
