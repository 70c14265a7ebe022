//! Kiln example: `onboarding`, a drip campaign as one durable function.
//!
//! Welcome the user, wait a day, send tips, wait until the offer date, send
//! the offer. Each wait suspends the run (no memory, no slot), and a crash
//! or deploy in between changes nothing: the run resumes at the next step
//! and never sends a message twice. The day can be shortened through the
//! payload to watch it run:
//!
//! ```text
//! kiln trigger onboarding --payload '{"email":"ada@example.com","name":"Ada","day_ms":5000}' --wait
//! ```

use kiln_sdk::{Context, TaskError, task, wait};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::{Duration, UNIX_EPOCH};

/// A new user.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct Signup {
    /// Where to write.
    #[schemars(email)]
    pub email: String,
    /// What to call them.
    pub name: String,
    /// How long "a day" is, in milliseconds (a real day by default).
    #[serde(default = "a_day")]
    pub day_ms: u64,
    /// When to send the offer, in milliseconds since the epoch (three days
    /// after the welcome by default).
    #[serde(default)]
    pub offer_at_ms: Option<u64>,
}

fn a_day() -> u64 {
    86_400_000
}

/// One message sent.
#[derive(Debug, Serialize)]
pub struct Sent {
    /// `welcome`, `tips` or `offer`.
    pub message: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// What the campaign sent.
#[derive(Debug, Serialize)]
pub struct Journey {
    /// To whom.
    pub email: String,
    /// The messages, in order.
    pub sent: Vec<Sent>,
}

fn send(ctx: &Context, email: &str, message: &str, text: &str) -> Sent {
    // A real task would call an email API here (a durable fetch, once Kiln
    // has one); the log line stands in for it.
    ctx.log.info(
        "sent",
        &[("to", &email), ("message", &message), ("text", &text)],
    );
    Sent {
        message: message.into(),
        at_ms: ctx.now_ms(),
    }
}

/// Welcome, wait a day, tips, wait until the offer date, offer.
#[task(id = "onboarding")]
pub async fn onboarding(payload: Signup, ctx: &Context) -> Result<Journey, TaskError> {
    let mut sent = Vec::new();
    let welcome = send(
        ctx,
        &payload.email,
        "welcome",
        &format!("Welcome aboard, {}!", payload.name),
    );
    let offer_at = payload
        .offer_at_ms
        .unwrap_or(welcome.at_ms + 3 * payload.day_ms);
    sent.push(welcome);

    wait::for_duration(Duration::from_millis(payload.day_ms)).await?;
    sent.push(send(
        ctx,
        &payload.email,
        "tips",
        "Three things to try this week",
    ));

    wait::until(UNIX_EPOCH + Duration::from_millis(offer_at)).await?;
    sent.push(send(
        ctx,
        &payload.email,
        "offer",
        "20% off your first month",
    ));

    Ok(Journey {
        email: payload.email,
        sent,
    })
}

kiln_sdk::bundle!(onboarding);
