//! The agent's state file: every active ban, CLI list entry, known source, cracked extension
//! and device, so they survive a reboot (when the pins are gone) as well as an agent restart
//! (when they are not).
//!
//! Ends are stored as wall-clock Unix times, because the kernel's clock (CLOCK_BOOTTIME)
//! restarts at zero on reboot; a restored ban gets exactly the time it had left.
//!
//! Versions: 1 had no devices (read as none); 2 adds them. A newer file is refused.

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sipfilter_common::{
    counters::ban_reason,
    devices::{DeviceKey, DeviceState, DEVICE_LINES},
    maps::PERMANENT,
    scan::{ext_from, ext_str},
    Ban, CrackedExtension, KnownSource,
};

use crate::{
    addr::Cidr,
    clock,
    filter_maps::{FilterMaps, ListKind},
    trust::TrustMaps,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBan {
    /// The source key's address: an IPv4 address, or the masked IPv6 prefix address.
    pub source: IpAddr,
    /// Unix time in ms at which the ban ends; absent for a permanent ban.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
    pub strike: u32,
    pub reason: String,
    pub method: u8,
}

/// An allowlist or denylist entry added with the CLI (or a CIDR ban, which is a timed
/// denylist entry), kept so it outlives a reboot like a ban does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedListEntry {
    /// "allow" or "deny".
    pub list: String,
    pub cidr: String,
    /// Unix time in ms at which the entry ends; absent for a permanent entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
    /// Why a timed denylist entry was made (a ban reason's name); absent for an operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub bans: Vec<SavedBan>,
    /// List entries not installed from the configuration.
    #[serde(default)]
    pub lists: Vec<SavedListEntry>,
    /// Allowlist and denylist entries the agent installed from its configuration, so a
    /// reload or restart can remove the ones the configuration no longer has (entries added
    /// with the CLI are not in these lists and are left alone).
    #[serde(default)]
    pub managed_allow: Vec<String>,
    #[serde(default)]
    pub managed_deny: Vec<String>,
    /// Sources that earned trust by registering cleanly, with when that ends.
    #[serde(default)]
    pub known: Vec<SavedKnown>,
    /// Extensions found cracked, until an operator clears them.
    #[serde(default)]
    pub cracked: Vec<SavedCracked>,
    /// The devices under each source (what the answers said to each source port), as of the
    /// last save (absent from a version 1 file: none).
    #[serde(default)]
    pub devices: Vec<SavedDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedKnown {
    pub source: IpAddr,
    pub until_unix_ms: u64,
    pub last_success_unix_ms: u64,
    pub extension: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCracked {
    pub extension: String,
    pub source: IpAddr,
    pub at_unix_ms: u64,
    pub failures: u32,
    pub other_extensions: u32,
}

/// A device (source + port) and what the answers said to it ([`DeviceState`]). Instants are
/// wall-clock ms; slots keep their places (an empty one is ""), so the ring positions hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    pub source: IpAddr,
    pub port: u32,
    /// The lines it registered, slot by slot.
    pub registered: Vec<String>,
    #[serde(default)]
    pub next_registered: u32,
    /// Challenges, slot by slot: the extension ("" once answered), the CSeq identity of the
    /// challenged request, when it was first challenged (0: never).
    #[serde(default)]
    pub challenged: Vec<SavedChallenge>,
    #[serde(default)]
    pub next_challenged: u32,
    /// The last extension it failed on, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_unix_ms: Option<u64>,
    /// When its own failure and not-found budgets are empty again (absent: empty now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_debt_until_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_found_debt_until_unix_ms: Option<u64>,
    pub first_seen_unix_ms: u64,
    pub last_answer_unix_ms: u64,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub not_found: u32,
    #[serde(default)]
    pub successes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedChallenge {
    pub extension: String,
    pub cseq: u32,
    pub at_unix_ms: u64,
}

/// The format's version. Fields added as optional (the devices) keep it: a version that does
/// not know them ignores them, so a rollback keeps the file (it would refuse a newer version
/// and start empty). Bump it only for a change an older version would misread.
pub const VERSION: u32 = 1;

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A CLOCK_BOOTTIME end as a wall-clock end (None: permanent).
fn to_unix_ms(expires_ns: u64, boot_now: u64, unix_now: u64) -> Option<u64> {
    (expires_ns != PERMANENT).then(|| unix_now.saturating_add(expires_ns.saturating_sub(boot_now) / 1_000_000))
}

/// A wall-clock end back on this boot's clock; None when it has passed.
fn to_boot_ns(expires_unix_ms: Option<u64>, boot_now: u64, unix_now: u64) -> Option<u64> {
    match expires_unix_ms {
        None => Some(PERMANENT),
        Some(ms) if ms <= unix_now => None,
        Some(ms) => Some(boot_now.saturating_add((ms - unix_now).saturating_mul(1_000_000))),
    }
}

fn reason_code(name: &str) -> u8 {
    (0..=255u8)
        .find(|r| ban_reason::name(*r) == name)
        .unwrap_or(ban_reason::RESTORED)
}

/// The active bans in the maps, as the state file stores them, sorted by source.
pub fn snapshot(maps: &FilterMaps) -> anyhow::Result<Vec<SavedBan>> {
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let mut out: Vec<SavedBan> = maps
        .bans()?
        .into_iter()
        .filter(|(_, b)| b.expires_ns > boot_now)
        .map(|(key, b)| SavedBan {
            source: Cidr::from_map(key.addr, 128).addr,
            expires_unix_ms: to_unix_ms(b.expires_ns, boot_now, unix_now),
            strike: b.strike,
            reason: ban_reason::name(b.reason).to_string(),
            method: b.method,
        })
        .collect();
    out.sort_by_key(|b| b.source);
    Ok(out)
}

/// Writes the state file atomically: a temporary file in the same folder, synced, renamed.
pub fn save(path: &Path, state: &StateFile) -> anyhow::Result<()> {
    let mut state = state.clone();
    state.version = VERSION;
    let text = serde_json::to_string_pretty(&state)? + "\n";
    write_private(path, text.as_bytes())
}

/// Writes one of the agent's files atomically (a temporary file in the same folder, synced,
/// renamed), readable by root only whatever the umask; a folder it has to create is root's
/// only too. The state folder holds who is banned and who is trusted.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Reads a state file; a missing file is an empty state.
pub fn load(path: &Path) -> anyhow::Result<StateFile> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(&text).with_context(|| format!("{} is not a sipfilter state file", path.display()))
}

/// A state file's text (also what the fuzzer feeds). A file from a newer sipfilter is
/// refused rather than half-understood.
pub fn parse(text: &str) -> anyhow::Result<StateFile> {
    let state: StateFile = serde_json::from_str(text)?;
    if state.version > VERSION {
        anyhow::bail!(
            "it was written by a newer sipfilter (state file version {}; this one reads version {VERSION})",
            state.version
        );
    }
    Ok(state)
}

/// What [`restore`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub restored: usize,
    pub already_present: usize,
    pub expired: usize,
    pub allowlisted: usize,
}

