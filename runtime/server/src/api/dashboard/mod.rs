//! The web dashboard, served by `kiln serve` on the API's port: runs (a
//! list with the API's filters, a page per run with its journal as a
//! timeline), queues and deployments, updated live over server-sent
//! events.
//!
//! Pages are HTML rendered on the server, with one small script (embedded
//! in the binary, like the stylesheet) for live updates and the buttons.
//! Signing in takes an API key, as the API does: the key is kept in an
//! `HttpOnly`, `SameSite=Strict` cookie, so another site can neither read
//! it nor post a form with it. Every list pages through an index rather
//! than reading every run.

mod events;
mod html;
mod pages;
mod run_page;

use super::ApiError;
use crate::environments::{Hub, KeyLookup};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

/// The cookie that holds the signed-in key.
const SESSION: &str = "kiln_key";

/// The dashboard's routes.
pub(crate) fn router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/", get(|| async { redirect("/runs") }))
        .route("/login", get(pages::login_page).post(login))
        .route("/logout", post(logout))
        .route("/runs", get(pages::runs))
        .route("/runs/{run_id}", get(run_page::run))
        .route("/runs/{run_id}/cancel", post(run_page::cancel))
        .route("/runs/{run_id}/replay", post(run_page::replay))
        .route("/queues", get(pages::queues))
        .route("/deployments", get(pages::deployments))
        .route("/events", get(events::stream))
        .route(
            "/dashboard/assets/dashboard.js",
            get(|| async { asset("text/javascript", include_str!("assets/dashboard.js")) }),
        )
        .route(
            "/dashboard/assets/dashboard.css",
            get(|| async { asset("text/css", include_str!("assets/dashboard.css")) }),
        )
}

fn asset(media: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, media), (CACHE_CONTROL, "max-age=300")],
        body,
    )
        .into_response()
}

/// A `303 See Other` to `to`.
pub(super) fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_string())]).into_response()
}

/// The signed-in environment of a dashboard request; without a valid
/// session, pages redirect to the sign-in page.
pub(crate) struct Session(pub(crate) super::AppState);

/// Why a dashboard request has no session.
pub(crate) struct SignIn;

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        redirect("/login")
    }
}

/// The key a request's session cookie holds.
fn session_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION)
        .map(|(_, value)| value)
}

/// The environment `key` signs in to, if it is a live key of this server.
async fn environment_of(hub: &Hub, key: &str) -> Option<super::AppState> {
    match hub.lookup(key) {
        KeyLookup::Admin => Some(hub.default_environment().clone()),
        KeyLookup::Key(key) if key.revoked_at.is_none() => {
            hub.environment(&key.project, &key.environment).await.ok()
        }
        _ => None,
    }
}

impl FromRequestParts<Arc<Hub>> for Session {
    type Rejection = SignIn;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, SignIn> {
        let key = session_key(&parts.headers).ok_or(SignIn)?;
        environment_of(hub, key).await.map(Session).ok_or(SignIn)
    }
}

/// `POST /login` with the form field `key`: signs in and goes to the runs.
async fn login(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let key = form_urlencoded::parse(&body)
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    // A cookie value cannot hold these; no key has them.
    let storable = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"');
    if !storable || environment_of(&hub, &key).await.is_none() {
        return pages::login_form(Some("That is not an API key of this server.")).into_response();
    }
    let cookie = format!("{SESSION}={key}; Path=/; HttpOnly; SameSite=Strict");
    let mut response = redirect("/runs");
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: forgets the session.
async fn logout() -> Response {
    let mut response = redirect("/login");
    if let Ok(value) = format!("{SESSION}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0").parse() {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// An API error as a dashboard page.
pub(super) fn error_page(error: ApiError) -> Response {
    let status = error.status;
    let body = html::layout(
        "Error",
        "",
        &format!(
            "<h1>{}</h1><p>{}</p>",
            status.as_u16(),
            html::esc(&error.message)
        ),
    );
    (status, body).into_response()
}
