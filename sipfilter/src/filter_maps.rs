//! Every operation on the program's maps, whether they come from a fresh load or from pins.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use aya::{
    maps::{
        lpm_trie::{Key as PrefixKey, LpmTrie},
        Array, HashMap, Map, MapData, PerCpuArray,
    },
    Ebpf,
};
use sipfilter_common::{
    config::FLAG_V6_LISTS_BY_PREFIX,
    counters::ban_reason,
    maps::{
        ALLOWLIST, BAN_TABLE, CONFIG_MAP, COUNTERS_MAP, DENYLIST, OFFENSE_HISTORY, PERMANENT, RATE_OVERFLOW, RATE_STATE,
    },
    Ban, Counters, KernelConfig, ListEntry, OffenseHistory, RateState, SourceKey,
};

use crate::{addr::Cidr, clock};

/// Which CIDR list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Allow,
    Deny,
}

impl ListKind {
    pub fn map_name(self) -> &'static str {
        match self {
            ListKind::Allow => ALLOWLIST,
            ListKind::Deny => DENYLIST,
        }
    }
}

/// What a sweep removed, and when the next remaining ban or list entry expires
/// (`u64::MAX`: none does).
pub struct Sweep {
    pub bans: usize,
    /// The sources whose bans were removed.
    pub lifted: Vec<SourceKey>,
    pub entries: usize,
    pub next_expiry_ns: u64,
}

pub struct FilterMaps {
    /// The pin folder, locked (flock) around every read-modify-write of the config record, so
    /// the agent and a CLI command running at the same moment cannot undo each other's change.
    lock_dir: Option<PathBuf>,
    config: Array<MapData, KernelConfig>,
    counters: PerCpuArray<MapData, Counters>,
    ban_table: HashMap<MapData, SourceKey, Ban>,
    offense_history: HashMap<MapData, SourceKey, OffenseHistory>,
    rate_state: Array<MapData, RateState>,
    rate_overflow: HashMap<MapData, SourceKey, RateState>,
    allowlist: LpmTrie<MapData, [u8; 16], ListEntry>,
    denylist: LpmTrie<MapData, [u8; 16], ListEntry>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .with_context(|| format!("the XDP object has no map {name}"))
}

/// The map pinned as `name` under `dir`.
pub fn open_pin(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("{} is not a map sipfilter knows", path.display()))
}

macro_rules! typed {
    ($map:expr, $name:expr) => {
        $map.try_into()
            .with_context(|| format!("map {} has an unexpected layout", $name))?
    };
}

