//! `cargo xtask setup`: everything a fresh Debian 12 root machine needs, installed only
//! where missing.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The nightly that builds the eBPF side. Its LLVM major must equal the libLLVM that
/// bpf-linker links: nightly-2026-05-20 has LLVM 22; newer nightlies (LLVM 23) emit bitcode
/// bpf-linker 0.13 built against LLVM 22 rejects ("Invalid record"). Keep in step with
/// sipfilter/build.rs.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_MAJOR: u32 = 22;

/// Debian packages: LLVM 22 (and what its llvm-config asks to link) for bpf-linker;
/// bpftool and iproute2 for inspecting and for the namespace tests; sip-tester (SIPp) and
/// prometheus (promtool) for the agent's end-to-end tests and the demo; kamailio as the
/// real registrar the answer-reading tests judge sources against; nftables and iptables, the
/// peers `cargo xtask bench --peers` measures sipfilter against; DejaVu fonts for the text
/// of the PNG charts (the scale benchmark's, the dashboard test's); lintian for the package;
/// qemu, busybox-static, cpio and xz-utils for `cargo xtask kernel-test` (it fetches Debian's
/// kernels itself; Debian 13's modules are xz-compressed); crowdsec (1.4.6: the Local API and cscli) as the real CrowdSec the bouncer and alert tests
/// talk to (they run a Local API of their own: tests/src/crowdsec.rs).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "sip-tester",
    "prometheus",
    "kamailio",
    "nftables",
    "iptables",
    "fonts-dejavu-core",
    "lintian",
    "crowdsec",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
];

/// Debian's crowdsec registers with CrowdSec's Central API when installed (its postinst runs
/// `cscli capi register` when this file is missing or empty), which must not happen here:
/// the tests are offline, and offline the registration would fail and leave the package
/// half-configured. A file holding only a comment stops it (the postinst's own rule).
const CROWDSEC_CAPI_CREDENTIALS: &str = "/etc/crowdsec/online_api_credentials.yaml";

/// PyPI packages (name, module): SIPVicious (svmap, svwar, svcrack), the scanner the tests
/// replay. The tests run its modules with the same `python3`, wherever pip put the scripts.
const PIP_PACKAGES: &[(&str, &str)] = &[("sipvicious", "sipvicious.svwar")];

pub fn run() -> anyhow::Result<()> {
    crowdsec_offline()?;
    apt_packages()?;
    pip_packages()?;
    ebpf_toolchain()?;
    bpf_linker()?;
    cargo_deb()?;
    cargo_fuzz()?;
    check_llvm_majors()?;
    mount_bpffs()?;
    Ok(())
}

fn say(msg: &str) {
    eprintln!("xtask setup: {msg}");
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// `cargo ARGS` with the same cargo that runs xtask.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(Command::new(cargo).args(args))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]));
            !status.is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("installing Debian packages: {}", missing.join(" ")));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed (are you root?)")
}

/// Before apt installs crowdsec: [`CROWDSEC_CAPI_CREDENTIALS`] with a comment, unless it
/// already holds something (an earlier run's comment, or an admin's real credentials).
fn crowdsec_offline() -> anyhow::Result<()> {
    let path = Path::new(CROWDSEC_CAPI_CREDENTIALS);
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    say(&format!(
        "writing {CROWDSEC_CAPI_CREDENTIALS} (no Central API registration)"
    ));
    let dir = path.parent().context("no parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {} (are you root?)", dir.display()))?;
    std::fs::write(
        path,
        "# No Central API: written by `cargo xtask setup` so that installing crowdsec does not\n\
         # register online. sipfilter's tests run a Local API of their own (tests/src/crowdsec.rs).\n",
    )
    .with_context(|| format!("cannot write {CROWDSEC_CAPI_CREDENTIALS} (are you root?)"))
}

fn pip_packages() -> anyhow::Result<()> {
    for (package, module) in PIP_PACKAGES {
        if quiet(Command::new("python3").args(["-c", &format!("import {module}")])) {
            continue;
        }
        say(&format!("installing {package} from PyPI"));
        run_cmd(Command::new("python3").args(["-m", "pip", "install", "-q", package]))?;
    }
    Ok(())
}

fn ebpf_toolchain() -> anyhow::Result<()> {
    let installed =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", EBPF_TOOLCHAIN]));
    if installed.is_some_and(|c| c.lines().any(|l| l.starts_with("rust-src"))) {
        return Ok(());
    }
    say(&format!("installing {EBPF_TOOLCHAIN} with rust-src"));
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.is_some_and(|v| v.trim() == format!("bpf-linker {BPF_LINKER_VERSION}")) {
        return Ok(());
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)"
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(
        Command::new(cargo)
            .args([
                "install",
                "--locked",
                "--force",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            // Without it the build script finds Debian's default llvm-config (LLVM 14).
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")),
    )
}

/// cargo-deb, which `cargo xtask package` builds the .deb with.
const CARGO_DEB_VERSION: &str = "3.8.0";

fn cargo_deb() -> anyhow::Result<()> {
    let version = output(Command::new("cargo-deb").arg("--version"));
    if version.is_some_and(|v| v.contains(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    say(&format!("installing cargo-deb {CARGO_DEB_VERSION}"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(Command::new(cargo).args(["install", "--locked", &format!("cargo-deb@{CARGO_DEB_VERSION}")]))
}

/// cargo-fuzz, which `cargo xtask fuzz` (and the smoke in `cargo xtask test`) runs.
fn cargo_fuzz() -> anyhow::Result<()> {
    if output(Command::new("cargo-fuzz").arg("--version")).is_some() {
        return Ok(());
    }
    say("installing cargo-fuzz");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(Command::new(cargo).args(["install", "--locked", "cargo-fuzz"]))
}

/// The nightly's LLVM and bpf-linker's libLLVM must be the same major version.
fn check_llvm_majors() -> anyhow::Result<()> {
    let rustc = output(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"]))
        .context("cannot run the eBPF toolchain's rustc")?;
    let rustc_major = rustc
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.trim().parse::<u32>().ok())
        .context("the eBPF toolchain's rustc does not report its LLVM version")?;
    let linker = output(Command::new("which").arg("bpf-linker")).context("bpf-linker is not on PATH")?;
    let ldd = output(Command::new("ldd").arg(linker.trim())).unwrap_or_default();
    let linker_major = ldd
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("libLLVM.so.")
                .or_else(|| l.trim().strip_prefix("libLLVM-"))
        })
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok());
    match linker_major {
        Some(m) if m == rustc_major => Ok(()),
        Some(m) => bail!(
            "LLVM mismatch: {EBPF_TOOLCHAIN} uses LLVM {rustc_major} but bpf-linker links LLVM {m}; \
             the eBPF link would fail with 'Invalid record'. Reinstall bpf-linker with \
             LLVM_PREFIX=/usr/lib/llvm-{rustc_major} and --features llvm-{rustc_major}"
        ),
        None => {
            say(&format!(
                "cannot tell which LLVM bpf-linker links (statically linked?); {EBPF_TOOLCHAIN} uses LLVM {rustc_major}"
            ));
            Ok(())
        }
    }
}

fn mount_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next(), f.next(), f.next());
        point == Some("/sys/fs/bpf") && fstype == Some("bpf")
    }) {
        return Ok(());
    }
    say("mounting bpffs at /sys/fs/bpf");
    if !quiet(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"])) {
        bail!("cannot mount bpffs at /sys/fs/bpf (are you root?)");
    }
    Ok(())
}
