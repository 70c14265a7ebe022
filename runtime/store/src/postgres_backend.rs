//! The PostgreSQL backend: Kiln's ordered key-value map in a PostgreSQL
//! table, made durable by a group committer.
//!
//! `kiln serve --store postgres://…` keeps the store in a PostgreSQL
//! database instead of the embedded sled directory. The key layout is the
//! same (`crate::layout`), each keyspace in a table of its own
//! (`crate::postgres_tables`) whose primary key is the key (`bytea` sorts
//! byte by byte, as sled's keys do), so every read the engine makes is a
//! lookup or a range of one table's primary key.
//!
//! Writes work as on sled ([`crate::SledBackend`]):
//! - a commit is numbered and kept in memory ([`crate::sled_unapplied`]),
//!   so every later read in this process sees it at once;
//! - one committer thread takes every commit made so far and writes them
//!   as one statement (writing every table the group touches), which
//!   PostgreSQL runs as one transaction: the group
//!   is atomic, and durable once PostgreSQL acknowledges it (with its
//!   default `synchronous_commit`, after its write-ahead log is flushed).
//!   While a group commits, the next gathers; only then is each writer
//!   acknowledged (group commit);
//! - a write that fails stops the server (fail-stop), as on sled.
//!
//! Reads go to PostgreSQL through a few pipelined connections, with the
//! commits not yet written laid over what the database returns. A scan
//! takes what is unwritten, then reads the table; if a group holding a
//! commit made after it took what is unwritten was sent meanwhile, the
//! scan may have seen part of a newer state, and reads again (after a few
//! tries, holding off the committer) so no scan sees a group half moved.
//!
//! One server owns a database: it takes a PostgreSQL advisory lock for
//! its life, and a second server on the same database is refused at start.
//! Schema changes are versioned migrations, applied at start.
//!
//! With a blob store ([`BlobStore`]), large values live in an S3-compatible
//! bucket and the table holds references to them: the committer writes a
//! group's objects before the group, and deletes the objects the group
//! replaced once it is durable; reads follow the references.

use crate::backend::{Backend, Commit, Op, Order};
use crate::blob_store::BlobStore;
use crate::group_commit::{Front, Gatherer, Pending, Request, acknowledge, fail_stop, lock};
use crate::postgres_chunks::{self as chunks, Chunked};
use crate::postgres_tables::{self as tables, Column, Read, Touch};
use crate::postgres_tls::PgConfig;
use crate::sled_unapplied::{Entry, merge, merge_rev, prefix_end};
use crate::{Result, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// How many connections serve reads (each pipelines its queries).
const READERS: usize = 4;

/// How many times a scan reads again, when a group was sent while it read,
/// before it holds off the committer.
const OPTIMISTIC_TRIES: usize = 3;

/// A backend's lifecycle: [`OPENING`], then [`OPEN`], then [`CLOSING`];
/// or [`LOST`], when a connection ended while opening.
const OPENING: u8 = 0;
/// See [`OPENING`].
const OPEN: u8 = 1;
/// See [`OPENING`].
const CLOSING: u8 = 2;
/// See [`OPENING`].
const LOST: u8 = 3;

/// How long connecting to the database may take, unless the URL says.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel the owner notifies (`NOTIFY`) once a commit that changed a
/// deployment is durable; standbys listen on it.
const DEPLOYMENTS_CHANNEL: &str = "kiln_deployments";

/// Whether `key` is a deployment record's (`deploy/…`, or
/// `env/<project>/<environment>/deploy/…`).
#[cfg(test)]
fn is_deployment_key(key: &[u8]) -> bool {
    is_deployment_table(tables::table_of(key))
}

/// Whether table `index` holds the deployments.
fn is_deployment_table(index: usize) -> bool {
    tables::name(index) == "kiln_deploy"
}

/// The advisory lock a server holds on its database for its life.
pub(crate) const OWNER_LOCK: i64 = 0x6b69_6c6e_0001;

/// A schema migration.
enum Migration {
    /// SQL to run.
    Sql(&'static str),
    /// Each keyspace gets a table of its own ([`tables::create_tables`])
    /// and the rows of `kiln_kv` move into them ([`move_into_tables`]).
    Tables,
}

/// Schema migrations, in order: the version each brings the database to,
/// and what it does. A database records the versions applied in
/// `kiln_migrations`; those missing are applied at start, in order, in one
/// transaction.
const MIGRATIONS: &[(i32, Migration)] = &[
    (
        1,
        Migration::Sql("CREATE TABLE kiln_kv (key bytea PRIMARY KEY, value bytea NOT NULL)"),
    ),
    (
        2,
        // The cluster's nodes (`crate::postgres_cluster`): where each is
        // reached, the fingerprint of its keys, and, for the node that
        // leads, the database session that holds the owner lock.
        Migration::Sql(crate::postgres_cluster::NODES_TABLE),
    ),
    (
        3,
        // The blob store the database's references point into, once one
        // was used (`crate::blob_store`), and the writers whose objects
        // its sweep may delete.
        Migration::Sql(
            "CREATE TABLE kiln_blob_store (location text NOT NULL, database text NOT NULL); \
             CREATE TABLE kiln_blob_writers \
             (writer text PRIMARY KEY, registered_at timestamptz NOT NULL DEFAULT now())",
        ),
    ),
    (TABLES_VERSION, Migration::Tables),
];

/// The version whose migration gives each keyspace a table of its own.
const TABLES_VERSION: i32 = 4;

/// The newest schema this Kiln knows.
const NEWEST: i32 = TABLES_VERSION;

/// How many rows of `kiln_kv` [`TABLES_VERSION`] reads the keys of at once.
const MOVE_KEYS: i64 = 1000;

/// How many bytes of values [`TABLES_VERSION`] moves in one statement, at
/// most (a single larger value moves alone).
const MOVE_BYTES: i64 = 32 << 20;

/// How [`PostgresBackend::open_with`] waits for a database another server
/// owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerWait {
    /// Up to a few seconds (a server that stopped a moment ago may still
    /// hold the lock until PostgreSQL sees its connection close), then
    /// refuse.
    Briefly,
    /// Not at all: answer `None` at once.
    Never,
    /// Until the owner is gone (a standby node of a cluster).
    UntilFree,
}

/// Kiln's store in a PostgreSQL database, with group-committed writes.
pub struct PostgresBackend {
    /// Drives the connections.
    _driver: Driver,
    readers: Vec<Reader>,
    next_reader: AtomicUsize,
    /// Commits not yet written, and the committer's requests.
    front: Front,
    committing: Option<std::thread::JoinHandle<()>>,
    /// Whether the backend is opening, open or closing: only an open
    /// backend's lost connection stops the server.
    lifecycle: Arc<AtomicU8>,
    /// The process id of the database session that holds the owner lock.
    session: i32,
    /// Opened with [`PostgresBackend::open_read_only`]: writes are refused.
    read_only: bool,
    /// Where large values go, if anywhere but the table.
    blobs: Option<Arc<BlobStore>>,
    /// The connection the blob store's sweep reads rows through.
    sweeper: Option<Arc<Client>>,
    /// On a read-only backend: the connection that listens for changed
    /// deployments, and a count of the notifications it received.
    listener: Option<(Client, watch::Receiver<u64>)>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend").finish_non_exhaustive()
    }
}