impl FilterMaps {
    /// Takes the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::build(|name| take(ebpf, name))
    }

    /// Opens the maps pinned under `dir` by a loaded program.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Self> {
        let mut maps = Self::build(|name| open_pin(dir, name))?;
        maps.lock_dir = Some(dir.to_owned());
        Ok(maps)
    }

    /// Names the pin folder to lock config updates on (maps taken from a fresh load).
    pub fn set_lock_dir(&mut self, dir: &Path) {
        self.lock_dir = Some(dir.to_owned());
    }

    /// An exclusive lock on the pin folder, held until the returned file is dropped.
    fn config_lock(&self) -> anyhow::Result<Option<std::fs::File>> {
        let Some(dir) = &self.lock_dir else { return Ok(None) };
        let f = std::fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot lock {}", dir.display()));
        }
        Ok(Some(f))
    }

    fn build(mut get: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(FilterMaps {
            lock_dir: None,
            config: typed!(get(CONFIG_MAP)?, CONFIG_MAP),
            counters: typed!(get(COUNTERS_MAP)?, COUNTERS_MAP),
            ban_table: typed!(get(BAN_TABLE)?, BAN_TABLE),
            offense_history: typed!(get(OFFENSE_HISTORY)?, OFFENSE_HISTORY),
            rate_state: typed!(get(RATE_STATE)?, RATE_STATE),
            rate_overflow: typed!(get(RATE_OVERFLOW)?, RATE_OVERFLOW),
            allowlist: typed!(get(ALLOWLIST)?, ALLOWLIST),
            denylist: typed!(get(DENYLIST)?, DENYLIST),
        })
    }

    /// Writes the thresholds and flags of `config`. What the loader owns is kept from the map
    /// where `config` leaves it zero (the hash seed, the clock calibration), and the
    /// generation always moves forward, so the program re-reads every source's status.
    pub fn write_config(&mut self, config: &KernelConfig) -> anyhow::Result<()> {
        let _lock = self.config_lock()?;
        let current = self.read_config()?;
        let mut next = *config;
        next.generation = current.generation.max(config.generation) + 1;
        if next.hash_seed == 0 {
            next.hash_seed = current.hash_seed;
        }
        if next.ns_per_jiffy == 0 {
            next.ns_per_jiffy = current.ns_per_jiffy;
            next.jiffies_offset_ns = current.jiffies_offset_ns;
        }
        next.flags &= !FLAG_V6_LISTS_BY_PREFIX;
        if self.v6_lists_by_prefix(next.ipv6_prefix_len())? {
            next.flags |= FLAG_V6_LISTS_BY_PREFIX;
        }
        self.config.set(0, next, 0).context("cannot write the config map")
    }

    /// Whether no IPv6 list entry is longer than the IPv6 source prefix (see
    /// [`FLAG_V6_LISTS_BY_PREFIX`]).
    fn v6_lists_by_prefix(&self, prefix_len: u8) -> anyhow::Result<bool> {
        for kind in [ListKind::Allow, ListKind::Deny] {
            for entry in self.list_map(kind).keys() {
                let key = entry.with_context(|| format!("cannot read the {}", kind.map_name()))?;
                let cidr = Cidr::from_map(key.data(), key.prefix_len());
                if cidr.addr.is_ipv6() && cidr.prefix_len > prefix_len {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Sets or clears [`FLAG_V6_LISTS_BY_PREFIX`], telling the program when it changes.
    fn set_v6_lists_by_prefix(&mut self, by_prefix: bool) -> anyhow::Result<()> {
        let _lock = self.config_lock()?;
        let mut c = self.read_config()?;
        if c.v6_lists_by_prefix() == by_prefix {
            return Ok(());
        }
        c.flags ^= FLAG_V6_LISTS_BY_PREFIX;
        c.generation += 1;
        self.config.set(0, c, 0).context("cannot write the config map")
    }

    /// Tells the program that bans or lists changed: every source's cached status is re-read
    /// on its next packet.
    pub fn bump_generation(&mut self) -> anyhow::Result<()> {
        let _lock = self.config_lock()?;
        let mut c = self.read_config()?;
        c.generation += 1;
        self.config.set(0, c, 0).context("cannot write the config map")
    }

    pub fn read_config(&self) -> anyhow::Result<KernelConfig> {
        self.config.get(&0, 0).context("cannot read the config map")
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let per_cpu = self.counters.get(&0, 0).context("cannot read the counters map")?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            total.add(c);
        }
        total.derive_passed();
        Ok(total)
    }

    /// Resets the counters to zero on every CPU.
    pub fn reset_counters(&mut self) -> anyhow::Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e).context("cannot count CPUs")?;
        let zero = vec![Counters::default(); n];
        self.counters
            .set(0, zero.try_into().context("per-CPU value count")?, 0)
            .context("cannot reset counters")
    }

    // --- bans ---

    /// All entries of the ban table, expired ones included (the program ignores those).
    pub fn bans(&self) -> anyhow::Result<Vec<(SourceKey, Ban)>> {
        let mut out = Vec::new();
        for entry in self.ban_table.iter() {
            out.push(entry.context("cannot read the ban table")?);
        }
        Ok(out)
    }

    pub fn ban(&self, key: &SourceKey) -> anyhow::Result<Option<Ban>> {
        match self.ban_table.get(key, 0) {
            Ok(b) => Ok(Some(b)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("cannot read the ban table"),
        }
    }

    /// Bans a source for `duration_ns` (None: permanently), unless it is allowlisted.
    pub fn add_ban(&mut self, key: &SourceKey, duration_ns: Option<u64>, reason: u8) -> anyhow::Result<Ban> {
        if let Some(entry) = self.allowlist_match(key)? {
            bail!(
                "{} is allowlisted by {}: an allowlisted source is never banned",
                Cidr::from_map(key.addr, 128),
                entry
            );
        }
        let now = clock::boot_ns();
        let ban = Ban {
            expires_ns: duration_ns.map_or(PERMANENT, |d| now.saturating_add(d)),
            banned_at_ns: now,
            strike: 1,
            reason,
            method: sipfilter_common::Method::Unknown as u8,
            monitor: 0,
            _pad: 0,
        };
        self.insert_ban(key, &ban)?;
        Ok(ban)
    }

    /// Stores a ban as given (restoring state), still refusing allowlisted sources.
    pub fn insert_ban(&mut self, key: &SourceKey, ban: &Ban) -> anyhow::Result<()> {
        if self.allowlist_match(key)?.is_some() {
            bail!("{} is allowlisted", Cidr::from_map(key.addr, 128));
        }
        self.ban_table
            .insert(key, ban, 0)
            .context("cannot write the ban table (is it full?)")?;
        self.bump_generation()
    }

    pub fn remove_ban(&mut self, key: &SourceKey) -> anyhow::Result<bool> {
        match self.ban_table.remove(key) {
            Ok(()) => {
                self.bump_generation()?;
                Ok(true)
            }
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e).context("cannot remove from the ban table"),
        }
    }

    /// Removes expired bans and expired allow/deny entries (an expired list entry would hide
    /// a wider one still in force from the program's longest-prefix lookup). Each entry is
    /// read again just before it goes, so a ban the program renewed meanwhile stays; one
    /// generation bump tells the program. Returns (bans, list entries) removed.
    pub fn sweep_expired(&mut self) -> anyhow::Result<(usize, usize)> {
        let s = self.sweep()?;
        Ok((s.bans, s.entries))
    }

    /// Removes expired bans and list entries (one read of each table) and says when the next
    /// of those that remain expires.
    pub fn sweep(&mut self) -> anyhow::Result<Sweep> {
        let now = clock::boot_ns();
        let mut next_expiry_ns = u64::MAX;
        let mut bans = 0;
        let mut lifted = Vec::new();
        for (key, b) in self.bans()? {
            if b.expires_ns > now {
                if b.expires_ns != PERMANENT {
                    next_expiry_ns = next_expiry_ns.min(b.expires_ns);
                }
                continue;
            }
            if self.ban_table.get(&key, 0).is_ok_and(|b| b.expires_ns <= now) && self.ban_table.remove(&key).is_ok() {
                bans += 1;
                lifted.push(key);
            }
        }
        let mut entries = 0;
        for kind in [ListKind::Allow, ListKind::Deny] {
            for (cidr, e) in self.list(kind)? {
                if e.expires_ns > now {
                    if e.expires_ns != PERMANENT {
                        next_expiry_ns = next_expiry_ns.min(e.expires_ns);
                    }
                    continue;
                }
                let key = PrefixKey::new(cidr.map_prefix_len(), cidr.key_bytes());
                if self.list_map_mut(kind).remove(&key).is_ok() {
                    entries += 1;
                }
            }
        }
        if bans + entries > 0 {
            self.bump_generation()?;
        }
        Ok(Sweep {
            bans,
            lifted,
            entries,
            next_expiry_ns,
        })
    }

    /// Lifts the bans the program recorded in monitor mode (which dropped nothing), so ending
    /// monitor mode does not enforce a week of escalated bans on sources nobody has looked at.
    /// Returns how many.
    pub fn lift_monitor_bans(&mut self) -> anyhow::Result<usize> {
        let keys: Vec<SourceKey> = self
            .bans()?
            .into_iter()
            .filter(|(_, b)| b.monitor != 0)
            .map(|(k, _)| k)
            .collect();
        for key in &keys {
            let _ = self.ban_table.remove(key);
        }
        if !keys.is_empty() {
            self.bump_generation()?;
        }
        Ok(keys.len())
    }

    /// Moves every IPv6 ban to the key the program uses under a new source prefix length
    /// (a ban of a /64 becomes a ban of the /48 around it, or of the first /80 in it).
    /// Returns how many moved.
    pub fn rekey_ipv6_bans(&mut self, old_prefix: u8, new_prefix: u8) -> anyhow::Result<usize> {
        let mut moved = 0;
        for (key, ban) in self.bans()? {
            if key.is_v4() {
                continue;
            }
            let new_key = crate::addr::source_key(Cidr::from_map(key.addr, u32::from(old_prefix)).addr, new_prefix);
            if new_key != key {
                self.ban_table
                    .insert(new_key, ban, 0)
                    .context("cannot write the ban table")?;
                let _ = self.ban_table.remove(&key);
                moved += 1;
            }
        }
        if moved > 0 {
            self.bump_generation()?;
        }
        Ok(moved)
    }

    pub fn offense_history(&self, key: &SourceKey) -> anyhow::Result<Option<OffenseHistory>> {
        match self.offense_history.get(key, 0) {
            Ok(h) => Ok(Some(h)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("cannot read the offense history"),
        }
    }

    // --- rate state ---

    /// The rate state of every source the program tracks: occupied slots of the table, and
    /// the overflow entries of sources whose slot another active source holds.
    pub fn rate_states(&self) -> anyhow::Result<Vec<(SourceKey, RateState)>> {
        let mut out = Vec::new();
        for slot in self.rate_state.iter() {
            let state = slot.context("cannot read the rate state")?;
            if state.key != SourceKey::default() {
                out.push((state.key, state));
            }
        }
        for entry in self.rate_overflow.iter() {
            out.push(entry.context("cannot read the rate overflow table")?);
        }
        Ok(out)
    }

    /// Forgets every source's buckets (used between benchmark paths and by tests).
    pub fn clear_rate_state(&mut self) -> anyhow::Result<()> {
        for i in 0..self.rate_state.len() {
            if self.rate_state.get(&i, 0).is_ok_and(|s| s.key != SourceKey::default()) {
                self.rate_state
                    .set(i, RateState::default(), 0)
                    .context("cannot clear the rate state")?;
            }
        }
        let keys: Vec<SourceKey> = self.rate_overflow.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.rate_overflow.remove(&k);
        }
        Ok(())
    }

    /// Forgets one source's buckets and counts (its next packet starts with full buckets).
    pub fn remove_rate_state(&mut self, key: &SourceKey) -> anyhow::Result<bool> {
        let slot = key.slot(self.read_config()?.hash_seed);
        let state = self.rate_state.get(&slot, 0).context("cannot read the rate state")?;
        let mut removed = false;
        if state.key == *key {
            self.rate_state
                .set(slot, RateState::default(), 0)
                .context("cannot clear the rate state")?;
            removed = true;
        }
        match self.rate_overflow.remove(key) {
            Ok(()) => removed = true,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("cannot remove from the rate overflow table"),
        }
        Ok(removed)
    }

    // --- allow/deny lists ---

    pub fn list(&self, kind: ListKind) -> anyhow::Result<Vec<(Cidr, ListEntry)>> {
        let map = self.list_map(kind);
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry.with_context(|| format!("cannot read the {}", kind.map_name()))?;
            out.push((Cidr::from_map(k.data(), k.prefix_len()), v));
        }
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    }

    /// Adds a CIDR to a list. Adding to the allowlist lifts every ban it covers, keeping
    /// the invariant the program relies on: no allowlisted source is in the ban table.
    /// Returns the sources whose bans were lifted.
    pub fn list_add(&mut self, kind: ListKind, cidr: &Cidr, expires_ns: u64) -> anyhow::Result<Vec<SourceKey>> {
        self.list_add_for(kind, cidr, expires_ns, 0)
    }

    /// [`Self::list_add`] recording why (a ban reason code; 0 for an operator's entry).
    pub fn list_add_for(
        &mut self,
        kind: ListKind,
        cidr: &Cidr,
        expires_ns: u64,
        reason: u32,
    ) -> anyhow::Result<Vec<SourceKey>> {
        let key = PrefixKey::new(cidr.map_prefix_len(), cidr.key_bytes());
        // An IPv6 entry narrower than a source prefix ends per-prefix caching before it exists,
        // so no packet can cache a prefix-wide answer that the entry contradicts.
        if cidr.addr.is_ipv6() && cidr.prefix_len > self.read_config()?.ipv6_prefix_len() {
            self.set_v6_lists_by_prefix(false)?;
        }
        let entry = ListEntry {
            expires_ns,
            prefix_len: cidr.map_prefix_len(),
            reason,
        };
        self.list_map_mut(kind)
            .insert(&key, entry, 0)
            .with_context(|| format!("cannot add {cidr} to the {} (is it full?)", kind.map_name()))?;
        self.bump_generation()?;
        if kind == ListKind::Allow {
            return self.lift_bans_within(cidr);
        }
        Ok(Vec::new())
    }

    pub fn list_remove(&mut self, kind: ListKind, cidr: &Cidr) -> anyhow::Result<bool> {
        let key = PrefixKey::new(cidr.map_prefix_len(), cidr.key_bytes());
        match self.list_map_mut(kind).remove(&key) {
            Ok(()) => {
                self.bump_generation()?;
                let prefix_len = self.read_config()?.ipv6_prefix_len();
                if cidr.addr.is_ipv6() && cidr.prefix_len > prefix_len {
                    let by_prefix = self.v6_lists_by_prefix(prefix_len)?;
                    self.set_v6_lists_by_prefix(by_prefix)?;
                }
                Ok(true)
            }
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {cidr} from the {}", kind.map_name())),
        }
    }

    /// The allowlist entry in force that covers a source key's whole range (an IPv4 address,
    /// or the whole IPv6 source prefix), if any. A source only partly allowlisted (a /64 with
    /// one trunk /128 in it) can be banned: the program lets the allowlisted addresses through
    /// all the same, because it checks the allowlist first.
    pub fn allowlist_match(&self, key: &SourceKey) -> anyhow::Result<Option<Cidr>> {
        let now = clock::boot_ns();
        let range = self.key_range(key)?;
        for (cidr, entry) in self.list(ListKind::Allow)? {
            if entry.expires_ns > now && cidr.contains(&range) {
                return Ok(Some(cidr));
            }
        }
        Ok(None)
    }

    /// Removes bans of sources whose whole range `allowed` covers.
    pub fn lift_bans_within(&mut self, allowed: &Cidr) -> anyhow::Result<Vec<SourceKey>> {
        let mut lifted = Vec::new();
        for (key, _) in self.bans()? {
            if allowed.contains(&self.key_range(&key)?) {
                self.remove_ban(&key)?;
                lifted.push(key);
            }
        }
        Ok(lifted)
    }

    /// The addresses a source key stands for: one IPv4 address, or an IPv6 prefix of the
    /// configured length.
    fn key_range(&self, key: &SourceKey) -> anyhow::Result<Cidr> {
        let bits = if key.is_v4() {
            128
        } else {
            u32::from(self.read_config()?.ipv6_prefix_len())
        };
        Ok(Cidr::from_map(key.addr, bits))
    }

    fn list_map(&self, kind: ListKind) -> &LpmTrie<MapData, [u8; 16], ListEntry> {
        match kind {
            ListKind::Allow => &self.allowlist,
            ListKind::Deny => &self.denylist,
        }
    }

    fn list_map_mut(&mut self, kind: ListKind) -> &mut LpmTrie<MapData, [u8; 16], ListEntry> {
        match kind {
            ListKind::Allow => &mut self.allowlist,
            ListKind::Deny => &mut self.denylist,
        }
    }
}

/// Whether a map operation failed because the key is absent. aya reports a missing key as
/// `KeyNotFound` on lookups but as a plain ENOENT syscall error on deletes.
fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Reason name for display.
pub fn reason_name(reason: u8) -> &'static str {
    ban_reason::name(reason)
}
