//! A schema task in the style of Trigger.dev's `schemaTask`: the payload type
//! derives `JsonSchema`, so Kiln validates every payload when the run is
//! triggered and rejects a bad one with the schema's complaint, before any
//! guest code runs.
//!
//! Exports are heavy on the database, so they run on the `csv-exports`
//! queue: one export at a time per organisation when triggers pass the
//! organisation id as `concurrencyKey`, at most four at once in all, and
//! organisations take turns.

use kiln_sdk::{Context, Queue, TaskError, task};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The export's file format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values (the default).
    #[default]
    Csv,
    /// A JSON array.
    Json,
}

/// What to export. The organisation id carries the tenancy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportRequest {
    /// The organisation whose records to export.
    pub organization_id: uuid::Uuid,
    /// Export records created on or after this calendar date.
    pub since: chrono::NaiveDate,
    /// The file format.
    #[serde(default)]
    pub format: Format,
}

/// The finished export.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    /// The organisation exported.
    pub organization_id: String,
    /// The format used.
    pub format: Format,
    /// How many rows the export holds.
    pub rows: usize,
    /// The exported file's content.
    pub content: String,
}

/// One export per organisation at a time, four in all.
pub const EXPORTS: Queue = Queue::new("csv-exports")
    .concurrency_limit(1)
    .total_concurrency_limit(4);

/// Exports an organisation's records since a date.
#[task(id = "export-csv", queue = EXPORTS, retry(max_attempts = 2))]
pub async fn export_csv(payload: ExportRequest, ctx: &Context) -> Result<Export, TaskError> {
    let rows: Vec<(String, u32)> = (0..3)
        .map(|i| (payload.since.to_string(), i * 10))
        .collect();
    let content = match payload.format {
        Format::Csv => {
            let mut out = String::from("date,amount\n");
            for (date, amount) in &rows {
                out.push_str(&format!("{date},{amount}\n"));
            }
            out
        }
        Format::Json => serde_json::to_string(
            &rows
                .iter()
                .map(|(date, amount)| serde_json::json!({"date": date, "amount": amount}))
                .collect::<Vec<_>>(),
        )?,
    };
    ctx.log.info(
        "exported",
        &[
            ("organization", &payload.organization_id),
            ("rows", &rows.len()),
        ],
    );
    Ok(Export {
        organization_id: payload.organization_id.to_string(),
        format: payload.format,
        rows: rows.len(),
        content,
    })
}

kiln_sdk::bundle!(export_csv);