/// A read connection and the statements it has prepared, each the first
/// time it was needed.
struct Reader {
    client: Client,
    statements: std::sync::Mutex<HashMap<(usize, Read), Statement>>,
}

fn backend_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn pg_error(what: &str, e: tokio_postgres::Error) -> StoreError {
    // The server's own message says what was wrong (a missing role, a
    // refused connection); the driver's display alone often does not.
    let detail = e
        .as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        });
    StoreError::Backend(format!("PostgreSQL: {what}: {detail}"))
}

/// Runs `future` on the backend's runtime and waits for it, from any
/// thread (a tokio worker of the server's own runtime included).
fn on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    // Answered through a std channel: a tokio `JoinHandle` polled by
    // another executor inside a tokio task can spin on that task's budget.
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Backend("the PostgreSQL driver stopped".into()))?
}

/// Waits for `future`, from any thread: the driver's client futures only
/// talk to their connection, which runs on the backend's own runtime. On a
/// worker of a multi-thread tokio runtime (the server's), the worker's
/// other tasks move to another thread meanwhile, so a database that is slow
/// to answer never holds up the server's other work (`/readyz` included).
fn wait<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| futures_executor::block_on(future))
        }
        _ => futures_executor::block_on(future),
    }
}

impl PostgresBackend {
    /// Connects to the database at `url` (`postgres://user@host/db`, or
    /// `postgres://user@/db?host=/socket/dir` for a Unix socket), takes its
    /// owner lock, applies the migrations it lacks and starts the
    /// committer. A database another server owns is refused.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, OwnerWait::Briefly, None)?.ok_or_else(|| {
            StoreError::Backend(
                "another Kiln server is using this PostgreSQL database; one server a \
                 database"
                    .into(),
            )
        })
    }

    /// [`PostgresBackend::open`], waiting for a database another server
    /// owns as `owner_wait` says, with large values in `blobs` if given;
    /// `None` when the database is still owned.
    pub fn open_with(
        url: &str,
        owner_wait: OwnerWait,
        blobs: Option<Arc<BlobStore>>,
    ) -> Result<Option<Self>> {
        let connector = Connector::new(url, true)?;
        let connect = |purpose| connector.connect(purpose);
        let runtime = &connector.runtime;
        let blobs = blobs.map(|b| b.fresh().map(Arc::new)).transpose()?;
        if let Some(blobs) = &blobs {
            let blobs = blobs.clone();
            on(runtime, async move { blobs.check().await })?;
        }
        let owner = connect("commits")?;
        let with_blobs = blobs.is_some();
        let configured = blobs.clone();
        let Some((owner, session, with_pieces)) = on(runtime, async move {
            let mut owner = owner;
            if !take_owner_lock(&owner, owner_wait).await? {
                return Ok(None);
            }
            // The owner brings the schema up to date (a node joining a
            // cluster may have done so already; the migrations' own lock
            // keeps two from applying one).
            migrate(&mut owner).await?;
            same_blob_store(&owner, configured.as_deref(), true).await?;
            let with_pieces: HashSet<Vec<u8>> = owner
                .query(chunks::KEYS, &[])
                .await
                .map_err(|e| pg_error("reading which values are in pieces", e))?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| pg_error("a key", e))?;
            let session: i32 = owner
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(|e| pg_error("reading the session's id", e))?
                .get(0);
            Ok(Some((owner, session, with_pieces)))
        })?
        else {
            return Ok(None);
        };
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let client = connect("reads")?;
            readers.push(Reader::new(client));
        }
        let (tx, rx) = mpsc::channel::<Request>();
        let (durable_tx, durable) = crate::durability::channel();
        let pending = Arc::new(Pending::default());
        let sweeper = match &blobs {
            Some(_) => Some(Arc::new(connect("blob sweeps")?)),
            None => None,
        };
        let committer = Committer {
            client: owner,
            writes: Writes {
                prepared: HashMap::new(),
                blobs: with_blobs,
                piece: None,
            },
            with_pieces,
            pending: pending.clone(),
            durable: durable_tx,
            blobs: blobs.clone(),
            runtime: runtime.handle().clone(),
        };
        connector.opened()?;
        if let (Some(blobs), Some(client)) = (&blobs, &sweeper) {
            runtime.spawn(sweep_now_and_then(blobs.clone(), client.clone()));
        }
        let committing = std::thread::Builder::new()
            .name("kiln-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(backend_error)?;
        Ok(Some(PostgresBackend {
            _driver: connector.runtime,
            readers,
            next_reader: AtomicUsize::new(0),
            front: Front::new(pending, tx, durable),
            committing: Some(committing),
            lifecycle: connector.lifecycle,
            session,
            read_only: false,
            blobs,
            sweeper,
            listener: None,
        }))
    }

    /// Opens the store at `url` for reading only, beside the server that
    /// owns it (a standby reading the deployments it will serve): no lock,
    /// no migrations, one read connection and one that listens for changed
    /// deployments ([`PostgresBackend::deployments_changed`]); every commit fails with
    /// [`StoreError::Closed`], writing nothing. A lost connection fails
    /// the reads that follow; open it again. Large values are read from
    /// `blobs`, the owner's blob store.
    pub fn open_read_only(url: &str, blobs: Option<Arc<BlobStore>>) -> Result<Self> {
        let connector = Connector::new(url, false)?;
        let client = connector.connect("reads")?;
        let blobs = blobs.map(|b| b.fresh().map(Arc::new)).transpose()?;
        let configured = blobs.clone();
        let (client, version) = on(&connector.runtime, async move {
            same_blob_store(&client, configured.as_deref(), false).await?;
            let version = schema_version(&client).await?;
            Ok((client, version))
        })?;
        if version > NEWEST {
            return Err(newer_schema(version));
        }
        // Beside a leader of a Kiln from before the tables (or while the
        // leader moves its rows into them), there is nothing to read yet:
        // the caller tries again later.
        if version < TABLES_VERSION {
            return Err(StoreError::Backend(format!(
                "the database's schema is at version {version}, older than this Kiln's \
                 ({NEWEST}): the leader upgrades it when it runs this Kiln"
            )));
        }
        let reader = Reader::new(client);
        let listener = connector.listen(DEPLOYMENTS_CHANNEL)?;
        // No committer receives: a commit is refused at once.
        let (tx, _) = mpsc::channel::<Request>();
        let (_, durable) = crate::durability::channel();
        connector.opened()?;
        Ok(PostgresBackend {
            _driver: connector.runtime,
            readers: vec![reader],
            next_reader: AtomicUsize::new(0),
            front: Front::new(Arc::new(Pending::default()), tx, durable),
            committing: None,
            lifecycle: connector.lifecycle,
            session: 0,
            read_only: true,
            blobs,
            sweeper: None,
            listener: Some(listener),
        })
    }

    /// On a backend opened with [`PostgresBackend::open_read_only`]: a
    /// count that goes up each time the owner has durably changed a
    /// deployment (its `NOTIFY`), and whose sender is dropped if the
    /// connection listening for it is lost. `None` on the owner's backend.
    pub fn deployments_changed(&self) -> Option<watch::Receiver<u64>> {
        self.listener.as_ref().map(|(_, changed)| changed.clone())
    }

    /// Stops as a killed process would, for the engine's simulation: the
    /// group being written (if any) is finished, atomically, as PostgreSQL
    /// would finish a statement it had received; no later commit is
    /// written, and the owner lock goes once the backend is dropped. What
    /// the database holds afterwards is what a `SIGKILL` at this moment
    /// would have left.
    #[doc(hidden)]
    pub fn halt_as_if_killed(&self) {
        self.front.pending.halted.store(true, Ordering::Release);
    }

    /// Deletes the blob store's objects older than `older_than` that no
    /// row refers to (objects a crash left behind); how many. The server
    /// sweeps a minute after it opens and then every hour; this sweeps now.
    pub fn sweep_blobs(&self, older_than: Duration) -> Result<usize> {
        let (Some(blobs), Some(client)) = (self.blobs.clone(), self.sweeper.clone()) else {
            return Ok(0);
        };
        block(self._driver.handle(), async move {
            sweep(&blobs, &client, older_than).await
        })?
    }

    /// Marks a read under way, so no object it may read a reference to is
    /// deleted until it ends.
    fn reading(&self) -> Option<crate::blob_store::Reading<'_>> {
        self.blobs.as_deref().map(BlobStore::reading)
    }

    /// `rows` as the table holds them, with every reference to an object
    /// replaced by the object's bytes and every marker by the value its
    /// pieces make; `Err(key)` if the object or a piece of `key`'s value is
    /// gone (a newer commit replaced the value meanwhile, on a standby the
    /// leader's, or for pieces on the owner too).
    fn resolve(&self, rows: Vec<Entry>) -> Result<std::result::Result<Vec<Entry>, Vec<u8>>> {
        // Each row as the table holds it is a marker, a reference or a
        // value: what an object or the pieces hold is never looked at again.
        let markers: Vec<Option<chunks::Marker>> =
            rows.iter().map(|(_, v)| chunks::Marker::read(v)).collect();
        let mut rows = match self.resolve_objects(rows)? {
            Ok(rows) => rows,
            Err(key) => return Ok(Err(key)),
        };
        for ((key, value), marker) in rows.iter_mut().zip(markers) {
            let Some(marker) = marker else {
                continue;
            };
            match self.reader().pieces(key, &marker)? {
                Some(whole) => *value = whole,
                None => return Ok(Err(std::mem::take(key))),
            }
        }
        Ok(Ok(rows))
    }

    /// `rows` with every reference to an object of the blob store replaced
    /// by the object's bytes; `Err(key)` if the object of `key` is gone.
    fn resolve_objects(
        &self,
        rows: Vec<Entry>,
    ) -> Result<std::result::Result<Vec<Entry>, Vec<u8>>> {
        let Some(blobs) = &self.blobs else {
            return Ok(Ok(rows));
        };
        if !rows.iter().any(|(k, v)| blobs.referred(k, v).is_some()) {
            return Ok(Ok(rows));
        }
        let blobs = blobs.clone();
        block(self._driver.handle(), async move {
            use futures_util::StreamExt;
            let resolved: Vec<Result<std::result::Result<Entry, Vec<u8>>>> =
                futures_util::stream::iter(rows)
                    .map(|(key, value)| {
                        let blobs = &blobs;
                        async move {
                            let Some(name) = blobs.referred(&key, &value) else {
                                return Ok(Ok((key, value)));
                            };
                            Ok(match blobs.get(name).await? {
                                Some(bytes) => Ok((key, bytes)),
                                None => Err(key),
                            })
                        }
                    })
                    .buffered(8)
                    .collect()
                    .await;
            resolved
                .into_iter()
                .collect::<Result<std::result::Result<Vec<Entry>, Vec<u8>>>>()
        })?
    }

    /// The process id of the database session that holds the owner lock
    /// (PostgreSQL's `pg_backend_pid()`): while it lives, this server owns
    /// the database.
    pub fn owner_session(&self) -> i32 {
        self.session
    }

    fn reader(&self) -> &Reader {
        let n = self.next_reader.fetch_add(1, Ordering::Relaxed);
        &self.readers[n % self.readers.len()]
    }

    /// Reads the table's entries from `start` to `end` (exclusive; `None`:
    /// no end) in `order` with the unwritten commits of that range laid
    /// over them, at most `limit`, as of one moment.
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Entry>> {
        let mut missing = 0;
        let mut last_missed: Option<Entry> = None;
        for attempt in 0.. {
            let pending = &self.front.pending;
            let _reading = self.reading();
            let holding = (attempt >= OPTIMISTIC_TRIES).then(|| pending.reading());
            let (unwritten, made) = {
                let unapplied = lock(&pending.unapplied);
                (unapplied.range(start, end), unapplied.made())
            };
            // Each unwritten key can hide at most one of the table's rows.
            let fetch = limit.saturating_add(unwritten.len());
            let rows = self.reader().rows(start, end, fetch, order)?;
            if holding.is_none() && pending.sent.load(Ordering::Acquire) > made {
                continue;
            }
            // Only the rows the unwritten commits leave, and within the
            // limit, are read from their objects or pieces: the others are
            // not answered.
            let overlaid: HashSet<Vec<u8>> = unwritten.iter().map(|(k, _)| k.clone()).collect();
            let rows = rows.into_iter().map(Ok);
            let merged: Vec<Entry> = match order {
                Order::Ascending => merge(rows, unwritten).take(limit).collect::<Result<_>>()?,
                Order::Descending => merge_rev(rows, unwritten)
                    .take(limit)
                    .collect::<Result<_>>()?,
            };
            let (stored, positions): (Vec<Entry>, Vec<usize>) = merged
                .iter()
                .enumerate()
                .filter(|(_, (key, _))| !overlaid.contains(key))
                .map(|(at, entry)| (entry.clone(), at))
                .unzip();
            if stored.is_empty() {
                return Ok(merged);
            }
            // The committer need not wait for the bucket; on the last try
            // it waits for the pieces, which a commit it is writing would
            // delete, so a piece missed then is missing for good.
            let pieces = stored
                .iter()
                .any(|(_, v)| chunks::Marker::read(v).is_some());
            let _holding = if pieces {
                holding
            } else {
                drop(holding);
                None
            };
            match self.resolve(stored)? {
                Ok(resolved) => {
                    let mut merged = merged;
                    for (at, entry) in positions.into_iter().zip(resolved) {
                        merged[at] = entry;
                    }
                    return Ok(merged);
                }
                // An object this process deletes outlives every read that
                // began before it was replaced, so a missing one went
                // behind Kiln's back, or on a standby with the leader's
                // commit since; pieces go with the commit that replaces
                // their value, so missing ones went with a commit made
                // since: read again, and give up when the same row misses
                // twice.
                Err(key) => {
                    let row = merged.iter().find(|(k, _)| *k == key).cloned();
                    if row.is_some() && row == last_missed {
                        return Err(missing_value(&key, row.as_ref()));
                    }
                    last_missed = row;
                    missing += 1;
                    if missing > 16 {
                        return Err(missing_value(&key, last_missed.as_ref()));
                    }
                    continue;
                }
            }
        }
        unreachable!("every try returns or reads again, and gives up after a few")
    }
}