/// Puts saved bans with time left back into the ban table, each with the time it had left.
/// A ban already in the table (pins survived) is left as it is.
pub fn restore(maps: &mut FilterMaps, bans: &[SavedBan]) -> anyhow::Result<Restored> {
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let ipv6_prefix = maps.read_config()?.ipv6_prefix_len();
    let mut r = Restored::default();
    for saved in bans {
        // Keyed as the program keys it now (the IPv6 source prefix may have changed).
        let key = crate::addr::source_key(saved.source, ipv6_prefix);
        let Some(expires_ns) = to_boot_ns(saved.expires_unix_ms, boot_now, unix_now) else {
            r.expired += 1;
            continue;
        };
        if maps.ban(&key)?.is_some_and(|b| b.expires_ns > boot_now) {
            r.already_present += 1;
            continue;
        }
        if maps.allowlist_match(&key)?.is_some() {
            r.allowlisted += 1;
            continue;
        }
        let ban = Ban {
            expires_ns,
            banned_at_ns: boot_now,
            strike: saved.strike,
            reason: reason_code(&saved.reason),
            method: saved.method,
            monitor: 0,
            _pad: 0,
        };
        maps.insert_ban(&key, &ban)?;
        r.restored += 1;
    }
    Ok(r)
}

fn list_name(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Allow => "allow",
        ListKind::Deny => "deny",
    }
}

