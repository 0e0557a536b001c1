//! The agent's configuration file (TOML). Every field has a default; a bad value is refused
//! with the file, line, field and what is wrong, before anything is attached.
//!
//! See `examples/sipfilter.toml` for every field with its default and the reason for it.

use std::{
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
pub use sipfilter_common::config::ConnectionLimits;
use sipfilter_common::{
    calls::{CallConfig, MAX_CALLS_LIMIT},
    config::{
        defaults, ipv6_mask, FLAG_CALLS, FLAG_MONITOR, FLAG_SCANNER_USER_AGENTS, FLAG_SCOPE_ALL, FLAG_STEALTH,
        FLAG_STEALTH_ALL, FLAG_TRUST, FLAG_WITHHOLD, MAX_BURST, MAX_OPAQUE_PORTS, MAX_RATE, MAX_SIP_PORTS,
    },
    dialed::{DialPlan, Digits},
    user_agent::{ScannerUserAgents, DEFAULT_TOKENS},
    ClassLimit, KernelConfig, NS_PER_SEC,
};
use toml::Spanned;

use crate::{addr::Cidr, duration::parse_duration};

pub const DEFAULT_STATE_FILE: &str = "/var/lib/sipfilter/state.json";
/// Where a packaged install keeps its configuration.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/sipfilter/sipfilter.toml";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9460";
/// The interface name the packaged configuration ships with: refused until edited.
pub const PLACEHOLDER_INTERFACE: &str = "CHANGE-ME";

/// A configuration error that points at its place: `FILE:LINE: FIELD: what is wrong`.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// How a banned or denylisted source is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanScope {
    /// Only its traffic to the SIP ports.
    Sip,
    /// All its traffic.
    All,
}

/// How the answers program is attached to an interface's egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressAttach {
    /// tcx where the kernel has it (6.6 and later), a clsact filter otherwise.
    Auto,
    /// A clsact qdisc filter (what kernels before 6.6 have), even where tcx exists.
    Clsact,
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    Auto,
    /// Native mode only: fail where the driver lacks it.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// UDP SIP ports (`[sip] ports`).
    pub sip_ports: Vec<u16>,
    /// Plain TCP, TLS and WebSocket (WS and WSS) SIP ports (docs/transports.md).
    pub tcp_ports: Vec<u16>,
    pub tls_ports: Vec<u16>,
    pub websocket_ports: Vec<u16>,
    /// `[connections]`: what each source may open on the stream ports.
    pub connections: ConnectionSettings,
    /// Limits by class: register, invite, other.
    pub limits: [ClassLimit; 3],
    pub ban_duration: Duration,
    pub ban_max: Duration,
    pub escalation_window: Duration,
    pub ban_scope: BanScope,
    pub ipv6_prefix: u8,
    pub monitor: bool,
    pub allow: Vec<Cidr>,
    /// Allowlist entries given as DNS names (resolved by the agent, at their TTL).
    pub allow_names: Vec<String>,
    pub deny: Vec<Cidr>,
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    pub egress: EgressAttach,
    pub state_file: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// The resolver for allowlist names (`[agent] dns_server`); None: /etc/resolv.conf's.
    pub dns_server: Option<SocketAddr>,
    /// `[crowdsec]`: the fleet's decisions pulled, our bans pushed (None: off).
    pub crowdsec: Option<CrowdsecSettings>,
    pub trust: TrustSettings,
    /// `[scanners] user_agents`: the User-Agent tokens that name an attack tool.
    pub scanner_user_agents: Vec<String>,
    pub calls: CallSettings,
}

/// `[crowdsec]` (docs/fleet.md).
#[derive(Clone, PartialEq, Eq)]
pub struct CrowdsecSettings {
    pub lapi: crate::crowdsec::Lapi,
    pub pull_interval: Duration,
    /// Push our bans as alerts (needs the machine credentials).
    pub push: bool,
}

impl std::fmt::Debug for CrowdsecSettings {
    // The keys never reach a log line, even a debug one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrowdsecSettings")
            .field("url", &format!("http://{}:{}", self.lapi.host, self.lapi.port))
            .field("pull_interval", &self.pull_interval)
            .field("push", &self.push)
            .finish_non_exhaustive()
    }
}

/// `[calls]`: destination rules and call bursts (docs/judging.md, "Destination rules", "Call bursts").
#[derive(Clone, Debug, PartialEq)]
pub struct CallSettings {
    /// Check INVITE and MESSAGE requests at all.
    pub enabled: bool,
    /// Deny and allow prefixes (E.164 digits), with where each came from; the shipped
    /// high-risk list first unless turned off.
    pub rules: Vec<DestinationPrefix>,
    pub dial_plan: DialPlan,
    pub per_number: u32,
    pub window: Duration,
    pub international_per_minute: u32,
}

/// A destination rule as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationPrefix {
    pub digits: Digits,
    pub deny: bool,
    /// `file:line`, or the field it was given in.
    pub origin: String,
}

/// The shipped list of destinations carriers block for fraud (`examples/high-risk-prefixes.txt`).
pub const HIGH_RISK_PREFIXES: &str = include_str!("../../examples/high-risk-prefixes.txt");

impl Default for CallSettings {
    fn default() -> Self {
        let k = CallConfig::default();
        CallSettings {
            enabled: true,
            rules: high_risk_rules(),
            dial_plan: k.dial_plan,
            per_number: k.per_number,
            window: Duration::from_nanos(k.window_ns),
            international_per_minute: k.international_per_minute,
        }
    }
}

/// The shipped high-risk list as deny rules.
pub fn high_risk_rules() -> Vec<DestinationPrefix> {
    parse_prefixes(HIGH_RISK_PREFIXES, "high-risk-prefixes.txt", true).expect("the shipped list parses")
}

/// Prefix-list text: one E.164 prefix per line (digits; `+`, spaces and `-` allowed and
/// dropped), `#` starts a comment. Err: (line, problem).
pub fn parse_prefixes(text: &str, name: &str, deny: bool) -> Result<Vec<DestinationPrefix>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let digits = prefix_digits(entry).map_err(|m| (i + 1, m))?;
        out.push(DestinationPrefix {
            digits,
            deny,
            origin: format!("{name}:{}", i + 1),
        });
    }
    Ok(out)
}

