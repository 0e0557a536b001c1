//! The agent: `sipfilter run` loads and attaches the program, keeps the maps in line with the
//! configuration, sweeps expired bans, keeps the state file, logs ban events and serves
//! metrics; `sipfilter detach` removes the attachment it leaves behind.

pub(crate) mod allow_names;
mod answers_attach;
mod attach;
mod ban_log;
mod ban_watch;
mod carry_over;
mod event_reader;
mod failing_steps;
mod fleet;
mod iface_watch;
mod metrics;
mod notify;
mod prefix_evidence;
mod trust;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use sipfilter::{
    addr::display_source,
    clock,
    config::{AttachMode, Config},
    event_log::{self, Event},
    events,
    filter_maps::ListKind,
    fraud_file::{self, BlockedCall},
    state_file::{self, StateFile},
    Cidr, FilterMaps, Loaded,
};
use sipfilter_common::{maps::BAN_TABLE, maps::PERMANENT};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    signal::unix::{signal, SignalKind},
};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  sipfilter run --iface eth0\n  sipfilter run --config /etc/sipfilter.toml\n  sipfilter run --config /etc/sipfilter.toml --iface eth1 --mode generic\n\nSIGHUP reloads the config file; SIGTERM stops the agent and leaves the filter attached\n(pinned) unless --detach-on-exit is given. `sipfilter detach` removes the attachment."
)]
pub struct RunArgs {
    /// TOML configuration file (see examples/sipfilter.toml); every field has a default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeatable; added to the config's interfaces).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// XDP mode: auto (native, else generic with a warning), native, or generic.
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<AttachMode>,
    /// Metrics address (ADDR:PORT), or "off". Default 127.0.0.1:9460.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub metrics_listen: Option<Listen>,
    /// Where active bans are saved and restored from.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Detach from the interfaces when the agent stops (by default the filter stays).
    #[arg(long)]
    pub detach_on_exit: bool,
}

#[derive(Clone, Debug)]
pub struct Listen(Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("'{s}' is not ADDR:PORT (e.g. 127.0.0.1:9460) or \"off\""))
}

#[derive(clap::Args)]
pub struct DetachArgs {
    /// Interface to detach from; all when omitted.
    #[arg(long = "iface", value_name = "IFACE")]
    pub iface: Option<String>,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("sipfilter: {}", msg.as_ref());
}

/// The configuration file (or defaults) with the command line's overrides.
fn resolve_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    for i in &args.ifaces {
        if !config.interfaces.contains(i) {
            config.interfaces.push(i.clone());
        }
    }
    if let Some(m) = args.mode {
        config.mode = m;
    }
    if let Some(Listen(l)) = &args.metrics_listen {
        config.metrics_listen = *l;
    }
    if let Some(s) = &args.state_file {
        config.state_file = s.clone();
    }
    Ok(config)
}

pub fn run(pin_dir: &Path, args: RunArgs) -> anyhow::Result<()> {
    let config = resolve_config(&args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("sipfilter run must run as root: it loads an XDP program and pins its maps");
    }
    if config.interfaces.is_empty() {
        bail!("no interface to attach to: give --iface IFACE or set [agent] interfaces in the config");
    }
    for i in &config.interfaces {
        if attach::if_index(i).is_none() {
            bail!("interface {i} does not exist");
        }
    }
    // Bind before attaching: a taken port is a configuration error like any other.
    let listener = match config.metrics_listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot serve metrics on {addr}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    // One agent per pin set: a second one would swap its programs in under the first and
    // leave it managing a filter it no longer runs.
    sipfilter::bpffs::prepare_pin_dir(pin_dir)?;
    let _lock = sipfilter::agent_lock::acquire(pin_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        // Installed before anything else, so a SIGHUP or SIGTERM during a long start is
        // queued for the loop instead of killing the agent half-way.
        let signals = Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        };
        let agent = Agent::start(pin_dir, args, config)?;
        agent.serve(listener, signals).await
    })
}

pub fn detach(pin_dir: &Path, args: DetachArgs) -> anyhow::Result<()> {
    let removed = attach::detach(pin_dir, args.iface.as_deref())?;
    for d in &removed {
        answers_attach::detach(pin_dir, &d.iface)?;
    }
    if args.iface.is_none() {
        // Attached nowhere now: the programs' pinned tables go too.
        sipfilter::program_tables::retire(pin_dir, &[])?;
    }
    if removed.is_empty() {
        println!(
            "sipfilter is not attached to any interface (no links pinned under {})",
            pin_dir.join("links").display()
        );
    }
    for d in removed {
        let ids = match (d.link_id, d.prog_id) {
            (Some(l), Some(p)) => format!(" (link {l}, program {p})"),
            _ => String::new(),
        };
        println!("detached sipfilter from {}{ids}", d.iface);
    }
    Ok(())
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

struct Agent {
    pin_dir: PathBuf,
    args: RunArgs,
    config: Config,
    loaded: Loaded,
    metrics: metrics::Metrics,
    state: StateFile,
    /// What was last saved: active bans and CLI list entries.
    saved: (Vec<state_file::SavedBan>, Vec<state_file::SavedListEntry>),
    /// ... and known sources and cracked extensions.
    saved_trust: (Vec<state_file::SavedKnown>, Vec<state_file::SavedCracked>),
    attached: Vec<String>,
    prefix_evidence: prefix_evidence::PrefixEvidence,
    last_aggregate_check: Instant,
    last_calibration: Instant,
    /// When the ban table and lists must be read again.
    ban_watch: ban_watch::BanWatch,
    /// Audit-trail entries waiting to be written (once a second, not one write per ban).
    pending_events: Vec<Event>,
    /// Allowlist entries given as DNS names.
    allow_names: allow_names::AllowNames,
    /// CrowdSec's Local API, when configured: where our bans go.
    fleet: Option<fleet::Fleet>,
    /// The last state-file write failed (logged once until one succeeds).
    state_write_failing: bool,
    /// The attached interfaces, watched for going away and coming back.
    iface_watch: iface_watch::IfaceWatch,
    /// The open-connection table and the marks of sources at their limit.
    connections: sipfilter::connections::ConnectionMaps,
    /// Housekeeping steps failing now, with their error (logged once, and when they recover).
    failing_steps: failing_steps::FailingSteps,
    /// When the bans in `saved` were read (Unix seconds): an operator's lift recorded in the
    /// trail since then is not recorded again.
    saved_at_unix: u64,
    /// When the devices were last read for the state file.
    devices_saved: Option<Instant>,
    _stats: Option<std::os::fd::OwnedFd>,
}

fn ban_reason_name(reason: u8) -> &'static str {
    sipfilter_common::counters::ban_reason::name(reason)
}

