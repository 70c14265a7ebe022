//! Every route of the API in one table: its method and path, who may call
//! it, what it does, its request body's type and its handler. The router
//! is built from this table, and so is the OpenAPI document
//! (`GET /api/openapi.json`, see [`super::openapi`]), so neither can list a
//! route the other lacks; the auth middleware reads from it which routes
//! take a public access token.

use super::{
    MAX_BUNDLE_BYTES, MAX_TRIGGER_BYTES, annotations, auth_tokens, batches, deployments, envvars,
    metrics, packets, projects, queues, realtime, realtime_streams, run_list, runs, schedules,
    tokens,
};
use crate::environments::Hub;
use crate::executor::TokenOptions;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, post, put};
use schemars::{Schema, SchemaGenerator};
use std::sync::Arc;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Anyone: no key (the URL itself may carry a signature).
    Anyone,
    /// The environment's secret key.
    SecretKey,
    /// The secret key, or a public access token whose scopes allow it.
    PublicToken,
    /// The server's own key only.
    Admin,
}

/// A request body: its media type and, for JSON, its schema.
pub(crate) struct Body {
    /// `application/json`, `application/x-ndjson`, ...
    pub(crate) media: &'static str,
    /// The handler's type for it.
    pub(crate) schema: Option<fn(&mut SchemaGenerator) -> Schema>,
}

/// One route.
pub(crate) struct Route {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub(crate) method: &'static str,
    /// The path, with `{param}` (and `{*rest}`) segments as axum takes them.
    pub(crate) path: &'static str,
    /// Who may call it.
    pub(crate) caller: Caller,
    /// What it does, in a line.
    pub(crate) summary: &'static str,
    /// Its request body.
    pub(crate) body: Option<Body>,
    /// Its query parameters, with what each means.
    pub(crate) query: &'static [(&'static str, &'static str)],
    /// Its handler.
    pub(crate) handler: fn() -> MethodRouter<Arc<Hub>>,
}

fn json(schema: fn(&mut SchemaGenerator) -> Schema) -> Option<Body> {
    Some(Body {
        media: "application/json",
        schema: Some(schema),
    })
}

const fn route(
    method: &'static str,
    path: &'static str,
    caller: Caller,
    summary: &'static str,
    handler: fn() -> MethodRouter<Arc<Hub>>,
) -> Route {
    Route {
        method,
        path,
        caller,
        summary,
        body: None,
        query: &[],
        handler,
    }
}

impl Route {
    fn with(mut self, body: Option<Body>) -> Route {
        self.body = body;
        self
    }

    fn query(mut self, query: &'static [(&'static str, &'static str)]) -> Route {
        self.query = query;
        self
    }
}

/// The query of a presigned URL.
const PRESIGNED: &[(&str, &str)] = &[
    ("expires", "When the URL stops working, Unix ms"),
    ("signature", "The URL's signature"),
    (
        "env",
        "The environment the URL belongs to (`<project>/<environment>`)",
    ),
];

/// The query of `subscribeToRunsWithTag`: its tags and window, then
/// Electric's shape protocol (the SDK's `runs.subscribeTo*`), which
/// [`SHAPE`] is alone.
const TAGGED: &[(&str, &str)] = &[
    ("tags", "Tags a run must all carry, comma-separated"),
    (
        "createdAt",
        "Runs created within this long (`1h`; 24 h by default, a week at most)",
    ),
    (
        "offset",
        "`-1` for the whole shape, then the last `electric-offset`",
    ),
    ("handle", "The last `electric-handle`"),
    (
        "live",
        "`true`: wait (up to 20 s) for a change after `offset`",
    ),
    ("cursor", "The last `electric-cursor`"),
    ("log", "`full`"),
    (
        "skipColumns",
        "Columns to leave out, comma-separated (`payload,output`)",
    ),
];

/// Electric's shape-protocol query.
const SHAPE: &[(&str, &str)] = TAGGED.split_at(2).1;

/// The whole API.
pub(crate) fn table() -> &'static [Route] {
    static TABLE: std::sync::LazyLock<Vec<Route>> = std::sync::LazyLock::new(build);
    &TABLE
}

