//! The engine's deterministic simulation (`runtime/engine/tests/sim`) with
//! a real store beside its model: every commit the simulated server makes
//! is also written, through the executor's own interpreter of the engine's
//! commands ([`kiln_server::executor::engine_writes`]), to Kiln's store on
//! PostgreSQL or sled, whose group committer writes in the background as it
//! does in the server. At each simulated crash the store stops as a killed
//! process would (`halt_as_if_killed`) and is opened again; what it holds
//! must be the model's durable state with some prefix of the unsynced
//! commits applied, whole and in order, and the simulation carries on from
//! exactly that. At the end of each seed the store must hold what the model
//! holds, and every invariant of the simulation must hold.
//!
//! On sled, reopening in the same process finds what sled applied, synced
//! or not; what a lost page cache takes is shown by the engine's own
//! simulation, whose model store loses every unsynced commit. On
//! PostgreSQL, what the database committed is what a killed server leaves.
//!
//! `KILN_SIM_STORE_SEEDS` sets how many seeds run on each store (40 by
//! default); `KILN_SIM_SEED` runs one alone.

#[path = "../../../tests/support/postgres.rs"]
mod postgres;
#[path = "../../engine/tests/sim/mod.rs"]
#[allow(dead_code)]
mod sim;

use kiln_engine::Command;
use kiln_store::{Backend, Batch, PostgresBackend, PrefixedBackend, SledBackend, Store, TimerKey};
use kiln_types::{RunId, Timestamp, TokenId};
use sim::crashing::Mirror;
use sim::store::State;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Where a seed's store is.
#[derive(Clone)]
enum Place {
    /// A PostgreSQL database; each seed under a key prefix of its own.
    Postgres(String),
    /// A sled directory of the seed's own.
    Sled(std::path::PathBuf),
}

/// An open backend, and how to stop it as a kill would.
enum Root {
    Postgres(Arc<PostgresBackend>),
    Sled(Arc<SledBackend>),
}

impl Root {
    fn halt_as_if_killed(&self) {
        match self {
            Root::Postgres(b) => b.halt_as_if_killed(),
            Root::Sled(b) => b.halt_as_if_killed(),
        }
    }
}

