//! Kiln's on-disk key layout, in one place: every keyspace of the store,
//! what its keys hold, and the prefix constants the typed modules build
//! their keys from. Numbers in keys are big-endian so keys sort by them.
//!
//! | key | value |
//! |---|---|
//! | `deploy/<seq: u64 BE>` | `Deployment` (JSON) |
//! | `bundle/<sha256 hex>` | the bundle's bytes |
//! | `run/<run id>` | `Run` (MessagePack with numbered fields; JSON or named MessagePack as earlier Kiln wrote it); a finished run's record may hold its last journal entries |
//! | `active/<run id>` | empty: the run is queued or executing (read at start-up) |
//! | `open/<run id>` | empty: the run has not finished (retention reads which versions are in use) |
//! | `finished/<finished ms: u64 BE><run id>` | empty: the run finished then, more than a second after it was made (retention reads what expired, oldest first; runs that finished sooner it finds under `run/`) |
//! | `runs-indexed` | empty: runs stored before `open/` and `finished/` existed have been indexed |
//! | `journal/<run id>/<seq: u64 BE>` | `JournalRecord` (JSON), or a JSON array of the records numbered `seq` on that a slice wrote together (the commit that finishes a run keeps its entries in the run's record instead) |
//! | `snap/<run id>/<attempt: u32 BE>/<layer: u32 BE>` | a `SnapshotLayer`, sealed with the master key (`KSEL` envelope) |
//! | `timer/<due ms: u64 BE><run id>/<wait id: u64 BE>` | empty: a durable timer |
//! | `idem/<idempotency key hash>` | `IdempotentRun` (JSON): the run a trigger's key made |
//! | `child/<parent run id>/<child run id>` | empty: the parent triggered the child |
//! | `batch/<batch id>` | `BatchRecord` (JSON) |
//! | `batch-item/<batch id>/<index: u32 BE>` | the run id (text) made for a v3 batch's item, empty if none |
//! | `batch-key/<idempotency key hash>` | `BatchKey` (JSON): the v3 batch a key made |
//! | `waiter/<child run id>/<waiting run id>/<wait id: u64 BE>` | `Waiter` (JSON): a suspended run waits on the child |
//! | `token/<token id>` | `WaitToken` (JSON) |
//! | `token-key/<idempotency key>` | the token id created with that key |
//! | `token-waiter/<token id>/<waiting run id>/<wait id: u64 BE>` | `Waiter` (JSON): a suspended run waits on the token |
//! | `wait/<run id>/<wait id: u64 BE>` | `WaitRecord` (JSON): a wait the run armed when it suspended |
//! | `inbox/<run id>/<wait id: u64 BE>/<part: u32 BE>` | `Arrival` (JSON): a fact addressed to the run |
//! | `run-blob/<run id>/payload` | the run's payload, when over the limit |
//! | `run-blob/<run id>/output` | the run's output, when over the limit |
//! | `packet/<path>` | an uploaded packet: its content type, `\0`, its bytes |
//! | `packet-at/<path>` | when the packet was uploaded (ms: u64 BE), for retention |
//! | `packets-dated` | empty: packets stored before upload times were kept have been given one |
//! | `debounce/<task id>\0<key>` | the run id (text) |
//! | `stream/<run id>/<stream key>\0<index: u64 BE>` | a chunk a task appended to a realtime stream (JSON) |
//! | `stream-key/<run id>/<stream key>` | empty: the run has this realtime stream |
//! | `pending/<run id>` | the trigger of a `PENDING_VERSION` run (JSON), until a deploy brings its task |
//! | `queue-paused/<queue name>` | empty |
//! | `sched/<schedule id>` | `Schedule` (JSON) |
//! | `sched-key/<key>` | the schedule id under a `ScheduleKey` |
//! | `sched-due/<next run ms: u64 BE><schedule id>` | empty: an active schedule's next occurrence |
//! | `sched-occ/<schedule id>/<occurrence ms: u64 BE>` | the run id made for the schedule's latest occurrence |
//! | `sched-run/<schedule id>/<run id>` | empty: a run the schedule fired |
//! | `project/<project ref>` | `Project` (JSON) |
//! | `apikey/<secret key>` | `ApiKey` (JSON): the project and environment a key belongs to |
//! | `envvar/<name>` | `StoredEnvVar` (JSON): an environment variable, its value sealed with the master key |
//! | `seal-check` | a constant sealed with the master key: a server started with another key refuses to start |
//! | `env-secret/<project ref>/<environment>` | the environment's signing secret (callback URLs, packet URLs) |
//! | `env/<project ref>/<environment>/<any key above>` | another environment's keyspace (see `PrefixedBackend`) |
//! | `\xff\xffchunk/<generation: u64 BE><index: u32 BE>` | a piece of a large value (sled backend only; see `sled_chunks`) |
//!
//! The server's first environment (the default project's, with the key
//! `kiln serve` starts with) keeps its keys at the top level, as before
//! projects existed; every other environment keeps them under its `env/`
//! prefix, so no code reading one environment can see another's.
//!
//! In PostgreSQL each keyspace is a table of its own, `kiln_<keyspace>`
//! (`crate::postgres_tables`), holding the same keys.
//!
//! Waiting runs are not in `active/`: they are reached through what wakes
//! them (their timers, their inbox), so start-up reads only runs that were
//! executing and runs with something in their inbox.

