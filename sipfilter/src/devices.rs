//! The devices under each source (sipfilter-common's `devices`): what the answers program
//! keeps per source port. `sipfilter sources` shows them under their source; the agent saves
//! them in its state file and puts them back into a new map (`state_file::restore_devices`).

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use sipfilter_common::{
    devices::{DeviceKey, DeviceState},
    maps::DEVICES,
    SourceKey,
};

/// The pinned devices map under `dir`.
pub fn open(dir: &Path) -> anyhow::Result<HashMap<MapData, DeviceKey, DeviceState>> {
    HashMap::try_from(crate::filter_maps::open_pin(dir, DEVICES)?)
        .with_context(|| format!("map {DEVICES} has an unexpected layout"))
}

/// Every device in the pinned map under `dir`, grouped by source (ports ascending).
pub fn pinned_devices(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<SourceKey, Vec<(u16, DeviceState)>>> {
    let map = open(dir)?;
    let mut out: std::collections::BTreeMap<SourceKey, Vec<(u16, DeviceState)>> = Default::default();
    for entry in map.iter() {
        let (k, v) = entry.context("cannot read the devices")?;
        out.entry(k.source).or_default().push((k.port as u16, v));
    }
    for list in out.values_mut() {
        list.sort_by_key(|(p, _)| *p);
    }
    Ok(out)
}
