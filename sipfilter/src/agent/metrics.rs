//! Prometheus metrics: the kernel's counters, bans, and the program's own cost, read from
//! the maps and BPF stats at each scrape. No per-IP labels: a botnet must not be able to
//! blow up the time series.

use prometheus::{Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use sipfilter_common::{
    counters::{ban_reason, AnswerKind},
    Counters, Method, Outcome, Verdict,
};

pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    outcomes: IntCounterVec,
    methods: IntCounterVec,
    bans: IntCounterVec,
    ban_events: IntCounterVec,
    ban_table_full: IntCounter,
    events_lost: IntCounter,
    active_bans: IntGauge,
    list_entries: IntGaugeVec,
    run_seconds: prometheus::Counter,
    runs: IntCounter,
    answers: IntCounterVec,
    cracked: IntCounter,
    promoted: IntCounter,
    withheld: IntCounter,
    suspect: IntCounter,
    withheld_challenges: IntCounter,
    uninspected: IntCounter,
    scanner_matches: IntCounter,
    calls_checked: IntCounter,
    calls_blocked: IntCounterVec,
    requests_uninspected: IntCounter,
    transports: IntCounterVec,
    segments_uninspected: IntCounter,
    open_connections: IntGauge,
    connection_limited: IntGauge,
    allow_name_failures: IntCounter,
    allow_names_stale: IntGauge,
    /// The allowlist-name metrics are exported while names are configured, like CrowdSec's.
    allow_names_exported: bool,
    crowdsec_up: IntGauge,
    crowdsec_last_pull: IntGauge,
    crowdsec_decisions: IntCounterVec,
    crowdsec_pushed: IntCounter,
    state_write_failures: IntCounter,
    known_sources: IntGauge,
    cracked_extensions: IntGauge,
    /// Kernel totals at the previous scrape: counters move by the difference.
    last: Counters,
    last_run_ns: u64,
    last_runs: u64,
}

/// Moves a counter to a kernel total (counters only go up; a smaller total means the maps
/// were recreated, and the new total is all new).
fn sync(counter: &IntCounter, last: u64, now: u64) {
    counter.inc_by(if now >= last { now - last } else { now });
}

