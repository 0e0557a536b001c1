//! Where the fleet's decisions come in and our bans go out: a thread talks to CrowdSec's Local
//! API (pull every `pull_interval`, push as bans happen) so a slow or dead Local API never
//! holds up the agent's loop; the loop applies what was pulled to the maps.
//!
//! - Pulled `ban` decisions become kernel bans (scope Ip, for the time they have left; reason
//!   `crowdsec`) or timed denylist entries (scope Range); deleted ones lift them. Other types
//!   (captcha …) are ignored and counted; an allowlisted source is never banned (counted as
//!   refused).
//! - The kernel's own bans are pushed as alerts with a ban decision (origin `sipfilter`,
//!   scenario `sipfilter/<reason>`). A ban that came from CrowdSec is made in userspace and
//!   produces no ban event, so it is never pushed back; our own pushed ban coming back in the
//!   stream finds the kernel's ban in place and changes nothing.
//! - The Local API down: filtering goes on with what is there; pulls retry with a doubling
//!   backoff (up to a minute), pushes wait in a bounded queue; one log line per change of state.

use std::{
    collections::VecDeque,
    sync::mpsc::{channel, RecvTimeoutError, Sender},
    time::{Duration, Instant},
};

use sipfilter::{
    addr::source_key,
    config::CrowdsecSettings,
    crowdsec::{BanAlert, Lapi, Stream},
    filter_maps::ListKind,
    Cidr, FilterMaps,
};
use sipfilter_common::counters::ban_reason;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Bans waiting to be pushed at most (a Local API down for long under a ban storm).
const QUEUE: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the thread tells the agent's loop.
pub enum News {
    /// A pull's decisions, and how long the pull took.
    Pulled(Stream, Duration),
    /// The Local API answered again (after being down, or the first time).
    Up,
    /// It did not answer (why).
    Down(String),
    /// Bans pushed as alerts.
    Pushed(usize),
    /// A push failed (why); the bans wait for the next try.
    PushFailed(String),
    /// Bans dropped from a full push queue.
    QueueFull(usize),
}

/// The handle the agent keeps (the news go to its loop).
pub struct Fleet {
    push: Option<Sender<BanAlert>>,
}

impl Fleet {
    pub fn start(settings: &CrowdsecSettings) -> anyhow::Result<(Fleet, UnboundedReceiver<News>)> {
        let (news_tx, news) = unbounded_channel();
        let (push_tx, push_rx) = channel();
        let lapi = settings.lapi.clone();
        let interval = settings.pull_interval;
        let pushing = settings.push && lapi.machine.is_some();
        std::thread::Builder::new()
            .name("crowdsec".into())
            .spawn(move || run(lapi, interval, push_rx, news_tx))?;
        Ok((
            Fleet {
                push: pushing.then_some(push_tx),
            },
            news,
        ))
    }

    /// Queues a kernel ban for the fleet.
    pub fn push(&self, alert: BanAlert) {
        if let Some(tx) = &self.push {
            let _ = tx.send(alert);
        }
    }
}

