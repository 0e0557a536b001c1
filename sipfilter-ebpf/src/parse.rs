//! Parsing Ethernet (with up to two VLAN tags), IPv4 and IPv6 (with a bounded extension-header
//! walk) down to UDP or TCP, for both programs: `Frame` hides whether the bytes are an XDP
//! frame or a socket buffer.

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use sipfilter_common::{
    scan::{Bytes, SCAN_LIMIT},
    KernelConfig, Outcome, SourceKey,
};

use crate::{lists::ListKey, maps::SCAN_BUFFER};

/// The third word of an IPv4-mapped IPv6 address (::ffff:0:0/96), as it lies in memory.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8u16.to_be();
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
const IPPROTO_UDP: u8 = 17;
const IPPROTO_TCP: u8 = 6;
/// TCP flags (the header's 14th byte).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up (and passing as malformed).
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Headers end within this many bytes of the frame start, or the packet is malformed.
/// A constant bound lets the verifier prove every variable-offset access.
pub const MAX_L4_OFFSET: usize = 1024;

/// The bytes of a packet, from either program.
pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// A `T` at `offset` bytes into the frame, if the frame is long enough.
#[inline(always)]
pub fn ptr_at<T, F: Frame>(ctx: &F, offset: usize) -> Option<*const T> {
    let start = ctx.start();
    let end = ctx.end();
    if offset > MAX_L4_OFFSET + 64 || start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The first [`SCAN_LIMIT`] bytes of a SIP payload, copied into this CPU's scan buffer:
/// what the header scanner reads. Reading a copy at masked offsets, rather than the packet
/// at checked ones, keeps the verifier's walk of the scan loops small: every path reaches a
/// line with the same [0, SCAN_LIMIT) offset range, where packet reads would carry a
/// different checked range per path and never prune.
pub struct ScanWindow {
    buf: *const u8,
    /// Bytes copied (≤ SCAN_LIMIT).
    len: usize,
    /// The payload is longer than the copy.
    cut: bool,
}

impl ScanWindow {
    /// Copies the payload at `offset` of an XDP frame.
    #[inline(always)]
    pub fn of_xdp(ctx: &XdpContext, offset: usize) -> Option<ScanWindow> {
        let total = ctx.data_end().checked_sub(ctx.data())?;
        let (buf, n, cut) = Self::sizes(total, offset)?;
        // SAFETY: buf is this CPU's scan buffer, n ≤ SCAN_LIMIT < its size.
        let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, offset as u32, buf as *mut _, n as u32) };
        (rc == 0).then(|| ScanWindow::new(buf, n, cut))
    }

    /// Copies the payload at `offset` of a socket buffer (linear part or not).
    #[inline(always)]
    pub fn of_skb(ctx: &TcContext, offset: usize) -> Option<ScanWindow> {
        let total = ctx.len() as usize;
        let (buf, n, cut) = Self::sizes(total, offset)?;
        // SAFETY: as above.
        let rc = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, offset as u32, buf as *mut _, n as u32) };
        (rc == 0).then(|| ScanWindow::new(buf, n, cut))
    }

    /// The window an earlier program of this packet (before a tail call) copied.
    #[inline(always)]
    pub fn resume(len: usize, cut: bool) -> Option<ScanWindow> {
        if len > SCAN_LIMIT {
            return None;
        }
        let buf = SCAN_BUFFER.get_ptr_mut(0)? as *mut u8;
        Some(ScanWindow::new(buf, len, cut))
    }

    #[inline(always)]
    fn new(buf: *mut u8, len: usize, cut: bool) -> ScanWindow {
        ScanWindow { buf, len, cut }
    }

    #[inline(always)]
    fn sizes(total: usize, offset: usize) -> Option<(*mut u8, usize, bool)> {
        let payload = total.checked_sub(offset)?;
        if payload < 8 {
            return None;
        }
        let n = if payload > SCAN_LIMIT { SCAN_LIMIT } else { payload };
        let buf = SCAN_BUFFER.get_ptr_mut(0)? as *mut u8;
        // The copy's length laundered and bounded to 1..=SCAN_LIMIT in a form the compiler
        // cannot fold away: older verifiers (6.1) lose the range of `n` computed above and
        // refuse a helper length that might be negative.
        // SAFETY: a slot in the buffer's tail that no copy reaches.
        let n = unsafe {
            let slot = buf.add(2 * SCAN_LIMIT - 24) as *mut u64;
            core::ptr::write_volatile(slot, (n - 1) as u64);
            (core::ptr::read_volatile(slot) as usize & (SCAN_LIMIT - 1)) + 1
        };
        Some((buf, n, payload > SCAN_LIMIT))
    }
}

