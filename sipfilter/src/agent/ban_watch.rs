//! When the agent reads the ban table and the lists again (to sweep what expired and to save
//! the state file): after a ban event, after an edit by the CLI (every edit bumps the config's
//! generation), at the earliest expiry among them, and at least every [`FULL_PASS`] (a ban
//! event the ring buffer had no room for). Reading a table costs a syscall or two per entry:
//! with 50,000 bans, reading them every second took a quarter of a CPU doing nothing
//! (`cargo xtask bench --agent`).

use std::time::{Duration, Instant};

/// The longest the agent goes without reading the tables.
pub const FULL_PASS: Duration = Duration::from_secs(30);

pub struct BanWatch {
    /// A ban event arrived since the last read.
    dirty: bool,
    /// The config generation the last read saw.
    generation: u64,
    /// The earliest expiry (boot ns) the last read found; `u64::MAX`: none.
    next_expiry_ns: u64,
    last_read: Instant,
}

impl Default for BanWatch {
    fn default() -> Self {
        BanWatch {
            dirty: true,
            generation: 0,
            next_expiry_ns: 0,
            last_read: Instant::now(),
        }
    }
}

impl BanWatch {
    pub fn ban_event(&mut self) {
        self.dirty = true;
    }

    /// Whether the tables must be read now.
    pub fn due(&self, now_ns: u64, generation: u64) -> bool {
        self.dirty
            || generation != self.generation
            || now_ns >= self.next_expiry_ns
            || self.last_read.elapsed() >= FULL_PASS
    }

    /// The tables were read: at `generation`, the next expiry `next_expiry_ns`.
    pub fn read(&mut self, generation: u64, next_expiry_ns: u64) {
        self.dirty = false;
        self.generation = generation;
        self.next_expiry_ns = next_expiry_ns;
        self.last_read = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_on_events_edits_expiries_and_at_least_every_full_pass() {
        let mut w = BanWatch::default();
        assert!(w.due(0, 0), "the first tick reads");
        w.read(7, 1_000);
        assert!(!w.due(999, 7));
        assert!(w.due(1_000, 7), "an expiry is due");
        assert!(w.due(10, 8), "the CLI changed something");
        w.ban_event();
        assert!(w.due(10, 7), "the program banned someone");
        w.read(7, u64::MAX);
        assert!(!w.due(u64::MAX - 1, 7), "nothing expires");
        w.last_read -= FULL_PASS;
        assert!(w.due(0, 7), "the safety pass");
    }
}