impl Reader {
    fn new(client: Client) -> Self {
        Reader {
            client,
            statements: Default::default(),
        }
    }

    /// The statement that makes `read` on table `index`, prepared the
    /// first time.
    fn statement(&self, index: usize, read: Read) -> Result<Statement> {
        if let Some(statement) = lock(&self.statements).get(&(index, read)) {
            return Ok(statement.clone());
        }
        let statement = wait(self.client.prepare(&tables::read_sql(index, read)))
            .map_err(|e| pg_error("preparing a read", e))?;
        lock(&self.statements).insert((index, read), statement.clone());
        Ok(statement)
    }

    /// The value `marker` (read under `key`) names, from its pieces, read
    /// into one buffer as they come; `None` unless they are all there.
    fn pieces(&self, key: &[u8], marker: &chunks::Marker) -> Result<Option<Vec<u8>>> {
        use futures_util::StreamExt;
        let statement = self.statement(tables::ALL, Read::Pieces)?;
        let Ok(len) = usize::try_from(marker.len) else {
            return Ok(None);
        };
        wait(async {
            let params: [&(dyn ToSql + Sync); 2] = [&key, &marker.generation];
            let rows = self
                .client
                .query_raw(&statement, params)
                .await
                .map_err(|e| pg_error("reading a value's pieces", e))?;
            let mut rows = std::pin::pin!(rows);
            // Reserved as the pieces come: a marker's length is not trusted
            // before they are there.
            let mut whole = Vec::with_capacity(len.min(chunks::CHUNK_BYTES));
            let mut count = 0u32;
            while let Some(row) = rows.next().await {
                let row = row.map_err(|e| pg_error("reading a value's pieces", e))?;
                let piece: &[u8] = row.try_get(0).map_err(|e| pg_error("a piece", e))?;
                if whole.len() + piece.len() > len {
                    return Ok(None);
                }
                whole.extend_from_slice(piece);
                count += 1;
            }
            Ok((count == marker.count && whole.len() == len).then_some(whole))
        })
    }

