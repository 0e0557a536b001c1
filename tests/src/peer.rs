//! A source talking to the PBX through both programs: its requests through the XDP program,
//! the PBX's answers to it through the answers program, in the order a registrar would see
//! and send them.

use std::net::Ipv4Addr;

use crate::{
    harness::{TestFilter, XDP_PASS},
    packet::{sip_answer, sip_request_from, PacketBuilder as P},
};

/// A source talking to the PBX through both programs: one device (`port`) of it.
pub struct Peer<'a> {
    pub f: &'a TestFilter,
    pub ip: Ipv4Addr,
    /// The device's source port.
    pub port: u16,
    pub cseq: u32,
}

impl<'a> Peer<'a> {
    pub fn new(f: &'a TestFilter, ip: Ipv4Addr) -> Self {
        Peer {
            f,
            ip,
            port: 5060,
            cseq: 0,
        }
    }

    /// Another device of the same address: its own source port (and CSeq numbering).
    pub fn device(f: &'a TestFilter, ip: Ipv4Addr, port: u16) -> Self {
        Peer { f, ip, port, cseq: 0 }
    }

    /// Sends a request (a new CSeq); the XDP action.
    pub fn send(&mut self, method: &str, from: &str, to: &str) -> u32 {
        self.send_payload(sip_request_from(method, from, to, self.cseq + 1))
    }

    fn send_payload(&mut self, payload: Vec<u8>) -> u32 {
        self.cseq += 1;
        self.f
            .run(
                &P::udp4(self.ip, Ipv4Addr::new(192, 0, 2, 1), self.port, 5060, &payload)
                    .build()
                    .bytes,
            )
            .expect("XDP run")
    }

    pub fn register(&mut self, ext: &str) -> u32 {
        self.send("REGISTER", ext, ext)
    }

    /// A REGISTER with credentials (an Authorization header) for `ext`.
    pub fn register_with_credentials(&mut self, ext: &str) -> u32 {
        let plain = String::from_utf8(sip_request_from("REGISTER", ext, ext, self.cseq + 1)).unwrap();
        let auth = format!(
            "Authorization: Digest username=\"{ext}\", realm=\"pbx.example\", nonce=\"5f1f0c0ffee\", \
             uri=\"sip:pbx.example\", response=\"0123456789abcdef0123456789abcdef\"\r\nContent-Length: 0"
        );
        self.send_payload(plain.replacen("Content-Length: 0", &auth, 1).into_bytes())
    }

    /// The PBX answers the last request: the TC action.
    pub fn answer(&self, status: &str, method: &str, from: &str, to: &str) -> u32 {
        self.f
            .run_answer(
                &P::udp4(
                    Ipv4Addr::new(192, 0, 2, 1),
                    self.ip,
                    5060,
                    self.port,
                    &sip_answer(status, method, self.cseq, from, to),
                )
                .build()
                .bytes,
            )
            .expect("TC run")
    }

    /// The PBX answers a retransmission of the last request again (same CSeq).
    pub fn answer_again(&self, status: &str, ext: &str) -> u32 {
        self.answer(status, "REGISTER", ext, ext)
    }

    /// REGISTER, 401, REGISTER with an Authorization header, `final_status`, as a phone
    /// does (the ingress program counts the answered challenge): the answer's TC action, or
    /// None if a REGISTER was dropped.
    pub fn login_with_credentials(&mut self, ext: &str, final_status: &str) -> Option<u32> {
        self.login_as(ext, final_status, true)
    }

    /// REGISTER, 401, REGISTER with credentials, `final_status`: the answer's TC action, or
    /// None if a REGISTER was dropped.
    pub fn login(&mut self, ext: &str, final_status: &str) -> Option<u32> {
        self.login_as(ext, final_status, false)
    }

    /// The two logins; `authorization`: the second REGISTER carries an Authorization header.
    fn login_as(&mut self, ext: &str, final_status: &str, authorization: bool) -> Option<u32> {
        if self.register(ext) != XDP_PASS {
            return None;
        }
        self.answer("401 Unauthorized", "REGISTER", ext, ext);
        let second = if authorization {
            self.register_with_credentials(ext)
        } else {
            self.register(ext)
        };
        if second != XDP_PASS {
            return None;
        }
        Some(self.answer(final_status, "REGISTER", ext, ext))
    }
}
