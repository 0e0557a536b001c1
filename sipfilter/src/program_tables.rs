//! The programs' tail-call tables, pinned beside the maps so that the filter stays whole
//! when no agent runs. A request's inspection and the whole answers chain are reached
//! through these tables; the kernel empties a table when the last process holding it goes,
//! so without a pin a stopped, killed or crashed agent would leave the attached program
//! judging by rates and bans alone.
//!
//! Each load pins its own tables under `programs/<id>/` (`id`: the kernel's id of that load's
//! XDP program), never another load's: the programs of two versions never call into each
//! other, whatever their layouts. Once a new load is attached the older folders are
//! removed, and the programs only they held are freed with them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::Ebpf;
use sipfilter_common::maps::{EGRESS_PROGRAMS, INGRESS_PROGRAMS};

/// The folder of the pinned tables, under the pin folder.
pub const PROGRAMS_DIR: &str = "programs";

/// The folder of one load's tables.
pub fn generation_dir(pin_dir: &Path, id: u32) -> PathBuf {
    pin_dir.join(PROGRAMS_DIR).join(id.to_string())
}

/// Pins this load's tables (the egress one only when `egress`: the answers programs may have
/// been refused) under [`generation_dir`]; returns the folder.
pub fn pin(ebpf: &Ebpf, pin_dir: &Path, id: u32, egress: bool) -> anyhow::Result<PathBuf> {
    let dir = generation_dir(pin_dir, id);
    crate::bpffs::create_private_dir(&dir)?;
    let mut tables = vec![INGRESS_PROGRAMS];
    if egress {
        tables.push(EGRESS_PROGRAMS);
    }
    for name in tables {
        let path = dir.join(name);
        if path.exists() {
            // This very load pinned it already (the agent pins once; a second call is a no-op).
            continue;
        }
        ebpf.map(name)
            .with_context(|| format!("the object has no {name} map"))?
            .pin(&path)
            .with_context(|| format!("cannot pin the {name} table at {}", path.display()))?;
    }
    Ok(dir)
}

/// The loads whose tables are pinned, oldest first (by id: the kernel gives ids in order).
pub fn generations(pin_dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(pin_dir.join(PROGRAMS_DIR)) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    ids.sort_unstable();
    ids
}

/// Removes the pinned tables of every load but those in `keep` (the loads still attached
/// somewhere; none, as `detach` of every interface does); returns how many were retired.
pub fn retire(pin_dir: &Path, keep: &[u32]) -> anyhow::Result<usize> {
    let mut retired = 0;
    for id in generations(pin_dir).into_iter().filter(|id| !keep.contains(id)) {
        let dir = generation_dir(pin_dir, id);
        // bpffs removes a folder's pins one by one, then the folder.
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            std::fs::remove_file(&path).with_context(|| format!("cannot unpin {}", path.display()))?;
        }
        std::fs::remove_dir(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        retired += 1;
    }
    Ok(retired)
}

/// Whether the tables of load `id` are pinned whole: every slot of the ingress table, and
/// of the egress one when `egress`, holds a program. `status` reads it.
pub fn whole(pin_dir: &Path, id: u32, egress: bool) -> bool {
    let dir = generation_dir(pin_dir, id);
    dir.join(INGRESS_PROGRAMS).exists() && (!egress || dir.join(EGRESS_PROGRAMS).exists())
}
