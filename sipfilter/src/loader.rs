//! Loading the embedded XDP program with its maps pinned under one folder.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use sipfilter_common::{
    maps::{
        ANSWERS_PROGRAM, ANSWER_HEADERS_PROGRAM, BAN_EVENTS, CALLS_PROGRAM, CLOCK_PROGRAM, CLOCK_SAMPLE_MAP,
        EGRESS_PROGRAMS, EXTENSION_PROGRAM, FLOOR_PROGRAM, IDENTIFY_PROGRAM, INGRESS_PROGRAMS, INSPECT_PROGRAM,
        JUDGE_PROGRAM, TC_FLOOR_PROGRAM, USER_AGENT_PROGRAM, VERDICT_PROGRAM, XDP_PROGRAM,
    },
    ClockSample, KernelConfig,
};

use crate::{bpffs, clock, filter_maps::FilterMaps, request_rules::RequestRuleMaps, trust::TrustMaps};

/// The XDP object built by build.rs from sipfilter-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipfilter-xdp"));

/// The program loaded into the kernel (not attached), and its maps.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: FilterMaps,
    /// Known sources and cracked extensions.
    pub trust: TrustMaps,
    /// Scanner User-Agents and destination rules.
    pub request_rules: RequestRuleMaps,
    pub pin_dir: PathBuf,
    /// Why the kernel refused the answers (TC) programs, if it did: the filter then runs
    /// without reading the PBX's answers (older verifiers, docs/operating.md "Supported kernels").
    pub answers_refused: Option<String>,
    /// The last lines of the verifier's log when it refused them: where and why it stopped.
    pub answers_verifier_log: Option<String>,
}

impl Loaded {
    /// Loads the program, reusing maps already pinned in `pin_dir` (so bans, buckets and lists
    /// survive a restart) and pinning new ones there, then writes `config`.
    pub fn load(pin_dir: &Path, config: &KernelConfig) -> anyhow::Result<Self> {
        bpffs::prepare_pin_dir(pin_dir)?;
        check_pinned_layouts(pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .with_context(|| format!("cannot load the XDP object (maps pinned under {})", pin_dir.display()))?;
        let prog = xdp_mut(&mut ebpf, XDP_PROGRAM)?;
        prog.load()
            .map_err(|e| anyhow!("the kernel refused the XDP program: {e}"))?;
        for (name, what) in [
            (INSPECT_PROGRAM, "request inspection"),
            (USER_AGENT_PROGRAM, "User-Agent reader"),
            (CALLS_PROGRAM, "dialed-number reader"),
            (VERDICT_PROGRAM, "request verdict"),
        ] {
            xdp_mut(&mut ebpf, name)?
                .load()
                .map_err(|e| anyhow!("the kernel refused the {what} program: {e}"))?;
        }
        link_ingress_programs(&mut ebpf)?;
        // The answers programs are the most demanding of the verifier: a kernel that refuses
        // them (none we test: Debian 12's 6.1 takes them since they were split) still gets
        // the XDP filter, without trust tiers.
        let answers_error = (|| -> anyhow::Result<()> {
            for (name, what) in [
                (ANSWERS_PROGRAM, "answers"),
                (ANSWER_HEADERS_PROGRAM, "answers' header scan"),
                (IDENTIFY_PROGRAM, "answers' request identification"),
                (EXTENSION_PROGRAM, "answers' extension reader"),
                (JUDGE_PROGRAM, "answers' judge"),
            ] {
                tc_mut(&mut ebpf, name)?
                    .load()
                    .map_err(|e| anyhow!("the kernel refused the {what} program: {e}"))?;
            }
            link_egress_programs(&mut ebpf)
        })()
        .err()
        .map(|e| format!("{e:#}"));
        // The first line says which program and why; the verifier's log follows it, and its
        // last lines say where it stopped.
        let answers_refused = answers_error
            .as_deref()
            .map(|text| text.lines().next().unwrap_or("").chars().take(300).collect::<String>());
        let answers_verifier_log = answers_error.as_deref().map(|text| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        });
        let mut maps = FilterMaps::from_ebpf(&mut ebpf)?;
        let trust = TrustMaps::from_ebpf(&mut ebpf)?;
        let request_rules = RequestRuleMaps::from_ebpf(&mut ebpf)?;
        maps.set_lock_dir(pin_dir);
        let mut config = *config;
        if maps.read_config()?.hash_seed == 0 {
            // First load over these pins: pick this installation's slot-hash seed.
            config.hash_seed = random_seed();
        }
        let mut loaded = Loaded {
            ebpf,
            maps,
            trust,
            request_rules,
            pin_dir: pin_dir.to_owned(),
            answers_refused,
            answers_verifier_log,
        };
        let (ns_per_jiffy, offset) = loaded.calibrate_clock()?;
        config.ns_per_jiffy = ns_per_jiffy;
        config.jiffies_offset_ns = offset;
        loaded.maps.write_config(&config)?;
        Ok(loaded)
    }

