//! Kiln's tables in PostgreSQL: one table for each keyspace of the layout
//! (`crate::layout`), `kiln_run` for runs, `kiln_journal` for journals,
//! `kiln_timer` for durable timers, and so on.
//!
//! Every table has the same core, `key bytea PRIMARY KEY, value bytea NOT
//! NULL`, where `key` is the whole key as sled keeps it (the environment's
//! prefix and the keyspace's included): `bytea` sorts byte by byte, so
//! each lookup or range the engine reads is one range of one table's
//! primary key, the only index its hot paths need. Beside it, the
//! columns an operator reads: `project` and `environment` (empty for the
//! server's first environment), the parts of the key decoded (a run's id, a
//! timer's due time in milliseconds, the sequence number of a journal key's
//! first entry…)
//! and, for runs, the task and status from the record. The committer fills
//! them as it writes; Kiln itself reads only `key` and `value`.
//!
//! A key routes to its table by its prefix alone, so a range that stays
//! under one keyspace's prefix reads one table; one that spans keyspaces
//! (an environment's whole keyspace, a test reading everything) reads
//! every table and merges them by key. Keys of no keyspace (a few markers,
//! such as `seal-check`) stay in `kiln_kv`. A value too large for one row
//! is in pieces in `kiln_chunk` (`crate::postgres_chunks`), its row
//! holding a marker.
//!
//! The catalogue below is the schema of migration 4: a change to it is a
//! new migration.

use crate::sled_unapplied::prefix_end;

