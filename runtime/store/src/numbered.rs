//! MessagePack with numbered fields: how a run's record is encoded.
//!
//! A run's record is written at every change of the run, so its size is
//! paid many times over: in the write-ahead log, in the writes laid over
//! sled's tree, and in sled's own log, where every leaf it splits or
//! consolidates is written again whole. With its fields named, about half
//! of a finished `hello-world` run's record were the names of its fields
//! and of its attempt's, log line's and retry policy's.
//!
//! This encoder writes what `rmp_serde` writes with named fields, except
//! that every struct field's key is its number (its place among the
//! struct's fields, from 0) instead of its name. A field left out
//! (`skip_serializing_if`) keeps its number for the fields after it, so
//! the map says which fields are there. `rmp_serde` reads such a record as
//! it reads one with named fields: serde's derived `Deserialize` takes a
//! field's number for its key as readily as its name. Records written with
//! named fields read back unchanged.
//!
//! So **the fields of a type stored in a run's record are numbered by the
//! order they are declared in**: a new field goes after the last one, and
//! none is removed or moved (an unused one can be renamed and left). The
//! types are `Run` and what it holds (`Attempt`, `LogLine`, `RunError`,
//! `ParentRun`, `RunTtl`, `RunDebounce`, `RunSchedule`, `TraceContext`, and
//! the manifest's `RetryPolicy`); each says so in its docs. The store's
//! tests read back a record with every field set, against the bytes this
//! encoder first wrote for it.
//!
//! What the numbering cannot carry, and none of these types uses:
//! - a struct serialized with a tag field (`#[serde(tag = ...)]`), whose
//!   tag would be numbered too, so that it could not be read back;
//! - a field serialized but never deserialized (`skip_deserializing`), or
//!   the other way round (`skip_serializing`), which shifts the numbers on
//!   one side only.
//!
//! Nor can a struct of only some of a run's fields read a numbered record:
//! it would take the record's first fields for its own. What reads part of
//! a record reads its first fields with `records::leading_fields`, or
//! decodes the whole run.

use serde::ser::{self, Serialize};

/// Why a value could not be encoded.
#[derive(Debug)]
pub(crate) struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// Writing to a `Vec` cannot fail; an error here is a length that does not
/// fit MessagePack's 32 bits.
fn failed(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

/// Appends `value` to `out`, its struct fields keyed by number.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), Error> {
    value.serialize(&mut Numbered(out))
}

/// The serializer: MessagePack into a `Vec`, as `rmp_serde` writes it but
/// for struct fields' keys.
struct Numbered<'a>(&'a mut Vec<u8>);

fn len32(len: usize) -> Result<u32, Error> {
    u32::try_from(len).map_err(|_| Error(format!("{len} items do not fit a MessagePack length")))
}

impl Numbered<'_> {
    fn str(&mut self, v: &str) -> Result<(), Error> {
        rmp::encode::write_str(self.0, v).map_err(failed)
    }
}

fn array_len(out: &mut Vec<u8>, len: usize) -> Result<(), Error> {
    rmp::encode::write_array_len(out, len32(len)?).map_err(failed)?;
    Ok(())
}

fn map_len(out: &mut Vec<u8>, len: usize) -> Result<(), Error> {
    rmp::encode::write_map_len(out, len32(len)?).map_err(failed)?;
    Ok(())
}

/// A sequence or map: its items go straight after its header when its
/// length is known, or into a buffer of their own until it is.
fn items(out: &mut Vec<u8>, len: Option<usize>, map: bool) -> Result<Items<'_>, Error> {
    match len {
        Some(len) => {
            if map {
                map_len(out, len)?;
            } else {
                array_len(out, len)?;
            }
            Ok(Items { out, later: None })
        }
        None => Ok(Items {
            out,
            later: Some((Vec::new(), 0, map)),
        }),
    }
}

/// The items of a sequence or map being written.
struct Items<'a> {
    out: &'a mut Vec<u8>,
    /// For a length not known at the start: the items written so far, how
    /// many, and whether they are a map's (counted in pairs).
    later: Option<(Vec<u8>, usize, bool)>,
}

impl Items<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        match &mut self.later {
            Some((buffer, count, _)) => {
                *count += 1;
                encode_into(buffer, value)
            }
            None => encode_into(self.out, value),
        }
    }

    fn end(self) -> Result<(), Error> {
        if let Some((buffer, count, map)) = self.later {
            if map {
                map_len(self.out, count / 2)?;
            } else {
                array_len(self.out, count)?;
            }
            self.out.extend_from_slice(&buffer);
        }
        Ok(())
    }
}