impl Metrics {
    /// `fleet`: CrowdSec is configured. Its metrics are exported only then: a
    /// `sipfilter_crowdsec_up 0` of an agent without CrowdSec would fire a generic `up == 0`
    /// alert. The same holds for the allowlist names' (see [`Metrics::allow_names`]).
    pub fn new(fleet: bool) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let cv = |name: &str, help: &str, label: &str| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let packets = cv(
            "sipfilter_packets_total",
            "Packets seen by the XDP program, by action taken.",
            "action",
        )?;
        let outcomes = cv(
            "sipfilter_packet_reasons_total",
            "Packets seen by the XDP program, by the reason for the action.",
            "reason",
        )?;
        let methods = cv(
            "sipfilter_sip_messages_total",
            "SIP messages to the SIP ports, by method (response, unknown for the rest).",
            "method",
        )?;
        let bans = cv(
            "sipfilter_bans_total",
            "Bans the programs created, by reason.",
            "reason",
        )?;
        let ban_events = cv(
            "sipfilter_ban_events_total",
            "Ban events the agent received from the kernel, by reason.",
            "reason",
        )?;
        let ban_table_full = IntCounter::new(
            "sipfilter_ban_table_full_total",
            "Bans that could not be stored because the ban table was full.",
        )?;
        let events_lost = IntCounter::new(
            "sipfilter_ban_events_lost_total",
            "Ban events lost because the ring buffer was full.",
        )?;
        let active_bans = IntGauge::new("sipfilter_active_bans", "Bans in force now.")?;
        let list_entries = IntGaugeVec::new(
            Opts::new(
                "sipfilter_list_entries",
                "Entries in force on the allowlist and denylist.",
            ),
            &["list"],
        )?;
        let run_seconds = prometheus::Counter::new(
            "sipfilter_program_run_seconds_total",
            "Time the XDP program ran (kernel BPF stats).",
        )?;
        let runs = IntCounter::new(
            "sipfilter_program_runs_total",
            "Times the XDP program ran (kernel BPF stats).",
        )?;
        let answers = cv(
            "sipfilter_sip_answers_total",
            "SIP answers leaving from the SIP ports (read by the answers program), by what they say.",
            "kind",
        )?;
        let cracked = IntCounter::new(
            "sipfilter_cracked_total",
            "Extensions found cracked: a 2xx after failures on other extensions.",
        )?;
        let promoted = IntCounter::new(
            "sipfilter_trust_promotions_total",
            "Clean REGISTER successes that made (or kept) a source known.",
        )?;
        let withheld = IntCounter::new(
            "sipfilter_withheld_answers_total",
            "2xx answers withheld from a source that guessed a password.",
        )?;
        let suspect = IntCounter::new(
            "sipfilter_suspect_answers_total",
            "2xx answers withheld once as suspect (nobody banned): a device that moved on from a failed extension at a known source, or failures on other extensions from other devices.",
        )?;
        let withheld_challenges = IntCounter::new(
            "sipfilter_withheld_challenges_total",
            "Challenges and not-found answers withheld: to an unknown source whose challenges go unanswered, or not-founds to a known source's device over its own budget.",
        )?;
        let uninspected = IntCounter::new(
            "sipfilter_uninspected_total",
            "SIP messages whose headers lay beyond the scan bound (passed, not judged).",
        )?;
        let scanner_matches = IntCounter::new(
            "sipfilter_scanner_user_agent_total",
            "Requests whose User-Agent named a scanner (dropped, the source banned).",
        )?;
        let calls_checked = IntCounter::new(
            "sipfilter_calls_checked_total",
            "New calls (not retransmissions) whose dialed number was checked.",
        )?;
        let calls_blocked = cv(
            "sipfilter_calls_blocked_total",
            "Calls blocked by the destination and call-burst rules, by rule kind.",
            "rule",
        )?;
        let requests_uninspected = IntCounter::new(
            "sipfilter_requests_uninspected_total",
            "Requests whose headers or dialed number lay beyond the inspection's bounds (passed).",
        )?;
        let segments_uninspected = IntCounter::new(
            "sipfilter_segments_uninspected_total",
            "TCP data segments to a plain TCP SIP port that start no SIP message (passed, never judged).",
        )?;
        for c in [
            &scanner_matches,
            &calls_checked,
            &requests_uninspected,
            &segments_uninspected,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        let transports = cv(
            "sipfilter_transport_packets_total",
            "Packets to the SIP ports, by transport (udp, tcp, tls, websocket).",
            "transport",
        )?;
        for t in sipfilter_common::config::transport::NAMES {
            transports.with_label_values(&[t]);
        }
        let open_connections = IntGauge::new(
            "sipfilter_open_connections",
            "TCP connections open to the SIP TCP, TLS and WebSocket ports (as the agent last counted them).",
        )?;
        let connection_limited = IntGauge::new(
            "sipfilter_connection_limited_sources",
            "Sources at their open-connection limit (their SYNs are dropped).",
        )?;
        for g in [&open_connections, &connection_limited] {
            registry.register(Box::new(g.clone()))?;
        }
        for v in 1..=3 {
            calls_blocked.with_label_values(&[sipfilter_common::calls::call_verdict::name(v)]);
        }
        let allow_name_failures = IntCounter::new(
            "sipfilter_allow_name_failures_total",
            "Resolutions of allowlist names that failed (the last good addresses were kept).",
        )?;
        let allow_names_stale = IntGauge::new(
            "sipfilter_allow_names_stale",
            "Allowlist names served from their last good answer now (their resolution fails).",
        )?;
        let crowdsec_up = IntGauge::new(
            "sipfilter_crowdsec_up",
            "1 while CrowdSec's Local API answers the pulls (0: down; absent: not configured).",
        )?;
        let crowdsec_last_pull = IntGauge::new(
            "sipfilter_crowdsec_last_success_timestamp_seconds",
            "Unix time of the last pull the Local API answered.",
        )?;
        let crowdsec_decisions = IntCounterVec::new(
            Opts::new(
                "sipfilter_crowdsec_decisions_total",
                "CrowdSec decisions pulled, by what became of them.",
            ),
            &["result"],
        )?;
        let crowdsec_pushed = IntCounter::new(
            "sipfilter_crowdsec_alerts_pushed_total",
            "Kernel bans pushed to the Local API as alerts.",
        )?;
        for r in ["applied", "lifted", "ignored", "refused"] {
            crowdsec_decisions.with_label_values(&[r]);
        }
        let state_write_failures = IntCounter::new(
            "sipfilter_state_write_failures_total",
            "Writes of the state file that failed (a read-only or full state folder); retried every second.",
        )?;
        registry.register(Box::new(state_write_failures.clone()))?;
        if fleet {
            registry.register(Box::new(crowdsec_up.clone()))?;
            registry.register(Box::new(crowdsec_last_pull.clone()))?;
            registry.register(Box::new(crowdsec_pushed.clone()))?;
            registry.register(Box::new(crowdsec_decisions.clone()))?;
        }
        let known_sources = IntGauge::new("sipfilter_known_sources", "Sources known now (earned by registering).")?;
        let cracked_extensions = IntGauge::new(
            "sipfilter_cracked_extensions",
            "Extensions on the cracked list now (until an operator clears them).",
        )?;
        for c in [
            &cracked,
            &promoted,
            &withheld,
            &suspect,
            &withheld_challenges,
            &uninspected,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(known_sources.clone()))?;
        registry.register(Box::new(cracked_extensions.clone()))?;
        for k in AnswerKind::ALL {
            answers.with_label_values(&[k.name()]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("sipfilter_build_info", "sipfilter build, value 1."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [&ban_table_full, &events_lost, &runs] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(active_bans.clone()))?;
        registry.register(Box::new(list_entries.clone()))?;
        registry.register(Box::new(run_seconds.clone()))?;
        registry.register(Box::new(build_info))?;
        // Every label value exists from the start, so dashboards see zeros, not gaps.
        for v in Verdict::ALL {
            packets.with_label_values(&[v.name()]);
        }
        for o in Outcome::ALL {
            outcomes.with_label_values(&[o.name()]);
        }
        for m in Method::ALL {
            methods.with_label_values(&[m.name()]);
        }
        for r in ban_reason::KERNEL {
            bans.with_label_values(&[ban_reason::name(r)]);
            ban_events.with_label_values(&[ban_reason::name(r)]);
        }
        Ok(Metrics {
            registry,
            packets,
            outcomes,
            methods,
            bans,
            ban_events,
            ban_table_full,
            events_lost,
            active_bans,
            list_entries,
            run_seconds,
            runs,
            answers,
            cracked,
            promoted,
            withheld,
            suspect,
            withheld_challenges,
            uninspected,
            scanner_matches,
            calls_checked,
            calls_blocked,
            requests_uninspected,
            transports,
            segments_uninspected,
            open_connections,
            connection_limited,
            allow_name_failures,
            allow_names_stale,
            allow_names_exported: false,
            crowdsec_up,
            crowdsec_last_pull,
            crowdsec_decisions,
            crowdsec_pushed,
            state_write_failures,
            known_sources,
            cracked_extensions,
            last: Counters::default(),
            last_run_ns: 0,
            last_runs: 0,
        })
    }

    pub fn state_write_failed(&self) {
        self.state_write_failures.inc();
    }

    pub fn fleet_up(&self, up: bool) {
        self.crowdsec_up.set(up as i64);
        if up {
            self.fleet_pulled_now();
        }
    }

    fn fleet_pulled_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.crowdsec_last_pull.set(now as i64);
    }

    pub fn fleet_applied(&self, applied: usize, lifted: usize, ignored: usize, refused: usize) {
        self.fleet_pulled_now();
        for (r, n) in [
            ("applied", applied),
            ("lifted", lifted),
            ("ignored", ignored),
            ("refused", refused),
        ] {
            self.crowdsec_decisions.with_label_values(&[r]).inc_by(n as u64);
        }
    }

    pub fn fleet_pushed(&self, n: usize) {
        self.crowdsec_pushed.inc_by(n as u64);
    }

    /// Allowlist names: whether any are configured (their metrics are exported only then),
    /// new failed resolutions, and how many names are stale now.
    pub fn allow_names(&mut self, configured: bool, new_failures: u64, stale: usize) {
        if configured != self.allow_names_exported {
            for m in [
                Box::new(self.allow_name_failures.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(self.allow_names_stale.clone()),
            ] {
                let _ = match configured {
                    true => self.registry.register(m),
                    false => self.registry.unregister(m),
                };
            }
            self.allow_names_exported = configured;
        }
        self.allow_name_failures.inc_by(new_failures);
        self.allow_names_stale.set(stale as i64);
    }

    /// The trust tables' sizes now.
    pub fn trust(&self, known: usize, cracked: usize) {
        self.known_sources.set(known as i64);
        self.cracked_extensions.set(cracked as i64);
    }

    /// The open connections the agent counted, and the sources at their limit.
    pub fn connections(&self, open: usize, limited: usize) {
        self.open_connections.set(open as i64);
        self.connection_limited.set(limited as i64);
    }

    pub fn ban_event(&self, reason: u8) {
        self.ban_events.with_label_values(&[ban_reason::name(reason)]).inc();
    }

    /// Brings every metric up to the kernel's numbers.
    pub fn update(&mut self, c: &Counters, active_bans: usize, allow: usize, deny: usize, run_ns: u64, runs: u64) {
        for v in Verdict::ALL {
            sync(
                &self.packets.with_label_values(&[v.name()]),
                self.last.verdict(v),
                c.verdict(v),
            );
        }
        for o in Outcome::ALL {
            sync(
                &self.outcomes.with_label_values(&[o.name()]),
                self.last.outcome(o),
                c.outcome(o),
            );
        }
        for m in Method::ALL {
            sync(
                &self.methods.with_label_values(&[m.name()]),
                self.last.method(m),
                c.method(m),
            );
        }
        for r in ban_reason::KERNEL {
            let i = ban_reason::slot(r);
            sync(
                &self.bans.with_label_values(&[ban_reason::name(r)]),
                self.last.bans[i],
                c.bans[i],
            );
        }
        for k in AnswerKind::ALL {
            let i = k as usize;
            sync(
                &self.answers.with_label_values(&[k.name()]),
                self.last.answers[i],
                c.answers[i],
            );
        }
        sync(&self.cracked, self.last.cracked, c.cracked);
        sync(&self.promoted, self.last.promoted, c.promoted);
        sync(&self.withheld, self.last.withheld, c.withheld);
        sync(&self.suspect, self.last.suspect, c.suspect);
        sync(
            &self.withheld_challenges,
            self.last.withheld_challenges,
            c.withheld_challenges,
        );
        sync(&self.uninspected, self.last.uninspected, c.uninspected);
        sync(
            &self.scanner_matches,
            self.last.scanner_tokens.iter().sum(),
            c.scanner_tokens.iter().sum(),
        );
        sync(&self.calls_checked, self.last.calls_checked, c.calls_checked);
        for v in 1..=3u32 {
            let i = v as usize - 1;
            sync(
                &self
                    .calls_blocked
                    .with_label_values(&[sipfilter_common::calls::call_verdict::name(v)]),
                self.last.calls_blocked[i],
                c.calls_blocked[i],
            );
        }
        sync(
            &self.requests_uninspected,
            self.last.requests_uninspected,
            c.requests_uninspected,
        );
        for (i, t) in sipfilter_common::config::transport::NAMES.iter().enumerate() {
            sync(
                &self.transports.with_label_values(&[t]),
                self.last.transports[i],
                c.transports[i],
            );
        }
        sync(
            &self.segments_uninspected,
            self.last.segments_uninspected,
            c.segments_uninspected,
        );
        sync(&self.ban_table_full, self.last.ban_table_full, c.ban_table_full);
        sync(&self.events_lost, self.last.events_lost, c.events_lost);
        self.last = *c;
        self.active_bans.set(active_bans as i64);
        self.list_entries.with_label_values(&["allow"]).set(allow as i64);
        self.list_entries.with_label_values(&["deny"]).set(deny as i64);
        let d_ns = if run_ns >= self.last_run_ns {
            run_ns - self.last_run_ns
        } else {
            run_ns
        };
        self.run_seconds.inc_by(d_ns as f64 / 1e9);
        sync(&self.runs, self.last_runs, runs);
        self.last_run_ns = run_ns;
        self.last_runs = runs;
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// An HTTP response for a request head: the metrics for `GET /metrics`, 404 otherwise.
pub fn respond(request_head: &str, body: impl FnOnce() -> String) -> Vec<u8> {
    let first = request_head.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body()),
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "sipfilter agent: metrics at /metrics\n".to_string(),
        ),
        _ => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_string()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