/// An E.164 prefix from text: `232`, `+232`, `+1 900`, `1-809`.
fn prefix_digits(text: &str) -> Result<Digits, String> {
    let cleaned: String = text
        .trim_start_matches('+')
        .chars()
        .filter(|c| *c != ' ' && *c != '-')
        .collect();
    if cleaned.is_empty() || !cleaned.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "'{text}' is not a number prefix (digits only, e.g. 232 or +1900)"
        ));
    }
    if cleaned.len() > sipfilter_common::dialed::MAX_E164 {
        return Err(format!("'{text}' is longer than an E.164 number (15 digits)"));
    }
    if cleaned.starts_with('0') {
        return Err(format!(
            "'{text}' starts with 0: give prefixes in international form without the call prefix (232, not 00232)"
        ));
    }
    Digits::parse(&cleaned).ok_or_else(|| format!("'{text}' is not a number prefix"))
}

/// A dial-plan digit string (outside line, call prefixes, country code): up to 8 digits.
fn plan_digits(text: &str) -> Result<Digits, String> {
    if text.is_empty() {
        return Ok(Digits::EMPTY);
    }
    if text.len() > 8 || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("'{text}' is not 1 to 8 digits"));
    }
    Digits::parse(text).ok_or_else(|| format!("'{text}' is not 1 to 8 digits"))
}

/// `[connections]`: new and open TCP connections per source, by tier.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionSettings {
    pub limits: ConnectionLimits,
    /// A connection that carried nothing this long no longer counts as open (a phone that
    /// lost power never sends its FIN). Phones keep their connection alive with CRLFs every
    /// 30 to 120 s.
    pub idle_timeout: Duration,
    /// An unknown source's open TLS and WebSocket connections, counted apart from its plain
    /// ones (0: they count toward `unknown_open`). Nothing in them is read, so a source that
    /// only speaks TLS or WebSocket never becomes known: this is what lets an office of TLS or
    /// WebRTC phones behind one address in, while a robot still holds a bounded number open.
    pub unknown_opaque_open: u32,
}

/// An office of up to this many TLS or WebRTC phones behind one address connects without the
/// allowlist; a robot holds at most this many TLS connections open (kamailio's default
/// `tcp_max_connections` is 2,048).
pub const DEFAULT_UNKNOWN_OPAQUE_OPEN: u32 = 100;

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            limits: defaults::CONNECTIONS,
            idle_timeout: Duration::from_secs(DEFAULT_CONNECTION_IDLE_SECS),
            unknown_opaque_open: DEFAULT_UNKNOWN_OPAQUE_OPEN,
        }
    }
}

/// Ten minutes: five times a phone's longest keep-alive interval.
pub const DEFAULT_CONNECTION_IDLE_SECS: u64 = 600;

/// `[trust]`: judging sources by the PBX's answers (docs/judging.md).
#[derive(Clone, Debug, PartialEq)]
pub struct TrustSettings {
    /// Read the PBX's answers (egress program) and give unknown sources the tight limits.
    pub enabled: bool,
    /// Drop OPTIONS from sources that are neither known nor allowlisted.
    pub stealth: bool,
    /// Stealth for every request but REGISTER (sites that take no calls from the internet).
    pub stealth_all: bool,
    /// Drop REGISTER/INVITE for a cracked extension from sources neither known nor allowlisted.
    pub quarantine: bool,
    /// Drop the 2xx that proves a guessed password.
    pub withhold_cracked: bool,
    /// How long a source stays known after its last clean REGISTER success.
    pub known_for: Duration,
    /// Limits of unknown sources by class: register, invite, other.
    pub unknown_limits: [ClassLimit; 3],
}

impl Default for TrustSettings {
    fn default() -> Self {
        TrustSettings {
            enabled: true,
            stealth: true,
            stealth_all: false,
            quarantine: true,
            withhold_cracked: true,
            known_for: Duration::from_secs(defaults::KNOWN_TTL_SECS as u64),
            unknown_limits: [
                defaults::UNKNOWN_REGISTER,
                defaults::UNKNOWN_INVITE,
                defaults::UNKNOWN_OTHER,
            ],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sip_ports: vec![defaults::SIP_PORT],
            tcp_ports: vec![defaults::SIP_PORT],
            tls_ports: vec![defaults::TLS_PORT],
            websocket_ports: Vec::new(),
            connections: ConnectionSettings::default(),
            limits: [defaults::REGISTER, defaults::INVITE, defaults::OTHER],
            ban_duration: Duration::from_secs(defaults::BAN_BASE_SECS),
            ban_max: Duration::from_secs(defaults::BAN_MAX_SECS),
            escalation_window: Duration::from_secs(defaults::ESCALATION_WINDOW_SECS),
            ban_scope: BanScope::Sip,
            ipv6_prefix: defaults::IPV6_PREFIX_LEN,
            monitor: false,
            allow: Vec::new(),
            allow_names: Vec::new(),
            deny: Vec::new(),
            interfaces: Vec::new(),
            mode: AttachMode::Auto,
            egress: EgressAttach::Auto,
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("valid default")),
            dns_server: None,
            crowdsec: None,
            trust: TrustSettings::default(),
            scanner_user_agents: DEFAULT_TOKENS.iter().map(|t| t.to_string()).collect(),
            calls: CallSettings::default(),
        }
    }
}

impl Config {
    /// The record the XDP program reads.
    pub fn kernel_config(&self) -> KernelConfig {
        let mut k = KernelConfig::default();
        k.set_sip_ports(&self.sip_ports);
        k.set_stream_ports(&self.tcp_ports, &self.tls_ports, &self.websocket_ports);
        k.connections = self.connections.limits;
        k.limits = self.limits;
        k.ban_base_ns = self.ban_duration.as_secs() * NS_PER_SEC;
        k.ban_max_ns = self.ban_max.as_secs() * NS_PER_SEC;
        k.escalation_window_ns = self.escalation_window.as_secs() * NS_PER_SEC;
        // Each IPv6 address is its own source; `ban.ipv6_prefix` is the prefix banned as a
        // whole on evidence.
        k.ipv6_mask_be = ipv6_mask(128);
        k.ipv6_group_mask_be = ipv6_mask(self.ipv6_prefix);
        k.flags = 0;
        if self.monitor {
            k.flags |= FLAG_MONITOR;
        }
        if self.ban_scope == BanScope::All {
            k.flags |= FLAG_SCOPE_ALL;
        }
        let t = &self.trust;
        k.unknown_limits = t.unknown_limits;
        k.trust.known_ttl_secs = u32::try_from(t.known_for.as_secs()).unwrap_or(u32::MAX);
        if t.enabled {
            k.flags |= FLAG_TRUST;
            if t.stealth {
                k.flags |= FLAG_STEALTH;
            }
            if t.stealth_all {
                k.flags |= FLAG_STEALTH | FLAG_STEALTH_ALL;
            }
            if t.withhold_cracked {
                k.flags |= FLAG_WITHHOLD;
            }
            // FLAG_QUARANTINE is the agent's to set: only while some extension is cracked.
        }
        if !self.scanner_user_agents.is_empty() {
            k.flags |= FLAG_SCANNER_USER_AGENTS;
        }
        let c = &self.calls;
        if c.enabled {
            k.flags |= FLAG_CALLS;
        }
        k.calls = CallConfig {
            dial_plan: c.dial_plan,
            per_number: c.per_number,
            international_per_minute: c.international_per_minute,
            window_ns: u64::try_from(c.window.as_nanos()).unwrap_or(u64::MAX),
        };
        k
    }