    /// Measures how the kernel's jiffies relate to CLOCK_BOOTTIME, for the program's cheap
    /// clock: the tick length (from the kernel's HZ, found by counting ticks over ~100 ms)
    /// and the offset. Returns (ns per jiffy, offset ns). The agent calls it again now and
    /// then; between calls the clock is good to about a tick (1–10 ms).
    pub fn calibrate_clock(&mut self) -> anyhow::Result<(u64, u64)> {
        if self.ebpf.program(CLOCK_PROGRAM).is_some_and(|p| p.fd().is_err()) {
            xdp_mut(&mut self.ebpf, CLOCK_PROGRAM)?
                .load()
                .map_err(|e| anyhow!("the kernel refused the clock program: {e}"))?;
        }
        let first = self.clock_sample()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut samples = vec![self.clock_sample()?];
        let last = samples[0];
        let ticks = last.jiffies.wrapping_sub(first.jiffies).max(1);
        let elapsed = last.boot_ns.saturating_sub(first.boot_ns);
        let measured_hz = elapsed_hz(ticks, elapsed);
        // CONFIG_HZ is one of these; snap to the nearest.
        let hz = [100u64, 250, 300, 1000]
            .into_iter()
            .min_by_key(|h| h.abs_diff(measured_hz))
            .unwrap_or(250);
        let ns_per_jiffy = 1_000_000_000 / hz;
        // jiffies lag real time by up to a tick: the smallest (boot - jiffies·tick) over a
        // few samples is the moment of a tick; add half a tick to centre the error.
        for _ in 0..4 {
            std::thread::sleep(std::time::Duration::from_micros(700));
            samples.push(self.clock_sample()?);
        }
        let offset = samples
            .iter()
            .map(|s| s.boot_ns.wrapping_sub(s.jiffies.wrapping_mul(ns_per_jiffy)))
            .min_by_key(|o| *o as i64)
            .unwrap_or(0)
            .wrapping_add(ns_per_jiffy / 2);
        Ok((ns_per_jiffy, offset))
    }

    /// One reading of the kernel's jiffies and boot clock at the same instant (the clock
    /// program through BPF_PROG_TEST_RUN); the differential tests set the programs' clock by it.
    pub fn clock_sample(&mut self) -> anyhow::Result<ClockSample> {
        let prog = xdp(&self.ebpf, CLOCK_PROGRAM)?;
        // Any frame will do: the program only reads the clocks.
        let frame = [0u8; 64];
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ..Default::default()
        })
        .context("cannot run the clock program")?;
        let map: Array<&MapData, ClockSample> = self
            .ebpf
            .map(CLOCK_SAMPLE_MAP)
            .context("the object has no clock_sample map")?
            .try_into()?;
        map.get(&0, 0).context("cannot read the clock sample")
    }

    pub fn program(&self) -> anyhow::Result<&Xdp> {
        xdp(&self.ebpf, XDP_PROGRAM)
    }

    pub fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_mut(&mut self.ebpf, XDP_PROGRAM)
    }

    /// The egress program that reads the PBX's answers.
    pub fn answers_program_mut(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        tc_mut(&mut self.ebpf, ANSWERS_PROGRAM)
    }

    pub fn answers_program(&self) -> anyhow::Result<&SchedClassifier> {
        tc(&self.ebpf, ANSWERS_PROGRAM)
    }

    /// Loads the empty TC program the benchmark measures the answers program against.
    pub fn load_tc_floor(&mut self) -> anyhow::Result<&SchedClassifier> {
        tc_mut(&mut self.ebpf, TC_FLOOR_PROGRAM)?
            .load()
            .map_err(|e| anyhow!("the kernel refused the TC floor program: {e}"))?;
        tc(&self.ebpf, TC_FLOOR_PROGRAM)
    }

    /// Takes the ring buffer the program reports new bans on (once).
    pub fn take_call_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(sipfilter_common::maps::CALL_EVENTS)
            .context("the object has no call_events map")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn take_ban_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(BAN_EVENTS)
            .context("the ban event ring buffer was already taken")?;
        RingBuf::try_from(map).context("ban_events is not a ring buffer")
    }

    /// Loads the empty program the benchmark uses as its floor.
    pub fn load_floor(&mut self) -> anyhow::Result<&Xdp> {
        let prog = xdp_mut(&mut self.ebpf, FLOOR_PROGRAM)?;
        prog.load()
            .map_err(|e| anyhow!("the kernel refused the floor program: {e}"))?;
        xdp(&self.ebpf, FLOOR_PROGRAM)
    }
}

