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
