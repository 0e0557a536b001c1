//! `sipfilter status`: what is loaded and attached, how it is configured, what it costs.

use std::{os::fd::AsRawFd as _, path::Path, process::Command};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use sipfilter::{clock::boot_ns, filter_maps::ListKind, FilterMaps};
use sipfilter_common::maps::{BAN_TABLE, PERMANENT, XDP_PROGRAM};

use super::{
    ipv6_prefix_len,
    output::{count, grouped, print_json, Table},
};

pub const EXAMPLES: &str = "\
Examples:
  sipfilter status                               a summary for people
  sipfilter status --json                        the same for scripts

Interfaces are the XDP links the agent pins under <pin-dir>/links/<interface>. The cost per
packet comes from the kernel's BPF run-time statistics, which the agent turns on while it
runs (sysctl kernel.bpf_stats_enabled); without them it reads n/a.

\"last housekeeping\" is when the agent last completed its round of every second (expiry,
state file, trail); with no agent running it is its last contact.

The exit status is 0 while an agent runs on these pins and 3 when none does (the filter
then keeps working on its own: see WITHOUT_AGENT in the JSON), for monitoring.";

/// What only a running agent does: without it the attached programs keep every rule, and
/// these stop until an agent runs again.
pub const WITHOUT_AGENT: [&str; 7] = [
    "audit trail and ban/call events (the programs' event buffers fill, then count events_lost)",
    "the state file (bans and known sources made meanwhile are not saved for a reboot)",
    "metrics",
    "the fleet (CrowdSec decisions in and out) and allowlist names (DNS)",
    "IPv6 prefix bans from the prefix's aggregate evidence",
    "the open-connection limit (marks and the idle sweep)",
    "the program clock's recalibration (drifts by a tick at most over hours)",
];

/// Past this, a running agent's last housekeeping round (due every second) is called late.
const HOUSEKEEPING_LATE_SECS: f64 = 10.0;

/// `status`'s exit status when no agent runs on the pins (systemctl's "inactive").
pub const NO_AGENT_EXIT: u8 = 3;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

struct Program {
    id: u32,
    run_count: u64,
    run_time_ns: u64,
}

struct Attachment {
    interface: String,
    ifindex: Option<u32>,
    program_id: Option<u32>,
    link_id: Option<u32>,
    mode: String,
    /// The answers program on its egress: a pinned tcx link (kernels 6.6 and later), else a
    /// clsact filter (kept by the qdisc: nothing pinned to read) or none.
    egress: String,
}

