//! `cargo xtask test`: unit tests and the privileged kernel tests, then a sweep for anything
//! a crashed test left behind (namespaces, bpffs mounts), whether the tests passed or not;
//! then the fixture tables, the veth flood and the agent's egress attach on Debian 12's own
//! kernel, in a VM; then the package upgrade from the previous release.

use anyhow::bail;

use crate::{cleanup, kernel_test, setup};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("the kernel tests load XDP programs and create network namespaces: run as root");
    }
    // The CLI and agent tests drive the real binary, which `cargo test` does not build for
    // another package's tests.
    setup::cargo(&["build", "--package", "sipfilter", "--bins"])?;
    // The package test installs the .deb: build it (and run lintian) first.
    crate::package::run()?;
    // All test binaries run even when one fails, so one failure does not hide others.
    let mut args: Vec<&str> = vec!["test", "--workspace", "--no-fail-fast"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    let result = setup::cargo(&args);
    cleanup::run();
    // The same programs on Debian 12's and Debian 13's own kernels (6.1, 6.12), in a VM: the
    // fixture tables, the veth flood and the agent's egress attach (kernel_test::CI_TESTS).
    // Skipped when the caller passed test arguments (a filter).
    let on_debian_kernel = match extra.is_empty() {
        true => {
            let names: Vec<String> = kernel_test::CI_TESTS.iter().map(|t| t.to_string()).collect();
            kernel_test::run_on(&kernel_test::releases("all")?, &names, None)
        }
        false => Ok(()),
    };
    // The package-to-package upgrade from the previous release (its .deb built once from its
    // commit, then cached under target/upgrade): what `apt upgrade` does to an operator.
    let upgrade = match extra.is_empty() {
        true => crate::upgrade::run(None),
        false => Ok(()),
    };
    result?;
    on_debian_kernel?;
    upgrade?;
    // A short smoke of every fuzz target (`cargo xtask fuzz` runs them longer).
    crate::fuzz::run(10)
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
