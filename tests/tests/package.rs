//! The Debian package on this machine: installed with dpkg, its binary, configuration check,
//! man pages and unit used from the installed paths, then purged, leaving nothing behind.
//! `cargo xtask test` builds the package first (`cargo xtask package`).

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

fn run(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    Ok(out)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The newest package `cargo xtask package` built.
fn package() -> anyhow::Result<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no {}: run `cargo xtask package` (`cargo xtask test` does)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .context("no .deb: run `cargo xtask package`")
}

/// Purges the package when the test ends, passed or failed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "sipfilter"]).output();
    }
}

/// Everything the package installs or creates, which a purge must remove.
const LEFT_BEHIND: &[&str] = &[
    "/usr/sbin/sipfilter",
    "/etc/sipfilter",
    "/var/lib/sipfilter",
    "/lib/systemd/system/sipfilter.service",
    "/usr/share/sipfilter",
    "/usr/share/man/man8/sipfilter.8.gz",
    "/usr/share/bash-completion/completions/sipfilter",
    "/usr/share/doc/sipfilter",
];

#[test]
fn the_package_installs_works_from_its_paths_and_purges_clean() -> anyhow::Result<()> {
    let deb = package()?;
    let installed_before = run(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "sipfilter"]))?;
    if text(&installed_before).contains("install ok installed") {
        bail!("sipfilter is already installed on this machine: this test installs and purges it");
    }
    let _purge = Purge;
    let out = run(Command::new("dpkg").arg("-i").arg(&deb))?;
    assert!(out.status.success(), "dpkg -i failed:\n{}", text(&out));
    eprintln!("dpkg -i said:\n{}", text(&out));

    let out = run(Command::new("/usr/sbin/sipfilter").arg("--version"))?;
    assert!(
        text(&out).contains(env!("CARGO_PKG_VERSION")),
        "sipfilter --version: {}",
        text(&out)
    );
    // The conffile as shipped is refused, with the line and what to do.
    let out = run(Command::new("/usr/sbin/sipfilter").arg("check"))?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("/etc/sipfilter/sipfilter.toml:") && text(&out).contains("packaged placeholder"),
        "{}",
        text(&out)
    );
    let meta = std::fs::metadata("/etc/sipfilter/sipfilter.toml")?;
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600,
        "the configuration is root's"
    );
    // Edited, it passes.
    let edited = std::env::temp_dir().join(format!("sipfilter-package-{}.toml", std::process::id()));
    let conf = std::fs::read_to_string("/etc/sipfilter/sipfilter.toml")?.replace("\"CHANGE-ME\"", "\"eth0\"");
    std::fs::write(&edited, conf)?;
    let out = run(Command::new("/usr/sbin/sipfilter")
        .arg("check")
        .arg("--config")
        .arg(&edited))?;
    let _ = std::fs::remove_file(&edited);
    assert!(out.status.success(), "the edited conffile: {}", text(&out));

    for page in ["sipfilter", "sipfilter-ban", "sipfilter-run", "sipfilter-fraud"] {
        let out = run(Command::new("man").args(["-w", page]))?;
        assert!(
            out.status.success() && text(&out).contains("/usr/share/man/man8/"),
            "man -w {page}: {}",
            text(&out)
        );
    }
    for file in [
        "/usr/share/bash-completion/completions/sipfilter",
        "/usr/share/sipfilter/grafana/sipfilter.json",
        "/usr/share/sipfilter/prometheus/sipfilter-rules.yml",
        "/usr/share/doc/sipfilter/README.Debian",
    ] {
        assert!(Path::new(file).exists(), "{file} is installed");
    }

    let unit = "/lib/systemd/system/sipfilter.service";
    let out = run(Command::new("systemd-analyze").args(["verify", unit]))?;
    assert!(out.status.success(), "systemd-analyze verify: {}", text(&out));
    let out = run(Command::new("systemd-analyze").args(["security", "--offline=yes", unit]))?;
    let score = text(&out)
        .lines()
        .find_map(|l| l.split("Overall exposure level for sipfilter.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        .with_context(|| format!("no score in: {}", text(&out)))?;
    eprintln!("systemd-analyze security --offline=yes: exposure {score}");
    let score: f64 = score.parse()?;
    assert!(
        score <= 3.0,
        "the unit's exposure {score} (BPF needs a few capabilities; 2.4 when written)"
    );

    let out = run(Command::new("dpkg").args(["--purge", "sipfilter"]))?;
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    let left: Vec<&&str> = LEFT_BEHIND.iter().filter(|p| Path::new(p).exists()).collect();
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
    let out = run(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "sipfilter"]))?;
    assert!(!text(&out).contains("installed"), "dpkg still lists it: {}", text(&out));
    Ok(())
}
