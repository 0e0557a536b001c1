//! The rules the request inspection applies, as the kernel holds them: the scanner
//! User-Agent tokens and the destination prefixes. Written at load and on every reload from
//! the configuration; the call counters beside them are the kernel's own.

use std::{collections::HashSet, path::Path};

use anyhow::Context as _;
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData},
    Ebpf,
};
use sipfilter_common::{
    calls::DestinationRule,
    maps::{DESTINATIONS, SCANNER_USER_AGENTS},
    user_agent::ScannerUserAgents,
};

use crate::config::{Config, DestinationPrefix};

pub struct RequestRuleMaps {
    scanner_user_agents: Array<MapData, ScannerUserAgents>,
    destinations: LpmTrie<MapData, [u8; 8], DestinationRule>,
}

impl RequestRuleMaps {
    /// Takes the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the object has no map {name}"))
        };
        Self::from_maps(take(SCANNER_USER_AGENTS)?, take(DESTINATIONS)?)
    }

    /// Opens the maps pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| crate::filter_maps::open_pin(dir, name);
        Self::from_maps(open(SCANNER_USER_AGENTS)?, open(DESTINATIONS)?)
    }

    fn from_maps(scanner: Map, destinations: Map) -> anyhow::Result<Self> {
        Ok(RequestRuleMaps {
            scanner_user_agents: Array::try_from(scanner)
                .context("map scanner_user_agents has an unexpected layout")?,
            destinations: LpmTrie::try_from(destinations).context("map destinations has an unexpected layout")?,
        })
    }

    /// The scanner tokens in force, lowercased, in counter order.
    pub fn scanner_tokens(&self) -> anyhow::Result<Vec<String>> {
        let r = self.scanner_user_agents.get(&0, 0)?;
        Ok((0..r.count as usize)
            .map(|i| {
                let t = r.token(i);
                let n = t.iter().position(|&c| c == 0).unwrap_or(t.len());
                String::from_utf8_lossy(&t[..n]).into_owned()
            })
            .collect())
    }

    /// Puts the configuration's rules in force: the token list replaced, the destination
    /// rules made exactly the configured ones.
    pub fn write(&mut self, config: &Config) -> anyhow::Result<()> {
        self.scanner_user_agents
            .set(0, config.scanner_rules(), 0)
            .context("cannot write the scanner User-Agent tokens")?;
        let wanted = destination_entries(&config.calls.rules);
        let keep: HashSet<(u32, [u8; 8])> = wanted.iter().map(|(k, _)| (k.prefix_len(), k.data())).collect();
        let stale: Vec<Key<[u8; 8]>> = self
            .destinations
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            let _ = self.destinations.remove(&k);
        }
        for (k, rule) in &wanted {
            // A rule that stays keeps its count across reloads.
            let hits = self.destinations.get(k, 0).map_or(0, |old| old.hits);
            let rule = DestinationRule { hits, ..*rule };
            self.destinations
                .insert(k, rule, 0)
                .context("cannot write a destination rule")?;
        }
        Ok(())
    }

    /// The rules in force: (prefix digits as text, deny, calls decided), by prefix.
    pub fn destinations(&self) -> Vec<(String, bool, u64)> {
        let mut out: Vec<(String, bool, u64)> = self
            .destinations
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                let digits = sipfilter_common::dialed::Digits {
                    nibbles: u64::from_be_bytes(k.data()),
                    len: k.prefix_len() / 4,
                    _pad: 0,
                };
                (digits.text().as_str().to_string(), v.deny != 0, v.hits)
            })
            .collect();
        out.sort();
        out
    }
}

/// The LPM entries for the configured rules. Where an allow and a deny rule name the same
/// prefix, the allow wins: it is the operator's exception to a list (the shipped one, or a
/// carrier's file).
pub fn destination_entries(rules: &[DestinationPrefix]) -> Vec<(Key<[u8; 8]>, DestinationRule)> {
    let mut by_prefix: std::collections::BTreeMap<(u32, [u8; 8]), DestinationRule> = Default::default();
    for (i, r) in rules.iter().enumerate() {
        let rule = DestinationRule {
            deny: r.deny as u32,
            rule: i as u32,
            hits: 0,
        };
        by_prefix
            .entry((4 * r.digits.len, r.digits.key_bytes()))
            .and_modify(|old| {
                if old.deny != 0 {
                    *old = rule;
                }
            })
            .or_insert(rule);
    }
    by_prefix
        .into_iter()
        .map(|((len, data), rule)| (Key::new(len, data), rule))
        .collect()
}
