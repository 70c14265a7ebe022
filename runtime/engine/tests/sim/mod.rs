//! Deterministic simulation of the run engine, in the style of
//! FoundationDB's and TigerBeetle's simulators: a seeded scheduler drives
//! runs with scripted guests through [`kiln_engine::apply`] over a model
//! store that loses every write not yet synced when it crashes, on a
//! simulated clock. After every seed the invariants are checked.
//!
//! - [`rng`]: the seeded random numbers;
//! - [`store`]: the model store's state and how the engine's write commands
//!   change it; [`crashing`]: durable state, applied state, unsynced batches;
//! - [`guest`]: the scripts runs follow, and what a run does next given its
//!   journal (deterministic replay);
//! - [`world`]: the scheduler, the server's loop, crashes and recovery;
//! - [`invariants`]: what must hold once the world is quiet.

pub mod crashing;
pub mod guest;
pub mod invariants;
pub mod rng;
pub mod store;
pub mod world;

/// Runs the world of `seed`, with the store `mirror` makes beside its
/// model (if any), until it settles, then checks the mirror and every
/// invariant; the world, or what broke with its last steps.
pub fn run_seed(
    seed: u64,
    mirror: impl FnOnce() -> Option<Box<dyn crashing::Mirror>>,
) -> Result<world::World, String> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = world::World::with_mirror(seed, mirror());
        world.run();
        world
    }));
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

/// The seeds to run: `KILN_SIM_SEED` alone if set, else the first
/// `$count_var` (default `default`).
pub fn seeds(count_var: &str, default: u64) -> Vec<u64> {
    match std::env::var("KILN_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("KILN_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var(count_var)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(default);
            (0..count).collect()
        }
    }
}