/// A struct's fields, keyed by number.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    next: u64,
}

impl Fields<'_> {
    fn field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        rmp::encode::write_uint(self.out, self.next).map_err(failed)?;
        self.next += 1;
        encode_into(self.out, value)
    }
}

impl<'a> ser::Serializer for &'a mut Numbered<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = Items<'a>;
    type SerializeTupleStruct = Items<'a>;
    type SerializeTupleVariant = Items<'a>;
    type SerializeMap = Items<'a>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Fields<'a>;

    fn is_human_readable(&self) -> bool {
        // As `rmp_serde`, which reads the records back.
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        rmp::encode::write_bool(self.0, v).map_err(failed)
    }

    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        rmp::encode::write_sint(self.0, v).map_err(failed)?;
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.serialize_bytes(&v.to_be_bytes())
    }

    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        rmp::encode::write_uint(self.0, v).map_err(failed)?;
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.serialize_bytes(&v.to_be_bytes())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        rmp::encode::write_f32(self.0, v).map_err(failed)
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        rmp::encode::write_f64(self.0, v).map_err(failed)
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.str(v)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        rmp::encode::write_bin(self.0, v).map_err(failed)
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        rmp::encode::write_nil(self.0).map_err(failed)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        array_len(self.0, 0)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        map_len(self.0, 1)?;
        self.str(variant)?;
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Items<'a>, Error> {
        items(self.0, len, false)
    }

    fn serialize_tuple(self, len: usize) -> Result<Items<'a>, Error> {
        items(self.0, Some(len), false)
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Items<'a>, Error> {
        items(self.0, Some(len), false)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Items<'a>, Error> {
        map_len(self.0, 1)?;
        self.str(variant)?;
        items(self.0, Some(len), false)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Items<'a>, Error> {
        items(self.0, len, true)
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Fields<'a>, Error> {
        map_len(self.0, len)?;
        Ok(Fields {
            out: &mut *self.0,
            next: 0,
        })
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Fields<'a>, Error> {
        map_len(self.0, 1)?;
        self.str(variant)?;
        self.serialize_struct(variant, len)
    }
}

/// The traits of a sequence's kinds (seq, tuple, tuple struct and tuple
/// variant), each of whose items is written as it comes.
macro_rules! items_of {
    ($($kind:ident: $method:ident),*) => {$(
        impl ser::$kind for Items<'_> {
            type Ok = ();
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.item(value)
            }

            fn end(self) -> Result<(), Error> {
                Items::end(self)
            }
        }
    )*};
}

items_of!(
    SerializeSeq: serialize_element,
    SerializeTuple: serialize_element,
    SerializeTupleStruct: serialize_field,
    SerializeTupleVariant: serialize_field
);

impl ser::SerializeMap for Items<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.item(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.item(value)
    }

    fn end(self) -> Result<(), Error> {
        Items::end(self)
    }
}

/// The traits of a struct's kinds (struct and struct variant): each field
/// is keyed by its number, and a field left out still takes one.
macro_rules! fields_of {
    ($($kind:ident),*) => {$(
        impl ser::$kind for Fields<'_> {
            type Ok = ();
            type Error = Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.field(value)
            }

            fn skip_field(&mut self, _key: &'static str) -> Result<(), Error> {
                self.next += 1;
                Ok(())
            }

            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )*};
}