/// The layout each pinned map must have for this version: (name, key size, value size,
/// max entries). The loader reuses pins by name without comparing them, so a version that
/// changed a layout would otherwise fail in the verifier, or worse, misread the data.
pub fn expected_layouts() -> [(&'static str, usize, usize, u32); 20] {
    use sipfilter_common::{
        calls::{CallKey, CallTimes, DestinationRule, NumberKey},
        maps::*,
        scan::EXT_LEN,
        user_agent::ScannerUserAgents,
        Ban, Counters, CrackedExtension, KnownSource, ListEntry, OffenseHistory, RateState, SourceKey,
    };
    use std::mem::size_of;
    let lpm_key = 4 + 16;
    [
        (CONFIG_MAP, 4, size_of::<KernelConfig>(), 1),
        (COUNTERS_MAP, 4, size_of::<Counters>(), 1),
        (BAN_TABLE, size_of::<SourceKey>(), size_of::<Ban>(), BAN_TABLE_SIZE),
        (
            OFFENSE_HISTORY,
            size_of::<SourceKey>(),
            size_of::<OffenseHistory>(),
            OFFENSE_HISTORY_SIZE,
        ),
        (RATE_STATE, 4, size_of::<RateState>(), RATE_STATE_SLOTS),
        (
            RATE_OVERFLOW,
            size_of::<SourceKey>(),
            size_of::<RateState>(),
            RATE_OVERFLOW_SIZE,
        ),
        (ALLOWLIST, lpm_key, size_of::<ListEntry>(), LIST_SIZE),
        (DENYLIST, lpm_key, size_of::<ListEntry>(), LIST_SIZE),
        (BAN_EVENTS, 0, 0, BAN_EVENTS_BYTES),
        (
            KNOWN_SOURCES,
            size_of::<SourceKey>(),
            size_of::<KnownSource>(),
            KNOWN_SOURCES_SIZE,
        ),
        (CRACKED_EXTENSIONS, EXT_LEN, size_of::<CrackedExtension>(), CRACKED_SIZE),
        (SCANNER_USER_AGENTS, 4, size_of::<ScannerUserAgents>(), 1),
        (DESTINATIONS, 4 + 8, size_of::<DestinationRule>(), DESTINATIONS_SIZE),
        (RECENT_CALLS, size_of::<CallKey>(), 4, RECENT_CALLS_SIZE),
        (
            CALLS_TO_NUMBER,
            size_of::<NumberKey>(),
            size_of::<CallTimes>(),
            CALL_SOURCES_SIZE,
        ),
        (
            INTERNATIONAL_CALLS,
            size_of::<SourceKey>(),
            size_of::<CallTimes>(),
            CALL_SOURCES_SIZE,
        ),
        (CALL_EVENTS, 0, 0, CALL_EVENTS_BYTES),
        (
            DEVICES,
            size_of::<sipfilter_common::devices::DeviceKey>(),
            size_of::<sipfilter_common::devices::DeviceState>(),
            DEVICES_SIZE,
        ),
        (
            CONNECTIONS,
            size_of::<ConnectionKey>(),
            size_of::<Connection>(),
            CONNECTIONS_SIZE,
        ),
        (CONNECTION_LIMITED, size_of::<SourceKey>(), 8, CONNECTION_LIMITED_SIZE),
    ]
}

/// Refuses, in one sentence with what to do, maps pinned by a version with other layouts.
fn check_pinned_layouts(pin_dir: &Path) -> anyhow::Result<()> {
    if let Some(why) = incompatible_pins(pin_dir)? {
        anyhow::bail!(
            "the maps pinned under {dir} were made by an incompatible sipfilter version ({why}); \
             `sipfilter run` moves them aside and restores the state file; or detach and remove them (`sipfilter --pin-dir {dir} detach; rm -r {dir}`)",
            dir = pin_dir.display()
        );
    }
    Ok(())
}

/// The first map pinned under `pin_dir` whose layout this version cannot use, said in a
/// phrase (`counters: values of 736 bytes, this version needs 720`); None when all fit.
pub fn incompatible_pins(pin_dir: &Path) -> anyhow::Result<Option<String>> {
    Ok(incompatible_maps(pin_dir)?.into_iter().next().map(|(_, why)| why))
}

/// Every map pinned under `pin_dir` whose layout (key and value sizes, entries) this version
/// cannot use, by name, with a phrase saying how it differs.
pub fn incompatible_maps(pin_dir: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut found = Vec::new();
    for (name, key, value, entries) in expected_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("cannot inspect {}", path.display()))?;
        let pinned = (info.key_size() as usize, info.value_size() as usize, info.max_entries());
        if pinned != (key, value, entries) {
            found.push((
                name,
                format!(
                    "{name}: keys of {} bytes, values of {} bytes, {} entries; this version needs {key}, {value}, {entries}",
                    pinned.0, pinned.1, pinned.2
                ),
            ));
        }
    }
    Ok(found)
}

