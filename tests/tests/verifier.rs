//! How much of the verifier's budget each program takes on the running kernel. The smallest
//! verifier our users run (Debian 12's 6.1, `cargo xtask kernel-test`) walks the same code in
//! more states than the current one; a program that creeps toward the limit here is refused
//! there first. The bound leaves that margin.

use sipfilter_tests::harness::TestFilter;

/// The kernel's budget of instructions the verifier processes for one program.
const VERIFIER_LIMIT: u32 = 1_000_000;
/// The share of it a program may take on the development kernel (6.18 walks the largest,
/// the inspection, in about a third; 6.1 takes it whole).
const HEADROOM_SHARE: f64 = 0.6;

#[test]
fn every_program_leaves_the_verifier_headroom() -> anyhow::Result<()> {
    let filter = TestFilter::new()?;
    anyhow::ensure!(
        filter.loaded.answers_refused.is_none(),
        "the answers programs were refused: {:?}",
        filter.loaded.answers_refused
    );
    let mut report = Vec::new();
    let mut over = Vec::new();
    for (name, program) in filter.loaded.ebpf.programs() {
        let Ok(info) = program.info() else {
            // Not loaded: the floors the benchmark loads on demand.
            continue;
        };
        let Some(n) = info.verified_instruction_count() else {
            continue;
        };
        report.push(format!("{name}: {n}"));
        if f64::from(n) > HEADROOM_SHARE * f64::from(VERIFIER_LIMIT) {
            over.push(format!("{name} ({n})"));
        }
    }
    println!("instructions the verifier processed: {}", report.join(", "));
    assert!(report.len() >= 9, "too few programs reported: {report:?}");
    assert!(
        over.is_empty(),
        "over {:.0}% of the verifier's budget: {}",
        100.0 * HEADROOM_SHARE,
        over.join(", ")
    );
    Ok(())
}
