//! The open-connection limit, userspace half: count the kernel's table of open connections
//! (`connections`) per source, forget those idle past the timeout, and mark the sources at
//! their tier's limit in `connection_limited`, which the XDP program reads on each SYN.
//! The kernel only records connections; this is the one writer of the marks.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, MapError};
use sipfilter_common::{
    maps::{Connection, ConnectionKey, CONNECTIONS, CONNECTION_LIMITED, V4_MAPPED_PREFIX},
    SourceKey,
};

use crate::filter_maps::open_pin;

/// The source a connection counts toward: its client's address, an IPv6 one masked to the
/// source-key mask the program uses (`KernelConfig::ipv6_mask_be`).
pub fn source_of(key: &ConnectionKey, ipv6_mask_be: [u32; 4]) -> SourceKey {
    let k = SourceKey::from_words(key.addr);
    if k.addr[..12] == V4_MAPPED_PREFIX {
        return k;
    }
    let w = key.addr;
    let m = ipv6_mask_be;
    SourceKey::from_words([w[0] & m[0], w[1] & m[1], w[2] & m[2], w[3] & m[3]])
}

/// A source's open connections: all of them, and those to a TLS or WebSocket port (opaque:
/// nothing in them is read, so a source that only uses them never becomes known).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Open {
    pub all: u32,
    pub opaque: u32,
}

/// One count of the table: open connections by source, and the idle ones to forget.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub open: BTreeMap<SourceKey, Open>,
    pub idle: Vec<ConnectionKey>,
}

/// Counts `entries` at `now_ns`: a connection that carried nothing for `idle` is idle; one to
/// a port `opaque` says is TLS or WebSocket counts as opaque too.
pub fn count(
    entries: &[(ConnectionKey, Connection)],
    idle: Duration,
    now_ns: u64,
    ipv6_mask_be: [u32; 4],
    opaque: impl Fn(u16) -> bool,
) -> Count {
    let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
    let mut out = Count::default();
    for (key, c) in entries {
        if now_ns.saturating_sub(c.last_ns) >= idle_ns {
            out.idle.push(*key);
            continue;
        }
        let o = out.open.entry(source_of(key, ipv6_mask_be)).or_default();
        o.all += 1;
        o.opaque += opaque(key.server_port) as u32;
    }
    out
}

/// A source's open-connection limits (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// On its plain connections (UDP-readable SIP over TCP): all of them, when `opaque` is 0.
    pub plain: u32,
    /// On its TLS and WebSocket connections, counted apart (0: they count with the plain).
    pub opaque: u32,
}

/// The sources of `open` at a limit (`limit_of` gives a source's).
pub fn at_limit(open: &BTreeMap<SourceKey, Open>, limit_of: impl Fn(&SourceKey) -> Limit) -> BTreeSet<SourceKey> {
    open.iter()
        .filter(|(k, n)| {
            let l = limit_of(k);
            let plain = if l.opaque == 0 { n.all } else { n.all - n.opaque };
            (l.plain != 0 && plain >= l.plain) || (l.opaque != 0 && n.opaque >= l.opaque)
        })
        .map(|(k, _)| *k)
        .collect()
}

/// What one upkeep round found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    pub open: usize,
    pub limited: usize,
    pub swept: usize,
    /// Sources that reached their limit this round (the agent logs them once).
    pub newly_limited: Vec<(SourceKey, u32)>,
}

pub struct ConnectionMaps {
    connections: HashMap<MapData, ConnectionKey, Connection>,
    limited: HashMap<MapData, SourceKey, u64>,
}

impl ConnectionMaps {
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Self> {
        Ok(ConnectionMaps {
            connections: HashMap::try_from(open_pin(dir, CONNECTIONS)?)
                .with_context(|| format!("map {CONNECTIONS} has an unexpected layout"))?,
            limited: HashMap::try_from(open_pin(dir, CONNECTION_LIMITED)?)
                .with_context(|| format!("map {CONNECTION_LIMITED} has an unexpected layout"))?,
        })
    }

    /// Every open connection the kernel recorded.
    pub fn connections(&self) -> anyhow::Result<Vec<(ConnectionKey, Connection)>> {
        // An entry the kernel removes during the walk ends it early at worst: the next round
        // counts again.
        Ok(self.connections.iter().filter_map(Result::ok).collect())
    }

    /// Marks `source` at its limit as of `at_ns` (what `upkeep` does every second; tests use
    /// it to set a mark's age).
    pub fn mark(&mut self, source: &SourceKey, at_ns: u64) -> anyhow::Result<()> {
        self.limited
            .insert(source, at_ns, 0)
            .context("cannot mark a source at its connection limit")
    }

    /// The sources marked at their limit.
    pub fn limited(&self) -> anyhow::Result<BTreeSet<SourceKey>> {
        Ok(self.limited.keys().filter_map(Result::ok).collect())
    }