impl Bytes for ScanWindow {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn word(&self, off: usize) -> Option<u64> {
        // Compared with a fresh copy of the length each time (xor with a zero reloaded from the
        // buffer, which the compiler cannot reuse): a comparison with `self.len` itself would
        // narrow its range in the verifier, differently on every path, and no state would prune.
        // SAFETY: the last word of the 2 × SCAN_LIMIT buffer, which no copy reaches: always zero.
        let zero = unsafe { core::ptr::read_volatile(self.buf.add(2 * SCAN_LIMIT - 8) as *const u64) } as usize;
        if off + 8 > self.len ^ zero {
            return None;
        }
        // The mask changes nothing (off < len ≤ SCAN_LIMIT); it tells the verifier the
        // read is inside the buffer (SCAN_LIMIT + 64 bytes).
        let i = off & (SCAN_LIMIT - 1);
        // SAFETY: i + 8 ≤ SCAN_LIMIT + 8, within the buffer (2 × SCAN_LIMIT: the compiler may fold
        // a constant of a few dozen bytes into the masked offset).
        Some(unsafe { core::ptr::read_unaligned(self.buf.add(i) as *const u64) })
    }

    #[inline(always)]
    fn truncated(&self) -> bool {
        self.cut
    }

    /// As the trait's, with the last word's offset laundered: knowing the window is at most
    /// SCAN_LIMIT long, the compiler reads the tail at `buf + len - 7`, an offset older
    /// verifiers (6.1) cannot bound.
    #[inline(always)]
    fn word_or_tail(&self, off: usize) -> Option<u64> {
        if let Some(w) = self.word(off) {
            return Some(w);
        }
        let len = self.len;
        if len < 8 || off >= len || off + 8 <= len {
            return None;
        }
        let last = self.word(self.forget(len - 8))?;
        Some(last >> (8 * ((off + 8 - len) & 7)))
    }

    #[inline(always)]
    fn forget(&self, pos: usize) -> usize {
        // Through memory the verifier does not track (the buffer's tail): what comes back is a
        // scalar with no range and no link to `pos`, so neither the range nor the precision
        // marks of the path that computed `pos` reach the states after this point.
        // SAFETY: a slot in the buffer's tail that no copy reaches.
        unsafe {
            let slot = self.buf.add(2 * SCAN_LIMIT - 16) as *mut u64;
            core::ptr::write_volatile(slot, pos as u64);
            core::ptr::read_volatile(slot) as usize & (SCAN_LIMIT - 1)
        }
    }
}

/// Where a parsed frame's IP header and payload start, and what its UDP or TCP header says.
#[derive(Clone, Copy)]
pub struct Headers {
    pub l3: usize,
    /// The UDP or TCP payload.
    pub payload: usize,
    pub v6: bool,
    /// A first fragment: the datagram goes on in fragments this program never sees together,
    /// so what a scan does not find may lie in them.
    pub first_fragment: bool,
    /// A TCP segment (else a UDP datagram), with its flags (`TCP_*`).
    pub tcp: bool,
    pub tcp_flags: u8,
    /// Ports, network byte order.
    pub src_port_be: u16,
    pub dst_port_be: u16,
}