/// An audit-trail entry from one of the agent's log lines (`ban source=X reason=…`): the
/// source, and the rest as the detail.
fn trail_entry(kind: &str, line: &str) -> Event {
    let mut source = String::new();
    let mut detail = Vec::new();
    for word in line.split(' ').skip(1) {
        match word.strip_prefix("source=") {
            Some(s) if source.is_empty() => source = s.to_string(),
            _ => detail.push(word),
        }
    }
    // "blocked call source=…": the first word after "blocked" is "call".
    let detail: Vec<&str> = detail.into_iter().filter(|w| *w != "call").collect();
    Event::now(kind, source, detail.join(" "))
}

/// Metrics requests served at once; more are closed at once.
const MAX_SCRAPES: usize = 4;

/// Reads one HTTP request (2 s at most), asks the agent's loop for the metrics text if it is
/// `GET /metrics`, and writes the answer (2 s at most).
async fn serve_scrape(
    mut stream: tokio::net::TcpStream,
    render: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<String>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let request = String::from_utf8_lossy(&head).into_owned();
    let body = if request.starts_with("GET /metrics") {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if render.send(tx).await.is_err() {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(2), rx).await {
            Ok(Ok(body)) => body,
            _ => return,
        }
    } else {
        String::new()
    };
    let response = metrics::respond(&request, || body);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&response)).await;
}

/// How often the IPv6 prefixes' aggregate budgets are checked.
const AGGREGATE_INTERVAL: Duration = Duration::from_secs(3);

/// How often the devices table is read into the state file at most.
const DEVICES_SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// How often the program's jiffies clock is re-measured against CLOCK_BOOTTIME.
const CALIBRATION_INTERVAL: Duration = Duration::from_secs(600);