/// One part of a key, after its keyspace's prefix, decoded into a column.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// Text up to a byte (which is skipped) or the end: a `text` column.
    Text(&'static str, u8),
    /// The rest of the key: a `text` column.
    Rest(&'static str),
    /// Eight bytes, big-endian: a `bigint` column.
    U64(&'static str),
    /// Four bytes, big-endian: a `bigint` column.
    U32(&'static str),
}

impl Part {
    fn column(self) -> (&'static str, bool) {
        match self {
            Part::Text(name, _) | Part::Rest(name) => (name, true),
            Part::U64(name) | Part::U32(name) => (name, false),
        }
    }
}

/// A keyspace's table.
#[derive(Debug)]
pub(crate) struct Table {
    /// The table's name.
    pub(crate) name: &'static str,
    /// The keyspace's prefix (`run/`).
    pub(crate) prefix: &'static [u8],
    /// How the rest of a key decodes into columns.
    parts: &'static [Part],
    /// Columns taken from a JSON record: the column, the record's field.
    fields: &'static [(&'static str, &'static str)],
}

use Part::{Rest, Text, U32, U64};

/// Every keyspace's table (`crate::layout` says what each holds).
pub(crate) const TABLES: &[Table] = &[
    table("kiln_deploy", b"deploy/", &[U64("seq")]),
    table("kiln_bundle", b"bundle/", &[Rest("sha256")]),
    Table {
        name: "kiln_run",
        prefix: b"run/",
        parts: &[Rest("run_id")],
        fields: &[("task_id", "taskId"), ("status", "status")],
    },
    table("kiln_active", b"active/", &[Rest("run_id")]),
    table("kiln_open", b"open/", &[Rest("run_id")]),
    table(
        "kiln_finished",
        b"finished/",
        &[U64("finished_ms"), Rest("run_id")],
    ),
    table(
        "kiln_journal",
        b"journal/",
        &[Text("run_id", b'/'), U64("seq")],
    ),
    table(
        "kiln_snap",
        b"snap/",
        &[
            Text("run_id", b'/'),
            U32("attempt"),
            Text("", b'/'),
            U32("layer"),
        ],
    ),
    table(
        "kiln_timer",
        b"timer/",
        &[U64("due_ms"), Text("run_id", b'/'), U64("wait_id")],
    ),
    table("kiln_idem", b"idem/", &[Rest("key_hash")]),
    table(
        "kiln_run_blob",
        b"run-blob/",
        &[Text("run_id", b'/'), Rest("part")],
    ),
    table("kiln_packet", b"packet/", &[Rest("path")]),
    table("kiln_packet_at", b"packet-at/", &[Rest("path")]),
    table(
        "kiln_child",
        b"child/",
        &[Text("parent_id", b'/'), Rest("child_id")],
    ),
    table("kiln_batch", b"batch/", &[Rest("batch_id")]),
    table(
        "kiln_batch_item",
        b"batch-item/",
        &[Text("batch_id", b'/'), U32("item")],
    ),
    table("kiln_batch_key", b"batch-key/", &[Rest("key_hash")]),
    table(
        "kiln_waiter",
        b"waiter/",
        &[Text("child_id", b'/'), Text("run_id", b'/'), U64("wait_id")],
    ),
    table(
        "kiln_wait",
        b"wait/",
        &[Text("run_id", b'/'), U64("wait_id")],
    ),
    table(
        "kiln_inbox",
        b"inbox/",
        &[
            Text("run_id", b'/'),
            U64("wait_id"),
            Text("", b'/'),
            U32("part"),
        ],
    ),
    table("kiln_token", b"token/", &[Rest("token_id")]),
    table("kiln_token_key", b"token-key/", &[Rest("idempotency_key")]),
    table(
        "kiln_token_waiter",
        b"token-waiter/",
        &[Text("token_id", b'/'), Text("run_id", b'/'), U64("wait_id")],
    ),
    table(
        "kiln_debounce",
        b"debounce/",
        &[Text("task_id", 0), Rest("debounce_key")],
    ),
    table("kiln_queue_paused", b"queue-paused/", &[Rest("queue")]),
    table("kiln_sched", b"sched/", &[Rest("schedule_id")]),
    table("kiln_sched_key", b"sched-key/", &[Rest("schedule_key")]),
    table(
        "kiln_sched_due",
        b"sched-due/",
        &[U64("next_ms"), Rest("schedule_id")],
    ),
    table(
        "kiln_sched_occ",
        b"sched-occ/",
        &[Text("schedule_id", b'/'), U64("occurrence_ms")],
    ),
    table(
        "kiln_sched_run",
        b"sched-run/",
        &[Text("schedule_id", b'/'), Rest("run_id")],
    ),
    table("kiln_project", b"project/", &[Rest("project_ref")]),
    table("kiln_apikey", b"apikey/", &[]),
    table("kiln_envvar", b"envvar/", &[Rest("name")]),
    table(
        "kiln_env_secret",
        b"env-secret/",
        &[Text("of_project", b'/'), Rest("of_environment")],
    ),
    table("kiln_pending", b"pending/", &[Rest("run_id")]),
    table(
        "kiln_stream",
        b"stream/",
        &[Text("run_id", b'/'), Text("stream", 0), U64("index")],
    ),
    table(
        "kiln_stream_key",
        b"stream-key/",
        &[Text("run_id", b'/'), Rest("stream")],
    ),
];

const fn table(name: &'static str, prefix: &'static [u8], parts: &'static [Part]) -> Table {
    Table {
        name,
        prefix,
        parts,
        fields: &[],
    }
}

/// The table of keys of no keyspace.
pub(crate) const MISC: &str = "kiln_kv";

/// How many tables there are, `kiln_kv` included: a table's index is its
/// place in [`TABLES`], `kiln_kv`'s is `TABLES.len()`.
pub(crate) const COUNT: usize = TABLES.len() + 1;

/// The name of table `index`.
pub(crate) fn name(index: usize) -> &'static str {
    TABLES.get(index).map_or(MISC, |t| t.name)
}

/// The length of the environment's prefix `key` starts with
/// (`env/<project>/<environment>/`), 0 for the server's first environment;
/// `None` for a key under `env/` that names no environment.
fn environment_len(key: &[u8]) -> Option<usize> {
    let Some(rest) = key.strip_prefix(b"env/".as_slice()) else {
        return Some(0);
    };
    let mut slashes = rest.iter().enumerate().filter(|(_, b)| **b == b'/');
    slashes.nth(1).map(|(at, _)| 4 + at + 1)
}

/// The table `key` lives in, and the length of the prefix that decides it
/// (the environment's and the keyspace's); `None` for `kiln_kv`.
fn route(key: &[u8]) -> Option<(usize, usize)> {
    let env = environment_len(key)?;
    let rest = &key[env..];
    TABLES
        .iter()
        .position(|t| rest.starts_with(t.prefix))
        .map(|index| (index, env + TABLES[index].prefix.len()))
}

/// The index of the table `key` lives in.
pub(crate) fn table_of(key: &[u8]) -> usize {
    route(key).map_or(TABLES.len(), |(index, _)| index)
}

/// The one table every key from `start` to `end` (exclusive; `None`: no
/// end) lives in, if there is one; `None` when the range may span tables.
pub(crate) fn table_of_range(start: &[u8], end: Option<&[u8]>) -> Option<usize> {
    let (index, len) = route(start)?;
    let prefix_end = prefix_end(&start[..len])?;
    (end? <= prefix_end.as_slice()).then_some(index)
}

/// A column's values for a group's rows, as one array parameter.
#[derive(Debug)]
pub(crate) enum Column {
    /// A `text` column.
    Text(Vec<Option<String>>),
    /// A `bigint` column.
    Int(Vec<Option<i64>>),
}

/// The columns of table `index` beside `key` and `value`, in order, each
/// with whether it is `text` (else `bigint`), and whether it comes from the
/// value (and so changes when the row is written again).
pub(crate) fn columns(index: usize) -> Vec<(&'static str, bool, bool)> {
    let mut columns = vec![("project", true, false), ("environment", true, false)];
    if let Some(table) = TABLES.get(index) {
        columns.extend(
            table
                .parts
                .iter()
                .map(|p| p.column())
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, text)| (name, text, false)),
        );
        columns.extend(table.fields.iter().map(|(name, _)| (*name, true, true)));
    }
    columns
}