/// The list entries in force that the configuration did not install, sorted.
pub fn snapshot_lists(
    maps: &FilterMaps,
    managed_allow: &[String],
    managed_deny: &[String],
) -> anyhow::Result<Vec<SavedListEntry>> {
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let mut out = Vec::new();
    for (kind, managed) in [(ListKind::Allow, managed_allow), (ListKind::Deny, managed_deny)] {
        for (cidr, entry) in maps.list(kind)? {
            let text = cidr.to_string();
            if entry.expires_ns <= boot_now || managed.contains(&text) {
                continue;
            }
            out.push(SavedListEntry {
                list: list_name(kind).to_string(),
                cidr: text,
                expires_unix_ms: to_unix_ms(entry.expires_ns, boot_now, unix_now),
                reason: (entry.reason != 0).then(|| ban_reason::name(entry.reason as u8).to_string()),
            });
        }
    }
    Ok(out)
}

/// Puts saved list entries with time left back, allowlist first (so no restored ban or deny
/// can cover a trunk in between). Returns (restored, expired).
pub fn restore_lists(maps: &mut FilterMaps, entries: &[SavedListEntry]) -> anyhow::Result<(usize, usize)> {
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let (mut restored, mut expired) = (0, 0);
    for kind in [ListKind::Allow, ListKind::Deny] {
        for e in entries.iter().filter(|e| e.list == list_name(kind)) {
            let Ok(cidr) = e.cidr.parse::<Cidr>() else { continue };
            match to_boot_ns(e.expires_unix_ms, boot_now, unix_now) {
                Some(expires_ns) => {
                    let reason = e.reason.as_deref().map_or(0, |r| u32::from(reason_code(r)));
                    maps.list_add_for(kind, &cidr, expires_ns, reason)?;
                    restored += 1;
                }
                None => expired += 1,
            }
        }
    }
    Ok((restored, expired))
}

/// A past CLOCK_BOOTTIME instant as wall-clock ms.
fn past_to_unix_ms(at_ns: u64, boot_now: u64, unix_now: u64) -> u64 {
    unix_now.saturating_sub(boot_now.saturating_sub(at_ns) / 1_000_000)
}

/// A past wall-clock instant on this boot's clock (0 if it lies before this boot).
fn past_to_boot_ns(at_ms: u64, boot_now: u64, unix_now: u64) -> u64 {
    boot_now.saturating_sub(unix_now.saturating_sub(at_ms).saturating_mul(1_000_000))
}

/// Known sources still known, and the cracked list, as the state file stores them.
pub fn snapshot_trust(trust: &TrustMaps) -> anyhow::Result<(Vec<SavedKnown>, Vec<SavedCracked>)> {
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let mut known: Vec<SavedKnown> = trust
        .known_sources()?
        .into_iter()
        .filter(|(_, k)| k.until_ns > boot_now)
        .map(|(key, k)| SavedKnown {
            source: Cidr::from_map(key.addr, 128).addr,
            until_unix_ms: to_unix_ms(k.until_ns, boot_now, unix_now).unwrap_or(u64::MAX),
            last_success_unix_ms: past_to_unix_ms(k.last_success_ns, boot_now, unix_now),
            extension: ext_str(&k.extension).to_string(),
        })
        .collect();
    known.sort_by_key(|k| k.source);
    let mut cracked: Vec<SavedCracked> = trust
        .cracked()?
        .into_iter()
        .map(|(ext, c)| SavedCracked {
            extension: ext_str(&ext).to_string(),
            source: Cidr::from_map(c.source.addr, 128).addr,
            at_unix_ms: past_to_unix_ms(c.at_ns, boot_now, unix_now),
            failures: c.failures,
            other_extensions: c.other_extensions,
        })
        .collect();
    cracked.sort_by(|a, b| a.extension.cmp(&b.extension));
    Ok((known, cracked))
}

/// Puts saved known sources (with time left) and the cracked list back. An entry already in
/// the maps (pins survived) is left as it is. Returns (known restored, cracked restored).
pub fn restore_trust(
    trust: &mut TrustMaps,
    ipv6_prefix: u8,
    known: &[SavedKnown],
    cracked: &[SavedCracked],
) -> anyhow::Result<(usize, usize)> {
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let mut restored_known = 0;
    for k in known {
        let key = crate::addr::source_key(k.source, ipv6_prefix);
        let Some(until_ns) = to_boot_ns(Some(k.until_unix_ms), boot_now, unix_now) else {
            continue;
        };
        if trust.known(&key)?.is_some() {
            continue;
        }
        let entry = KnownSource {
            until_ns,
            last_success_ns: past_to_boot_ns(k.last_success_unix_ms, boot_now, unix_now),
            extension: ext_from(&k.extension),
        };
        trust.insert_known(&key, &entry)?;
        restored_known += 1;
    }
    let present: Vec<String> = trust.cracked()?.iter().map(|(e, _)| ext_str(e).to_string()).collect();
    let mut restored_cracked = 0;
    for c in cracked {
        if present.contains(&c.extension) {
            continue;
        }
        let entry = CrackedExtension {
            source: crate::addr::source_key(c.source, ipv6_prefix),
            at_ns: past_to_boot_ns(c.at_unix_ms, boot_now, unix_now),
            failures: c.failures,
            other_extensions: c.other_extensions,
        };
        trust.insert_cracked(&ext_from(&c.extension), &entry)?;
        restored_cracked += 1;
    }
    Ok((restored_known, restored_cracked))
}

