//! The CLI's own entries in the audit trail: every change an operator makes to bans, lists and
//! trust is appended (origin `cli`) to the trail of the agent of the pin set, the one its
//! state file names (see `sipfilter::agent_record`). The CLI writes them itself, so a change
//! made while the agent is stopped is recorded too; the trail's lock keeps its lines whole
//! against the agent's own appends.

use std::path::{Path, PathBuf};

use sipfilter::{
    agent_record,
    event_log::{self, Event, ORIGIN_CLI},
};

/// The entries of one command, written when it ends (also when it stops half-way: what it
/// changed before the error is recorded).
pub struct Audit {
    pin_dir: PathBuf,
    entries: Vec<Event>,
}

impl Audit {
    pub fn new(pin_dir: &Path) -> Audit {
        Audit {
            pin_dir: pin_dir.to_owned(),
            entries: Vec::new(),
        }
    }

    /// Records one change: `event` on `source`, with `key=value` words (`reason=` becomes the
    /// entry's reason).
    pub fn record(&mut self, event: &str, source: impl Into<String>, detail: impl Into<String>) {
        self.entries.push(Event::now(event, source, detail).by(ORIGIN_CLI));
    }

    /// Appends the entries to the trail. Never fails the command (the change is made): a
    /// trail that cannot be written, or that no agent has named yet, is said on stderr.
    pub fn write(self) {
        if self.entries.is_empty() {
            return;
        }
        let Some(state_file) = agent_record::state_file(&self.pin_dir) else {
            eprintln!(
                "note: not recorded in the audit trail: no agent has run on the pins in {} yet (the agent names its trail there when it starts)",
                self.pin_dir.display()
            );
            return;
        };
        let path = event_log::path_for(&state_file);
        if let Err(e) = event_log::append(&path, &self.entries) {
            eprintln!("warning: not recorded in the audit trail: {e:#}");
        }
    }
}

/// A duration as the trail writes it: `duration=3600s`, or `duration=permanent`.
pub fn duration_word(length_ns: Option<u64>) -> String {
    match length_ns {
        Some(ns) => format!("duration={}s", ns / 1_000_000_000),
        None => "duration=permanent".to_string(),
    }
}