pub fn run(maps: &FilterMaps, pin_dir: &Path, args: StatusArgs) -> anyhow::Result<()> {
    let config = maps.read_config()?;
    let prefix = ipv6_prefix_len(maps)?;
    let now = boot_ns();
    let bans: Vec<_> = maps.bans()?.into_iter().filter(|(_, b)| b.expires_ns > now).collect();
    let permanent = bans.iter().filter(|(_, b)| b.expires_ns == PERMANENT).count();
    let deny: Vec<_> = maps
        .list(ListKind::Deny)?
        .into_iter()
        .filter(|(_, e)| e.expires_ns > now)
        .collect();
    let cidr_bans = deny.iter().filter(|(_, e)| e.expires_ns != PERMANENT).count();
    let allow = maps
        .list(ListKind::Allow)?
        .into_iter()
        .filter(|(_, e)| e.expires_ns > now)
        .count();
    let mut ports: Vec<u16> = Vec::new();
    for p in config.sip_ports_be.iter().map(|p| u16::from_be(*p)) {
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let stream = |slots: &[u16]| -> Vec<u16> { slots.iter().map(|p| u16::from_be(*p)).filter(|p| *p != 0).collect() };
    let (tcp_ports, tls_ports, websocket_ports) = (
        stream(&config.tcp_ports_be),
        stream(&config.tls_ports_be),
        stream(&config.websocket_ports_be),
    );
    let programs = programs(pin_dir)?;
    let attachments = attachments(pin_dir)?;
    // Whether an agent runs is asked of its lock; its PID, of /proc/locks (not visible from
    // another PID namespace: a container's CLI sees the host's agent running, without a PID).
    let running = sipfilter::agent_lock::is_held(pin_dir);
    let agent_pid = sipfilter::agent_lock::holder(pin_dir).filter(|_| running);
    let agent_since = agent_pid.and_then(sipfilter::agent_lock::started);
    // Kept by the agent every second; after it stops, its last contact.
    let housekeeping = sipfilter::agent_record::last_housekeeping(pin_dir);
    let housekeeping_ago = housekeeping.map(|t| sipfilter::agent_record::ago(t).as_secs_f64());
    // The newest load's tail-call tables pinned: the filter is whole without its agent.
    let tables = sipfilter::program_tables::generations(pin_dir).last().map(|id| {
        (
            *id,
            sipfilter::program_tables::whole(pin_dir, *id, false),
            pin_dir
                .join(sipfilter::program_tables::PROGRAMS_DIR)
                .join(id.to_string())
                .join(sipfilter_common::maps::EGRESS_PROGRAMS)
                .exists(),
        )
    });
    let no_agent = || -> anyhow::Result<()> {
        match running {
            true => Ok(()),
            false => Err(super::Exit(NO_AGENT_EXIT).into()),
        }
    };
    let stats_enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .ok()
        .map(|s| s.trim() != "0");
    let (runs, time): (u64, u64) = programs
        .iter()
        .fold((0, 0), |(n, t), p| (n + p.run_count, t + p.run_time_ns));
    let ns_per_packet = (runs > 0).then(|| time as f64 / runs as f64);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    // The answers program's attachment: a pinned tcx link (kernels 6.6 and later), else a
    // clsact filter (kept by the qdisc, nothing pinned).
    let egress_dir = pin_dir.join("links").join("egress");
    let egress_path = match std::fs::read_dir(&egress_dir).map(|mut d| d.next().is_some()) {
        Ok(true) => "tcx (pinned links)",
        _ => "clsact filter (or not attached)",
    };

    if args.json {
        print_json(&json!({
            "pin_dir": pin_dir.display().to_string(),
            "agent": {
                "running": running,
                "pid": agent_pid,
                "since_epoch_secs": agent_since,
                "last_housekeeping_epoch_secs": housekeeping.map(sipfilter::agent_record::unix_secs),
                "last_housekeeping_secs_ago": housekeeping_ago.map(|s| (s * 10.0).round() / 10.0),
                "without_agent": if !running { WITHOUT_AGENT.to_vec() } else { Vec::new() },
            },
            "program_tables": tables.map(|(id, ingress, egress)| json!({
                "load": id,
                "ingress": ingress,
                "egress": egress,
            })),
            "monitor": config.monitor(),
            "scope_all": config.scope_all(),
            "sip_ports": ports,
            "transports": {
                "udp": ports,
                "tcp": tcp_ports,
                "tls": tls_ports,
                "websocket": websocket_ports,
            },
            "ipv6_prefix_len": prefix,
            "bans": {
                "sources": bans.len(),
                "permanent": permanent,
                "cidrs": cidr_bans,
                "total": bans.len() + cidr_bans,
            },
            "denylist_entries": deny.len(),
            "allowlist_entries": allow,
            "bpf_stats_enabled": stats_enabled,
            "kernel": kernel,
            "egress_attach": egress_path,
            "programs": programs.iter().map(|p| json!({
                "id": p.id,
                "run_count": p.run_count,
                "run_time_ns": p.run_time_ns,
                "ns_per_packet": (p.run_count > 0).then(|| p.run_time_ns as f64 / p.run_count as f64),
            })).collect::<Vec<_>>(),
            "ns_per_packet": ns_per_packet,
            "interfaces": attachments.iter().map(|a| json!({
                "interface": a.interface,
                "ifindex": a.ifindex,
                "program_id": a.program_id,
                "link_id": a.link_id,
                "mode": a.mode,
                "egress": a.egress,
            })).collect::<Vec<_>>(),
        }))?;
        return no_agent();
    }

    let ids: Vec<String> = programs.iter().map(|p| p.id.to_string()).collect();
    let cost = match ns_per_packet {
        Some(ns) => format!("{ns:.0} ns/packet over {} packets", grouped(runs)),
        None if stats_enabled == Some(false) => "n/a (kernel BPF stats off)".into(),
        None => "n/a (no packets since kernel BPF stats were turned on)".into(),
    };
    let mut t = Table::new(&[("", false), ("", false)]);
    let mut kv = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    kv(
        "agent",
        match (running, agent_pid, agent_since) {
            (true, Some(pid), Some(since)) => {
                format!("running (PID {pid}, since {} UTC)", sipfilter::fraud_file::utc(since))
            }
            (true, Some(pid), None) => format!("running (PID {pid})"),
            (true, None, _) => "running (its PID is not visible from this PID namespace)".into(),
            (false, ..) => "not running: the attached filter keeps every rule on its own (see below)".into(),
        },
    );
    kv(
        "last housekeeping",
        match (housekeeping, housekeeping_ago) {
            (Some(t), Some(ago)) => {
                let when = format!(
                    "{} UTC ({ago:.1} s ago)",
                    sipfilter::fraud_file::utc(sipfilter::agent_record::unix_secs(t))
                );
                // The agent's round is every second: a running agent far behind is stuck.
                match running && ago > HOUSEKEEPING_LATE_SECS {
                    true => format!("{when}: late, the agent is not keeping its rounds"),
                    false => when,
                }
            }
            _ => "never (no agent has completed a round on these pins)".into(),
        },
    );
    kv(
        "tail calls",
        match tables {
            Some((id, true, egress)) => format!(
                "pinned (load {id}: request inspection{})",
                if egress { " and the answers chain" } else { "" }
            ),
            _ => "not pinned: without an agent the programs judge by rates and bans only".into(),
        },
    );
    kv("pin dir", pin_dir.display().to_string());
    kv("kernel", kernel.clone());
    kv("egress attach", egress_path.to_string());
    kv(
        "mode",
        if config.monitor() {
            "monitor (counts and bans, drops nothing)"
        } else {
            "enforcing"
        }
        .into(),
    );
    kv(
        "ban scope",
        if config.scope_all() {
            "all traffic"
        } else {
            "SIP traffic"
        }
        .into(),
    );
    let list = |ports: &[u16]| -> String {
        if ports.is_empty() {
            "off".into()
        } else {
            ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
        }
    };
    kv(
        "SIP ports",
        format!(
            "UDP {}; TCP {}; TLS {}; WebSocket {}",
            list(&ports),
            list(&tcp_ports),
            list(&tls_ports),
            list(&websocket_ports)
        ),
    );
    kv("IPv6 source", format!("/{prefix}"));
    kv(
        "bans",
        format!(
            "{} ({permanent} permanent), {}",
            count(bans.len(), "source", "sources"),
            count(cidr_bans, "CIDR", "CIDRs")
        ),
    );
    kv("denylist", count(deny.len(), "entry", "entries"));
    kv("allowlist", count(allow, "entry", "entries"));
    kv(
        "programs",
        if ids.is_empty() {
            "none loaded".into()
        } else {
            ids.join(", ")
        },
    );
    kv("cost", cost);
    // The blank header row of a key/value table is dropped.
    let rendered = t.render();
    print!("{}", rendered.split_once('\n').map_or("", |(_, rest)| rest));
    println!();
    if !running {
        println!("without an agent, these stop until one runs again:");
        for what in WITHOUT_AGENT {
            println!("  - {what}");
        }
        println!();
    }
    if attachments.is_empty() {
        println!(
            "no interfaces attached (no links pinned under {})",
            pin_dir.join("links").display()
        );
        return no_agent();
    }
    let mut t = Table::new(&[
        ("INTERFACE", false),
        ("MODE", false),
        ("PROGRAM", true),
        ("LINK", true),
        ("EGRESS", false),
    ]);
    for a in &attachments {
        let id = |v: Option<u32>| v.map_or("?".into(), |v| v.to_string());
        t.row(vec![
            a.interface.clone(),
            a.mode.clone(),
            id(a.program_id),
            id(a.link_id),
            a.egress.clone(),
        ]);
    }
    print!("{}", t.render());
    no_agent()
}

/// The loaded sipfilter programs that use these maps (there may be one per agent generation
/// still attached somewhere).
fn programs(pin_dir: &Path) -> anyhow::Result<Vec<Program>> {
    let map_id = aya::maps::MapInfo::from_pin(pin_dir.join(BAN_TABLE))
        .context("cannot read the ban table's map info")?
        .id();
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("cannot list the loaded BPF programs")?;
        if info.name_as_str() != Some(XDP_PROGRAM) {
            continue;
        }
        let Ok(Some(maps)) = info.map_ids() else { continue };
        if maps.contains(&map_id) {
            out.push(Program {
                id: info.id(),
                run_count: info.run_count(),
                run_time_ns: info.run_time().as_nanos() as u64,
            });
        }
    }
    Ok(out)
}