/// Empty arrays for the columns of table `index`.
pub(crate) fn empty_columns(index: usize) -> Vec<Column> {
    columns(index)
        .into_iter()
        .map(|(_, text, _)| {
            if text {
                Column::Text(Vec::new())
            } else {
                Column::Int(Vec::new())
            }
        })
        .collect()
}

/// Appends the columns of a row of table `index` (`key`, and `value` for
/// the fields of a record) to `columns`. A key or record that does not
/// decode leaves its columns empty (`NULL`): Kiln reads only `key` and
/// `value`.
pub(crate) fn decode_into(index: usize, key: &[u8], value: &[u8], columns: &mut [Column]) {
    let mut values: Vec<Decoded> = Vec::with_capacity(columns.len());
    let env = environment_len(key).unwrap_or(0);
    let (project, environment) = match key.get(4..env.saturating_sub(1)) {
        Some(names) if env > 0 => {
            let names = text(names);
            match names.split_once('/') {
                Some((p, e)) => (p.to_owned(), e.to_owned()),
                None => (names, String::new()),
            }
        }
        _ => (String::new(), String::new()),
    };
    values.push(Decoded::Text(Some(project)));
    values.push(Decoded::Text(Some(environment)));
    if let Some(table) = TABLES.get(index) {
        let rest = key.get(env + table.prefix.len()..).unwrap_or_default();
        decode_parts(table.parts, rest, &mut values);
        decode_fields(table.fields, value, &mut values);
    }
    for (column, value) in columns.iter_mut().zip(values) {
        match (column, value) {
            (Column::Text(c), Decoded::Text(v)) => c.push(v),
            (Column::Int(c), Decoded::Int(v)) => c.push(v),
            (Column::Text(c), Decoded::Int(_)) => c.push(None),
            (Column::Int(c), Decoded::Text(_)) => c.push(None),
        }
    }
}

/// `bytes` as a `text` value: UTF-8, with anything else, and the NUL
/// that PostgreSQL's `text` refuses, as U+FFFD. (A key a user named, such
/// as a token's idempotency key, may hold either.)
fn text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

enum Decoded {
    Text(Option<String>),
    Int(Option<i64>),
}

