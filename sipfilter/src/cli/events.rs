//! `sipfilter events`: the audit trail — bans, lifts, cracked extensions and blocked calls,
//! with wall-clock times, from the agent's `events.jsonl` beside its state file (kept across
//! restarts, rotated at 4 MiB).

use std::time::Duration;

use sipfilter::{event_log, fraud_file::utc};

pub const EXAMPLES: &str = "\
Examples:
  sipfilter events                         the trail, oldest first
  sipfilter events --follow                then every new entry as the agent writes it
  sipfilter events --json | jq 'select(.event == \"cracked\")'
  sipfilter events --state-file /tmp/lab/state.json";

#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    state: super::state_folder::StateArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep printing new entries (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
}

fn print(e: &event_log::Event, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        println!("{}  {:<12}  {:<39}  {}", utc(e.time), e.event, e.source, e.detail);
    }
    Ok(())
}

pub fn run(args: EventsArgs) -> anyhow::Result<()> {
    let path = event_log::path_for(&args.state.state_file()?);
    let (events, bad) = event_log::read(&path)?;
    if !args.json && events.is_empty() && !args.follow {
        println!("no events recorded ({})", path.display());
    }
    for e in &events {
        print(e, args.json)?;
    }
    if bad != 0 {
        eprintln!("warning: {bad} unreadable line(s) in {} skipped", path.display());
    }
    if args.follow {
        // Lines of the current file already printed (the rotated file came before them).
        let mut seen = std::fs::read_to_string(&path).map_or(0, |t| t.lines().count());
        loop {
            std::thread::sleep(Duration::from_millis(500));
            for e in event_log::read_after(&path, &mut seen)? {
                print(&e, args.json)?;
            }
        }
    }
    Ok(())
}
