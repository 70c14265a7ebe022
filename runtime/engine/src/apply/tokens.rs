//! Wait tokens: completed by a backend or timed out by a durable timer,
//! whichever is committed first; the other then changes nothing.

use super::{Applied, EngineError, Outcome};
use crate::{Command, View};
use kiln_types::{Arrival, Timestamp, TokenId, TokenStatus, WaitOn, WaitToken, WakeValue};

/// The wake of a token that timed out.
pub fn timed_out_value(id: &TokenId) -> WakeValue {
    WakeValue::Token {
        data: None,
        error: Some(format!("wait token {id} timed out")),
    }
}

fn completed_value(token: &WaitToken) -> WakeValue {
    WakeValue::Token {
        data: Some(token.output.clone().unwrap_or_else(|| "null".into())),
        error: None,
    }
}

/// What a token wait wakes with now, if the token is settled. A token whose
/// timeout has passed but that is still stored `WAITING` is timed out here,
/// by a write among `commands`.
pub(super) fn settled(
    view: &impl View,
    id: &TokenId,
    now: Timestamp,
    commands: &mut Vec<Command>,
) -> Result<Option<WakeValue>, EngineError> {
    let Some(token) = view.token(id)? else {
        return Ok(Some(WakeValue::Token {
            data: None,
            error: Some(format!("wait token {id} does not exist")),
        }));
    };
    Ok(match token.status {
        TokenStatus::Completed => Some(completed_value(&token)),
        TokenStatus::TimedOut => Some(timed_out_value(id)),
        TokenStatus::Waiting if token.status_at(now) == TokenStatus::TimedOut => {
            time_out(token, now, commands)
        }
        TokenStatus::Waiting => None,
    })
}

/// Times out a token still `WAITING` (returning the wake it brings); a
/// token already settled stays as it is.
pub(super) fn time_out(
    mut token: WaitToken,
    _now: Timestamp,
    commands: &mut Vec<Command>,
) -> Option<WakeValue> {
    if token.status != TokenStatus::Waiting {
        return None;
    }
    token.status = TokenStatus::TimedOut;
    let value = timed_out_value(&token.id);
    commands.push(Command::PutToken(token));
    Some(value)
}

/// Completes a token: its data goes to the inbox of every run suspended on it
/// in the same commit. Completing a completed token changes nothing; a
/// token past its timeout is timed out instead (and that is committed).
pub(super) fn complete(
    view: &impl View,
    id: &TokenId,
    data: String,
    now: Timestamp,
) -> Result<Applied, EngineError> {
    let mut token = view
        .token(id)?
        .ok_or_else(|| EngineError::TokenNotFound(id.clone()))?;
    let mut commands = Vec::new();
    let (value, outcome) = match token.status {
        TokenStatus::Completed => return Ok(Applied::new(commands, Outcome::Token(token))),
        TokenStatus::TimedOut => return Ok(Applied::new(commands, Outcome::TokenTimedOut(token))),
        TokenStatus::Waiting if token.status_at(now) == TokenStatus::TimedOut => {
            let value = time_out(token.clone(), now, &mut commands);
            token.status = TokenStatus::TimedOut;
            (value, Outcome::TokenTimedOut(token))
        }
        TokenStatus::Waiting => {
            token.status = TokenStatus::Completed;
            token.output = Some(data);
            token.completed_at = Some(now);
            commands.push(Command::PutToken(token.clone()));
            (Some(completed_value(&token)), Outcome::Token(token))
        }
    };
    if let Some(value) = value {
        for waiter in view.token_waiters(id)? {
            let armed = view.waits(&waiter.parent)?.iter().any(|w| {
                w.id == waiter.wait_id
                    && matches!(&w.on, WaitOn::Token { token_id, .. } if token_id == id)
            });
            if !armed {
                continue;
            }
            commands.push(Command::PutArrival {
                run: waiter.parent.clone(),
                arrival: Arrival {
                    wait_id: waiter.wait_id,
                    part: 0,
                    value: value.clone(),
                },
            });
            commands.push(Command::Deliver { run: waiter.parent });
        }
    }
    Ok(Applied::new(commands, outcome))
}
