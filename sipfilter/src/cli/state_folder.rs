//! Where the agent keeps its files (state file, blocked calls, the audit trail), for the
//! commands that read them: `--state-file FILE` (as given to `sipfilter run`), or the
//! `agent.state_file` of `--config FILE`, or of the packaged configuration if it exists, or the
//! default.

use std::path::PathBuf;

use sipfilter::config::{Config, DEFAULT_CONFIG_FILE, DEFAULT_STATE_FILE};

#[derive(clap::Args)]
pub struct StateArgs {
    /// The agent's configuration (its `agent.state_file` says where its files are).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's state file (as given to `sipfilter run --state-file`); its files are beside
    /// it. Overrides --config.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
}

impl StateArgs {
    pub fn state_file(&self) -> anyhow::Result<PathBuf> {
        Ok(match (&self.state_file, &self.config) {
            (Some(file), _) => file.clone(),
            (None, Some(path)) => Config::load(path)?.state_file,
            (None, None) => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                match default.exists() {
                    // The packaged file may still carry its placeholder: the state file is
                    // what matters here, so fall back to the default if it does not load.
                    true => Config::load(&default).map_or_else(|_| PathBuf::from(DEFAULT_STATE_FILE), |c| c.state_file),
                    false => PathBuf::from(DEFAULT_STATE_FILE),
                }
            }
        })
    }
}
