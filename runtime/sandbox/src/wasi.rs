//! WASI 0.2 for guests that need it (a JavaScript engine, say), kept
//! deterministic so that a run can be replayed from its journal.
//!
//! A bundle built with kiln-sdk imports only Kiln's world. A bundle built
//! from TypeScript embeds SpiderMonkey, which also imports WASI 0.2: clocks,
//! random, stdio, io streams and a filesystem. Kiln gives it those through
//! `wasmtime-wasi`, with everything that is not deterministic routed through
//! the journal:
//!
//! - wall and monotonic clock reads, and random bytes (secure, insecure and
//!   the insecure seed), are journaled as they are made and answered from
//!   the journal on replay, like `now-ms` and `random-bytes`;
//! - stdout and stderr become the attempt's log lines (`info` and `error`);
//! - there are no environment variables, arguments or preopened
//!   directories: the run's context comes through `start`, variables
//!   through `env-var`;
//! - sockets and `wasi:http` are refused at deploy (a task fetches through
//!   Kiln's durable fetch).
//!
//! Such a guest's resource handles live in its linear memory and point into
//! a host table a new instance does not have, so it is never restored from a
//! memory snapshot: at each wait its instance is dropped, and it resumes by
//! running again from the start with every host call answered from the
//! journal until the journal runs out.

use crate::host::HostState;
use bytes::Bytes;
use kiln_types::{HostCall, JournalEntry};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The WASI interfaces a bundle may import (any 0.2 version).
const ALLOWED: [&str; 5] = [
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
];

/// Clock reads kept before they are journaled, at most.
const MAX_PENDING_CLOCKS: usize = 1024;

/// Output a guest may have written and not yet turned into log lines (at
/// its next `log` call or the end of the guest call), before the rest is
/// dropped; the log caps keep far less than this anyway.
const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// Whether an import is one of WASI's.
pub(crate) fn is_wasi(name: &str) -> bool {
    name.starts_with("wasi:")
}

/// `Ok` for a WASI import Kiln provides; `Err` with the reason otherwise.
pub(crate) fn check_import(name: &str) -> Result<(), String> {
    let version_ok = name
        .rsplit_once('@')
        .is_some_and(|(_, version)| version.starts_with("0.2."));
    if ALLOWED.iter().any(|p| name.starts_with(p)) && version_ok {
        return Ok(());
    }
    let why = if name.starts_with("wasi:http/") {
        "outgoing HTTP goes through Kiln's durable fetch (build TypeScript tasks with `kiln build`, which leaves `fetch` to Kiln)"
    } else if name.starts_with("wasi:sockets/") {
        "tasks have no sockets"
    } else {
        "Kiln provides WASI 0.2's io, clocks, random, cli and filesystem interfaces only"
    };
    Err(why.to_string())
}

/// Links WASI 0.2 into `linker`, with Kiln's journaled clocks and random
/// in place of `wasmtime-wasi`'s.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    wall_clock::add_to_linker::<HostState, HasSelf<HostState>>(linker, same)?;
    monotonic_clock::add_to_linker::<HostState, HasSelf<HostState>>(linker, same)?;
    random::add_to_linker::<HostState, HasSelf<HostState>>(linker, same)?;
    insecure::add_to_linker::<HostState, HasSelf<HostState>>(linker, same)?;
    insecure_seed::add_to_linker::<HostState, HasSelf<HostState>>(linker, same)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The store's state is what the journaled WASI imports work on.
fn same(state: &mut HostState) -> &mut HostState {
    state
}

/// An attempt's WASI state, made at its first WASI call.
pub(crate) struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    stdout: Capture,
    stderr: Capture,
    /// The last monotonic reading the guest saw (journaled or live).
    monotonic_last: u64,
    /// Added to this process's monotonic clock so that live readings never
    /// go below the replayed ones.
    monotonic_offset: u64,
    /// When the guest call in progress runs out of execution time (what a
    /// guest blocked on a timer watches).
    pub(crate) deadline: ExecutionDeadline,
}