/// A past instant as wall-clock ms; None for 0 (never).
fn past_to_unix_ms_opt(at_ns: u64, boot_now: u64, unix_now: u64) -> Option<u64> {
    (at_ns != 0).then(|| past_to_unix_ms(at_ns, boot_now, unix_now))
}

/// A future instant (a budget's debt) as wall-clock ms; None when it has passed (empty).
fn debt_to_unix_ms(debt_ns: u64, boot_now: u64, unix_now: u64) -> Option<u64> {
    (debt_ns > boot_now).then(|| unix_now.saturating_add((debt_ns - boot_now) / 1_000_000))
}

/// A device worth carrying: one that registered a line, has a challenge open, failed, or was
/// counted anything. A device only ever sent answers that count for nothing (OPTIONS
/// keepalives) is a fresh device again after a reboot.
fn worth_saving(d: &DeviceState) -> bool {
    let any = |slots: &[sipfilter_common::scan::Extension]| slots.iter().any(|e| e[0] != 0);
    any(&d.registered)
        || any(&d.challenged)
        || d.failed[0] != 0
        || d.failures != 0
        || d.not_found != 0
        || d.successes != 0
}

impl SavedDevice {
    /// Its last sign of life, wall clock.
    fn last_activity_unix_ms(&self) -> u64 {
        self.last_answer_unix_ms.max(self.first_seen_unix_ms)
    }

    fn from_state(key: &DeviceKey, d: &DeviceState, boot_now: u64, unix_now: u64) -> SavedDevice {
        let challenged = (0..DEVICE_LINES)
            .map(|i| SavedChallenge {
                extension: ext_str(&d.challenged[i]).to_string(),
                cseq: d.challenged_cseq[i],
                at_unix_ms: past_to_unix_ms_opt(d.challenged_ns[i], boot_now, unix_now).unwrap_or(0),
            })
            .collect();
        SavedDevice {
            source: Cidr::from_map(key.source.addr, 128).addr,
            port: key.port,
            registered: d.registered.iter().map(|e| ext_str(e).to_string()).collect(),
            next_registered: d.next_registered,
            challenged,
            next_challenged: d.next_challenged,
            failed: (d.failed[0] != 0).then(|| ext_str(&d.failed).to_string()),
            failed_unix_ms: past_to_unix_ms_opt(d.failed_ns, boot_now, unix_now),
            failure_debt_until_unix_ms: debt_to_unix_ms(d.failure_debt_ns, boot_now, unix_now),
            not_found_debt_until_unix_ms: debt_to_unix_ms(d.not_found_debt_ns, boot_now, unix_now),
            first_seen_unix_ms: past_to_unix_ms(d.first_seen_ns, boot_now, unix_now),
            last_answer_unix_ms: past_to_unix_ms_opt(d.last_answer_ns, boot_now, unix_now).unwrap_or(0),
            failures: d.failures,
            not_found: d.not_found,
            successes: d.successes,
        }
    }

