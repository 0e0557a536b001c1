//! `sipfilter`: the agent (`run`, `detach`) and the operator's CLI (`ban`, `allow`, `deny`,
//! `import`, `stats`, `top`, `status`, `completions`).

mod agent;
mod cli;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};
use sipfilter_common::maps::DEFAULT_PIN_DIR;

#[derive(Parser)]
#[command(
    name = "sipfilter",
    version,
    about = "Stops SIP scanning, brute force and REGISTER floods in XDP, before they reach the PBX",
    after_help = "Examples:\n  sipfilter run --iface eth0                 start the agent on eth0 with defaults\n  sipfilter run --config /etc/sipfilter.toml start it from a config file\n  sipfilter ban add 203.0.113.7 --for 4h     ban one address for four hours\n  sipfilter ban list                         list active bans\n  sipfilter stats                            counters by action, reason and method"
)]
pub struct Cli {
    /// bpffs folder where the program's maps (and the agent's links) are pinned.
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the XDP program, attach it and keep bans, metrics and the state file up to date.
    Run(agent::RunArgs),
    /// Detach the program from one or all interfaces (the attachment outlives the agent).
    Detach(agent::DetachArgs),
    /// Validate a configuration file (and the list files it names) without loading anything.
    #[command(after_help = cli::check::EXAMPLES)]
    Check(cli::check::CheckArgs),
    /// The audit trail: bans, lifts, cracked extensions and blocked calls, with their times.
    #[command(after_help = cli::events::EXAMPLES)]
    Events(cli::events::EventsArgs),
    /// Calls blocked by the destination and call-burst rules.
    #[command(after_help = cli::fraud::EXAMPLES)]
    Fraud {
        #[command(subcommand)]
        cmd: cli::fraud::FraudCommand,
    },
    #[command(flatten)]
    Manage(cli::ManageCommand),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (sipfilter.8, and sipfilter-COMMAND.8 for each command) into DIR
    /// (the package is built with them).
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// sipfilter(8), and a page per command: `man sipfilter-ban`.
fn manpages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command().version(env!("CARGO_PKG_VERSION"));
    let write = |name: &str, c: clap::Command| -> anyhow::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).section("8").render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.8")), out)?;
        Ok(())
    };
    write("sipfilter", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap wants a 'static name here; this command runs once and exits.
        let name: &'static str = Box::leak(format!("sipfilter-{}", sub.get_name()).into_boxed_str());
        write(name, sub.clone().name(name).version(env!("CARGO_PKG_VERSION")))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => agent::run(&cli.pin_dir, args),
        Command::Detach(args) => agent::detach(&cli.pin_dir, args),
        Command::Check(args) => match cli::check::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(e) => Err(e),
        },
        Command::Events(args) => cli::events::run(&cli.pin_dir, args),
        Command::Fraud { cmd } => cli::fraud::run(cmd),
        Command::Manage(cmd) => cli::execute(&cli.pin_dir, cmd),
        Command::Manpages { dir } => manpages(&dir),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sipfilter", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<cli::Exit>().is_some() => {
            ExitCode::from(e.downcast_ref::<cli::Exit>().map_or(1, |x| x.0))
        }
        Err(e) => {
            // One readable sentence (with its causes), not a backtrace.
            eprintln!("sipfilter: {e:#}");
            ExitCode::from(1)
        }
    }
}
