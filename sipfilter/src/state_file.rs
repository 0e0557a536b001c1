//! The agent's state file: every active ban, so bans survive a reboot (when the pins are
//! gone) as well as an agent restart (when they are not).
//!
//! Ends are stored as wall-clock Unix times, because the kernel's clock (CLOCK_BOOTTIME)
//! restarts at zero on reboot; a restored ban gets exactly the time it had left.

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sipfilter_common::{
    counters::ban_reason,
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