impl WasiState {
    fn new() -> Self {
        let stdout = Capture::default();
        let stderr = Capture::default();
        let ctx = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        WasiState {
            ctx,
            table: ResourceTable::new(),
            stdout,
            stderr,
            monotonic_last: 0,
            monotonic_offset: 0,
            deadline: ExecutionDeadline::default(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi();
        WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut wasi.table,
        }
    }
}

/// Nanoseconds on this process's monotonic clock.
fn process_monotonic() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl HostState {
    /// The attempt's WASI state, made at its first WASI call (a bundle
    /// built with kiln-sdk never pays for it).
    fn wasi(&mut self) -> &mut WasiState {
        if self.wasi.is_none() {
            let state = WasiState::new();
            if self.clock.call_started.is_some() {
                // Made in the middle of a guest call: that call's deadline.
                state.deadline.start(self.clock.execution_left());
            }
            self.wasi = Some(Box::new(state));
        }
        self.wasi.get_or_insert_with(|| Box::new(WasiState::new()))
    }

    /// A clock reading: from the journal while replaying, else `live`,
    /// kept with the reads since the last journaled call (see
    /// [`HostState::flush_clocks`]).
    fn clock_read(
        &mut self,
        monotonic: bool,
        live: impl FnOnce(&mut Self) -> u64,
    ) -> wasmtime::Result<u64> {
        loop {
            match self.replay.front() {
                Some(JournalEntry::HostCall(HostCall::Clocks { reads })) => {
                    let Some(&(was_monotonic, result)) = reads.get(self.clocks_replayed) else {
                        // This entry is used up: on to the next.
                        self.replay.pop_front();
                        self.clocks_replayed = 0;
                        continue;
                    };
                    if was_monotonic != monotonic {
                        let message = format!(
                            "non-determinism: on replay the task read the {} clock where its journal has a read of the {} clock",
                            clock_name(monotonic),
                            clock_name(was_monotonic)
                        );
                        self.nondeterminism = Some(message.clone());
                        wasmtime::bail!(message);
                    }
                    self.clocks_replayed += 1;
                    if self.clocks_replayed == reads.len() {
                        self.replay.pop_front();
                        self.clocks_replayed = 0;
                    }
                    return Ok(result);
                }
                Some(_) => {
                    // Not a clock read where the journal has one: the
                    // non-determinism error says what it has instead.
                    self.replayed(
                        || format!("{}-clock.now()", clock_name(monotonic)),
                        |_| false,
                    )?;
                    wasmtime::bail!("the journal has no clock read here");
                }
                None => break,
            }
        }
        if let Err(message) = self.journal.budget() {
            self.limit = Some(message.clone());
            wasmtime::bail!(message);
        }
        let result = live(self);
        self.pending_clocks.push((monotonic, result));
        if self.pending_clocks.len() >= MAX_PENDING_CLOCKS {
            // A guest that spins on a clock: its reads are journaled (and
            // counted against the run's budget) a thousand at a time.
            self.flush_clocks();
        }
        Ok(result)
    }

    /// `len` random bytes, journaled as `random-bytes` is.
    fn random_read(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        let max = crate::host::MAX_RANDOM_BYTES;
        if len > u64::from(max) {
            wasmtime::bail!("the guest asked for {len} random bytes, over the limit of {max}");
        }
        self.random(len as u32, "wasi random")
    }

    fn random_u64(&mut self) -> wasmtime::Result<u64> {
        let bytes = self.random_read(8)?;
        let word: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| wasmtime::format_err!("the journal's random bytes are too few"))?;
        Ok(u64::from_le_bytes(word))
    }

    /// Journals the clock reads made since the last journaled call as one
    /// entry. Called before every other journaled call and at the end of
    /// each guest call, so the journal keeps the order they were made in.
    pub(crate) fn flush_clocks(&mut self) {
        if !self.pending_clocks.is_empty() {
            let reads = std::mem::take(&mut self.pending_clocks);
            self.journal.record(HostCall::Clocks { reads });
        }
    }

    /// Turns what the guest wrote to stdout and stderr into log lines
    /// (`info` and `error`), in the order of the streams' lines. With
    /// `all`, a last line without a newline is taken too.
    pub(crate) fn drain_output(&mut self, all: bool) {
        let Some(wasi) = self.wasi.as_mut() else {
            return;
        };
        let out = wasi.stdout.take_lines(all);
        let err = wasi.stderr.take_lines(all);
        for (level, lines) in [("info", out), ("error", err)] {
            for line in lines {
                let message = self.redactor.redact_owned(line);
                self.push_log(
                    level,
                    crate::host::truncate(message, crate::host::MAX_LOG_MESSAGE),
                    Vec::new(),
                );
            }
        }
    }
}

