//! `cargo xtask bench --scale`: how the per-packet cost grows with the attack: the number of
//! active sources, the size of the denylist, the number of bans, and (egress) the length of
//! the headers the answers program reads. Each point is the mean kernel-measured time of
//! single BPF_PROG_TEST_RUN calls (repeat 1, so every call can carry another source address),
//! beside the empty program measured the same way: the ratio and the added nanoseconds.
//! Writes `target/bench/scale.json`.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context as _};
use aya::programs::{ProgramError, TestRun, TestRunOptions, TestRunResult};
use sipfilter::{addr::source_key, filter_maps::ListKind, Cidr};
use sipfilter_common::{
    counters::ban_reason,
    maps::{FLOOR_PROGRAM, PERMANENT, TC_FLOOR_PROGRAM},
};
use sipfilter_tests::{
    bench::{self, args, pin_to_cpu, Args},
    chart::{small_multiples, Panel, Series},
    harness::TestFilter,
    packet::{sip_answer, sip_request, sip_request_from, PacketBuilder as P},
};

/// The i-th of `n` source addresses, spread over 10.0.0.0/8 (a seeded walk, so 1,000,000
/// sources are all distinct and not in address order).
fn source(i: u32, n: u32) -> Ipv4Addr {
    let k = i % n;
    Ipv4Addr::from(0x0a00_0000 | (k.wrapping_mul(2_654_435_761) & 0x00ff_ffff))
}

/// The IPv4 source address field of a frame built by the packet builder (Ethernet, no tags).
const SRC_AT: usize = 14 + 12;

fn mean_ns(mut call: impl FnMut(u32) -> Result<std::time::Duration, ProgramError>, calls: u32) -> anyhow::Result<f64> {
    let mut total = 0u128;
    for i in 0..calls {
        total += call(i)?.as_nanos();
    }
    Ok(total as f64 / calls as f64)
}

/// The mean time of `calls` single runs of `prog` on `frame`.
fn mean_of<P>(prog: &P, frame: &[u8], calls: u32) -> anyhow::Result<f64>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    mean_ns(
        |_| {
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .map(|r| r.duration)
        },
        calls,
    )
}

struct Point {
    x: u64,
    ns: f64,
}

