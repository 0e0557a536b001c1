//! `cargo xtask upgrade-test [--from <version|commit>]`: the real package-to-package upgrade.
//! Builds the .deb of an earlier release (by default the one before this version in
//! sipfilter/src/releases.rs) from a git worktree of its commit, with that tree's own `cargo
//! xtask package` and a target folder of its own (cached as target/upgrade/sipfilter-<version>.deb,
//! so a second run skips the build), builds this version's package, then runs the ignored test
//! tests/tests/upgrade.rs, which installs the old one, makes state with real traffic, installs
//! the new one over it and checks that everything is still there (needs root).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::setup;

/// The variables the test reads: the two packages and the version it upgrades from.
pub const OLD_DEB_VAR: &str = "SIPFILTER_UPGRADE_OLD_DEB";
pub const NEW_DEB_VAR: &str = "SIPFILTER_UPGRADE_NEW_DEB";
pub const FROM_VAR: &str = "SIPFILTER_UPGRADE_FROM";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// `(version, commit)` of every release in sipfilter/src/releases.rs, oldest first, read as
/// text: xtask cannot depend on the sipfilter crate (its build needs the eBPF toolchain).
fn releases(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(root.join("sipfilter/src/releases.rs"))?;
    let field = |line: &str, name: &str| -> Option<String> {
        let rest = line.trim().strip_prefix(name)?.trim().strip_prefix('"')?;
        Some(rest.split('"').next()?.to_owned())
    };
    let mut out = Vec::new();
    let mut version = None;
    for line in text.lines() {
        if let Some(v) = field(line, "version:") {
            version = Some(v);
        } else if let (Some(c), Some(v)) = (field(line, "commit:"), version.as_ref()) {
            out.push((v.clone(), c));
            version = None;
        }
    }
    if out.is_empty() {
        bail!("no releases found in sipfilter/src/releases.rs");
    }
    Ok(out)
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What to upgrade from: `(label, commit)`. A release's version (or its commit) names that
/// release; any other commit is labelled by its short hash. Default: the release before
/// this version (the last one when this version is not released yet).
fn resolve(root: &Path, from: Option<&str>) -> anyhow::Result<(String, String)> {
    let releases = releases(root)?;
    let Some(from) = from else {
        let current = env!("CARGO_PKG_VERSION");
        let at = releases
            .iter()
            .position(|(v, _)| v == current)
            .unwrap_or(releases.len());
        if at == 0 {
            bail!("{current} is the first release: there is nothing to upgrade from");
        }
        return Ok(releases[at - 1].clone());
    };
    if let Some(r) = releases.iter().find(|(v, _)| v == from) {
        if !r.1.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("release {from} has no commit recorded yet ({}): pass a commit", r.1);
        }
        return Ok(r.clone());
    }
    let commit = git(root, &["rev-parse", "--short=7", &format!("{from}^{{commit}}")])
        .with_context(|| format!("{from} is neither a release in sipfilter/src/releases.rs nor a commit"))?;
    match releases
        .iter()
        .find(|(_, c)| c.len() >= 7 && (commit.starts_with(c.as_str()) || c.starts_with(&commit)))
    {
        Some((v, _)) => Ok((v.clone(), commit)),
        None => Ok((commit.clone(), commit)),
    }
}

/// A git worktree, removed (`git worktree remove --force`) when dropped: after the build,
/// failed or not.
struct Worktree {
    root: PathBuf,
    path: PathBuf,
}

impl Worktree {
    fn add(root: &Path, path: &Path, commit: &str) -> anyhow::Result<Worktree> {
        if path.exists() {
            // Left by an interrupted run.
            let _ = git(root, &["worktree", "remove", "--force", path.to_str().unwrap()]);
            let _ = std::fs::remove_dir_all(path);
            let _ = git(root, &["worktree", "prune"]);
        }
        git(root, &["worktree", "add", "--detach", path.to_str().unwrap(), commit])?;
        Ok(Worktree {
            root: root.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        match git(
            &self.root,
            &["worktree", "remove", "--force", self.path.to_str().unwrap()],
        ) {
            Ok(_) => eprintln!("xtask upgrade-test: removed the worktree {}", self.path.display()),
            Err(e) => eprintln!("xtask upgrade-test: {e:#} (remove {} by hand)", self.path.display()),
        }
    }
}

/// The old release's package: cached, or built by its own `cargo xtask package` in a
/// worktree of its commit, with its own target folder.
fn old_package(root: &Path, label: &str, commit: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/upgrade");
    std::fs::create_dir_all(&dir)?;
    let cached = dir.join(format!("sipfilter-{label}.deb"));
    if cached.exists() {
        println!(
            "xtask upgrade-test: the package of {label} ({commit}) is cached: {} (delete it to rebuild)",
            cached.display()
        );
        return Ok(cached);
    }
    let started = Instant::now();
    let src = dir.join(format!("src-{commit}"));
    let target = dir.join(format!("target-{commit}"));
    std::fs::create_dir_all(&target)?;
    println!(
        "xtask upgrade-test: building the package of {label} from {commit} in {} (its target folder: {})",
        src.display(),
        target.display()
    );
    let tree = Worktree::add(root, &src, commit)?;
    // The old xtask reads its binary and the staged files from `<tree>/target` whatever
    // CARGO_TARGET_DIR says: that path leads to the tree's own target folder too.
    std::os::unix::fs::symlink(&target, tree.path.join("target")).context("cannot link the old tree's target")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["xtask", "package"])
        .current_dir(&tree.path)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo xtask package` of {label} ({commit}) failed ({status})");
    }
    let deb = std::fs::read_dir(target.join("debian"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .context("the old tree's cargo-deb wrote no .deb")?;
    std::fs::copy(&deb, &cached)?;
    drop(tree);
    println!(
        "xtask upgrade-test: built the package of {label} in {:.0} s: {} (from {})",
        started.elapsed().as_secs_f64(),
        cached.display(),
        deb.display()
    );
    Ok(cached)
}

pub fn run(from: Option<&str>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the upgrade test installs packages with dpkg and creates network namespaces: run as root");
    }
    let root = workspace();
    let (label, commit) = resolve(&root, from)?;
    let started = Instant::now();
    let old = old_package(&root, &label, &commit)?;
    let old_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let new = crate::package::run()?;
    let new_secs = started.elapsed().as_secs_f64();
    println!(
        "xtask upgrade-test: packages ready: {label} {} ({old_secs:.0} s), {} {} ({new_secs:.0} s)",
        old.display(),
        env!("CARGO_PKG_VERSION"),
        new.display()
    );
    // SAFETY: single-threaded here, before the test is spawned.
    unsafe {
        std::env::set_var(OLD_DEB_VAR, &old);
        std::env::set_var(NEW_DEB_VAR, &new);
        std::env::set_var(FROM_VAR, &label);
    }
    let started = Instant::now();
    let result = setup::cargo(&[
        "test",
        "--package",
        "sipfilter-tests",
        "--test",
        "upgrade",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    println!(
        "xtask upgrade-test: the test took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    result
}
