//! `sipfilter fraud list`: the calls the destination and call-burst rules blocked lately
//! (time, source, extension, number), from the agent's record beside its state file.

use sipfilter::fraud_file;

pub const EXAMPLES: &str = "\
Examples:
  sipfilter fraud list                       the recent blocked calls, oldest first
  sipfilter fraud list --json                the same as JSON (one array)
  sipfilter fraud list --config ./sipfilter.toml
                                             the record beside that config's state file";

#[derive(clap::Subcommand)]
pub enum FraudCommand {
    /// The recent blocked calls (kept across restarts; the last 1,000).
    List(ListArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    state: super::state_folder::StateArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: FraudCommand) -> anyhow::Result<()> {
    let FraudCommand::List(args) = cmd;
    let state_file = args.state.state_file()?;
    let path = fraud_file::path_for(&state_file);
    let (calls, bad) = fraud_file::read(&path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&calls)?);
    } else if calls.is_empty() {
        println!("no blocked calls recorded ({})", path.display());
    } else {
        println!(
            "{:<19}  {:<39}  {:<16}  {:<17}  {:<19}  action",
            "time (UTC)", "source", "extension", "number", "rule"
        );
        for c in &calls {
            println!(
                "{:<19}  {:<39}  {:<16}  {:<17}  {:<19}  {}{}",
                fraud_file::utc(c.time),
                c.source,
                if c.extension.is_empty() { "?" } else { &c.extension },
                c.number,
                c.rule,
                c.action,
                if c.known { " (known source)" } else { "" }
            );
        }
    }
    if bad != 0 {
        eprintln!("warning: {bad} unreadable line(s) in {} skipped", path.display());
    }
    Ok(())
}
