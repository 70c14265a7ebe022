//! Budgets: how much of the server one run may use.
//!
//! Everything a run asks of the host is journaled, so the journal is where
//! its use is counted: entries and bytes, child runs, batches, wait tokens
//! and fetches, from the journal's records when a slice starts and from
//! each entry as it is appended. A host call past a budget is refused with
//! an error that names the limit (a child run, a batch, a token), or ends
//! the attempt without retry (the journal itself, a step's waits, fetches),
//! because a retry would only spend the same budget again.
//!
//! Each budget has a server default and is set with `kiln serve --limit
//! NAME=VALUE`.

use kiln_types::{HostCall, JournalEntry, JournalRecord, WaitOn};
use std::sync::atomic::{AtomicU64, Ordering};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The budgets every run of a server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Journal entries per run, all attempts together.
    pub journal_entries: u64,
    /// Journal bytes per run, all attempts together.
    pub journal_bytes: u64,
    /// Child runs a run may trigger.
    pub children: u64,
    /// Batches a run may trigger.
    pub batches: u64,
    /// Wait tokens a run may create.
    pub tokens: u64,
    /// Fetches a run may make.
    pub fetches: u64,
    /// The largest fetch request (URL, headers and body), in bytes.
    pub fetch_request_bytes: u64,
    /// Waits one step may start at once.
    pub waits_per_step: u64,
    /// The largest error message, and the largest stack trace, a run's
    /// error keeps; the rest is cut.
    pub error_bytes: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            journal_entries: 100_000,
            journal_bytes: 256 * MIB,
            children: 10_000,
            batches: 1_000,
            tokens: 10_000,
            fetches: 10_000,
            fetch_request_bytes: 10 * MIB,
            waits_per_step: 1_000,
            error_bytes: 64 * KIB,
        }
    }
}

/// The names `--limit` takes, with what each sets.
pub const BUDGET_NAMES: &[(&str, &str)] = &[
    ("journal-entries", "journal entries per run"),
    ("journal-bytes", "journal bytes per run"),
    ("children", "child runs per run"),
    ("batches", "batches per run"),
    ("tokens", "wait tokens per run"),
    ("fetches", "fetches per run"),
    ("fetch-request-bytes", "bytes of one fetch request"),
    ("waits-per-step", "waits one step starts"),
    ("error-bytes", "bytes of an error's message or stack"),
];

impl Budgets {
    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "journal-entries" => &mut self.journal_entries,
            "journal-bytes" => &mut self.journal_bytes,
            "children" => &mut self.children,
            "batches" => &mut self.batches,
            "tokens" => &mut self.tokens,
            "fetches" => &mut self.fetches,
            "fetch-request-bytes" => &mut self.fetch_request_bytes,
            "waits-per-step" => &mut self.waits_per_step,
            "error-bytes" => &mut self.error_bytes,
            _ => return None,
        })
    }

    /// Sets one budget from `NAME=VALUE` (`journal-bytes=64MiB`,
    /// `children=500`); sizes take `KiB`, `MiB` and `GiB`.
    pub fn set(&mut self, setting: &str) -> Result<(), String> {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("`{setting}` is not NAME=VALUE"))?;
        let name = name.trim();
        let value = parse_amount(value.trim())
            .ok_or_else(|| format!("`{value}` is not a number (sizes take KiB, MiB or GiB)"))?;
        if value == 0 {
            return Err(format!("the limit {name} must be at least 1"));
        }
        let known = || {
            BUDGET_NAMES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let slot = self
            .slot(name)
            .ok_or_else(|| format!("there is no limit `{name}`; the limits are {}", known()))?;
        *slot = value;
        Ok(())
    }
}