    /// The scanner tokens as the kernel holds them.
    pub fn scanner_rules(&self) -> ScannerUserAgents {
        let mut r = ScannerUserAgents::default();
        for t in &self.scanner_user_agents {
            // Validated when the file was read.
            let _ = r.add(t.as_bytes());
        }
        r
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&read_text(path)?, path)
    }

    /// Validates configuration text; `path` names it in errors and anchors relative list files.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |span: Option<Range<usize>>, field: Option<&str>, message: String| ConfigError {
            file: path.to_owned(),
            line: span.map(|s| line_of(text, s.start)),
            field: field.map(str::to_owned),
            message,
        };
        // A value of the wrong type is refused by the parser, which knows where but not which
        // field: the field is read back from the text at that place.
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let field = e.span().and_then(|s| field_at(text, s.start));
            err(e.span(), field.as_deref(), e.message().trim().replace('\n', " "))
        })?;
        let mut c = Config::default();

        if let Some(sip) = raw.sip {
            let ports = |v: Spanned<Vec<Spanned<i64>>>, field: &str, min: usize, max: usize, what: &str| {
                let span = v.span();
                let v = v.into_inner();
                if v.len() < min || v.len() > max {
                    return Err(err(Some(span), Some(field), format!("give {min} to {max} ports")));
                }
                let mut out: Vec<u16> = Vec::new();
                for p in v {
                    let (span, n) = (p.span(), *p.get_ref());
                    if !(1..=65535).contains(&n) {
                        return Err(err(
                            Some(span),
                            Some(field),
                            format!("{n} is not a {what} port (1-65535)"),
                        ));
                    }
                    if out.contains(&(n as u16)) {
                        return Err(err(Some(span), Some(field), format!("{n} is listed twice")));
                    }
                    out.push(n as u16);
                }
                Ok((out, span))
            };
            if let Some(v) = sip.ports {
                c.sip_ports = ports(v, "sip.ports", 1, MAX_SIP_PORTS, "UDP")?.0;
            }
            // A TCP port carries one of TCP, TLS or WebSocket: the program reads what it
            // carries by its port.
            let mut stream: Vec<(u16, &str)> = Vec::new();
            for (field, value, max, out) in [
                ("sip.tcp_ports", sip.tcp_ports, MAX_SIP_PORTS, &mut c.tcp_ports),
                ("sip.tls_ports", sip.tls_ports, MAX_OPAQUE_PORTS, &mut c.tls_ports),
                (
                    "sip.websocket_ports",
                    sip.websocket_ports,
                    MAX_OPAQUE_PORTS,
                    &mut c.websocket_ports,
                ),
            ] {
                let Some(value) = value else {
                    for p in out.iter() {
                        stream.push((*p, field));
                    }
                    continue;
                };
                let (list, span) = ports(value, field, 0, max, "TCP")?;
                for p in &list {
                    if let Some((_, other)) = stream.iter().find(|(q, _)| q == p) {
                        return Err(err(
                            Some(span.clone()),
                            Some(field),
                            format!("{p} is already in {other}: a TCP port carries one transport"),
                        ));
                    }
                    stream.push((*p, field));
                }
                *out = list;
            }
        }

        if let Some(conn) = raw.connections {
            let l = &mut c.connections.limits;
            let n = |v: &Spanned<i64>, field: &str, min: u64, max: u64| {
                bounded(v, min, max).map_err(|m| err(Some(v.span()), Some(field), m))
            };
            if let Some(v) = &conn.rate {
                l.flood.rate_per_sec = n(v, "connections.rate", 1, MAX_RATE)?;
            }
            if let Some(v) = &conn.burst {
                l.flood.burst = n(v, "connections.burst", 1, MAX_BURST)?;
            }
            if let Some(v) = &conn.unknown_rate {
                l.unknown.rate_per_sec = n(v, "connections.unknown_rate", 1, MAX_RATE)?;
            }
            if let Some(v) = &conn.unknown_burst {
                l.unknown.burst = n(v, "connections.unknown_burst", 1, MAX_BURST)?;
            }
            if let Some(v) = &conn.known_open {
                l.known_open = n(v, "connections.known_open", 0, 1_000_000)?;
            }
            if let Some(v) = &conn.unknown_open {
                l.unknown_open = n(v, "connections.unknown_open", 0, 1_000_000)?;
            }
            if let Some(v) = &conn.unknown_opaque_open {
                c.connections.unknown_opaque_open = n(v, "connections.unknown_opaque_open", 0, 1_000_000)?;
            }
            if let Some(v) = &conn.idle_timeout {
                let d = parse_duration(v.get_ref())
                    .map_err(|m| err(Some(v.span()), Some("connections.idle_timeout"), m))?;
                if d < Duration::from_secs(10) {
                    return Err(err(
                        Some(v.span()),
                        Some("connections.idle_timeout"),
                        "give at least 10s: phones send a keep-alive every 30 to 120 s".into(),
                    ));
                }
                c.connections.idle_timeout = d;
            }
            if l.unknown.burst > l.flood.burst {
                return Err(err(
                    conn.unknown_burst.as_ref().map(|v| v.span()),
                    Some("connections.unknown_burst"),
                    format!(
                        "{} is more than connections.burst ({}): an unknown source would be banned before it is throttled",
                        l.unknown.burst, l.flood.burst
                    ),
                ));
            }
        }

        if let Some(limits) = raw.limits {
            apply_limits(limits, &mut c.limits, "limits", &err)?;
        }

        if let Some(ban) = raw.ban {
            let dur = |v: &Spanned<String>, field: &str| {
                parse_duration(v.get_ref()).map_err(|m| err(Some(v.span()), Some(field), m))
            };
            if let Some(v) = &ban.duration {
                c.ban_duration = dur(v, "ban.duration")?;
            }
            if let Some(v) = &ban.max_duration {
                c.ban_max = dur(v, "ban.max_duration")?;
            }
            if let Some(v) = &ban.escalation_window {
                c.escalation_window = dur(v, "ban.escalation_window")?;
            }
            if c.ban_max < c.ban_duration {
                let span = ban.max_duration.as_ref().or(ban.duration.as_ref()).map(Spanned::span);
                return Err(err(
                    span,
                    Some("ban.max_duration"),
                    "must not be shorter than ban.duration".into(),
                ));
            }
            if let Some(scope) = ban.scope {
                c.ban_scope = choose(&scope, &[("sip", BanScope::Sip), ("all", BanScope::All)])
                    .map_err(|m| err(Some(scope.span()), Some("ban.scope"), m))?;
            }
            if let Some(p) = ban.ipv6_prefix {
                let v = *p.get_ref();
                if !(1..=128).contains(&v) {
                    return Err(err(
                        Some(p.span()),
                        Some("ban.ipv6_prefix"),
                        format!("{v} is not a prefix length (1-128)"),
                    ));
                }
                c.ipv6_prefix = v as u8;
            }
        }
        if let Some(m) = raw.monitor {
            c.monitor = m;
        }
        if let Some(t) = raw.trust {
            let flag = |v: Option<bool>, d: bool| v.unwrap_or(d);
            c.trust.enabled = flag(t.enabled, c.trust.enabled);
            c.trust.stealth = flag(t.stealth, c.trust.stealth);
            c.trust.stealth_all = flag(t.stealth_all, c.trust.stealth_all);
            c.trust.quarantine = flag(t.quarantine, c.trust.quarantine);
            c.trust.withhold_cracked = flag(t.withhold_cracked, c.trust.withhold_cracked);
            if let Some(v) = &t.known_for {
                c.trust.known_for =
                    parse_duration(v.get_ref()).map_err(|m| err(Some(v.span()), Some("trust.known_for"), m))?;
            }
            if let Some(limits) = t.unknown_limits {
                apply_limits(limits, &mut c.trust.unknown_limits, "trust.unknown_limits", &err)?;
            }
        }

        if let Some(lists) = raw.lists {
            let base = path.parent().unwrap_or(Path::new("."));
            for (kind, inline, files, out) in [
                ("allow", lists.allow, lists.allow_files, &mut c.allow),
                ("deny", lists.deny, lists.deny_files, &mut c.deny),
            ] {
                for entry in inline.unwrap_or_default() {
                    let text = entry.get_ref();
                    match text.parse::<Cidr>() {
                        Ok(cidr) => out.push(cidr),
                        // A trunk's host or a home office's dynamic-DNS name: the agent resolves it.
                        Err(_) if kind == "allow" && crate::dns::is_host_name(text) => {
                            c.allow_names.push(text.trim_end_matches('.').to_ascii_lowercase())
                        }
                        Err(e) => return Err(err(Some(entry.span()), Some(&format!("lists.{kind}")), e.0)),
                    }
                }
                for file in files.unwrap_or_default() {
                    let list_path = base.join(file.get_ref());
                    let entries = read_cidr_file(&list_path).map_err(|mut e| {
                        if e.line.is_none() {
                            // The file itself could not be read: point at the config line naming it.
                            e = err(Some(file.span()), Some(&format!("lists.{kind}_files")), e.to_string());
                        }
                        e
                    })?;
                    out.extend(entries);
                }
            }
        }

        if let Some(scanners) = raw.scanners {
            if let Some(tokens) = scanners.user_agents {
                let mut check = ScannerUserAgents::default();
                let mut out = Vec::new();
                for t in tokens {
                    check.add(t.get_ref().as_bytes()).map_err(|m| {
                        err(
                            Some(t.span()),
                            Some("scanners.user_agents"),
                            format!("'{}': {m}", t.get_ref()),
                        )
                    })?;
                    out.push(t.into_inner());
                }
                c.scanner_user_agents = out;
            }
        }

        if let Some(calls) = raw.calls {
            apply_calls(calls, &mut c.calls, path, &err)?;
        }

        if let Some(cs) = raw.crowdsec {
            c.crowdsec = Some(crowdsec_settings(cs, path, &err)?);
        }

        if let Some(agent) = raw.agent {
            if let Some(ifaces) = agent.interfaces {
                for i in ifaces {
                    let name = i.get_ref();
                    if name == PLACEHOLDER_INTERFACE {
                        return Err(err(
                            Some(i.span()),
                            Some("agent.interfaces"),
                            "the packaged placeholder: set your PBX-facing interface (e.g. [\"eth0\"])".into(),
                        ));
                    }
                    if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(char::is_whitespace) {
                        return Err(err(
                            Some(i.span()),
                            Some("agent.interfaces"),
                            format!("'{name}' is not an interface name"),
                        ));
                    }
                    c.interfaces.push(name.clone());
                }
            }
            if let Some(mode) = agent.mode {
                let modes = [
                    ("auto", AttachMode::Auto),
                    ("native", AttachMode::Native),
                    ("generic", AttachMode::Generic),
                ];
                c.mode = choose(&mode, &modes).map_err(|m| err(Some(mode.span()), Some("agent.mode"), m))?;
            }
            if let Some(e) = agent.egress {
                let options = [("auto", EgressAttach::Auto), ("clsact", EgressAttach::Clsact)];
                c.egress = choose(&e, &options).map_err(|m| err(Some(e.span()), Some("agent.egress"), m))?;
            }
            if let Some(s) = agent.state_file {
                c.state_file = PathBuf::from(s.into_inner());
            }
            if let Some(d) = agent.dns_server {
                let text = d.get_ref().trim();
                let addr = text
                    .parse::<SocketAddr>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        err(
                            Some(d.span()),
                            Some("agent.dns_server"),
                            format!("'{text}' is not an address or address:port"),
                        )
                    })?;
                c.dns_server = Some(addr);
            }
            if let Some(m) = agent.metrics_listen {
                let text = m.get_ref().trim();
                c.metrics_listen = if text.is_empty() || text == "off" {
                    None
                } else {
                    Some(text.parse().map_err(|_| {
                        err(
                            Some(m.span()),
                            Some("agent.metrics_listen"),
                            format!("'{text}' is not an address:port (e.g. 127.0.0.1:9460), or \"off\""),
                        )
                    })?)
                };
            }
        }
        Ok(c)
    }
}