impl Agent {
    fn start(pin_dir: &Path, args: RunArgs, config: Config) -> anyhow::Result<Agent> {
        // The IPv6 source prefix the pinned bans are keyed by, before the new config replaces
        // it (read while every map is still in place; None when they cannot be opened).
        let pinned_prefix = match pin_dir.join(BAN_TABLE).exists() {
            true => FilterMaps::open_pinned(pin_dir)
                .and_then(|m| m.read_config())
                .ok()
                .map(|c| c.ipv6_prefix_len()),
            false => None,
        };
        // Maps pinned by a version with other layouts cannot be used, nor refused forever (a
        // restart loop, the old program left unmanaged): those are set aside, every other
        // map is kept as it is, and the state file restores the families whose maps are new.
        let restore = carry_over::prepare(pin_dir, log)?;
        let fresh = restore.all();
        let old_prefix = pinned_prefix.filter(|_| !restore.bans);
        let mut loaded = Loaded::load(pin_dir, &config.kernel_config())?;
        let mut config = config;
        if let Some(why) = &loaded.answers_refused {
            log(format!(
                "warning: {why}; running without reading the PBX's answers: no trust tiers, stealth, quarantine or cracked-extension detection (every source gets [limits]); the XDP filter, bans, lists, scanner and call rules work"
            ));
            config.trust.enabled = false;
            loaded.maps.write_config(&config.kernel_config())?;
        }
        loaded.request_rules.write(&config)?;
        // Sources are keyed by the full IPv6 address since the answers/trust version; maps
        // pinned by an older one keyed by prefix are refused by the loader.
        let key_prefix = config.kernel_config().ipv6_prefix_len();
        if let Some(old) = old_prefix.filter(|old| *old != key_prefix) {
            let n = loaded.maps.rekey_ipv6_bans(old, key_prefix)?;
            log(format!("re-keyed {n} IPv6 ban(s) from /{old} to /{key_prefix}"));
        }
        if fresh {
            log(format!("created maps under {}", pin_dir.display()));
        } else {
            log(format!(
                "reusing the maps pinned under {} (what they hold is kept)",
                pin_dir.display()
            ));
        }

        let mut state = match state_file::load(&config.state_file) {
            Ok(s) => s,
            Err(e) => {
                // Keep the unreadable file for a human; start without it rather than not at all.
                let aside = config
                    .state_file
                    .with_extension(format!("corrupt-{}", std::process::id()));
                let _ = std::fs::rename(&config.state_file, &aside);
                log(format!(
                    "warning: {e:#}; moved it to {} and starting without it",
                    aside.display()
                ));
                StateFile::default()
            }
        };
        if restore.lists && !state.lists.is_empty() {
            let (restored, expired) = state_file::restore_lists(&mut loaded.maps, &state.lists)?;
            log(format!(
                "restored {restored} allow/deny entr(ies) added with the CLI ({expired} had expired)"
            ));
        }
        reconcile_lists(&mut loaded, &config, &mut state)?;
        if !config.monitor {
            lift_monitor_bans(&mut loaded)?;
        }
        if restore.trust {
            trust::restore(&mut loaded, &config, &state)?;
        }
        if restore.devices && !state.devices.is_empty() {
            let (n, expired) =
                state_file::restore_devices(pin_dir, key_prefix, config.trust.known_for, &state.devices)?;
            log(format!(
                "restored {n} device(s) from {} ({expired} had expired)",
                config.state_file.display()
            ));
        }
        // Quarantine back on (if anything is cracked) before the program is attached.
        trust::upkeep(&mut loaded, &config)?;
        if restore.bans && !state.bans.is_empty() {
            let r = state_file::restore(&mut loaded.maps, &state.bans)?;
            log(format!(
                "restored {} ban(s) from {} ({} had expired, {} are allowlisted now)",
                r.restored,
                config.state_file.display(),
                r.expired,
                r.allowlisted
            ));
        }
        carry_over::restored(pin_dir)?;

        // This load's tail-call tables, pinned before its programs are attached: from the
        // moment they run, a stop or crash of the agent leaves them whole.
        let generation = loaded.program()?.info()?.id();
        sipfilter::program_tables::pin(&loaded.ebpf, pin_dir, generation, loaded.answers_refused.is_none())?;
        let mut attached = Vec::new();
        for iface in &config.interfaces {
            let a = attach::attach(loaded.program_mut()?, pin_dir, iface, config.mode)?;
            if a.adopted {
                log(format!(
                    "took over the attachment on {} (no gap: the new program was swapped in)",
                    a.iface
                ));
            } else {
                log(format!(
                    "attached to {} in {} mode (link pinned at {})",
                    a.iface,
                    a.mode,
                    attach::link_pin(pin_dir, iface).display()
                ));
            }
            if loaded.answers_refused.is_none() {
                let answers = loaded.answers_program_mut()?;
                let e = answers_attach::attach(answers, pin_dir, iface, config.egress)?;
                log(format!(
                    "{} the answers program on the egress of {iface} ({})",
                    if e.adopted { "took over" } else { "attached" },
                    e.path
                ));
            } else if answers_attach::detach(pin_dir, iface)? {
                // An earlier load's answers program would go on judging with this load's
                // maps and a configuration that says the answers are not read.
                log(format!(
                    "detached an earlier load's answers program from the egress of {iface}"
                ));
            }
            attached.push(a.iface);
        }
        // The previous loads' programs are no longer attached anywhere: free them.
        // (A load still attached elsewhere, to an interface this configuration no longer
        // names, keeps its tables.)
        let mut keep = attach::attached_program_ids(pin_dir);
        keep.push(generation);
        match sipfilter::program_tables::retire(pin_dir, &keep) {
            Ok(0) => {}
            Ok(n) => log(format!("retired the programs of {n} earlier load(s)")),
            Err(e) => log(format!("warning: cannot retire the earlier loads' programs: {e:#}")),
        }
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        let config_state_file = config.state_file.clone();
        let fleet_configured = config.crowdsec.is_some();
        let watch = iface_watch::IfaceWatch::new(&attached);
        let mut agent = Agent {
            pin_dir: pin_dir.to_owned(),
            args,
            config,
            loaded,
            metrics: metrics::Metrics::new(fleet_configured)?,
            state,
            saved: (Vec::new(), Vec::new()),
            saved_trust: (Vec::new(), Vec::new()),
            attached,
            prefix_evidence: Default::default(),
            last_aggregate_check: Instant::now(),
            last_calibration: Instant::now(),
            ban_watch: Default::default(),
            pending_events: Vec::new(),
            allow_names: allow_names::AllowNames::load(&config_state_file),
            fleet: None,
            state_write_failing: false,
            iface_watch: watch,
            connections: sipfilter::connections::ConnectionMaps::open_pinned(pin_dir)?,
            failing_steps: Default::default(),
            saved_at_unix: 0,
            devices_saved: None,
            _stats: stats,
        };
        // Where this agent's files are, for the CLI (`events`, and the trail entries of its
        // changes), named under the pins it manages.
        sipfilter::agent_record::record_state_file(pin_dir, &agent.config.state_file)?;
        agent.refresh_allow_names(true);
        agent.save_state_if_changed(true)?;
        Ok(agent)
    }