    /// Counts, sweeps the idle, and brings the marks in line with the limits.
    pub fn upkeep(
        &mut self,
        idle: Duration,
        now_ns: u64,
        ipv6_mask_be: [u32; 4],
        opaque: impl Fn(u16) -> bool,
        limit_of: impl Fn(&SourceKey) -> Limit,
    ) -> anyhow::Result<Upkeep> {
        let c = count(&self.connections()?, idle, now_ns, ipv6_mask_be, opaque);
        for key in &c.idle {
            match self.connections.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("cannot forget an idle connection"),
            }
        }
        let want = at_limit(&c.open, &limit_of);
        let have = self.limited()?;
        let mut newly = Vec::new();
        // Every mark stamped anew: a mark holds for CONNECTION_MARK_TTL_NS only.
        for k in &want {
            self.limited
                .insert(k, now_ns, 0)
                .context("cannot mark a source at its connection limit")?;
            if !have.contains(k) {
                newly.push((*k, c.open.get(k).map_or(0, |o| o.all)));
            }
        }
        for k in have.difference(&want) {
            match self.limited.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("cannot clear a connection-limit mark"),
            }
        }
        Ok(Upkeep {
            open: c.open.values().map(|n| n.all as usize).sum(),
            limited: want.len(),
            swept: c.idle.len(),
            newly_limited: newly,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipfilter_common::config::ipv6_mask;

    fn v4(last: u8, port: u16) -> ConnectionKey {
        let k = SourceKey::from_v4([203, 0, 113, last]);
        ConnectionKey {
            addr: k.words(),
            client_port: port,
            server_port: 5060,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn idle_connections_do_not_count_and_are_swept() {
        let entries = vec![
            (
                v4(1, 40000),
                Connection {
                    opened_ns: 0,
                    last_ns: 1000 * S,
                },
            ),
            (
                v4(1, 40001),
                Connection {
                    opened_ns: 0,
                    last_ns: 1000 * S,
                },
            ),
            // A phone that lost power: nothing for 11 minutes.
            (
                v4(1, 40002),
                Connection {
                    opened_ns: 0,
                    last_ns: 400 * S,
                },
            ),
            (
                v4(2, 40000),
                Connection {
                    opened_ns: 0,
                    last_ns: 1090 * S,
                },
            ),
        ];
        let c = count(&entries, Duration::from_secs(600), 1100 * S, ipv6_mask(128), |_| false);
        assert_eq!(c.idle, vec![v4(1, 40002)]);
        assert_eq!(c.open[&SourceKey::from_v4([203, 0, 113, 1])].all, 2);
        assert_eq!(c.open[&SourceKey::from_v4([203, 0, 113, 2])].all, 1);
    }

    #[test]
    fn a_source_at_its_limit_is_marked_and_no_limit_marks_nobody() {
        let mut open = BTreeMap::new();
        let office = SourceKey::from_v4([203, 0, 113, 1]);
        let robot = SourceKey::from_v4([198, 51, 100, 9]);
        open.insert(office, Open { all: 50, opaque: 0 });
        open.insert(robot, Open { all: 20, opaque: 0 });
        let limit = |k: &SourceKey| Limit {
            plain: if *k == office { 500 } else { 20 },
            opaque: 0,
        };
        assert_eq!(at_limit(&open, limit), BTreeSet::from([robot]));
        assert!(at_limit(&open, |_| Limit { plain: 0, opaque: 0 }).is_empty());
    }

    #[test]
    fn opaque_connections_count_apart_for_the_sources_given_their_own_limit() {
        let tls_office = SourceKey::from_v4([203, 0, 113, 1]);
        let mixed = SourceKey::from_v4([203, 0, 113, 2]);
        let tls_robot = SourceKey::from_v4([198, 51, 100, 9]);
        let mut entries = Vec::new();
        let conn = Connection {
            opened_ns: 0,
            last_ns: 1000 * S,
        };
        let at = |k: &SourceKey, port: u16, server_port: u16| ConnectionKey {
            addr: k.words(),
            client_port: port,
            server_port,
        };
        for i in 0..30 {
            entries.push((at(&tls_office, 40000 + i, 5061), conn));
        }
        for i in 0..19 {
            entries.push((at(&mixed, 40000 + i, 5060), conn));
        }
        for i in 0..30 {
            entries.push((at(&mixed, 41000 + i, 5061), conn));
        }
        for i in 0..100 {
            entries.push((at(&tls_robot, 40000 + i, 5061), conn));
        }
        let c = count(&entries, Duration::from_secs(600), 1000 * S, ipv6_mask(128), |p| {
            p == 5061
        });
        assert_eq!(c.open[&tls_office], Open { all: 30, opaque: 30 });
        let unknown = |_: &SourceKey| Limit { plain: 20, opaque: 100 };
        // 30 TLS phones of one office and 19 plain + 30 TLS connections are within; the
        // robot holding 100 TLS connections is at its limit.
        assert_eq!(at_limit(&c.open, unknown), BTreeSet::from([tls_robot]));
        // With no separate opaque limit every connection counts toward the one limit.
        assert_eq!(
            at_limit(&c.open, |_| Limit { plain: 20, opaque: 0 }),
            BTreeSet::from([tls_office, mixed, tls_robot])
        );
    }

    #[test]
    fn ipv6_connections_count_toward_the_masked_source() {
        let a: std::net::Ipv6Addr = "2001:db8:1:2::10".parse().unwrap();
        let key = ConnectionKey {
            addr: SourceKey { addr: a.octets() }.words(),
            client_port: 1,
            server_port: 5060,
        };
        let s = source_of(&key, ipv6_mask(64));
        let p: std::net::Ipv6Addr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(s.addr, p.octets());
        assert_eq!(source_of(&key, ipv6_mask(128)).addr, a.octets());
    }
}
