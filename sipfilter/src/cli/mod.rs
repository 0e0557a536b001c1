//! The operator's commands on the pinned maps: ban, allow, deny, import, stats, top, status.

use std::path::Path;

#[derive(clap::Subcommand)]
pub enum ManageCommand {
    /// Print the counters by action, reason and method, summed over CPUs.
    Stats,
}

pub fn execute(_pin_dir: &Path, _cmd: ManageCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
