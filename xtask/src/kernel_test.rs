//! `cargo xtask kernel-test`: the privileged test binaries inside a VM booted on Debian 12's
//! own kernel (xtask/kernel-test/run.sh). `cargo xtask test` runs [`CI_TESTS`] this way.

use std::path::Path;

use anyhow::Context as _;

/// What CI runs on Debian 12's kernel: every fixture table (XDP, requests, answers), the
/// veth flood, and the agent attaching the answers program by the path that kernel has
/// (clsact), a couple of minutes under TCG. `NAME:FILTER` runs the tests of NAME whose
/// names contain FILTER.
pub const CI_TESTS: &[&str] = &["fixtures", "veth", "agent:egress_attach_path"];
/// What `cargo xtask kernel-test` runs by default: the program-level suites, 15–30 minutes
/// under TCG.
pub const DEFAULT_TESTS: &[&str] = &["fixtures", "veth", "answers", "calls", "sequences"];

/// Builds the named test targets of sipfilter-tests (`NAME` or `NAME:FILTER`) and runs them
/// in the VM; `filter` goes to every binary as libtest arguments (a test name filter).
/// The Debian releases whose kernels the tests run on: (version, suite, kernel).
pub const RELEASES: [(&str, &str, &str); 2] = [("12", "bookworm", "6.1"), ("13", "trixie", "6.12")];

/// The suites of `debian`: "12", "13" or "all".
pub fn releases(debian: &str) -> anyhow::Result<Vec<&'static str>> {
    let picked: Vec<&str> = RELEASES
        .iter()
        .filter(|(v, _, _)| debian == "all" || debian == *v)
        .map(|(_, suite, _)| *suite)
        .collect();
    anyhow::ensure!(!picked.is_empty(), "--debian takes 12, 13 or all, not {debian:?}");
    Ok(picked)
}

/// Runs the test targets `names` on the kernel of each Debian suite in `suites` in turn;
/// fails if any failed (after running them all).
pub fn run_on(suites: &[&str], names: &[String], filter: Option<&str>) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for suite in suites {
        // SAFETY: xtask is single-threaded here, before run.sh is spawned.
        unsafe { std::env::set_var("KERNEL_TEST_RELEASE", suite) };
        if let Err(e) = run(names, filter) {
            eprintln!("kernel-test on {suite}'s kernel: {e:#}");
            failed.push(*suite);
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "kernel-test failed on {}'s kernel",
        failed.join(" and ")
    );
    Ok(())
}

pub fn run(names: &[String], filter: Option<&str>) -> anyhow::Result<()> {
    // The agent tests run the agent binary; it goes into the VM beside them.
    crate::setup::cargo(&["build", "--package", "sipfilter", "--bins"])?;
    let targets: Vec<String> = names
        .iter()
        .map(|n| n.split(':').next().unwrap_or(n).to_owned())
        .collect();
    let binaries = test_binaries(&targets)?;
    // Each binary with its own filter, as run.sh takes it.
    let binaries: Vec<String> = binaries
        .into_iter()
        .zip(names)
        .map(|(exe, spec)| match spec.split_once(':') {
            Some((_, filter)) => format!("{exe}:{filter}"),
            None => exe,
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-test/run.sh");
    let mut cmd = std::process::Command::new(&script);
    cmd.args(&binaries);
    if let Some(filter) = filter {
        cmd.env("KERNEL_TEST_ARGS", filter);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    anyhow::ensure!(status.success(), "kernel-test failed (its summary above says why)");
    Ok(())
}

/// Builds the test targets and returns the executables cargo reports for them: the exact
/// binaries of this build (built as `cargo xtask test` builds them, with the whole
/// workspace's features, so nothing is rebuilt), not the newest file by date.
fn test_binaries(names: &[String]) -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    anyhow::ensure!(out.status.success(), "building the test binaries failed");
    let mut binaries = Vec::new();
    for name in names {
        let found = String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
            let msg: serde_json::Value = serde_json::from_str(line).ok()?;
            let ours = msg["reason"] == "compiler-artifact"
                && msg["profile"]["test"] == true
                && msg["target"]["kind"][0] == "test"
                && msg["target"]["name"] == name.as_str()
                && msg["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("sipfilter-tests"));
            ours.then(|| msg["executable"].as_str().map(str::to_owned)).flatten()
        });
        binaries.push(found.with_context(|| format!("sipfilter-tests has no test target {name}"))?);
    }
    Ok(binaries)
}
