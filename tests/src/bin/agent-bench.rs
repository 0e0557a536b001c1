//! `cargo xtask bench --agent`: the agent's own cost while the data path is under attack. The
//! real agent runs on one end of a veth pair in a namespace; the benchmark sends real frames
//! into the other end (an AF_PACKET socket, any source address it likes) and reads the agent's
//! CPU time and memory from /proc:
//!
//! 1. at rest: the agent's housekeeping with nothing to do;
//! 2. 100,000 bans expiring at once: the agent's CPU and the time until its sweep removed them;
//! 3. a ban storm: 50,000 sources each over its REGISTER burst (50,000 bans, 50,000 ban events
//!    for the agent to log and save) — how long until all are banned, the agent's CPU, and the
//!    ban events lost (the ring buffer overflowing: must be 0);
//! 4. one banned source flooding (500,000 frames): the agent has nothing to do for it.
//!
//! Writes `target/bench/agent.json`.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use sipfilter::{addr::source_key, FilterMaps};
use sipfilter_common::counters::ban_reason;
use sipfilter_tests::{
    agent::AgentProcess,
    bench::{args, Args},
    harness::PrivateBpffs,
    netns::{veth_pair, Netns, ScratchDir},
    packet::{sip_request, PacketBuilder as P},
};

/// The agent's CPU seconds (user + system) and resident memory (now, peak) in KiB.
fn usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((ticks as f64 / hz, kib("VmRSS:"), kib("VmHWM:")))
}

/// Sends frames out of an interface (AF_PACKET), from inside the caller's current namespace.
struct Sender {
    fd: i32,
}