fn clock_name(monotonic: bool) -> &'static str {
    if monotonic { "monotonic" } else { "wall" }
}

fn datetime(nanos: u64) -> wall_clock::Datetime {
    wall_clock::Datetime {
        seconds: nanos / 1_000_000_000,
        nanoseconds: (nanos % 1_000_000_000) as u32,
    }
}

impl wall_clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.stats.clock += 1;
        let nanos = self.clock_read(false, |_| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })?;
        Ok(datetime(nanos))
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        Ok(datetime(1_000))
    }
}

impl monotonic_clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        self.stats.clock += 1;
        let now = self.clock_read(true, |state| {
            let wasi = state.wasi();
            let mut now = process_monotonic().saturating_add(wasi.monotonic_offset);
            if now < wasi.monotonic_last {
                // The first live reading after a replay, in a process whose
                // clock started later: keep time going forward from there.
                wasi.monotonic_offset += wasi.monotonic_last - now;
                now = wasi.monotonic_last;
            }
            now
        })?;
        let wasi = self.wasi();
        wasi.monotonic_last = wasi.monotonic_last.max(now);
        Ok(now)
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(1_000)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        // Measured from the last reading the guest saw, which is the time
        // it computed `when` from.
        let after = when.saturating_sub(self.wasi().monotonic_last);
        self.subscribe_duration(after)
    }

    fn subscribe_duration(&mut self, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = tokio::time::Instant::now();
        // The guest may block in `poll` on this: it is ready early when the
        // attempt is canceled or its execution time runs out, so that the
        // next epoch tick can end the attempt.
        let deadline = Deadline {
            at: now.checked_add(std::time::Duration::from_nanos(nanos)),
            limit: self.wasi().deadline.clone(),
            canceled: self.canceled.clone(),
            yielded: false,
        };
        let table = &mut WasiView::ctx(self).table;
        let resource = table.push(deadline)?;
        wasmtime_wasi::p2::subscribe(table, resource)
    }
}

impl random::Host for HostState {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.stats.random += 1;
        self.random_read(len)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.stats.random += 1;
        self.random_u64()
    }
}

impl insecure::Host for HostState {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.stats.random += 1;
        self.random_read(len)
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.stats.random += 1;
        self.random_u64()
    }
}

impl insecure_seed::Host for HostState {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        self.stats.random += 1;
        Ok((self.random_u64()?, self.random_u64()?))
    }
}

/// When the guest call in progress runs out of execution time: set at the
/// start of each guest call from the attempt's `maxDuration` and what it
/// used, moved by each CPU-share pause, and cleared between calls (time
/// between calls is no execution time). Shared with the timers a guest
/// blocks on.
#[derive(Clone)]
pub(crate) struct ExecutionDeadline(Arc<std::sync::atomic::AtomicU64>);

impl Default for ExecutionDeadline {
    fn default() -> Self {
        ExecutionDeadline(Arc::new(std::sync::atomic::AtomicU64::new(NO_DEADLINE)))
    }
}

/// No execution deadline (nanoseconds on [`process_monotonic`]).
const NO_DEADLINE: u64 = u64::MAX;

impl ExecutionDeadline {
    /// A guest call begins with `left` execution time (`None`: no limit).
    pub(crate) fn start(&self, left: Option<std::time::Duration>) {
        let at = left.map_or(NO_DEADLINE, |left| {
            process_monotonic().saturating_add(left.as_nanos().min(u128::from(u64::MAX)) as u64)
        });
        self.0.store(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// The guest call ended.
    pub(crate) fn stop(&self) {
        self.0
            .store(NO_DEADLINE, std::sync::atomic::Ordering::Relaxed);
    }

    /// A CPU-share pause of `by` (not execution time) moves the deadline.
    pub(crate) fn extend(&self, by: std::time::Duration) {
        let by = by.as_nanos().min(u128::from(u64::MAX)) as u64;
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |at| (at != NO_DEADLINE).then(|| at.saturating_add(by)),
        );
    }

    /// How long until the deadline (`None`: none set).
    fn left(&self) -> Option<std::time::Duration> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            NO_DEADLINE => None,
            at => Some(std::time::Duration::from_nanos(
                at.saturating_sub(process_monotonic()),
            )),
        }
    }
}

/// A monotonic-clock pollable that is also ready once the attempt is
/// canceled or out of execution time.
struct Deadline {
    /// When it is due (`None`: too far to say, never).
    at: Option<tokio::time::Instant>,
    /// When the guest call in progress runs out of execution time.
    limit: ExecutionDeadline,
    canceled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether a deadline already past yielded to the runtime once.
    yielded: bool,
}

