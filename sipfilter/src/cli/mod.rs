//! The operator's commands on the pinned maps: ban, allow, deny, import, stats, top, status.
//!
//! Every command works on the maps pinned under `--pin-dir`, whether the agent runs or not:
//! the attached program reads the same maps, so an edit is in force at once, and the agent
//! adopts what it finds there when it starts.

mod audit;
mod ban;
pub mod check;
pub mod events;
pub mod fraud;
mod import;
mod lists;
mod output;
mod state_folder;
mod stats;
mod status;
mod top;
mod trust;

use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _};
use sipfilter::{Cidr, FilterMaps, TrustMaps};
use sipfilter_common::maps::BAN_TABLE;

/// Clap value parser for addresses and CIDRs: a bad one exits 2 naming the value.
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| e.to_string())
}

#[derive(clap::Subcommand)]
pub enum ManageCommand {
    /// Ban sources (in the kernel ban table) or whole CIDRs (as timed denylist entries).
    #[command(after_help = ban::EXAMPLES)]
    Ban {
        #[command(subcommand)]
        cmd: ban::BanCommand,
    },
    /// The allowlist: sources that are never rate-limited, banned or denied.
    #[command(after_help = lists::ALLOW_EXAMPLES)]
    Allow {
        #[command(subcommand)]
        cmd: lists::ListCommand,
    },
    /// The denylist: CIDRs whose SIP traffic is always dropped.
    #[command(after_help = lists::DENY_EXAMPLES)]
    Deny {
        #[command(subcommand)]
        cmd: lists::ListCommand,
    },
    /// Load a blocklist file into the denylist (plain lines of addresses/CIDRs, or APIBAN JSON).
    #[command(after_help = import::EXAMPLES)]
    Import(import::ImportArgs),
    /// Print the counters by action, reason and method, summed over CPUs.
    #[command(after_help = stats::EXAMPLES)]
    Stats(stats::StatsArgs),
    /// Show the sources sending the most SIP requests (or drops) right now.
    #[command(after_help = top::EXAMPLES)]
    Top(top::TopArgs),
    /// Show interfaces, attach mode, program ids, monitor mode, bans and cost per packet.
    #[command(after_help = status::EXAMPLES)]
    Status(status::StatusArgs),
    /// Every tracked source with its trust tier and what the PBX's answers said.
    #[command(after_help = trust::SOURCES_EXAMPLES)]
    Sources(trust::SourcesArgs),
    /// Sources that earned trust by registering cleanly.
    #[command(after_help = trust::KNOWN_EXAMPLES)]
    Known {
        #[command(subcommand)]
        cmd: trust::KnownCommand,
    },
    /// Extensions whose password was guessed.
    #[command(after_help = trust::CRACKED_EXAMPLES)]
    Cracked {
        #[command(subcommand)]
        cmd: trust::CrackedCommand,
    },
}

pub fn execute(pin_dir: &Path, cmd: ManageCommand) -> anyhow::Result<()> {
    let mut maps = open_maps(pin_dir)?;
    let mut audit = audit::Audit::new(pin_dir);
    let result = match cmd {
        ManageCommand::Ban { cmd } => ban::run(&mut maps, &mut audit, cmd),
        ManageCommand::Allow { cmd } => lists::run(&mut maps, &mut audit, sipfilter::filter_maps::ListKind::Allow, cmd),
        ManageCommand::Deny { cmd } => lists::run(&mut maps, &mut audit, sipfilter::filter_maps::ListKind::Deny, cmd),
        ManageCommand::Import(args) => import::run(&mut maps, &mut audit, args),
        ManageCommand::Stats(args) => stats::run(&maps, pin_dir, args),
        ManageCommand::Top(args) => top::run(&maps, pin_dir, args),
        ManageCommand::Status(args) => status::run(&maps, pin_dir, args),
        ManageCommand::Sources(args) => trust::sources(
            &maps,
            &TrustMaps::open_pinned(pin_dir)?,
            &sipfilter::devices::pinned_devices(pin_dir)?,
            args,
        ),
        ManageCommand::Known { cmd } => trust::known(&mut maps, &mut TrustMaps::open_pinned(pin_dir)?, &mut audit, cmd),
        ManageCommand::Cracked { cmd } => {
            trust::cracked(&mut maps, &mut TrustMaps::open_pinned(pin_dir)?, &mut audit, cmd)
        }
    };
    // What changed is recorded even when the command stopped half-way.
    audit.write();
    result
}

/// A command's answer is its exit status (after what it printed), not an error to report:
/// `status` without a running agent.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Opens the pinned maps, or says in one sentence that nothing is loaded and how to load it.
fn open_maps(pin_dir: &Path) -> anyhow::Result<FilterMaps> {
    let probe = pin_dir.join(BAN_TABLE);
    match std::fs::metadata(&probe) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "not loaded: no maps are pinned under {}; start it with `sipfilter run --iface IFACE`",
            pin_dir.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read {} (the pinned maps are readable by root only)",
                    probe.display()
                )
            })
        }
    }
    let mut maps = FilterMaps::open_pinned(pin_dir)?;
    // Whether or not the agent runs, no command works on (or shows) what has expired.
    maps.sweep_expired()?;
    Ok(maps)
}

/// The IPv6 source-key prefix length the program is configured with.
fn ipv6_prefix_len(maps: &FilterMaps) -> anyhow::Result<u8> {
    Ok(maps.read_config()?.ipv6_prefix_len())
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