/// One of a field's named values; the error lists them.
fn choose<T: Copy>(v: &Spanned<String>, options: &[(&str, T)]) -> Result<T, String> {
    let text = v.get_ref().as_str();
    options
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<String> = options.iter().map(|(name, _)| format!("\"{name}\"")).collect();
            format!("'{text}' is not one of {}", names.join(", "))
        })
}

fn bounded(v: &Spanned<i64>, min: u64, max: u64) -> Result<u32, String> {
    let n = *v.get_ref();
    if n < min as i64 || n > max as i64 {
        return Err(format!("{n} is out of range ({min}-{max})"));
    }
    Ok(n as u32)
}

/// The dotted name (`limits.invite.burst`) of the key whose value lies at `offset`: the
/// nearest `key =` at or above it, under the nearest `[table]` header above that.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_end = text[before.len()..].find('\n').map_or(text.len(), |n| before.len() + n);
    let mut key = None;
    for line in text[..line_end].lines().rev() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').filter(|_| !line.starts_with("[[")) {
            let table = header.split(']').next()?.trim().replace(['"', ' '], "");
            return key.map(|k: String| format!("{table}.{k}"));
        }
        if key.is_none() {
            if let Some((k, _)) = line.split_once('=') {
                let k = k.trim().replace(['"', ' '], "");
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                    key = Some(k);
                }
            }
        }
    }
    key
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// A file's text, or an error naming it.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        field: None,
        message: format!("cannot read: {e}"),
    })
}