    /// The device on this boot's clock. An instant before this boot cannot be told on it
    /// (the clock starts at zero) and reads as the boot itself; the last failure, whose age
    /// decides whether a 2xx on another extension is a walk, is then forgotten rather than
    /// made younger than it is.
    fn to_state(&self, boot_now: u64, unix_now: u64) -> DeviceState {
        let mut d = DeviceState::default();
        for (i, e) in self.registered.iter().take(DEVICE_LINES).enumerate() {
            d.registered[i] = ext_from(e);
        }
        for (i, c) in self.challenged.iter().take(DEVICE_LINES).enumerate() {
            d.challenged[i] = ext_from(&c.extension);
            d.challenged_cseq[i] = c.cseq;
            d.challenged_ns[i] = match c.at_unix_ms {
                0 => 0,
                ms => past_to_boot_ns(ms, boot_now, unix_now),
            };
        }
        d.next_registered = self.next_registered % DEVICE_LINES as u32;
        d.next_challenged = self.next_challenged % DEVICE_LINES as u32;
        if let (Some(ext), Some(at)) = (&self.failed, self.failed_unix_ms) {
            let age_ns = unix_now.saturating_sub(at).saturating_mul(1_000_000);
            if age_ns < boot_now {
                d.failed = ext_from(ext);
                d.failed_ns = boot_now - age_ns;
            }
        }
        // A debt with time left keeps it; one that has passed is an empty budget.
        let debt = |until: Option<u64>| until.and_then(|u| to_boot_ns(Some(u), boot_now, unix_now)).unwrap_or(0);
        d.failure_debt_ns = debt(self.failure_debt_until_unix_ms);
        d.not_found_debt_ns = debt(self.not_found_debt_until_unix_ms);
        d.first_seen_ns = past_to_boot_ns(self.first_seen_unix_ms, boot_now, unix_now);
        d.last_answer_ns = match self.last_answer_unix_ms {
            0 => 0,
            ms => past_to_boot_ns(ms, boot_now, unix_now),
        };
        d.failures = self.failures;
        d.not_found = self.not_found;
        d.successes = self.successes;
        d
    }
}

/// The devices in the pinned map under `pin_dir` worth carrying (see [`worth_saving`]) and
/// heard from within `keep_for` (the known-source time: a device quiet longer belongs to no
/// source that is still known through it), sorted by source and port. The map is bounded
/// (`DEVICES_SIZE`), and so is this.
pub fn snapshot_devices(pin_dir: &Path, keep_for: Duration) -> anyhow::Result<Vec<SavedDevice>> {
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let map = crate::devices::open(pin_dir)?;
    let mut out = Vec::new();
    for entry in map.iter() {
        let (key, d) = match entry {
            Ok(e) => e,
            // An entry the LRU evicted between the key and its value.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("cannot read the devices"),
        };
        if !worth_saving(&d) {
            continue;
        }
        let saved = SavedDevice::from_state(&key, &d, boot_now, unix_now);
        if unix_now.saturating_sub(saved.last_activity_unix_ms()) > keep_for.as_millis() as u64 {
            continue;
        }
        out.push(saved);
    }
    out.sort_by_key(|d| (d.source, d.port));
    Ok(out)
}

