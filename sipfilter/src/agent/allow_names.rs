//! Allowlist entries given as DNS names ("restrict registrations to my location — but I have a
//! dynamic IP"): resolved at start, again at their TTL (never sooner than a minute, never later
//! than an hour) and on every reload. New addresses are allowlisted before old ones are
//! removed, so a phone moving from one address to the next is never unlisted in between; when
//! resolution fails the last good answer stays in force (a warning, a metric). What each name
//! stands for now is written to `allow-names.json` beside the state file, for
//! `sipfilter allow list`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sipfilter::{config::Config, dns, filter_maps::ListKind, Cidr, FilterMaps};
use sipfilter_common::maps::PERMANENT;

/// Bounds on how often a name is resolved again, whatever its TTL.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
const TIMEOUT: Duration = Duration::from_secs(1);

/// A name as `allow-names.json` records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameEntry {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Unix seconds of the last answer.
    pub resolved_at: u64,
    pub ttl_secs: u32,
    /// The last failure, while the last good answer is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn path_for(state_file: &Path) -> PathBuf {
    state_file.with_file_name("allow-names.json")
}

/// The names' current addresses as last written (for the CLI).
pub fn read(path: &Path) -> Vec<NameEntry> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[derive(Default)]
pub struct AllowNames {
    entries: BTreeMap<String, NameEntry>,
    next: BTreeMap<String, Instant>,
    /// Resolutions that failed (the metric).
    pub failures: u64,
}

impl AllowNames {
    /// Picks up what an earlier agent allowlisted for names (so a name dropped from the
    /// configuration has its addresses removed).
    pub fn load(state_file: &Path) -> AllowNames {
        let entries = read(&path_for(state_file))
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        AllowNames {
            entries,
            ..Default::default()
        }
    }

    /// Names served from a stale answer now.
    pub fn stale(&self) -> usize {
        self.entries.values().filter(|e| e.error.is_some()).count()
    }

    /// Resolves every configured name that is due (all of them when `all`), updates the
    /// allowlist, and returns the log lines to print.
    pub fn refresh(&mut self, maps: &mut FilterMaps, config: &Config, all: bool) -> Vec<String> {
        let mut log = Vec::new();
        let server: Option<SocketAddr> = config.dns_server.or_else(dns::system_resolver);
        let wanted: BTreeSet<&String> = config.allow_names.iter().collect();
        // Names no longer configured: their addresses leave the allowlist.
        let gone: Vec<String> = self.entries.keys().filter(|n| !wanted.contains(n)).cloned().collect();
        for name in gone {
            if let Some(e) = self.entries.remove(&name) {
                self.next.remove(&name);
                for a in &e.addresses {
                    remove(maps, config, *a, &self.entries, &mut log, &name);
                }
            }
        }
        let now = Instant::now();
        for name in &config.allow_names {
            if !all && self.next.get(name).is_some_and(|t| *t > now) {
                continue;
            }
            let result = match server {
                Some(s) => dns::resolve(s, name, TIMEOUT),
                None => Err("no resolver (no nameserver in /etc/resolv.conf, no [agent] dns_server)".into()),
            };
            let old = self.entries.get(name).cloned().unwrap_or_else(|| NameEntry {
                name: name.clone(),
                ..Default::default()
            });
            match result {
                Ok(r) => {
                    let ttl = Duration::from_secs(u64::from(r.ttl)).clamp(MIN_REFRESH, MAX_REFRESH);
                    self.next.insert(name.clone(), now + ttl);
                    // New addresses first, then the old ones go: never a moment unlisted.
                    for a in r.addrs.iter().filter(|a| !old.addresses.contains(a)) {
                        match maps.list_add(ListKind::Allow, &Cidr::host(*a), PERMANENT) {
                            Ok(_) => log.push(format!("allowlisted {a} ({name})")),
                            Err(e) => log.push(format!("warning: cannot allowlist {a} ({name}): {e:#}")),
                        }
                    }
                    let entry = NameEntry {
                        name: name.clone(),
                        addresses: r.addrs.clone(),
                        resolved_at: unix_now(),
                        ttl_secs: r.ttl,
                        error: None,
                    };
                    let dropped: Vec<IpAddr> = old.addresses.iter().filter(|a| !r.addrs.contains(a)).copied().collect();
                    self.entries.insert(name.clone(), entry);
                    for a in dropped {
                        remove(maps, config, a, &self.entries, &mut log, name);
                    }
                    if old.error.is_some() {
                        log.push(format!("{name} resolves again"));
                    }
                }
                Err(why) => {
                    self.failures += 1;
                    self.next.insert(name.clone(), now + MIN_REFRESH);
                    if old.error.is_none() {
                        log.push(format!(
                            "warning: cannot resolve {name} ({why}); keeping its last addresses {:?}",
                            old.addresses
                        ));
                    }
                    self.entries.insert(
                        name.clone(),
                        NameEntry {
                            error: Some(why),
                            ..old
                        },
                    );
                }
            }
        }
        log
    }

    /// Writes `allow-names.json` beside the state file.
    pub fn save(&self, state_file: &Path) -> anyhow::Result<()> {
        let path = path_for(state_file);
        let entries: Vec<&NameEntry> = self.entries.values().collect();
        sipfilter::state_file::write_private(&path, (serde_json::to_string_pretty(&entries)? + "\n").as_bytes())
    }
}

/// Takes `addr` off the allowlist unless the configuration lists it as an address, or another
/// name still stands for it.
fn remove(
    maps: &mut FilterMaps,
    config: &Config,
    addr: IpAddr,
    entries: &BTreeMap<String, NameEntry>,
    log: &mut Vec<String>,
    name: &str,
) {
    let cidr = Cidr::host(addr);
    if config.allow.contains(&cidr) || entries.values().any(|e| e.addresses.contains(&addr)) {
        return;
    }
    match maps.list_remove(ListKind::Allow, &cidr) {
        Ok(true) => log.push(format!(
            "removed {addr} from the allowlist ({name} no longer resolves to it)"
        )),
        Ok(false) => {}
        Err(e) => log.push(format!("warning: cannot remove {addr} from the allowlist: {e:#}")),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
