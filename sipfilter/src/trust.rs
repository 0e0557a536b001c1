//! The maps of earned trust and of its abuse: known sources (a clean 2xx to a REGISTER made
//! them known) and cracked extensions (a 2xx after failures on other extensions). The answers
//! program writes both; the agent expires known sources, saves both in the state file and
//! restores them; the CLI lists and removes entries.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    maps::{HashMap, Map, MapData},
    Ebpf,
};
use sipfilter_common::{
    maps::{CRACKED_EXTENSIONS, KNOWN_SOURCES},
    scan::{ext_from, Extension},
    CrackedExtension, KnownSource, SourceKey,
};

use crate::clock;

pub struct TrustMaps {
    known_sources: HashMap<MapData, SourceKey, KnownSource>,
    cracked_extensions: HashMap<MapData, Extension, CrackedExtension>,
}

fn typed<K: aya::Pod, V: aya::Pod>(map: Map, name: &str) -> anyhow::Result<HashMap<MapData, K, V>> {
    HashMap::try_from(map).with_context(|| format!("map {name} has an unexpected layout"))
}

impl TrustMaps {
    /// Takes the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the object has no map {name}"))
        };
        Ok(TrustMaps {
            known_sources: typed(take(KNOWN_SOURCES)?, KNOWN_SOURCES)?,
            cracked_extensions: typed(take(CRACKED_EXTENSIONS)?, CRACKED_EXTENSIONS)?,
        })
    }

    /// Opens the maps pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| crate::filter_maps::open_pin(dir, name);
        Ok(TrustMaps {
            known_sources: typed(open(KNOWN_SOURCES)?, KNOWN_SOURCES)?,
            cracked_extensions: typed(open(CRACKED_EXTENSIONS)?, CRACKED_EXTENSIONS)?,
        })
    }

    // --- known sources ---

    pub fn known_sources(&self) -> anyhow::Result<Vec<(SourceKey, KnownSource)>> {
        self.known_sources
            .iter()
            .map(|e| e.context("cannot read the known sources"))
            .collect()
    }

    pub fn known(&self, key: &SourceKey) -> anyhow::Result<Option<KnownSource>> {
        match self.known_sources.get(key, 0) {
            Ok(k) => Ok(Some(k)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("cannot read the known sources"),
        }
    }

    pub fn insert_known(&mut self, key: &SourceKey, known: &KnownSource) -> anyhow::Result<()> {
        self.known_sources
            .insert(key, known, 0)
            .context("cannot write the known sources (table full?)")
    }

    /// Forgets a known source (it is unknown from its next packet, once the caller bumps the
    /// config generation). Returns whether it was known.
    pub fn remove_known(&mut self, key: &SourceKey) -> anyhow::Result<bool> {
        remove(&mut self.known_sources, key, "known sources")
    }

    /// Removes known sources whose time has passed; returns how many.
    pub fn sweep_known(&mut self) -> anyhow::Result<usize> {
        let now = clock::boot_ns();
        let stale: Vec<SourceKey> = self
            .known_sources()?
            .into_iter()
            .filter(|(_, k)| k.until_ns <= now)
            .map(|(key, _)| key)
            .collect();
        for key in &stale {
            self.remove_known(key)?;
        }
        Ok(stale.len())
    }

    // --- cracked extensions ---

    pub fn cracked(&self) -> anyhow::Result<Vec<(Extension, CrackedExtension)>> {
        self.cracked_extensions
            .iter()
            .map(|e| e.context("cannot read the cracked extensions"))
            .collect()
    }

    pub fn insert_cracked(&mut self, ext: &Extension, entry: &CrackedExtension) -> anyhow::Result<()> {
        self.cracked_extensions
            .insert(ext, entry, 0)
            .context("cannot write the cracked extensions (table full?)")
    }

    /// Clears an extension from the cracked list (its password was changed). Returns whether
    /// it was there.
    pub fn clear_cracked(&mut self, ext: &str) -> anyhow::Result<bool> {
        remove(&mut self.cracked_extensions, &ext_from(ext), "cracked extensions")
    }
}

fn remove<K: aya::Pod, V: aya::Pod>(map: &mut HashMap<MapData, K, V>, key: &K, what: &str) -> anyhow::Result<bool> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(aya::maps::MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove from the {what}")),
    }
}