fn decode_parts(parts: &[Part], mut rest: &[u8], values: &mut Vec<Decoded>) {
    let mut ok = true;
    for part in parts {
        let decoded = match *part {
            Part::Text(name, until) => {
                let (text, after) = match rest.iter().position(|b| *b == until) {
                    Some(at) => (&rest[..at], &rest[at + 1..]),
                    None => (rest, &[][..]),
                };
                rest = after;
                if name.is_empty() {
                    continue;
                }
                Decoded::Text(ok.then(|| self::text(text)))
            }
            Part::Rest(_) => {
                let all = std::mem::take(&mut rest);
                Decoded::Text(ok.then(|| text(all)))
            }
            Part::U64(_) => {
                let number = rest
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .and_then(|b| i64::try_from(u64::from_be_bytes(b)).ok());
                ok &= number.is_some();
                rest = rest.get(8..).unwrap_or_default();
                Decoded::Int(number.filter(|_| ok))
            }
            Part::U32(_) => {
                let number = rest
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| i64::from(u32::from_be_bytes(b)));
                ok &= number.is_some();
                rest = rest.get(4..).unwrap_or_default();
                Decoded::Int(number.filter(|_| ok))
            }
        };
        values.push(decoded);
    }
}

fn decode_fields(fields: &[(&str, &str)], value: &[u8], values: &mut Vec<Decoded>) {
    if fields.is_empty() {
        return;
    }
    let record = run_columns(value);
    for (_, field) in fields {
        values.push(Decoded::Text(match *field {
            "taskId" => record.task_id.as_deref().map(str::as_bytes).map(text),
            "status" => record.status.as_deref().map(str::as_bytes).map(text),
            _ => None,
        }));
    }
}

/// A run's record's task and status, read as the store reads a run's
/// record: MessagePack (fields numbered, or named by an earlier Kiln) from
/// the start of the record, or, failing that, whole, or JSON from an
/// earlier Kiln. A struct of the two fields alone cannot read a numbered
/// record (it would take the record's first two fields for them).
/// Anything else has no columns.
fn run_columns(value: &[u8]) -> RunColumns {
    if !crate::records::is_message_pack(value) {
        return crate::records::decode(&[], value).unwrap_or_default();
    }
    if let Some([_, task_id, status]) = crate::records::leading_fields(value) {
        return RunColumns {
            task_id: Some(task_id.to_owned()),
            status: Some(status.to_owned()),
        };
    }
    crate::records::decode::<kiln_types::Run>(&[], value)
        .map(|run| RunColumns {
            task_id: Some(run.task_id),
            status: Some(run.status.as_str().to_owned()),
        })
        .unwrap_or_default()
}

/// The fields of a run's record that `kiln_run` has columns for; serde
/// skips the rest of a JSON record unparsed.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunColumns {
    task_id: Option<String>,
    status: Option<String>,
}

/// A statement that reads one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Read {
    /// The value under `$1`.
    Get,
    /// `$1 <= key < $2`, in key order, at most `$3`.
    RangeUp,
    /// As [`Read::RangeUp`], the last first.
    RangeDown,
    /// `$1 <= key`, in key order, at most `$2`.
    FromUp,
    /// As [`Read::FromUp`], the last first.
    FromDown,
    /// The pieces of a value (`crate::postgres_chunks`), on no table.
    Pieces,
}

/// The index that stands for every table, in [`read_sql`].
pub(crate) const ALL: usize = COUNT;

/// The SQL of `read` on table `index`, or with [`ALL`], on every table as
/// one statement (so one snapshot), merged by key.
pub(crate) fn read_sql(index: usize, read: Read) -> String {
    let (range, order, limit) = match read {
        Read::Get => {
            return format!("SELECT value FROM {} WHERE key = $1", name(index));
        }
        Read::Pieces => return crate::postgres_chunks::READ.to_owned(),
        Read::RangeUp => ("key >= $1 AND key < $2", "key", "$3"),
        Read::RangeDown => ("key >= $1 AND key < $2", "key DESC", "$3"),
        Read::FromUp => ("key >= $1", "key", "$2"),
        Read::FromDown => ("key >= $1", "key DESC", "$2"),
    };
    let one = |index: usize| {
        format!(
            "SELECT key, value FROM {} WHERE {range} ORDER BY {order} LIMIT {limit}",
            name(index)
        )
    };
    if index != ALL {
        return one(index);
    }
    let all: Vec<String> = (0..COUNT).map(|i| format!("({})", one(i))).collect();
    format!("{} ORDER BY {order} LIMIT {limit}", all.join(" UNION ALL "))
}

