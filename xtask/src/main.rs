//! Developer and operator tasks: `cargo xtask setup|build|test|bench|demo`.
//!
//! xtask depends on nothing that needs the eBPF toolchain, so it compiles on a fresh
//! machine and can install that toolchain before anything else is built.

mod bench;
mod cleanup;
mod demo;
mod fuzz;
mod kernel_test;
// The tests' namespace and process helpers, shared as source: xtask cannot depend on the
// tests crate, which needs the eBPF toolchain that `xtask setup` installs.
#[allow(dead_code)]
#[path = "../../tests/src/netns.rs"]
mod netns;
mod package;
mod setup;
#[allow(dead_code)]
#[path = "../../tests/src/sipp.rs"]
mod sipp;
mod test;
mod upgrade;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "sipfilter's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (idempotent: only what is missing).
    Setup,
    /// Set up, then build the workspace (debug, or --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run unit tests and the privileged kernel tests (needs root).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then measure ns/packet per path with BPF_PROG_TEST_RUN; writes target/bench/xdp.json.
    Bench {
        /// Program runs per measurement (BPF_PROG_TEST_RUN repeat).
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Measurements per path; the median is reported.
        #[arg(long, default_value_t = 15)]
        runs: u32,
        /// Instead: sipfilter against nftables and iptables dropping the same frames (live
        /// frames into a veth in a namespace); writes target/bench/peers.json.
        #[arg(long)]
        peers: bool,
        /// Instead: how the cost grows with active sources, list sizes, bans and answer length;
        /// writes target/bench/scale.json.
        #[arg(long, conflicts_with = "peers")]
        scale: bool,
        /// Instead: the agent's CPU and memory during a ban storm, a banned flood and 100,000
        /// bans expiring at once (the real agent on a veth in a namespace); writes
        /// target/bench/agent.json. Needs `cargo build -p sipfilter` (done here).
        #[arg(long, conflicts_with_all = ["peers", "scale"])]
        agent: bool,
    },
    /// Remove network namespaces, bpffs mounts and attachments left by an interrupted test run.
    Cleanup,
    /// Set up, then build the Debian package (target/debian/sipfilter_*.deb) and run lintian.
    Package,
    /// Set up, then run the differential test (the program against the reference model) on
    /// --frames generated frames with a fresh seed.
    Soak {
        #[arg(long, default_value_t = 5_000_000, value_name = "N")]
        frames: u64,
    },
    /// Set up, build the privileged test binaries, then boot Debian's own kernel (12's 6.1 by
    /// default, 13's 6.12 with --debian 13: what linux-image-amd64 names) in a qemu VM and run
    /// them there (xtask/kernel-test/run.sh). CI (`cargo xtask test`) runs the fixture tables,
    /// the veth flood and the agent's egress attach this way on both.
    KernelTest {
        /// Test targets of sipfilter-tests to run (default: fixtures veth answers calls
        /// sequences).
        tests: Vec<String>,
        /// A test name filter for every binary (libtest's).
        #[arg(long, value_name = "NAME")]
        filter: Option<String>,
        /// Whose kernel: Debian 12 (6.1), 13 (6.12), or all (one after the other).
        #[arg(long, value_name = "12|13|all", default_value = "12")]
        debian: String,
    },
    /// Set up, build the package of an earlier release (from a git worktree of its commit,
    /// cached in target/upgrade/) and this version's, then install the old one, make state with
    /// real traffic, install the new one over it and check that the state is still there and
    /// the filter never stopped dropping (needs root; not part of `test`).
    UpgradeTest {
        /// The release (version in sipfilter/src/releases.rs) or commit to upgrade from
        /// (default: the release before this version).
        #[arg(long, value_name = "VERSION|COMMIT")]
        from: Option<String>,
    },
    /// Set up, then run every fuzz target (cargo fuzz) for --secs seconds each.
    Fuzz {
        #[arg(long, default_value_t = 60, value_name = "N")]
        secs: u64,
    },
    /// Set up, build the agent, then run a lab in network namespaces: a robot probes, sweeps
    /// extensions, brute-forces a password and floods a SIPp PBX while a SIPp phone keeps
    /// registering, with `sipfilter run` watching the PBX (needs root).
    Demo {
        /// Instead: the same REGISTER flood with the agent and without it, as a table.
        #[arg(long)]
        compare: bool,
        /// How long the --compare flood lasts, in seconds.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        flood_secs: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            let mut args = vec!["build", "--workspace"];
            if release {
                args.push("--release");
            }
            setup::cargo(&args)
        }
        Task::Test { args } => {
            setup::run()?;
            test::run(&args)
        }
        Task::Bench {
            repeat,
            runs,
            peers,
            scale,
            agent,
        } => {
            setup::run()?;
            if agent {
                setup::cargo(&["build", "--release", "--package", "sipfilter", "--bins"])?;
                bench::extra("agent-bench", "agent.json")
            } else if peers {
                bench::extra("peers-bench", "peers.json")
            } else if scale {
                bench::extra("scale-bench", "scale.json")
            } else {
                bench::run(repeat, runs)
            }
        }
        Task::Demo { compare, flood_secs } => {
            setup::run()?;
            setup::cargo(&["build", "--package", "sipfilter", "--bins"])?;
            demo::run(compare, flood_secs)
        }
        Task::KernelTest { tests, filter, debian } => {
            setup::run()?;
            let tests = match tests.is_empty() {
                true => kernel_test::DEFAULT_TESTS.iter().map(|t| t.to_string()).collect(),
                false => tests,
            };
            kernel_test::run_on(&kernel_test::releases(&debian)?, &tests, filter.as_deref())
        }
        Task::Soak { frames } => {
            setup::run()?;
            // SAFETY: single-threaded here, before any child is spawned.
            unsafe { std::env::set_var("SIPFILTER_FRAMES", frames.to_string()) };
            setup::cargo(&[
                "test",
                "--release",
                "--package",
                "sipfilter-tests",
                "--test",
                "differential",
                "--",
                "--nocapture",
            ])
        }
        Task::Fuzz { secs } => {
            setup::run()?;
            fuzz::run(secs)
        }
        Task::Package => {
            setup::run()?;
            package::run().map(|_| ())
        }
        Task::UpgradeTest { from } => {
            setup::run()?;
            upgrade::run(from.as_deref())
        }
        Task::Cleanup => {
            cleanup::run();
            Ok(())
        }
    }
}