    async fn serve(mut self, listener: Option<std::net::TcpListener>, mut signals: Signals) -> anyhow::Result<()> {
        let mut bans = event_reader::spawn("ban-events", self.loaded.take_ban_events()?, events::decode)?;
        let mut calls = event_reader::spawn(
            "call-events",
            self.loaded.take_call_events()?,
            events::decode_as::<sipfilter_common::calls::CallEvent>,
        )?;
        let mut fleet_news = match &self.config.crowdsec {
            Some(settings) => {
                let (fleet, news) = fleet::Fleet::start(settings)?;
                self.fleet = Some(fleet);
                log(format!(
                    "crowdsec: pulling decisions from http://{}:{} every {}s{}",
                    settings.lapi.host,
                    settings.lapi.port,
                    settings.pull_interval.as_secs(),
                    if settings.push && settings.lapi.machine.is_some() {
                        ", pushing our bans"
                    } else {
                        ""
                    }
                ));
                Some(news)
            }
            None => None,
        };
        let listener = match listener {
            Some(l) => Some(tokio::net::TcpListener::from_std(l)?),
            None => None,
        };
        let (render_tx, mut render_rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<String>>(8);
        let scrape_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let metrics_at = match self.config.metrics_listen {
            Some(a) => format!("metrics at http://{a}/metrics"),
            None => "metrics off".to_string(),
        };
        log(format!(
            "ready: filtering SIP on {} ({metrics_at})",
            self.attached.join(", ")
        ));
        notify::notify(&format!(
            "READY=1\nSTATUS=filtering SIP on {}",
            self.attached.join(", ")
        ));

        loop {
            tokio::select! {
                Some(e) = bans.recv() => {
                    self.on_ban_event(&e);
                    // Everything else already waiting, before anything else gets a turn.
                    while let Ok(e) = bans.try_recv() {
                        self.on_ban_event(&e);
                    }
                }
                Some(news) = async {
                    match &mut fleet_news {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.on_fleet_news(news),
                Some(e) = calls.recv() => {
                    let mut blocked = vec![e];
                    while let Ok(e) = calls.try_recv() {
                        blocked.push(e);
                    }
                    self.on_blocked_calls(&blocked);
                }
                accepted = async {
                    match &listener {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok((stream, _)) = accepted {
                        // Each client is served by its own task: a slow or silent one cannot
                        // hold up ban events, sweeping or the state file. At most a few at once.
                        if let Ok(permit) = scrape_slots.clone().try_acquire_owned() {
                            tokio::spawn(serve_scrape(stream, render_tx.clone(), permit));
                        }
                    }
                }
                Some(reply) = render_rx.recv() => {
                    let _ = reply.send(self.render_metrics());
                }
                _ = tick.tick() => self.housekeeping(),
                _ = signals.hup.recv() => self.reload(),
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
            }
        }
        self.stop()
    }

    fn on_ban_event(&mut self, e: &sipfilter_common::BanEvent) {
        if let Some(alert) = ban_log::suspect_line(e) {
            // Not a ban: one 2xx withheld.
            log(&alert);
            self.pending_events.push(Event::now(
                "suspect",
                display_source(&e.source, 128),
                alert.trim_start_matches("SUSPECT ").to_string(),
            ));
            self.metrics.ban_event(e.reason);
            return;
        }
        self.ban_watch.ban_event();
        let line = ban_log::ban_line(e, self.config.ipv6_prefix);
        log(&line);
        self.pending_events.push(trail_entry("ban", &line));
        if let Some(alert) = ban_log::cracked_line(e) {
            log(&alert);
            self.pending_events.push(Event::now(
                "cracked",
                display_source(&e.source, 128),
                alert.trim_start_matches("CRACKED ").to_string(),
            ));
        }
        self.metrics.ban_event(e.reason);
        if e.monitor == 0 {
            if let Some(fleet) = &self.fleet {
                fleet.push(sipfilter::crowdsec::BanAlert {
                    value: display_source(&e.source, 128),
                    range: false,
                    reason: ban_reason_name(e.reason).to_string(),
                    duration_secs: e.duration_ns / 1_000_000_000,
                });
            }
            let policy = self.prefix_policy();
            if let Some(prefix) = self
                .prefix_evidence
                .on_ban(&e.source, e.reason, &policy, Instant::now())
            {
                self.ban_prefix(&prefix, "several of its addresses were banned");
            }
        }
    }

    /// What the CrowdSec thread reports: decisions to apply, and changes of its state.
    fn on_fleet_news(&mut self, news: fleet::News) {
        match news {
            fleet::News::Pulled(stream, took) => {
                if stream.new.is_empty() && stream.deleted.is_empty() {
                    self.metrics.fleet_applied(0, 0, 0, 0);
                    return;
                }
                let started = Instant::now();
                let a = fleet::apply(&mut self.loaded.maps, &stream);
                self.ban_watch.ban_event();
                self.metrics
                    .fleet_applied(a.bans + a.ranges, a.lifted, a.ignored, a.refused);
                log(format!(
                    "crowdsec: {} ban(s), {} range(s), {} lifted, {} ignored (not bans), {} refused (allowlisted) — pulled in {} ms, applied in {} ms",
                    a.bans,
                    a.ranges,
                    a.lifted,
                    a.ignored,
                    a.refused,
                    took.as_millis(),
                    started.elapsed().as_millis()
                ));
            }
            fleet::News::Up => {
                self.metrics.fleet_up(true);
                log("crowdsec: the Local API answers");
            }
            fleet::News::Down(why) => {
                self.metrics.fleet_up(false);
                log(format!(
                    "crowdsec: the Local API does not answer ({why}); filtering goes on with what is in force, retrying"
                ));
            }
            fleet::News::Pushed(n) => self.metrics.fleet_pushed(n),
            fleet::News::PushFailed(why) => log(format!("crowdsec: cannot push bans yet ({why}); they wait")),
            fleet::News::QueueFull(n) => log(format!("crowdsec: push queue full, {n} ban(s) not sent")),
        }
    }

    /// Logs each blocked call (source, caller, number) and records it for `sipfilter fraud list`.
    fn on_blocked_calls(&mut self, events: &[sipfilter_common::calls::CallEvent]) {
        let calls: Vec<BlockedCall> = events.iter().map(BlockedCall::from_event).collect();
        for c in &calls {
            let line = c.log_line();
            log(&line);
            self.pending_events.push(trail_entry("blocked_call", &line));
        }
        let path = fraud_file::path_for(&self.config.state_file);
        if let Err(e) = fraud_file::append(&path, &calls) {
            log(format!("warning: cannot record blocked calls: {e:#}"));
        }
    }

    /// Attaches again to an interface that was deleted and re-created (the kernel ended the
    /// old attachment with the old interface).
    fn watch_interfaces(&mut self) {
        for (iface, change) in self.iface_watch.changes() {
            match change {
                iface_watch::Change::Gone => log(format!(
                    "{iface} is gone (its attachment ended with it); attaching again when it comes back"
                )),
                iface_watch::Change::Back(index) => {
                    let attached = (|| -> anyhow::Result<()> {
                        attach::attach(self.loaded.program_mut()?, &self.pin_dir, &iface, self.config.mode)?;
                        // Without its answers programs (the kernel refused them) this load
                        // reads no answers: nothing to attach on egress.
                        if self.loaded.answers_refused.is_none() {
                            answers_attach::attach(
                                self.loaded.answers_program_mut()?,
                                &self.pin_dir,
                                &iface,
                                self.config.egress,
                            )?;
                        }
                        Ok(())
                    })();
                    match attached {
                        Ok(()) => log(format!(
                            "{iface} is back (index {index}): attached again, ingress and egress"
                        )),
                        Err(e) => {
                            log(format!("warning: {iface} is back but cannot be attached yet: {e:#}"));
                            self.iface_watch.retry(&iface);
                        }
                    }
                }
            }
        }
    }

    /// Keeps going when the state folder cannot be written (read-only, full): one log line
    /// when it starts failing and one when it works again, a metric for every failure, and the
    /// next tick tries again with the tables read afresh. The filter never depends on it.
    fn state_written(&mut self, result: anyhow::Result<()>) {
        match result {
            Ok(()) => {
                if self.state_write_failing {
                    self.state_write_failing = false;
                    log(format!("writing {} again", self.config.state_file.display()));
                }
            }
            Err(e) => {
                self.metrics.state_write_failed();
                self.ban_watch.ban_event();
                if !self.state_write_failing {
                    self.state_write_failing = true;
                    log(format!(
                        "warning: cannot write the state file ({e:#}); filtering goes on, bans are kept in the kernel, retrying every second"
                    ));
                }
            }
        }
    }

    /// Resolves the allowlist's names that are due (all of them when `all`: at start and on
    /// reload) and writes what they stand for now.
    fn refresh_allow_names(&mut self, all: bool) {
        if self.config.allow_names.is_empty() && !all {
            return;
        }
        let before = self.allow_names.failures;
        let lines = self.allow_names.refresh(&mut self.loaded.maps, &self.config, all);
        for l in &lines {
            log(l);
        }
        self.metrics.allow_names(
            !self.config.allow_names.is_empty(),
            self.allow_names.failures - before,
            self.allow_names.stale(),
        );
        if (!lines.is_empty() || all) && !(self.config.allow_names.is_empty() && lines.is_empty()) {
            if let Err(e) = self.allow_names.save(&self.config.state_file) {
                log(format!("warning: cannot write the allowlist names: {e:#}"));
            }
        }
    }

    /// Writes the waiting audit-trail entries (`sipfilter events`).
    fn flush_events(&mut self) {
        if self.pending_events.is_empty() {
            return;
        }
        let path = event_log::path_for(&self.config.state_file);
        match event_log::append(&path, &self.pending_events) {
            Ok(()) => self.pending_events.clear(),
            Err(e) => {
                // Kept for the next try (bounded: the oldest go first), said once per outage
                // together with the state file.
                if !self.state_write_failing {
                    log(format!("warning: cannot write the audit trail: {e:#}"));
                }
                let excess = self.pending_events.len().saturating_sub(100_000);
                self.pending_events.drain(..excess);
            }
        }
    }

    fn prefix_policy(&self) -> prefix_evidence::Policy {
        let k = self.config.kernel_config();
        prefix_evidence::Policy {
            prefix_len: self.config.ipv6_prefix,
            ban_after: k.trust.prefix_ban_after,
            window: self.config.escalation_window,
            limits: self.config.limits,
        }
    }

    /// Bans a whole IPv6 prefix: a timed denylist entry (an allowlisted address inside it
    /// still passes: the allowlist comes first).
    fn ban_prefix(&mut self, prefix: &Cidr, why: &str) {
        // A prefix ban already in force is neither made nor logged again.
        let now = clock::boot_ns();
        match self.loaded.maps.list(ListKind::Deny) {
            Ok(deny) if deny.iter().any(|(c, e)| c == prefix && e.expires_ns > now) => return,
            Ok(_) => {}
            Err(e) => log(format!("warning: cannot read the denylist: {e:#}")),
        }
        if self.config.monitor {
            log(format!("would ban source={prefix} reason=prefix ({why}; monitor mode)"));
            return;
        }
        let until = clock::boot_ns().saturating_add(self.config.ban_duration.as_nanos() as u64);
        match self.loaded.maps.list_add_for(
            ListKind::Deny,
            prefix,
            until,
            u32::from(sipfilter_common::counters::ban_reason::PREFIX),
        ) {
            Ok(_) => {
                let line = format!(
                    "ban source={prefix} reason=prefix duration={}s ({why})",
                    self.config.ban_duration.as_secs()
                );
                log(&line);
                self.pending_events.push(trail_entry("ban", &line));
                self.metrics.ban_event(sipfilter_common::counters::ban_reason::PREFIX);
            }
            Err(e) => log(format!("warning: cannot ban {prefix}: {e:#}")),
        }
    }

    /// The metrics text, brought up to date with the maps.
    fn render_metrics(&mut self) -> String {
        if let Err(e) = self.refresh_metrics() {
            log(format!("warning: metrics may be stale: {e:#}"));
        }
        self.metrics.encode()
    }

    fn refresh_metrics(&mut self) -> anyhow::Result<()> {
        let maps = &self.loaded.maps;
        let counters = maps.counters()?;
        let now = clock::boot_ns();
        let active = maps.bans()?.iter().filter(|(_, b)| b.expires_ns > now).count();
        let allow = maps
            .list(ListKind::Allow)?
            .iter()
            .filter(|(_, e)| e.expires_ns > now)
            .count();
        let deny = maps
            .list(ListKind::Deny)?
            .iter()
            .filter(|(_, e)| e.expires_ns > now)
            .count();
        let known = self
            .loaded
            .trust
            .known_sources()?
            .iter()
            .filter(|(_, k)| k.until_ns > now)
            .count();
        self.metrics.trust(known, self.loaded.trust.cracked()?.len());
        let info = self.loaded.program()?.info()?;
        self.metrics.update(
            &counters,
            active,
            allow,
            deny,
            info.run_time().as_nanos() as u64,
            info.run_count(),
        );
        Ok(())
    }

    /// Every second: sweep expired bans, keep the state file current, recalibrate the clock now
    /// and then. Each step stands on its own: one that fails is logged and the others still
    /// run (a denylist that cannot be read must not stop the state file or the trail).
    fn housekeeping(&mut self) {
        let read_tables = self.step("sweeping expired bans", Agent::sweep_expired).unwrap_or(true);
        self.step("checking the IPv6 prefixes' aggregate budgets", Agent::check_aggregates);
        self.step("expiring known sources and switching quarantine", |a| {
            trust::upkeep(&mut a.loaded, &a.config)
        });
        self.step("the open-connection limit", Agent::connection_upkeep);
        self.watch_interfaces();
        self.refresh_allow_names(false);
        let saved = self.save_state(false, read_tables);
        self.state_written(saved);
        self.flush_events();
        self.step("recalibrating the program's clock", Agent::recalibrate);
        self.step("recording the round for `sipfilter status`", |a| {
            sipfilter::agent_record::housekeeping_done(&a.pin_dir)
        });
    }

    /// Runs one housekeeping step; its failure is logged when it starts (or its error changes)
    /// and when it works again, not every second.
    fn step<T>(&mut self, what: &'static str, f: impl FnOnce(&mut Agent) -> anyhow::Result<T>) -> Option<T> {
        let result = f(self);
        if let Some(line) = self.failing_steps.outcome(what, result.as_ref().err()) {
            log(line);
        }
        result.ok()
    }

    /// Sweeps expired bans and list entries when due; whether the tables were read.
    fn sweep_expired(&mut self) -> anyhow::Result<bool> {
        let generation = self.loaded.maps.read_config()?.generation;
        let read_tables = self.ban_watch.due(clock::boot_ns(), generation);
        if read_tables {
            let sweep = self.loaded.maps.sweep()?;
            for key in &sweep.lifted {
                self.pending_events
                    .push(Event::now("lift", display_source(key, 128), "reason=expired"));
            }
            let generation = self.loaded.maps.read_config()?.generation;
            self.ban_watch.read(generation, sweep.next_expiry_ns);
        }
        Ok(read_tables)
    }

    /// Reading every rate-state slot is a syscall each: the prefixes' aggregate budgets are
    /// checked every few seconds, not every second.
    fn check_aggregates(&mut self) -> anyhow::Result<()> {
        if self.last_aggregate_check.elapsed() < AGGREGATE_INTERVAL {
            return Ok(());
        }
        self.last_aggregate_check = Instant::now();
        let policy = self.prefix_policy();
        let states = self.loaded.maps.rate_states()?;
        for prefix in self
            .prefix_evidence
            .on_tick(&states, &policy, Instant::now(), clock::boot_ns())
        {
            if self
                .loaded
                .maps
                .allowlist_match(&sipfilter::addr::source_key(prefix.addr, 128))?
                .is_none()
            {
                self.ban_prefix(&prefix, "its addresses together exceeded its aggregate budget");
            }
        }
        Ok(())
    }

    fn recalibrate(&mut self) -> anyhow::Result<()> {
        if self.last_calibration.elapsed() < CALIBRATION_INTERVAL {
            return Ok(());
        }
        self.last_calibration = Instant::now();
        let (ns_per_jiffy, offset) = self.loaded.calibrate_clock()?;
        let mut k = self.loaded.maps.read_config()?;
        k.ns_per_jiffy = ns_per_jiffy;
        k.jiffies_offset_ns = offset;
        self.loaded.maps.write_config(&k)
    }

    /// Every second: the open-connection limit (see `sipfilter::connections`). A source's limit
    /// is its tier's: known (a registered office) or unknown; allowlisted sources never reach
    /// the check.
    fn connection_upkeep(&mut self) -> anyhow::Result<()> {
        let limits = self.config.connections.limits;
        let now = clock::boot_ns();
        let trust = &self.loaded.trust;
        let trust_on = self.config.trust.enabled;
        let kernel = self.loaded.maps.read_config()?;
        let mask = kernel.ipv6_mask_be;
        let opaque_open = self.config.connections.unknown_opaque_open;
        // TLS and WebSocket ports (server side, host order).
        let opaque = |port: u16| {
            let be = port.to_be();
            kernel.tls_ports_be.contains(&be) || kernel.websocket_ports_be.contains(&be)
        };
        let known_limit = sipfilter::connections::Limit {
            plain: limits.known_open,
            opaque: 0,
        };
        let u = self
            .connections
            .upkeep(self.config.connections.idle_timeout, now, mask, opaque, |k| {
                // Without trust tiers every source is judged as a known one (as the program does).
                if !trust_on {
                    return known_limit;
                }
                match trust.known(k) {
                    Ok(Some(known)) if known.until_ns > now => known_limit,
                    _ => sipfilter::connections::Limit {
                        plain: limits.unknown_open,
                        opaque: opaque_open,
                    },
                }
            })?;
        for (key, open) in &u.newly_limited {
            let line = format!(
                "limit source={} rule=open-connections open={open} (new connections dropped until some close)",
                display_source(key, 128)
            );
            log(&line);
            self.pending_events.push(trail_entry("connection_limit", &line));
        }
        self.metrics.connections(u.open, u.limited);
        Ok(())
    }

    /// Writes the state file when the active bans or the CLI's list entries changed (or when
    /// `force`).
    fn save_state_if_changed(&mut self, force: bool) -> anyhow::Result<()> {
        self.save_state(force, true)
    }

    /// [`Agent::save_state_if_changed`]; `read_tables` false: the bans and list entries are
    /// those last saved (nothing changed them, see `ban_watch`), only trust is read.
    fn save_state(&mut self, force: bool, read_tables: bool) -> anyhow::Result<()> {
        let maps = &self.loaded.maps;
        let (bans, lists) = if read_tables || force {
            (
                state_file::snapshot(maps)?,
                state_file::snapshot_lists(maps, &self.state.managed_allow, &self.state.managed_deny)?,
            )
        } else {
            self.saved.clone()
        };
        // Ends are re-derived from two clocks each time and wobble by a millisecond or two;
        // compare at whole seconds so an unchanged set is not rewritten every second.
        let seconds = |b: &[state_file::SavedBan], l: &[state_file::SavedListEntry]| {
            let b: Vec<_> = b
                .iter()
                .map(|x| (x.source, x.expires_unix_ms.map(|m| m / 1000), x.strike))
                .collect();
            let l: Vec<_> = l
                .iter()
                .map(|x| (x.list.clone(), x.cidr.clone(), x.expires_unix_ms.map(|m| m / 1000)))
                .collect();
            (b, l)
        };
        let (known, cracked) = state_file::snapshot_trust(&self.loaded.trust)?;
        let trust_seconds = |k: &[state_file::SavedKnown], c: &[state_file::SavedCracked]| {
            let k: Vec<_> = k.iter().map(|x| (x.source, x.until_unix_ms / 1000)).collect();
            let c: Vec<_> = c.iter().map(|x| x.extension.clone()).collect();
            (k, c)
        };
        if !force
            && seconds(&bans, &lists) == seconds(&self.saved.0, &self.saved.1)
            && trust_seconds(&known, &cracked) == trust_seconds(&self.saved_trust.0, &self.saved_trust.1)
        {
            return Ok(());
        }
        if read_tables || force {
            // Bans gone from the table before their end: lifted by an operator (`ban del`,
            // an allowlist entry covering them), not by expiry (the sweep reports those).
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let current: std::collections::HashSet<_> = bans.iter().map(|b| b.source).collect();
            let removed: Vec<_> = self
                .saved
                .0
                .iter()
                .filter(|b| !current.contains(&b.source))
                .filter(|b| b.expires_unix_ms.is_none_or(|end| end > now_ms + 1000))
                .map(|b| b.source)
                .collect();
            if !removed.is_empty() {
                // The CLI records its own lifts (with their origin); the others (bpftool, a
                // CrowdSec deletion, the configuration's allowlist) are recorded here.
                let by_cli = self.lifted_by_cli_since(self.saved_at_unix.saturating_sub(1));
                for gone in removed.into_iter().filter(|s| !by_cli.contains(s)) {
                    self.pending_events
                        .push(Event::now("lift", gone.to_string(), "reason=removed"));
                }
            }
            self.saved_at_unix = now_ms / 1000;
        }
        self.state.bans = bans.clone();
        self.state.lists = lists.clone();
        self.state.known = known.clone();
        self.state.cracked = cracked.clone();
        // The devices: a large table read whole, so at most once a minute (and at a forced
        // save), and never at the cost of the bans' save.
        if force || self.devices_saved.is_none_or(|t| t.elapsed() >= DEVICES_SAVE_INTERVAL) {
            match state_file::snapshot_devices(&self.pin_dir, self.config.trust.known_for) {
                Ok(d) => {
                    self.state.devices = d;
                    self.devices_saved = Some(Instant::now());
                }
                Err(e) => log(format!("warning: cannot read the devices for the state file: {e:#}")),
            }
        }
        state_file::save(&self.config.state_file, &self.state)?;
        self.saved = (bans, lists);
        self.saved_trust = (known, cracked);
        Ok(())
    }

    /// The sources whose lift the CLI recorded in the trail since `since` (Unix seconds).
    fn lifted_by_cli_since(&self, since: u64) -> std::collections::HashSet<std::net::IpAddr> {
        let path = event_log::path_for(&self.config.state_file);
        let events = match event_log::read(&path) {
            Ok((events, _)) => events,
            Err(e) => {
                log(format!("warning: {e:#}"));
                Vec::new()
            }
        };
        events
            .into_iter()
            .rev()
            .take_while(|e| e.time >= since)
            .filter(|e| e.event == "lift" && e.origin == event_log::ORIGIN_CLI)
            .filter_map(|e| e.source.parse().ok())
            .collect()
    }

    fn reload(&mut self) {
        notify::notify("RELOADING=1");
        self.apply_reload();
        notify::notify("READY=1");
    }

    fn apply_reload(&mut self) {
        let Some(path) = self.args.config.clone() else {
            log("SIGHUP: no --config file to reload");
            return;
        };
        let new = match resolve_config(&self.args) {
            Ok(c) => c,
            Err(e) => {
                log(format!("reload failed, keeping the running configuration: {e:#}"));
                return;
            }
        };
        let mut new = new;
        if self.loaded.answers_refused.is_some() {
            // No answers program: the tiers stay off (see `start`).
            new.trust.enabled = false;
        }
        if new.ipv6_prefix != self.config.ipv6_prefix {
            log(format!(
                "reload failed, keeping the running configuration: ban.ipv6_prefix changed (/{} to /{}), which re-keys every IPv6 ban and bucket; restart the agent to apply it",
                self.config.ipv6_prefix, new.ipv6_prefix
            ));
            return;
        }
        let applied = (|| -> anyhow::Result<()> {
            let k = trust::carry_quarantine(&self.loaded, new.kernel_config())?;
            self.loaded.maps.write_config(&k)?;
            self.loaded.request_rules.write(&new)?;
            if self.config.monitor && !new.monitor {
                lift_monitor_bans(&mut self.loaded)?;
            }
            let mut state = self.state.clone();
            reconcile_lists(&mut self.loaded, &new, &mut state)?;
            self.state = state;
            Ok(())
        })();
        if let Err(e) = applied {
            log(format!("reload failed while applying {}: {e:#}", path.display()));
            return;
        }
        for (what, changed) in [
            ("interfaces", new.interfaces != self.config.interfaces),
            ("agent.mode", new.mode != self.config.mode),
            ("agent.metrics_listen", new.metrics_listen != self.config.metrics_listen),
            ("agent.state_file", new.state_file != self.config.state_file),
        ] {
            if changed {
                log(format!("note: a change to {what} takes effect when the agent restarts"));
            }
        }
        let keep_state_file = self.config.state_file.clone();
        self.config = Config {
            state_file: keep_state_file,
            ..new
        };
        // Names are resolved again on every reload (and names dropped from the file removed).
        self.refresh_allow_names(true);
        log(format!(
            "reloaded {}: thresholds and lists updated, bans and buckets kept",
            path.display()
        ));
        if let Err(e) = self.save_state_if_changed(true) {
            log(format!("warning: {e:#}"));
        }
    }

    fn stop(mut self) -> anyhow::Result<()> {
        notify::notify("STOPPING=1");
        self.flush_events();
        self.save_state_if_changed(true)?;
        if self.args.detach_on_exit {
            for iface in &self.attached {
                for d in attach::detach(&self.pin_dir, Some(iface))? {
                    log(format!("detached from {}", d.iface));
                }
                answers_attach::detach(&self.pin_dir, iface)?;
            }
            let keep = attach::attached_program_ids(&self.pin_dir);
            if let Err(e) = sipfilter::program_tables::retire(&self.pin_dir, &keep) {
                log(format!("warning: cannot retire the programs' tables: {e:#}"));
            }
        } else {
            log(format!(
                "stopping; the filter stays attached to {} (`sipfilter detach` removes it)",
                self.attached.join(", ")
            ));
        }
        Ok(())
    }
}

/// Monitor mode is over: its bans were never enforced, and are not now.
fn lift_monitor_bans(loaded: &mut Loaded) -> anyhow::Result<()> {
    let n = loaded.maps.lift_monitor_bans()?;
    if n > 0 {
        log(format!(
            "monitor mode is off: lifted {n} ban(s) recorded while it was on (they dropped nothing)"
        ));
    }
    Ok(())
}

/// Makes the maps' lists match the configuration's: adds every configured entry, removes
/// the entries an earlier configuration installed that this one no longer has, and leaves
/// entries added with the CLI alone.
fn reconcile_lists(loaded: &mut Loaded, config: &Config, state: &mut StateFile) -> anyhow::Result<()> {
    for (kind, wanted, managed) in [
        (ListKind::Allow, &config.allow, &mut state.managed_allow),
        (ListKind::Deny, &config.deny, &mut state.managed_deny),
    ] {
        let wanted_set: BTreeSet<String> = wanted.iter().map(Cidr::to_string).collect();
        for old in managed.iter().filter(|o| !wanted_set.contains(*o)) {
            if let Ok(cidr) = old.parse::<Cidr>() {
                if loaded.maps.list_remove(kind, &cidr)? {
                    log(format!(
                        "removed {old} from the {} (no longer in the config)",
                        kind.map_name()
                    ));
                }
            }
        }
        for cidr in wanted {
            let lifted = loaded.maps.list_add(kind, cidr, PERMANENT)?;
            for key in lifted {
                log(format!(
                    "lifted the ban on {} (allowlisted by {cidr})",
                    display_source(&key, config.ipv6_prefix)
                ));
            }
        }
        *managed = wanted_set.into_iter().collect();
    }
    Ok(())
}
