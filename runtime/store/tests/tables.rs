//! The PostgreSQL store keeps each keyspace in a table of its own, with
//! its key decoded into columns an operator can query; a database from
//! before, with everything in `kiln_kv`, is moved into them at start.

#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Backend, Op, PostgresBackend};

/// How many runs the old database holds: more than one page of the move
/// (a thousand keys), so it reads several.
const RUNS: usize = 1200;

#[test]
fn a_database_of_one_table_moves_into_the_keyspaces_tables_and_reads_the_same() {
    let server = postgres::Postgres::start();
    let url = server.database("kiln");
    // The database as Kiln's first schema left it: one table, every key
    // in it. Each run has its record and a journal entry; one run of
    // another environment, a timer and a marker of no keyspace besides.
    server.query(
        &url,
        &format!(
            "CREATE TABLE kiln_migrations \
               (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO kiln_migrations (version) VALUES (1); \
             CREATE TABLE kiln_kv (key bytea PRIMARY KEY, value bytea NOT NULL); \
             INSERT INTO kiln_kv SELECT convert_to('run/run_' || i, 'UTF8'), \
               convert_to('{{\"id\":\"run_' || i || '\",\"taskId\":\"hello\",\
               \"status\":\"COMPLETED\",\"payload\":\"' || repeat('x', 500) || '\"}}', 'UTF8') \
               FROM generate_series(1, {RUNS}) AS i; \
             INSERT INTO kiln_kv SELECT convert_to('journal/run_' || i || '/', 'UTF8') \
               || int8send(1), convert_to('{{}}', 'UTF8') FROM generate_series(1, {RUNS}) AS i; \
             INSERT INTO kiln_kv VALUES \
               (convert_to('env/proj_x/prod/run/run_x', 'UTF8'), \
                convert_to('{{\"id\":\"run_x\",\"taskId\":\"other\",\"status\":\"QUEUED\"}}', 'UTF8')), \
               (convert_to('timer/', 'UTF8') || int8send(1700000000000) \
                || convert_to('run_1/', 'UTF8') || int8send(3), ''), \
               (convert_to('seal-check', 'UTF8'), 'sealed'), \
               ('\\x746f6b656e2d6b65792f6100ff', 'token_1');"
        ),
    );
    let before = server.query(&url, "SELECT count(*) FROM kiln_kv");
    assert_eq!(before, (2 * RUNS + 4).to_string());

    // A standby of this Kiln beside a leader of the older one has nothing
    // to read until the leader upgrades the database; it says so.
    let error = PostgresBackend::open_read_only(&url, None).unwrap_err();
    assert!(
        error.to_string().contains("older than this Kiln"),
        "{error}"
    );

    let backend = PostgresBackend::open(&url).unwrap();
    // Every key reads as before, through lookups and scans.
    let run_7 = backend.get(b"run/run_7").unwrap().unwrap();
    assert!(run_7.starts_with(br#"{"id":"run_7","taskId":"hello""#));
    let journal = backend.scan_prefix(b"journal/run_7/").unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(backend.scan_prefix(b"run/").unwrap().len(), RUNS);
    assert_eq!(backend.get(b"seal-check").unwrap().unwrap(), b"sealed");
    let everything = backend.scan_prefix(b"").unwrap();
    assert_eq!(everything.len(), 2 * RUNS + 4);
    assert!(
        everything.windows(2).all(|w| w[0].0 < w[1].0),
        "in key order"
    );
    let newest = backend
        .scan_range_rev(b"run/", b"run0", 2)
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(newest, ["run/run_999", "run/run_998"]);

    // Each in its table, with its columns.
    let q = |sql: &str| server.query(&url, sql);
    assert_eq!(
        q("SELECT convert_from(key, 'UTF8') FROM kiln_kv"),
        "seal-check"
    );
    assert_eq!(
        q("SELECT task_id, status, count(*) FROM kiln_run \
           WHERE project = '' GROUP BY 1, 2"),
        format!("hello|COMPLETED|{RUNS}")
    );
    assert_eq!(
        q(
            "SELECT project, environment, run_id, task_id, status FROM kiln_run \
           WHERE project <> ''"
        ),
        "proj_x|prod|run_x|other|QUEUED"
    );
    assert_eq!(
        q("SELECT run_id, seq FROM kiln_journal WHERE run_id = 'run_7'"),
        "run_7|1"
    );
    assert_eq!(
        q("SELECT due_ms, run_id, wait_id FROM kiln_timer"),
        "1700000000000|run_1|3"
    );
    assert_eq!(
        q("SELECT count(*) FROM kiln_entries"),
        (2 * RUNS + 4).to_string()
    );

    // A key a user named may hold a NUL, which PostgreSQL's text refuses:
    // its column shows U+FFFD, the key itself is kept as it was.
    assert_eq!(
        q("SELECT idempotency_key, value FROM kiln_token_key"),
        "a\u{FFFD}\u{FFFD}|\\x746f6b656e5f31"
    );
    assert_eq!(
        backend.get(b"token-key/a\0\xff").unwrap().as_deref(),
        Some(&b"token_1"[..])
    );

    // New writes land in their tables too, and a run written again has its
    // new status.
    let record = br#"{"id":"run_7","taskId":"hello","status":"CANCELED"}"#.to_vec();
    futures_executor::block_on(backend.commit(vec![
        Op::Put(b"run/run_7".to_vec(), record),
        Op::Delete(b"run/run_8".to_vec()),
        Op::Put(b"active/run_7".to_vec(), Vec::new()),
        Op::Put(
            b"run/run_nul".to_vec(),
            br#"{"id":"run_nul","taskId":"a\u0000b","status":"QUEUED"}"#.to_vec(),
        ),
        // As this Kiln writes a run's record: MessagePack.
        Op::Put(b"run/run_9".to_vec(), packed_run()),
    ]))
    .unwrap();
    assert_eq!(
        q("SELECT task_id, status FROM kiln_run WHERE run_id = 'run_9'"),
        "packed|EXECUTING"
    );
    assert_eq!(
        q("SELECT status FROM kiln_run WHERE run_id IN ('run_7', 'run_8')"),
        "CANCELED"
    );
    assert_eq!(q("SELECT run_id FROM kiln_active"), "run_7");
    assert_eq!(
        q("SELECT task_id FROM kiln_run WHERE run_id = 'run_nul'"),
        "a\u{FFFD}b"
    );
    drop(backend);

    // A standby opened now reads the tables.
    let standby = PostgresBackend::open_read_only(&url, None).unwrap();
    assert_eq!(standby.scan_prefix(b"journal/").unwrap().len(), RUNS);
    assert_eq!(standby.scan_prefix(b"").unwrap().len(), 2 * RUNS + 5);
    drop(standby);

    // The move is one migration, applied once.
    let backend = PostgresBackend::open(&url).unwrap();
    assert_eq!(backend.scan_prefix(b"run/").unwrap().len(), RUNS);
    assert_eq!(
        q("SELECT string_agg(version::text, ',' ORDER BY version) FROM kiln_migrations"),
        "1,2,3,4"
    );
}

/// A run's record as the store writes it (MessagePack with numbered fields),
/// of task `packed`, `EXECUTING`. Its columns come from the record, its
/// `run_id` from the key it is written under.
fn packed_run() -> Vec<u8> {
    let mut run = kiln_types::Run::queued(
        kiln_types::RunId::generate(9),
        "packed",
        kiln_types::DeploymentId::generate(1),
        "1",
        "{}",
        kiln_types::Timestamp(1),
    );
    run.status = kiln_types::RunStatus::Executing;
    run.tags = vec!["a".into()];
    kiln_store::run_record(&run).unwrap()
}

/// A value larger than a row takes (64 MiB a piece here; PostgreSQL's own
/// limit is 1 GiB) is kept in pieces in `kiln_chunk`, read back whole,
/// and its pieces go when it is replaced or deleted, after a restart too.
#[test]
fn a_value_too_large_for_one_row_is_kept_in_pieces() {
    let server = postgres::Postgres::start();
    let url = server.database("kiln");
    let q = |sql: &str| server.query(&url, sql);
    let commit = |backend: &PostgresBackend, ops: Vec<Op>| {
        futures_executor::block_on(backend.commit(ops)).unwrap();
    };
    let large =
        |salt: u8| -> Vec<u8> { (0..70usize << 20).map(|i| (i % 251) as u8 ^ salt).collect() };
    // Bytes a user wrote that begin as a marker does, and as long (28
    // bytes): kept in pieces too, so never taken for one.
    let look_alike = b"KCHUNKS1 and a user's 20 byt".to_vec();
    assert_eq!(look_alike.len(), 28);

    let backend = PostgresBackend::open(&url).unwrap();
    commit(
        &backend,
        vec![
            Op::Put(b"snap/run_1/a".to_vec(), large(0)),
            Op::Put(b"packet/p".to_vec(), look_alike.clone()),
            Op::Put(b"run/run_1".to_vec(), b"{}".to_vec()),
        ],
    );
    assert_eq!(q("SELECT count(*) FROM kiln_chunk"), "3");
    assert_eq!(q("SELECT length(value) FROM kiln_snap"), "28");
    drop(backend);

    let backend = PostgresBackend::open(&url).unwrap();
    assert!(backend.get(b"snap/run_1/a").unwrap() == Some(large(0)));
    let scanned = backend.scan_prefix(b"snap/").unwrap();
    assert!(scanned == [(b"snap/run_1/a".to_vec(), large(0))]);
    assert_eq!(backend.get(b"packet/p").unwrap(), Some(look_alike.clone()));
    assert_eq!(backend.scan_prefix(b"").unwrap().len(), 3);

    // Replaced by another as large: its own pieces, the old ones gone.
    commit(&backend, vec![Op::Put(b"snap/run_1/a".to_vec(), large(1))]);
    assert_eq!(q("SELECT count(*) FROM kiln_chunk"), "3");
    drop(backend);
    let backend = PostgresBackend::open(&url).unwrap();
    assert!(backend.get(b"snap/run_1/a").unwrap() == Some(large(1)));

    // A standby reads it whole too.
    let standby = PostgresBackend::open_read_only(&url, None).unwrap();
    assert!(standby.get(b"snap/run_1/a").unwrap() == Some(large(1)));
    assert_eq!(standby.get(b"packet/p").unwrap(), Some(look_alike.clone()));
    drop(standby);

    // Deleted, and made small: no piece is left.
    commit(
        &backend,
        vec![
            Op::Delete(b"snap/run_1/a".to_vec()),
            Op::Put(b"packet/p".to_vec(), b"small".to_vec()),
        ],
    );
    assert_eq!(q("SELECT count(*) FROM kiln_chunk"), "0");
    drop(backend);
    let backend = PostgresBackend::open(&url).unwrap();
    assert_eq!(backend.get(b"snap/run_1/a").unwrap(), None);
    assert_eq!(
        backend.get(b"packet/p").unwrap().as_deref(),
        Some(&b"small"[..])
    );
}