fn run(lapi: Lapi, interval: Duration, push_rx: std::sync::mpsc::Receiver<BanAlert>, news: UnboundedSender<News>) {
    let mut startup = true;
    let mut up: Option<bool> = None;
    let mut backoff = interval;
    let mut next_pull = Instant::now();
    let mut queue: VecDeque<BanAlert> = VecDeque::new();
    let mut token: Option<String> = None;
    let mut next_push = Instant::now();
    loop {
        if Instant::now() >= next_pull {
            let started = Instant::now();
            match lapi.pull(startup) {
                Ok(stream) => {
                    startup = false;
                    if up != Some(true) && news.send(News::Up).is_err() {
                        return;
                    }
                    up = Some(true);
                    backoff = interval;
                    // Every answer, empty ones too: the loop keeps the last-success metric.
                    if news.send(News::Pulled(stream, started.elapsed())).is_err() {
                        return;
                    }
                    next_pull = Instant::now() + interval;
                }
                Err(e) => {
                    if up != Some(false) && news.send(News::Down(format!("{e:#}"))).is_err() {
                        return;
                    }
                    up = Some(false);
                    // A startup pull again once it is back: catch up on everything.
                    startup = true;
                    next_pull = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Wait for bans to push until the next pull is due.
        let wait = next_pull
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        match push_rx.recv_timeout(wait) {
            Ok(a) => queue.push_back(a),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(a) = push_rx.try_recv() {
            queue.push_back(a);
        }
        if queue.len() > QUEUE {
            let dropped = queue.len() - QUEUE;
            queue.drain(..dropped);
            let _ = news.send(News::QueueFull(dropped));
        }
        if !queue.is_empty() && Instant::now() >= next_push {
            match push_some(&lapi, &mut token, &mut queue) {
                Ok(n) => {
                    let _ = news.send(News::Pushed(n));
                }
                Err(e) => {
                    let _ = news.send(News::PushFailed(format!("{e:#}")));
                    next_push = Instant::now() + backoff;
                }
            }
        }
    }
}

/// Pushes up to 500 queued bans (logging in when there is no token or it was refused).
fn push_some(lapi: &Lapi, token: &mut Option<String>, queue: &mut VecDeque<BanAlert>) -> anyhow::Result<usize> {
    let n = queue.len().min(500);
    let batch: Vec<BanAlert> = queue.iter().take(n).cloned().collect();
    for _ in 0..2 {
        if token.is_none() {
            *token = Some(lapi.login()?);
        }
        if lapi.push(token.as_deref().unwrap_or_default(), &batch)? {
            queue.drain(..n);
            return Ok(n);
        }
        // The token ran out (an hour): log in again, once.
        *token = None;
    }
    anyhow::bail!("the Local API refused a fresh token")
}

/// What applying a pull did.
#[derive(Default, Debug)]
pub struct Applied {
    pub bans: usize,
    pub ranges: usize,
    pub lifted: usize,
    pub ignored: usize,
    pub refused: usize,
}

/// Applies a pull to the maps: deletions first (a value may be deleted and added again in one
/// answer), then the new decisions.
pub fn apply(maps: &mut FilterMaps, stream: &Stream) -> Applied {
    let mut out = Applied::default();
    let crowdsec = ban_reason::CROWDSEC;
    for d in stream.deleted.iter().filter(|d| d.kind == "ban") {
        match d.scope.as_str() {
            "Ip" => {
                let Ok(ip) = d.value.parse::<std::net::IpAddr>() else {
                    continue;
                };
                let key = source_key(ip, 128);
                // Only what CrowdSec banned is lifted by it: a kernel ban of the same source
                // stands (a deletion repeats on later pulls; removing twice is harmless).
                if maps.ban(&key).ok().flatten().is_some_and(|b| b.reason == crowdsec)
                    && maps.remove_ban(&key).unwrap_or(false)
                {
                    out.lifted += 1;
                }
            }
            "Range" => {
                let Ok(cidr) = d.value.parse::<Cidr>() else { continue };
                let ours = maps
                    .list(ListKind::Deny)
                    .map(|l| {
                        l.iter()
                            .any(|(c, e)| c.to_string() == cidr.to_string() && e.reason == u32::from(crowdsec))
                    })
                    .unwrap_or(false);
                if ours && maps.list_remove(ListKind::Deny, &cidr).unwrap_or(false) {
                    out.lifted += 1;
                }
            }
            _ => {}
        }
    }
    let now = sipfilter::clock::boot_ns();
    for d in &stream.new {
        if d.kind != "ban" || d.duration_secs <= 0.0 {
            out.ignored += 1;
            continue;
        }
        let ns = (d.duration_secs * 1e9) as u64;
        match d.scope.as_str() {
            "Ip" => {
                let Ok(ip) = d.value.parse::<std::net::IpAddr>() else {
                    out.ignored += 1;
                    continue;
                };
                let key = source_key(ip, 128);
                if maps.allowlist_match(&key).ok().flatten().is_some() {
                    out.refused += 1;
                    continue;
                }
                // A ban already in force for longer (the kernel's own, or our pushed one
                // coming back) stays as it is.
                if maps
                    .ban(&key)
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.expires_ns >= now.saturating_add(ns))
                {
                    continue;
                }
                match maps.add_ban(&key, Some(ns), crowdsec) {
                    Ok(_) => out.bans += 1,
                    Err(_) => out.refused += 1,
                }
            }
            "Range" => {
                let Ok(cidr) = d.value.parse::<Cidr>() else {
                    out.ignored += 1;
                    continue;
                };
                if maps
                    .list_add_for(ListKind::Deny, &cidr, now.saturating_add(ns), u32::from(crowdsec))
                    .is_ok()
                {
                    out.ranges += 1;
                }
            }
            _ => out.ignored += 1,
        }
    }
    out
}
