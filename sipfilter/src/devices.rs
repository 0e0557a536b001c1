//! The devices under each source (sipfilter-common's `devices`): what the answers program
//! keeps per source port. Read-only here: `sipfilter sources` shows them under their source.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use sipfilter_common::{
    devices::{DeviceKey, DeviceState},
    maps::DEVICES,
    SourceKey,
};

/// Every device in the pinned map under `dir`, grouped by source (ports ascending).
pub fn pinned_devices(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<SourceKey, Vec<(u16, DeviceState)>>> {
    let path = dir.join(DEVICES);
    let data = MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("{} is not a map sipfilter knows", path.display()))?;
    let map: HashMap<MapData, DeviceKey, DeviceState> =
        HashMap::try_from(map).with_context(|| format!("map {DEVICES} has an unexpected layout"))?;
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