/// Reads a file of CIDRs, one per line; `#` starts a comment; blank lines are skipped.
pub fn read_cidr_file(path: &Path) -> Result<Vec<Cidr>, ConfigError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let cidr = entry.parse::<Cidr>().map_err(|e| ConfigError {
            file: path.to_owned(),
            line: Some(i + 1),
            field: None,
            message: e.0,
        })?;
        out.push(cidr);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sip: Option<RawSip>,
    connections: Option<RawConnections>,
    limits: Option<RawLimits>,
    ban: Option<RawBan>,
    monitor: Option<bool>,
    lists: Option<RawLists>,
    agent: Option<RawAgent>,
    trust: Option<RawTrust>,
    scanners: Option<RawScanners>,
    calls: Option<RawCalls>,
    crowdsec: Option<RawCrowdsec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrowdsec {
    url: Spanned<String>,
    bouncer_key: Option<Spanned<String>>,
    bouncer_key_file: Option<Spanned<String>>,
    machine_id: Option<Spanned<String>>,
    machine_password: Option<Spanned<String>>,
    machine_password_file: Option<Spanned<String>>,
    pull_interval: Option<Spanned<String>>,
    scopes: Option<Vec<Spanned<String>>>,
    origins: Option<Vec<Spanned<String>>>,
    push: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScanners {
    user_agents: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    enabled: Option<bool>,
    high_risk_destinations: Option<bool>,
    deny: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
    deny_files: Option<Vec<Spanned<String>>>,
    allow_files: Option<Vec<Spanned<String>>>,
    outside_line: Option<Spanned<String>>,
    international_prefixes: Option<Vec<Spanned<String>>>,
    country_code: Option<Spanned<String>>,
    trunk_prefix: Option<Spanned<String>>,
    calls_to_one_number: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    international_per_minute: Option<Spanned<i64>>,
}

/// A secret inline or from a root-only file (first line), never both.
fn secret(
    inline: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    field: &str,
    path: &Path,
    err: &ErrorAt<'_>,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(v), None) => Ok(Some(v.into_inner())),
        (None, Some(f)) => {
            let p = path.parent().unwrap_or(Path::new(".")).join(f.get_ref());
            let text = std::fs::read_to_string(&p).map_err(|e| {
                err(
                    Some(f.span()),
                    Some(&format!("{field}_file")),
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            let meta = std::fs::metadata(&p).map_err(|e| err(Some(f.span()), None, e.to_string()))?;
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
                return Err(err(
                    Some(f.span()),
                    Some(&format!("{field}_file")),
                    format!("{} is readable by others than its owner: chmod 600 it", p.display()),
                ));
            }
            Ok(Some(text.lines().next().unwrap_or("").trim().to_string()))
        }
        (Some(v), Some(_)) => Err(err(
            Some(v.span()),
            Some(field),
            format!("give {field} or {field}_file, not both"),
        )),
        (None, None) => Ok(None),
    }
}

fn crowdsec_settings(raw: RawCrowdsec, path: &Path, err: &ErrorAt<'_>) -> Result<CrowdsecSettings, ConfigError> {
    let (host, port) = crate::crowdsec::Lapi::parse_url(raw.url.get_ref())
        .map_err(|m| err(Some(raw.url.span()), Some("crowdsec.url"), m))?;
    let url_span = raw.url.span();
    let bouncer_key = secret(raw.bouncer_key, raw.bouncer_key_file, "crowdsec.bouncer_key", path, err)?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            err(
                Some(url_span.clone()),
                Some("crowdsec.bouncer_key"),
                "the bouncer key is missing (cscli bouncers add NAME)".into(),
            )
        })?;
    let password = secret(
        raw.machine_password,
        raw.machine_password_file,
        "crowdsec.machine_password",
        path,
        err,
    )?;
    let machine = match (raw.machine_id, password) {
        (Some(id), Some(pw)) => Some((id.into_inner(), pw)),
        (None, None) => None,
        (Some(id), None) => {
            return Err(err(
                Some(id.span()),
                Some("crowdsec.machine_password"),
                "a machine_id needs its password".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                Some(url_span),
                Some("crowdsec.machine_id"),
                "a password needs its machine_id".into(),
            ))
        }
    };
    let mut scopes = vec!["ip".to_string(), "range".to_string()];
    if let Some(list) = raw.scopes {
        scopes = Vec::new();
        for s in list {
            let v = s.get_ref().to_ascii_lowercase();
            if v != "ip" && v != "range" {
                return Err(err(
                    Some(s.span()),
                    Some("crowdsec.scopes"),
                    format!("'{v}' is not \"ip\" or \"range\""),
                ));
            }
            scopes.push(v);
        }
    }
    let origins = raw
        .origins
        .unwrap_or_default()
        .into_iter()
        .map(Spanned::into_inner)
        .collect();
    let pull_interval = match raw.pull_interval {
        Some(v) => parse_duration(v.get_ref()).map_err(|m| err(Some(v.span()), Some("crowdsec.pull_interval"), m))?,
        None => Duration::from_secs(10),
    };
    let push = raw.push.unwrap_or(machine.is_some());
    Ok(CrowdsecSettings {
        lapi: crate::crowdsec::Lapi {
            host,
            port,
            bouncer_key,
            machine,
            scopes,
            origins,
        },
        pull_interval,
        push,
    })
}

