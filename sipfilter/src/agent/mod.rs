//! The agent: `sipfilter run` and `sipfilter detach`.

use std::path::Path;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
}

#[derive(clap::Args)]
pub struct DetachArgs {
    /// Interface to detach from; all when omitted.
    #[arg(long = "iface", value_name = "IFACE")]
    pub iface: Option<String>,
}

pub fn run(_pin_dir: &Path, _args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("the agent is not implemented yet")
}

pub fn detach(_pin_dir: &Path, _args: DetachArgs) -> anyhow::Result<()> {
    anyhow::bail!("detach is not implemented yet")
}
