//! `sipfilter check`: validates a configuration (and the list files it names) without loading
//! anything, so an operator (or a package's postinst, or `ExecStartPre`) can test an edit
//! before the agent reloads it.

use std::path::PathBuf;

use sipfilter::config::{Config, DEFAULT_CONFIG_FILE};

pub const EXAMPLES: &str = "\
Examples:
  sipfilter check                                 validate /etc/sipfilter/sipfilter.toml
  sipfilter check --config ./sipfilter.toml       validate another file

Exit status 0 when the file is valid, 2 with FILE:LINE: FIELD: problem when it is not (an
interface this host does not have included: `sipfilter run` would refuse it).";

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The configuration file to validate.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
    config: PathBuf,
}

/// Ok(true): valid; Ok(false): invalid (reported on stderr).
pub fn run(args: CheckArgs) -> anyhow::Result<bool> {
    match Config::load(&args.config) {
        Ok(c) => {
            // `run` refuses an interface this host does not have: so does `check`.
            if let Some(missing) = c.interfaces.iter().find(|i| !interface_exists(i)) {
                let line = std::fs::read_to_string(&args.config)
                    .ok()
                    .and_then(|text| line_naming(&text, missing));
                eprintln!(
                    "sipfilter: {}{}: agent.interfaces: interface {missing} does not exist on this host (`sipfilter run` would refuse it)",
                    args.config.display(),
                    line.map_or(String::new(), |l| format!(":{l}"))
                );
                return Ok(false);
            }
            println!(
                "{}: valid ({} interface(s), SIP ports UDP {:?} TCP {:?} TLS {:?} WebSocket {:?}, {} allowlist and {} denylist entries, trust tiers {}, {} scanner User-Agent tokens, {})",
                args.config.display(),
                c.interfaces.len(),
                c.sip_ports,
                c.tcp_ports,
                c.tls_ports,
                c.websocket_ports,
                c.allow.len(),
                c.deny.len(),
                if c.trust.enabled { "on" } else { "off" },
                c.scanner_user_agents.len(),
                if c.calls.enabled {
                    format!("{} destination rules", c.calls.rules.len())
                } else {
                    "call rules off".to_string()
                }
            );
            Ok(true)
        }
        Err(e) => {
            eprintln!("sipfilter: {e}");
            Ok(false)
        }
    }
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated name.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// The 1-based line where `"name"` is first written in the file.
fn line_naming(text: &str, name: &str) -> Option<usize> {
    let quoted = [format!("\"{name}\""), format!("'{name}'")];
    text.lines()
        .position(|l| {
            quoted
                .iter()
                .any(|q| l.split('#').next().unwrap_or("").contains(q.as_str()))
        })
        .map(|i| i + 1)
}