/// What a group's statement writes to one table: its index, whether it
/// puts rows, whether it deletes some.
pub(crate) type Touch = (usize, bool, bool);

/// The SQL of a statement that writes a group to the tables it touches
/// (`touched`, in order), as one statement and so one transaction. Its
/// parameters, in order: with `blobs`, the first bytes of a reference to an
/// object; then for each table, the keys it deletes (if any), then the
/// keys and values it puts and their [`columns`] (if any). With `blobs`
/// it answers the rows it replaced or deleted whose value is a reference
/// (every part of the statement sees the tables as they were before it).
///
/// A statement has a part only for what it does: one that also deleted
/// and put nothing in every table it touched was measured to cost
/// PostgreSQL about half again as much CPU a run (`docs/BENCHMARKS.md`).
pub(crate) fn write_sql(touched: &[Touch], blobs: bool) -> String {
    let mut next = 0;
    let mut param = || {
        next += 1;
        format!("${next}")
    };
    let magic = blobs.then(&mut param);
    let mut parts = Vec::new();
    let mut replaced = Vec::new();
    for (at, &(index, puts, deletes)) in touched.iter().enumerate() {
        let table = name(index);
        let deleted = deletes.then(&mut param);
        if let Some(deleted) = &deleted {
            parts.push(format!(
                "d{at} AS (DELETE FROM {table} WHERE key = ANY({deleted}::bytea[]))"
            ));
        }
        let mut put_keys = None;
        if puts {
            let keys = param();
            let mut arrays = vec![format!("{keys}::bytea[]"), format!("{}::bytea[]", param())];
            let mut names = vec!["key", "value"];
            let mut updated = vec!["value = excluded.value".to_owned()];
            for (column, text, from_value) in columns(index) {
                let kind = if text { "text" } else { "int8" };
                arrays.push(format!("{}::{kind}[]", param()));
                names.push(column);
                if from_value {
                    updated.push(format!("{column} = excluded.{column}"));
                }
            }
            parts.push(format!(
                "p{at} AS (INSERT INTO {table} ({}) SELECT * FROM unnest({}) \
                 ON CONFLICT (key) DO UPDATE SET {})",
                names.join(", "),
                arrays.join(", "),
                updated.join(", ")
            ));
            put_keys = Some(keys);
        }
        if let Some(magic) = &magic {
            let keys = match (&put_keys, &deleted) {
                (Some(p), Some(d)) => format!("{p}::bytea[] || {d}::bytea[]"),
                (Some(k), None) | (None, Some(k)) => format!("{k}::bytea[]"),
                (None, None) => continue,
            };
            parts.push(format!(
                "r{at} AS (SELECT key, value FROM {table} WHERE key = ANY({keys}) \
                 AND substring(value FROM 1 FOR 8) = {magic})"
            ));
            replaced.push(format!("SELECT key, value FROM r{at}"));
        }
    }
    let answer = if replaced.is_empty() {
        "SELECT NULL::bytea, NULL::bytea WHERE false".to_owned()
    } else {
        replaced.join(" UNION ALL ")
    };
    if parts.is_empty() {
        return answer;
    }
    format!("WITH {} {answer}", parts.join(", "))
}

