//! `cargo xtask package`: the Debian package (cargo-deb, from `[package.metadata.deb]` in
//! sipfilter/Cargo.toml): the release binary, the hardened unit, the configuration as a
//! conffile (the documented example, with a placeholder interface the agent refuses until
//! edited), man pages generated from the CLI definition, bash completion, the dashboard and the
//! alert rules. Then lintian on it.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::setup;

fn workspace() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Builds the package; returns its path.
pub fn run() -> anyhow::Result<PathBuf> {
    let root = workspace();
    setup::cargo(&["build", "--release", "--package", "sipfilter", "--bins"])?;
    let bin = root.join("target/release/sipfilter");
    let staging = root.join("target/package");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;

    let status = Command::new(&bin)
        .arg("manpages")
        .arg(staging.join("man"))
        .status()
        .context("cannot run sipfilter manpages")?;
    if !status.success() {
        bail!("sipfilter manpages failed");
    }
    let completion = Command::new(&bin).args(["completions", "bash"]).output()?;
    if !completion.status.success() {
        bail!("sipfilter completions failed");
    }
    std::fs::write(staging.join("sipfilter.bash"), completion.stdout)?;
    std::fs::write(staging.join("sipfilter.toml"), packaged_config(&root)?)?;

    let status = Command::new("cargo-deb")
        .args(["--package", "sipfilter", "--no-build"])
        .current_dir(&root)
        .status()
        .context("cannot run cargo-deb (`cargo xtask setup` installs it)")?;
    if !status.success() {
        bail!("cargo-deb failed");
    }
    let deb = std::fs::read_dir(root.join("target/debian"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .context("cargo-deb wrote no .deb")?;
    println!("built {}", deb.display());
    let lintian = Command::new("lintian").arg("--no-tag-display-limit").arg(&deb).output();
    match lintian {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let errors = text.lines().filter(|l| l.starts_with("E:")).count();
            let warnings = text.lines().filter(|l| l.starts_with("W:")).count();
            print!("{text}");
            println!("lintian: {errors} error(s), {warnings} warning(s)");
            if errors > 0 {
                bail!("lintian reports errors on {}", deb.display());
            }
        }
        Err(e) => println!("lintian not run ({e}); `cargo xtask setup` installs it"),
    }
    Ok(deb)
}

/// The documented example configuration with the interface as a placeholder and no example
/// allowlist: what an operator edits after installing.
fn packaged_config(root: &std::path::Path) -> anyhow::Result<String> {
    let example = std::fs::read_to_string(root.join("examples/sipfilter.toml"))?;
    let mut out = String::new();
    let mut replaced = 0;
    for line in example.lines() {
        let line = if line.starts_with("interfaces = ") {
            replaced += 1;
            "interfaces = [\"CHANGE-ME\"]   # your PBX-facing interface, e.g. [\"eth0\"]".to_string()
        } else if line.starts_with("allow = [\"192.0.2.0/24\"") {
            replaced += 1;
            "allow = []".to_string()
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    if replaced != 2 {
        bail!("examples/sipfilter.toml changed: no interfaces/allow line to replace");
    }
    Ok(out)
}