impl Sender {
    fn new(ifname: &str) -> anyhow::Result<Sender> {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: plain libc calls with valid arguments; the fd is closed on drop.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                bail!("no interface {ifname}");
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = index as i32;
            if libc::bind(
                fd,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("bind to {ifname}: {e}");
            }
            Ok(Sender { fd })
        }
    }

    fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        loop {
            // SAFETY: a valid buffer and fd.
            let n = unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::yield_now();
                continue;
            }
            bail!("send: {e}");
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Waits until `done` holds (polled every 50 ms); the time it took.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > timeout {
            bail!("not done within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(start.elapsed())
}

fn main() -> anyhow::Result<()> {
    let args = args(Args {
        repeat: 1,
        runs: 1,
        calls: 50_000,
        out: PathBuf::from("target/bench/agent.json"),
    })?;
    let sources = args.calls;
    let gw = Netns::new("abgw")?;
    let wan = Netns::new("abwan")?;
    let (gw_if, wan_if) = veth_pair(&gw, &["10.250.0.1/16"], &wan, &["10.250.0.2/16"])?;
    let bpffs = PrivateBpffs::new()?;
    let dir = ScratchDir::new("agent-bench")?;
    let config = dir.path().join("sipfilter.toml");
    // Everyone on the flood bucket, two REGISTERs back to back: the third bans.
    std::fs::write(
        &config,
        "[trust]\nenabled = false\n[limits.register]\nrate = 1\nburst = 2\n[agent]\nmetrics_listen = \"off\"\n",
    )?;
    let state = dir.path().join("state.json");
    let agent = AgentProcess::start(
        &gw,
        &bpffs.pin_dir(),
        dir.path(),
        "agent",
        &[
            "--config",
            config.to_str().context("path")?,
            "--iface",
            &gw_if,
            "--state-file",
            state.to_str().context("path")?,
            "--detach-on-exit",
        ],
    )?;
    let pid = agent.pid();
    let maps = FilterMaps::open_pinned(&bpffs.pin_dir())?;
    let (_, rss0, _) = usage(pid)?;
    println!("agent pid {pid}: {rss0} KiB resident at rest");

    let template = P::udp4(
        Ipv4Addr::new(10, 250, 0, 2),
        Ipv4Addr::new(10, 250, 0, 1),
        5060,
        5060,
        &sip_request("REGISTER", "200"),
    )
    .build()
    .bytes;
    const SRC_AT: usize = 14 + 12;
    let source = |i: u32| Ipv4Addr::from(0x0b00_0000 | (i.wrapping_mul(2_654_435_761) & 0x00ff_ffff));
    let sender = {
        let _inside = wan.enter()?;
        Sender::new(&wan_if)?
    };

    // 1. At rest: what the agent's housekeeping costs with nothing to do (the per-second sweep,
    // the IPv6 aggregate check every 3 s).
    let (idle0, _, _) = usage(pid)?;
    std::thread::sleep(Duration::from_secs(6));
    let (idle1, _, _) = usage(pid)?;
    let idle_cpu_per_sec = (idle1 - idle0) / 6.0;
    println!("at rest: agent CPU {:.3} s per second", idle_cpu_per_sec);
    let mut maps = maps;

    // 2. 100,000 bans expiring at once (on an otherwise empty table: it holds 131,072).
    let expiring = 100_000u32;
    for i in 0..expiring {
        let a = Ipv4Addr::from(0x0c00_0000 | i);
        maps.add_ban(&source_key(a.into(), 128), Some(3_000_000_000), ban_reason::MANUAL)?;
    }
    let total = maps.bans()?.len();
    let (cpu3, _, _) = usage(pid)?;
    let added_at = Instant::now();
    wait_until(Duration::from_secs(60), || {
        Ok(maps.bans()?.len() <= total - expiring as usize)
    })?;
    let swept_in = added_at.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (cpu4, rss4, hwm) = usage(pid)?;
    println!(
        "{expiring} bans expiring at once (3 s after they were written): gone {:.2} s after; agent CPU {:.2} s; {rss4} KiB resident, peak {hwm} KiB",
        swept_in.as_secs_f64(),
        cpu4 - cpu3
    );
    // 3. The ban storm.
    let mut frame = template.clone();
    let (cpu0, _, _) = usage(pid)?;
    let start = Instant::now();
    for _round in 0..3 {
        for i in 0..sources {
            frame[SRC_AT..SRC_AT + 4].copy_from_slice(&source(i).octets());
            // The IPv4 checksum is not checked on the way in; the program does not read it.
            sender.send(&frame)?;
        }
    }
    let sent_in = start.elapsed();
    let banned_in = wait_until(Duration::from_secs(60), || Ok(maps.bans()?.len() as u32 >= sources))?;
    // The agent logs and saves every ban; wait until it has written the state file with them.
    std::thread::sleep(Duration::from_secs(2));
    let (cpu1, rss1, _) = usage(pid)?;
    let lost_storm = maps.counters()?.events_lost;
    let logged = agent
        .log()
        .lines()
        .filter(|l| l.contains(" reason=rate_register"))
        .count();
    println!(
        "ban storm: {sources} sources × 3 REGISTERs sent in {:.2} s; all banned {:.2} s after the last; agent CPU {:.2} s; {} KiB resident; ban events lost {lost_storm}; ban lines logged {logged}",
        sent_in.as_secs_f64(),
        banned_in.as_secs_f64(),
        cpu1 - cpu0,
        rss1
    );

    // 4. One banned source flooding.
    frame[SRC_AT..SRC_AT + 4].copy_from_slice(&source(0).octets());
    let flood = 500_000u32;
    let start = Instant::now();
    for _ in 0..flood {
        sender.send(&frame)?;
    }
    let flood_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (cpu2, rss2, _) = usage(pid)?;
    println!(
        "banned source flooding: {flood} frames in {flood_secs:.2} s ({:.0}/s); agent CPU {:.3} s over {:.1} s",
        flood as f64 / flood_secs,
        cpu2 - cpu1,
        flood_secs + 1.0
    );

    // 5. At rest again, with the storm's bans in the table: the housekeeping reads the table.
    let (rest0, _, _) = usage(pid)?;
    std::thread::sleep(Duration::from_secs(6));
    let (rest1, rss5, _) = usage(pid)?;
    let loaded_cpu_per_sec = (rest1 - rest0) / 6.0;
    println!(
        "at rest with {} bans in the table: agent CPU {loaded_cpu_per_sec:.3} s per second, {rss5} KiB resident",
        maps.bans()?.len()
    );
    let lost = maps.counters()?.events_lost;
    if lost != 0 {
        bail!("the agent lost {lost} ban events: the ring buffer overflowed");
    }
    let json = serde_json::json!({
        "idle_agent_cpu_per_sec": idle_cpu_per_sec,
        "agent_cpu_per_sec_with_storm_bans": loaded_cpu_per_sec,
        "ban_storm": {
            "sources": sources,
            "frames": 3 * sources,
            "send_secs": sent_in.as_secs_f64(),
            "all_banned_after_secs": banned_in.as_secs_f64(),
            "agent_cpu_secs": cpu1 - cpu0,
            "agent_rss_kib": rss1,
            "events_lost": lost_storm,
        },
        "banned_flood": {
            "frames": flood,
            "secs": flood_secs,
            "agent_cpu_secs": cpu2 - cpu1,
            "agent_rss_kib": rss2,
        },
        "expiry": {
            "bans": expiring,
            "swept_after_secs": swept_in.as_secs_f64(),
            "agent_cpu_secs": cpu4 - cpu3,
            "agent_rss_kib": rss4,
            "agent_peak_rss_kib": hwm,
        },
        "agent_rss_at_rest_kib": rss0,
        "events_lost": lost,
    });
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("wrote {}", args.out.display());
    drop(sender);
    agent.stop()?;
    Ok(())
}