/// The SQL that creates every table (migration 4).
pub(crate) fn create_tables() -> String {
    let mut sql = String::new();
    for index in 0..TABLES.len() {
        let mut line = format!(
            "CREATE TABLE {} (key bytea PRIMARY KEY, value bytea NOT NULL",
            name(index)
        );
        for (column, text, _) in columns(index) {
            let kind = if text { "text" } else { "bigint" };
            line.push_str(&format!(", {column} {kind}"));
        }
        line.push_str("); ");
        sql.push_str(&line);
    }
    // `kiln_kv` keeps the keys of no keyspace, with the columns every
    // table has.
    sql.push_str("ALTER TABLE kiln_kv ADD COLUMN project text, ADD COLUMN environment text; ");
    // Every key and value in one place, as sled has them.
    let all: Vec<String> = (0..COUNT)
        .map(|index| format!("SELECT key, value FROM {}", name(index)))
        .collect();
    sql.push_str(&format!(
        "CREATE VIEW kiln_entries AS {};",
        all.join(" UNION ALL ")
    ));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keyspace_prefix_is_another_s_or_an_environment_s() {
        for a in TABLES {
            assert!(!a.prefix.starts_with(b"env/"), "{}", a.name);
            assert!(a.prefix.ends_with(b"/"), "{}", a.name);
            for b in TABLES {
                if a.name != b.name {
                    assert!(!b.prefix.starts_with(a.prefix), "{} {}", a.name, b.name);
                }
            }
        }
        let mut names: Vec<_> = TABLES.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TABLES.len());
    }

    /// Every keyspace `crate::layout` declares (a constant ending in `/`)
    /// has a table: a new one cannot land in `kiln_kv` unnoticed.
    #[test]
    fn every_keyspace_of_the_layout_has_a_table() {
        let layout = include_str!("layout.rs");
        let mut keyspaces = 0;
        for line in layout.lines().filter(|l| l.contains(": &[u8] = b\"")) {
            let Some(prefix) = line.split('"').nth(1) else {
                continue;
            };
            if prefix.ends_with('/') {
                keyspaces += 1;
                assert!(
                    TABLES.iter().any(|t| t.prefix == prefix.as_bytes()),
                    "no table for {prefix}"
                );
            } else {
                assert_eq!(table_of(prefix.as_bytes()), TABLES.len(), "{prefix}");
            }
        }
        assert_eq!(keyspaces, TABLES.len());
    }

    #[test]
    fn keys_route_by_keyspace_in_every_environment() {
        let run = TABLES.iter().position(|t| t.name == "kiln_run").unwrap();
        assert_eq!(table_of(b"run/run_1"), run);
        assert_eq!(table_of(b"env/proj_x/prod/run/run_1"), run);
        assert_eq!(table_of(b"runs-indexed"), TABLES.len());
        assert_eq!(table_of(b"seal-check"), TABLES.len());
        assert_eq!(table_of(b"env/proj_x"), TABLES.len());
        assert_eq!(table_of(b"env/proj_x/prod/nothing/"), TABLES.len());
        assert_eq!(
            table_of(b"env-secret/proj_x/prod"),
            table_of(b"env-secret/")
        );
    }

    /// A range said to lie in one table holds only keys of that table:
    /// checked against every key of a sample that falls in it.
    #[test]
    fn a_range_is_one_table_only_when_every_key_in_it_is() {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for env in [&b""[..], b"env/p/e/", b"env/p/f/", b"env/q/"] {
            for table in TABLES {
                for rest in [&b""[..], b"a", b"a/\0\0\0\0\0\0\0\x01", b"\xff\xff", b"z/z"] {
                    keys.push([env, table.prefix, rest].concat());
                }
                let mut cut = [env, table.prefix].concat();
                cut.pop();
                keys.push(cut);
            }
            keys.push([env, b"seal-check"].concat());
        }
        keys.sort();
        let bounds: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        for start in &bounds {
            for end in bounds.iter().map(|e| Some(*e)).chain([None]) {
                let Some(index) = table_of_range(start, end) else {
                    continue;
                };
                for key in &keys {
                    let inside = key.as_slice() >= *start && end.is_none_or(|e| key.as_slice() < e);
                    if inside {
                        assert_eq!(table_of(key), index, "{key:?} in {start:?}..{end:?}");
                    }
                }
            }
        }
        assert_eq!(table_of_range(b"run/", Some(b"run0")), Some(2));
        assert_eq!(table_of_range(b"run/", None), None);
        assert_eq!(table_of_range(b"", Some(b"\xff")), None);
        assert_eq!(table_of_range(b"env/p/e/", Some(b"env/p/e0")), None);
    }

    #[test]
    fn keys_and_records_decode_into_columns() {
        let timer = table_of(b"timer/");
        let mut decoded_columns = empty_columns(timer);
        let key = [
            &b"env/proj_x/prod/timer/"[..],
            &1_700_000_000_000u64.to_be_bytes(),
            b"run_1/",
            &7u64.to_be_bytes(),
        ]
        .concat();
        decode_into(timer, &key, b"", &mut decoded_columns);
        let names: Vec<_> = columns(timer).iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            ["project", "environment", "due_ms", "run_id", "wait_id"]
        );
        let text = |c: &Column| match c {
            Column::Text(v) => v[0].clone(),
            Column::Int(v) => v[0].map(|n| n.to_string()),
        };
        let decoded: Vec<_> = decoded_columns.iter().map(text).collect();
        assert_eq!(
            decoded,
            [
                Some("proj_x".into()),
                Some("prod".into()),
                Some("1700000000000".into()),
                Some("run_1".into()),
                Some("7".into())
            ]
        );

        let run = table_of(b"run/");
        let mut decoded_columns = empty_columns(run);
        decode_into(
            run,
            b"run/run_1",
            br#"{"id":"run_1","taskId":"hello","status":"COMPLETED","tags":["a"],"n":1}"#,
            &mut decoded_columns,
        );
        let decoded: Vec<_> = decoded_columns.iter().map(text).collect();
        assert_eq!(
            decoded,
            [
                Some(String::new()),
                Some(String::new()),
                Some("run_1".into()),
                Some("hello".into()),
                Some("COMPLETED".into())
            ]
        );

        // A run's record as the store writes it (fields numbered), and as
        // an earlier Kiln wrote it (fields named): the same columns.
        let mut record = kiln_types::Run::queued(
            kiln_types::RunId::generate(1),
            "hello",
            kiln_types::DeploymentId::generate(1),
            "1",
            "{}",
            kiln_types::Timestamp(1),
        );
        record.status = kiln_types::RunStatus::Completed;
        let numbered = crate::records::encode_run(&record).expect("encodes");
        let named = rmp_serde::to_vec_named(&record).expect("encodes");
        for bytes in [numbered, named] {
            let mut decoded_columns = empty_columns(run);
            decode_into(run, b"run/run_1", &bytes, &mut decoded_columns);
            let decoded: Vec<_> = decoded_columns.iter().map(text).collect();
            assert_eq!(
                decoded[3..],
                [Some("hello".into()), Some("COMPLETED".into())]
            );
        }

        // A NUL, which PostgreSQL's text refuses, in a key a user named or
        // in a record: U+FFFD.
        let key = table_of(b"token-key/");
        let mut decoded_columns = empty_columns(key);
        decode_into(key, b"token-key/a\0b\xff", b"", &mut decoded_columns);
        assert_eq!(text(&decoded_columns[2]), Some("a\u{FFFD}b\u{FFFD}".into()));
        let mut decoded_columns = empty_columns(run);
        decode_into(
            run,
            b"run/run_1",
            br#"{"taskId":"a\u0000b","status":"QUEUED"}"#,
            &mut decoded_columns,
        );
        assert_eq!(text(&decoded_columns[3]), Some("a\u{FFFD}b".into()));

        // A key too short for its parts, or a value that is not a record:
        // empty columns, no error.
        let mut decoded_columns = empty_columns(timer);
        decode_into(timer, b"timer/\0\0", b"", &mut decoded_columns);
        assert!(matches!(&decoded_columns[2], Column::Int(v) if v[0].is_none()));
        let mut decoded_columns = empty_columns(run);
        decode_into(run, b"run/x", b"KBLB-reference", &mut decoded_columns);
        assert!(matches!(&decoded_columns[4], Column::Text(v) if v[0].is_none()));
    }
}
