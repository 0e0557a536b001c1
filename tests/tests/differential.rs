//! The XDP program against the reference model (`tests/src/model.rs`): generated frames —
//! valid ones from every layer, then truncated, bit-flipped or random — through the real
//! program with BPF_PROG_TEST_RUN, one after another on one loaded program (its per-source
//! state accumulates), comparing the verdict and the outcome and method counters with the
//! model's. 100,000 frames here; `cargo xtask soak` runs millions. The seed is printed, and
//! `SIPFILTER_SEED=N` replays a run.

use sipfilter_common::{config::MAX_BURST, config::MAX_RATE, ClassLimit, KernelConfig, Method, Outcome};
use sipfilter_tests::{
    harness::{TestFilter, XDP_DROP, XDP_PASS},
    model::{self, Expected, Rng},
};

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_program_agrees_with_the_model() -> anyhow::Result<()> {
    let seed: u64 = std::env::var("SIPFILTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let frames: u64 = std::env::var("SIPFILTER_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    eprintln!("differential: seed {seed} (SIPFILTER_SEED={seed} replays it), {frames} frames");
    // No lists, no tiers, buckets no frame can empty: the model's configuration.
    let big = ClassLimit {
        rate_per_sec: MAX_RATE as u32,
        burst: MAX_BURST as u32,
    };
    let config = KernelConfig {
        limits: [big; 3],
        unknown_limits: [big; 3],
        ..KernelConfig::default()
    };
    let filter = TestFilter::with_config(&config)?;
    let mut r = Rng::new(seed);
    let mut before = filter.counters()?;
    let mut disagreements = Vec::new();
    let mut by_outcome = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..frames {
        let frame = model::frame(&mut r);
        let want = model::expect(&frame);
        let action = filter.run(&frame)?;
        let after = filter.counters()?;
        let outcome = Outcome::ALL
            .iter()
            .copied()
            .find(|o| after.outcome(*o) != before.outcome(*o));
        let method = Method::ALL
            .iter()
            .copied()
            .find(|m| after.method(*m) != before.method(*m));
        let got = Expected {
            outcome: outcome.unwrap_or(Outcome::NotIp),
            method,
        };
        let want_action = if want.outcome.drops() { XDP_DROP } else { XDP_PASS };
        if got != want || action != want_action || outcome.is_none() {
            disagreements.push(format!(
                "frame {i}: program {got:?} (action {action}), model {want:?}\n  {}",
                hex(&frame)
            ));
            if disagreements.len() >= 10 {
                break;
            }
        }
        *by_outcome.entry(want.outcome.name()).or_default() += 1;
        before = after;
    }
    eprintln!("frames by outcome: {by_outcome:?}");
    assert!(
        disagreements.is_empty(),
        "the program and the model disagree (seed {seed}):\n{}",
        disagreements.join("\n")
    );
    Ok(())
}
