//! Who may call what: the secret key, or a public access token (a JWT)
//! limited to its scopes.
//!
//! A request's bearer is either an environment's secret key, which may call
//! every route of that environment, or a public access token signed with
//! one of the environment's keys, which may call only the routes a frontend
//! needs (reading a run or batch, realtime, triggering a task, completing a
//! wait token) and only for the resources its scopes name. Any other route
//! answers 403 to a public token.
//!
//! Scopes are Trigger.dev's: `action:resource[:id]`, for example
//! `read:runs:run_123`, `read:tags:user-42`, `read:batch:batch_1`,
//! `read:tasks:my-task`, `read:runs` (every run), `read:all`, `admin`,
//! `trigger:tasks:my-task`, `batchTrigger:tasks:my-task`,
//! `write:waitpoints:waitpoint_1`.

use super::{ApiError, AppState};
use crate::environments::{Hub, KeyLookup};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use kiln_types::Run;
use std::sync::Arc;

/// The caller of a request, as the auth middleware found it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The environment the key or token belongs to.
    pub(crate) environment: Arc<str>,
    /// What the caller holds.
    pub(crate) access: Access,
    /// Whether the caller holds the server's own key, which administers
    /// projects and keys.
    pub(crate) admin: bool,
    /// The id of the project key the caller holds, if it holds one.
    pub(crate) key_id: Option<String>,
}

/// What a caller holds.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// The environment's secret key: everything.
    Secret,
    /// A public access token.
    Public(PublicToken),
}

/// A verified public access token.
#[derive(Debug, Clone)]
pub(crate) struct PublicToken {
    /// Its scopes.
    pub(crate) scopes: Vec<String>,
    /// The token itself (a one-time trigger token is used up by it).
    pub(crate) token: Arc<str>,
    /// Whether it triggers once only.
    pub(crate) one_time: bool,
    /// Its expiry, Unix seconds.
    pub(crate) expires_secs: u64,
}

impl Caller {
    /// Whether the caller holds the secret key.
    pub(crate) fn is_secret(&self) -> bool {
        matches!(self.access, Access::Secret)
    }

    /// The public token, if that is what the caller holds.
    pub(crate) fn public(&self) -> Option<&PublicToken> {
        match &self.access {
            Access::Public(token) => Some(token),
            Access::Secret => None,
        }
    }

    /// Whether any of `wanted` (or a scope above them) is granted.
    fn grants(&self, wanted: &[String]) -> bool {
        match &self.access {
            Access::Secret => true,
            Access::Public(token) => token
                .scopes
                .iter()
                .any(|s| s == "admin" || wanted.iter().any(|w| w == s)),
        }
    }

    /// May the caller read `run`: by its id, one of its tags, its batch or
    /// its task, or every run.
    pub(crate) fn may_read_run(&self, run: &Run) -> Result<(), ApiError> {
        let mut wanted = vec![
            "read:all".to_string(),
            "read:runs".to_string(),
            format!("read:runs:{}", run.id),
            format!("read:tasks:{}", run.task_id),
        ];
        wanted.extend(run.tags.iter().map(|t| format!("read:tags:{t}")));
        if let Some(batch) = &run.batch {
            wanted.push(format!("read:batch:{batch}"));
        }
        self.require(&wanted, || format!("read run {}", run.id))
    }

    /// May the caller read the batch `id` (and subscribe to its runs).
    pub(crate) fn may_read_batch(&self, id: &str) -> Result<(), ApiError> {
        let wanted = [
            "read:all".to_string(),
            "read:runs".to_string(),
            format!("read:batch:{id}"),
        ];
        self.require(&wanted, || format!("read batch {id}"))
    }

    /// May the caller read runs carrying all of `tags`: a scope for any one
    /// of them suffices, since every such run carries it.
    pub(crate) fn may_read_tagged(&self, tags: &[String]) -> Result<(), ApiError> {
        let mut wanted = vec!["read:all".to_string(), "read:runs".to_string()];
        wanted.extend(tags.iter().map(|t| format!("read:tags:{t}")));
        self.require(&wanted, || format!("read runs tagged {}", tags.join(", ")))
    }

    /// May the caller trigger `task`.
    pub(crate) fn may_trigger(&self, task: &str) -> Result<(), ApiError> {
        let wanted = [
            "trigger:tasks".to_string(),
            format!("trigger:tasks:{task}"),
            "write:tasks".to_string(),
            format!("write:tasks:{task}"),
        ];
        self.require(&wanted, || format!("trigger task {task}"))
    }

    /// May the caller trigger `task` in a batch (`batchTrigger` scopes, as
    /// Trigger.dev's: a token that may trigger a task once may not start a
    /// batch of it).
    pub(crate) fn may_batch_trigger(&self, task: &str) -> Result<(), ApiError> {
        let wanted = [
            "batchTrigger:tasks".to_string(),
            format!("batchTrigger:tasks:{task}"),
            "write:tasks".to_string(),
            format!("write:tasks:{task}"),
        ];
        self.require(&wanted, || format!("batch-trigger task {task}"))
    }