impl Headers {
    /// A connection's first SYN (not the SYN-ACK).
    #[inline(always)]
    pub fn syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A FIN or RST: the connection is closing.
    #[inline(always)]
    pub fn closing(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

/// An address of a datagram (its source on ingress, its destination on egress), read from
/// the packet only once it is known to matter: non-SIP traffic never pays for it.
pub struct Datagram {
    /// Full address (IPv4-mapped for IPv4) as four words in network byte order: what
    /// allow/deny lists match. Words, not bytes, so copies are four moves.
    pub addr: [u32; 4],
    pub is_v6: bool,
}

impl Datagram {
    /// The source key: what bans and buckets are keyed by (IPv6 masked to the prefix).
    #[inline(always)]
    pub fn key(&self, config: &KernelConfig) -> SourceKey {
        let mut w = self.addr;
        if self.is_v6 {
            let m = &config.ipv6_mask_be;
            w = [w[0] & m[0], w[1] & m[1], w[2] & m[2], w[3] & m[3]];
        }
        SourceKey::from_words(w)
    }

    /// The LPM key for this address as a full /128.
    #[inline(always)]
    pub fn prefix(&self) -> ListKey {
        ListKey {
            prefix_len: 128,
            addr: self.addr,
        }
    }
}

/// What parsing the L2/L3 headers found.
#[derive(Clone, Copy)]
pub enum L3 {
    /// A UDP datagram or TCP segment (first fragment or unfragmented): judge it.
    Transport(Headers),
    /// An IP packet with no UDP or TCP header to judge.
    Other(Outcome, Headers),
    /// Not judged at all (not IP, or malformed).
    Skip(Outcome),
}

/// The headers' offsets with what the verifier knows of them erased (a store and a load of
/// map memory): every way through the Ethernet, VLAN and IPv6 extension-header walk reaches
/// the rest of the program in one state. Older verifiers (Debian 12's 6.1) do not prune those
/// paths and walk the whole program once for each.
#[inline(always)]
pub fn launder(h: Headers, scratch: &mut [u64; 4]) -> Headers {
    // SAFETY: this CPU's counters record (see `Counters::scratch`).
    unsafe {
        let slot = scratch.as_mut_ptr();
        core::ptr::write_volatile(slot, h.l3 as u64);
        core::ptr::write_volatile(slot.add(1), h.payload as u64);
        Headers {
            l3: (core::ptr::read_volatile(slot) as usize) & (2 * MAX_L4_OFFSET - 1),
            payload: (core::ptr::read_volatile(slot.add(1)) as usize) & (2 * MAX_L4_OFFSET - 1),
            ..h
        }
    }
}

#[inline(always)]
pub fn parse_l3<F: Frame>(ctx: &F) -> L3 {
    let Some(eth) = ptr_at::<EthHdr, F>(ctx, 0) else {
        return L3::Skip(Outcome::Malformed);
    };
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut offset = EthHdr::LEN;
    // Up to two tags: 802.1Q, or 802.1ad (QinQ) outer with 802.1Q inner.
    for _ in 0..2 {
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            let Some(vlan) = ptr_at::<VlanHdr, F>(ctx, offset) else {
                return L3::Skip(Outcome::Malformed);
            };
            ether_type = unsafe { (*vlan).ether_type };
            offset += VlanHdr::LEN;
        }
    }
    if ether_type == ETH_P_IP {
        parse_ipv4(ctx, offset)
    } else if ether_type == ETH_P_IPV6 {
        parse_ipv6(ctx, offset)
    } else if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // A third tag: more than this program promises to parse.
        L3::Skip(Outcome::Malformed)
    } else {
        L3::Skip(Outcome::NotIp)
    }
}

impl L3 {
    /// A datagram's or segment's offsets laundered (see [`launder`]); anything else as it is.
    #[inline(always)]
    pub fn laundered(self, scratch: &mut [u64; 4]) -> L3 {
        match self {
            L3::Transport(h) => L3::Transport(launder(h, scratch)),
            other => other,
        }
    }
}

/// Reads the UDP or TCP header at `l4`: ports, TCP flags, where the payload starts.
#[inline(always)]
fn parse_l4<F: Frame>(ctx: &F, mut h: Headers, l4: usize, proto: u8) -> L3 {
    if proto == IPPROTO_UDP {
        let Some(udp) = ptr_at::<UdpHdr, F>(ctx, l4) else {
            return L3::Skip(Outcome::Malformed);
        };
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            h.src_port_be = u16::from_ne_bytes((*udp).src);
            h.dst_port_be = u16::from_ne_bytes((*udp).dst);
        }
        h.payload = l4 + UdpHdr::LEN;
        return L3::Transport(h);
    }
    if proto != IPPROTO_TCP {
        return L3::Other(Outcome::OtherTransport, h);
    }
    let Some(tcp) = ptr_at::<TcpHdr, F>(ctx, l4) else {
        return L3::Skip(Outcome::Malformed);
    };
    // SAFETY: bounds checked by ptr_at; the data offset and flags are bytes 12 and 13.
    let (src, dst, doff, flags) = unsafe {
        let b = tcp as *const u8;
        (
            u16::from_ne_bytes((*tcp).source),
            u16::from_ne_bytes((*tcp).dest),
            (*b.add(12) >> 4) as usize * 4,
            *b.add(13),
        )
    };
    if doff < TcpHdr::LEN {
        return L3::Skip(Outcome::Malformed);
    }
    h.tcp = true;
    h.tcp_flags = flags;
    h.src_port_be = src;
    h.dst_port_be = dst;
    h.payload = l4 + doff;
    L3::Transport(h)
}