/// `[calls]` onto the defaults.
fn apply_calls(raw: RawCalls, out: &mut CallSettings, path: &Path, err: &ErrorAt<'_>) -> Result<(), ConfigError> {
    if let Some(v) = raw.enabled {
        out.enabled = v;
    }
    let mut rules = if raw.high_risk_destinations.unwrap_or(true) {
        high_risk_rules()
    } else {
        Vec::new()
    };
    for (field, list, deny) in [("calls.deny", &raw.deny, true), ("calls.allow", &raw.allow, false)] {
        for v in list.iter().flatten() {
            let digits = prefix_digits(v.get_ref()).map_err(|m| err(Some(v.span()), Some(field), m))?;
            rules.push(DestinationPrefix {
                digits,
                deny,
                origin: field.to_string(),
            });
        }
    }
    for (field, list, deny) in [
        ("calls.deny_files", &raw.deny_files, true),
        ("calls.allow_files", &raw.allow_files, false),
    ] {
        for f in list.iter().flatten() {
            let file = path.parent().unwrap_or(Path::new(".")).join(f.get_ref());
            let text = std::fs::read_to_string(&file).map_err(|e| {
                err(
                    Some(f.span()),
                    Some(field),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let name = file.display().to_string();
            let parsed = parse_prefixes(&text, &name, deny).map_err(|(line, message)| ConfigError {
                file: file.clone(),
                line: Some(line),
                field: None,
                message,
            })?;
            rules.extend(parsed);
        }
    }
    if rules.len() > sipfilter_common::maps::DESTINATIONS_SIZE as usize {
        return Err(err(
            None,
            Some("calls"),
            format!(
                "{} destination rules; at most {}",
                rules.len(),
                sipfilter_common::maps::DESTINATIONS_SIZE
            ),
        ));
    }
    out.rules = rules;
    let plan = &mut out.dial_plan;
    let digits =
        |v: &Spanned<String>, field: &str| plan_digits(v.get_ref()).map_err(|m| err(Some(v.span()), Some(field), m));
    if let Some(v) = &raw.outside_line {
        plan.outside_line = digits(v, "calls.outside_line")?;
    }
    if let Some(list) = &raw.international_prefixes {
        if list.len() > 2 {
            return Err(err(
                Some(list[2].span()),
                Some("calls.international_prefixes"),
                "at most 2 prefixes".into(),
            ));
        }
        plan.international = [Digits::EMPTY; 2];
        for (i, v) in list.iter().enumerate() {
            plan.international[i] = digits(v, "calls.international_prefixes")?;
        }
    }
    if let Some(v) = &raw.country_code {
        plan.country_code = digits(v, "calls.country_code")?;
    }
    if let Some(v) = &raw.trunk_prefix {
        plan.trunk_prefix = digits(v, "calls.trunk_prefix")?;
    }
    if let Some(v) = &raw.calls_to_one_number {
        out.per_number = bounded(v, 0, MAX_CALLS_LIMIT as u64)
            .map_err(|m| err(Some(v.span()), Some("calls.calls_to_one_number"), m))?;
    }
    if let Some(v) = &raw.international_per_minute {
        out.international_per_minute = bounded(v, 0, MAX_CALLS_LIMIT as u64)
            .map_err(|m| err(Some(v.span()), Some("calls.international_per_minute"), m))?;
    }
    if let Some(v) = &raw.window {
        out.window = parse_duration(v.get_ref()).map_err(|m| err(Some(v.span()), Some("calls.window"), m))?;
    }
    Ok(())
}

/// Makes an error at a place in the file: (span, field, message).
type ErrorAt<'a> = dyn Fn(Option<Range<usize>>, Option<&str>, String) -> ConfigError + 'a;

/// `[limits]`-shaped tables: a rate and a burst per class, each bounded.
fn apply_limits(
    limits: RawLimits,
    out: &mut [ClassLimit; 3],
    section: &str,
    err: &ErrorAt<'_>,
) -> Result<(), ConfigError> {
    for (i, (name, class)) in [
        ("register", limits.register),
        ("invite", limits.invite),
        ("other", limits.other),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(class) = class else { continue };
        if let Some(rate) = class.rate {
            let field = format!("{section}.{name}.rate");
            out[i].rate_per_sec = bounded(&rate, 1, MAX_RATE).map_err(|m| err(Some(rate.span()), Some(&field), m))?;
        }
        if let Some(burst) = class.burst {
            let field = format!("{section}.{name}.burst");
            out[i].burst = bounded(&burst, 1, MAX_BURST).map_err(|m| err(Some(burst.span()), Some(&field), m))?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    enabled: Option<bool>,
    stealth: Option<bool>,
    stealth_all: Option<bool>,
    quarantine: Option<bool>,
    withhold_cracked: Option<bool>,
    known_for: Option<Spanned<String>>,
    unknown_limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
    tcp_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    tls_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    websocket_ports: Option<Spanned<Vec<Spanned<i64>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    rate: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    unknown_rate: Option<Spanned<i64>>,
    unknown_burst: Option<Spanned<i64>>,
    known_open: Option<Spanned<i64>>,
    unknown_open: Option<Spanned<i64>>,
    unknown_opaque_open: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    register: Option<RawClass>,
    invite: Option<RawClass>,
    other: Option<RawClass>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    rate: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBan {
    duration: Option<Spanned<String>>,
    max_duration: Option<Spanned<String>>,
    escalation_window: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    ipv6_prefix: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLists {
    allow: Option<Vec<Spanned<String>>>,
    allow_files: Option<Vec<Spanned<String>>>,
    deny: Option<Vec<Spanned<String>>>,
    deny_files: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    interfaces: Option<Vec<Spanned<String>>>,
    mode: Option<Spanned<String>>,
    egress: Option<Spanned<String>>,
    state_file: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    dns_server: Option<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/sipfilter.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        let k = Config::default().kernel_config();
        assert_eq!(k.limits, KernelConfig::default().limits);
    }

    #[test]
    fn the_shipped_example_parses_to_the_defaults() {
        let text = include_str!("../../examples/sipfilter.toml");
        let c = Config::parse(text, Path::new("examples/sipfilter.toml")).unwrap();
        let expected = Config {
            interfaces: vec!["eth0".into()],
            allow: vec!["192.0.2.0/24".parse().unwrap(), "2001:db8:5060::/48".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn transports_and_connection_budgets() {
        let c = parse(
            "[sip]\nports = [5060]\ntcp_ports = [5060, 5070]\ntls_ports = []\nwebsocket_ports = [8088, 8089]\n\
             [connections]\nrate = 30\nburst = 200\nunknown_rate = 3\nunknown_burst = 10\nknown_open = 100\n\
             unknown_open = 4\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(c.tcp_ports, vec![5060, 5070]);
        assert!(c.tls_ports.is_empty());
        assert_eq!(c.websocket_ports, vec![8088, 8089]);
        let k = c.kernel_config();
        use sipfilter_common::config::transport;
        assert_eq!(k.stream_transport(5070u16.to_be()), Some(transport::TCP));
        assert_eq!(k.stream_transport(5061u16.to_be()), None);
        assert_eq!(k.stream_transport(8089u16.to_be()), Some(transport::WEBSOCKET));
        assert_eq!(
            k.connections.flood,
            ClassLimit {
                rate_per_sec: 30,
                burst: 200
            }
        );
        assert_eq!(
            k.connections.unknown,
            ClassLimit {
                rate_per_sec: 3,
                burst: 10
            }
        );
        assert_eq!((k.connections.known_open, k.connections.unknown_open), (100, 4));
        assert_eq!(c.connections.idle_timeout, Duration::from_secs(300));
        // Defaults: TCP 5060, TLS 5061, WebSocket off.
        let k = Config::default().kernel_config();
        assert_eq!(k.stream_transport(5060u16.to_be()), Some(transport::TCP));
        assert_eq!(k.stream_transport(5061u16.to_be()), Some(transport::TLS));
        assert_eq!(k.stream_transport(8088u16.to_be()), None);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        let e =
            parse("[agent]\nmetrics_listen = \"off\"\n\n[limits.invite]\n# burst = 5\nburst = \"ten\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/sipfilter.toml:6: limits.invite.burst: invalid type"),
            "{e}"
        );
        let e = parse("[agent]\ninterfaces = [\n  \"eth0\",\n  7,\n]\n").unwrap_err();
        assert!(
            e.starts_with("/etc/sipfilter.toml:4: agent.interfaces: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn transport_errors_name_line_and_field() {
        let e = parse("[sip]\ntcp_ports = [5060]\ntls_ports = [5061, 5060]\n").unwrap_err();
        assert_eq!(
            e,
            "/etc/sipfilter.toml:3: sip.tls_ports: 5060 is already in sip.tcp_ports: a TCP port carries one transport"
        );
        let e = parse("[sip]\nwebsocket_ports = [8088, 70000]\n").unwrap_err();
        assert_eq!(
            e,
            "/etc/sipfilter.toml:2: sip.websocket_ports: 70000 is not a TCP port (1-65535)"
        );
        let e = parse("[sip]\ntls_ports = [1, 2, 3, 4, 5]\n").unwrap_err();
        assert_eq!(e, "/etc/sipfilter.toml:2: sip.tls_ports: give 0 to 4 ports");
        let e = parse("[connections]\nidle_timeout = \"5s\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/sipfilter.toml:2: connections.idle_timeout: give at least 10s"),
            "{e}"
        );
        let e = parse("[connections]\nburst = 10\nunknown_burst = 30\n").unwrap_err();
        assert!(
            e.starts_with("/etc/sipfilter.toml:3: connections.unknown_burst: 30 is more than"),
            "{e}"
        );
        let e = parse("[sip]\ntcp_ports = [5060, 5060]\n").unwrap_err();
        assert_eq!(e, "/etc/sipfilter.toml:2: sip.tcp_ports: 5060 is listed twice");
    }

    #[test]
    fn every_field() {
        let c = parse(
            r#"
monitor = true
[sip]
ports = [5060, 5080]
[limits.register]
rate = 5
burst = 20
[limits.other]
burst = 10
[ban]
duration = "10m"
max_duration = "1d"
escalation_window = "12h"
scope = "all"
ipv6_prefix = 56
[lists]
allow = ["10.0.0.0/8"]
deny = ["2001:db8:bad::/48", "198.51.100.7"]
[agent]
interfaces = ["eth0", "eth1"]
mode = "generic"
state_file = "/tmp/s.json"
metrics_listen = "off"
"#,
        )
        .unwrap();
        assert!(c.monitor);
        assert_eq!(c.sip_ports, vec![5060, 5080]);
        assert_eq!(
            c.limits[0],
            ClassLimit {
                rate_per_sec: 5,
                burst: 20
            }
        );
        assert_eq!(c.limits[1], defaults::INVITE);
        assert_eq!(
            c.limits[2],
            ClassLimit {
                rate_per_sec: defaults::OTHER.rate_per_sec,
                burst: 10
            }
        );
        assert_eq!(c.ban_duration, Duration::from_secs(600));
        assert_eq!(c.ban_scope, BanScope::All);
        assert_eq!(c.ipv6_prefix, 56);
        assert_eq!(c.deny.len(), 2);
        assert_eq!(c.mode, AttachMode::Generic);
        assert_eq!(c.metrics_listen, None);
        let k = c.kernel_config();
        assert!(k.monitor() && k.scope_all());
        assert!(k.is_sip_port(5080u16.to_be()));
    }

    #[test]
    fn bad_values_name_file_line_field_and_problem() {
        for (text, want) in [
            (
                "[limits.register]\nrate = 0\n",
                "/etc/sipfilter.toml:2: limits.register.rate: 0 is out of range",
            ),
            (
                "[limits.invite]\n\nburst = 2000000\n",
                "/etc/sipfilter.toml:3: limits.invite.burst: 2000000 is out of range",
            ),
            (
                "[sip]\nports = [5060, 70000]\n",
                "/etc/sipfilter.toml:2: sip.ports: 70000 is not a UDP port",
            ),
            (
                "[ban]\nduration = \"5 parsecs\"\n",
                "/etc/sipfilter.toml:2: ban.duration: '5 parsecs' is not a duration",
            ),
            (
                "[ban]\nscope = \"everything\"\n",
                "/etc/sipfilter.toml:2: ban.scope: 'everything' is not one of \"sip\", \"all\"",
            ),
            (
                "[lists]\nallow = [\"10.0.0.0/8\",\n  \"10.1.2.300\"]\n",
                "/etc/sipfilter.toml:3: lists.allow: '10.1.2.300' is not an IPv4 or IPv6 address",
            ),
            (
                "[agent]\nmetrics_listen = \"localhost\"\n",
                "/etc/sipfilter.toml:2: agent.metrics_listen: 'localhost' is not an address:port",
            ),
            ("[limits.register]\nrate = \"fast\"\n", "/etc/sipfilter.toml:2: "),
            ("[limts]\n", "/etc/sipfilter.toml:1: "),
            (
                "[ban]\nduration = \"1h\"\nmax_duration = \"10m\"\n",
                "/etc/sipfilter.toml:3: ban.max_duration: must not be shorter",
            ),
            (
                "[scanners]\nuser_agents = [\"sipcli\",\n \"\"]\n",
                "/etc/sipfilter.toml:3: scanners.user_agents: '': a User-Agent token needs at least 3 characters",
            ),
            (
                "[calls]\ndeny = [\"+232\", \"23x\"]\n",
                "/etc/sipfilter.toml:2: calls.deny: '23x' is not a number prefix",
            ),
            (
                "[calls]\nallow = [\"00232\"]\n",
                "/etc/sipfilter.toml:2: calls.allow: '00232' starts with 0",
            ),
            (
                "[calls]\noutside_line = \"nine\"\n",
                "/etc/sipfilter.toml:2: calls.outside_line: 'nine' is not 1 to 8 digits",
            ),
            (
                "[crowdsec]\nurl = \"https://lapi:8080\"\nbouncer_key = \"k\"\n",
                "/etc/sipfilter.toml:2: crowdsec.url: 'https://lapi:8080' is not an http:// URL",
            ),
            (
                "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\n",
                "/etc/sipfilter.toml:2: crowdsec.bouncer_key: the bouncer key is missing",
            ),
            (
                "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\nbouncer_key = \"k\"\nmachine_id = \"gw\"\n",
                "/etc/sipfilter.toml:4: crowdsec.machine_password: a machine_id needs its password",
            ),
            (
                "[crowdsec]\nurl = \"http://127.0.0.1:8080\"\nbouncer_key = \"k\"\nscopes = [\"country\"]\n",
                "/etc/sipfilter.toml:4: crowdsec.scopes: 'country' is not",
            ),
            (
                "[agent]\ninterfaces = [\"CHANGE-ME\"]\n",
                "/etc/sipfilter.toml:2: agent.interfaces: the packaged placeholder",
            ),
            (
                "[calls]\ncalls_to_one_number = 40\n",
                "/etc/sipfilter.toml:2: calls.calls_to_one_number: 40 is out of range (0-15)",
            ),
        ] {
            let got = parse(text).unwrap_err();
            assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
        }
        assert!(parse("[limts]\n").unwrap_err().contains("limts"));
    }

    #[test]
    fn prefix_files_report_their_own_line_and_allow_wins_for_one_prefix() {
        let dir = std::env::temp_dir().join(format!("sipfilter-prefix-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("premium.txt"), "# premium\n+44 9\n\n1-900 # US\n").unwrap();
        std::fs::write(dir.join("bad.txt"), "232\n+44 9x\n").unwrap();
        let cfg = dir.join("c.toml");
        let c = Config::parse(
            "[calls]\nhigh_risk_destinations = false\ndeny_files = [\"premium.txt\"]\nallow = [\"1900\"]\n",
            &cfg,
        )
        .unwrap();
        let texts: Vec<(String, bool)> = c
            .calls
            .rules
            .iter()
            .map(|r| (r.digits.text().as_str().to_string(), r.deny))
            .collect();
        let want: Vec<(String, bool)> = vec![("1900".into(), false), ("449".into(), true), ("1900".into(), true)];
        assert_eq!(texts, want);
        let entries = crate::request_rules::destination_entries(&c.calls.rules);
        assert_eq!(entries.len(), 2, "one entry per prefix");
        assert!(
            entries.iter().any(|(k, r)| k.prefix_len() == 16 && r.deny == 0),
            "allow wins for one prefix"
        );
        let e = Config::parse("[calls]\ndeny_files = [\"bad.txt\"]\n", &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.txt:2: '+44 9x' is not a number prefix"), "{e}");
        assert!(
            Config::default().calls.rules.len() >= 30,
            "the shipped list is on by default"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn crowdsec_keys_from_root_only_files_and_never_in_debug_output() {
        let dir = std::env::temp_dir().join(format!("sipfilter-cs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("bouncer.key");
        std::fs::write(&key, "secret-bouncer-key\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = dir.join("c.toml");
        let text = "[crowdsec]\nurl = \"http://10.0.0.1:8080\"\nbouncer_key_file = \"bouncer.key\"\n";
        let e = Config::parse(text, &cfg).unwrap_err().to_string();
        assert!(e.contains("readable by others"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(text, &cfg).unwrap();
        let cs = c.crowdsec.as_ref().unwrap();
        assert_eq!(cs.lapi.bouncer_key, "secret-bouncer-key");
        assert_eq!(cs.pull_interval, Duration::from_secs(10));
        assert!(!cs.push, "no machine: pull only");
        assert!(
            !format!("{c:?}").contains("secret-bouncer-key"),
            "the key stays out of debug output"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn list_files_report_their_own_line() {
        let dir = std::env::temp_dir().join(format!("sipfilter-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trunks.txt"), "# trunks\n192.0.2.0/24\n\n203.0.113.9 # pbx\n").unwrap();
        std::fs::write(dir.join("bad.txt"), "192.0.2.0/24\nnot-an-address\n").unwrap();
        let cfg = dir.join("c.toml");
        let c = Config::parse("[lists]\nallow_files = [\"trunks.txt\"]\n", &cfg).unwrap();
        assert_eq!(c.allow.len(), 2);
        let e = Config::parse("[lists]\ndeny_files = [\"bad.txt\"]\n", &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.txt:2: 'not-an-address'"), "{e}");
        let e = Config::parse("[lists]\ndeny_files = [\"missing.txt\"]\n", &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml:2: lists.deny_files:") && e.contains("missing.txt"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