/// Puts saved devices back into the devices map under `pin_dir` when it is new (empty; a
/// map that holds devices, pins kept, is the truth and is left as it is). A device not heard
/// from within `keep_for` is dropped. Returns (restored, dropped as expired).
pub fn restore_devices(
    pin_dir: &Path,
    ipv6_prefix: u8,
    keep_for: Duration,
    devices: &[SavedDevice],
) -> anyhow::Result<(usize, usize)> {
    if devices.is_empty() {
        return Ok((0, 0));
    }
    let mut map = crate::devices::open(pin_dir)?;
    if map.keys().next().is_some() {
        return Ok((0, 0));
    }
    let boot_now = clock::boot_ns();
    let unix_now = unix_ms_now();
    let (mut restored, mut expired) = (0, 0);
    for saved in devices {
        if unix_now.saturating_sub(saved.last_activity_unix_ms()) > keep_for.as_millis() as u64 {
            expired += 1;
            continue;
        }
        let key = DeviceKey {
            source: crate::addr::source_key(saved.source, ipv6_prefix),
            port: saved.port,
        };
        map.insert(key, saved.to_state(boot_now, unix_now), 0)
            .context("cannot write the devices")?;
        restored += 1;
    }
    Ok((restored, expired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipfilter_common::SourceKey;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn device(now: u64) -> (DeviceKey, DeviceState) {
        let mut d = DeviceState::new(now - 3_600 * S);
        d.challenge(&ext_from("201"), 7, now - 60 * S);
        d.challenge(&ext_from("202"), 8, now - 50 * S);
        d.challenge(&ext_from("202"), 9, now - 40 * S);
        d.registered(&ext_from("201"), now - 30 * S);
        d.failure_debt_ns = now + 20 * S;
        d.not_found = 3;
        let key = DeviceKey {
            source: SourceKey::from_v4([192, 0, 2, 7]),
            port: 5062,
        };
        (key, d)
    }

    #[test]
    fn a_device_comes_back_as_it_was_on_the_same_boot() {
        let (boot_now, unix_now) = (10_000 * S, 1_700_000_000_000);
        let (key, d) = device(boot_now);
        let saved = SavedDevice::from_state(&key, &d, boot_now, unix_now);
        assert_eq!(saved.source, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(saved.registered, vec!["201", "", "", ""]);
        assert_eq!(saved.failed.as_deref(), Some("202"));
        assert_eq!(saved.failed_unix_ms, Some(unix_now - 40_000));
        assert_eq!(saved.failure_debt_until_unix_ms, Some(unix_now + 20_000));
        assert_eq!(saved.not_found_debt_until_unix_ms, None);
        assert_eq!(saved.first_seen_unix_ms, unix_now - 3_600_000);
        // Through the file's text, then back on the same clock (a migration, no reboot).
        let text = serde_json::to_string(&saved).unwrap();
        let back: SavedDevice = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_state(boot_now, unix_now), d);
        // Ten seconds later: every instant ten seconds further back, the debt ten closer.
        let later = back.to_state(boot_now + 10 * S, unix_now + 10_000);
        assert_eq!(later, d);
    }

    #[test]
    fn after_a_reboot_lines_and_budgets_come_back_and_old_instants_read_as_the_boot() {
        let (boot_now, unix_now) = (10_000 * S, 1_700_000_000_000);
        let (key, d) = device(boot_now);
        let saved = SavedDevice::from_state(&key, &d, boot_now, unix_now);
        // Rebooted two minutes later; the agent starts 30 s into the new boot.
        let (boot2, unix2) = (30 * S, unix_now + 120_000);
        let r = saved.to_state(boot2, unix2);
        assert_eq!(r.registered, d.registered);
        assert_eq!(r.next_registered, d.next_registered);
        assert_eq!(r.challenged, d.challenged);
        assert_eq!(r.challenged_cseq, d.challenged_cseq);
        assert_eq!((r.failures, r.not_found, r.successes), (1, 3, 1));
        // The failure (160 s old, from before this boot) cannot be placed: forgotten, so a
        // 2xx on another line is not taken for a walk from a failure made younger.
        assert_eq!((ext_str(&r.failed), r.failed_ns), ("", 0));
        assert_eq!((r.first_seen_ns, r.last_answer_ns), (0, 0));
        assert_eq!(r.challenged_ns, [0; DEVICE_LINES]);
        // The debt had 20 s left at the save: it has passed.
        assert_eq!(r.failure_debt_ns, 0);
        // A debt with time left keeps it.
        let mut long = saved.clone();
        long.failure_debt_until_unix_ms = Some(unix_now + 300_000);
        assert_eq!(long.to_state(boot2, unix2).failure_debt_ns, boot2 + 180 * S);
    }

    #[test]
    fn a_device_that_was_told_nothing_is_not_saved() {
        let (_, d) = device(10_000 * S);
        assert!(worth_saving(&d));
        assert!(!worth_saving(&DeviceState::new(5)));
    }

    #[test]
    fn a_version_1_file_has_no_devices_and_a_newer_one_is_refused() {
        let v1 = r#"{"version":1,"bans":[],"known":[{"source":"192.0.2.7","until_unix_ms":1,"last_success_unix_ms":1,"extension":"201"}]}"#;
        let s = parse(v1).unwrap();
        assert_eq!((s.version, s.known.len(), s.devices.len()), (1, 1, 0));
        let v2 = format!(r#"{{"version":{VERSION},"bans":[],"devices":[]}}"#);
        assert!(parse(&v2).is_ok());
        let newer = format!(r#"{{"version":{},"bans":[]}}"#, VERSION + 1);
        let err = format!("{:#}", parse(&newer).unwrap_err());
        assert!(err.contains("written by a newer sipfilter"), "{err}");
        // The devices are optional: a version 1 reader (0.3.0) reads a file that has them.
        assert_eq!(VERSION, 1);
    }

    #[test]
    fn a_saved_file_is_the_current_version_with_its_devices() {
        let dir = std::env::temp_dir().join(format!("sipfilter-state-{}", std::process::id()));
        let path = dir.join("state.json");
        let (boot_now, unix_now) = (10_000 * S, 1_700_000_000_000);
        let (key, d) = device(boot_now);
        let state = StateFile {
            version: 1,
            devices: vec![SavedDevice::from_state(&key, &d, boot_now, unix_now)],
            ..StateFile::default()
        };
        save(&path, &state).unwrap();
        let back = load(&path).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(back.version, VERSION);
        assert_eq!(back.devices, state.devices);
    }
}
