//! Loading the embedded XDP program with its maps pinned under one folder.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{MapData, RingBuf},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use sipfilter_common::{
    maps::{BAN_EVENTS, FLOOR_PROGRAM, XDP_PROGRAM},
    KernelConfig,
};

use crate::{bpffs, filter_maps::FilterMaps};

/// The XDP object built by build.rs from sipfilter-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipfilter-xdp"));

/// The program loaded into the kernel (not attached), and its maps.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: FilterMaps,
    pub pin_dir: PathBuf,
}

impl Loaded {
    /// Loads the program, reusing maps already pinned in `pin_dir` (so bans, buckets and lists
    /// survive a restart) and pinning new ones there, then writes `config`.
    pub fn load(pin_dir: &Path, config: &KernelConfig) -> anyhow::Result<Self> {
        bpffs::prepare_pin_dir(pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .with_context(|| format!("cannot load the XDP object (maps pinned under {})", pin_dir.display()))?;
        let prog = xdp_mut(&mut ebpf, XDP_PROGRAM)?;
        prog.load().map_err(|e| anyhow!("the kernel refused the XDP program: {e}"))?;
        let mut maps = FilterMaps::from_ebpf(&mut ebpf)?;
        maps.write_config(config)?;
        Ok(Loaded { ebpf, maps, pin_dir: pin_dir.to_owned() })
    }

    pub fn program(&self) -> anyhow::Result<&Xdp> {
        xdp(&self.ebpf, XDP_PROGRAM)
    }

    pub fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_mut(&mut self.ebpf, XDP_PROGRAM)
    }

    /// Takes the ring buffer the program reports new bans on (once).
    pub fn take_ban_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(BAN_EVENTS).context("the ban event ring buffer was already taken")?;
        RingBuf::try_from(map).context("ban_events is not a ring buffer")
    }

    /// Loads the empty program the benchmark uses as its floor.
    pub fn load_floor(&mut self) -> anyhow::Result<&Xdp> {
        let prog = xdp_mut(&mut self.ebpf, FLOOR_PROGRAM)?;
        prog.load().map_err(|e| anyhow!("the kernel refused the floor program: {e}"))?;
        xdp(&self.ebpf, FLOOR_PROGRAM)
    }
}

fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a Xdp> {
    ebpf.program(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}
