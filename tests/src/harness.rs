//! Loads the real program into a private bpffs and runs frames through it with
//! BPF_PROG_TEST_RUN.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use sipfilter::{FilterMaps, Loaded};
use sipfilter_common::{BanEvent, Counters, KernelConfig};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// The answers (TC) program's actions.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

/// A bpffs mounted on a fresh folder under /tmp for one test, unmounted (taking every pin
/// with it) when dropped, also when the test fails.
pub struct PrivateBpffs {
    mount_point: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl PrivateBpffs {
    pub fn new() -> anyhow::Result<Self> {
        let mount_point = std::env::temp_dir().join(format!(
            "sipfilter-test-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&mount_point)?;
        sipfilter::bpffs::ensure_mounted(&mount_point).context("the privileged tests must run as root")?;
        Ok(PrivateBpffs { mount_point })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// The pin folder the program uses inside this bpffs.
    pub fn pin_dir(&self) -> PathBuf {
        self.mount_point.join("sipfilter")
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.mount_point.as_os_str().as_encoded_bytes()) {
            // SAFETY: NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.mount_point);
    }
}

/// The program loaded with its maps pinned in a private bpffs.
pub struct TestFilter {
    pub loaded: Loaded,
    ban_events: RingBuf<MapData>,
    call_events: RingBuf<MapData>,
    // Dropped after `loaded` (field order): the maps are unpinned once nothing holds them.
    pub bpffs: PrivateBpffs,
}

impl TestFilter {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_config(&KernelConfig::default())
    }

    pub fn with_config(config: &KernelConfig) -> anyhow::Result<Self> {
        Self::load_into(PrivateBpffs::new()?, config)
    }

    /// Loads the program again over the same pins, as a restarted loader would.
    pub fn reload(self, config: &KernelConfig) -> anyhow::Result<Self> {
        let TestFilter {
            loaded,
            ban_events,
            call_events,
            bpffs,
        } = self;
        drop(ban_events);
        drop(call_events);
        drop(loaded);
        Self::load_into(bpffs, config)
    }

    fn load_into(bpffs: PrivateBpffs, config: &KernelConfig) -> anyhow::Result<Self> {
        let mut loaded = Loaded::load(&bpffs.pin_dir(), config)?;
        let ban_events = loaded.take_ban_events()?;
        let call_events = loaded.take_call_events()?;
        Ok(TestFilter {
            loaded,
            ban_events,
            call_events,
            bpffs,
        })
    }

    /// Loads with an agent configuration: its kernel record and its request rules (scanner
    /// User-Agents, destination rules), as the agent would.
    pub fn with_settings(config: &sipfilter::config::Config) -> anyhow::Result<Self> {
        let mut f = Self::with_config(&config.kernel_config())?;
        f.loaded.request_rules.write(config)?;
        Ok(f)
    }

    /// Blocked-call events the program sent since the last call.
    pub fn call_events(&mut self) -> Vec<sipfilter_common::calls::CallEvent> {
        sipfilter::events::drain_calls(&mut self.call_events)
    }

    /// Runs one frame through the program and returns its XDP action.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<u32> {
        let prog = self.loaded.program()?;
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN failed")?;
        Ok(result.return_value)
    }

    /// Runs one outgoing frame through the answers program (and the programs it tail-calls)
    /// and returns its TC action.
    pub fn run_answer(&self, frame: &[u8]) -> anyhow::Result<u32> {
        if let Some(why) = &self.loaded.answers_refused {
            // Say why, with where the verifier stopped, rather than "not loaded".
            let log = self.loaded.answers_verifier_log.as_deref().unwrap_or("");
            bail!("{why}\n... the verifier's log ends:\n{log}");
        }
        let prog = self.loaded.answers_program()?;
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN of the answers program failed")?;
        Ok(result.return_value)
    }

    /// Moves the programs' clock ahead (the jiffies clock's offset), as if that much time had
    /// passed: for sequences that span minutes.
    pub fn advance_clock(&mut self, by: std::time::Duration) -> anyhow::Result<()> {
        let mut k = self.loaded.maps.read_config()?;
        k.jiffies_offset_ns = k.jiffies_offset_ns.wrapping_add(by.as_nanos() as u64);
        self.loaded.maps.write_config(&k)
    }

    /// Moves the programs' clock back, as if that time had not passed: for a sequence whose
    /// outcome must not depend on how long a step took (a reload in an emulated VM).
    pub fn rewind_clock(&mut self, by: std::time::Duration) -> anyhow::Result<()> {
        let mut k = self.loaded.maps.read_config()?;
        k.jiffies_offset_ns = k.jiffies_offset_ns.wrapping_sub(by.as_nanos() as u64);
        self.loaded.maps.write_config(&k)
    }

    /// Runs a frame and insists on the action (a readable failure beats a bare number).
    pub fn expect(&self, frame: &[u8], action: u32, what: &str) -> anyhow::Result<()> {
        let got = self.run(frame)?;
        if got != action {
            bail!("{what}: expected {}, got {}", action_name(action), action_name(got));
        }
        Ok(())
    }

    /// Ban events the program sent since the last call.
    pub fn ban_events(&mut self) -> Vec<BanEvent> {
        sipfilter::events::drain(&mut self.ban_events)
    }

    /// Runs `frame` `n` times and counts the actions.
    pub fn run_n(&self, frame: &[u8], n: usize) -> anyhow::Result<(usize, usize)> {
        let (mut passed, mut dropped) = (0, 0);
        for _ in 0..n {
            match self.run(frame)? {
                XDP_PASS => passed += 1,
                XDP_DROP => dropped += 1,
                other => bail!("unexpected action {}", action_name(other)),
            }
        }
        Ok((passed, dropped))
    }

    pub fn maps(&mut self) -> &mut FilterMaps {
        &mut self.loaded.maps
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        self.loaded.maps.counters()
    }

    pub fn set_config(&mut self, config: &KernelConfig) -> anyhow::Result<()> {
        self.loaded.maps.write_config(config)
    }
}

pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown action",
    }
}