/// Reads the source (`destination` false) or destination address of a parsed datagram
/// (IPv4-mapped for IPv4).
#[inline(always)]
pub fn load_address<F: Frame>(ctx: &F, h: &Headers, destination: bool) -> Option<Datagram> {
    if h.v6 {
        let ip = ptr_at::<Ipv6Hdr, F>(ctx, h.l3)?;
        let a = unsafe {
            if destination {
                &(*ip).dst_addr
            } else {
                &(*ip).src_addr
            }
        };
        let addr = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        Some(Datagram { addr, is_v6: true })
    } else {
        let ip = ptr_at::<Ipv4Hdr, F>(ctx, h.l3)?;
        let a = unsafe {
            if destination {
                (*ip).dst_addr
            } else {
                (*ip).src_addr
            }
        };
        let addr = [0, 0, V4_MAPPED_WORD, u32::from_ne_bytes(a)];
        Some(Datagram { addr, is_v6: false })
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame>(ctx: &F, offset: usize) -> L3 {
    let Some(ip) = ptr_at::<Ipv4Hdr, F>(ctx, offset) else {
        return L3::Skip(Outcome::Malformed);
    };
    let ip = unsafe { &*ip };
    let vihl = ip.vihl;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return L3::Skip(Outcome::Malformed);
    }
    let h = Headers {
        l3: offset,
        payload: 0,
        v6: false,
        // More Fragments (flags bit 0x20 of the first byte).
        first_fragment: ip.frags[0] & 0x20 != 0,
        tcp: false,
        tcp_flags: 0,
        src_port_be: 0,
        dst_port_be: 0,
    };
    // Fragment offset (13 bits) non-zero: a later fragment, which has no UDP or TCP header.
    if (ip.frags[0] & 0x1f) != 0 || ip.frags[1] != 0 {
        return L3::Other(Outcome::Fragment, h);
    }
    parse_l4(ctx, h, offset + ihl, ip.proto)
}

#[inline(always)]
fn parse_ipv6<F: Frame>(ctx: &F, offset: usize) -> L3 {
    let Some(ip) = ptr_at::<Ipv6Hdr, F>(ctx, offset) else {
        return L3::Skip(Outcome::Malformed);
    };
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return L3::Skip(Outcome::Malformed);
    }
    let mut next = ip.next_hdr;
    let mut l4 = offset + Ipv6Hdr::LEN;
    let mut fragment = false;
    let mut more_fragments = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = ptr_at::<[u8; 2], F>(ctx, l4) else {
                    return L3::Skip(Outcome::Malformed);
                };
                let (nh, len) = unsafe { ((*ext)[0], (*ext)[1]) };
                next = nh;
                l4 += (len as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = ptr_at::<[u8; 8], F>(ctx, l4) else {
                    return L3::Skip(Outcome::Malformed);
                };
                let (nh, off_hi, off_lo) = unsafe { ((*ext)[0], (*ext)[2], (*ext)[3]) };
                next = nh;
                // Offset is the top 13 bits of bytes 2..4; non-zero means a later fragment.
                if off_hi != 0 || (off_lo & 0xf8) != 0 {
                    fragment = true;
                }
                more_fragments = off_lo & 1 != 0;
                l4 += 8;
            }
            _ => break,
        }
        if l4 > MAX_L4_OFFSET {
            return L3::Skip(Outcome::Malformed);
        }
    }
    let h = Headers {
        l3: offset,
        payload: 0,
        v6: true,
        first_fragment: more_fragments,
        tcp: false,
        tcp_flags: 0,
        src_port_be: 0,
        dst_port_be: 0,
    };
    if fragment {
        return L3::Other(Outcome::Fragment, h);
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
            // More extension headers than the bounded walk covers.
            L3::Skip(Outcome::Malformed)
        }
        _ => parse_l4(ctx, h, l4, next),
    }
}