fn open(place: &Place, prefix: &str) -> (Root, Store) {
    let (root, backend): (Root, Arc<dyn Backend>) = match place {
        Place::Postgres(url) => {
            let b = Arc::new(PostgresBackend::open(url).expect("the store opens"));
            (Root::Postgres(b.clone()), b)
        }
        Place::Sled(dir) => {
            // sled's lock goes with its last handle, a moment after the
            // backend closes.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let b = loop {
                match SledBackend::open(dir) {
                    Ok(b) => break Arc::new(b),
                    Err(e) if std::time::Instant::now() > deadline => {
                        panic!("the sled store did not open again: {e}")
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            };
            (Root::Sled(b.clone()), b)
        }
    };
    let store = Store::new(Arc::new(PrefixedBackend::new(
        backend,
        prefix.as_bytes().to_vec(),
    )));
    (root, store)
}

/// Kiln's store beside the model.
struct StoreMirror {
    place: Place,
    prefix: String,
    root: Option<Root>,
    store: Store,
    runtime: tokio::runtime::Runtime,
}

impl StoreMirror {
    fn new(place: &Place, seed: u64) -> Self {
        let prefix = format!("sim/{seed}/");
        let (root, store) = open(place, &prefix);
        StoreMirror {
            place: place.clone(),
            prefix,
            root: Some(root),
            store,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
        }
    }

    /// What the store holds, as the model keeps it: the runs and tokens
    /// named and every other the store holds, and the runs its index of
    /// active runs (which the server's recovery reads) names.
    fn read(
        &self,
        runs: &BTreeSet<RunId>,
        tokens: &BTreeSet<TokenId>,
    ) -> Result<(State, BTreeSet<RunId>), String> {
        let store = &self.store;
        let e = |e: kiln_store::StoreError| e.to_string();
        let mut state = State::default();
        let mut runs = runs.clone();
        runs.extend(store.runs().map_err(e)?.into_iter().map(|r| r.id));
        let mut tokens = tokens.clone();
        tokens.extend(store.tokens().map_err(e)?.into_iter().map(|t| t.id));
        for id in &runs {
            if let Some(run) = store.run(id).map_err(e)? {
                state.runs.insert(id.clone(), run);
            }
            let journal = store.journal(id).map_err(e)?;
            if !journal.is_empty() {
                state.journal.insert(id.clone(), journal);
            }
            let waits = store.armed_waits(id).map_err(e)?;
            if !waits.is_empty() {
                state
                    .waits
                    .insert(id.clone(), waits.into_iter().map(|w| (w.id, w)).collect());
            }
            let waiters = store.waiters(id).map_err(e)?;
            if !waiters.is_empty() {
                let waiters = waiters
                    .into_iter()
                    .map(|w| ((w.parent.clone(), w.wait_id), w))
                    .collect();
                state.waiters.insert(id.clone(), waiters);
            }
            let inbox = store.inbox(id).map_err(e)?;
            if !inbox.is_empty() {
                state.inbox.insert(
                    id.clone(),
                    inbox
                        .into_iter()
                        .map(|a| ((a.wait_id, a.part), a))
                        .collect(),
                );
            }
        }
        for id in &tokens {
            if let Some(token) = store.token(id).map_err(e)? {
                state.tokens.insert(id.clone(), token);
            }
            let waiters = store.token_waiters(id).map_err(e)?;
            if !waiters.is_empty() {
                state.token_waiters.insert(
                    id.clone(),
                    waiters
                        .into_iter()
                        .map(|w| ((w.parent.clone(), w.wait_id), w))
                        .collect(),
                );
            }
        }
        // A run's delay and ttl timers are the server's own, not the
        // engine's waits; the model does not keep them.
        state.timers = store
            .timers(Timestamp(0), Timestamp(u64::MAX), usize::MAX)
            .map_err(e)?
            .into_iter()
            .filter(|t| t.wait_id != TimerKey::DELAY && t.wait_id != TimerKey::TTL)
            .map(|t| (t.due, t.run_id, t.wait_id))
            .collect();
        let active = store
            .active_runs()
            .map_err(e)?
            .into_iter()
            .map(|r| r.id)
            .collect();
        Ok((state, active))
    }
}

/// The model's state as the store keeps it: a waiter of a batch wait names
/// its batch (the model does not keep it).
fn as_stored(model: &State) -> State {
    let mut state = model.clone();
    for waiters in state.waiters.values_mut() {
        for ((parent, wait_id), waiter) in waiters.iter_mut() {
            let wait = model.waits.get(parent).and_then(|w| w.get(wait_id));
            if let Some(kiln_types::WaitRecord {
                on: kiln_types::WaitOn::Batch { batch_id, .. },
                ..
            }) = wait
            {
                waiter.batch = kiln_types::BatchId::parse(batch_id).ok();
            }
        }
    }
    state
}

/// The runs the store's index of active runs must name: those queued or
/// executing.
fn active(model: &State) -> BTreeSet<RunId> {
    model
        .runs
        .values()
        .filter(|r| !r.status.is_final() && !r.status.is_at_rest())
        .map(|r| r.id.clone())
        .collect()
}

/// The runs and tokens `states` and `commits` name.
fn named(states: &[&State], commits: &[Vec<Command>]) -> (BTreeSet<RunId>, BTreeSet<TokenId>) {
    let mut runs = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for state in states {
        runs.extend(state.runs.keys().cloned());
        tokens.extend(state.tokens.keys().cloned());
    }
    for command in commits.iter().flatten() {
        match command {
            Command::PutRun(run) => {
                runs.insert(run.id.clone());
            }
            Command::PutToken(token) => {
                tokens.insert(token.id.clone());
            }
            _ => {}
        }
    }
    (runs, tokens)
}

/// Where the store and the model differ first, field by field.
fn difference(stored: &(State, BTreeSet<RunId>), model: &State) -> Option<String> {
    let (stored, stored_active) = stored;
    let wanted_active = active(model);
    if *stored_active != wanted_active {
        return Some(format!(
            "the index of active runs differs:\n  store: {stored_active:?}\n  model: {wanted_active:?}"
        ));
    }
    let model = &as_stored(model);
    macro_rules! field {
        ($name:ident) => {
            if stored.$name != model.$name {
                return Some(format!(
                    "{} differ:\n  store: {:?}\n  model: {:?}",
                    stringify!($name),
                    stored.$name,
                    model.$name
                ));
            }
        };
    }
    field!(runs);
    field!(journal);
    field!(waits);
    field!(waiters);
    field!(token_waiters);
    field!(inbox);
    field!(tokens);
    field!(timers);
    None
}

impl Mirror for StoreMirror {
    fn commit(&mut self, writes: &[Command]) {
        use futures_util::FutureExt;
        let mut batch = Batch::default();
        kiln_server::executor::engine_writes(&mut batch, writes);
        // Applied at once (or refused at once, as a record that would not
        // encode is); durable when the committer gets to it.
        if let Some(Err(error)) = self.store.commit(batch).now_or_never() {
            panic!("a commit was refused: {error}");
        }
    }

    fn sync(&mut self) {
        self.runtime
            .block_on(self.store.settled())
            .expect("the store settles");
    }

    fn crash(&mut self, durable: &State, unsynced: &[Vec<Command>]) -> Result<usize, String> {
        let root = self.root.take().expect("the store is open");
        root.halt_as_if_killed();
        // Every handle goes, so the backend closes (and lets go of the
        // database) before it opens again.
        self.store = Store::new(Arc::new(kiln_store::MemoryBackend::new()));
        drop(root);
        let (root, store) = open(&self.place, &self.prefix);
        self.root = Some(root);
        self.store = store;
        let (runs, tokens) = named(&[durable], unsynced);
        let stored = self.read(&runs, &tokens)?;
        let mut candidate = durable.clone();
        let mut first = None;
        for kept in 0..=unsynced.len() {
            match difference(&stored, &candidate) {
                None => return Ok(kept),
                Some(why) => {
                    first.get_or_insert(why);
                }
            }
            if let Some(commit) = unsynced.get(kept) {
                for write in commit {
                    candidate.write(write);
                }
            }
        }
        Err(format!(
            "it holds no prefix of the {} unsynced commits; against the durable state, {}",
            unsynced.len(),
            first.unwrap_or_default()
        ))
    }

    fn check(&mut self, state: &State) -> Result<(), String> {
        self.sync();
        let (runs, tokens) = named(&[state], &[]);
        let stored = self.read(&runs, &tokens)?;
        match difference(&stored, state) {
            None => Ok(()),
            Some(why) => Err(format!("the store and the model: {why}")),
        }
    }
}

/// Runs the seeds on stores at `place` (`each` makes a seed's place);
/// answers how many unsynced commits the crashes lost (`usize::MAX` for
/// too few seeds to tell).
fn seeds_keep_every_invariant(store: &str, each: impl Fn(u64) -> Place) -> usize {
    let seeds = sim::seeds("KILN_SIM_STORE_SEEDS", 40);
    let (mut crashes, mut kept, mut lost, mut runs) = (0u64, 0usize, 0usize, 0usize);
    for seed in seeds.iter().copied() {
        let place = each(seed);
        let mirror = || Some(Box::new(StoreMirror::new(&place, seed)) as Box<dyn Mirror>);
        match sim::run_seed(seed, mirror) {
            Ok(world) => {
                crashes += u64::from(world.crashes);
                kept += world.store.kept_at_crash;
                lost += world.store.lost_at_crash;
                runs += world.store.applied.runs.len();
            }
            Err(why) => panic!(
                "seed {seed} on {store} broke an invariant: {why}\n\
                 reproduce: KILN_SIM_SEED={seed} cargo test -p kiln-server --test simulation \
                 (how many unsynced commits the store keeps at a crash depends on its \
                 committer's timing: the trace says how many it kept)"
            ),
        }
    }
    println!(
        "{} seeds on {store}: {runs} runs, {crashes} crashes, at which the store kept {kept} \
         unsynced commits and lost {lost}; every invariant kept",
        seeds.len()
    );
    if seeds.len() >= 20 {
        assert!(crashes > 0, "the simulation injected no crash");
        lost
    } else {
        // Too few seeds to be sure a crash found something unwritten.
        usize::MAX
    }
}

#[test]
fn seeded_worlds_on_postgres_keep_every_invariant_and_the_model_s_state() {
    let server = postgres::Postgres::start();
    let place = Place::Postgres(server.database("sim"));
    let lost = seeds_keep_every_invariant("PostgreSQL", |_| place.clone());
    // Each commit waits for PostgreSQL's flush to disk, so crashes find
    // some unwritten: a halt that wrote them all would be no kill.
    assert!(
        lost > 0,
        "no crash lost an unsynced commit: the halt is no kill"
    );
}

#[test]
fn seeded_worlds_on_sled_keep_every_invariant_and_the_model_s_state() {
    let dir = tempfile::tempdir().expect("a directory");
    seeds_keep_every_invariant("sled", |seed| {
        Place::Sled(dir.path().join(format!("seed-{seed}")))
    });
}
