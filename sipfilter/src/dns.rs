//! Just enough of a DNS client for allowlist names: A and AAAA queries over UDP to one
//! resolver, with the answers' TTLs (the system's getaddrinfo does not say how long an answer
//! holds, and a dynamic-DNS name changes when its TTL says it may). No crate: a query is a
//! few dozen bytes, an answer a list of records.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

/// What a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL among the answers, seconds.
    pub ttl: u32,
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Whether `s` is a host name (letters, digits and hyphens in dot-separated labels, the last
/// one not all digits: "10.1.2.300" is a bad address, not a name).
pub fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|l| l.bytes().any(|c| c.is_ascii_alphabetic()))
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// A and AAAA for `name` from `server`: the addresses of both, the smaller TTL. Err: why not
/// (no answer in time, the name does not exist, no address at all).
pub fn resolve(server: SocketAddr, name: &str, timeout: Duration) -> Result<Resolved, String> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).map_err(|e| format!("cannot open a socket: {e}"))?;
    socket.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    socket
        .connect(server)
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for qtype in [TYPE_A, TYPE_AAAA] {
        let id = query_id(name, qtype);
        let query = encode_query(id, name, qtype)?;
        let mut answer = None;
        // One retry: a lost datagram is not a failed name.
        for _ in 0..2 {
            socket.send(&query).map_err(|e| format!("cannot ask {server}: {e}"))?;
            let mut buf = [0u8; 1500];
            match socket.recv(&mut buf) {
                Ok(n) => {
                    answer = Some(buf[..n].to_vec());
                    break;
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("{server}: {e}")),
            }
        }
        let answer = answer.ok_or_else(|| format!("no answer from {server} within {timeout:?}"))?;
        let records = parse_answer(&answer, id)?;
        for (ip, t) in records {
            addrs.push(ip);
            ttl = ttl.min(t);
        }
    }
    if addrs.is_empty() {
        return Err(format!("{name} has no A or AAAA record"));
    }
    addrs.sort();
    addrs.dedup();
    Ok(Resolved { addrs, ttl })
}

/// A query id that differs per name, type and moment (answers are matched to it).
fn query_id(name: &str, qtype: u16) -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let h = name
        .bytes()
        .fold(t ^ u32::from(qtype), |h, b| h.rotate_left(5) ^ u32::from(b));
    (h ^ (h >> 16)) as u16
}

fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // recursion desired
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.strip_suffix('.').unwrap_or(name).split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name} is not a host name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]); // class IN
    Ok(q)
}

/// Skips a (possibly compressed) name at `at`; the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, String> {
    for _ in 0..128 {
        let len = *msg.get(at).ok_or("a name runs past the answer")? as usize;
        if len == 0 {
            return Ok(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Ok(at + 2);
        }
        at += 1 + len;
    }
    Err("a name with too many labels".into())
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, String> {
    Ok(u16::from_be_bytes([
        *msg.get(at).ok_or("truncated answer")?,
        *msg.get(at + 1).ok_or("truncated answer")?,
    ]))
}

/// The A and AAAA records (address, TTL) of an answer to query `id`, whatever name they are
/// for (a CNAME chain's end is among them).
pub fn parse_answer(msg: &[u8], id: u16) -> Result<Vec<(IpAddr, u32)>, String> {
    if msg.len() < 12 || u16_at(msg, 0)? != id {
        return Err("an answer to another question".into());
    }
    let flags = u16_at(msg, 2)?;
    match flags & 0x000f {
        0 => {}
        3 => return Err("the name does not exist (NXDOMAIN)".into()),
        rcode => return Err(format!("the resolver failed (rcode {rcode})")),
    }
    let questions = u16_at(msg, 4)?;
    let answers = u16_at(msg, 6)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let rtype = u16_at(msg, at)?;
        let ttl = u32::from(u16_at(msg, at + 4)?) << 16 | u32::from(u16_at(msg, at + 6)?);
        let len = u16_at(msg, at + 8)? as usize;
        let data = msg.get(at + 10..at + 10 + len).ok_or("truncated record")?;
        match (rtype, len) {
            (TYPE_A, 4) => out.push((IpAddr::from([data[0], data[1], data[2], data[3]]), ttl)),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                out.push((IpAddr::from(b), ttl));
            }
            _ => {}
        }
        at += 10 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with these records (no compression).
    fn answer(query: &[u8], records: &[(u16, &[u8], u32)], rcode: u8) -> Vec<u8> {
        let mut a = query.to_vec();
        a[2] = 0x81;
        a[3] = 0x80 | rcode;
        a[7] = records.len() as u8;
        for (t, data, ttl) in records {
            a.extend_from_slice(&[0xc0, 12]);
            a.extend_from_slice(&t.to_be_bytes());
            a.extend_from_slice(&[0, 1]);
            a.extend_from_slice(&ttl.to_be_bytes());
            a.extend_from_slice(&(data.len() as u16).to_be_bytes());
            a.extend_from_slice(data);
        }
        a
    }

    #[test]
    fn answers_give_their_addresses_and_ttls() {
        let q = encode_query(7, "trunk.example.net", TYPE_A).unwrap();
        let a = answer(
            &q,
            &[(5, &[3, b'x', b'y', b'z', 0], 30), (TYPE_A, &[192, 0, 2, 10], 120)],
            0,
        );
        assert_eq!(parse_answer(&a, 7).unwrap(), vec![(IpAddr::from([192, 0, 2, 10]), 120)]);
        assert!(parse_answer(&a, 8).is_err(), "another id");
        let nx = answer(&q, &[], 3);
        assert!(parse_answer(&nx, 7).unwrap_err().contains("NXDOMAIN"));
        for n in 0..a.len() {
            let _ = parse_answer(&a[..n], 7);
        }
    }

    #[test]
    fn names_and_addresses_are_told_apart() {
        assert!(is_host_name("trunk.example.net"));
        assert!(is_host_name("home-office.dyndns.org."));
        assert!(!is_host_name("10.1.2.300"));
        assert!(!is_host_name("192.0.2.0/24"));
        assert!(!is_host_name("-bad.example"));
        assert!(!is_host_name(""));
    }
}