fn attachments(pin_dir: &Path) -> anyhow::Result<Vec<Attachment>> {
    let dir = pin_dir.join("links");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        // The `egress` folder holds the answers program's links, not an interface.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let interface = entry.file_name().to_string_lossy().into_owned();
        let egress_pin = dir.join("egress").join(&interface);
        let egress = match any_link(&egress_pin) {
            Some((link, prog)) => format!("answers program {prog} (tcx link {link})"),
            None => "clsact filter, or none".into(),
        };
        let (info, mode) = match link_info(&entry.path()) {
            Ok(info) => {
                let mode = xdp_mode(&interface, info.ifindex);
                (Some(info), mode)
            }
            Err(e) => (None, format!("unknown ({e:#})")),
        };
        out.push(Attachment {
            interface,
            ifindex: info.as_ref().map(|i| i.ifindex),
            program_id: info.as_ref().map(|i| i.prog_id),
            link_id: info.as_ref().map(|i| i.id),
            mode,
            egress,
        });
    }
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(out)
}

struct LinkInfo {
    id: u32,
    prog_id: u32,
    ifindex: u32,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded bpf_attr of 128 bytes that outlives the call; the
    // kernel reads at most that many bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// The kernel's record of a pinned XDP link: link id, program id and interface index
/// (aya's LinkInfo does not expose the interface).
fn link_info(path: &Path) -> anyhow::Result<LinkInfo> {
    let fd = sipfilter::bpffs::pinned_object_fd(path)?;
    // struct bpf_link_info: u32 type, id, prog_id; then an 8-aligned union whose xdp
    // member starts with u32 ifindex (offset 16).
    let mut info = [0u64; 32];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .with_context(|| format!("cannot read the link pinned at {}", path.display()))?;
    let word = |i: usize| -> u32 {
        let bytes: &[u8] = bytemuck_u64(&info);
        u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
    };
    if word(0) != BPF_LINK_TYPE_XDP {
        bail!("{} is not an XDP link (type {})", path.display(), word(0));
    }
    Ok(LinkInfo {
        id: word(1),
        prog_id: word(2),
        ifindex: word(4),
    })
}

/// The link pinned at `path`, of any type: its id and its program's.
fn any_link(path: &Path) -> Option<(u32, u32)> {
    let fd = sipfilter::bpffs::pinned_object_fd(path).ok()?;
    let mut info = [0u64; 32];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    let bytes: &[u8] = bytemuck_u64(&info);
    let word = |i: usize| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    Some((word(1), word(2)))
}

fn bytemuck_u64(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers the same bytes.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), std::mem::size_of_val(words)) }
}

/// The XDP attach mode as `ip -d link` reports it, if the interface lives in this network
/// namespace (the pin's name and the link's ifindex must both match).
fn xdp_mode(ifname: &str, ifindex: u32) -> String {
    let out = match Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", ifname])
        .output()
    {
        Ok(o) if o.status.success() => o.stdout,
        Ok(_) => return "unknown (interface not in this network namespace)".into(),
        Err(_) => return "unknown (cannot run ip)".into(),
    };
    let Ok(Value::Array(links)) = serde_json::from_slice::<Value>(&out) else {
        return "unknown".into();
    };
    let Some(link) = links.first() else {
        return "unknown".into();
    };
    if link.get("ifindex").and_then(Value::as_u64) != Some(ifindex as u64) {
        return "unknown (interface not in this network namespace)".into();
    }
    match link.get("xdp").and_then(|x| x.get("mode")).and_then(Value::as_u64) {
        Some(1) => "driver".into(),
        Some(2) => "skb".into(),
        Some(3) => "hardware".into(),
        Some(4) => "multi".into(),
        Some(n) => format!("unknown ({n})"),
        None => "not attached".into(),
    }
}