fn main() -> anyhow::Result<()> {
    let args = args(Args {
        repeat: 1,
        runs: 1,
        calls: 200_000,
        out: PathBuf::from("target/bench/scale.json"),
    })?;
    pin_to_cpu(0);
    // The product's defaults: requests from unknown sources are read (their User-Agent).
    let (config, settings) = bench::with_request_rules(500)?;

    let template = P::udp4(
        source(0, 1),
        Ipv4Addr::new(192, 0, 2, 1),
        5060,
        5060,
        &sip_request("REGISTER", "200"),
    )
    .build()
    .bytes;
    if template[SRC_AT..SRC_AT + 4] != source(0, 1).octets() {
        bail!("the packet builder's layout changed: the source address is not at byte {SRC_AT}");
    }
    let xdp_ns = |f: &mut TestFilter, n: u32, calls: u32| -> anyhow::Result<f64> {
        f.maps().clear_rate_state()?;
        let mut frame = template.clone();
        let prog = f.loaded.program()?;
        mean_ns(
            |i| {
                frame[SRC_AT..SRC_AT + 4].copy_from_slice(&source(i, n).octets());
                prog.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat: 1,
                    ..Default::default()
                })
                .map(|r| r.duration)
            },
            calls,
        )
    };

    let mut f = TestFilter::with_config(&config)?;
    f.loaded.request_rules.write(&settings)?;
    f.loaded.load_floor()?;
    let floor = {
        let prog: &aya::programs::Xdp = f.loaded.ebpf.program(FLOOR_PROGRAM).context("floor")?.try_into()?;
        mean_of(prog, &template, args.calls)?
    };

    let mut sources = Vec::new();
    for n in [1u32, 1_000, 65_536, 1_000_000] {
        sources.push(Point {
            x: n as u64,
            ns: xdp_ns(&mut f, n, args.calls.max(n))?,
        });
    }
    let mut lists = Vec::new();
    let mut added = 0u32;
    for size in [0u32, 10_000, 250_000] {
        while added < size {
            let a = Ipv4Addr::from(0xac10_0000u32.wrapping_add(added << 8)); // 172.16.0.0 up, /24s
            f.maps().list_add(
                ListKind::Deny,
                &Cidr {
                    addr: a.into(),
                    prefix_len: 24,
                },
                PERMANENT,
            )?;
            added += 1;
        }
        lists.push(Point {
            x: size as u64,
            ns: xdp_ns(&mut f, 65_536, args.calls)?,
        });
    }
    let mut bans = Vec::new();
    let mut f = TestFilter::with_config(&config)?;
    f.loaded.request_rules.write(&settings)?;
    for count in [0u32, 100_000] {
        for i in 0..count {
            let a = Ipv4Addr::from(0xc0a8_0000u32.wrapping_add(i)); // elsewhere than the sources
            f.maps().add_ban(&source_key(a.into(), 128), None, ban_reason::MANUAL)?;
        }
        bans.push(Point {
            x: count as u64,
            ns: xdp_ns(&mut f, 65_536, args.calls)?,
        });
    }

    // Requests: a REGISTER from 1,000 unknown sources with more and more header lines before
    // its User-Agent (the scan's length; 8 lines a round).
    let mut lines = Vec::new();
    for before in [4usize, 8, 16, 24, 31] {
        let pad: String = (0..before.saturating_sub(4))
            .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(16)))
            .collect();
        let payload = format!(
            "REGISTER sip:pbx.example SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-77\r\n\
             From: <sip:200@pbx.example>;tag=1\r\n\
             To: <sip:200@pbx.example>\r\n\
             Call-ID: 77@10.0.0.1\r\n\
             {pad}User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let mut frame = P::udp4(
            source(0, 1),
            Ipv4Addr::new(192, 0, 2, 1),
            5060,
            5060,
            payload.as_bytes(),
        )
        .build()
        .bytes;
        f.maps().clear_rate_state()?;
        let prog = f.loaded.program()?;
        let ns = mean_ns(
            |i| {
                frame[SRC_AT..SRC_AT + 4].copy_from_slice(&source(i, 1_000).octets());
                prog.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat: 1,
                    ..Default::default()
                })
                .map(|r| r.duration)
            },
            args.calls / 4,
        )?;
        lines.push(Point {
            x: before as u64 + 1,
            ns,
        });
    }

    // Egress: a 401 to a REGISTER read, identified and judged, with more and more Vias
    // before its To and CSeq (the scan's length).
    f.loaded.load_tc_floor()?;
    let peer = Ipv4Addr::new(198, 51, 100, 20);
    let pbx = Ipv4Addr::new(192, 0, 2, 1);
    let tc_floor = {
        let prog: &aya::programs::SchedClassifier = f
            .loaded
            .ebpf
            .program(TC_FLOOR_PROGRAM)
            .context("tc floor")?
            .try_into()?;
        mean_ns(
            |_| {
                prog.test_run(TestRunOptions {
                    data_in: Some(&template),
                    repeat: 1,
                    ..Default::default()
                })
                .map(|r| r.duration)
            },
            args.calls,
        )?
    };
    let mut scan = Vec::new();
    for vias in [1usize, 2, 4, 8] {
        let base = String::from_utf8(sip_answer("401 Unauthorized", "REGISTER", 7, "200", "200"))?;
        let (status, rest) = base.split_once("\r\n").context("answer")?;
        let extra: String = (1..vias)
            .map(|i| format!("Via: SIP/2.0/UDP 10.1.{i}.1:5060;branch=z9hG4bK-proxy{i};received=10.1.{i}.1\r\n"))
            .collect();
        let payload = format!("{status}\r\n{extra}{rest}");
        let frame = P::udp4(pbx, peer, 5060, 5060, payload.as_bytes()).build().bytes;
        f.maps().clear_rate_state()?;
        f.run(
            &P::udp4(peer, pbx, 5060, 5060, &sip_request_from("REGISTER", "200", "200", 7))
                .build()
                .bytes,
        )?;
        let ns = mean_of(f.loaded.answers_program()?, &frame, args.calls / 4)?;
        scan.push(Point {
            x: payload.len() as u64,
            ns,
        });
    }

    println!(
        "Mean kernel-measured ns per BPF_PROG_TEST_RUN call (repeat 1, {} calls a point); floor: empty XDP {floor:.1} ns, empty TC {tc_floor:.1} ns",
        args.calls
    );
    let mut json = serde_json::Map::new();
    for (name, what, points, base) in [
        (
            "sources",
            "active sources (REGISTER, a new address each call)",
            &sources,
            floor,
        ),
        ("denylist", "denylist entries (65,536 sources)", &lists, floor),
        ("bans", "bans in the table (65,536 sources)", &bans, floor),
        (
            "user_agent_line",
            "REGISTER from an unknown source: the User-Agent's header line (1,000 sources)",
            &lines,
            floor,
        ),
        (
            "answer_bytes",
            "egress: 401 payload bytes (1, 2, 4, 8 Vias)",
            &scan,
            tc_floor,
        ),
    ] {
        println!("\n{what}");
        println!("{:>12} {:>9} {:>9} {:>9}", "x", "ns", "× floor", "added");
        let mut arr = Vec::new();
        for p in points.iter() {
            println!("{:>12} {:>9.1} {:>8.2}× {:>+9.1}", p.x, p.ns, p.ns / base, p.ns - base);
            arr.push(serde_json::json!({ "x": p.x, "ns": p.ns, "ratio": p.ns / base, "added_ns": p.ns - base }));
        }
        json.insert(
            name.into(),
            serde_json::json!({ "what": what, "floor_ns": base, "points": arr }),
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&serde_json::Value::Object(json))? + "\n",
    )?;
    println!("\nwrote {}", args.out.display());
    let panel = |title: &str, unit: &str, log_x: bool, points: &[Point], base: f64| Panel {
        title: title.into(),
        unit: unit.into(),
        log_x,
        series: vec![Series {
            label: "added ns per packet".into(),
            points: points.iter().map(|p| (p.x as f64, p.ns - base)).collect(),
        }],
    };
    let png = args.out.with_extension("png");
    small_multiples(
        &png,
        "sipfilter: added ns per packet as the attack grows (cargo xtask bench --scale)",
        &[
            panel("active sources", "x: sources, log", true, &sources, floor),
            panel("denylist entries", "x: entries", false, &lists, floor),
            panel("bans in the table", "x: bans", false, &bans, floor),
            panel("User-Agent's header line", "x: line", false, &lines, floor),
            panel("egress 401 size", "x: payload bytes", false, &scan, tc_floor),
        ],
    )?;
    println!("wrote {}", png.display());
    Ok(())
}
