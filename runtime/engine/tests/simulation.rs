//! Deterministic simulation of the run engine with crash injection.
//!
//! `KILN_SIM_SEEDS` sets how many seeds run (10,000 by default) and
//! `KILN_SIM_SEED` runs one seed alone. A failing seed panics with the
//! command that reproduces it.

mod sim;

use sim::{run_seed, seeds};

#[test]
fn seeded_worlds_with_crashes_keep_every_invariant() {
    let seeds = seeds("KILN_SIM_SEEDS", 10_000);
    let (mut crashes, mut runs, mut sends) = (0u64, 0usize, 0usize);
    for seed in seeds.iter().copied() {
        match run_seed(seed, || None) {
            Ok(world) => {
                crashes += u64::from(world.crashes);
                runs += world.store.applied.runs.len();
                sends += world.sends.len();
            }
            Err(why) => panic!(
                "seed {seed} broke an invariant: {why}\n\
                 reproduce: KILN_SIM_SEED={seed} cargo test -p kiln-engine --test simulation"
            ),
        }
    }
    println!(
        "{} seeds: {runs} runs, {crashes} crashes, {sends} fetches sent, every invariant kept",
        seeds.len()
    );
    assert!(
        seeds.len() < 100 || crashes > 0,
        "the simulation injected no crash"
    );
}
