//! Where the agent keeps its files (state file, blocked calls, the audit trail), for the
//! commands that read them: `--state-file FILE` (as given to `sipfilter run`), or the
//! `agent.state_file` of `--config FILE`, or (for `events`) the state file the agent of the
//! pin set named there, or that of the packaged configuration if it exists, or the default.

use std::path::{Path, PathBuf};

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

    /// The state file, where that came from in words, and whether it was found rather than
    /// guessed: the options, else the state file the agent of `pin_dir` named (running or not)
    /// are found; the packaged configuration's or the default are guesses.
    pub fn locate(&self, pin_dir: &Path) -> anyhow::Result<Located> {
        let found = |file: PathBuf, why: String| Located {
            file,
            why,
            guessed: false,
        };
        if let Some(file) = &self.state_file {
            return Ok(found(file.clone(), "given with --state-file".into()));
        }
        if let Some(config) = &self.config {
            let file = Config::load(config)?.state_file;
            return Ok(found(file, format!("the agent.state_file of {}", config.display())));
        }
        if let Some(file) = sipfilter::agent_record::state_file(pin_dir) {
            return Ok(found(
                file,
                format!("named by the agent of the pins in {}", pin_dir.display()),
            ));
        }
        let why = if PathBuf::from(DEFAULT_CONFIG_FILE).exists() {
            format!("from {DEFAULT_CONFIG_FILE}")
        } else {
            "the default".into()
        };
        Ok(Located {
            file: self.state_file()?,
            why: format!(
                "{why}: no agent has named its files under the pins in {} (give --state-file or --config)",
                pin_dir.display()
            ),
            guessed: true,
        })
    }
}

/// Where the agent's state file is, as [`StateArgs::locate`] found it.
pub struct Located {
    pub file: PathBuf,
    /// Where that came from, for the operator.
    pub why: String,
    /// Neither given nor named by an agent of the pins: the packaged or default place.
    pub guessed: bool,
}
