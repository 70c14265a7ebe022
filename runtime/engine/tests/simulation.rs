//! Deterministic simulation of the run engine with crash injection.
//!
//! `KILN_SIM_SEEDS` sets how many seeds run (10,000 by default) and
//! `KILN_SIM_SEED` runs one seed alone. A failing seed panics with the
//! command that reproduces it.

mod sim;

use sim::{invariants, world::World};

fn run_seed(seed: u64) -> Result<World, String> {
    let outcome = std::panic::catch_unwind(|| {
        let mut world = World::new(seed);
        world.run();
        world
    });
    let mut world = outcome.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })?;
    match world
        .store
        .check_mirror()
        .and_then(|()| invariants::check(&world))
    {
        Ok(()) => Ok(world),
        Err(broken) => Err(format!(
            "{broken}\nlast steps:\n  {}",
            world.trace.join("\n  ")
        )),
    }
}

#[test]
fn seeded_worlds_with_crashes_keep_every_invariant() {
    let seeds: Vec<u64> = match std::env::var("KILN_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("KILN_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("KILN_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(10_000u64);
            (0..count).collect()
        }
    };
    let (mut crashes, mut runs, mut sends) = (0u64, 0usize, 0usize);
    for seed in seeds.iter().copied() {
        match run_seed(seed) {
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