    /// Does the caller hold some scope to trigger tasks in a batch.
    pub(crate) fn may_batch_trigger_some(&self) -> Result<(), ApiError> {
        match &self.access {
            Access::Secret => Ok(()),
            Access::Public(token)
                if token.scopes.iter().any(|s| {
                    s == "admin"
                        || ["batchTrigger:tasks", "write:tasks"]
                            .iter()
                            .any(|p| s == p || s.starts_with(&format!("{p}:")))
                }) =>
            {
                Ok(())
            }
            Access::Public(_) => Err(ApiError::forbidden(
                "This public access token may not trigger batches",
            )),
        }
    }

    /// May the caller complete the wait token `id`.
    pub(crate) fn may_complete_token(&self, id: &str) -> Result<(), ApiError> {
        let wanted = [
            "write:waitpoints".to_string(),
            format!("write:waitpoints:{id}"),
        ];
        self.require(&wanted, || format!("complete wait token {id}"))
    }

    fn require(&self, wanted: &[String], what: impl FnOnce() -> String) -> Result<(), ApiError> {
        if self.grants(wanted) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "This public access token may not {}",
                what()
            )))
        }
    }
}

/// The bearer of `Authorization: Bearer <...>`.
pub(crate) fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Finds who is calling and in which environment, refuses unknown and
/// revoked keys and bad tokens (401) and public tokens on routes they may
/// not call (403), and hands the environment ([`Env`](super::Env)) and the
/// [`Caller`] to the handler.
pub(super) async fn authenticate(
    State(hub): State<Arc<Hub>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(given) = bearer(&request) else {
        return Err(ApiError::unauthorized(
            "Missing API key: send `Authorization: Bearer <secret key>`",
        ));
    };
    let (state, caller) = match hub.lookup(given) {
        KeyLookup::Admin => {
            let state = hub.default_environment().clone();
            let caller = Caller {
                environment: state.env_id.clone(),
                access: Access::Secret,
                admin: true,
                key_id: None,
            };
            (state, caller)
        }
        KeyLookup::Key(key) if key.revoked_at.is_some() => {
            return Err(ApiError::unauthorized("This API key has been revoked"));
        }
        KeyLookup::Key(key) => {
            let state = hub
                .environment(&key.project, &key.environment)
                .await
                .map_err(|e| {
                    ApiError::unavailable(format!("The environment could not open: {e}"))
                })?;
            let caller = Caller {
                environment: state.env_id.clone(),
                access: Access::Secret,
                admin: false,
                key_id: Some(crate::secret::key_id(&key.key)),
            };
            (state, caller)
        }
        KeyLookup::Unknown if given.split('.').count() == 3 => public_caller(&hub, given)?,
        KeyLookup::Unknown => return Err(ApiError::unauthorized("Invalid API key")),
    };
    if !caller.is_secret() {
        let path = request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if !super::routes::takes_public_token(request.method().as_str(), &path) {
            return Err(ApiError::forbidden(
                "A public access token cannot call this route: use the secret key",
            ));
        }
    }
    request.extensions_mut().insert(state);
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// The environment and caller of a public access token: the environment
/// its `sub` names, if one of that environment's secrets signed it.
fn public_caller(hub: &Hub, token: &str) -> Result<(AppState, Caller), ApiError> {
    let invalid = |why: &str| ApiError::unauthorized(format!("Invalid public access token: {why}"));
    let subject =
        crate::jwt::unverified_subject(token).ok_or_else(|| invalid("it names no environment"))?;
    let state = hub
        .opened(&subject)
        .ok_or_else(|| invalid("its environment is not on this server"))?;
    let mut refused = None;
    for secret in hub.token_secrets(&state) {
        match crate::jwt::verify(&secret, token) {
            Ok(claims) if claims.sub == *state.env_id => {
                if let Some(id) = &claims.key_id
                    && hub.key_revoked(id)
                {
                    return Err(invalid("the key that made it has been revoked"));
                }
                let caller = Caller {
                    environment: state.env_id.clone(),
                    access: Access::Public(PublicToken {
                        scopes: claims.scopes,
                        token: token.into(),
                        one_time: claims.otu,
                        expires_secs: claims.exp,
                    }),
                    admin: false,
                    key_id: None,
                };
                return Ok((state, caller));
            }
            Ok(_) => refused = Some("it belongs to another environment".to_string()),
            // A signature made by another secret: try the next one. Any
            // other refusal (expired, malformed) is the answer.
            Err(e) if e.0.contains("signature") => {
                refused.get_or_insert(e.0);
            }
            Err(e) => return Err(invalid(&e.0)),
        }
    }
    Err(invalid(
        refused
            .as_deref()
            .unwrap_or("no key of its environment signed it"),
    ))
}