    /// The value under `key`, as the table holds it.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let statement = self.statement(tables::table_of(key), Read::Get)?;
        let row = wait(self.client.query_opt(&statement, &[&key]))
            .map_err(|e| pg_error("reading a key", e))?;
        row.map(|row| row.try_get::<_, Vec<u8>>(0))
            .transpose()
            .map_err(|e| pg_error("a value", e))
    }

    /// The rows from `start` to `end` in `order`, at most `limit`: one
    /// table's, or, for a range that may span tables, every table's merged
    /// by key, in one statement (so as of one moment).
    fn rows(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Entry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = match (&end, order) {
            (Some(_), Order::Ascending) => Read::RangeUp,
            (Some(_), Order::Descending) => Read::RangeDown,
            (None, Order::Ascending) => Read::FromUp,
            (None, Order::Descending) => Read::FromDown,
        };
        let params: Vec<&(dyn ToSql + Sync)> = match &end {
            Some(end) => vec![&start, end, &limit],
            None => vec![&start, &limit],
        };
        let index = tables::table_of_range(start, end).unwrap_or(tables::ALL);
        let statement = self.statement(index, read)?;
        let rows = wait(self.client.query(&statement, &params))
            .map_err(|e| pg_error("reading a range", e))?;
        rows.into_iter()
            .map(|row| {
                let key: Vec<u8> = row.try_get(0).map_err(|e| pg_error("a key", e))?;
                let value: Vec<u8> = row.try_get(1).map_err(|e| pg_error("a value", e))?;
                Ok((key, value))
            })
            .collect()
    }
}

/// Makes a backend's connections, driven by its own runtime, and watches
/// them: while the backend opens, a lost connection fails the open; once it
/// is open, a lost connection stops the process.
struct Connector {
    config: PgConfig,
    runtime: Driver,
    lifecycle: Arc<AtomicU8>,
    /// Whether a connection lost once the backend is open stops the
    /// process (a read-only backend's only fails its reads).
    stop_on_loss: bool,
}

impl Connector {
    fn new(url: &str, stop_on_loss: bool) -> Result<Self> {
        Ok(Connector {
            stop_on_loss,
            config: connection_config(url)?,
            lifecycle: Arc::new(AtomicU8::new(OPENING)),
            runtime: Driver(Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("kiln-postgres")
                    .enable_all()
                    .build()
                    .map_err(backend_error)?,
            )),
        })
    }

    /// A new connection, for `purpose` (named in the log if it is lost).
    fn connect(&self, purpose: &'static str) -> Result<Client> {
        let config = self.config.clone();
        let handle = self.runtime.handle().clone();
        let lifecycle = self.lifecycle.clone();
        let stop_on_loss = self.stop_on_loss;
        on(&self.runtime, async move {
            let (client, connection) = config
                .connect()
                .await
                .map_err(|e| pg_error("connecting", e))?;
            handle.spawn(async move {
                let ended = connection.await;
                // While opening, a lost connection fails the open (it
                // checks before it is done); while closing, connections
                // end on purpose.
                match lifecycle.compare_exchange(OPENING, LOST, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return,
                    Err(OPEN) => {}
                    Err(_) => return,
                }
                // A connection lost while the server runs: the owner lock
                // went with the commits' connection, and a read connection
                // is not made again. Stop, as a failed commit does; a
                // restart reconnects.
                let why = match ended {
                    Ok(()) => "closed by the database".to_string(),
                    Err(error) => pg_error("the connection", error).to_string(),
                };
                if !stop_on_loss {
                    tracing::warn!(error = %why, purpose, "a read-only PostgreSQL connection was lost");
                    return;
                }
                tracing::error!(
                    error = %why,
                    purpose,
                    "a PostgreSQL connection of the store was lost; Kiln stops"
                );
                std::process::exit(74);
            });
            // A role's idle limit (PostgreSQL 14 on) would end a connection
            // that waits for work; older servers do not know it.
            let _ = client.batch_execute("SET idle_session_timeout = 0").await;
            // Nor a role's limit on one transaction (PostgreSQL 17 on), which
            // would end a standby's wait for the lock. Each on its own: an
            // error in a batch undoes the batch.
            let _ = client.batch_execute("SET transaction_timeout = 0").await;
            Ok(client)
        })
    }

    /// A connection listening on `channel`, and a count of the
    /// notifications it received (its sender dropped once it ends).
    fn listen(&self, channel: &'static str) -> Result<(Client, watch::Receiver<u64>)> {
        let config = self.config.clone();
        let handle = self.runtime.handle().clone();
        let lifecycle = self.lifecycle.clone();
        on(&self.runtime, async move {
            let (client, mut connection) = config
                .connect()
                .await
                .map_err(|e| pg_error("connecting", e))?;
            let (tx, rx) = watch::channel(0u64);
            handle.spawn(async move {
                use futures_util::StreamExt;
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let why = loop {
                    match messages.next().await {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                            tx.send_modify(|n| *n += 1)
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => break error.to_string(),
                        None => break "closed by the database".to_string(),
                    }
                };
                // Ended on purpose when the backend closes.
                if lifecycle.load(Ordering::Acquire) == OPEN {
                    tracing::warn!(error = %why, channel, "a connection listening for PostgreSQL notifications was lost");
                }
            });
            // As for every connection: a role's idle limit would end one
            // that only listens.
            let _ = client.batch_execute("SET idle_session_timeout = 0").await;
            let _ = client.batch_execute("SET transaction_timeout = 0").await;
            client
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .map_err(|e| pg_error("listening for changed deployments", e))?;
            Ok((client, rx))
        })
    }

    /// Marks the backend open: from here a lost connection stops the
    /// process. Fails if one was lost while it opened.
    fn opened(&self) -> Result<()> {
        self.lifecycle
            .compare_exchange(OPENING, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|_| {
                StoreError::Backend(
                    "PostgreSQL: a connection was lost while the store opened".into(),
                )
            })
    }
}