fn build() -> Vec<Route> {
    use Caller::{Admin, Anyone, PublicToken, SecretKey};
    vec![
        route("GET", "/healthz", Anyone, "Liveness", || {
            get(|| async { "ok" })
        }),
        route(
            "GET",
            "/readyz",
            Anyone,
            "Readiness: the store answers a read (503 with the reason when it does not)",
            || get(super::ready::serve),
        ),
        route(
            "GET",
            "/api/v1/cluster",
            Admin,
            "The cluster's nodes on a PostgreSQL store, answered by any node: which node answered, whether it leads, and every node's id, URL, whether it leads and when it was last seen (404 on a server on sled)",
            || get(super::ready::not_a_cluster),
        ),
        route(
            "GET",
            "/metrics",
            Admin,
            "Runs, queues, attempts, snapshots, the store and HTTP requests, in Prometheus's text format",
            || get(metrics::serve),
        ),
        route(
            "GET",
            "/api/openapi.json",
            Anyone,
            "This API as an OpenAPI document",
            || get(super::openapi::serve),
        ),
        route(
            "GET",
            "/api/v1/timezones",
            Anyone,
            "IANA time zones (`schedules.timezones`)",
            || get(schedules::timezones),
        )
        .query(&[("excludeUtc", "`true` leaves out UTC")]),
        route(
            "POST",
            "/api/v1/waitpoints/tokens/{id}/callback/{signature}",
            Anyone,
            "Complete a wait token through its callback URL, with the body as its data",
            || post(tokens::callback),
        ),
        route(
            "PUT",
            "/packets/{*path}",
            Anyone,
            "Upload a large payload to a presigned URL",
            || put(packets::upload).layer(DefaultBodyLimit::max(MAX_TRIGGER_BYTES)),
        )
        .query(PRESIGNED)
        .with(Some(Body {
            media: "application/octet-stream",
            schema: None,
        })),
        route(
            "GET",
            "/packets/{*path}",
            Anyone,
            "Download a large payload from a presigned URL",
            || get(packets::download),
        )
        .query(PRESIGNED),
        route(
            "GET",
            "/runs/{run_id}/{field}",
            Anyone,
            "A run's large payload or output, from the presigned URL a retrieve gave",
            || get(packets::download_run_packet),
        )
        .query(PRESIGNED),
        route(
            "GET",
            "/api/v1/runs/{run_id}/packets/{field}",
            PublicToken,
            "A presigned URL of a run's payload or output",
            || get(packets::presign_run_packet),
        ),
        route(
            "POST",
            "/api/v1/tasks/{task_id}/trigger",
            PublicToken,
            "Trigger a run (`tasks.trigger`)",
            || post(runs::trigger),
        )
        .with(json(|g| g.subschema_for::<runs::TriggerBody>())),
        route(
            "GET",
            "/api/v3/runs/{run_id}",
            PublicToken,
            "Retrieve a run (`runs.retrieve`); `?wait=MS` waits for it to finish",
            || get(runs::retrieve),
        )
        .query(&[(
            "wait",
            "Milliseconds to wait for the run to finish (Kiln's own; at most 60,000)",
        )]),
        route(
            "POST",
            "/api/v2/runs/{run_id}/cancel",
            SecretKey,
            "Cancel a run (`runs.cancel`)",
            || post(runs::cancel),
        ),
        route(
            "POST",
            "/api/v1/runs/{run_id}/reschedule",
            SecretKey,
            "Move a delayed run's start (`runs.reschedule`)",
            || post(runs::reschedule),
        )
        .with(json(|g| g.subschema_for::<runs::RescheduleBody>())),
        route(
            "POST",
            "/api/v1/runs/{run_id}/replay",
            SecretKey,
            "Run again with the same or new payload (`runs.replay`)",
            || post(runs::replay),
        )
        .with(json(|g| g.subschema_for::<runs::ReplayBody>())),
        route(
            "POST",
            "/api/v1/idempotencyKeys/{key}/reset",
            SecretKey,
            "Forget an idempotency key of a task (`idempotencyKeys.reset`)",
            || post(runs::reset_idempotency_key),
        )
        .with(json(|g| g.subschema_for::<runs::ResetKeyBody>())),
        route(
            "GET",
            "/api/v1/runs",
            SecretKey,
            "List runs, newest first, with filters and cursors (`runs.list`); one request reads at most 10,000 runs, so a rare filter may answer a short page with a `next` cursor",
            || get(run_list::list),
        )
        .query(&[
            ("page[size]", "Runs per page, 1 to 100 (25)"),
            ("page[after]", "The cursor of the next page"),
            ("page[before]", "The cursor of the previous page"),
            ("filter[status]", "Statuses, comma-separated"),
            ("filter[taskIdentifier]", "Task ids, comma-separated"),
            ("filter[version]", "Versions, comma-separated"),
            ("filter[tag]", "Tags, comma-separated"),
            ("filter[queue]", "Queues, comma-separated"),
            ("filter[machine]", "Machine presets, comma-separated"),
            ("filter[schedule]", "A schedule id"),
            ("filter[batch]", "A batch id"),
            ("filter[isTest]", "`true` or `false`"),
            ("filter[createdAt][from]", "Created at or after, Unix ms"),
            ("filter[createdAt][to]", "Created at or before, Unix ms"),
            (
                "filter[createdAt][period]",
                "Created within this long (`1d`)",
            ),
        ]),
        route(
            "GET",
            "/api/v1/runs/{run_id}/journal",
            SecretKey,
            "A run's journal (Kiln's own)",
            || get(runs::journal),
        ),
        route(
            "PUT",
            "/api/v1/runs/{run_id}/metadata",
            SecretKey,
            "Change a run's metadata",
            || put(annotations::put_metadata),
        )
        .with(json(|g| g.subschema_for::<annotations::MetadataBody>())),
        route(
            "GET",
            "/api/v1/runs/{run_id}/metadata",
            SecretKey,
            "A run's metadata",
            || get(annotations::get_metadata),
        ),
        route(
            "POST",
            "/api/v1/runs/{run_id}/tags",
            SecretKey,
            "Add tags to a run",
            || post(annotations::add_tags),
        )
        .with(json(|g| g.subschema_for::<annotations::TagsBody>())),
        route(
            "POST",
            "/api/v3/batches",
            PublicToken,
            "Create a batch (`batch.trigger`, first phase)",
            || post(batches::create),
        )
        .with(json(|g| g.subschema_for::<batches::CreateBody>())),
        route(
            "POST",
            "/api/v3/batches/{batch_id}/items",
            PublicToken,
            "Stream a batch's items, one JSON object per line",
            || post(batches::items).layer(DefaultBodyLimit::disable()),
        )
        .with(Some(Body {
            media: "application/x-ndjson",
            schema: None,
        })),
        route(
            "GET",
            "/api/v2/batches/{batch_id}",
            PublicToken,
            "Retrieve a batch (`batch.retrieve`)",
            || get(batches::retrieve),
        ),
        route(
            "PUT",
            "/api/v1/packets/{*path}",
            SecretKey,
            "A presigned URL to upload a large payload",
            || put(packets::presign_upload),
        ),
        route(
            "GET",
            "/api/v1/packets/{*path}",
            SecretKey,
            "A presigned URL to download a large payload",
            || get(packets::presign_download),
        ),
        route(
            "PUT",
            "/api/v2/packets/{*path}",
            SecretKey,
            "A presigned URL to upload a large payload",
            || put(packets::presign_upload),
        ),
        route(
            "GET",
            "/api/v2/packets/{*path}",
            SecretKey,
            "A presigned URL to download a large payload",
            || get(packets::presign_download),
        ),
        route(
            "GET",
            "/api/v1/queues",
            SecretKey,
            "List queues (`queues.list`)",
            || get(queues::list),
        )
        .query(&[("page", "The page, from 1"), ("perPage", "Queues per page")]),
        route(
            "GET",
            "/api/v1/queues/{queue}",
            SecretKey,
            "Retrieve a queue (`queues.retrieve`)",
            || get(queues::retrieve),
        ),
        route(
            "POST",
            "/api/v1/queues/{queue}/pause",
            SecretKey,
            "Pause or resume a queue",
            || post(queues::pause),
        )
        .with(json(|g| g.subschema_for::<queues::PauseBody>())),
        route(
            "POST",
            "/api/v1/schedules",
            SecretKey,
            "Create a schedule, or update the one with its deduplication key (`schedules.create`)",
            || post(schedules::create),
        )
        .with(json(|g| g.subschema_for::<schedules::CreateBody>())),
        route(
            "GET",
            "/api/v1/schedules",
            SecretKey,
            "List schedules (`schedules.list`)",
            || get(schedules::list),
        )
        .query(&[
            ("page", "The page, from 1"),
            ("perPage", "Schedules per page, at most 100 (20)"),
        ]),
        route(
            "GET",
            "/api/v1/schedules/{id}",
            SecretKey,
            "Retrieve a schedule",
            || get(schedules::retrieve),
        ),
        route(
            "PUT",
            "/api/v1/schedules/{id}",
            SecretKey,
            "Update a schedule",
            || put(schedules::update),
        )
        .with(json(|g| g.subschema_for::<schedules::UpdateBody>())),
        route(
            "DELETE",
            "/api/v1/schedules/{id}",
            SecretKey,
            "Delete a schedule",
            || delete(schedules::delete),
        ),
        route(
            "POST",
            "/api/v1/schedules/{id}/activate",
            SecretKey,
            "Turn a schedule on",
            || post(schedules::activate),
        ),
        route(
            "POST",
            "/api/v1/schedules/{id}/deactivate",
            SecretKey,
            "Turn a schedule off",
            || post(schedules::deactivate),
        ),
        route(
            "POST",
            "/api/v1/waitpoints/tokens",
            SecretKey,
            "Create a wait token (`wait.createToken`)",
            || post(tokens::create),
        )
        .with(json(|g| g.subschema_for::<TokenOptions>())),
        route(
            "GET",
            "/api/v1/waitpoints/tokens",
            SecretKey,
            "List wait tokens (`wait.listTokens`)",
            || get(tokens::list),
        )
        .query(&[
            ("page[size]", "Tokens per page, 1 to 100 (25)"),
            ("page[after]", "The cursor of the next page"),
            (
                "filter[status]",
                "WAITING, COMPLETED, TIMED_OUT, comma-separated",
            ),
            ("filter[idempotencyKey]", "A token's idempotency key"),
            ("filter[tags]", "Tags, comma-separated"),
            ("filter[createdAt][from]", "Created at or after, Unix ms"),
            ("filter[createdAt][to]", "Created at or before, Unix ms"),
        ]),
        route(
            "GET",
            "/api/v1/waitpoints/tokens/{id}",
            SecretKey,
            "Retrieve a wait token (`wait.retrieveToken`)",
            || get(tokens::retrieve),
        ),
        route(
            "POST",
            "/api/v1/waitpoints/tokens/{id}/complete",
            PublicToken,
            "Complete a wait token with `{data}` (`wait.completeToken`)",
            || post(tokens::complete),
        )
        .with(Some(Body {
            media: "application/json",
            schema: None,
        })),
        route(
            "POST",
            "/api/v1/deployments",
            SecretKey,
            "Deploy a bundle (the body is its bytes) as the current version",
            || post(deployments::create).layer(DefaultBodyLimit::max(MAX_BUNDLE_BYTES)),
        )
        .query(&[
            (
                "strict",
                "`true`: refuse a bundle whose tasks need environment variables the environment lacks (they are warnings otherwise)",
            ),
            (
                "sizes",
                "Several bundles as one version (a Rust one and a TypeScript one, say): the body holds them one after another, and `sizes` lists their lengths in bytes, comma-separated",
            ),
        ])
        .with(Some(Body {
            media: "application/wasm",
            schema: None,
        })),
        route(
            "GET",
            "/api/v1/deployments",
            SecretKey,
            "List deployments",
            || get(deployments::list),
        ),
        route(
            "GET",
            "/realtime/v1/runs/{run_id}",
            PublicToken,
            "Subscribe to a run (Electric's shape protocol, `runs.subscribeToRun`)",
            || get(realtime::run),
        )
        .query(SHAPE),
        route(
            "GET",
            "/realtime/v1/runs",
            PublicToken,
            "Subscribe to the runs carrying `?tags=` (`runs.subscribeToRunsWithTag`)",
            || get(realtime::tagged),
        )
        .query(TAGGED),
        route(
            "GET",
            "/realtime/v1/batches/{batch_id}",
            PublicToken,
            "Subscribe to a batch's runs (`runs.subscribeToBatch`)",
            || get(realtime::batch),
        )
        .query(SHAPE),
        route(
            "GET",
            "/realtime/v1/streams/{run_id}/{key}",
            PublicToken,
            "Server-sent events: the chunks a task appends to a realtime stream (`streams.read`)",
            || get(realtime_streams::read),
        ),
        route(
            "GET",
            "/realtime/v1/events/runs/{run_id}",
            PublicToken,
            "Server-sent events: the run after each change, until it finishes",
            || get(realtime::run_events),
        ),
        route(
            "GET",
            "/realtime/v1/events/runs",
            SecretKey,
            "Server-sent events: every run of the environment after each change (dashboards)",
            || get(realtime::all_run_events),
        ),
        route(
            "POST",
            "/api/v1/auth/jwt/claims",
            SecretKey,
            "The claims the SDK signs a public access token with",
            || post(auth_tokens::claims),
        ),
        route(
            "POST",
            "/api/v1/auth/public-tokens",
            SecretKey,
            "Mint a public access token (`auth.createPublicToken`)",
            || post(auth_tokens::create),
        )
        .with(json(|g| g.subschema_for::<auth_tokens::CreateBody>())),
        route(
            "POST",
            "/api/v1/projects",
            Admin,
            "Create a project",
            || post(projects::create),
        )
        .with(json(|g| g.subschema_for::<projects::CreateProject>())),
        route("GET", "/api/v1/projects", Admin, "List projects", || {
            get(projects::list)
        }),
        route(
            "POST",
            "/api/v1/projects/{project}/keys",
            Admin,
            "Create a secret key for an environment of a project",
            || post(projects::create_key),
        )
        .with(json(|g| g.subschema_for::<projects::CreateKey>())),
        route(
            "GET",
            "/api/v1/projects/{project}/keys",
            Admin,
            "List a project's keys, masked",
            || get(projects::list_keys),
        )
        .query(&[("environment", "Only this environment's keys")]),
        route(
            "DELETE",
            "/api/v1/projects/{project}/keys/{key_id}",
            Admin,
            "Revoke a key",
            || delete(projects::revoke_key),
        ),
        route(
            "GET",
            "/api/v1/projects/{project}/envvars/{env}",
            SecretKey,
            "List an environment's variables, secrets masked (`envvars.list`)",
            || get(envvars::list),
        ),
        route(
            "POST",
            "/api/v1/projects/{project}/envvars/{env}",
            SecretKey,
            "Set an environment variable (`envvars.create`)",
            || post(envvars::create),
        )
        .with(json(|g| g.subschema_for::<envvars::CreateBody>())),
        route(
            "POST",
            "/api/v1/projects/{project}/envvars/{env}/import",
            SecretKey,
            "Set many environment variables at once (`envvars.upload`)",
            || post(envvars::import),
        )
        .with(json(|g| g.subschema_for::<envvars::ImportBody>())),
        route(
            "GET",
            "/api/v1/projects/{project}/envvars/{env}/{name}",
            SecretKey,
            "One environment variable, a secret masked (`envvars.retrieve`)",
            || get(envvars::retrieve),
        ),
        route(
            "PUT",
            "/api/v1/projects/{project}/envvars/{env}/{name}",
            SecretKey,
            "A new value for an environment variable (`envvars.update`)",
            || put(envvars::update),
        )
        .with(json(|g| g.subschema_for::<envvars::UpdateBody>())),
        route(
            "DELETE",
            "/api/v1/projects/{project}/envvars/{env}/{name}",
            SecretKey,
            "Delete an environment variable (`envvars.del`)",
            || delete(envvars::delete),
        ),
    ]
}

/// Whether a public access token may call `method` on the route `path`.
pub(crate) fn takes_public_token(method: &str, path: &str) -> bool {
    table()
        .iter()
        .any(|r| r.method == method && r.path == path && r.caller == Caller::PublicToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_and_path_is_in_the_table_once() {
        let mut seen = std::collections::HashSet::new();
        for r in table() {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            assert!(["GET", "POST", "PUT", "DELETE"].contains(&r.method));
        }
        assert!(takes_public_token("GET", "/api/v3/runs/{run_id}"));
        assert!(!takes_public_token("GET", "/api/v1/runs"));
    }
}