pub(crate) const DEPLOY: &[u8] = b"deploy/";
pub(crate) const BUNDLE: &[u8] = b"bundle/";
pub(crate) const RUN: &[u8] = b"run/";
pub(crate) const ACTIVE: &[u8] = b"active/";
pub(crate) const OPEN: &[u8] = b"open/";
pub(crate) const FINISHED: &[u8] = b"finished/";
pub(crate) const RUNS_INDEXED: &[u8] = b"runs-indexed";
pub(crate) const JOURNAL: &[u8] = b"journal/";
pub(crate) const SNAP: &[u8] = b"snap/";
pub(crate) const TIMER: &[u8] = b"timer/";
pub(crate) const IDEM: &[u8] = b"idem/";
pub(crate) const RUN_BLOB: &[u8] = b"run-blob/";
pub(crate) const PACKET: &[u8] = b"packet/";
pub(crate) const PACKET_AT: &[u8] = b"packet-at/";
pub(crate) const PACKETS_DATED: &[u8] = b"packets-dated";
pub(crate) const CHILD: &[u8] = b"child/";
pub(crate) const BATCH: &[u8] = b"batch/";
pub(crate) const BATCH_ITEM: &[u8] = b"batch-item/";
pub(crate) const BATCH_KEY: &[u8] = b"batch-key/";
pub(crate) const WAITER: &[u8] = b"waiter/";
pub(crate) const WAIT: &[u8] = b"wait/";
pub(crate) const INBOX: &[u8] = b"inbox/";
pub(crate) const TOKEN: &[u8] = b"token/";
pub(crate) const TOKEN_KEY: &[u8] = b"token-key/";
pub(crate) const TOKEN_WAITER: &[u8] = b"token-waiter/";
pub(crate) const DEBOUNCE: &[u8] = b"debounce/";
pub(crate) const PAUSED: &[u8] = b"queue-paused/";
pub(crate) const SCHED: &[u8] = b"sched/";
pub(crate) const SCHED_KEY: &[u8] = b"sched-key/";
pub(crate) const SCHED_DUE: &[u8] = b"sched-due/";
pub(crate) const SCHED_OCC: &[u8] = b"sched-occ/";
pub(crate) const SCHED_RUN: &[u8] = b"sched-run/";
pub(crate) const PROJECT: &[u8] = b"project/";
pub(crate) const API_KEY: &[u8] = b"apikey/";
pub(crate) const ENV_VAR: &[u8] = b"envvar/";
/// The key of the constant sealed with the master key (read by `/readyz`).
pub const SEAL_CHECK: &[u8] = b"seal-check";
pub(crate) const ENV_SECRET: &[u8] = b"env-secret/";
pub(crate) const PENDING: &[u8] = b"pending/";
pub(crate) const STREAM: &[u8] = b"stream/";
pub(crate) const STREAM_KEY: &[u8] = b"stream-key/";
