//! How the SIPp scenarios in `demo/` are run, shared by the SIPp tests and `cargo xtask demo`
//! (which includes this file as source, since it cannot depend on this crate).

/// SIPp's command line for a scenario copied into its working folder: client mode towards
/// `pbx` (ADDR:PORT) when given, server mode otherwise, bound to `local_ip`:5060.
pub fn sipp_args(scenario: &str, pbx: Option<&str>, local_ip: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["sipp", "-sf", scenario];
    if let Some(target) = pbx {
        // An aborted REGISTER must not turn into a BYE.
        args.extend([target, "-default_behaviors", "all,-bye"]);
    }
    args.extend(["-i", local_ip, "-p", "5060", "-nostdin", "-trace_screen"]);
    args.extend_from_slice(extra);
    args.into_iter().map(str::to_owned).collect()
}

/// Extra arguments of the registrar (demo/pbx.xml): stateless, one log line per request, and
/// a large socket buffer (SIPp's default is 64 KiB) so the burst of 150 back-to-back
/// REGISTERs that sipfilter lets through is not lost in the PBX's own socket.
pub const PBX_SERVER_ARGS: &[&str] = &["-deadcall_wait", "0", "-trace_logs", "-buff_size", "4194304"];

/// Waits for a SIPp client: it exits 0 when all its calls succeeded and 1 when some failed
/// (both are results a test reads from its screen); any other status means it did not run.
pub fn sipp_done(p: &mut crate::netns::Background, timeout: std::time::Duration) -> anyhow::Result<()> {
    let status = p.wait(timeout)?;
    anyhow::ensure!(
        matches!(status.code(), Some(0 | 1)),
        "SIPp {} failed with {status}:\n{}",
        p.name,
        p.output()
    );
    Ok(())
}