/// How often a blocked guest checks for cancellation.
const CANCEL_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

#[wasmtime_wasi::async_trait]
impl Pollable for Deadline {
    async fn ready(&mut self) {
        loop {
            let now = tokio::time::Instant::now();
            let due = self.at.is_some_and(|at| at <= now);
            // Read afresh each time: the deadline moves with pauses and
            // calls.
            let limit = self.limit.left().map(|left| now + left);
            let over = limit.is_some_and(|limit| limit <= now);
            if due || over || self.canceled.load(std::sync::atomic::Ordering::Relaxed) {
                if !self.yielded {
                    // A guest polling a past deadline in a loop must not
                    // starve the runtime's other tasks.
                    self.yielded = true;
                    tokio::task::yield_now().await;
                }
                return;
            }
            let mut until = now + CANCEL_CHECK;
            for bound in [self.at, limit].into_iter().flatten() {
                until = until.min(bound);
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

/// A guest's stdout or stderr, kept until it is turned into log lines.
#[derive(Clone, Default)]
struct Capture {
    pending: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    fn push(&self, bytes: &[u8]) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_PENDING_OUTPUT.saturating_sub(pending.len());
        let taken = bytes.len().min(room);
        pending.extend_from_slice(&bytes[..taken]);
        // Past the limit the rest is dropped, not refused: a guest that
        // writes without newlines must not stall on its own output.
        bytes.len()
    }

    /// The complete lines written so far (and, with `all`, the rest).
    fn take_lines(&self, all: bool) -> Vec<String> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let end = if all {
            pending.len()
        } else {
            match pending.iter().rposition(|&b| b == b'\n') {
                Some(last) => last + 1,
                None => return Vec::new(),
            }
        };
        let taken: Vec<u8> = pending.drain(..end).collect();
        String::from_utf8_lossy(&taken)
            .split_terminator('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line).to_string())
            .collect()
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(self.push(buf)))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Capture, ExecutionDeadline, check_import};
    use std::time::Duration;

    #[test]
    fn the_execution_deadline_moves_with_pauses_and_is_gone_between_calls() {
        let deadline = ExecutionDeadline::default();
        assert_eq!(deadline.left(), None, "no call in progress");
        deadline.start(Some(Duration::from_secs(10)));
        let left = deadline.left().expect("a deadline");
        assert!(
            left > Duration::from_secs(9) && left <= Duration::from_secs(10),
            "{left:?}"
        );
        deadline.extend(Duration::from_secs(5));
        let left = deadline.left().expect("a deadline");
        assert!(
            left > Duration::from_secs(14),
            "a pause is no execution time: {left:?}"
        );
        // Between calls (a fetch, a warm wait) no execution time passes.
        deadline.stop();
        assert_eq!(deadline.left(), None);
        deadline.extend(Duration::from_secs(1));
        assert_eq!(deadline.left(), None);
        deadline.start(None);
        assert_eq!(deadline.left(), None, "no maxDuration");
    }

    #[test]
    fn output_becomes_lines_and_a_partial_line_waits_for_its_end() {
        let out = Capture::default();
        out.push(b"one\ntwo\r\nthr");
        assert_eq!(out.take_lines(false), vec!["one", "two"]);
        out.push(b"ee\n");
        assert_eq!(out.take_lines(false), vec!["three"]);
        out.push(b"tail");
        assert!(out.take_lines(false).is_empty());
        assert_eq!(out.take_lines(true), vec!["tail"]);
    }

    #[test]
    fn only_the_interfaces_kiln_provides_are_allowed() {
        for ok in [
            "wasi:io/poll@0.2.12",
            "wasi:clocks/monotonic-clock@0.2.12",
            "wasi:random/random@0.2.3",
            "wasi:cli/stdout@0.2.12",
            "wasi:filesystem/preopens@0.2.12",
        ] {
            assert_eq!(check_import(ok), Ok(()), "{ok}");
        }
        for refused in [
            "wasi:http/outgoing-handler@0.2.10",
            "wasi:sockets/tcp@0.2.12",
            "wasi:io/poll@0.3.0",
            "wasi:keyvalue/store@0.2.0",
        ] {
            assert!(check_import(refused).is_err(), "{refused}");
        }
    }
}