fields_of!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_manifest::{Machine, RetryPolicy};
    use kiln_types::{
        Attempt, AttemptOutcome, DebounceMode, DeploymentId, LogLine, ParentRun, Run, RunDebounce,
        RunError, RunId, RunSchedule, RunStatus, RunTtl, ScheduleId, Timestamp, TraceContext,
    };

    fn numbered(run: &Run) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, run).expect("encodes");
        out
    }

    fn id(text: &str) -> RunId {
        RunId::parse(text).expect("a run id")
    }

    /// A run with every field of every type its record holds set to
    /// something other than its default.
    fn every_field_set() -> Run {
        let error = RunError {
            name: Some("Oops".into()),
            message: "it broke".into(),
            stack_trace: Some("at line 1".into()),
        };
        let mut run = Run::queued(
            id("run_01k9zzzzzz0000000000000ab"),
            "every-field",
            DeploymentId::parse("deploy_01k9zzzzzz0000000000000cd").expect("an id"),
            "20261206.2",
            r#"{"n":1}"#,
            Timestamp(1_765_000_000_000),
        );
        run.status = RunStatus::Failed;
        run.payload_type = "application/super+json".into();
        run.payload_blob = Some(7);
        run.output = Some(r#"{"out":2}"#.into());
        run.output_blob = Some(8);
        run.error = Some(error.clone());
        run.tags = vec!["a".into(), "b".into()];
        run.metadata = Some(serde_json::json!({"progress": 0.5, "step": 3, "done": false}));
        run.machine = Machine::Large2x;
        run.max_attempts = 4;
        run.retry = RetryPolicy {
            max_attempts: 4,
            factor: 1.5,
            min_timeout_ms: 10,
            max_timeout_ms: 900,
            randomize: false,
            out_of_memory_machine: Some(Machine::Large1x),
        };
        run.max_duration_secs = Some(60);
        run.attempts = vec![Attempt {
            number: 1,
            machine: Machine::Micro,
            started_at: Timestamp(1_765_000_000_001),
            finished_at: Some(Timestamp(1_765_000_000_002)),
            outcome: Some(AttemptOutcome::Failed),
            error: Some(error),
            usage_ms: 5,
            logs: vec![LogLine {
                at: Timestamp(1_765_000_000_001),
                level: "warn".into(),
                message: "careful".into(),
                fields: vec![("k".into(), "v".into())],
            }],
            logs_dropped: 2,
            // Written only when false (`true` is the default of a record
            // from before the field existed).
            suspended: false,
        }];
        run.next_attempt_at = Some(Timestamp(1_765_000_000_100));
        run.idempotency_key = Some("key-1".into());
        run.is_test = true;
        run.schedule = Some(RunSchedule {
            id: ScheduleId::parse("sched_01k9zzzzzz0000000000000ef").expect("an id"),
            external_id: Some("user-9".into()),
            deduplication_key: Some("daily".into()),
            cron: "0 9 * * *".into(),
            timestamp: Timestamp(1_764_999_999_000),
        });
        run.parent = Some(ParentRun {
            parent: id("run_01k9zzzzzz0000000000000gh"),
            root: id("run_01k9zzzzzz0000000000000jk"),
            depth: 2,
            trigger_function: "triggerAndWait".into(),
        });
        run.batch = Some("batch_1".into());
        run.delayed_until = Some(Timestamp(1_765_000_000_003));
        run.ttl = Some(RunTtl {
            text: "10m".into(),
            ms: 600_000,
        });
        run.expires_at = Some(Timestamp(1_765_000_600_000));
        run.expired_at = Some(Timestamp(1_765_000_600_001));
        run.debounce = Some(RunDebounce {
            key: "d".into(),
            mode: DebounceMode::Trailing,
            delay_ms: 500,
            deadline: Some(Timestamp(1_765_000_001_000)),
        });
        run.queue = "emails".into();
        run.concurrency_key = Some("tenant-3".into());
        run.priority_ms = 250;
        run.updated_at = Timestamp(1_765_000_000_004);
        run.started_at = Some(Timestamp(1_765_000_000_001));
        run.finished_at = Some(Timestamp(1_765_000_000_005));
        run.trace = Some(TraceContext {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span_id: "00f067aa0ba902b7".into(),
            sampled: false,
        });
        run.journal = Some(r#"{"seq":1}"#.into());
        run
    }

    /// [`every_field_set`] without the fields added since
    /// [`FIRST_WRITTEN`].
    fn every_first_field_set() -> Run {
        Run {
            journal: None,
            ..every_field_set()
        }
    }

    #[test]
    fn a_record_with_every_field_set_reads_back_as_written() {
        let run = every_field_set();
        let record = numbered(&run);
        let back: Run = rmp_serde::from_slice(&record).expect("reads back");
        assert_eq!(back, run);
        // And a record with every field left at its default.
        let bare = Run::queued(
            id("run_01k9zzzzzz0000000000000mn"),
            "bare",
            DeploymentId::parse("deploy_01k9zzzzzz0000000000000pq").expect("an id"),
            "1",
            "",
            Timestamp(1),
        );
        let back: Run = rmp_serde::from_slice(&numbered(&bare)).expect("reads back");
        assert_eq!(back, bare);
    }

    /// The record of [`every_field_set`] as this encoder first wrote it. If
    /// this test fails, a field of a type a run's record holds was added
    /// before the last one, moved or removed: older records would read
    /// back with their fields mixed up (see the module's docs).
    const FIRST_WRITTEN: &str = concat!(
        "de002500bd72756e5f30316b397a7a7a7a7a7a30303030303030303030303030616201ab65766572",
        "792d6669656c6402a64641494c454403d9206465706c6f795f30316b397a7a7a7a7a7a3030303030",
        "3030303030303030636404aa32303236313230362e3205a77b226e223a317d06b66170706c696361",
        "74696f6e2f73757065722b6a736f6e070708a97b226f7574223a327d09080a8300a44f6f707301a8",
        "69742062726f6b6502a96174206c696e6520310b92a161a1620c83a870726f6772657373cb3fe000",
        "0000000000a47374657003a4646f6e65c20da86c617267652d32780e040f86000401cb3ff8000000",
        "000000020a03cd038404c205a86c617267652d3178103c11918a000101a56d6963726f02cf000001",
        "9af232b20103cf0000019af232b20204a64641494c4544058300a44f6f707301a869742062726f6b",
        "6502a96174206c696e652031060507918400cf0000019af232b20101a47761726e02a76361726566",
        "756c039192a16ba176080209c212cf0000019af232b26413a56b65792d3114c3158500bf73636865",
        "645f30316b397a7a7a7a7a7a30303030303030303030303030656601a6757365722d3902a5646169",
        "6c7903a9302039202a202a202a04cf0000019af232ae18168400bd72756e5f30316b397a7a7a7a7a",
        "7a30303030303030303030303030676801bd72756e5f30316b397a7a7a7a7a7a3030303030303030",
        "30303030306a6b020203ae74726967676572416e645761697417a762617463685f3118cf0000019a",
        "f232b203198200a331306d01ce000927c01acf0000019af23bd9c01bcf0000019af23bd9c11c8400",
        "a16401a8747261696c696e6702cd01f403cf0000019af232b5e81da6656d61696c731ea874656e61",
        "6e742d331fccfa20cf0000019af232b20021cf0000019af232b20422cf0000019af232b20123cf00",
        "00019af232b205248300d92034626639326633353737623334646136613363653932396430653065",
        "3437333601b03030663036376161306261393032623702c2",
    );

    #[test]
    fn a_record_written_when_fields_were_first_numbered_still_reads_back() {
        let record = hex::decode(FIRST_WRITTEN).expect("hex");
        let now = || hex::encode(numbered(&every_first_field_set()));
        let back: Run = rmp_serde::from_slice(&record)
            .unwrap_or_else(|e| panic!("{e}; written now: {}", now()));
        assert_eq!(back, every_first_field_set(), "written now: {}", now());
        assert_eq!(now(), FIRST_WRITTEN);
    }

    /// Fields added to a run's record since [`FIRST_WRITTEN`] follow its
    /// fields, with the numbers after theirs: `journal` is field 37.
    #[test]
    fn fields_added_since_come_after_the_first_ones() {
        let journal = r#"{"seq":1}"#;
        let mut want = hex::decode(FIRST_WRITTEN).expect("hex");
        // One field more in the map's length (a 16-bit length, 0x25 = 37).
        assert_eq!(want[..3], [0xde, 0x00, 0x25]);
        want[2] = 0x26;
        want.push(37);
        want.push(0xa0 | journal.len() as u8);
        want.extend_from_slice(journal.as_bytes());
        assert_eq!(hex::encode(numbered(&every_field_set())), hex::encode(want));
    }

    #[test]
    fn numbered_and_named_records_of_a_run_read_back_alike() {
        let run = every_field_set();
        let named = rmp_serde::to_vec_named(&run).expect("encodes");
        let numbered = numbered(&run);
        let from_named: Run = rmp_serde::from_slice(&named).expect("reads back");
        let from_numbered: Run = rmp_serde::from_slice(&numbered).expect("reads back");
        assert_eq!(from_named, from_numbered);
        assert!(
            numbered.len() * 10 < named.len() * 6,
            "{} bytes numbered, {} named",
            numbered.len(),
            named.len()
        );
    }

    #[test]
    fn sequences_and_maps_of_a_length_not_known_first_are_counted() {
        struct Odd;
        impl Serialize for Odd {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("odd", &(1..8).filter(|n| n % 2 == 1).collect::<Vec<_>>())?;
                map.serialize_entry("evens", &Evens)?;
                map.end()
            }
        }
        struct Evens;
        impl Serialize for Evens {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq((1..8).filter(|n| n % 2 == 0))
            }
        }
        let mut out = Vec::new();
        encode_into(&mut out, &Odd).expect("encodes");
        let back: std::collections::BTreeMap<String, Vec<u32>> =
            rmp_serde::from_slice(&out).expect("reads back");
        assert_eq!(back["odd"], vec![1, 3, 5, 7]);
        assert_eq!(back["evens"], vec![2, 4, 6]);
    }
}
