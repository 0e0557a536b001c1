//! What the benchmark binaries (`xdp-bench`, `peers-bench`, `scale-bench`) share: their
//! command line, a median, and pinning to one CPU.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use sipfilter_common::{
    config::{FLAG_STEALTH, FLAG_TRUST, FLAG_WITHHOLD, MAX_BURST, MAX_RATE},
    ClassLimit, KernelConfig,
};

/// The product's defaults (trust tiers, stealth, withholding on) with buckets big enough
/// that a measurement never empties one, so every run takes the path being measured.
pub fn config() -> KernelConfig {
    let big = ClassLimit {
        rate_per_sec: MAX_RATE as u32,
        burst: MAX_BURST as u32,
    };
    let mut config = KernelConfig {
        limits: [big; 3],
        unknown_limits: [big; 3],
        ..KernelConfig::default()
    };
    config.flags |= FLAG_TRUST | FLAG_STEALTH | FLAG_WITHHOLD;
    config
}

/// The product's request rules (scanner User-Agents, the shipped high-risk destinations) with
/// generated deny prefixes up to `prefixes` rules in all, on top of [`config`]: the kernel
/// record, and the configuration whose rules `RequestRuleMaps::write` puts in force.
pub fn with_request_rules(prefixes: usize) -> anyhow::Result<(KernelConfig, sipfilter::config::Config)> {
    use sipfilter_common::config::{FLAG_CALLS, FLAG_SCANNER_USER_AGENTS};
    let mut settings = sipfilter::config::Config::default();
    let shipped = settings.calls.rules.len();
    for i in 0..prefixes.saturating_sub(shipped) {
        settings.calls.rules.push(sipfilter::config::DestinationPrefix {
            digits: sipfilter_common::dialed::Digits::parse(&format!("{}", 5_500_000 + i * 13)).context("prefix")?,
            deny: true,
            origin: "bench".into(),
        });
    }
    let mut k = config();
    let defaults = settings.kernel_config();
    k.flags |= defaults.flags & (FLAG_SCANNER_USER_AGENTS | FLAG_CALLS);
    k.calls = defaults.calls;
    Ok((k, settings))
}

/// `--repeat N --runs N --calls N --out FILE`; each binary reads the ones it uses.
pub struct Args {
    /// BPF_PROG_TEST_RUN repeat per measurement.
    pub repeat: u32,
    /// Measurements per path (the median is reported).
    pub runs: u32,
    /// Single calls per point (scale-bench).
    pub calls: u32,
    /// Where the JSON goes.
    pub out: PathBuf,
}

/// The command line over `defaults`.
pub fn args(defaults: Args) -> anyhow::Result<Args> {
    let mut a = defaults;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--repeat" => a.repeat = value.parse().context("--repeat")?,
            "--runs" => a.runs = value.parse().context("--runs")?,
            "--calls" => a.calls = value.parse().context("--calls")?,
            "--out" => a.out = value.into(),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Keeps this thread on one CPU: per-CPU state and the kernel's timer stay put.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
