//! Which of the agent's housekeeping steps are failing, so each failure is said once when it
//! starts (or its error changes) and once when the step works again, instead of every second.

use std::collections::HashMap;

#[derive(Default)]
pub struct FailingSteps {
    failing: HashMap<&'static str, String>,
}

impl FailingSteps {
    /// Takes one run's outcome of step `what`; returns the log line to write, if any.
    pub fn outcome(&mut self, what: &'static str, error: Option<&anyhow::Error>) -> Option<String> {
        match error {
            Some(e) => {
                let text = format!("{e:#}");
                if self.failing.get(what) == Some(&text) {
                    return None;
                }
                self.failing.insert(what, text.clone());
                Some(format!(
                    "warning: {what} failed: {text}; the rest of the housekeeping goes on, retrying every second"
                ))
            }
            None => self.failing.remove(what).map(|_| format!("{what} works again")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_said_when_it_starts_changes_and_ends() {
        let mut f = FailingSteps::default();
        let e = anyhow::anyhow!("cannot read the denylist");
        assert!(f
            .outcome("sweeping", Some(&e))
            .unwrap()
            .contains("cannot read the denylist"));
        assert_eq!(f.outcome("sweeping", Some(&e)), None, "not every second");
        assert_eq!(f.outcome("clock", None), None, "another step that works says nothing");
        let other = anyhow::anyhow!("cannot read the ban table");
        assert!(f.outcome("sweeping", Some(&other)).is_some(), "a new error is said");
        assert_eq!(f.outcome("sweeping", None).as_deref(), Some("sweeping works again"));
        assert_eq!(f.outcome("sweeping", None), None);
    }
}
