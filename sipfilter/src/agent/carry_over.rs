//! What a starting agent does with the maps it finds pinned: those whose layout this version
//! uses are kept as they are (every ban, list entry, known source, device and bucket in them
//! carries over); those an earlier version left in another layout are set aside, and the
//! families of records the state file holds for them are restored into their new maps.

use std::path::Path;

use sipfilter_common::maps::{
    ALLOWLIST, BAN_EVENTS, BAN_TABLE, CALL_EVENTS, CRACKED_EXTENSIONS, DENYLIST, DEVICES, KNOWN_SOURCES,
};

/// The event rings: their records' layout is not in their size, so pins made by another
/// version (any map of another layout says so) are never read as this version's records.
const RINGS: [&str; 2] = [BAN_EVENTS, CALL_EVENTS];

/// The folder (under the pins) that marks a restore not yet done: one folder in it per
/// family to restore. A start that fails after the load pinned new maps (the verifier
/// refused the program, an attach failed) restores again next time, rather than taking the
/// empty maps for the real ones and saving them over the state file.
const RESTORING: &str = "restoring";

/// The state file's record families and the maps they live in.
const FAMILIES: [(&str, &[&str]); 4] = [
    ("bans", &[BAN_TABLE]),
    ("lists", &[ALLOWLIST, DENYLIST]),
    ("trust", &[KNOWN_SOURCES, CRACKED_EXTENSIONS]),
    ("devices", &[DEVICES]),
];

/// Which families of the state file this start restores: those whose maps are new.
#[derive(Clone, Copy, Debug, Default)]
pub struct Restore {
    pub bans: bool,
    pub lists: bool,
    pub trust: bool,
    pub devices: bool,
}

impl Restore {
    /// Nothing was kept: the first start on these pins, or every family replaced.
    pub fn all(&self) -> bool {
        self.bans && self.lists && self.trust && self.devices
    }

    fn names(&self) -> Vec<&'static str> {
        let on = [self.bans, self.lists, self.trust, self.devices];
        FAMILIES
            .iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|((f, _), _)| *f)
            .collect()
    }
}

/// Sets aside the pinned maps this version cannot use (saying so in one sentence through
/// `log`) and tells which families to restore: those of the maps set aside, missing, or
/// marked by an earlier start that did not finish its restore.
pub fn prepare(pin_dir: &Path, log: impl Fn(String)) -> anyhow::Result<Restore> {
    let marks = pin_dir.join(RESTORING);
    let incompatible = sipfilter::loader::incompatible_maps(pin_dir)?;
    let mark = |family: &str| -> anyhow::Result<()> {
        sipfilter::bpffs::create_private_dir(&marks)?;
        sipfilter::bpffs::create_private_dir(&marks.join(family))
    };
    // Marked before anything moves: an interruption from here on restores next time.
    for (family, maps) in FAMILIES {
        let replaced = maps.iter().any(|m| incompatible.iter().any(|(n, _)| n == m));
        if replaced || maps.iter().any(|m| !pin_dir.join(m).exists()) {
            mark(family)?;
        }
    }
    if !incompatible.is_empty() {
        let mut names: Vec<&str> = incompatible.iter().map(|(n, _)| *n).collect();
        for ring in RINGS {
            if pin_dir.join(ring).exists() && !names.contains(&ring) {
                names.push(ring);
            }
        }
        let aside = sipfilter::loader::set_aside_maps(pin_dir, &names)?;
        let why: Vec<&str> = incompatible.iter().map(|(_, w)| w.as_str()).collect();
        log(format!(
            "the maps {} pinned under {} were made by another version ({}): moved them to {} and kept every other map as it is; the running filter keeps the moved ones until this one is swapped in; remove {} once no longer needed",
            names.join(", "),
            pin_dir.display(),
            why.join("; "),
            aside.display(),
            aside.display()
        ));
    }
    let mut restore = Restore::default();
    if marks.exists() {
        for entry in std::fs::read_dir(&marks)? {
            match entry?.file_name().to_str() {
                Some("bans") => restore.bans = true,
                Some("lists") => restore.lists = true,
                Some("trust") => restore.trust = true,
                Some("devices") => restore.devices = true,
                _ => {}
            }
        }
        // An older version's marker folder had no families in it: everything.
        if restore.names().is_empty() {
            restore = Restore {
                bans: true,
                lists: true,
                trust: true,
                devices: true,
            };
        }
    }
    if !restore.names().is_empty() && !restore.all() {
        log(format!(
            "restoring from the state file: {} (their maps are new)",
            restore.names().join(", ")
        ));
    }
    Ok(restore)
}

/// The restore is done: the marks go.
pub fn restored(pin_dir: &Path) -> anyhow::Result<()> {
    let marks = pin_dir.join(RESTORING);
    if marks.exists() {
        for entry in std::fs::read_dir(&marks)? {
            std::fs::remove_dir(entry?.path())?;
        }
        std::fs::remove_dir(&marks).map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", marks.display()))?;
    }
    Ok(())
}
