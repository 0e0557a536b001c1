//! The agent as its systemd unit runs it: which capabilities it really needs. The unit's
//! ExecStart runs here under `setpriv` with the unit's capability set (bounding, inheritable
//! and ambient, no new privileges) — and again with each capability taken away, to prove it is
//! needed. (CAP_SYS_RESOURCE, in the unit for kernels before 5.11 that count BPF maps against
//! the memlock limit, is absent from this sandbox's bounding set altogether: that the agent
//! works here shows kernels that charge maps to the cgroup do not need it.)

use std::time::Duration;

use sipfilter_tests::{
    agent::sipfilter_bin,
    harness::PrivateBpffs,
    netns::{veth_pair, Netns, ScratchDir},
};

/// The capabilities the unit grants (but CAP_SYS_RESOURCE, see above).
const UNIT_CAPS: [&str; 3] = ["bpf", "net_admin", "perfmon"];

/// Starts the agent with only `caps` and says whether it got to "ready" (and what it said).
fn agent_with(caps: &[&str], net: &str) -> anyhow::Result<(bool, String)> {
    let gw = Netns::new("svc")?;
    let wan = Netns::new("svcw")?;
    let (gw_if, _) = veth_pair(&gw, &[&format!("{net}.1/24")], &wan, &[&format!("{net}.2/24")])?;
    let bpffs = PrivateBpffs::new()?;
    let dir = ScratchDir::new("service")?;
    let set = format!("-all{}", caps.iter().map(|c| format!(",+{c}")).collect::<String>());
    let (bin, pin, state) = (sipfilter_bin(), bpffs.pin_dir(), dir.path().join("state.json"));
    let bounding = format!("--bounding-set={set}");
    let inheritable = format!("--inh-caps={set}");
    let ambient = format!("--ambient-caps={set}");
    let mut agent = gw.spawn(
        "agent",
        &[
            "setpriv",
            &bounding,
            &inheritable,
            &ambient,
            "--no-new-privs",
            bin.to_str().unwrap(),
            "--pin-dir",
            pin.to_str().unwrap(),
            "run",
            "--iface",
            &gw_if,
            "--state-file",
            state.to_str().unwrap(),
            "--metrics-listen",
            "off",
            "--detach-on-exit",
        ],
        dir.path(),
    )?;
    let ready = agent.wait_for_output("ready:", Duration::from_secs(20)).is_ok();
    let said = agent.output();
    agent.stop(libc::SIGTERM, Duration::from_secs(10));
    Ok((ready, said))
}

#[test]
fn the_agent_runs_with_the_units_capabilities_and_needs_each_of_them() -> anyhow::Result<()> {
    let (ready, said) = agent_with(&UNIT_CAPS, "10.211.0")?;
    assert!(ready, "with {UNIT_CAPS:?} the agent must start:\n{said}");
    assert!(said.contains("attached to"), "{said}");
    for (i, missing) in UNIT_CAPS.iter().enumerate() {
        let caps: Vec<&str> = UNIT_CAPS.iter().copied().filter(|c| c != missing).collect();
        let (ready, said) = agent_with(&caps, &format!("10.211.{}", i + 1))?;
        let why = said.lines().find(|l| l.starts_with("sipfilter:")).unwrap_or("");
        eprintln!("without CAP_{}: {why}", missing.to_uppercase());
        assert!(
            !ready,
            "the agent started without CAP_{}: the unit should not grant it:\n{said}",
            missing.to_uppercase()
        );
    }
    Ok(())
}
