//! A source talking to the PBX through both programs: its requests through the XDP program,
//! the PBX's answers to it through the answers program, in the order a registrar would see
//! and send them.

use std::net::Ipv4Addr;

use crate::{
    harness::{TestFilter, XDP_PASS},
    packet::{sip_answer, sip_request_from, PacketBuilder as P},
};

/// A source talking to the PBX through both programs.
pub struct Peer<'a> {
    pub f: &'a TestFilter,
    pub ip: Ipv4Addr,
    pub cseq: u32,
}

impl<'a> Peer<'a> {
    pub fn new(f: &'a TestFilter, ip: Ipv4Addr) -> Self {
        Peer { f, ip, cseq: 0 }
    }

    /// Sends a request (a new CSeq); the XDP action.
    pub fn send(&mut self, method: &str, from: &str, to: &str) -> u32 {
        self.cseq += 1;
        self.f
            .run(
                &P::request4(self.ip, &sip_request_from(method, from, to, self.cseq))
                    .build()
                    .bytes,
            )
            .expect("XDP run")
    }

    pub fn register(&mut self, ext: &str) -> u32 {
        self.send("REGISTER", ext, ext)
    }

    /// The PBX answers the last request: the TC action.
    pub fn answer(&self, status: &str, method: &str, from: &str, to: &str) -> u32 {
        self.f
            .run_answer(
                &P::answer4(self.ip, &sip_answer(status, method, self.cseq, from, to))
                    .build()
                    .bytes,
            )
            .expect("TC run")
    }

    /// REGISTER, 401, REGISTER with credentials, `final_status`: the answer's TC action, or
    /// None if a REGISTER was dropped.
    pub fn login(&mut self, ext: &str, final_status: &str) -> Option<u32> {
        if self.register(ext) != XDP_PASS {
            return None;
        }
        self.answer("401 Unauthorized", "REGISTER", ext, ext);
        if self.register(ext) != XDP_PASS {
            return None;
        }
        Some(self.answer(final_status, "REGISTER", ext, ext))
    }
}
