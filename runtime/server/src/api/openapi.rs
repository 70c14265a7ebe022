//! The OpenAPI 3.1 document of the whole API, built from the route table
//! ([`super::routes`]) and the handlers' request types (their JSON Schemas
//! from `schemars`). Served at `GET /api/openapi.json` and kept in the
//! repository as `docs/openapi.json` (a test fails when the two differ).

use super::routes::{Caller, table};
use axum::Json;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

/// `GET /api/openapi.json`.
pub(super) async fn serve() -> Json<Value> {
    Json(document())
}

/// The path parameters of an axum path: `{name}` and `{*name}`.
fn parameters(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

/// An axum path as OpenAPI writes it (`{*path}` becomes `{path}`).
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn security(caller: Caller) -> Value {
    match caller {
        Caller::Anyone => json!([]),
        Caller::SecretKey | Caller::Admin => json!([{ "secretKey": [] }]),
        Caller::PublicToken => json!([{ "secretKey": [] }, { "publicAccessToken": [] }]),
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

/// The document.
pub(crate) fn document() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    }));
    let mut paths: Map<String, Value> = Map::new();
    for route in table() {
        let mut operation = Map::new();
        operation.insert("summary".into(), json!(route.summary));
        operation.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                route.method.to_lowercase(),
                route
                    .path
                    .split(['/', '{', '}', '*', '.', '-'])
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let mut c = s.chars();
                        c.next().map_or(String::new(), |f| {
                            f.to_uppercase().collect::<String>() + c.as_str()
                        })
                    })
                    .collect::<String>()
            )),
        );
        operation.insert("security".into(), security(route.caller));
        let params: Vec<Value> = parameters(route.path)
            .into_iter()
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
            })
            .chain(route.query.iter().map(|(name, description)| {
                json!({
                    "name": name,
                    "in": "query",
                    "required": false,
                    "description": description,
                    "schema": { "type": "string" },
                })
            }))
            .collect();
        if !params.is_empty() {
            operation.insert("parameters".into(), json!(params));
        }
        if let Some(body) = &route.body {
            let schema = body
                .schema
                .map_or_else(|| json!({}), |make| Value::from(make(&mut generator)));
            operation.insert(
                "requestBody".into(),
                json!({ "required": false, "content": { body.media: { "schema": schema } } }),
            );
        }
        let mut responses = Map::new();
        responses.insert("200".into(), json!({ "description": "Success" }));
        responses.insert(
            "4XX".into(),
            error_response("The request was refused: 400 malformed, 401 no or a bad key or token, 403 not allowed to it, 404 not found, 409 conflict, 413 too large, 422 refused by the task or its schema"),
        );
        responses.insert(
            "5XX".into(),
            error_response(
                "The server failed; `x-should-retry: false` when retrying will not help",
            ),
        );
        operation.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(openapi_path(route.path))
            .or_insert_with(|| json!({}));
        entry[route.method.to_lowercase()] = Value::Object(operation);
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "type": "string", "description": "What went wrong" } },
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kiln API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Kiln's HTTP API: Trigger.dev v4's wire format, which the official @trigger.dev/sdk speaks, plus Kiln's deployments, journals, projects and keys.",
        },
        "servers": [{ "url": "http://127.0.0.1:3030" }],
        "components": {
            "securitySchemes": {
                "secretKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An environment's secret key (`tr_<env>_sk_...`), or the server's own key",
                },
                "publicAccessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A public access token limited to its scopes",
                },
            },
            "schemas": schemas,
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is this document; `KILN_WRITE_OPENAPI=1` rewrites
    /// it after a change to the API.
    #[test]
    fn the_document_in_the_repository_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let current = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("KILN_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &current).unwrap();
        }
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            kept == current,
            "docs/openapi.json is out of date: run `KILN_WRITE_OPENAPI=1 cargo test -p kiln-server openapi`"
        );
    }

    #[test]
    fn every_route_is_documented_with_its_parameters() {
        let doc = document();
        for route in table() {
            let op = &doc["paths"][openapi_path(route.path)][route.method.to_lowercase()];
            assert!(op.is_object(), "{} {}", route.method, route.path);
            let declared = op["parameters"].as_array().map_or(0, Vec::len);
            assert_eq!(declared, parameters(route.path).len() + route.query.len());
        }
        let trigger = &doc["paths"]["/api/v1/tasks/{task_id}/trigger"]["post"];
        assert_eq!(
            trigger["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/TriggerBody"
        );
        assert!(doc["components"]["schemas"]["TriggerOptions"].is_object());
    }
}
