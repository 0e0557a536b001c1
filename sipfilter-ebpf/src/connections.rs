//! The TCP connections open to the SIP stream ports (TCP, TLS, WebSocket): what the open
//! connection limit counts. The kernel side only records; the agent counts the table per
//! source and marks the sources at their limit (`CONNECTION_LIMITED`), so no counter has two
//! writers and a connection that vanished without a FIN (a phone's power cut) is swept when
//! idle instead of holding its source's count up for good.

use sipfilter_common::maps::{Connection, ConnectionKey, SLOT_IDLE_NS};

use crate::{maps::CONNECTIONS, parse::Datagram};

/// The connection of a client (`peer`, `client_port`) to the server's `server_port` (host
/// order).
#[inline(always)]
pub fn connection_key(peer: &Datagram, client_port_be: u16, server_port_be: u16) -> ConnectionKey {
    ConnectionKey {
        addr: peer.addr,
        client_port: u16::from_be(client_port_be),
        server_port: u16::from_be(server_port_be),
    }
}

/// A SYN was let through: the connection is open (a retransmitted SYN finds it there).
#[inline(always)]
pub fn opened(key: &ConnectionKey, now: u64) {
    if CONNECTIONS.get_ptr_mut(key).is_some() {
        return;
    }
    let c = Connection {
        opened_ns: now,
        last_ns: now,
    };
    let _ = CONNECTIONS.insert(key, &c, 0);
}

/// The connection carried data: not idle. Written at most once per [`SLOT_IDLE_NS`] /
/// 10 (a second), so a busy connection costs a lookup, not a store on every segment.
#[inline(always)]
pub fn touched(key: &ConnectionKey, now: u64) {
    if let Some(c) = CONNECTIONS.get_ptr_mut(key) {
        // SAFETY: a valid entry; a lost race loses one timestamp, nothing else.
        let c = unsafe { &mut *c };
        if now.saturating_sub(c.last_ns) > SLOT_IDLE_NS / 10 {
            c.last_ns = now;
        }
    }
}

/// A FIN or RST went by (either way): the connection no longer counts.
#[inline(always)]
pub fn closed(key: &ConnectionKey) {
    let _ = CONNECTIONS.remove(key);
}