/// Moves the maps `names` pinned under `pin_dir` into a new folder beside it,
/// `<pin_dir>-previous-<unix seconds>` (bpffs allows no dot in a name), on the same bpffs;
/// returns it. Every other pin stays, and the new load reuses it as it is. The programs
/// attached now keep the moved maps (a pin is a name, not the map) and filter with them
/// until a new program is swapped into their links.
pub fn set_aside_maps(pin_dir: &Path, names: &[&str]) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = pin_dir
        .file_name()
        .context("the pin folder has no name")?
        .to_string_lossy();
    let aside = pin_dir.with_file_name(format!("{name}-previous-{secs}"));
    crate::bpffs::create_private_dir(&aside)?;
    for map in names {
        let (from, to) = (pin_dir.join(map), aside.join(map));
        std::fs::rename(&from, &to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
    }
    Ok(aside)
}

fn elapsed_hz(ticks: u64, elapsed_ns: u64) -> u64 {
    if elapsed_ns == 0 {
        return 0;
    }
    (ticks as u128 * 1_000_000_000 / elapsed_ns as u128) as u64
}

/// A seed nobody outside this machine can predict (no extra crate: the kernel's random pool).
fn random_seed() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (clock::boot_ns() as u32).to_ne_bytes();
    }
    u32::from_ne_bytes(b).max(1)
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

/// Fills the ingress program's tail-call table: the inspection and its readers, and the
/// ingress program itself for the inspection to hand the packet back to (slots as in the
/// kernel's `maps.rs`).
fn link_ingress_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut fds = Vec::new();
    for name in [
        INSPECT_PROGRAM,
        VERDICT_PROGRAM,
        USER_AGENT_PROGRAM,
        CALLS_PROGRAM,
        XDP_PROGRAM,
    ] {
        fds.push(xdp(ebpf, name)?.fd()?.try_clone()?);
    }
    let map = ebpf
        .map_mut(INGRESS_PROGRAMS)
        .context("the object has no ingress_programs map")?;
    let mut table = aya::maps::ProgramArray::try_from(map)?;
    for (slot, fd) in fds.iter().enumerate() {
        table.set(slot as u32, fd, 0)?;
    }
    Ok(())
}

fn tc<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a SchedClassifier> {
    ebpf.program(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a TC program"))
}

fn tc_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a TC program"))
}

/// Fills the answers program's tail-call table: its helpers in the order an answer goes
/// through them (slots as in the kernel's `maps.rs`).
fn link_egress_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut fds = Vec::new();
    for name in [
        ANSWER_HEADERS_PROGRAM,
        IDENTIFY_PROGRAM,
        EXTENSION_PROGRAM,
        JUDGE_PROGRAM,
    ] {
        fds.push(tc(ebpf, name)?.fd()?.try_clone()?);
    }
    let map = ebpf
        .map_mut(EGRESS_PROGRAMS)
        .context("the object has no egress_programs map")?;
    let mut table = aya::maps::ProgramArray::try_from(map)?;
    for (slot, fd) in fds.iter().enumerate() {
        table.set(slot as u32, fd, 0)?;
    }
    Ok(())
}