/// Parses a size (`512MiB`, `8GiB`, `1048576`) into bytes.
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    parse_amount(text.trim())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}` is not a size like 512MiB or 8GiB"))
}

fn parse_amount(text: &str) -> Option<u64> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '_') {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let number: u64 = digits.replace('_', "").parse().ok()?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => KIB,
        "MiB" | "M" | "MB" => MIB,
        "GiB" | "G" | "GB" => GIB,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// The message of a budget gone past: what, how much, and the setting.
pub(crate) fn exceeded(what: &str, used: u64, limit: u64, name: &str) -> String {
    format!(
        "the run went past its limit of {limit} {what} ({used}); \
         the server sets it with `kiln serve --limit {name}=N`"
    )
}

/// `Err` naming the limit once a journal of `entries` entries and `bytes`
/// bytes is past `max_entries` or `max_bytes`.
pub(crate) fn journal_within(
    entries: u64,
    bytes: u64,
    max_entries: u64,
    max_bytes: u64,
) -> Result<(), String> {
    if entries >= max_entries {
        return Err(exceeded(
            "journal entries",
            entries,
            max_entries,
            "journal-entries",
        ));
    }
    if bytes >= max_bytes {
        return Err(exceeded("journal bytes", bytes, max_bytes, "journal-bytes"));
    }
    Ok(())
}

/// What one run has used of its budgets, counted from its journal.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    entries: AtomicU64,
    bytes: AtomicU64,
    children: AtomicU64,
    batches: AtomicU64,
    tokens: AtomicU64,
    fetches: AtomicU64,
}

impl Usage {
    /// The use a run's journal shows: its records, `bytes` as stored.
    pub(crate) fn of_journal(records: &[JournalRecord], bytes: u64) -> Self {
        let usage = Usage::default();
        for record in records {
            usage.count(&record.entry, 0);
        }
        usage.bytes.store(bytes, Ordering::Relaxed);
        usage
    }

    /// Counts one appended entry of `bytes` bytes.
    pub(crate) fn count(&self, entry: &JournalEntry, bytes: u64) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        match entry {
            JournalEntry::HostCall(HostCall::Trigger {
                result: Some(_), ..
            }) => {
                self.children.fetch_add(1, Ordering::Relaxed);
            }
            JournalEntry::HostCall(HostCall::BatchTrigger { runs, .. }) if !runs.is_empty() => {
                self.children
                    .fetch_add(runs.len() as u64, Ordering::Relaxed);
                self.batches.fetch_add(1, Ordering::Relaxed);
            }
            JournalEntry::HostCall(HostCall::CreateToken {
                result: Some(_), ..
            }) => {
                self.tokens.fetch_add(1, Ordering::Relaxed);
            }
            JournalEntry::Waits { waits } => {
                let fetches = waits
                    .iter()
                    .filter(|w| matches!(w.on, WaitOn::Fetch { .. }))
                    .count();
                self.fetches.fetch_add(fetches as u64, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// `Err` naming the limit once the journal is past a budget.
    pub(crate) fn check_journal(&self, budgets: &Budgets) -> Result<(), String> {
        journal_within(
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            budgets.journal_entries,
            budgets.journal_bytes,
        )
    }

    /// The entries and bytes of the run's journal.
    pub(crate) fn journal(&self) -> (u64, u64) {
        (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// `Err` naming the limit if `children` more child runs (in a batch
    /// when `batch`) would go past a budget.
    pub(crate) fn check_children(
        &self,
        budgets: &Budgets,
        children: u64,
        batch: bool,
    ) -> Result<(), String> {
        let after = self.children.load(Ordering::Relaxed) + children;
        if after > budgets.children {
            return Err(exceeded("child runs", after, budgets.children, "children"));
        }
        let batches = self.batches.load(Ordering::Relaxed) + 1;
        if batch && batches > budgets.batches {
            return Err(exceeded("batches", batches, budgets.batches, "batches"));
        }
        Ok(())
    }

    /// `Err` naming the limit if one more wait token would go past it.
    pub(crate) fn check_token(&self, budgets: &Budgets) -> Result<(), String> {
        let after = self.tokens.load(Ordering::Relaxed) + 1;
        if after > budgets.tokens {
            return Err(exceeded("wait tokens", after, budgets.tokens, "tokens"));
        }
        Ok(())
    }

    /// `Err` naming the limit if `fetches` more fetches would go past it.
    pub(crate) fn check_fetches(&self, budgets: &Budgets, fetches: u64) -> Result<(), String> {
        let after = self.fetches.load(Ordering::Relaxed) + fetches;
        if after > budgets.fetches {
            return Err(exceeded("fetches", after, budgets.fetches, "fetches"));
        }
        Ok(())
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, saying so.
pub(crate) fn cut(text: String, max: u64) -> String {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if text.len() <= max {
        return text;
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let mut kept = text;
    let total = kept.len();
    kept.truncate(at);
    kept.push_str(&format!(
        "… [cut at {max} of {total} bytes: the limit `error-bytes`]"
    ));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_types::{RunId, TokenId, WaitRecord};

    #[test]
    fn settings_parse_with_units_and_name_the_known_limits() {
        let mut budgets = Budgets::default();
        budgets.set("journal-bytes=64MiB").unwrap();
        budgets.set("children = 5").unwrap();
        budgets.set("journal-entries=1_000").unwrap();
        assert_eq!(budgets.journal_bytes, 64 * MIB);
        assert_eq!(budgets.children, 5);
        assert_eq!(budgets.journal_entries, 1_000);
        let unknown = budgets.set("childs=5").unwrap_err();
        assert!(unknown.contains("children"), "{unknown}");
        assert!(budgets.set("children").is_err());
        assert!(budgets.set("children=five").is_err());
        assert!(budgets.set("children=0").is_err());
        assert!(budgets.set("journal-bytes=1TiB").is_err());
        assert!(
            budgets
                .set(&format!("journal-bytes={}GiB", u64::MAX))
                .is_err()
        );
    }

    #[test]
    fn usage_counts_what_the_journal_shows() {
        let run = RunId::generate(1);
        let entries = vec![
            JournalEntry::HostCall(HostCall::Trigger {
                task: "t".into(),
                result: Some(run.clone()),
                error: None,
            }),
            JournalEntry::HostCall(HostCall::Trigger {
                task: "t".into(),
                result: None,
                error: Some("refused".into()),
            }),
            JournalEntry::HostCall(HostCall::BatchTrigger {
                items: 2,
                batch: None,
                runs: vec![run.clone(), run.clone()],
                error: None,
            }),
            JournalEntry::HostCall(HostCall::CreateToken {
                result: Some(TokenId::generate(1)),
                url: None,
                error: None,
            }),
            JournalEntry::Waits {
                waits: vec![WaitRecord {
                    id: 1,
                    on: WaitOn::Run { run_id: run },
                }],
            },
        ];
        let records: Vec<JournalRecord> = entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| JournalRecord {
                seq: i as u64 + 1,
                at: kiln_types::Timestamp(0),
                entry,
            })
            .collect();
        let usage = Usage::of_journal(&records, 900);
        let budgets = Budgets {
            journal_entries: 6,
            journal_bytes: 1_000,
            children: 4,
            batches: 1,
            tokens: 1,
            ..Budgets::default()
        };
        assert!(usage.check_journal(&budgets).is_ok());
        assert!(usage.check_children(&budgets, 1, false).is_ok());
        let over = usage.check_children(&budgets, 2, false).unwrap_err();
        assert!(over.contains("limit of 4 child runs"), "{over}");
        assert!(over.contains("--limit children="), "{over}");
        assert!(usage.check_children(&budgets, 1, true).is_err());
        assert!(usage.check_token(&budgets).is_err());
        usage.count(
            &JournalEntry::AttemptStarted {
                attempt: 2,
                started: None,
            },
            100,
        );
        let full = usage.check_journal(&budgets).unwrap_err();
        assert!(full.contains("journal entries"), "{full}");
        // Bytes count on their own.
        let roomy = Budgets {
            journal_entries: 1_000,
            journal_bytes: 1_000,
            ..Budgets::default()
        };
        let bytes = usage.check_journal(&roomy).unwrap_err();
        assert!(bytes.contains("limit of 1000 journal bytes"), "{bytes}");
        assert!(bytes.contains("--limit journal-bytes="), "{bytes}");
    }

    #[test]
    fn cut_keeps_whole_characters_and_says_where() {
        assert_eq!(cut("short".into(), 10), "short");
        let long = "é".repeat(100);
        let kept = cut(long, 11);
        assert!(kept.starts_with(&"é".repeat(5)), "{kept}");
        assert!(kept.contains("cut at 11 of 200 bytes"), "{kept}");
    }
}
