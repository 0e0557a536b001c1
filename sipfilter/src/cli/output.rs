//! Aligned tables for people, JSON for scripts.

use std::io::Write as _;

use anyhow::Context as _;
use sipfilter_common::maps::PERMANENT;

use sipfilter::duration::format_ns;

/// Columns padded to their widest cell; numeric columns are right-aligned.
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: (title, right-aligned).
    pub fn new(columns: &[(&'static str, bool)]) -> Self {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).context("cannot write JSON")?;
    writeln!(out).context("cannot write JSON")?;
    Ok(())
}

/// When an entry ends, for people: `permanent`, `in 3h59m`, `expired`.
pub fn human_expiry(expires_ns: u64, now_ns: u64) -> String {
    if expires_ns == PERMANENT {
        "permanent".into()
    } else if expires_ns <= now_ns {
        "expired".into()
    } else {
        format!("in {}", format_ns(expires_ns - now_ns))
    }
}

/// Seconds until an entry ends, for scripts: null when permanent.
pub fn json_remaining(expires_ns: u64, now_ns: u64) -> serde_json::Value {
    if expires_ns == PERMANENT {
        serde_json::Value::Null
    } else {
        (expires_ns.saturating_sub(now_ns) / 1_000_000_000).into()
    }
}

/// `1 entry`, `2 entries`, with thousands separators.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", grouped(n as u64), if n == 1 { one } else { many })
}

/// Thousands separators make counters readable at a glance: 1,234,567.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&[("SOURCE", false), ("COUNT", true)]);
        t.row(vec!["192.0.2.1".into(), "5".into()]);
        t.row(vec!["2001:db8::/64".into(), "12345".into()]);
        assert_eq!(
            t.render(),
            "SOURCE         COUNT\n192.0.2.1          5\n2001:db8::/64  12345\n"
        );
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
    }
}