/// The connection settings for `url`, with Kiln's: timeouts, keepalives
/// on both sides, commits acknowledged only once durable, and the TLS
/// the URL asks for.
pub(crate) fn connection_config(url: &str) -> Result<PgConfig> {
    let mut pg = crate::postgres_tls::pg_config(url)?;
    let config = &mut pg.config;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A peer that vanished (its machine or the network, not only its
    // process) is noticed within about half a minute on both sides, so
    // a commit cannot hang for the kernel's quarter of an hour and a
    // dead server's lock does not outlive it by hours.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30))
        .application_name("kiln");
    let options = format!(
        "{} -c synchronous_commit=on -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 \
         -c tcp_keepalives_count=3 -c tcp_user_timeout=30000",
        config.get_options().unwrap_or_default()
    );
    config.options(options.trim());
    Ok(pg)
}

/// Takes the owner lock on `owner`'s session, waiting as `owner_wait`
/// says; whether it was taken.
async fn take_owner_lock(owner: &Client, owner_wait: OwnerWait) -> Result<bool> {
    // A role's own time limits would end a standby's wait for the lock
    // (and cut a group's commit short).
    owner
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(|e| pg_error("setting the session's time limits", e))?;
    if owner_wait == OwnerWait::UntilFree {
        // Granted the moment the owner's session ends.
        owner
            .execute("SELECT pg_advisory_lock($1)", &[&OWNER_LOCK])
            .await
            .map_err(|e| pg_error("waiting for the owner lock", e))?;
        return Ok(true);
    }
    let started = std::time::Instant::now();
    loop {
        let owned: bool = owner
            .query_one("SELECT pg_try_advisory_lock($1)", &[&OWNER_LOCK])
            .await
            .map_err(|e| pg_error("taking the owner lock", e))?
            .get(0);
        if owned {
            return Ok(true);
        }
        if owner_wait == OwnerWait::Never || started.elapsed() >= crate::sled_backend::LOCK_WAIT {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The advisory lock schema changes are made under, for one transaction.
pub(crate) const MIGRATION_LOCK: i64 = OWNER_LOCK + 1;

/// Applies the migrations the database lacks, under a transaction-scoped
/// advisory lock so two servers starting at once do not both apply one.
async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("starting the migrations", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| pg_error("locking the migrations", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS kiln_migrations \
         (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(|e| pg_error("creating kiln_migrations", e))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM kiln_migrations", &[])
        .await
        .map_err(|e| pg_error("reading kiln_migrations", e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(unknown) = applied.iter().find(|v| **v > NEWEST) {
        return Err(newer_schema(*unknown));
    }
    for (version, migration) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let moved = match migration {
            Migration::Sql(sql) => {
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| pg_error(&format!("applying migration {version}"), e))?;
                None
            }
            Migration::Tables => {
                tx.batch_execute(&(tables::create_tables() + chunks::CREATE_TABLE))
                    .await
                    .map_err(|e| pg_error("creating the tables", e))?;
                Some(move_into_tables(&tx).await?)
            }
        };
        tx.execute(
            "INSERT INTO kiln_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(|e| pg_error("recording a migration", e))?;
        tracing::info!(
            version,
            moved,
            "applied a migration to the PostgreSQL store"
        );
    }
    tx.commit()
        .await
        .map_err(|e| pg_error("committing the migrations", e))
}

/// Refuses a database whose schema a newer Kiln made.
fn newer_schema(version: i32) -> StoreError {
    StoreError::Backend(format!(
        "the database's schema is at version {version}, newer than this Kiln knows \
         ({NEWEST}): run a newer kiln"
    ))
}

/// The newest schema version applied to the database (0 if none).
async fn schema_version(client: &Client) -> Result<i32> {
    match client
        .query_one("SELECT coalesce(max(version), 0) FROM kiln_migrations", &[])
        .await
    {
        Ok(row) => row.try_get(0).map_err(|e| pg_error("a version", e)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(pg_error("reading kiln_migrations", e)),
    }
}

/// Moves every row of `kiln_kv` into its keyspace's table (the rows of no
/// keyspace back into `kiln_kv`), written as the committer writes them,
/// with their columns, a bounded number of bytes at a time; how many rows
/// moved. A value already a reference to an object leaves the columns that
/// come from the value empty.
async fn move_into_tables(tx: &tokio_postgres::Transaction<'_>) -> Result<u64> {
    let mut moved = 0;
    let mut write_piece: Option<Statement> = None;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = tx
            .query(
                "SELECT key, length(value)::int8 FROM kiln_kv \
                 WHERE $1::bytea IS NULL OR key > $1 ORDER BY key LIMIT $2",
                &[&after, &MOVE_KEYS],
            )
            .await
            .map_err(|e| pg_error("reading kiln_kv's keys", e))?;
        let Some(last) = page.last() else {
            return Ok(moved);
        };
        after = Some(last.try_get(0).map_err(|e| pg_error("a key", e))?);
        // The keys to move, in batches of at most MOVE_BYTES of values.
        let mut batches: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut bytes = 0;
        for row in &page {
            let key: Vec<u8> = row.try_get(0).map_err(|e| pg_error("a key", e))?;
            let len: i64 = row.try_get(1).map_err(|e| pg_error("a length", e))?;
            if bytes > 0 && bytes + len > MOVE_BYTES {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += len;
            if let Some(batch) = batches.last_mut() {
                batch.push(key);
            }
        }
        for keys in batches.into_iter().filter(|k| !k.is_empty()) {
            let rows = tx
                .query(
                    "DELETE FROM kiln_kv WHERE key = ANY($1) RETURNING key, value",
                    &[&keys],
                )
                .await
                .map_err(|e| pg_error("taking rows from kiln_kv", e))?;
            let mut group = Vec::with_capacity(rows.len());
            for row in rows {
                let key: Vec<u8> = row.try_get(0).map_err(|e| pg_error("a key", e))?;
                let value: Vec<u8> = row.try_get(1).map_err(|e| pg_error("a value", e))?;
                group.push((key, Some(Arc::new(value))));
            }
            // Values stored whole before are chunked now if they must be
            // (one that looks like a marker).
            let originals = group.clone();
            let chunked = chunks::split(&mut group, &mut HashSet::new());
            for part in statements(&group, Some(&originals)) {
                let sql = tables::write_sql(&part.touched(), false);
                tx.execute(&sql, &part.params(None))
                    .await
                    .map_err(|e| pg_error("writing rows to their tables", e))?;
            }
            if let Some(chunked) = &chunked {
                let write = match &write_piece {
                    Some(write) => write,
                    None => write_piece.insert(
                        tx.prepare(chunks::WRITE)
                            .await
                            .map_err(|e| pg_error("preparing to write a value's pieces", e))?,
                    ),
                };
                for (key, generation, seq, bytes) in chunked.pieces() {
                    tx.execute(write, &[&key, &generation, &seq, &bytes])
                        .await
                        .map_err(|e| pg_error("writing a value's pieces", e))?;
                }
            }
            moved += group.len() as u64;
        }
    }
}

impl Drop for PostgresBackend {
    /// Writes what is still unwritten and waits for the committer, then
    /// closes the connections (and so lets go of the owner lock).
    fn drop(&mut self) {
        self.lifecycle.store(CLOSING, Ordering::Release);
        self.front.close();
        if let Some(committing) = self.committing.take()
            && committing.join().is_err()
        {
            tracing::error!("the store's committer thread panicked");
        }
        self.readers.clear();
    }
}

/// The runtime that drives the backend's connections. Dropped without
/// waiting, so a backend can be dropped (or fail to open) on a thread of
/// the server's own runtime.
struct Driver(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Driver {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the driver runs until dropped")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The thread that writes groups of commits and acknowledges them.
struct Committer {
    client: Client,
    writes: Writes,
    /// The keys whose values are in pieces in `kiln_chunk`.
    with_pieces: HashSet<Vec<u8>>,
    pending: Arc<Pending>,
    durable: crate::durability::Reached,
    /// Where large values go, if anywhere but the table.
    blobs: Option<Arc<BlobStore>>,
    /// The driver's runtime, which sends the blob store's requests.
    runtime: tokio::runtime::Handle,
}

/// A value whose object is gone.
fn missing_object(key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: "it refers to an object the blob store does not hold".into(),
    }
}

/// A value whose object or pieces are gone: `row` as the table holds it.
fn missing_value(key: &[u8], row: Option<&Entry>) -> StoreError {
    if row.is_some_and(|(_, v)| chunks::Marker::read(v).is_some()) {
        return StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "its value is in pieces kiln_chunk does not hold".into(),
        };
    }
    missing_object(key)
}

/// Checks that the blob store configured is the one the database's
/// references point into (recorded the first time one is used), and, for
/// the owner, records it and registers its writer. A database whose record
/// another database made (a copy restored from a dump, which shares the
/// original's objects) is opened, but its server never deletes an object,
/// until an operator adopts the store (`UPDATE kiln_blob_store SET
/// database = ''`).
async fn same_blob_store(client: &Client, blobs: Option<&BlobStore>, owner: bool) -> Result<()> {
    let recorded: Option<(String, String)> = match client
        .query_opt("SELECT location, database FROM kiln_blob_store", &[])
        .await
    {
        Ok(Some(row)) => Some(
            row.try_get(0)
                .and_then(|location| Ok((location, row.try_get(1)?)))
                .map_err(|e| pg_error("reading the blob store's location", e))?,
        ),
        Ok(None) => None,
        // A standby beside a leader from before blob stores: none.
        Err(e) if !owner && e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            None
        }
        Err(e) => return Err(pg_error("reading the blob store's location", e)),
    };
    let Some(blobs) = blobs else {
        return match recorded {
            None => Ok(()),
            Some((location, _)) => Err(StoreError::Backend(format!(
                "this database keeps its large values in the blob store {location}: \
                 start with --blob-store {location}…"
            ))),
        };
    };
    if let Some((location, _)) = &recorded
        && location != blobs.location()
    {
        return Err(StoreError::Backend(format!(
            "this database keeps its large values in the blob store {location}, not {}",
            blobs.location()
        )));
    }
    if !owner {
        return Ok(());
    }
    // Which database this is: the PostgreSQL cluster's system identifier
    // (where the role may read it) and the database's own id, neither of
    // which a dump restored elsewhere keeps.
    let system: Option<String> = match client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
    {
        Ok(system) => Some(system),
        Err(error) => {
            tracing::warn!(%error, "cannot read PostgreSQL's system identifier: a copy of this \
                database could not be told from it, so this server deletes no object");
            blobs.keep_all();
            None
        }
    };
    let database: String = client
        .query_one(
            "SELECT oid::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| pg_error("reading the database's identity", e))?;
    let identity = format!("{}/{database}", system.as_deref().unwrap_or("?"));
    match recorded {
        None => {
            client
                .execute(
                    "INSERT INTO kiln_blob_store (location, database) VALUES ($1, $2)",
                    &[&blobs.location(), &identity],
                )
                .await
                .map_err(|e| pg_error("recording the blob store", e))?;
        }
        Some((_, database)) if database.is_empty() => {
            client
                .execute("UPDATE kiln_blob_store SET database = $1", &[&identity])
                .await
                .map_err(|e| pg_error("recording the blob store", e))?;
        }
        Some((_, database)) if database != identity => {
            tracing::warn!(
                location = blobs.location(),
                "this database's blob store was recorded by another database (a restored \
                 copy?): its objects may be the original's, so this server deletes none; \
                 once the original no longer runs, adopt them with \
                 UPDATE kiln_blob_store SET database = ''"
            );
            blobs.keep_all();
        }
        Some(_) => {}
    }
    client
        .execute(
            "INSERT INTO kiln_blob_writers (writer) VALUES ($1)",
            &[&blobs.writer()],
        )
        .await
        .map_err(|e| pg_error("registering the blob store's writer", e))?;
    Ok(())
}

/// Runs `future` on the driver's runtime and waits for it, from any thread
/// (a worker of the server's runtime hands its other tasks over meanwhile).
fn block<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    let receive = || {
        rx.recv()
            .map_err(|_| StoreError::Backend("the PostgreSQL driver stopped".into()))
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(receive)
        }
        _ => receive(),
    }
}

/// The bytes of a value shared with the commits in memory, for a request
/// body, without copying them.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Writes each large value of `writes` to the blob store as an object of
/// its own, and puts a reference to it in its place.
async fn offload(
    blobs: Arc<BlobStore>,
    mut writes: Vec<crate::sled_unapplied::ToApply>,
) -> Result<Vec<crate::sled_unapplied::ToApply>> {
    use futures_util::{StreamExt, TryStreamExt};
    let uploads: Vec<(usize, String, Arc<Vec<u8>>)> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, (key, value))| {
            let value = value.as_ref()?;
            blobs
                .takes(key, value)
                .then(|| (i, blobs.new_name(key), value.clone()))
        })
        .collect();
    if uploads.is_empty() {
        return Ok(writes);
    }
    let written: Vec<(usize, String)> = futures_util::stream::iter(uploads)
        .map(|(i, name, value)| {
            let blobs = &blobs;
            async move {
                blobs
                    .put(&name, bytes::Bytes::from_owner(Shared(value)))
                    .await?;
                Ok::<_, StoreError>((i, name))
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    for (i, name) in written {
        writes[i].1 = Some(Arc::new(BlobStore::reference(&name)));
    }
    Ok(writes)
}

/// Deletes the objects the rows `replaced` referred to, once the commit
/// that replaced them is durable and every read that began before it (and
/// so may have read a reference to them) has ended. One that fails is
/// left to the sweep.
async fn delete_replaced(blobs: Arc<BlobStore>, replaced: Vec<Entry>) {
    if !blobs.deletes() {
        return;
    }
    blobs.reads_done().await;
    for (key, value) in &replaced {
        if let Some(name) = blobs.referred(key, value)
            && let Err(error) = blobs.delete(name).await
        {
            tracing::warn!(%error, "an object a commit replaced was not deleted; a sweep will");
        }
    }
}

/// Sweeps the blob store a minute after the store opens, then every hour.
async fn sweep_now_and_then(blobs: Arc<BlobStore>, client: Arc<Client>) {
    let mut next = Duration::from_secs(60);
    loop {
        tokio::time::sleep(next).await;
        next = Duration::from_secs(60 * 60);
        match sweep(&blobs, &client, crate::blob_store::SWEEP_AGE).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted objects no row refers to"),
            Err(error) => tracing::warn!(%error, "sweeping the blob store failed"),
        }
    }
}

/// Deletes the objects older than `older_than` that no row refers to.
async fn sweep(blobs: &BlobStore, client: &Client, older_than: Duration) -> Result<usize> {
    let writers: std::collections::HashSet<String> = client
        .query("SELECT writer FROM kiln_blob_writers", &[])
        .await
        .map_err(|e| pg_error("reading the blob store's writers", e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    blobs
        .sweep(older_than, &writers, |key| async move {
            let sql = tables::read_sql(tables::table_of(&key), Read::Get);
            let row = client
                .query_opt(&sql, &[&key])
                .await
                .map_err(|e| pg_error("reading a row for the sweep", e))?;
            Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
        })
        .await
}

/// How many bytes of keys and values one statement of a group carries at
/// most: PostgreSQL takes at most 1 GiB in one message, so a larger group
/// is written as several statements in one transaction.
const STATEMENT_BYTES: usize = 64 << 20;

/// One statement's share of a group, table by table (in the order of
/// their indexes).
#[derive(Default)]
struct Part<'a> {
    tables: BTreeMap<usize, Rows<'a>>,
    bytes: usize,
}

/// What one statement writes to one table: keys and values to put with
/// their columns, keys to delete.
struct Rows<'a> {
    keys: Vec<&'a [u8]>,
    values: Vec<&'a [u8]>,
    columns: Vec<Column>,
    deleted: Vec<&'a [u8]>,
}

impl Part<'_> {
    /// The tables the statement writes, and how, for
    /// [`tables::write_sql`].
    fn touched(&self) -> Vec<Touch> {
        self.tables
            .iter()
            .map(|(index, rows)| (*index, !rows.keys.is_empty(), !rows.deleted.is_empty()))
            .collect()
    }

    /// The statement's parameters, in the order [`tables::write_sql`]
    /// numbers them.
    fn params<'p>(&'p self, magic: Option<&'p (dyn ToSql + Sync)>) -> Vec<&'p (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = magic.into_iter().collect();
        for rows in self.tables.values() {
            if !rows.deleted.is_empty() {
                params.push(&rows.deleted);
            }
            if !rows.keys.is_empty() {
                params.push(&rows.keys);
                params.push(&rows.values);
                for column in &rows.columns {
                    params.push(match column {
                        Column::Text(values) => values,
                        Column::Int(values) => values,
                    });
                }
            }
        }
        params
    }
}

/// Splits a group's writes into statements of at most [`STATEMENT_BYTES`]
/// (a single larger value is a statement of its own), each routed to the
/// tables its keys live in, with their columns decoded from `decoded_from`
/// (the same writes before large values became references to objects) if
/// given, else from the writes themselves.
fn statements<'a>(
    writes: &'a [crate::sled_unapplied::ToApply],
    decoded_from: Option<&[crate::sled_unapplied::ToApply]>,
) -> Vec<Part<'a>> {
    let mut parts = Vec::new();
    let mut part = Part::default();
    for (at, (key, value)) in writes.iter().enumerate() {
        let size = key.len() + value.as_ref().map_or(0, |v| v.len());
        if part.bytes > 0 && part.bytes + size > STATEMENT_BYTES {
            parts.push(std::mem::take(&mut part));
        }
        part.bytes += size;
        let index = tables::table_of(key);
        let rows = part.tables.entry(index).or_insert_with(|| Rows {
            keys: Vec::new(),
            values: Vec::new(),
            columns: tables::empty_columns(index),
            deleted: Vec::new(),
        });
        match value {
            Some(value) => {
                rows.keys.push(key.as_slice());
                rows.values.push(value.as_slice());
                let decoded = decoded_from
                    .and_then(|originals| originals.get(at))
                    .and_then(|(_, original)| original.as_deref())
                    .unwrap_or(value);
                tables::decode_into(index, key, decoded, &mut rows.columns);
            }
            None => rows.deleted.push(key.as_slice()),
        }
    }
    parts.push(part);
    parts
}

/// The committer's statements, one for each shape of group it has
/// written (the tables it touched, and how), prepared the first time.
struct Writes {
    prepared: HashMap<Vec<Touch>, Statement>,
    blobs: bool,
    /// The statement that writes a value's piece, once prepared.
    piece: Option<Statement>,
}

impl Writes {
    /// At most this many shapes are kept prepared; past it the cache
    /// starts again (few occur: the keyspaces a change to a run writes).
    const MOST: usize = 1024;

    /// The statement that writes a value's piece.
    fn piece(&mut self, client: &Client) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = &self.piece {
            return Ok(statement.clone());
        }
        let statement = wait(client.prepare(chunks::WRITE))?;
        self.piece = Some(statement.clone());
        Ok(statement)
    }

    fn statement(
        &mut self,
        client: &Client,
        touched: Vec<Touch>,
    ) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.prepared.get(&touched) {
            return Ok(statement.clone());
        }
        let statement = wait(client.prepare(&tables::write_sql(&touched, self.blobs)))?;
        if self.prepared.len() >= Self::MOST {
            self.prepared.clear();
        }
        self.prepared.insert(touched, statement.clone());
        Ok(statement)
    }
}

/// Writes a group as one transaction: one statement, or several between
/// `BEGIN` and `COMMIT`, with a `NOTIFY` of changed deployments in the same
/// transaction when `notify` (PostgreSQL delivers it once the transaction
/// commits). Returns once PostgreSQL has committed it, with the rows it
/// replaced that referred to objects (when the writes have a blob store).
fn write_group(
    client: &Client,
    writes: &mut Writes,
    parts: &[Part<'_>],
    chunked: Option<&Chunked>,
    notify: bool,
) -> std::result::Result<Vec<Entry>, tokio_postgres::Error> {
    let magic = BlobStore::magic();
    let blobs = writes.blobs;
    let mut statement =
        |part: &Part<'_>| -> std::result::Result<Vec<Entry>, tokio_postgres::Error> {
            let prepared = writes.statement(client, part.touched())?;
            let params = part.params(blobs.then_some(&magic as &(dyn ToSql + Sync)));
            let rows = wait(client.query(&prepared, &params))?;
            if !blobs {
                return Ok(Vec::new());
            }
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        };
    if let ([only], None, false) = (parts, chunked, notify) {
        return statement(only);
    }
    wait(client.batch_execute("BEGIN"))?;
    let mut replaced = Vec::new();
    for part in parts {
        replaced.extend(statement(part)?);
    }
    if let Some(chunked) = chunked {
        // The old pieces of every key written go before the new are
        // written.
        if !chunked.stale.is_empty() {
            wait(client.execute(chunks::DELETE, &[&chunked.stale]))?;
        }
        let write = writes.piece(client)?;
        for (key, generation, seq, bytes) in chunked.pieces() {
            wait(client.execute(&write, &[&key, &generation, &seq, &bytes]))?;
        }
    }
    if notify {
        wait(client.batch_execute(&format!("NOTIFY {DEPLOYMENTS_CHANNEL}")))?;
    }
    wait(client.batch_execute("COMMIT"))?;
    Ok(replaced)
}

impl Committer {
    fn run(self, requests: mpsc::Receiver<Request>) {
        let Committer {
            client,
            writes: mut prepared,
            mut with_pieces,
            pending,
            durable,
            blobs,
            runtime,
        } = self;
        let mut gatherer = Gatherer::new(requests);
        // While a group commits, the next gathers.
        while let Some(group) = gatherer.next(&pending, || !pending.halted.load(Ordering::Acquire))
        {
            // Every commit whose acknowledgement is in the group was made
            // before this, so the group covers it.
            let (writes, covered) = lock(&pending.unapplied).take();
            if !writes.is_empty() {
                let started = std::time::Instant::now();
                // The group's objects are written before the rows that
                // refer to them.
                // A table's columns are decoded from the values as written,
                // not from the references or markers that replace the large
                // ones.
                let large = writes
                    .iter()
                    .any(|(_, v)| v.as_deref().is_some_and(|v| chunks::needs_chunks(v)));
                let originals = (blobs.is_some() || large).then(|| writes.clone());
                let mut writes = match &blobs {
                    Some(blobs) => {
                        blobs.writing_group();
                        match block(&runtime, offload(blobs.clone(), writes)).and_then(|w| w) {
                            Ok(writes) => writes,
                            Err(error) => fail_stop(&error, group, &durable, "the blob store"),
                        }
                    }
                    None => writes,
                };
                let chunked = chunks::split(&mut writes, &mut with_pieces);
                let parts = statements(&writes, originals.as_deref());
                let written = {
                    let _moving = pending.moving();
                    pending.sent.store(covered, Ordering::Release);
                    // Standbys compile a new deployment ahead at once.
                    // (The parts have routed every key to its table.)
                    let notify = parts
                        .iter()
                        .any(|part| part.tables.keys().any(|index| is_deployment_table(*index)));
                    let written =
                        write_group(&client, &mut prepared, &parts, chunked.as_ref(), notify);
                    if written.is_ok() {
                        pending.applied(covered);
                    }
                    written
                };
                if let Some(blobs) = &blobs {
                    blobs.group_written();
                }
                match written {
                    Ok(replaced) => {
                        if let Some(blobs) = &blobs
                            && !replaced.is_empty()
                        {
                            runtime.spawn(delete_replaced(blobs.clone(), replaced));
                        }
                    }
                    Err(error) => {
                        let error = pg_error("committing a group", error);
                        fail_stop(&error, group, &durable, "PostgreSQL");
                    }
                }
                let metrics = crate::stats::metrics();
                metrics
                    .sync_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.syncs.inc();
                metrics.group_commits.observe(group.len() as f64);
            }
            acknowledge(&durable, covered, group);
        }
        // The next server on the database need not wait for PostgreSQL to
        // notice this connection close.
        let _ = wait(client.execute("SELECT pg_advisory_unlock($1)", &[&OWNER_LOCK]));
    }
}

impl Backend for PostgresBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // A key no unwritten commit wrote holds in the table what the last
        // commit that wrote it left (or something newer, written since).
        if let Some(written) = lock(&self.front.pending.unapplied).get(key) {
            return Ok(written);
        }
        let mut previous = None;
        loop {
            let _reading = self.reading();
            let Some(value) = self.reader().get(key)? else {
                return Ok(None);
            };
            if let Ok(resolved) = self.resolve(vec![(key.to_vec(), value.clone())])? {
                return Ok(resolved.into_iter().next().map(|(_, v)| v));
            }
            // The object or the pieces went with a newer commit (the
            // leader's, on a standby; for pieces, this server's too): read
            // the key again. The same row twice names a value that is gone
            // for good.
            if previous.as_ref() == Some(&value) {
                return Err(missing_value(key, Some(&(key.to_vec(), value))));
            }
            previous = Some(value);
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref(), usize::MAX, Order::Ascending)
    }

    fn scan_range_in(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        self.range(start, Some(end), limit, order)
    }

    fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let end = prefix_end(prefix);
        Ok(self
            .range(prefix, end.as_deref(), 1, Order::Descending)?
            .into_iter()
            .next())
    }

    fn commit(&self, ops: Vec<Op>) -> Commit {
        if self.read_only {
            return Box::pin(std::future::ready(Err(StoreError::Closed)));
        }
        self.front.commit(ops)
    }

    fn commit_unawaited(&self, ops: Vec<Op>) -> Result<()> {
        if self.read_only {
            return Err(StoreError::Closed);
        }
        self.front.commit_unawaited(ops)
    }

    fn defer(&self, ops: Vec<Op>) {
        if self.read_only {
            return;
        }
        self.front.defer(ops);
    }

    fn settled(&self) -> Commit {
        self.front.settled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, len: Option<usize>) -> crate::sled_unapplied::ToApply {
        (key.as_bytes().to_vec(), len.map(|n| Arc::new(vec![7; n])))
    }

    #[test]
    fn deployment_keys_are_known_in_every_environment() {
        assert!(is_deployment_key(b"deploy/\0\0\0\0\0\0\0\x01"));
        assert!(is_deployment_key(b"env/proj_x/prod/deploy/\0"));
        for other in [
            &b"run/deploy/"[..],
            b"env/proj_x/prod/run/x",
            b"env/proj_x/deploy/",
            b"env/",
            b"bundle/abc",
        ] {
            assert!(
                !is_deployment_key(other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_large_group_is_split_into_statements_of_bounded_size() {
        let count = |p: &Part<'_>| {
            p.tables.values().fold((0, 0), |(k, d), rows| {
                (k + rows.keys.len(), d + rows.deleted.len())
            })
        };
        let small = [write("a", Some(10)), write("b", None), write("c", Some(5))];
        let parts = statements(&small, None);
        assert_eq!(parts.len(), 1);
        assert_eq!(count(&parts[0]), (2, 1));

        let half = STATEMENT_BYTES / 2;
        let large = [
            write("a", Some(half)),
            write("b", Some(half)),
            // Over the bound alone: a statement of its own.
            write("c", Some(STATEMENT_BYTES + 1)),
            write("d", None),
        ];
        let parts = statements(&large, None);
        let shape: Vec<(usize, usize)> = parts.iter().map(count).collect();
        assert_eq!(shape, [(1, 0), (1, 0), (1, 0), (0, 1)]);
        assert!(parts.iter().all(|p| p.bytes > 0));
    }

    #[test]
    fn a_group_is_written_to_the_tables_its_keys_live_in() {
        let group = [
            write("run/run_1", Some(3)),
            write("env/proj_x/prod/run/run_2", Some(3)),
            write("journal/run_1/\0\0\0\0\0\0\0\x01", Some(3)),
            write("active/run_1", None),
            write("seal-check", Some(3)),
        ];
        let parts = statements(&group, None);
        let touched: Vec<(&str, bool, bool)> = parts[0]
            .touched()
            .into_iter()
            .map(|(index, puts, deletes)| (tables::name(index), puts, deletes))
            .collect();
        assert_eq!(
            touched,
            [
                ("kiln_run", true, false),
                ("kiln_active", false, true),
                ("kiln_journal", true, false),
                ("kiln_kv", true, false),
            ]
        );
        // Each table's deleted keys, keys, values and columns are
        // parameters, in order.
        let params = parts[0].params(None);
        let columns: usize = parts[0]
            .touched()
            .iter()
            .map(|(index, puts, deletes)| {
                usize::from(*deletes) + usize::from(*puts) * (2 + tables::columns(*index).len())
            })
            .sum();
        assert_eq!(params.len(), columns);
        let sql = tables::write_sql(&parts[0].touched(), false);
        assert_eq!(sql.matches("$").count(), params.len(), "{sql}");
    }
}
